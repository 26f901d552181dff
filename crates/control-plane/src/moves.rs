//! Online moves: promote (shared -> a new dedicated database), move (to any
//! ready backend) and demote (dedicated -> a shared pool). The tenant keeps
//! working throughout; writes pause only between fence and flip.
//!
//! ```text
//! [create_database | create_instance wait_available bootstrap] register_backend   (promote only)
//! preflight   same schema, wal_level=logical, free slots/senders/workers, replica identity,
//!             target reachable and empty for this tenant, no other operation
//! subscribe   source: publication (row filter tenant_id = T on every tenant table; insert,
//!             update, delete; no truncate) then slot; target: subscription, create_slot = false
//! copy        initial sync of every table (rows copied / total in the progress)
//! catch_up    until the slot's lag is under `max_lag_bytes`
//! cutover     one source transaction: exclusive advisory lock (waits for the tenant's in-flight
//!             transactions, which hold it shared), residency `fenced`, sentinel row -> from its
//!             commit every new tenant transaction on the source fails at its first statement
//!             (TR001) and the app waits, without holding a connection, and re-resolves -> the
//!             sentinel arrives on the target (apply is in commit order: every earlier write is
//!             there) -> target residency at epoch+1 -> placement flipped in the registry
//!             (NOTIFY): the waiting requests run on the target. Nothing in the pause grows
//!             with the tenant's size. Past `fence_timeout_ms` the fence is lifted and the
//!             cutover retried later.
//! cleanup     subscription, slot (and table-sync slots), publication dropped
//! verify      per-table counts, checksums and foreign keys: the source (fenced, still) against
//!             the target as of the flip (a snapshot taken inside the pause)
//! release_source  purge the tenant's rows from a shared source in batches, or retire a
//!             dedicated source (final snapshot on RDS)
//! ```
//!
//! Every step is idempotent and recorded; a crashed worker's successor resumes
//! at the recorded step. Before the flip, cancel or failure rolls everything
//! back (subscription, slot, publication, rows copied, a target provisioned for
//! the move) and lifts the fence; after it, the move only goes forward.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, Row};
use sea_orm::{ConnectionTrait, TransactionTrait};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use tenantry_core::db::Credentials;
use tenantry_core::{Engine, new_id};
use tenantry_provisioner::quote_ident;

use crate::operations::{Claimed, Lease, OperationKind, OperationView, enqueue, failpoint, finish, stmt};
use crate::service::{BackendView, TenantView, audit};
use crate::{ControlPlane, Error};

/// The steps every move runs once its target exists.
pub const MOVE_STEPS: &[&str] =
    &["preflight", "subscribe", "copy", "catch_up", "cutover", "cleanup", "verify", "release_source"];
/// Promote to a new logical database, then move.
pub const PROMOTE_STEPS: &[&str] = &[
    "create_database",
    "register_backend",
    "preflight",
    "subscribe",
    "copy",
    "catch_up",
    "cutover",
    "cleanup",
    "verify",
    "release_source",
];
/// Promote to a new RDS instance, then move.
pub const PROMOTE_RDS_STEPS: &[&str] = &[
    "create_instance",
    "wait_available",
    "bootstrap",
    "register_backend",
    "preflight",
    "subscribe",
    "copy",
    "catch_up",
    "cutover",
    "cleanup",
    "verify",
    "release_source",
];

/// Replication objects of one move share this name (publication, slot,
/// subscription), so a resumed run finds what it made and a sweep finds orphans.
pub fn replication_name(op: Uuid) -> String {
    format!("tenantry_mv_{}", op.simple())
}

const NAME_PREFIX: &str = "tenantry_mv_";
/// A purge of at least this many rows is followed by a VACUUM of the tables.
const VACUUM_AFTER_ROWS: i64 = 10_000;
/// `lock_not_available`: a `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Tables holding tenant rows, found from the catalog (so a table added by a
/// later migration is never forgotten), children before parents.
const TENANT_TABLES_SQL: &str = "SELECT c.relname::text AS name FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'tenant_residency' \
    ORDER BY EXISTS (SELECT 1 FROM pg_constraint f WHERE f.conrelid = c.oid AND f.contype = 'f') DESC, c.relname";

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
    pub kind: String,
    pub engine: String,
    pub schema_version: i32,
}

/// A dry run: what a move would copy and whether it can start. Nothing changes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MovePlan {
    pub tenant_id: Uuid,
    /// `promote`, `move` or `demote`.
    pub kind: String,
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

/// One end of a move and how to reach it.
pub(crate) struct Side {
    pub(crate) backend: BackendView,
    admin: Credentials,
}

impl Side {
    fn options(&self, creds: &Credentials) -> PgConnectOptions {
        connect_options(&self.backend, creds, "tenantry-move")
    }

    async fn admin(&self) -> Result<PgConnection, Error> {
        Ok(PgConnection::connect_with(&self.options(&self.admin)).await?)
    }

    /// `CONNECTION` string for a subscription reading from this side.
    fn conninfo(&self) -> String {
        let v = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} dbname={} user={} password={}",
            v(&self.backend.host),
            self.backend.port,
            v(&self.backend.database),
            v(&self.admin.user),
            v(self.admin.password.expose_secret())
        )
    }
}

/// What a step loop stops with.
pub(crate) enum Stop {
    Cancelled,
    Lost,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<sea_orm::DbErr> for Stop {
    fn from(e: sea_orm::DbErr) -> Self {
        Stop::Failed(e.into())
    }
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        Stop::Failed(e.into())
    }
}

/// What survives between steps of one run in this process: the target's
/// snapshot as of the flip, for the checksums.
#[derive(Default)]
pub(crate) struct MoveRun {
    snapshot: Option<PgConnection>,
}

/// Facts of a running move, read back from its operation row.
struct Facts {
    op: OperationView,
    tenant: Uuid,
    epoch: i64,
    source: Side,
    target: Side,
    tables: Vec<String>,
    name: String,
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// How to reach `backend` as `creds`.
pub(crate) fn connect_options(backend: &BackendView, creds: &Credentials, application: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&backend.host)
        .port(u16::try_from(backend.port).unwrap_or(5432))
        .database(&backend.database)
        .username(&creds.user)
        .password(creds.password.expose_secret())
        .application_name(application)
}

pub(crate) async fn tenant_tables(conn: &mut PgConnection) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar::<_, String>(TENANT_TABLES_SQL).fetch_all(conn).await?)
}

async fn counts(conn: &mut PgConnection, tenant: Uuid, tables: &[String]) -> Result<BTreeMap<String, i64>, Error> {
    let mut out = BTreeMap::new();
    for t in tables {
        let sql = format!("SELECT count(*) FROM public.{} WHERE tenant_id = $1", quote_ident(t));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *conn).await?;
        out.insert(t.clone(), n);
    }
    Ok(out)
}

/// Per table: row count and an order-independent sum of row hashes (the
/// session's formatting settings are pinned in [`ControlPlane::tenant_conn`]).
async fn checksums(conn: &mut PgConnection, tenant: Uuid, tables: &[String]) -> Result<BTreeMap<String, Value>, Error> {
    let mut out = BTreeMap::new();
    for t in tables {
        let sql = format!(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::bigint), 0)::text \
             FROM public.{} r WHERE tenant_id = $1",
            quote_ident(t)
        );
        let row = sqlx::query(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *conn).await?;
        out.insert(t.clone(), json!({"rows": row.try_get::<i64, _>(0)?, "sum": row.try_get::<String, _>(1)?}));
    }
    Ok(out)
}

/// Child rows of the tenant whose parent row is missing, per foreign key.
/// Table-sync workers copy each table at its own snapshot and do not check
/// foreign keys, so the target is checked explicitly.
async fn orphans(conn: &mut PgConnection, tenant: Uuid) -> Result<BTreeMap<String, i64>, Error> {
    /// name, child table, parent table, child columns, parent columns
    type ForeignKey = (String, String, String, Vec<String>, Vec<String>);
    let fks: Vec<ForeignKey> = sqlx::query_as(
        "SELECT c.conname::text, c.conrelid::regclass::text, c.confrelid::regclass::text,             array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),             array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)                   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace          WHERE c.contype = 'f' AND n.nspname = 'public'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for (name, child, parent, child_cols, parent_cols) in fks {
        let join: Vec<String> = child_cols
            .iter()
            .zip(&parent_cols)
            .map(|(c, p)| format!("p.{} = ch.{}", quote_ident(p), quote_ident(c)))
            .collect();
        // regclass::text is already a quoted, schema-qualified-when-needed name.
        let sql = format!(
            "SELECT count(*) FROM {child} ch WHERE ch.tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
            join.join(" AND ")
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *conn).await?;
        out.insert(name, n);
    }
    Ok(out)
}

/// `public."a", public."b"` for ANALYZE and VACUUM.
pub(crate) fn table_list(tables: &[String]) -> String {
    tables.iter().map(|t| format!("public.{}", quote_ident(t))).collect::<Vec<_>>().join(", ")
}

async fn exists(conn: &mut PgConnection, sql: &'static str, name: &str) -> Result<bool, Error> {
    Ok(sqlx::query(sql).bind(name).fetch_optional(conn).await?.is_some())
}

/// Drops a subscription (and, through it, its slots on the publisher). When the
/// publisher cannot be reached the subscription is detached from its slot
/// first; the slots are then dropped on the source by [`drop_slots`].
/// Returns the subscription's oid, whose table-sync slots are named after it.
async fn drop_subscription(target: &mut PgConnection, name: &str) -> Result<Option<i64>, Error> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT oid::bigint FROM pg_subscription WHERE subname = $1")
        .bind(name)
        .fetch_optional(&mut *target)
        .await?;
    if oid.is_none() {
        return Ok(None);
    }
    let ident = quote_ident(name);
    if sqlx::raw_sql(AssertSqlSafe(format!("DROP SUBSCRIPTION IF EXISTS {ident}"))).execute(&mut *target).await.is_err()
    {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER SUBSCRIPTION {ident} DISABLE; ALTER SUBSCRIPTION {ident} SET (slot_name = NONE); \
             DROP SUBSCRIPTION IF EXISTS {ident}"
        )))
        .execute(&mut *target)
        .await?;
    }
    Ok(oid)
}

/// Drops the move's slot and its subscription's table-sync slots on the
/// source, ending any walsender still attached. Safe to repeat.
async fn drop_slots(source: &mut PgConnection, name: &str, sub_oid: Option<i64>) -> Result<(), Error> {
    let sync = sub_oid.map(|o| format!("pg_{o}_sync_%")).unwrap_or_else(|| "-".into());
    for _ in 0..100 {
        let rows = sqlx::query(
            "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2",
        )
        .bind(name)
        .bind(&sync)
        .fetch_all(&mut *source)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            let slot: String = r.try_get(0)?;
            match r.try_get::<Option<i32>, _>(1)? {
                Some(pid) => {
                    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut *source).await?;
                }
                None => {
                    // Lost a race with a walsender attaching, or someone dropped it: look again.
                    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&slot).execute(&mut *source).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Conflict { code: "slot_busy", message: format!("replication slot `{name}` stays in use") })
}

async fn drop_publication(source: &mut PgConnection, name: &str) -> Result<(), Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))).execute(source).await?;
    Ok(())
}

impl ControlPlane {
    /// Deletes the tenant's rows from every table of a tenant session, in
    /// batches; with `progress`, the operation's lease is renewed and its
    /// `rows_purged` updated after each batch.
    pub(crate) async fn purge(
        &self,
        conn: &mut PgConnection,
        tenant: Uuid,
        tables: &[String],
        batch: i64,
        progress: Option<(Uuid, &str)>,
    ) -> Result<i64, Stop> {
        let mut total = 0;
        for t in tables {
            let keyed: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = ('public.' || quote_ident($1))::regclass \
                 AND attname = 'id' AND atttypid = 'uuid'::regtype AND NOT attisdropped)",
            )
            .bind(t)
            .fetch_one(&mut *conn)
            .await?;
            // Keyset batches along the primary key (tenant_id, id): each batch
            // starts after the last id deleted, so it never rescans the dead
            // tuples earlier batches left behind. Tables without a uuid `id` fall
            // back to ctid batches.
            let keyset = format!(
                "WITH batch AS (SELECT id FROM public.{t} WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3) \
                 DELETE FROM public.{t} d USING batch WHERE d.tenant_id = $1 AND d.id = batch.id RETURNING d.id",
                t = quote_ident(t)
            );
            let by_ctid = format!(
                "DELETE FROM public.{t} WHERE ctid = ANY (ARRAY(SELECT ctid FROM public.{t} WHERE tenant_id = $1 LIMIT $2))",
                t = quote_ident(t)
            );
            let mut after = Uuid::nil();
            loop {
                let n = if keyed {
                    let ids: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(keyset.clone()))
                        .bind(tenant)
                        .bind(after)
                        .bind(batch)
                        .fetch_all(&mut *conn)
                        .await?;
                    after = ids.iter().max().copied().unwrap_or(after);
                    ids.len() as i64
                } else {
                    let r = sqlx::query(AssertSqlSafe(by_ctid.clone()))
                        .bind(tenant)
                        .bind(batch)
                        .execute(&mut *conn)
                        .await?;
                    r.rows_affected() as i64
                };
                total += n;
                if let Some((op, owner)) = progress {
                    self.heartbeat(op, owner, json!({"rows_purged": total})).await?;
                }
                if n < batch {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// How to reach a backend for a move. External backends have no
    /// administrator credentials here and cannot be moved from or to.
    pub(crate) async fn side(&self, backend_id: Uuid) -> Result<Side, Error> {
        let backend = self.backend(backend_id).await?;
        let cfg = self.config();
        let admin = match backend.engine.as_str() {
            "logical" => {
                Credentials { user: cfg.cluster.admin_user.clone(), password: cfg.cluster.admin_password.clone() }
            }
            "rds" => match &cfg.rds_bootstrap_override {
                Some(o) => Credentials { user: o.admin_user.clone(), password: o.admin_password.clone() },
                None => {
                    let rds = self.rds_engine()?;
                    Credentials {
                        user: rds.config().master_username.clone(),
                        password: rds.master_password(&backend.name),
                    }
                }
            },
            other => {
                return Err(Error::invalid(
                    "engine_unsupported",
                    format!("backend `{}` ({other}) has no administrator credentials; moves need them", backend.name),
                ));
            }
        };
        Ok(Side { backend, admin })
    }

    /// A session as the owner role scoped to one tenant (RLS lets it see that
    /// tenant's rows only), with formatting pinned for checksums.
    pub(crate) async fn tenant_conn(&self, side: &Side, tenant: Uuid) -> Result<PgConnection, Error> {
        let mut c = PgConnection::connect_with(&side.options(&self.config().owner)).await?;
        sqlx::raw_sql(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
             SET extra_float_digits = 3; SET bytea_output = 'hex'",
        )
        .execute(&mut c)
        .await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, false)").bind(tenant.to_string()).execute(&mut c).await?;
        Ok(c)
    }

    // ---- requests -------------------------------------------------------------

    /// The region where `engine` provisions dedicated databases (the cluster's,
    /// or the RDS client's); `None` when the engine is not configured.
    pub fn dedicated_region(&self, engine: Engine) -> Option<String> {
        match engine {
            Engine::Rds => self.rds.as_ref().map(|x| x.config().region.clone()),
            Engine::Logical => Some(self.config().cluster.region.clone()),
            Engine::External => None,
        }
    }

    /// Refuses a region `engine` does not provision in (`None`: its own).
    pub fn check_region(&self, engine: Engine, region: Option<&str>) -> Result<(), Error> {
        match region {
            Some(r) if Some(r) != self.dedicated_region(engine).as_deref() => {
                Err(Error::invalid("region_unavailable", format!("no {} capacity in region `{r}`", engine.as_str())))
            }
            _ => Ok(()),
        }
    }

    /// Promote a shared tenant: provision a dedicated backend, then move there.
    pub async fn promote_tenant(
        &self,
        actor: &str,
        tenant: &str,
        engine: Option<Engine>,
        region: Option<String>,
    ) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        if t.tier == tenantry_core::Tier::Dedicated {
            return Err(Error::Conflict {
                code: "already_dedicated",
                message: format!("tenant `{}` is already on the dedicated tier", t.slug),
            });
        }
        let engine = self.dedicated_engine(engine)?;
        self.check_region(engine, region.as_deref())?;
        // A fresh name per promotion: a tenant demoted and promoted again never
        // meets its retired database or instance (or its final snapshot).
        let suffix = &new_id().simple().to_string()[24..];
        let params = json!({
            "slug": t.slug,
            "engine": engine,
            "database": format!("tenant_{}_{suffix}", t.id.simple()),
            "instance": tenantry_provisioner::rds::instance_id(&format!("{}{suffix}", t.id.simple())),
        });
        self.enqueue_move(actor, &t, OperationKind::Promote, None, params).await
    }

    /// Move a tenant to any ready backend: another shared pool, or an empty
    /// dedicated database.
    pub async fn move_tenant(&self, actor: &str, tenant: &str, target: Uuid) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        let target =
            self.backend(target).await.map_err(|_| Error::invalid("unknown_backend", "no such target backend"))?;
        self.enqueue_move(actor, &t, OperationKind::Move, Some(target), json!({"slug": t.slug})).await
    }

    /// Demote a dedicated tenant to a shared pool (the given one, or the least
    /// loaded of its region), then retire its dedicated backend.
    pub async fn demote_tenant(&self, actor: &str, tenant: &str, pool: Option<Uuid>) -> Result<OperationView, Error> {
        let t = self.tenant(tenant).await?;
        if t.tier == tenantry_core::Tier::Shared {
            return Err(Error::Conflict {
                code: "already_shared",
                message: format!("tenant `{}` is already on the shared tier", t.slug),
            });
        }
        let target = match pool {
            Some(id) => {
                let b = self.backend(id).await.map_err(|_| Error::invalid("unknown_backend", "no such shared pool"))?;
                if b.kind != "shared_pool" {
                    return Err(Error::invalid(
                        "not_a_shared_pool",
                        format!("backend `{}` is not a shared pool", b.name),
                    ));
                }
                b
            }
            None => self.pick_shared_pool(&t.region).await?,
        };
        self.enqueue_move(actor, &t, OperationKind::Demote, Some(target), json!({"slug": t.slug})).await
    }

    /// Checks what can be checked without touching a database, then queues the
    /// operation with the source placement it starts from.
    async fn enqueue_move(
        &self,
        actor: &str,
        t: &TenantView,
        kind: OperationKind,
        target: Option<BackendView>,
        mut params: Value,
    ) -> Result<OperationView, Error> {
        if t.status != tenantry_core::TenantStatus::Active {
            return Err(Error::Conflict {
                code: "tenant_not_active",
                message: format!("tenant `{}` is {} and cannot be moved", t.slug, t.status.as_str()),
            });
        }
        let placement = t
            .placement
            .clone()
            .ok_or(Error::Conflict { code: "tenant_not_placed", message: "the tenant has no backend yet".into() })?;
        let source = self.backend(placement.backend_id).await?;
        if let Some(target) = &target {
            if let Some(problem) = target_problem(&source, target) {
                return Err(problem);
            }
            params["backend_id"] = json!(target.id);
        }
        params["source_backend_id"] = json!(source.id);
        params["epoch"] = json!(placement.epoch);
        let txn = self.registry().begin().await?;
        crate::operations::lock_idle_tenant(&txn, t.id).await?;
        let still = txn
            .query_one_raw(stmt(
                "SELECT 1 AS here FROM placements WHERE tenant_id = $1 AND backend_id = $2 AND epoch = $3",
                vec![t.id.into(), source.id.into(), placement.epoch.into()],
            ))
            .await?;
        if still.is_none() {
            return Err(Error::Conflict {
                code: "placement_changed",
                message: "the tenant moved meanwhile; retry".into(),
            });
        }
        let id = enqueue(&txn, kind, Some(t.id), params, actor).await?;
        txn.commit().await?;
        self.wake_workers();
        self.operation(id).await
    }

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
            "dedicated" | "dedicated:logical" => ("promote", None, Some(Engine::Logical)),
            "dedicated:rds" => ("promote", None, Some(Engine::Rds)),
            "shared" => ("demote", Some(self.pick_shared_pool(&t.region).await?), None),
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
                let kind =
                    if b.kind == "shared_pool" && source.backend.kind == "dedicated" { "demote" } else { "move" };
                (kind, Some(b), None)
            }
        };
        let mut checks = vec![check(
            "tenant_active",
            t.status == tenantry_core::TenantStatus::Active,
            format!("tenant is {}", t.status.as_str()),
        )];
        if kind == "promote" && t.tier == tenantry_core::Tier::Dedicated {
            checks.push(check("tier", false, "the tenant is already dedicated"));
        }
        if kind == "demote" && t.tier == tenantry_core::Tier::Shared && target == "shared" {
            checks.push(check("tier", false, "the tenant is already shared"));
        }
        if new_engine == Some(Engine::Rds) && self.rds.is_none() {
            checks.push(check("engine_available", false, "the rds engine is not configured"));
        }
        let busy = self.operations(Some(t.id), None, 20).await?;
        let running = busy.iter().find(|o| matches!(o.state.as_str(), "pending" | "running" | "cancelling"));
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
        let (more, tables) = self.assess(t.id, &source, target_side.as_ref()).await?;
        checks.extend(more);
        let total_rows = tables.iter().map(|s| s.rows).sum();
        let total_bytes = tables.iter().map(|s| s.bytes).sum();
        let plan_backend = |b: &BackendView| PlanBackend {
            id: Some(b.id),
            name: b.name.clone(),
            kind: b.kind.clone(),
            engine: b.engine.clone(),
            schema_version: b.schema_version,
        };
        let target_view = match &target_backend {
            Some(b) => plan_backend(b),
            None => PlanBackend {
                id: None,
                name: "(new dedicated database)".into(),
                kind: "dedicated".into(),
                engine: new_engine.unwrap_or(Engine::Logical).as_str().into(),
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
            kind: kind.into(),
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

    /// The preflight proper: what the source and (when it exists) the target
    /// say about themselves, and the tenant's size per table.
    async fn assess(
        &self,
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
        let mut src = self.tenant_conn(source, tenant).await?;
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
            match self.tenant_conn(target, tenant).await {
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

    // ---- the runner -----------------------------------------------------------

    async fn facts(&self, op: Uuid) -> Result<Facts, Error> {
        let view = self.operation(op).await?;
        let tenant = view.tenant_id.ok_or(Error::NotFound("tenant"))?;
        let source_id = view.params["source_backend_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or(Error::NotFound("source backend"))?;
        let target_id = view.backend_id.ok_or(Error::NotFound("target backend"))?;
        let epoch = view.params["epoch"].as_i64().ok_or(Error::NotFound("source epoch"))?;
        let tables = view.params["tables"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok(Facts {
            tenant,
            epoch,
            source: self.side(source_id).await?,
            target: self.side(target_id).await?,
            tables,
            name: replication_name(op),
            op: view,
        })
    }

    /// Renews the lease and merges `patch` into the progress; tells whether the
    /// operation was cancelled or taken over.
    pub(crate) async fn heartbeat(&self, op: Uuid, owner: &str, patch: Value) -> Result<(), Stop> {
        let row = self
            .registry()
            .query_one_raw(stmt(
                "UPDATE operations SET progress = progress || $3::jsonb, \
                 lease_expires_at = now() + make_interval(secs => $4), updated_at = now() \
                 WHERE id = $1 AND lease_owner = $2 RETURNING state",
                vec![op.into(), owner.into(), patch.into(), (self.config().lease_secs as f64).into()],
            ))
            .await?;
        match row {
            None => Err(Stop::Lost),
            Some(r) if r.try_get::<String>("", "state")? == "cancelling" => Err(Stop::Cancelled),
            Some(_) => Ok(()),
        }
    }

    pub(crate) async fn set_params(&self, op: Uuid, patch: Value) -> Result<(), Error> {
        self.registry()
            .execute_raw(stmt(
                "UPDATE operations SET params = params || $2::jsonb WHERE id = $1",
                vec![op.into(), patch.into()],
            ))
            .await?;
        Ok(())
    }

    pub(crate) async fn drive_move(&self, owner: &str, op: Claimed) {
        let Some(tenant_id) = op.tenant_id else {
            let _ = finish(self.registry(), op.id, owner, "failed", Some("the tenant no longer exists".into())).await;
            return;
        };
        if op.state == "cancelling" {
            return self.roll_back_move(owner, op.id, "cancelled", None).await;
        }
        let kind = op.kind.clone();
        let steps = crate::operations::steps_for_name(&kind, &op.params);
        let start = steps.iter().position(|s| *s == op.step).unwrap_or(0);
        let mut run = MoveRun::default();
        for (i, step) in steps.iter().enumerate().skip(start) {
            match self.advance(op.id, owner, step, i).await {
                Ok(Lease::Held) => {}
                Ok(Lease::Cancelling) => return self.roll_back_move(owner, op.id, "cancelled", None).await,
                Ok(Lease::Lost) => return,
                Err(e) => {
                    tracing::warn!(operation = %op.id, error = %e, "recording progress failed");
                    return;
                }
            }
            let started = Instant::now();
            let result = match *step {
                "create_database" | "create_instance" | "wait_available" | "bootstrap" | "register_backend" => self
                    .provision_step(
                        owner,
                        op.id,
                        tenant_id,
                        op.params["database"].as_str().unwrap_or_default(),
                        &op.params,
                        step,
                    )
                    .await
                    .map_err(Stop::Failed),
                _ => self.move_step(owner, op.id, step, &mut run).await,
            };
            if result.is_ok() && *step != "release_source" {
                // Where the time goes, per step, for operators (and the benchmark).
                let ms = started.elapsed().as_millis() as i64;
                let _ = self
                    .registry()
                    .execute_raw(stmt(
                        "UPDATE operations SET progress = jsonb_set(progress, '{step_ms}', \
                         coalesce(progress->'step_ms', '{}'::jsonb) || jsonb_build_object($2::text, $3::bigint)) \
                         WHERE id = $1",
                        vec![op.id.into(), (*step).into(), ms.into()],
                    ))
                    .await;
            }
            match result {
                Ok(()) => {}
                Err(Stop::Lost) => return,
                Err(Stop::Cancelled) => return self.roll_back_move(owner, op.id, "cancelled", None).await,
                Err(Stop::Failed(e)) => return self.move_step_failed(owner, &op, step, e).await,
            }
            failpoint(&format!("move.after.{step}"));
        }
    }

    async fn move_step_failed(&self, owner: &str, op: &Claimed, step: &str, e: Error) {
        let error = format!("{step}: {e}");
        tracing::warn!(operation = %op.id, attempt = op.attempts, %error, "move step failed");
        let flipped = self.operation(op.id).await.map(|o| o.progress["cutover_done"] == true).unwrap_or(false);
        if !flipped && (op.attempts >= crate::operations::MAX_ATTEMPTS || e.is_permanent()) {
            return self.roll_back_move(owner, op.id, "failed", Some(error)).await;
        }
        if flipped && e.is_permanent() {
            // The tenant lives on the target; what is left (the source's copy) is
            // kept for an operator to inspect.
            let _ = finish(self.registry(), op.id, owner, "failed", Some(error)).await;
            return;
        }
        self.retry_later(op, owner, error).await;
    }

    async fn move_step(&self, owner: &str, op: Uuid, step: &str, run: &mut MoveRun) -> Result<(), Stop> {
        let f = self.facts(op).await?;
        match step {
            "preflight" => self.preflight_step(owner, &f).await,
            "subscribe" => self.subscribe_step(&f).await,
            "copy" => self.copy_step(owner, &f).await,
            "catch_up" => self.catch_up_step(owner, &f).await,
            "cutover" => self.cutover_step(owner, &f, run).await,
            "cleanup" => {
                let mut tadmin = f.target.admin().await?;
                let oid = drop_subscription(&mut tadmin, &f.name).await?;
                tadmin.close().await?;
                let mut sadmin = f.source.admin().await?;
                drop_slots(&mut sadmin, &f.name, oid).await?;
                drop_publication(&mut sadmin, &f.name).await?;
                sadmin.close().await?;
                let mut t = self.tenant_conn(&f.target, f.tenant).await?;
                sqlx::query("DELETE FROM tenantry_move_sentinels WHERE tenant_id = $1")
                    .bind(f.tenant)
                    .execute(&mut t)
                    .await?;
                t.close().await?;
                Ok(())
            }
            "verify" => self.verify_step(owner, &f, run).await,
            "release_source" => self.release_step(owner, &f).await,
            other => Err(Stop::Failed(Error::invalid("unknown_step", format!("unknown step `{other}`")))),
        }
    }

    async fn preflight_step(&self, owner: &str, f: &Facts) -> Result<(), Stop> {
        self.registry()
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
        let placed = self
            .registry()
            .query_one_raw(stmt(
                "SELECT 1 AS here FROM placements WHERE tenant_id = $1 AND backend_id = $2 AND epoch = $3",
                vec![f.tenant.into(), f.source.backend.id.into(), f.epoch.into()],
            ))
            .await?;
        if placed.is_none() {
            failed.push(check(
                "placement_unchanged",
                false,
                "the tenant's placement changed since the move was queued",
            ));
        }
        let (checks, sizes) = self.assess(f.tenant, &f.source, Some(&f.target)).await?;
        failed.extend(checks.iter().filter(|c| !c.ok).cloned());
        let tables: Vec<&str> = sizes.iter().map(|s| s.table.as_str()).collect();
        self.set_params(f.op.id, json!({"tables": tables, "preflight": checks})).await?;
        if !failed.is_empty() {
            let why: Vec<String> = failed.iter().map(|c| format!("{} ({})", c.name, c.detail)).collect();
            return Err(Stop::Failed(Error::invalid(
                "preflight_failed",
                format!("preflight failed: {}", why.join("; ")),
            )));
        }
        let rows: i64 = sizes.iter().map(|s| s.rows).sum();
        let bytes: i64 = sizes.iter().map(|s| s.bytes).sum();
        self.heartbeat(f.op.id, owner, json!({"rows_total": rows, "bytes_total": bytes, "rows_copied": 0})).await
    }

    async fn subscribe_step(&self, f: &Facts) -> Result<(), Stop> {
        if f.tables.is_empty() {
            return Err(Stop::Failed(Error::invalid("no_tables", "the source has no tenant tables")));
        }
        let mut src = f.source.admin().await?;
        // Publication before slot: pgoutput looks the publication up as of each
        // change it decodes, so it must predate the slot's starting point.
        if !exists(&mut src, "SELECT 1 FROM pg_publication WHERE pubname = $1", &f.name).await? {
            let filter = format!("WHERE (tenant_id = '{}'::uuid)", f.tenant);
            let list: Vec<String> = f.tables.iter().map(|t| format!("public.{} {filter}", quote_ident(t))).collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')",
                quote_ident(&f.name),
                list.join(", ")
            );
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut src).await?;
        }
        if !exists(&mut src, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &f.name).await? {
            // Made here, not by the subscription: creating it waits for running
            // transactions, which on a shared cluster include the CREATE SUBSCRIPTION.
            sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(&f.name)
                .execute(&mut src)
                .await?;
        }
        src.close().await?;
        let mut dst = f.target.admin().await?;
        if !exists(&mut dst, "SELECT 1 FROM pg_subscription WHERE subname = $1", &f.name).await? {
            // The initial copy starts with the subscription: time it from here.
            self.registry()
                .execute_raw(stmt(
                    "UPDATE operations SET progress = progress || jsonb_build_object('copy_started_at', now()) \
                     WHERE id = $1",
                    vec![f.op.id.into()],
                ))
                .await?;
            let sql = format!(
                "CREATE SUBSCRIPTION {n} CONNECTION {c} PUBLICATION {n} \
                 WITH (create_slot = false, slot_name = {s}, copy_data = true)",
                n = quote_ident(&f.name),
                c = tenantry_provisioner::quote_literal(&f.source.conninfo()),
                s = tenantry_provisioner::quote_literal(&f.name),
            );
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut dst).await?;
        }
        dst.close().await?;
        Ok(())
    }

    async fn copy_step(&self, owner: &str, f: &Facts) -> Result<(), Stop> {
        let mut admin = f.target.admin().await?;
        let mut data = self.tenant_conn(&f.target, f.tenant).await?;
        let mut last_count = Instant::now() - Duration::from_secs(10);
        loop {
            let states: Vec<(String, String)> = sqlx::query_as(
                "SELECT c.relname::text, r.srsubstate::text FROM pg_subscription_rel r \
                 JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid \
                 WHERE s.subname = $1",
            )
            .bind(&f.name)
            .fetch_all(&mut admin)
            .await?;
            let errors: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(sync_error_count + apply_error_count), 0)::bigint \
                 FROM pg_stat_subscription_stats WHERE subname = $1",
            )
            .bind(&f.name)
            .fetch_one(&mut admin)
            .await?;
            if errors >= 5 {
                return Err(Stop::Failed(Error::Conflict {
                    code: "copy_failing",
                    message: format!("the initial copy failed {errors} times on the target; see its server log"),
                }));
            }
            let done = states.len() == f.tables.len() && states.iter().all(|(_, s)| s == "r");
            if done || last_count.elapsed() >= Duration::from_secs(1) {
                let copied: i64 = counts(&mut data, f.tenant, &f.tables).await?.values().sum();
                let tables: BTreeMap<&str, &str> = states
                    .iter()
                    .map(|(t, s)| {
                        let label = match s.as_str() {
                            "i" => "waiting",
                            "d" => "copying",
                            "f" | "s" => "synced",
                            "r" => "ready",
                            _ => "unknown",
                        };
                        (t.as_str(), label)
                    })
                    .collect();
                self.heartbeat(f.op.id, owner, json!({"rows_copied": copied, "tables": tables, "copy_errors": errors}))
                    .await?;
                last_count = Instant::now();
            }
            if done {
                // Fresh statistics for the rows just copied in: the tenant's queries
                // on the target (and foreign-key checks) plan with them from the flip on.
                sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", table_list(&f.tables)))).execute(&mut data).await?;
                self.registry()
                    .execute_raw(stmt(
                        "UPDATE operations SET progress = progress || jsonb_build_object('copy_ms', \
                         round(extract(epoch FROM now() - (progress->>'copy_started_at')::timestamptz) * 1000)) \
                         WHERE id = $1 AND progress ? 'copy_started_at'",
                        vec![f.op.id.into()],
                    ))
                    .await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin.close().await?;
        data.close().await?;
        Ok(())
    }

    async fn catch_up_step(&self, owner: &str, f: &Facts) -> Result<(), Stop> {
        let mut src = f.source.admin().await?;
        loop {
            let lag = slot_lag(&mut src, &f.name).await?;
            self.heartbeat(f.op.id, owner, json!({"lag_bytes": lag})).await?;
            if lag <= self.config().moves.max_lag_bytes {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        src.close().await?;
        Ok(())
    }

    async fn cutover_step(&self, owner: &str, f: &Facts, run: &mut MoveRun) -> Result<(), Stop> {
        if f.op.progress["cutover_done"] == true {
            return Ok(());
        }
        let tries = self.config().moves.cutover_tries.max(1);
        let mut deferred = String::new();
        for attempt in 1..=tries {
            match self.try_cutover(owner, f, run).await? {
                None => return Ok(()),
                Some(why) => {
                    tracing::info!(operation = %f.op.id, attempt, reason = %why, "cutover deferred; writes resumed on the source");
                    let tried = f.op.progress["cutover_attempts"].as_i64().unwrap_or(0) + i64::from(attempt);
                    self.heartbeat(f.op.id, owner, json!({"cutover_attempts": tried, "last_deferral": why})).await?;
                    deferred = why;
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
            }
        }
        Err(Stop::Failed(Error::Backend(sqlx::Error::Protocol(format!("cutover deferred {tries} times: {deferred}")))))
    }

    /// One cutover try. `None`: flipped. `Some(reason)`: the fence was lifted
    /// (or never taken) and the tenant keeps serving from the source.
    async fn try_cutover(&self, owner: &str, f: &Facts, run: &mut MoveRun) -> Result<Option<String>, Stop> {
        let timeout = Duration::from_millis(self.config().moves.fence_timeout_ms);
        // Everything the pause needs is connected before it starts.
        let mut s = self.tenant_conn(&f.source, f.tenant).await?;
        let mut t = self.tenant_conn(&f.target, f.tenant).await?;
        let mut v = self.tenant_conn(&f.target, f.tenant).await?;
        let lag = {
            let mut a = f.source.admin().await?;
            let lag = slot_lag(&mut a, &f.name).await?;
            a.close().await?;
            lag
        };
        if lag > self.config().moves.max_lag_bytes {
            return Ok(Some(format!("replication lag {lag} bytes over the threshold")));
        }
        // Healthy subscription: every table synced, no apply or sync error since it
        // started. O(1) catalog reads, so the pause stays independent of size.
        let (ready, errors): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                     WHERE s.subname = $1 AND r.srsubstate = 'r'), \
                    (SELECT coalesce(sum(sync_error_count + apply_error_count), 0)::bigint \
                     FROM pg_stat_subscription_stats WHERE subname = $1)",
        )
        .bind(&f.name)
        .fetch_one(&mut t)
        .await?;
        if ready != f.tables.len() as i64 || errors > 0 {
            return Ok(Some(format!(
                "subscription not healthy: {ready} of {} tables ready, {errors} errors",
                f.tables.len()
            )));
        }
        sqlx::raw_sql(AssertSqlSafe(format!("SET lock_timeout = '{}ms'", timeout.as_millis()))).execute(&mut s).await?;
        // The fence: the exclusive lock waits for the tenant's in-flight
        // transactions (they hold it shared) and, once committed with the
        // residency `fenced`, every later transaction is turned away at its first
        // statement (TR001): the app waits and re-resolves without holding a
        // connection, so neighbours on this pool never queue behind the move.
        let sentinel = new_id();
        let asked_at = Instant::now();
        let mut fenced_at = asked_at;
        let fence = async {
            let mut tx = s.begin().await?;
            // Flushed at commit even where synchronous_commit is off: walsenders
            // only send flushed WAL, and the wal writer may wait 200 ms otherwise.
            sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
            let lock = sqlx::query("SELECT pg_advisory_xact_lock(tenantry_lock_key($1))")
                .bind(f.tenant)
                .execute(&mut *tx)
                .await;
            match lock {
                Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => return Ok(None),
                other => other?,
            };
            fenced_at = Instant::now();
            let n = sqlx::query(
                "UPDATE tenant_residency SET state = 'fenced', updated_at = now() WHERE tenant_id = $1 AND epoch = $2",
            )
            .bind(f.tenant)
            .bind(f.epoch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("INSERT INTO tenantry_move_sentinels (tenant_id, id) VALUES ($1, $2)")
                .bind(f.tenant)
                .bind(sentinel)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<Option<u64>, sqlx::Error>(Some(n))
        }
        .await;
        let lock_ms = (fenced_at - asked_at).as_secs_f64() * 1000.0;
        match fence {
            Ok(Some(1)) => {}
            Ok(None) => return Ok(Some("in-flight transactions did not finish within the fence timeout".into())),
            Ok(Some(_)) => {
                unfence(&mut s, f).await;
                return Err(Stop::Failed(Error::Conflict {
                    code: "residency_mismatch",
                    message: format!("the source does not hold the tenant at epoch {}", f.epoch),
                }));
            }
            Err(e) => {
                unfence(&mut s, f).await;
                return Err(e.into());
            }
        }
        let deadline = fenced_at + timeout;
        failpoint("move.cutover.fenced");
        // Apply is in commit order: the sentinel on the target means every
        // earlier write of the tenant is there too.
        let arrived = loop {
            let here = sqlx::query("SELECT 1 FROM tenantry_move_sentinels WHERE tenant_id = $1 AND id = $2")
                .bind(f.tenant)
                .bind(sentinel)
                .fetch_optional(&mut t)
                .await?
                .is_some();
            if here {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let sentinel_ms = fenced_at.elapsed().as_secs_f64() * 1000.0;
        if !arrived {
            unfence(&mut s, f).await;
            return Ok(Some(format!("replication did not deliver the fence within {} ms", timeout.as_millis())));
        }
        if Instant::now() >= deadline {
            unfence(&mut s, f).await;
            return Ok(Some(format!("the fence took longer than {} ms", timeout.as_millis())));
        }
        let new_epoch = f.epoch + 1;
        let prepared = async {
            sqlx::query(
                "INSERT INTO tenant_residency (tenant_id, epoch, state) VALUES ($1, $2, 'active') \
                 ON CONFLICT (tenant_id) DO UPDATE SET epoch = EXCLUDED.epoch, state = 'active', updated_at = now()",
            )
            .bind(f.tenant)
            .bind(new_epoch)
            .execute(&mut t)
            .await?;
            // The checksum snapshot: the target exactly as the source left it.
            sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").execute(&mut v).await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(e) = prepared {
            unfence(&mut s, f).await;
            return Err(e.into());
        }
        let tier = if f.target.backend.kind == "dedicated" { "dedicated" } else { "shared" };
        let flip = async {
            let txn = self.registry().begin().await?;
            let held = txn
                .execute_raw(stmt(
                    "UPDATE operations SET progress = progress || jsonb_build_object('cutover_done', true), \
                     updated_at = now() WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                    vec![f.op.id.into(), owner.into()],
                ))
                .await?
                .rows_affected();
            if held == 0 {
                txn.rollback().await?;
                return Ok::<bool, sea_orm::DbErr>(false);
            }
            let moved = txn
                .execute_raw(stmt(
                    "UPDATE placements SET backend_id = $2, epoch = $3, updated_at = now() WHERE tenant_id = $1 AND epoch = $4",
                    vec![f.tenant.into(), f.target.backend.id.into(), new_epoch.into(), f.epoch.into()],
                ))
                .await?
                .rows_affected();
            if moved != 1 {
                txn.rollback().await?;
                return Ok(false);
            }
            txn.execute_raw(stmt(
                "UPDATE tenants SET tier = $2, updated_at = now() WHERE id = $1",
                vec![f.tenant.into(), tier.into()],
            ))
            .await?;
            audit(
                &txn,
                "operation",
                "tenant.move.cutover",
                Some(f.tenant),
                json!({"operation_id": f.op.id, "from": f.source.backend.id, "to": f.target.backend.id, "epoch": new_epoch}),
            )
            .await?;
            txn.commit().await?;
            Ok(true)
        }
        .await;
        match flip {
            Ok(true) => {}
            Ok(false) => {
                unfence(&mut s, f).await;
                return Err(Stop::Cancelled);
            }
            Err(e) => {
                // Unknown whether it committed: keep the fence (no write can land on
                // the source either way) and let the resumed step find out.
                let _ = s.close().await;
                return Err(e.into());
            }
        }
        let pause_ms = fenced_at.elapsed().as_secs_f64() * 1000.0;
        let _ = s.close().await;
        let _ = t.close().await;
        run.snapshot = Some(v);
        tracing::info!(operation = %f.op.id, tenant_id = %f.tenant, pause_ms, "cutover done");
        let r = |ms: f64| (ms * 10.0).round() / 10.0;
        self.heartbeat(
            f.op.id,
            owner,
            json!({
                "pause_ms": r(pause_ms),
                "lag_bytes": 0,
                // Where the pause went: waiting for in-flight transactions (before
                // the pause), then until the sentinel arrived, counts matched, flip.
                "cutover_phases_ms": {"lock_wait": r(lock_ms), "sentinel": r(sentinel_ms), "flip": r(pause_ms - sentinel_ms)},
            }),
        )
        .await?;
        Ok(None)
    }

    /// Counts, checksums and foreign keys of the target as of the flip (the
    /// snapshot taken inside the pause) against the fenced, unchanging source.
    /// Kept out of the pause: they take time in proportion to the tenant, and
    /// the sentinel already proved every write arrived before the flip.
    async fn verify_step(&self, owner: &str, f: &Facts, run: &mut MoveRun) -> Result<(), Stop> {
        let mut src = self.tenant_conn(&f.source, f.tenant).await?;
        // The sentinels were cleaned up on the target after the snapshot was taken.
        let tables: Vec<String> = f.tables.iter().filter(|t| *t != "tenantry_move_sentinels").cloned().collect();
        let source = checksums(&mut src, f.tenant, &tables).await?;
        src.close().await?;
        let (target, verified) = match run.snapshot.take() {
            Some(mut v) => {
                let sums = checksums(&mut v, f.tenant, &tables).await?;
                let orphaned: BTreeMap<String, i64> =
                    orphans(&mut v, f.tenant).await?.into_iter().filter(|(_, n)| *n > 0).collect();
                if !orphaned.is_empty() {
                    return Err(Stop::Failed(Error::invalid(
                        "orphaned_rows",
                        format!("rows without their parent on the target: {orphaned:?}; the source copy is kept"),
                    )));
                }
                let _ = sqlx::raw_sql("COMMIT").execute(&mut v).await;
                let _ = v.close().await;
                (sums, "checksums")
            }
            None => {
                // Resumed in another process: the flip's snapshot is gone. The
                // target now may hold the tenant's newer writes.
                let mut t = self.tenant_conn(&f.target, f.tenant).await?;
                let sums = checksums(&mut t, f.tenant, &tables).await?;
                t.close().await?;
                if sums != source {
                    self.heartbeat(
                        f.op.id,
                        owner,
                        json!({"verified": "counts", "verify_note": "resumed after a restart and the tenant has written since the cutover: counts were verified at the cutover, checksums could not be compared"}),
                    )
                    .await?;
                    return Ok(());
                }
                (sums, "checksums")
            }
        };
        let rows = |m: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
            m.iter().map(|(k, v)| (k.clone(), v["rows"].clone())).collect()
        };
        if rows(&source) != rows(&target) {
            return Err(Stop::Failed(Error::invalid(
                "count_mismatch",
                format!(
                    "row counts differ: source {:?}, target {:?}; the source copy is kept",
                    rows(&source),
                    rows(&target)
                ),
            )));
        }
        if source != target {
            let bad: Vec<&String> = source.keys().filter(|k| source.get(*k) != target.get(*k)).collect();
            return Err(Stop::Failed(Error::invalid(
                "checksum_mismatch",
                format!("checksums differ in {bad:?}; the source copy is kept for inspection"),
            )));
        }
        self.heartbeat(f.op.id, owner, json!({"verified": verified, "counts": rows(&source), "checksums": source}))
            .await
    }

    async fn release_step(&self, owner: &str, f: &Facts) -> Result<(), Stop> {
        let source = &f.source.backend;
        let started = Instant::now();
        let mut vacuum_ms = 0;
        if source.kind == "dedicated" {
            let database = source.database.clone();
            let snapshot = self.destroy_storage(&source.engine, &source.name, &database, true).await?;
            self.set_params(f.op.id, json!({"retired_source": source.id, "final_snapshot": snapshot})).await?;
            self.registry()
                .execute_raw(stmt(
                    "UPDATE backends SET status = 'retired', updated_at = now() WHERE id = $1",
                    vec![source.id.into()],
                ))
                .await?;
        } else {
            let mut s = self.tenant_conn(&f.source, f.tenant).await?;
            let batch = self.config().moves.purge_batch.max(1);
            // Statistics first: the cascade checks of each deleted row are planned
            // from them, and stale ones (a pool analysed before the tenant arrived)
            // made them scan whole tables: 280 s instead of 2 s for 120 k rows.
            sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", table_list(&f.tables)))).execute(&mut s).await?;
            let purged = self.purge(&mut s, f.tenant, &f.tables, batch, Some((f.op.id, owner))).await?;
            if purged >= VACUUM_AFTER_ROWS {
                // Give the space back to the pool's other tenants (and to the next
                // move in) now rather than whenever autovacuum comes by.
                let t0 = Instant::now();
                sqlx::raw_sql(AssertSqlSafe(format!("VACUUM (ANALYZE) {}", table_list(&f.tables))))
                    .execute(&mut s)
                    .await?;
                vacuum_ms = t0.elapsed().as_millis() as i64;
            }
            sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1 AND epoch = $2")
                .bind(f.tenant)
                .bind(f.epoch)
                .execute(&mut s)
                .await?;
            s.close().await?;
        }
        let ms = started.elapsed().as_millis() as i64;
        self.registry()
            .execute_raw(stmt(
                "UPDATE operations SET progress = jsonb_set(progress, '{step_ms}', \
                 coalesce(progress->'step_ms', '{}'::jsonb) || jsonb_build_object('release_source', $2::bigint, 'vacuum', $3::bigint)) \
                 WHERE id = $1",
                vec![f.op.id.into(), ms.into(), vacuum_ms.into()],
            ))
            .await?;
        let txn = self.registry().begin().await?;
        audit(
            &txn,
            "operation",
            "tenant.move.done",
            Some(f.tenant),
            json!({"operation_id": f.op.id, "from": source.id, "to": f.target.backend.id}),
        )
        .await?;
        finish(&txn, f.op.id, owner, "succeeded", None).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Undoes a move that has not flipped: the subscription, slot and
    /// publication go, rows copied to the target are deleted (or the target
    /// provisioned for it is destroyed), the fence is lifted.
    async fn roll_back_move(&self, owner: &str, id: Uuid, state: &str, error: Option<String>) {
        let result: Result<(), Error> = async {
            let view = self.operation(id).await?;
            if view.progress["cutover_done"] == true {
                finish(self.registry(), id, owner, "failed", error.clone().or(Some("failed after the cutover".into())))
                    .await?;
                return Ok(());
            }
            let tenant = view.tenant_id.ok_or(Error::NotFound("tenant"))?;
            let name = replication_name(id);
            let epoch = view.params["epoch"].as_i64().unwrap_or(0);
            let provisioned = view.kind == "promote";
            let mut sub_oid = None;
            if let Some(target_id) = view.backend_id {
                let target = self.side(target_id).await?;
                let mut admin = target.admin().await?;
                sub_oid = drop_subscription(&mut admin, &name).await?;
                admin.close().await?;
                if !provisioned {
                    let mut t = self.tenant_conn(&target, tenant).await?;
                    let tables = tenant_tables(&mut t).await?;
                    self.purge(&mut t, tenant, &tables, 10_000, None).await.map_err(|s| match s {
                        Stop::Failed(e) => e,
                        _ => Error::NotFound("purge"),
                    })?;
                    sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1 AND epoch = $2")
                        .bind(tenant)
                        .bind(epoch + 1)
                        .execute(&mut t)
                        .await?;
                    t.close().await?;
                }
            }
            if let Some(source_id) = view.params["source_backend_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                let source = self.side(source_id).await?;
                let mut admin = source.admin().await?;
                drop_slots(&mut admin, &name, sub_oid).await?;
                drop_publication(&mut admin, &name).await?;
                admin.close().await?;
                let mut s = self.tenant_conn(&source, tenant).await?;
                sqlx::query(
                    "UPDATE tenant_residency SET state = 'active', updated_at = now() \
                     WHERE tenant_id = $1 AND epoch = $2 AND state = 'fenced'",
                )
                .bind(tenant)
                .bind(epoch)
                .execute(&mut s)
                .await?;
                sqlx::query("DELETE FROM tenantry_move_sentinels WHERE tenant_id = $1")
                    .bind(tenant)
                    .execute(&mut s)
                    .await?;
                s.close().await?;
            }
            if provisioned {
                let engine = view.params["engine"].as_str().unwrap_or("logical").to_string();
                let database = view.params["database"].as_str().unwrap_or_default().to_string();
                let instance = view.params["instance"].as_str().unwrap_or_default().to_string();
                let name = if engine == "rds" { &instance } else { &database };
                if !database.is_empty() {
                    self.destroy_storage(&engine, name, &database, true).await?;
                }
                self.registry()
                    .execute_raw(stmt(
                        "DELETE FROM backends WHERE name = $1 AND kind = 'dedicated' \
                         AND NOT EXISTS (SELECT 1 FROM placements p WHERE p.backend_id = backends.id)",
                        vec![name.clone().into()],
                    ))
                    .await?;
            }
            let txn = self.registry().begin().await?;
            finish(&txn, id, owner, state, error.clone()).await?;
            audit(&txn, "operation", "operation.rollback", Some(tenant), json!({"operation_id": id, "state": state}))
                .await?;
            txn.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(operation = %id, error = %e, "move rollback failed; it will be retried when the lease lapses");
        }
    }

    /// Drops replication objects named after move operations that are no
    /// longer running (left by a crash between steps, or a rollback that
    /// failed half-way), and table-sync slots whose subscription is gone.
    /// Returns what was dropped.
    pub async fn sweep_move_orphans(&self) -> Result<Vec<String>, Error> {
        let active: Vec<String> = self
            .registry()
            .query_all_raw(stmt(
                "SELECT id FROM operations WHERE kind IN ('promote', 'move', 'demote') \
                 AND state IN ('pending', 'running', 'cancelling')",
                vec![],
            ))
            .await?
            .into_iter()
            .filter_map(|r| r.try_get::<Uuid>("", "id").ok().map(replication_name))
            .collect();
        let c = &self.config().cluster;
        let options = |db: &str| {
            PgConnectOptions::new()
                .host(&c.host)
                .port(c.port)
                .database(db)
                .username(&c.admin_user)
                .password(c.admin_password.expose_secret())
                .application_name("tenantry-sweep")
        };
        // Only databases of this registry's backends: other registries may share
        // the cluster, and their moves are theirs.
        let known: Vec<String> = self.backends().await?.into_iter().map(|b| b.database).collect();
        let mut dropped = Vec::new();
        let mut home = PgConnection::connect_with(&options(&self.config().registry_database)).await?;
        let subs: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.subname::text, d.datname::text FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
             WHERE s.subname LIKE 'tenantry\\_mv\\_%'",
        )
        .fetch_all(&mut home)
        .await?;
        for (sub, db) in subs.into_iter().filter(|(s, d)| !active.contains(s) && known.contains(d)) {
            let mut conn = PgConnection::connect_with(&options(&db)).await?;
            drop_subscription(&mut conn, &sub).await?;
            conn.close().await?;
            dropped.push(format!("subscription {sub} in {db}"));
        }
        let slots: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT slot_name::text, database::text FROM pg_replication_slots \
             WHERE slot_name LIKE 'tenantry\\_mv\\_%' \
                OR (slot_name ~ '^pg_[0-9]+_sync_' \
                    AND substring(slot_name from '^pg_([0-9]+)_sync_')::oid NOT IN (SELECT oid FROM pg_subscription))",
        )
        .fetch_all(&mut home)
        .await?;
        let ours = |db: &Option<String>| db.as_ref().is_some_and(|d| known.contains(d));
        for (slot, db) in slots.into_iter().filter(|(s, d)| !active.contains(s) && ours(d)) {
            drop_slots(&mut home, &slot, None).await?;
            dropped.push(format!("slot {slot}"));
            if let (true, Some(db)) = (slot.starts_with(NAME_PREFIX), db) {
                let mut conn = PgConnection::connect_with(&options(&db)).await?;
                drop_publication(&mut conn, &slot).await?;
                conn.close().await?;
            }
        }
        // Publications made before a crash that came before their slot: look in
        // every database of this cluster that holds tenant data.
        let dbs: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres'",
        )
        .fetch_all(&mut home)
        .await?;
        home.close().await?;
        for db in dbs.into_iter().filter(|d| known.contains(d)) {
            let Ok(mut conn) = PgConnection::connect_with(&options(&db)).await else { continue };
            let pubs: Vec<String> =
                sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'tenantry\\_mv\\_%'")
                    .fetch_all(&mut conn)
                    .await?;
            for p in pubs.into_iter().filter(|p| !active.contains(p)) {
                drop_publication(&mut conn, &p).await?;
                dropped.push(format!("publication {p} in {db}"));
            }
            conn.close().await?;
        }
        if !dropped.is_empty() {
            tracing::warn!(?dropped, "dropped replication objects left by interrupted moves");
        }
        Ok(dropped)
    }
}

/// Why `target` cannot receive a tenant from `source`, if it cannot.
fn target_problem(source: &BackendView, target: &BackendView) -> Option<Error> {
    if target.id == source.id {
        return Some(Error::Conflict {
            code: "already_there",
            message: "the tenant already lives on that backend".into(),
        });
    }
    if target.kind == "template" {
        return Some(Error::invalid("not_a_target", "the template database holds no tenants"));
    }
    if target.status != "ready" {
        return Some(Error::Conflict {
            code: "target_not_ready",
            message: format!("backend `{}` is {}, not ready", target.name, target.status),
        });
    }
    if target.kind == "dedicated" && target.tenants > 0 {
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

async fn slot_lag(admin: &mut PgConnection, name: &str) -> Result<i64, Error> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(confirmed_flush_lsn, restart_lsn))::bigint \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .fetch_optional(admin)
    .await?
    .flatten();
    lag.ok_or_else(|| Error::Conflict { code: "slot_missing", message: format!("replication slot `{name}` is gone") })
}

/// Lifts a fence: the tenant serves from the source again.
async fn unfence(s: &mut PgConnection, f: &Facts) {
    let r = sqlx::query(
        "UPDATE tenant_residency SET state = 'active', updated_at = now() WHERE tenant_id = $1 AND epoch = $2",
    )
    .bind(f.tenant)
    .bind(f.epoch)
    .execute(&mut *s)
    .await;
    if let Err(e) = r {
        tracing::error!(tenant_id = %f.tenant, error = %e, "lifting the fence failed; the rollback lifts it");
    }
}
