//! Routed background jobs. The overdue-maintenance job visits every active
//! tenant and, for each maintenance schedule past its due date, opens one asset
//! issue. It reaches each tenant exactly like a request does, through the
//! [`Resolver`] (placement cache, residency check, re-resolve after a move), in
//! a [`TenantTx`](crate::scope::TenantTx) entered as that tenant, so RLS scopes
//! it and it follows a tenant that moved.
//!
//! Safe with many processes: due schedules are locked `FOR UPDATE SKIP LOCKED`
//! (two processes never work on the same schedule at once), and a marker row
//! unique per (schedule, due date) is inserted before the issue, `ON CONFLICT DO
//! NOTHING` (a process that lost the race opens nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use tenantry_core::entities::{asset_issues, maintenance_overdue, maintenance_schedules};
use tenantry_core::new_id;
use tenantry_core::registry::KeyOwner;
use tenantry_core::web::ApiError;

use crate::Resolver;
use crate::config::JobsConfig;

/// Schedules handled per transaction.
const BATCH: u64 = 100;
/// Tenants read from the registry per page.
const TENANT_PAGE: u64 = 500;

/// Totals since the process started (in /metrics).
#[derive(Default)]
pub struct JobStats {
    pub runs: AtomicU64,
    pub issues_opened: AtomicU64,
    pub tenant_failures: AtomicU64,
}

/// Opens an issue for each overdue schedule of one tenant; the issues opened.
pub async fn overdue_for(resolver: &Resolver, tenant: &KeyOwner) -> Result<u64, ApiError> {
    let mut opened = 0;
    loop {
        let tx = resolver.enter(tenant).await?;
        let marker = "NOT EXISTS (SELECT 1 FROM maintenance_overdue o WHERE o.tenant_id = maintenance_schedules.tenant_id \
                      AND o.schedule_id = maintenance_schedules.id AND o.due_at = maintenance_schedules.next_due_at)";
        let due = tx
            .all(
                tx.select::<maintenance_schedules::Entity>()
                    .filter(maintenance_schedules::Column::NextDueAt.lt(Utc::now()))
                    .filter(Expr::cust(marker))
                    .order_by_asc(maintenance_schedules::Column::NextDueAt)
                    .order_by_asc(maintenance_schedules::Column::Id)
                    .limit(BATCH)
                    .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked),
            )
            .await?;
        let found = due.len() as u64;
        for s in due {
            let marker_id = new_id();
            let claimed = tx
                .insert_if_absent::<maintenance_overdue::Entity, _>(|t| maintenance_overdue::ActiveModel {
                    tenant_id: Set(t),
                    id: Set(marker_id),
                    schedule_id: Set(s.id),
                    due_at: Set(s.next_due_at),
                    issue_id: Set(None),
                    created_at: Set(Utc::now()),
                })
                .await?;
            if !claimed {
                continue;
            }
            let now = Utc::now();
            let issue = tx
                .insert::<asset_issues::Entity, _>(|t| asset_issues::ActiveModel {
                    tenant_id: Set(t),
                    id: Set(new_id()),
                    asset_id: Set(s.asset_id),
                    title: Set(format!("Maintenance overdue: {}", s.title)),
                    description: Set(format!(
                        "Scheduled maintenance \"{}\" was due at {} and is not recorded as done.",
                        s.title,
                        s.next_due_at.to_rfc3339()
                    )),
                    status: Set("open".into()),
                    priority: Set("high".into()),
                    created_at: Set(now),
                    updated_at: Set(now),
                })
                .await?;
            tx.update(maintenance_overdue::ActiveModel {
                tenant_id: sea_orm::ActiveValue::Unchanged(tenant.tenant_id),
                id: sea_orm::ActiveValue::Unchanged(marker_id),
                issue_id: Set(Some(issue.id)),
                ..Default::default()
            })
            .await?;
            opened += 1;
        }
        tx.commit().await?;
        if found < BATCH {
            return Ok(opened);
        }
    }
}

/// Visits every active tenant once, `concurrency` at a time.
pub async fn overdue_pass(resolver: &Resolver, concurrency: usize, stats: &JobStats) -> Result<u64, ApiError> {
    let mut after = None;
    let mut opened = 0;
    loop {
        let page = resolver.registry().active_tenants(after, TENANT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.tenant_id);
        let full = page.len() as u64 == TENANT_PAGE;
        let results: Vec<_> = futures::stream::iter(page)
            .map(|t| {
                // Owned, so the future is Send for every lifetime (spawnable).
                let r = resolver.clone();
                async move { (overdue_for(&r, &t).await, t) }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (r, t) in results {
            match r {
                Ok(n) => opened += n,
                Err(e) => {
                    stats.tenant_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant_id = %t.tenant_id, error = %e, "overdue job skipped a tenant; next pass retries");
                }
            }
        }
        if !full {
            break;
        }
    }
    stats.runs.fetch_add(1, Ordering::Relaxed);
    stats.issues_opened.fetch_add(opened, Ordering::Relaxed);
    Ok(opened)
}

/// Runs the overdue pass every `overdue_interval_secs` until aborted.
pub async fn run(resolver: Resolver, cfg: JobsConfig, stats: Arc<JobStats>) {
    if cfg.overdue_interval_secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.overdue_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match overdue_pass(&resolver, cfg.concurrency, &stats).await {
            Ok(n) if n > 0 => tracing::info!(issues_opened = n, "overdue maintenance job"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "overdue maintenance job failed; retrying next interval"),
        }
    }
}
