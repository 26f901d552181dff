//! Cross-tier reports: one question asked of every backend, shared and
//! dedicated, concurrently, each under its own deadline. A backend that does not
//! answer in time (or at all) is reported as missing with its tenants listed,
//! never counted as zero.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::FromQueryResult;
use sea_orm::sqlx::{self, Connection};
use serde::Serialize;
use uuid::Uuid;

use crate::backend::enter;
use crate::backends::BackendView;
use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::stmt;

/// Assets by status and open issues of one tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantAssets {
    pub tenant_id: Uuid,
    pub slug: String,
    pub tier: String,
    pub backend: String,
    pub assets: i64,
    pub assets_by_status: BTreeMap<String, i64>,
    /// Issues not yet resolved (open or in progress).
    pub open_issues: i64,
}

/// How one backend answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendAnswer {
    pub backend_id: Uuid,
    pub name: String,
    pub kind: String,
    /// `ok` or `missing`.
    pub status: &'static str,
    pub error: Option<String>,
    pub elapsed_ms: u64,
    pub tenants: usize,
}

/// A tenant whose backend did not answer: its numbers are unknown, not zero.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MissingTenant {
    pub tenant_id: Uuid,
    pub slug: String,
    pub backend: String,
}

/// `GET /v1/reports/assets`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssetReport {
    pub generated_at: DateTime<Utc>,
    pub complete: bool,
    pub backends: Vec<BackendAnswer>,
    pub tenants: Vec<TenantAssets>,
    pub missing: Vec<MissingTenant>,
    /// Sums over the tenants that answered.
    pub assets: i64,
    pub open_issues: i64,
}

#[derive(FromQueryResult)]
struct Placed {
    tenant_id: Uuid,
    slug: String,
    tier: String,
    backend_id: Uuid,
}

const COUNTS_SQL: &str = "SELECT \
    (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)::text \
       FROM (SELECT status, count(*) AS n FROM assets GROUP BY status) s), \
    (SELECT count(*) FROM asset_issues WHERE status <> 'resolved')";

impl ControlPlane {
    /// Assets by status and open issues per tenant, across every backend.
    pub async fn asset_report(&self) -> Result<AssetReport, Error> {
        let placed = Placed::find_by_statement(stmt(
            "SELECT t.id AS tenant_id, t.slug, t.tier, p.backend_id FROM tenants t \
             JOIN placements p ON p.tenant_id = t.id WHERE t.status IN ('active', 'suspended') ORDER BY t.slug",
            vec![],
        ))
        .all(self.registry())
        .await?;
        let mut by_backend: BTreeMap<Uuid, Vec<Placed>> = BTreeMap::new();
        for p in placed {
            by_backend.entry(p.backend_id).or_default().push(p);
        }
        let backends: BTreeMap<Uuid, BackendView> =
            self.backends().await?.into_iter().filter(|b| by_backend.contains_key(&b.id)).map(|b| (b.id, b)).collect();
        let cfg = &self.config().reports;
        let deadline = Duration::from_millis(cfg.backend_timeout_ms);
        let answers: Vec<_> = futures::stream::iter(by_backend)
            .map(|(id, tenants)| {
                let backend = backends.get(&id);
                async move {
                    let started = Instant::now();
                    let result = match backend {
                        Some(b) => {
                            tokio::time::timeout(deadline, self.backend_assets(b, &tenants)).await.unwrap_or_else(
                                |_| Err(Error::invalid("timeout", format!("no answer within {deadline:?}"))),
                            )
                        }
                        None => Err(Error::NotFound("backend")),
                    };
                    (id, tenants, result, started.elapsed())
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect()
            .await;
        let mut report = AssetReport {
            generated_at: Utc::now(),
            complete: true,
            backends: Vec::new(),
            tenants: Vec::new(),
            missing: Vec::new(),
            assets: 0,
            open_issues: 0,
        };
        for (id, tenants, result, elapsed) in answers {
            let name = backends.get(&id).map_or_else(|| id.to_string(), |b| b.name.clone());
            let kind = backends.get(&id).map_or_else(String::new, |b| b.kind.as_str().to_string());
            let (status, error) = match result {
                Ok(rows) => {
                    for (p, (by_status, open_issues)) in tenants.iter().zip(rows) {
                        let assets = by_status.values().sum();
                        report.assets += assets;
                        report.open_issues += open_issues;
                        report.tenants.push(TenantAssets {
                            tenant_id: p.tenant_id,
                            slug: p.slug.clone(),
                            tier: p.tier.clone(),
                            backend: name.clone(),
                            assets,
                            assets_by_status: by_status,
                            open_issues,
                        });
                    }
                    ("ok", None)
                }
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "report: backend missing");
                    report.complete = false;
                    report.missing.extend(tenants.iter().map(|p| MissingTenant {
                        tenant_id: p.tenant_id,
                        slug: p.slug.clone(),
                        backend: name.clone(),
                    }));
                    ("missing", Some(e.to_string()))
                }
            };
            report.backends.push(BackendAnswer {
                backend_id: id,
                name,
                kind,
                status,
                error,
                elapsed_ms: elapsed.as_millis() as u64,
                tenants: tenants.len(),
            });
        }
        report.tenants.sort_by(|a, b| a.slug.cmp(&b.slug));
        report.missing.sort_by(|a, b| a.slug.cmp(&b.slug));
        report.backends.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(report)
    }

    /// Each tenant's counts on one backend, in the order given, each read under
    /// the tenant's own RLS scope.
    async fn backend_assets(
        &self,
        b: &BackendView,
        tenants: &[Placed],
    ) -> Result<Vec<(BTreeMap<String, i64>, i64)>, Error> {
        let mut conn = self.owner_conn(b, "tenantry-report").await?;
        let mut out = Vec::with_capacity(tenants.len());
        for p in tenants {
            enter(&mut conn, p.tenant_id).await?;
            let (by_status, open): (String, i64) = sqlx::query_as(COUNTS_SQL).fetch_one(&mut conn).await?;
            let by_status: BTreeMap<String, i64> = serde_json::from_str(&by_status).unwrap_or_default();
            out.push((by_status, open));
        }
        let _ = conn.close().await;
        Ok(out)
    }
}
