//! Per-tenant usage counted in memory on the request path (requests, client
//! and server errors, time holding a database connection) and appended to the
//! registry's `usage_samples` every `usage_flush_ms`. That one INSERT-only table
//! is the app role's only write to the registry; the control plane folds the
//! samples into hourly and daily rollups. A failed flush keeps the counts for
//! the next one; a process killed between flushes loses at most one interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use uuid::Uuid;

/// Tenants per INSERT of a flush. 10,000 tenants' counts in one statement
/// hold a registry core for tens of milliseconds, long enough to queue
/// requests behind it on a busy host; slices of 1,000, each followed by a pause
/// as long as it took, keep every statement short (the fold does the same).
pub const FLUSH_SLICE_TENANTS: usize = 1_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub requests: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub db_time_us: i64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.requests += o.requests;
        self.client_errors += o.client_errors;
        self.server_errors += o.server_errors;
        self.db_time_us += o.db_time_us;
    }
}

/// The tenant a request was served for (set by the tenant extractor).
#[derive(Clone, Copy)]
pub struct TenantTag(pub Uuid);

#[derive(Default)]
pub struct UsageMeter {
    counts: Mutex<HashMap<Uuid, Counts>>,
}

impl UsageMeter {
    fn add(&self, tenant: Uuid, c: Counts) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(tenant).or_default().add(c);
    }

    /// One finished request of `tenant` with its HTTP status.
    pub fn request(&self, tenant: Uuid, status: u16) {
        self.add(
            tenant,
            Counts {
                requests: 1,
                client_errors: i64::from((400..500).contains(&status)),
                server_errors: i64::from(status >= 500),
                db_time_us: 0,
            },
        );
    }

    /// Time a request of `tenant` held a database connection.
    pub fn db_time(&self, tenant: Uuid, d: Duration) {
        self.add(tenant, Counts { db_time_us: d.as_micros() as i64, ..Counts::default() });
    }

    /// Counts not yet flushed (for tests).
    pub fn pending(&self) -> HashMap<Uuid, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tenants with counts not yet flushed (for /metrics).
    pub fn pending_tenants(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Appends everything counted so far to the registry, in slices of
    /// [`FLUSH_SLICE_TENANTS`] tenants each followed by a pause as long as it
    /// took; on failure the counts not yet written are kept for the next
    /// flush. Returns the tenants written.
    pub async fn flush(&self, registry: &DatabaseConnection) -> Result<usize, DbErr> {
        let drained: Vec<(Uuid, Counts)> =
            std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        let mut written = 0;
        for slice in drained.chunks(FLUSH_SLICE_TENANTS) {
            let started = std::time::Instant::now();
            if let Err(e) = Self::append(registry, slice).await {
                for (tenant, c) in &drained[written..] {
                    self.add(*tenant, *c);
                }
                return Err(e);
            }
            written += slice.len();
            if written < drained.len() {
                tokio::time::sleep(started.elapsed()).await;
            }
        }
        Ok(written)
    }

    /// One INSERT of `slice`'s counts: five arrays, whatever the number of
    /// tenants (one parameter per tenant and column would pass PostgreSQL's
    /// 65,535 parameter limit at 13,108 tenants).
    async fn append(registry: &DatabaseConnection, slice: &[(Uuid, Counts)]) -> Result<(), DbErr> {
        let tenants: Vec<Uuid> = slice.iter().map(|(t, _)| *t).collect();
        let column = |f: fn(&Counts) -> i64| slice.iter().map(|(_, c)| f(c)).collect::<Vec<i64>>();
        let cols = (
            tenants,
            column(|c| c.requests),
            column(|c| c.client_errors),
            column(|c| c.server_errors),
            column(|c| c.db_time_us),
        );
        sea_orm::sqlx::query(
            "INSERT INTO usage_samples (tenant_id, at, requests, client_errors, server_errors, db_time_us) \
             SELECT t, now(), r, c, s, d FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) \
             AS u(t, r, c, s, d)",
        )
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .execute(registry.get_postgres_connection_pool())
        .await
        .map(|_| ())
        .map_err(|e| DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into())))
    }
}

/// Flushes `meter` every `every` until aborted
/// (and the sign-ins of `signins`).
pub async fn run_flusher(
    meter: Arc<UsageMeter>,
    signins: Arc<crate::signins::SignInMeter>,
    registry: DatabaseConnection,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = meter.flush(&registry).await {
            tracing::warn!(error = %e, "usage flush failed; kept for the next one");
        }
        if let Err(e) = signins.flush(&registry).await {
            tracing::warn!(error = %e, "sign-in flush failed; kept for the next one");
        }
    }
}

/// Middleware: counts every finished request of an authenticated tenant,
/// requests turned away by a limit (429) included.
pub async fn record(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    let resolver = req.app_data::<actix_web::web::Data<crate::Resolver>>().cloned();
    let res = next.call(req).await?;
    let tenant = res.request().extensions().get::<TenantTag>().copied();
    if let (Some(r), Some(TenantTag(t))) = (resolver, tenant) {
        r.usage().request(t, res.status().as_u16());
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_errors_and_time_per_tenant() {
        let m = UsageMeter::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        m.request(a, 200);
        m.request(a, 404);
        m.request(a, 503);
        m.request(b, 429);
        m.db_time(a, Duration::from_micros(1500));
        let p = m.pending();
        assert_eq!(p[&a], Counts { requests: 3, client_errors: 1, server_errors: 1, db_time_us: 1500 });
        assert_eq!(p[&b], Counts { requests: 1, client_errors: 1, server_errors: 0, db_time_us: 0 });
    }
}
