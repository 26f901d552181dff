//! Usage metering, cost attribution and heavy-tenant advice.
//!
//! Request-path usage (requests, client and server errors, database time) is
//! counted by every app process and appended to `usage_samples`; the
//! control plane folds the samples into hourly and daily rollups
//! ([`ControlPlane::rollup_usage`]) and measures every backend's rows and bytes
//! per tenant ([`ControlPlane::measure_storage`]): on a dedicated backend the
//! database's size, on a shared pool the tenant's share of each table by rows.
//! Costs come from unit prices per tier and engine in the configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, Row};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use crate::config::Price;
use crate::moves::{MovePlan, connect_options, tenant_tables};
use crate::operations::stmt;
use crate::service::BackendView;
use crate::{ControlPlane, Error};

/// Hours in an average month, for prorating monthly prices.
const HOURS_PER_MONTH: f64 = 730.0;
const GIB: f64 = (1u64 << 30) as f64;
/// Backends measured at once.
const MEASURE_CONCURRENCY: usize = 4;

/// A window of usage: `1h`..`48h` in hours (hourly rollups), `1d`..`90d` in days.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub hours: i64,
}

impl Window {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid(
                "invalid_window",
                format!("window `{s}` is not a number of hours (1h-48h) or days (1d-90d), e.g. `24h` or `7d`"),
            )
        };
        let (n, unit) = s.split_at(s.len().saturating_sub(1));
        let n: i64 = n.parse().map_err(|_| bad())?;
        let hours = match unit {
            "h" if (1..=48).contains(&n) => n,
            "d" if (1..=90).contains(&n) => n * 24,
            _ => return Err(bad()),
        };
        Ok(Self { hours })
    }

    /// Hourly rollups cover short windows, daily ones the rest.
    fn granularity(self) -> &'static str {
        if self.hours <= 48 { "hour" } else { "day" }
    }

    /// First period start inside the window (the current period counts as one).
    fn since(self, now: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::{DurationRound, TimeDelta};
        if self.granularity() == "hour" {
            let this = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now);
            this - TimeDelta::hours(self.hours - 1)
        } else {
            let this = now.duration_trunc(TimeDelta::days(1)).unwrap_or(now);
            this - TimeDelta::days(self.hours / 24 - 1)
        }
    }

    pub fn label(self) -> String {
        if self.hours <= 48 { format!("{}h", self.hours) } else { format!("{}d", self.hours / 24) }
    }
}

/// Money for one tenant over a window, by component.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Cost {
    pub base: f64,
    pub requests: f64,
    pub db_time: f64,
    pub storage: f64,
    pub total: f64,
}

impl Cost {
    fn new(price: &Price, hours: f64, requests: i64, db_time_us: i64, bytes: i64) -> Self {
        let round = |v: f64| (v * 10_000.0).round() / 10_000.0;
        let base = price.base_per_month * hours / HOURS_PER_MONTH;
        let req = requests as f64 / 1e6 * price.per_million_requests;
        let db = db_time_us as f64 / 3.6e9 * price.per_db_hour;
        let storage = bytes as f64 / GIB * price.per_gb_month * hours / HOURS_PER_MONTH;
        Cost {
            base: round(base),
            requests: round(req),
            db_time: round(db),
            storage: round(storage),
            total: round(base + req + db + storage),
        }
    }
}

/// One tenant's usage over a window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
    pub region: String,
    pub tier: String,
    pub status: String,
    pub backend: Option<String>,
    pub engine: Option<String>,
    pub requests: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    /// Time requests held a database connection.
    pub db_time_ms: f64,
    /// Latest measurement (see `storage_measured_at`).
    pub rows: i64,
    pub bytes: i64,
    pub storage_measured_at: Option<DateTime<Utc>>,
    /// Over the window.
    pub cost: Cost,
    /// A month at the window's rate: base + storage for a month, requests and
    /// database time extrapolated.
    pub monthly_estimate: f64,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub window: String,
    pub since: DateTime<Utc>,
    pub sort: String,
    pub tenants: Vec<TenantUsage>,
}

/// One period of a tenant's usage.
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct UsagePoint {
    pub period_start: DateTime<Utc>,
    pub requests: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub db_time_ms: f64,
    pub rows: Option<i64>,
    pub storage_bytes: Option<i64>,
}

/// `GET /v1/tenants/{id}/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantUsageDetail {
    pub window: String,
    pub granularity: String,
    pub since: DateTime<Utc>,
    #[serde(flatten)]
    pub usage: TenantUsage,
    pub price: Option<Price>,
    /// Rows and bytes per table at the latest measurement.
    #[schema(value_type = Object)]
    pub tables: Value,
    pub series: Vec<UsagePoint>,
}

/// What `GET /v1/usage` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageSort {
    Cost,
    Requests,
    DbTime,
    Bytes,
    Rows,
    Errors,
}

impl UsageSort {
    fn key(self, u: &TenantUsage) -> f64 {
        match self {
            UsageSort::Cost => u.cost.total,
            UsageSort::Requests => u.requests as f64,
            UsageSort::DbTime => u.db_time_ms,
            UsageSort::Bytes => u.bytes as f64,
            UsageSort::Rows => u.rows as f64,
            UsageSort::Errors => (u.client_errors + u.server_errors) as f64,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            UsageSort::Cost => "cost",
            UsageSort::Requests => "requests",
            UsageSort::DbTime => "db_time",
            UsageSort::Bytes => "bytes",
            UsageSort::Rows => "rows",
            UsageSort::Errors => "errors",
        }
    }
}

#[derive(FromQueryResult)]
struct UsageRow {
    tenant_id: Uuid,
    slug: String,
    name: String,
    region: String,
    tier: String,
    status: String,
    backend: Option<String>,
    engine: Option<String>,
    requests: i64,
    client_errors: i64,
    server_errors: i64,
    db_time_us: i64,
    rows: i64,
    bytes: i64,
    measured_at: Option<DateTime<Utc>>,
}

/// Usage of the tenants that `{tenants}` (a clause on `tenants t`: WHERE,
/// ORDER BY, LIMIT) selects, in slug order. The tenants are chosen first and
/// each one's rollups summed through the rollup key, so a page of 50 costs
/// the same among 10,000 tenants as among 100.
const USAGE_SELECT: &str = "SELECT t.id AS tenant_id, t.slug, t.name, t.region, t.tier, t.status, b.name AS backend, b.engine, \
    coalesce(u.requests, 0)::bigint AS requests, coalesce(u.client_errors, 0)::bigint AS client_errors, \
    coalesce(u.server_errors, 0)::bigint AS server_errors, coalesce(u.db_time_us, 0)::bigint AS db_time_us, \
    coalesce(s.rows, 0) AS rows, coalesce(s.bytes, 0) AS bytes, s.measured_at \
    FROM (SELECT t.* FROM tenants t {tenants}) t \
    LEFT JOIN placements p ON p.tenant_id = t.id LEFT JOIN backends b ON b.id = p.backend_id \
    LEFT JOIN LATERAL (SELECT sum(requests) AS requests, sum(client_errors) AS client_errors, \
               sum(server_errors) AS server_errors, sum(db_time_us) AS db_time_us \
               FROM usage_rollups r WHERE r.tenant_id = t.id AND r.granularity = $1 AND r.period_start >= $2) u ON true \
    LEFT JOIN usage_storage s ON s.tenant_id = t.id \
    ORDER BY t.slug";

/// The recommendation window and the tenants over a threshold in it: usage,
/// shares and the reasons in words, heaviest first.
pub type HeavyTenants = (Window, Vec<(TenantUsage, Shares, Vec<String>)>);

/// How stale the console's "heavy" badges may be.
pub const HEAVY_TTL: Duration = Duration::from_secs(15);

/// Each active shared tenant's share (0-1) of its pool's rows, bytes and
/// database time over the window, for the tenants where one share reaches
/// `$3` above its absolute floor (`$4` rows, `$5` bytes, `$6` microseconds).
/// A pool's total counts at least 1, like an empty pool.
const HEAVY_SQL: &str = "WITH u AS (SELECT tenant_id, sum(db_time_us) AS db FROM usage_rollups \
        WHERE granularity = $1 AND period_start >= $2 GROUP BY tenant_id), \
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

#[derive(FromQueryResult)]
struct HeavyRow {
    id: Uuid,
    rows: f64,
    bytes: f64,
    db_time: f64,
}

/// Rows and bytes one tenant holds on one backend.
#[derive(Debug, Default)]
struct Holding {
    rows: i64,
    bytes: i64,
    tables: BTreeMap<String, (i64, i64)>,
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Shares {
    pub rows: f64,
    pub bytes: f64,
    pub db_time: f64,
}

/// `GET /v1/recommendations`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendations {
    pub window: String,
    pub threshold: f64,
    pub recommendations: Vec<Recommendation>,
}

impl ControlPlane {
    /// The first configured price for a tier and engine.
    fn price(&self, tier: &str, engine: Option<&str>) -> Option<&Price> {
        let engine = engine.unwrap_or("*");
        self.config().usage.prices.iter().find(|p| p.tier == tier && (p.engine == "*" || p.engine == engine))
    }

    fn tenant_usage(&self, r: UsageRow, window: Window) -> TenantUsage {
        let hours = window.hours as f64;
        let (cost, monthly_estimate) = match self.price(&r.tier, r.engine.as_deref()) {
            Some(p) => {
                let cost = Cost::new(p, hours, r.requests, r.db_time_us, r.bytes);
                // Every component scales with the window, so a month is a rescale.
                let month = cost.total * HOURS_PER_MONTH / hours;
                (cost, (month * 100.0).round() / 100.0)
            }
            None => (Cost::default(), 0.0),
        };
        TenantUsage {
            tenant_id: r.tenant_id,
            slug: r.slug,
            name: r.name,
            region: r.region,
            tier: r.tier,
            status: r.status,
            backend: r.backend,
            engine: r.engine,
            requests: r.requests,
            client_errors: r.client_errors,
            server_errors: r.server_errors,
            db_time_ms: r.db_time_us as f64 / 1000.0,
            rows: r.rows,
            bytes: r.bytes,
            storage_measured_at: r.measured_at,
            cost,
            monthly_estimate,
        }
    }

    /// Usage over `window` of the tenants `tenants` selects (see
    /// [`USAGE_SELECT`]; its parameters start at `$3`, bound from `extra`).
    async fn usage_rows(
        &self,
        window: Window,
        tenants: &str,
        extra: Vec<sea_orm::Value>,
    ) -> Result<Vec<UsageRow>, Error> {
        let since = window.since(Utc::now());
        let mut values: Vec<sea_orm::Value> = vec![window.granularity().into(), since.into()];
        values.extend(extra);
        let sql = USAGE_SELECT.replace("{tenants}", tenants);
        Ok(UsageRow::find_by_statement(stmt(&sql, values)).all(self.registry()).await?)
    }

    /// The `top` tenants by `sort` over `window` (erased tenants excluded).
    pub async fn usage_top(&self, window: Window, top: usize, sort: UsageSort) -> Result<UsageReport, Error> {
        let rows = self.usage_rows(window, "WHERE t.status <> 'erased'", vec![]).await?;
        let mut tenants: Vec<TenantUsage> = rows.into_iter().map(|r| self.tenant_usage(r, window)).collect();
        tenants.sort_by(|a, b| sort.key(b).total_cmp(&sort.key(a)).then_with(|| a.slug.cmp(&b.slug)));
        tenants.truncate(top);
        Ok(UsageReport { window: window.label(), since: window.since(Utc::now()), sort: sort.as_str().into(), tenants })
    }

    /// One tenant's usage over `window`: totals, cost, storage per table and
    /// one point per period.
    pub async fn tenant_usage_detail(&self, tenant: &str, window: Window) -> Result<TenantUsageDetail, Error> {
        let t = self.tenant(tenant).await?;
        let row = self
            .usage_rows(window, "WHERE t.id = $3", vec![t.id.into()])
            .await?
            .into_iter()
            .next()
            .ok_or(Error::NotFound("tenant"))?;
        let price = self.price(&row.tier, row.engine.as_deref()).cloned();
        let usage = self.tenant_usage(row, window);
        let since = window.since(Utc::now());
        let series = UsagePoint::find_by_statement(stmt(
            "SELECT period_start, requests, client_errors, server_errors, db_time_us / 1000.0::float8 AS db_time_ms, \
             rows, storage_bytes FROM usage_rollups \
             WHERE tenant_id = $1 AND granularity = $2 AND period_start >= $3 ORDER BY period_start",
            vec![t.id.into(), window.granularity().into(), since.into()],
        ))
        .all(self.registry())
        .await?;
        let tables = self
            .registry()
            .query_one_raw(stmt("SELECT tables FROM usage_storage WHERE tenant_id = $1", vec![t.id.into()]))
            .await?
            .map(|r| r.try_get::<Value>("", "tables"))
            .transpose()?
            .unwrap_or_else(|| json!({}));
        Ok(TenantUsageDetail {
            window: window.label(),
            granularity: window.granularity().into(),
            since,
            usage,
            price,
            tables,
            series,
        })
    }

    /// Folds every pending app sample into the hourly and daily rollups and
    /// deletes it, in one statement (so concurrent rollups never count a
    /// sample twice); drops hourly rollups past their retention. Returns the
    /// samples folded.
    pub async fn rollup_usage(&self) -> Result<u64, Error> {
        let upsert = |g: &str| {
            format!(
                "INSERT INTO usage_rollups (tenant_id, granularity, period_start, requests, client_errors, \
                 server_errors, db_time_us) \
                 SELECT tenant_id, '{g}', date_trunc('{g}', at, 'UTC'), sum(requests), sum(client_errors), \
                 sum(server_errors), sum(db_time_us) FROM moved GROUP BY 1, 3 \
                 ON CONFLICT (tenant_id, granularity, period_start) DO UPDATE SET \
                 requests = usage_rollups.requests + excluded.requests, \
                 client_errors = usage_rollups.client_errors + excluded.client_errors, \
                 server_errors = usage_rollups.server_errors + excluded.server_errors, \
                 db_time_us = usage_rollups.db_time_us + excluded.db_time_us"
            )
        };
        let sql = format!(
            "WITH moved AS (DELETE FROM usage_samples RETURNING *), \
             hours AS ({}), days AS ({}) SELECT count(*) AS n FROM moved",
            upsert("hour"),
            upsert("day")
        );
        let n = self
            .registry()
            .query_one_raw(stmt(&sql, vec![]))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        self.registry()
            .execute_raw(stmt(
                "DELETE FROM usage_rollups WHERE granularity = 'hour' AND period_start < now() - make_interval(days => $1)",
                vec![(self.config().usage.hourly_retention_days as i32).into()],
            ))
            .await?;
        Ok(n as u64)
    }

    /// Measures rows and bytes per tenant on every ready backend (a few at a
    /// time) and records them. A backend that fails is logged and skipped; its
    /// tenants keep their previous measurement. Returns tenants measured.
    pub async fn measure_storage(&self) -> Result<usize, Error> {
        let backends: Vec<BackendView> = self
            .backends()
            .await?
            .into_iter()
            .filter(|b| b.status == "ready" && b.kind != "template" && b.tenants > 0)
            .collect();
        let results: Vec<_> = futures::stream::iter(backends)
            .map(|b| async move {
                let r = self.measure_backend(&b).await;
                (b, r)
            })
            .buffer_unordered(MEASURE_CONCURRENCY)
            .collect()
            .await;
        let mut measured = 0;
        for (b, r) in results {
            match r {
                Ok(holdings) => {
                    for (tenant, h) in holdings {
                        self.record_storage(tenant, b.id, &h).await?;
                        measured += 1;
                    }
                }
                Err(e) => tracing::warn!(backend = %b.name, error = %e, "storage measurement failed"),
            }
        }
        Ok(measured)
    }

    async fn record_storage(&self, tenant: Uuid, backend: Uuid, h: &Holding) -> Result<(), Error> {
        let tables: serde_json::Map<String, Value> =
            h.tables.iter().map(|(t, (rows, bytes))| (t.clone(), json!({"rows": rows, "bytes": bytes}))).collect();
        self.registry()
            .execute_raw(stmt(
                "WITH s AS (INSERT INTO usage_storage (tenant_id, backend_id, rows, bytes, tables, measured_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (tenant_id) DO UPDATE SET \
                 backend_id = excluded.backend_id, rows = excluded.rows, bytes = excluded.bytes, \
                 tables = excluded.tables, measured_at = excluded.measured_at) \
                 INSERT INTO usage_rollups (tenant_id, granularity, period_start, rows, storage_bytes) \
                 VALUES ($1, 'hour', date_trunc('hour', now(), 'UTC'), $3, $4), \
                        ($1, 'day', date_trunc('day', now(), 'UTC'), $3, $4) \
                 ON CONFLICT (tenant_id, granularity, period_start) DO UPDATE SET \
                 rows = excluded.rows, storage_bytes = excluded.storage_bytes",
                vec![tenant.into(), backend.into(), h.rows.into(), h.bytes.into(), Value::Object(tables).into()],
            ))
            .await?;
        Ok(())
    }

    /// Rows per table of every tenant placed on `b`, counted under each
    /// tenant's own RLS scope (the owner role sees one tenant at a time), and
    /// bytes: the table's size shared out by rows on a shared pool, the whole
    /// database's size on a dedicated one.
    async fn measure_backend(&self, b: &BackendView) -> Result<Vec<(Uuid, Holding)>, Error> {
        let tenants = self.tenants_on(b.id).await?;
        let mut conn = self.owner_conn(b, "tenantry-usage").await?;
        let tables: Vec<String> =
            tenant_tables(&mut conn).await?.into_iter().filter(|t| t != "tenantry_move_sentinels").collect();
        let sizes = table_sizes(&mut conn, &tables).await?;
        let counts_sql = format!(
            "SELECT {}",
            tables
                .iter()
                .map(|t| format!("(SELECT count(*) FROM public.{})", quote_ident(t)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut out = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            enter(&mut conn, tenant).await?;
            let row = sqlx::query(AssertSqlSafe(counts_sql.clone())).fetch_one(&mut conn).await?;
            let mut h = Holding::default();
            for (i, t) in tables.iter().enumerate() {
                let n: i64 = row.try_get(i)?;
                h.rows += n;
                h.tables.insert(t.clone(), (n, 0));
            }
            out.push((tenant, h));
        }
        let _ = conn.close().await;
        if b.kind == "dedicated" {
            let db_bytes = sizes.get("").copied().unwrap_or(0);
            for (_, h) in &mut out {
                h.bytes = db_bytes;
                for (t, (_, bytes)) in h.tables.iter_mut() {
                    *bytes = sizes.get(t).copied().unwrap_or(0);
                }
            }
        } else {
            for t in &tables {
                let total: i64 = out.iter().map(|(_, h)| h.tables[t].0).sum();
                let size = sizes.get(t).copied().unwrap_or(0);
                for (_, h) in &mut out {
                    let e = h.tables.get_mut(t).expect("counted");
                    e.1 = if total > 0 { (size as f64 * e.0 as f64 / total as f64).round() as i64 } else { 0 };
                    h.bytes += e.1;
                }
            }
        }
        Ok(out)
    }

    /// Tenants placed on a backend (erased ones excluded).
    pub(crate) async fn tenants_on(&self, backend: Uuid) -> Result<Vec<Uuid>, Error> {
        let rows = self
            .registry()
            .query_all_raw(stmt(
                "SELECT p.tenant_id FROM placements p JOIN tenants t ON t.id = p.tenant_id \
                 WHERE p.backend_id = $1 AND t.status NOT IN ('erased', 'erasing') ORDER BY p.tenant_id",
                vec![backend.into()],
            ))
            .await?;
        Ok(rows.iter().map(|r| r.try_get::<Uuid>("", "tenant_id")).collect::<Result<_, _>>()?)
    }

    /// A session on a backend as the owner role (subject to RLS).
    pub(crate) async fn owner_conn(&self, b: &BackendView, application: &str) -> Result<PgConnection, Error> {
        Ok(PgConnection::connect_with(&connect_options(b, &self.config().owner, application)).await?)
    }

    /// Shared-pool tenants whose share of their pool crosses the configured
    /// threshold, heaviest first, each with its promotion dry run.
    pub async fn recommendations(&self) -> Result<Recommendations, Error> {
        let (window, heavy) = self.heavy_tenants().await?;
        let mut out = Vec::with_capacity(heavy.len());
        for (usage, share, reasons) in heavy {
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
    /// [`Self::heavy_tenants`] as of at most [`HEAVY_TTL`] ago: the console
    /// shows the badges on every page view, and at 10,000 tenants one
    /// computation is worth sharing (the rollups change once a minute anyway).
    pub async fn heavy_tenants_cached(&self) -> Result<Arc<HeavyTenants>, Error> {
        if let Some(hit) = self.heavy.get(&()).await {
            return Ok(hit);
        }
        let fresh = Arc::new(self.heavy_tenants().await?);
        self.heavy.insert((), fresh.clone()).await;
        Ok(fresh)
    }

    pub async fn heavy_tenants(&self) -> Result<HeavyTenants, Error> {
        let cfg = self.config().usage.recommend.clone();
        let window = Window { hours: cfg.window_hours.clamp(1, 90 * 24) };
        // Shares within each pool are computed in the registry, in one pass over
        // the window's rollups; only the tenants over a threshold come back.
        let over = HeavyRow::find_by_statement(stmt(
            HEAVY_SQL,
            vec![
                window.granularity().into(),
                window.since(Utc::now()).into(),
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

    /// One page of tenants for the console: `query` matches slug or name,
    /// `tier` and `status` filter exactly (empty: any); usage over the last 24 h.
    /// The page and the number of matching tenants.
    pub async fn tenant_page(
        &self,
        query: &str,
        tier: &str,
        status: &str,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<TenantUsage>, i64), Error> {
        // `$q`: the search text (LIKE wildcards escaped), then tier and status.
        let filter = |q: usize| {
            format!(
                "WHERE (${q} = '' OR t.slug ILIKE '%' || ${q} || '%' OR t.name ILIKE '%' || ${q} || '%') \
                 AND (${t} = '' OR t.tier = ${t}) AND (${s} = '' OR t.status = ${s})",
                t = q + 1,
                s = q + 2
            )
        };
        let window = Window { hours: 24 };
        let pattern = query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let filters = || -> Vec<sea_orm::Value> { vec![pattern.clone().into(), tier.into(), status.into()] };
        let mut values = filters();
        values.extend([(per_page as i64).into(), ((page * per_page) as i64).into()]);
        let rows =
            self.usage_rows(window, &format!("{} ORDER BY t.slug LIMIT $6 OFFSET $7", filter(3)), values).await?;
        let total = self
            .registry()
            .query_one_raw(stmt(&format!("SELECT count(*) AS n FROM tenants t {}", filter(1)), filters()))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        Ok((rows.into_iter().map(|r| self.tenant_usage(r, window)).collect(), total))
    }

    /// Folds usage samples every `rollup_interval_ms` and measures storage
    /// every `storage_interval_secs`, until the process ends.
    pub async fn run_usage(self: Arc<Self>) {
        let cfg = self.config().usage.clone();
        let mut rollup = tokio::time::interval(Duration::from_millis(cfg.rollup_interval_ms.max(100)));
        let mut storage = tokio::time::interval(Duration::from_secs(cfg.storage_interval_secs.max(1)));
        rollup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        storage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = rollup.tick() => {
                    if let Err(e) = self.rollup_usage().await {
                        tracing::warn!(error = %e, "usage rollup failed");
                    }
                }
                _ = storage.tick() => {
                    match self.measure_storage().await {
                        Ok(n) => tracing::debug!(tenants = n, "storage measured"),
                        Err(e) => tracing::warn!(error = %e, "storage measurement failed"),
                    }
                }
            }
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Scopes an owner session to one tenant (RLS then shows only its rows).
pub(crate) async fn enter(conn: &mut PgConnection, tenant: Uuid) -> Result<(), Error> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)").bind(tenant.to_string()).execute(conn).await?;
    Ok(())
}

/// Total bytes (with indexes and TOAST) of each table, and of the database
/// under the key "".
async fn table_sizes(conn: &mut PgConnection, tables: &[String]) -> Result<BTreeMap<String, i64>, Error> {
    let mut out: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT c.relname::text, pg_total_relation_size(c.oid) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = ANY($1)",
    )
    .bind(tables)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let db: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&mut *conn).await?;
    out.insert(String::new(), db);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_bound() {
        assert_eq!(Window::parse("24h").unwrap().hours, 24);
        assert_eq!(Window::parse("7d").unwrap().hours, 168);
        assert_eq!(Window::parse("7d").unwrap().granularity(), "day");
        assert_eq!(Window::parse("48h").unwrap().granularity(), "hour");
        for bad in ["", "h", "0h", "49h", "91d", "7w", "-1d", "1.5h"] {
            assert!(Window::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cost_prorates_base_and_storage() {
        let p = Price {
            tier: "dedicated".into(),
            engine: "*".into(),
            base_per_month: 73.0,
            per_million_requests: 1.0,
            per_db_hour: 2.0,
            per_gb_month: 0.73,
        };
        // 10 hours: base 1.0, 2M requests 2.0, 1.5 h db 3.0, 10 GiB for 10 h 0.1.
        let c = Cost::new(&p, 10.0, 2_000_000, 5_400_000_000, 10 << 30);
        assert_eq!((c.base, c.requests, c.db_time, c.storage, c.total), (1.0, 2.0, 3.0, 0.1, 6.1));
    }
}
