//! The admin listener's registry-derived Prometheus series, read at scrape
//! time: tenants by tier and status, operations by kind and state, each
//! backend's schema version, migration state and tenants, pending usage
//! samples, and the top tenants of the last hour (bounded: per-tenant series
//! for [`TOP_TENANTS`] tenants only; the rest is in the usage API).

use sea_orm::{ConnectionTrait, FromQueryResult};
use tenantry_core::metrics::{gauge_family, label};

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::stmt;

/// Tenants given their own series.
pub const TOP_TENANTS: i64 = 10;

#[derive(FromQueryResult)]
struct Pair {
    a: String,
    b: String,
    n: i64,
}

#[derive(FromQueryResult)]
struct BackendRow {
    name: String,
    kind: String,
    engine: String,
    schema_version: i32,
    migration_state: String,
    tenants: i64,
}

#[derive(FromQueryResult)]
struct TopRow {
    slug: String,
    tier: String,
    requests: i64,
    db_time_us: i64,
}

impl ControlPlane {
    /// Prometheus text of the registry's state.
    pub async fn registry_metrics(&self) -> Result<String, Error> {
        let db = self.registry();
        let pairs = |sql: &str| Pair::find_by_statement(stmt(sql, vec![])).all(db);
        let tenants =
            pairs("SELECT tier AS a, status AS b, count(*) AS n FROM tenants GROUP BY 1, 2 ORDER BY 1, 2").await?;
        let ops =
            pairs("SELECT kind AS a, state AS b, count(*) AS n FROM operations GROUP BY 1, 2 ORDER BY 1, 2").await?;
        let backends = BackendRow::find_by_statement(stmt(
            "SELECT b.name, b.kind, b.engine, b.schema_version, b.migration_state, \
             (SELECT count(*) FROM placements p WHERE p.backend_id = b.id) AS tenants \
             FROM backends b WHERE b.status <> 'retired' ORDER BY b.name",
            vec![],
        ))
        .all(db)
        .await?;
        let top = TopRow::find_by_statement(stmt(
            "SELECT t.slug, t.tier, sum(u.requests)::bigint AS requests, sum(u.db_time_us)::bigint AS db_time_us \
             FROM usage_rollups u JOIN tenants t ON t.id = u.tenant_id \
             WHERE u.granularity = 'hour' AND u.period_start >= date_trunc('hour', now(), 'UTC') - interval '1 hour' \
             GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT $1",
            vec![TOP_TENANTS.into()],
        ))
        .all(db)
        .await?;
        let pending = db
            .query_one_raw(stmt("SELECT count(*) AS n FROM usage_samples", vec![]))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);

        let mut out = String::new();
        {
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "# HELP tenantry_admin_console_sign_ins_refused_total Console sign-ins refused (not the admin token) since start.\n\
                 # TYPE tenantry_admin_console_sign_ins_refused_total counter\n\
                 tenantry_admin_console_sign_ins_refused_total {}",
                self.console_sign_ins_refused()
            );
        }
        gauge_family(
            &mut out,
            "tenantry_tenants",
            "Tenants by tier and status.",
            tenants.iter().map(|p| (format!("tier=\"{}\",status=\"{}\"", label(&p.a), label(&p.b)), p.n as f64)),
        );
        gauge_family(
            &mut out,
            "tenantry_operations",
            "Operations by kind and state.",
            ops.iter().map(|p| (format!("kind=\"{}\",state=\"{}\"", label(&p.a), label(&p.b)), p.n as f64)),
        );
        let backend_labels =
            |b: &BackendRow| format!("backend=\"{}\",kind=\"{}\",engine=\"{}\"", label(&b.name), b.kind, b.engine);
        gauge_family(
            &mut out,
            "tenantry_backend_schema_version",
            "Tenant-schema version of each backend.",
            backends.iter().map(|b| (backend_labels(b), b.schema_version as f64)),
        );
        gauge_family(
            &mut out,
            "tenantry_backend_migration_failed",
            "1 when the backend's last migration failed.",
            backends.iter().map(|b| (backend_labels(b), f64::from(u8::from(b.migration_state == "failed")))),
        );
        gauge_family(
            &mut out,
            "tenantry_backend_tenants",
            "Tenants placed on each backend.",
            backends.iter().map(|b| (backend_labels(b), b.tenants as f64)),
        );
        gauge_family(
            &mut out,
            "tenantry_usage_samples_pending",
            "App usage samples not yet folded into rollups.",
            [(String::new(), pending as f64)],
        );
        gauge_family(
            &mut out,
            "tenantry_top_tenant_requests",
            "Requests since the start of the previous hour, top tenants only.",
            top.iter().map(|t| (format!("tenant=\"{}\",tier=\"{}\"", label(&t.slug), t.tier), t.requests as f64)),
        );
        gauge_family(
            &mut out,
            "tenantry_top_tenant_db_seconds",
            "Database seconds since the start of the previous hour, top tenants only.",
            top.iter()
                .map(|t| (format!("tenant=\"{}\",tier=\"{}\"", label(&t.slug), t.tier), t.db_time_us as f64 / 1e6)),
        );
        Ok(out)
    }
}
