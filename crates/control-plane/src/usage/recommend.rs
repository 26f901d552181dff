//! Heavy shared tenants: each one's share of its pool, over thresholds, and
//! the recommendation to promote it (with the dry run).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use sea_orm::FromQueryResult;
use serde::Serialize;
use uuid::Uuid;

use crate::error::Error;
use crate::moves::plan::MovePlan;
use crate::plane::ControlPlane;
use crate::registry::stmt;
use crate::usage::model::{HeavyTenants, Shares, TenantUsage, Window};

/// Each active shared tenant's share (0-1) of its pool's rows, bytes and
/// database time over the window, for the tenants where one share reaches
/// `$3` above its absolute floor (`$4` rows, `$5` bytes, `$6` microseconds).
/// A pool's total counts at least 1, like an empty pool.
/// `{u}`: each tenant's database time over the window ([`U_KEPT`] or [`U_SUMMED`]).
const HEAVY_SQL: &str = "WITH u AS ({u}), \
    x AS (SELECT t.id, p.backend_id, coalesce(s.rows, 0)::float8 AS rows, coalesce(s.bytes, 0)::float8 AS bytes, \
            coalesce(u.db, 0)::float8 AS db \
        FROM tenants t JOIN placements p ON p.tenant_id = t.id LEFT JOIN usage_storage s ON s.tenant_id = t.id \
        LEFT JOIN u ON u.tenant_id = t.id WHERE t.status = 'active' AND t.tier = 'shared'), \
    y AS (SELECT id, rows AS n_rows, bytes AS n_bytes, db AS n_db, \
            rows / greatest(sum(rows) OVER w, 1) AS rows, bytes / greatest(sum(bytes) OVER w, 1) AS bytes, \
            db / greatest(sum(db) OVER w, 1000) AS db_time FROM x WINDOW w AS (PARTITION BY backend_id)) \
    SELECT id, rows, bytes, db_time FROM y \
    WHERE (round(rows::numeric, 3) >= $3 AND n_rows >= $4) OR (round(bytes::numeric, 3) >= $3 AND n_bytes >= $5) \
       OR (round(db_time::numeric, 3) >= $3 AND n_db >= $6)";

/// The window's database time as the folds keep it (`window.rs`); `$1` and
/// `$2` stay bound for the statement's shape.
const U_KEPT: &str =
    "SELECT tenant_id, db_time_us AS db FROM usage_window WHERE $1::text IS NOT NULL AND $2::timestamptz IS NOT NULL";
/// The window's database time summed from its rollups.
const U_SUMMED: &str = "SELECT tenant_id, sum(db_time_us) AS db FROM usage_rollups \
    WHERE granularity = $1 AND period_start >= $2 GROUP BY tenant_id";

#[derive(FromQueryResult)]
struct HeavyRow {
    id: Uuid,
    rows: f64,
    bytes: f64,
    db_time: f64,
}

/// One shared-pool tenant worth moving out.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub tenant_id: Uuid,
    pub slug: String,
    pub backend: String,
    /// The tenant's share (0-1) of its pool's rows, bytes and database time.
    pub share: Shares,
    /// Why, in words.
    pub reasons: Vec<String>,
    pub usage: TenantUsage,
    /// The dry run of promoting it to a dedicated database; null with
    /// `plan_error` when the dry run could not be made.
    pub plan: Option<MovePlan>,
    pub plan_error: Option<String>,
}

/// `GET /v1/recommendations`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendations {
    pub window: String,
    pub threshold: f64,
    pub recommendations: Vec<Recommendation>,
}

impl ControlPlane {
    /// Shared-pool tenants whose share of their pool crosses the configured
    /// threshold, heaviest first, each with its promotion dry run. The shares
    /// are computed once per usage pass (a rollup or a storage measurement
    /// drops them; at most [`HEAVY_TTL`](crate::usage::model::HEAVY_TTL) old
    /// when another process ran the pass), not on every call.
    pub async fn recommendations(&self) -> Result<Recommendations, Error> {
        let cached = self.heavy_tenants_cached().await?;
        let (window, heavy) = (&cached.0, &cached.1);
        let mut out = Vec::with_capacity(heavy.len());
        for (usage, share, reasons) in heavy.iter().cloned() {
            let (plan, plan_error) = match self.move_plan(&usage.tenant_id.to_string(), "dedicated").await {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e.to_string())),
            };
            out.push(Recommendation {
                tenant_id: usage.tenant_id,
                slug: usage.slug.clone(),
                backend: usage.backend.clone().unwrap_or_default(),
                share,
                reasons,
                usage,
                plan,
                plan_error,
            });
        }
        Ok(Recommendations {
            window: window.label(),
            threshold: self.config().usage.recommend.share,
            recommendations: out,
        })
    }

    /// The heavy shared tenants (no dry runs: cheap enough for every page view).
    /// [`Self::heavy_tenants`] as of the last usage pass of this process (or
    /// at most [`HEAVY_TTL`](crate::usage::model::HEAVY_TTL) ago): the console
    /// shows the badges on every page view and the API the recommendations on
    /// every call; at 100,000 tenants one computation per pass is worth sharing.
    pub async fn heavy_tenants_cached(&self) -> Result<Arc<HeavyTenants>, Error> {
        if let Some(hit) = self.heavy.get(&()).await {
            return Ok(hit);
        }
        let fresh = Arc::new(self.heavy_tenants().await?);
        self.heavy.insert((), fresh.clone()).await;
        Ok(fresh)
    }

    /// The window the recommendations look back over (`recommend.window_hours`,
    /// 1 hour to 90 days).
    pub(crate) fn recommend_window(&self) -> Window {
        Window { hours: self.config().usage.recommend.window_hours.clamp(1, 90 * 24) }
    }

    pub async fn heavy_tenants(&self) -> Result<HeavyTenants, Error> {
        let cfg = self.config().usage.recommend.clone();
        let window = self.recommend_window();
        // Shares within each pool are computed in the registry, in one pass over
        // the window's rollups; only the tenants over a threshold come back.
        // The database time comes from the window the folds keep when it is
        // where this window starts (a fold ran this hour), else from the rollups.
        let since = window.since(Utc::now());
        let kept = crate::usage::window::kept(window)
            && crate::usage::window::state(self.registry(), false)
                .await?
                .is_some_and(|k| k.hours == window.hours && k.since == since);
        let over = HeavyRow::find_by_statement(stmt(
            &HEAVY_SQL.replace("{u}", if kept { U_KEPT } else { U_SUMMED }),
            vec![
                window.granularity().into(),
                since.into(),
                cfg.share.into(),
                cfg.min_rows.into(),
                cfg.min_bytes.into(),
                cfg.min_db_time_ms.saturating_mul(1000).into(),
            ],
        ))
        .all(self.registry())
        .await?;
        if over.is_empty() {
            return Ok((window, Vec::new()));
        }
        let ids = format!("{{{}}}", over.iter().map(|h| h.id.to_string()).collect::<Vec<_>>().join(","));
        let mut shares: BTreeMap<Uuid, Shares> = over
            .into_iter()
            .map(|h| (h.id, Shares { rows: round3(h.rows), bytes: round3(h.bytes), db_time: round3(h.db_time) }))
            .collect();
        let rows = self.usage_rows(window, "WHERE t.id = ANY($3::uuid[])", vec![ids.into()]).await?;
        let mut out = Vec::new();
        for r in rows {
            let u = self.tenant_usage(r, window);
            let Some(share) = shares.remove(&u.tenant_id) else { continue };
            let mut reasons = Vec::new();
            if share.rows >= cfg.share && u.rows >= cfg.min_rows {
                reasons.push(format!("{:.0}% of the pool's rows ({} rows)", share.rows * 100.0, u.rows));
            }
            if share.bytes >= cfg.share && u.bytes >= cfg.min_bytes {
                reasons.push(format!("{:.0}% of the pool's bytes ({} bytes)", share.bytes * 100.0, u.bytes));
            }
            if share.db_time >= cfg.share && u.db_time_ms >= cfg.min_db_time_ms as f64 {
                reasons.push(format!(
                    "{:.0}% of the pool's database time ({:.0} ms in {})",
                    share.db_time * 100.0,
                    u.db_time_ms,
                    window.label()
                ));
            }
            if !reasons.is_empty() {
                out.push((u, share, reasons));
            }
        }
        let top = |s: &Shares| s.rows.max(s.bytes).max(s.db_time);
        out.sort_by(|a, b| top(&b.1).total_cmp(&top(&a.1)));
        Ok((window, out))
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
