//! The dry run of a move (`GET /v1/tenants/{id}/move-plan`) and the
//! preflight every move runs first: the same checks, read from the source
//! and the target, and the tenant's size per table.

use sea_orm::ConnectionTrait;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, Row};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tenantry_core::{BackendKind, BackendStatus, Engine};
use tenantry_provisioner::quote_ident;

use crate::backend::{Side, tenant_tables};
use crate::backends::BackendView;
use crate::error::Error;
use crate::kind::{Run, Stop};
use crate::moves::copy::counts;
use crate::moves::facts::{Facts, MoveParams};
use crate::operation::OperationKind;
use crate::plane::ControlPlane;
use crate::registry::stmt;

/// One preflight check and what it found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok, detail: detail.into() }
}

/// Rows and bytes the tenant has in one table.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TableSize {
    pub table: String,
    pub rows: i64,
    pub bytes: i64,
}

/// A backend as a move plan names it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanBackend {
    pub id: Option<Uuid>,
    pub name: String,
    pub kind: BackendKind,
    pub engine: Engine,
    pub schema_version: i32,
}

/// A dry run: what a move would copy and whether it can start. Nothing changes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MovePlan {
    pub tenant_id: Uuid,
    /// `promote`, `move` or `demote`.
    pub kind: OperationKind,
    pub source: PlanBackend,
    /// `id` is null when the target is provisioned by the move.
    pub target: PlanBackend,
    pub tables: Vec<TableSize>,
    pub total_rows: i64,
    pub total_bytes: i64,
    pub checks: Vec<Check>,
    /// Every check passed.
    pub ready: bool,
    /// `logical_replication`: online, writes pause only at the cutover.
    pub method: String,
    pub estimated_copy_secs: f64,
    /// Upper bound of the write pause: the cutover gives up and retries past it.
    pub max_write_pause_ms: u64,
}

impl ControlPlane {
    /// The dry run behind `GET /v1/tenants/{id}/move-plan?target=`: `target` is
    /// a backend id or name, `dedicated` / `dedicated:logical` /
    /// `dedicated:rds` (a promotion), or `shared` (a demotion to the least
    /// loaded pool).
    pub async fn move_plan(&self, tenant: &str, target: &str) -> Result<MovePlan, Error> {
        let t = self.tenant(tenant).await?;
        let placement = t
            .placement
            .clone()
            .ok_or(Error::Conflict { code: "tenant_not_placed", message: "the tenant has no backend yet".into() })?;
        let source = self.side(placement.backend_id).await?;
        let (kind, target_backend, new_engine) = match target {
            "dedicated" | "dedicated:logical" => (OperationKind::Promote, None, Some(Engine::Logical)),
            "dedicated:rds" => (OperationKind::Promote, None, Some(Engine::Rds)),
            "shared" => (OperationKind::Demote, Some(self.pick_shared_pool(&t.region).await?), None),
            other => {
                let b = match Uuid::parse_str(other) {
                    Ok(id) => self.backend(id).await.ok(),
                    Err(_) => self.backends().await?.into_iter().find(|b| b.name == other),
                };
                let b = b.ok_or_else(|| {
                    Error::invalid(
                        "unknown_target",
                        format!(
                            "`{other}` is neither a backend id or name nor one of dedicated, dedicated:rds, shared"
                        ),
                    )
                })?;
                let kind = if b.kind == BackendKind::SharedPool && source.backend.kind == BackendKind::Dedicated {
                    OperationKind::Demote
                } else {
                    OperationKind::Move
                };
                (kind, Some(b), None)
            }
        };
        let mut checks = vec![check(
            "tenant_active",
            t.status == tenantry_core::TenantStatus::Active,
            format!("tenant is {}", t.status.as_str()),
        )];
        if kind == OperationKind::Promote && t.tier == tenantry_core::Tier::Dedicated {
            checks.push(check("tier", false, "the tenant is already dedicated"));
        }
        if kind == OperationKind::Demote && t.tier == tenantry_core::Tier::Shared && target == "shared" {
            checks.push(check("tier", false, "the tenant is already shared"));
        }
        if new_engine == Some(Engine::Rds) && self.rds.is_none() {
            checks.push(check("engine_available", false, "the rds engine is not configured"));
        }
        let busy = self.operations(Some(t.id), None, 20).await?;
        let running = busy.iter().find(|o| !o.state.is_final());
        checks.push(check(
            "no_other_operation",
            running.is_none(),
            running.map_or("none running".to_string(), |o| format!("{} operation {} is {}", o.kind, o.id, o.state)),
        ));
        let target_side = match &target_backend {
            Some(b) => {
                if let Some(p) = target_problem(&source.backend, b) {
                    checks.push(check("target_usable", false, p.to_string()));
                    None
                } else {
                    Some(self.side(b.id).await?)
                }
            }
            None => None,
        };
        let (more, tables) = assess(self, t.id, &source, target_side.as_ref()).await?;
        checks.extend(more);
        let total_rows = tables.iter().map(|s| s.rows).sum();
        let total_bytes = tables.iter().map(|s| s.bytes).sum();
        let plan_backend = |b: &BackendView| PlanBackend {
            id: Some(b.id),
            name: b.name.clone(),
            kind: b.kind,
            engine: b.engine,
            schema_version: b.schema_version,
        };
        let target_view = match &target_backend {
            Some(b) => plan_backend(b),
            None => PlanBackend {
                id: None,
                name: "(new dedicated database)".into(),
                kind: BackendKind::Dedicated,
                engine: new_engine.unwrap_or(Engine::Logical),
                schema_version: tenantry_core::TENANT_SCHEMA_LATEST,
            },
        };
        if target_backend.is_none() {
            checks.push(check(
                "same_schema_version",
                source.backend.schema_version == tenantry_core::TENANT_SCHEMA_LATEST,
                format!(
                    "source at {}, a new database starts at {}",
                    source.backend.schema_version,
                    tenantry_core::TENANT_SCHEMA_LATEST
                ),
            ));
        }
        let cfg = &self.config().moves;
        Ok(MovePlan {
            tenant_id: t.id,
            kind,
            source: plan_backend(&source.backend),
            target: target_view,
            ready: checks.iter().all(|c| c.ok),
            tables,
            total_rows,
            total_bytes,
            checks,
            method: "logical_replication".into(),
            estimated_copy_secs: total_rows as f64 / cfg.copy_rows_per_sec.max(1) as f64,
            max_write_pause_ms: cfg.fence_timeout_ms,
        })
    }
}

/// The preflight proper: what the source and (when it exists) the target
/// say about themselves, and the tenant's size per table.
async fn assess(
    cp: &ControlPlane,
    tenant: Uuid,
    source: &Side,
    target: Option<&Side>,
) -> Result<(Vec<Check>, Vec<TableSize>), Error> {
    let mut checks = Vec::new();
    let mut admin = source.admin().await?;
    let wal: String = sqlx::query_scalar("SELECT current_setting('wal_level')").fetch_one(&mut admin).await?;
    checks.push(check("wal_level_logical", wal == "logical", format!("source wal_level = {wal}")));
    let (free_slots, free_senders): (i64, i64) = {
        let r = sqlx::query(
            "SELECT current_setting('max_replication_slots')::bigint - (SELECT count(*) FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::bigint - (SELECT count(*) FROM pg_stat_replication)",
        )
        .fetch_one(&mut admin)
        .await?;
        (r.try_get(0)?, r.try_get(1)?)
    };
    checks.push(check(
        "replication_slots_free",
        free_slots >= 3,
        format!("{free_slots} free on the source (a move uses 1, plus 1 per table while copying)"),
    ));
    checks.push(check("wal_senders_free", free_senders >= 3, format!("{free_senders} free on the source")));
    let identity: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relreplident = 'f' OR (c.relreplident = 'd' AND EXISTS ( \
             SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = c.oid AND i.indisprimary AND a.attname = 'tenant_id')) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'tenant_residency'",
    )
    .fetch_all(&mut admin)
    .await?;
    let bad: Vec<&str> = identity.iter().filter(|(_, ok)| !ok).map(|(t, _)| t.as_str()).collect();
    checks.push(check(
        "replica_identity",
        bad.is_empty(),
        if bad.is_empty() {
            "every tenant table's replica identity covers tenant_id".to_string()
        } else {
            format!("not covering tenant_id: {}", bad.join(", "))
        },
    ));
    admin.close().await?;
    let mut src = cp.tenant_conn(source, tenant).await?;
    let tables = tenant_tables(&mut src).await?;
    let mut sizes = Vec::new();
    for t in &tables {
        let sql = format!(
            "SELECT count(*), coalesce(sum(pg_column_size(r.*)), 0)::bigint FROM public.{} r WHERE tenant_id = $1",
            quote_ident(t)
        );
        let r = sqlx::query(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut src).await?;
        sizes.push(TableSize { table: t.clone(), rows: r.try_get(0)?, bytes: r.try_get(1)? });
    }
    let src_version: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tenantry_schema_migrations")
        .fetch_one(&mut src)
        .await?;
    src.close().await?;
    if let Some(target) = target {
        match cp.tenant_conn(target, tenant).await {
            Err(e) => checks.push(check("target_reachable", false, e.to_string())),
            Ok(mut dst) => {
                checks.push(check("target_reachable", true, format!("{} answers", target.backend.name)));
                let dst_version: i32 =
                    sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tenantry_schema_migrations")
                        .fetch_one(&mut dst)
                        .await?;
                checks.push(check(
                    "same_schema_version",
                    src_version == dst_version,
                    format!("source at {src_version}, target at {dst_version}"),
                ));
                let present = counts(&mut dst, tenant, &tables).await?.values().sum::<i64>();
                checks.push(check(
                    "target_empty_for_tenant",
                    present == 0,
                    format!("{present} rows of this tenant already on the target"),
                ));
                dst.close().await?;
                let mut tadmin = target.admin().await?;
                let free: i64 = sqlx::query_scalar(
                    "SELECT current_setting('max_logical_replication_workers')::bigint - \
                     (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL)",
                )
                .fetch_one(&mut tadmin)
                .await?;
                checks.push(check(
                    "replication_workers_free",
                    free >= 2,
                    format!("{free} logical replication workers free on the target"),
                ));
                tadmin.close().await?;
            }
        }
    }
    Ok((checks, sizes))
}

pub(crate) async fn preflight(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    run.cp
        .registry()
        .execute_raw(stmt(
            "UPDATE operations SET progress = progress || jsonb_build_object('queued_ms', \
             round(extract(epoch FROM now() - created_at) * 1000)) WHERE id = $1 AND NOT progress ? 'queued_ms'",
            vec![f.op.id.into()],
        ))
        .await?;
    let mut failed: Vec<Check> = Vec::new();
    if let Some(p) = target_problem(&f.source.backend, &f.target.backend) {
        // A promotion's own new database is empty of tenants; anything else is a conflict.
        failed.push(check("target_usable", false, p.to_string()));
    }
    let placed = run
        .cp
        .registry()
        .query_one_raw(stmt(
            "SELECT 1 AS here FROM placements WHERE tenant_id = $1 AND backend_id = $2 AND epoch = $3",
            vec![f.tenant.into(), f.source.backend.id.into(), f.epoch.into()],
        ))
        .await?;
    if placed.is_none() {
        failed.push(check("placement_unchanged", false, "the tenant's placement changed since the move was queued"));
    }
    let (checks, sizes) = assess(run.cp, f.tenant, &f.source, Some(&f.target)).await?;
    failed.extend(checks.iter().filter(|c| !c.ok).cloned());
    let tables: Vec<&str> = sizes.iter().map(|s| s.table.as_str()).collect();
    run.set_params(json!({"tables": tables, "preflight": checks})).await?;
    if !failed.is_empty() {
        let why: Vec<String> = failed.iter().map(|c| format!("{} ({})", c.name, c.detail)).collect();
        return Err(Stop::Failed(Error::invalid("preflight_failed", format!("preflight failed: {}", why.join("; ")))));
    }
    let rows: i64 = sizes.iter().map(|s| s.rows).sum();
    let bytes: i64 = sizes.iter().map(|s| s.bytes).sum();
    run.heartbeat(json!({"rows_total": rows, "bytes_total": bytes, "rows_copied": 0})).await
}

/// Why `target` cannot receive a tenant from `source`, if it cannot.
pub(crate) fn target_problem(source: &BackendView, target: &BackendView) -> Option<Error> {
    if target.id == source.id {
        return Some(Error::Conflict {
            code: "already_there",
            message: "the tenant already lives on that backend".into(),
        });
    }
    if target.kind == BackendKind::Template {
        return Some(Error::invalid("not_a_target", "the template database holds no tenants"));
    }
    if target.status != BackendStatus::Ready {
        return Some(Error::Conflict {
            code: "target_not_ready",
            message: format!("backend `{}` is {}, not ready", target.name, target.status),
        });
    }
    if target.kind == BackendKind::Dedicated && target.tenants > 0 {
        return Some(Error::Conflict {
            code: "backend_in_use",
            message: format!("dedicated backend `{}` already holds a tenant", target.name),
        });
    }
    if target.schema_version != source.schema_version {
        return Some(Error::Conflict {
            code: "schema_mismatch",
            message: format!(
                "source is at schema version {}, target at {}; migrate them to the same version first",
                source.schema_version, target.schema_version
            ),
        });
    }
    None
}
