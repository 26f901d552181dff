//! ## What do we store?
//!
//! The registry database is the control plane's only durable state; every
//! process rebuilds its caches from it at start-up.
//!
//! - `tenants`, `placements` (tenant -> backend at an epoch), `backends`,
//!   `api_keys` (hashes only), `tier_settings`: the intent, written here.
//! - `operations`: one row per durable operation. `kind`, `state` and `step`
//!   are the wire names of [`OperationKind`], [`OperationState`] and [`Step`];
//!   `params` holds the kind's typed parameters as JSON (plus facts a step
//!   learnt for the next one, such as an instance's endpoint); `progress` what
//!   an operator watches. `lease_owner` / `lease_expires_at` say which worker
//!   holds it; a lapsed lease lets another worker resume at `step`.
//! - `audit_log`: who did what, appended in the same transaction as the change.
//! - `usage_samples` (appended by app processes), `usage_rollups`,
//!   `storage_measurements`: metering.
//! - `console_sessions`: signed-in operators (token hashes).
//!
//! Nothing else is durable: pools, caches and the heavy-tenant badge are
//! rebuilt on demand. This file holds the operations table's SQL; the other
//! tables are written by the module named after them.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, TransactionTrait};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tenantry_core::new_id;

use crate::operation::{OperationKind, OperationState, Step};

/// One SQL statement with its values, for the raw queries every module sends.
pub(crate) fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Appends to the audit log inside the caller's transaction.
pub async fn audit(
    db: &impl ConnectionTrait,
    actor: &str,
    action: &str,
    tenant_id: Option<Uuid>,
    details: serde_json::Value,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "INSERT INTO audit_log (actor, action, tenant_id, details) VALUES ($1, $2, $3, $4)",
        vec![actor.into(), action.into(), tenant_id.into(), details.into()],
    ))
    .await?;
    Ok(())
}

/// An operation as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OperationView {
    pub id: Uuid,
    pub kind: OperationKind,
    pub tenant_id: Option<Uuid>,
    pub backend_id: Option<Uuid>,
    pub state: OperationState,
    /// The step running now (or next), `done` at the end.
    pub step: Step,
    /// `{"step": k, "steps": n}`: steps completed out of all, plus the kind's
    /// own figures (rows copied, lag, pause, ...).
    #[schema(value_type = Object)]
    pub progress: serde_json::Value,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub attempts: i32,
    /// The last error, in plain words.
    pub error: Option<String>,
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The operations table's row: text at the SQL edge, parsed once.
#[derive(FromQueryResult)]
struct OperationRow {
    id: Uuid,
    kind: String,
    tenant_id: Option<Uuid>,
    backend_id: Option<Uuid>,
    state: String,
    step: String,
    progress: serde_json::Value,
    params: serde_json::Value,
    attempts: i32,
    error: Option<String>,
    actor: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// Why a stored operation row cannot be read: a kind, state or step this
/// build does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("operation {id}: {problem}")]
pub struct UnreadableOperation {
    pub id: Uuid,
    pub problem: String,
}

impl TryFrom<OperationRow> for OperationView {
    type Error = UnreadableOperation;
    fn try_from(r: OperationRow) -> Result<Self, UnreadableOperation> {
        let bad = |e: tenantry_core::ParseError| UnreadableOperation { id: r.id, problem: e.0 };
        Ok(OperationView {
            id: r.id,
            kind: r.kind.parse().map_err(bad)?,
            state: r.state.parse().map_err(bad)?,
            step: r.step.parse().map_err(bad)?,
            tenant_id: r.tenant_id,
            backend_id: r.backend_id,
            progress: r.progress,
            params: r.params,
            attempts: r.attempts,
            error: r.error,
            actor: r.actor,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

const OP_COLUMNS: &str = "id, kind, tenant_id, backend_id, state, step, progress, params, attempts, error, actor, \
    created_at, updated_at, finished_at";

fn read(row: OperationRow) -> Result<OperationView, DbErr> {
    OperationView::try_from(row).map_err(|e| DbErr::Custom(e.to_string()))
}

pub(crate) async fn operation(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<OperationView>, DbErr> {
    OperationRow::find_by_statement(stmt(
        &format!("SELECT {OP_COLUMNS} FROM operations WHERE id = $1"),
        vec![id.into()],
    ))
    .one(db)
    .await?
    .map(read)
    .transpose()
}

/// Newest first, optionally for one tenant and in one state.
pub(crate) async fn operations(
    db: &impl ConnectionTrait,
    tenant: Option<Uuid>,
    state: Option<OperationState>,
    limit: u64,
) -> Result<Vec<OperationView>, DbErr> {
    OperationRow::find_by_statement(stmt(
        &format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE ($1::uuid IS NULL OR tenant_id = $1) \
             AND ($2::text IS NULL OR state = $2) ORDER BY created_at DESC LIMIT $3"
        ),
        vec![tenant.into(), state.map(|s| s.as_str()).into(), (limit.clamp(1, 1000) as i64).into()],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(read)
    .collect()
}

/// Queues an operation inside the caller's transaction; `first` is its first
/// step and `steps` how many it has.
pub(crate) async fn enqueue(
    txn: &impl ConnectionTrait,
    kind: OperationKind,
    tenant_id: Option<Uuid>,
    params: serde_json::Value,
    (first, steps): (Step, usize),
    actor: &str,
) -> Result<Uuid, DbErr> {
    let id = new_id();
    txn.execute_raw(stmt(
        "INSERT INTO operations (id, kind, tenant_id, backend_id, state, step, progress, params, actor) \
         VALUES ($1, $2, $3, ($6::jsonb->>'backend_id')::uuid, 'pending', $4, $5, $6, $7)",
        vec![
            id.into(),
            kind.as_str().into(),
            tenant_id.into(),
            first.as_str().into(),
            json!({"step": 0, "steps": steps}).into(),
            params.clone().into(),
            actor.into(),
        ],
    ))
    .await?;
    audit(
        txn,
        actor,
        "operation.create",
        tenant_id,
        json!({"operation_id": id, "kind": kind.as_str(), "params": params}),
    )
    .await?;
    Ok(id)
}

/// The kind of operation running for a tenant, if any, after locking the
/// tenant's row for the caller's transaction (serialising requests for one
/// tenant).
pub(crate) async fn lock_tenant_busy(txn: &impl ConnectionTrait, tenant: Uuid) -> Result<Option<String>, DbErr> {
    txn.execute_raw(stmt("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", vec![tenant.into()])).await?;
    let busy = txn
        .query_one_raw(stmt(
            "SELECT kind FROM operations WHERE tenant_id = $1 AND state IN ('pending', 'running', 'cancelling') LIMIT 1",
            vec![tenant.into()],
        ))
        .await?;
    busy.map(|row| row.try_get("", "kind")).transpose()
}

/// Ends an operation this worker holds, inside the caller's transaction.
pub(crate) async fn finish(
    txn: &impl ConnectionTrait,
    id: Uuid,
    owner: &str,
    state: OperationState,
    error: Option<String>,
) -> Result<(), DbErr> {
    let ended = txn
        .execute_raw(stmt(
            "UPDATE operations SET state = $3, step = 'done', error = coalesce($4, error), finished_at = now(), \
             updated_at = now(), lease_owner = NULL, lease_expires_at = NULL, \
             progress = jsonb_set(progress, '{step}', progress->'steps') \
             WHERE id = $1 AND lease_owner = $2",
            vec![id.into(), owner.into(), state.as_str().into(), error.clone().into()],
        ))
        .await?;
    if ended.rows_affected() == 0 {
        return Ok(());
    }
    // Every operation's end is in the audit trail with its tenant.
    txn.execute_raw(stmt(
        "INSERT INTO audit_log (actor, action, tenant_id, details) \
         SELECT 'operation', 'operation.' || $2, tenant_id, jsonb_build_object('operation_id', id, 'kind', kind, 'error', $3::text) \
         FROM operations WHERE id = $1",
        vec![id.into(), state.as_str().into(), error.into()],
    ))
    .await?;
    Ok(())
}

/// An operation a worker has just claimed, its columns as stored.
#[derive(FromQueryResult)]
pub(crate) struct ClaimedRow {
    pub(crate) id: Uuid,
    pub(crate) kind: String,
    pub(crate) tenant_id: Option<Uuid>,
    pub(crate) state: String,
    pub(crate) step: String,
    pub(crate) params: serde_json::Value,
    pub(crate) attempts: i32,
}

/// Claims the oldest operation that is pending or whose lease lapsed.
pub(crate) async fn claim(
    db: &sea_orm::DatabaseConnection,
    owner: &str,
    lease_secs: u64,
) -> Result<Option<ClaimedRow>, DbErr> {
    // Claims are serialized (a transaction-scoped advisory lock) so that the
    // count of a batch's running operations cannot race another claim.
    let txn = db.begin().await?;
    txn.execute_raw(stmt("SELECT pg_advisory_xact_lock(7291001)", vec![])).await?;
    let row = ClaimedRow::find_by_statement(stmt(
        "UPDATE operations SET state = CASE WHEN state = 'pending' THEN 'running' ELSE state END, \
         lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2), attempts = attempts + 1, \
         updated_at = now() \
         WHERE id = (SELECT o.id FROM operations o \
            WHERE (o.state = 'pending' AND (NOT o.params ? 'batch' OR ( \
                    SELECT count(*) FROM operations b WHERE b.params->>'batch' = o.params->>'batch' \
                    AND b.params ? 'batch' AND b.state IN ('running', 'cancelling')) \
                  < coalesce((o.params->>'concurrency')::int, 1))) \
               OR (o.state IN ('running', 'cancelling') AND (o.lease_expires_at IS NULL OR o.lease_expires_at < now())) \
            ORDER BY o.created_at FOR UPDATE SKIP LOCKED LIMIT 1) \
         RETURNING id, kind, tenant_id, state, step, params, attempts",
        vec![owner.into(), (lease_secs as f64).into()],
    ))
    .one(&txn)
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// What a worker learns when it renews its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    Held,
    Cancelling,
    Lost,
}

fn lease_of(row: Option<sea_orm::QueryResult>) -> Result<Lease, DbErr> {
    Ok(match row {
        None => Lease::Lost,
        Some(r) if r.try_get::<String>("", "state")? == OperationState::Cancelling.as_str() => Lease::Cancelling,
        Some(_) => Lease::Held,
    })
}

/// Records that `step` is next (`done` steps behind it) and renews the lease.
pub(crate) async fn advance(
    db: &impl ConnectionTrait,
    id: Uuid,
    owner: &str,
    step: Step,
    done: usize,
    lease_secs: u64,
) -> Result<Lease, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "UPDATE operations SET step = $3, progress = jsonb_set(progress, '{step}', to_jsonb($4::int)), \
             lease_expires_at = now() + make_interval(secs => $5), updated_at = now() \
             WHERE id = $1 AND lease_owner = $2 RETURNING state",
            vec![id.into(), owner.into(), step.as_str().into(), (done as i32).into(), (lease_secs as f64).into()],
        ))
        .await?;
    lease_of(row)
}

/// Renews the lease and merges `patch` into the progress.
pub(crate) async fn heartbeat(
    db: &impl ConnectionTrait,
    id: Uuid,
    owner: &str,
    patch: serde_json::Value,
    lease_secs: u64,
) -> Result<Lease, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "UPDATE operations SET progress = progress || $3::jsonb, \
             lease_expires_at = now() + make_interval(secs => $4), updated_at = now() \
             WHERE id = $1 AND lease_owner = $2 RETURNING state",
            vec![id.into(), owner.into(), patch.into(), (lease_secs as f64).into()],
        ))
        .await?;
    lease_of(row)
}

/// Merges facts a step learnt into the operation's parameters.
pub(crate) async fn set_params(db: &impl ConnectionTrait, id: Uuid, patch: serde_json::Value) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE operations SET params = params || $2::jsonb WHERE id = $1",
        vec![id.into(), patch.into()],
    ))
    .await?;
    Ok(())
}

/// Adds `{name: ms}` to the progress's `step_ms` (where the time goes).
pub(crate) async fn record_step_ms(db: &impl ConnectionTrait, id: Uuid, times: serde_json::Value) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE operations SET progress = jsonb_set(progress, '{step_ms}', \
         coalesce(progress->'step_ms', '{}'::jsonb) || $2::jsonb) WHERE id = $1",
        vec![id.into(), times.into()],
    ))
    .await?;
    Ok(())
}

/// Records the error and lets the lease lapse after `backoff_secs`, so this
/// or another worker retries the step.
pub(crate) async fn retry_later(
    db: &impl ConnectionTrait,
    id: Uuid,
    owner: &str,
    error: &str,
    backoff_secs: f64,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE operations SET error = $3, lease_expires_at = now() + make_interval(secs => $4), updated_at = now() \
         WHERE id = $1 AND lease_owner = $2",
        vec![id.into(), owner.into(), error.into(), backoff_secs.into()],
    ))
    .await?;
    Ok(())
}

/// Hands an operation back at once (this process is stopping): the next
/// worker to look claims it without waiting for the lease to lapse.
pub(crate) async fn release(db: &impl ConnectionTrait, id: Uuid, owner: &str) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE operations SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE id = $1 AND lease_owner = $2",
        vec![id.into(), owner.into()],
    ))
    .await?;
    Ok(())
}

/// Forgets a tenant that never served (a rolled-back provision or adoption):
/// its placement, keys and row (unless it became active meanwhile).
pub(crate) async fn forget_unserved(txn: &impl ConnectionTrait, tenant: Uuid) -> Result<(), DbErr> {
    txn.execute_raw(stmt("DELETE FROM placements WHERE tenant_id = $1", vec![tenant.into()])).await?;
    txn.execute_raw(stmt("DELETE FROM api_keys WHERE tenant_id = $1", vec![tenant.into()])).await?;
    txn.execute_raw(stmt("DELETE FROM tenants WHERE id = $1 AND status <> 'active'", vec![tenant.into()])).await?;
    Ok(())
}

/// Whether a move (or an adoption, or a revert) is past its point of no return: it is about to seal (or
/// has sealed) its source, or has flipped the placement. From here it only
/// goes forward.
pub(crate) fn past_seal(progress: &serde_json::Value) -> bool {
    progress["cutover_done"] == true || progress["sealing"] == true
}

/// The SQL twin of [`past_seal`], for statements that must not race it.
pub(crate) const PAST_SEAL_SQL: &str =
    "(coalesce((progress->>'cutover_done')::boolean, false) OR coalesce((progress->>'sealing')::boolean, false))";
