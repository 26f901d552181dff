//! Usage metering, cost attribution and heavy-tenant advice.
//!
//! Request-path usage (requests, client and server errors, database time) is
//! counted by every app process and appended to `usage_samples`; the
//! control plane folds the samples into hourly and daily rollups
//! ([`ControlPlane::rollup_usage`]) and measures every backend's rows and bytes
//! per tenant ([`ControlPlane::measure_storage`]): on a dedicated backend the
//! database's size, on a shared pool the tenant's share of each table by rows.
//! Costs come from unit prices per tier and engine in the configuration.

pub mod model;
pub mod recommend;
pub(crate) mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, Row};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::{Value, json};
use uuid::Uuid;

use tenantry_core::{BackendKind, BackendStatus};
use tenantry_provisioner::quote_ident;

use crate::backend::tenant_tables;
use crate::backends::BackendView;
use crate::config::Price;
use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::stmt;
use crate::usage::model::{
    Cost, HOURS_PER_MONTH, TenantUsage, TenantUsageDetail, UsagePoint, UsageReport, UsageSort, Window,
};

/// Backends measured at once.
const MEASURE_CONCURRENCY: usize = 4;
/// Tenants counted per round trip on one backend (one simple-query batch).
const COUNT_BATCH: usize = 500;
/// Tenants recorded per registry statement.
const RECORD_BATCH: usize = 1000;
/// Usage samples folded per batch (a backlog is folded in several).
const ROLLUP_BATCH: i64 = 50_000;
/// Tenants folded per statement, about (a batch of more is cut in slices).
const FOLD_SLICE_TENANTS: i64 = 1_000;

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

/// What one backend holds, per tenant: rows per table (in `tables` order),
/// and the bytes of each table (of the whole database under "").
struct Holdings {
    kind: BackendKind,
    tables: Vec<String>,
    sizes: BTreeMap<String, i64>,
    counts: Vec<(Uuid, Vec<i64>)>,
}

impl Holdings {
    /// Each table's rows of all tenants together.
    fn totals(&self) -> Vec<i64> {
        let mut totals = vec![0i64; self.tables.len()];
        for (_, counts) in &self.counts {
            for (total, n) in totals.iter_mut().zip(counts) {
                *total += n;
            }
        }
        totals
    }

    /// One tenant's record: rows, bytes and per table `{rows, bytes}`. On a
    /// dedicated backend the bytes are the whole database's; on a shared pool
    /// each table's size shared out by rows (`totals`).
    fn record(&self, tenant: Uuid, counts: &[i64], totals: &[i64]) -> Value {
        let mut tables = serde_json::Map::new();
        let (mut rows, mut bytes) = (0i64, 0i64);
        for ((t, n), total) in self.tables.iter().zip(counts).zip(totals) {
            let size = self.sizes.get(t).copied().unwrap_or(0);
            let share = match self.kind {
                BackendKind::Dedicated => size,
                _ if *total > 0 => (size as f64 * *n as f64 / *total as f64).round() as i64,
                _ => 0,
            };
            rows += n;
            bytes += share;
            tables.insert(t.clone(), json!({"rows": n, "bytes": share}));
        }
        if self.kind == BackendKind::Dedicated {
            bytes = self.sizes.get("").copied().unwrap_or(0);
        }
        json!({"tenant_id": tenant, "rows": rows, "bytes": bytes, "tables": tables})
    }
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
        // A batch at a time, oldest first: a backlog (a control plane that was
        // down) is folded in bounded statements. A batch is a range of ids (one
        // index range, not a look-up per sample); a sample committed late
        // with a lower id than one already folded is folded by the next pass.
        // A batch of many tenants is folded in slices of about
        // FOLD_SLICE_TENANTS tenants (by a hash of the tenant id, so each
        // tenant's samples fold together and its rollup rows are updated once),
        // with a pause after each slice as long as the slice took: a fold never
        // holds a core for long, and requests sharing the database do not
        // queue behind it. A sample is deleted once (a concurrent rollup's
        // DELETE waits, then skips the rows already gone), so concurrent
        // rollups never count one twice. Each slice also adds its samples to
        // the recommendations' window, in the transaction that holds the
        // window's state (see `window.rs`).
        let recommend = self.recommend_window();
        let kept = window::kept(recommend);
        let sql = format!(
            "WITH moved AS (DELETE FROM usage_samples WHERE id <= $1 \
               AND (hashtext(tenant_id::text)::bigint & 2147483647) % $2::bigint = $3::bigint RETURNING *), \
             hours AS ({}), days AS ({}){} SELECT count(*) AS n FROM moved",
            upsert("hour"),
            upsert("day"),
            if kept { format!(", win AS ({})", window::add_moved(4)) } else { String::new() }
        );
        let mut n = 0i64;
        loop {
            let Some(batch) = Batch::next(self.registry()).await? else { break };
            let slices = ((batch.tenants + FOLD_SLICE_TENANTS - 1) / FOLD_SLICE_TENANTS).max(1);
            for slice in 0..slices {
                let started = std::time::Instant::now();
                let mut values: Vec<sea_orm::Value> = vec![batch.upto.into(), slices.into(), slice.into()];
                n += if kept {
                    let (txn, since) = window::begin(self, recommend).await?;
                    values.push(since.into());
                    let folded = fold(&txn, &sql, values).await?;
                    txn.commit().await?;
                    folded
                } else {
                    fold(self.registry(), &sql, values).await?
                };
                if slice + 1 < slices {
                    tokio::time::sleep(started.elapsed()).await;
                }
            }
            if batch.samples < ROLLUP_BATCH {
                break;
            }
        }
        self.registry()
            .execute_raw(stmt(
                "DELETE FROM usage_rollups WHERE granularity = 'hour' AND period_start < now() - make_interval(days => $1)",
                vec![(self.config().usage.hourly_retention_days as i32).into()],
            ))
            .await?;
        // The shares behind the recommendations moved: computed again on next use.
        self.heavy.invalidate(&()).await;
        Ok(n as u64)
    }

    /// Measures rows and bytes per tenant on every ready backend (a few at a
    /// time) and records them, each backend as soon as it is counted and in
    /// batches, so a pass holds a few backends' counts at once, not the
    /// fleet's. A backend that fails is logged and skipped; its tenants keep
    /// their previous measurement. Returns tenants measured.
    pub async fn measure_storage(&self) -> Result<usize, Error> {
        let backends: Vec<BackendView> = self
            .backends()
            .await?
            .into_iter()
            .filter(|b| b.status == BackendStatus::Ready && b.kind != BackendKind::Template && b.tenants > 0)
            .collect();
        let mut counted = futures::stream::iter(backends)
            .map(|b| async move {
                let r = self.measure_backend(&b).await;
                (b, r)
            })
            .buffer_unordered(MEASURE_CONCURRENCY);
        let mut measured = 0;
        while let Some((b, r)) = counted.next().await {
            match r {
                Ok(holdings) => {
                    let totals = holdings.totals();
                    for batch in holdings.counts.chunks(RECORD_BATCH) {
                        let records: Vec<Value> =
                            batch.iter().map(|(tenant, counts)| holdings.record(*tenant, counts, &totals)).collect();
                        self.record_storage(b.id, records).await?;
                        measured += batch.len();
                    }
                }
                Err(e) => tracing::warn!(backend = %b.name, error = %e, "storage measurement failed"),
            }
        }
        self.heavy.invalidate(&()).await;
        Ok(measured)
    }

    /// Records one backend's measurements (`{tenant_id, rows, bytes, tables}`
    /// each) and the period's storage columns, in one statement.
    async fn record_storage(&self, backend: Uuid, records: Vec<Value>) -> Result<(), Error> {
        self.registry()
            .execute_raw(stmt(
                "WITH v AS (SELECT * FROM jsonb_to_recordset($1) AS v(tenant_id uuid, rows bigint, bytes bigint, tables jsonb)), \
                 s AS (INSERT INTO usage_storage (tenant_id, backend_id, rows, bytes, tables, measured_at) \
                 SELECT tenant_id, $2, rows, bytes, tables, now() FROM v ON CONFLICT (tenant_id) DO UPDATE SET \
                 backend_id = excluded.backend_id, rows = excluded.rows, bytes = excluded.bytes, \
                 tables = excluded.tables, measured_at = excluded.measured_at) \
                 INSERT INTO usage_rollups (tenant_id, granularity, period_start, rows, storage_bytes) \
                 SELECT tenant_id, g, date_trunc(g, now(), 'UTC'), rows, bytes FROM v, (VALUES ('hour'), ('day')) AS p(g) \
                 ON CONFLICT (tenant_id, granularity, period_start) DO UPDATE SET \
                 rows = excluded.rows, storage_bytes = excluded.storage_bytes",
                vec![Value::Array(records).into(), backend.into()],
            ))
            .await?;
        Ok(())
    }

    /// Rows per table of every tenant placed on `b`, counted under each
    /// tenant's own RLS scope (the owner role sees one tenant at a time),
    /// [`COUNT_BATCH`] tenants per round trip, and the tables' and
    /// database's sizes.
    async fn measure_backend(&self, b: &BackendView) -> Result<Holdings, Error> {
        let tenants = self.tenants_on(b.id).await?;
        let mut conn = self.owner_conn(b, "tenantry-usage").await?;
        let tables: Vec<String> =
            tenant_tables(&mut conn).await?.into_iter().filter(|t| t != "tenantry_move_sentinels").collect();
        let sizes = table_sizes(&mut conn, &tables).await?;
        let counts_sql = tables
            .iter()
            .map(|t| format!("(SELECT count(*) FROM public.{})", quote_ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut counts = Vec::with_capacity(tenants.len());
        for batch in tenants.chunks(COUNT_BATCH) {
            // Per tenant: enter it (its own statement, so the count after it
            // sees the setting), then count. Tenant ids come from the registry.
            let mut sql = String::new();
            for tenant in batch {
                sql.push_str(&format!(
                    "SELECT set_config('app.tenant_id', '{tenant}', false); SELECT '{tenant}'::uuid AS tenant, {counts_sql};"
                ));
            }
            let mut rows = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(&mut conn);
            while let Some(item) = rows.next().await {
                let Some(row) = item?.right() else { continue };
                if row.len() != tables.len() + 1 {
                    continue;
                }
                let tenant: Uuid = row.try_get(0)?;
                let n = (1..=tables.len()).map(|i| row.try_get::<i64, _>(i)).collect::<Result<Vec<_>, _>>()?;
                counts.push((tenant, n));
            }
        }
        let _ = conn.close().await;
        if counts.len() != tenants.len() {
            return Err(Error::Backend(sqlx::Error::Protocol(format!(
                "storage count answered for {} of {} tenants",
                counts.len(),
                tenants.len()
            ))));
        }
        Ok(Holdings { kind: b.kind, tables, sizes, counts })
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
        // Only the filters given are in the statement: `$x = '' OR ...` would
        // keep the planner from the trigram indexes. Values are numbered from `first`.
        let pattern = crate::tenants::like_pattern(query);
        let filter = |first: usize| {
            let mut clauses = Vec::new();
            let mut values: Vec<sea_orm::Value> = Vec::new();
            if !pattern.is_empty() {
                let n = first + values.len();
                clauses.push(format!("(t.slug ILIKE '%' || ${n} || '%' OR t.name ILIKE '%' || ${n} || '%')"));
                values.push(pattern.clone().into());
            }
            for (column, value) in [("tier", tier), ("status", status)] {
                if !value.is_empty() {
                    clauses.push(format!("t.{column} = ${}", first + values.len()));
                    values.push(value.into());
                }
            }
            let sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
            (sql, values)
        };
        let window = Window { hours: 24 };
        // `usage_rows` binds its own first two values.
        let (sql, mut values) = filter(3);
        let n = 3 + values.len();
        values.extend([(per_page as i64).into(), ((page * per_page) as i64).into()]);
        let rows =
            self.usage_rows(window, &format!("{sql} ORDER BY t.slug LIMIT ${n} OFFSET ${}", n + 1), values).await?;
        let (sql, values) = filter(1);
        let total = self
            .registry()
            .query_one_raw(stmt(&format!("SELECT count(*) AS n FROM tenants t {sql}"), values))
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
                    if let Err(e) = self.fold_sign_ins().await {
                        tracing::warn!(error = %e, "sign-in fold failed");
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

/// Runs one fold statement: the samples it folded.
/// The oldest samples, at most [`ROLLUP_BATCH`] of them: up to which id, how
/// many, and of how many tenants.
struct Batch {
    upto: i64,
    samples: i64,
    tenants: i64,
}

impl Batch {
    async fn next(db: &impl ConnectionTrait) -> Result<Option<Batch>, Error> {
        let row = db
            .query_one_raw(stmt(
                "SELECT max(id) AS upto, count(*) AS samples, count(DISTINCT tenant_id) AS tenants \
                 FROM (SELECT id, tenant_id FROM usage_samples ORDER BY id LIMIT $1) b",
                vec![ROLLUP_BATCH.into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(match row.try_get::<Option<i64>>("", "upto")? {
            Some(upto) => {
                Some(Batch { upto, samples: row.try_get("", "samples")?, tenants: row.try_get("", "tenants")? })
            }
            None => None,
        })
    }
}

async fn fold(db: &impl ConnectionTrait, sql: &str, values: Vec<sea_orm::Value>) -> Result<i64, Error> {
    Ok(db.query_one_raw(stmt(sql, values)).await?.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
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
