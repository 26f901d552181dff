//! Durable operations: rows in the registry, claimed by workers with
//! `FOR UPDATE SKIP LOCKED` and a lease, so several control-plane processes
//! can run them. Every step is idempotent and recorded before the next one
//! starts; a worker that dies mid-step leaves a lease that expires, and the
//! next worker resumes at the recorded step.
//!
//! ```text
//!   pending --claim--> running --step ... step--> succeeded
//!      |                 |   \--error (retried with backoff; after MAX_ATTEMPTS)--> rollback --> failed
//!      +--cancel--+------+
//!                 v
//!            cancelling --rollback--> cancelled
//! ```
//!
//! Provision (dedicated logical tenant): `create_database` (copy of the
//! template) -> `register_backend` -> `place` (residency, placement, tenant
//! active and operation succeeded in one registry transaction). Rollback drops
//! the database and the backend row and removes the never-served tenant.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use tenantry_core::{BackendKind, Engine, new_id};
use tenantry_provisioner::DatabaseAddress;

use crate::service::audit;
use crate::{ControlPlane, Error};

/// Failed attempts of one operation before it is rolled back and failed.
pub(crate) const MAX_ATTEMPTS: i32 = 5;
/// How often an idle worker looks for operations other processes queued.
const POLL: Duration = Duration::from_millis(500);

/// The steps of a logical provision, in order.
pub const PROVISION_STEPS: &[&str] = &["create_database", "register_backend", "place"];
/// The steps of an RDS provision, in order.
pub const PROVISION_RDS_STEPS: &[&str] =
    &["create_instance", "wait_available", "bootstrap", "register_backend", "place"];

fn steps_for(kind: OperationKind, params: &serde_json::Value) -> &'static [&'static str] {
    steps_for_name(kind.as_str(), params)
}

pub(crate) fn steps_for_name(kind: &str, params: &serde_json::Value) -> &'static [&'static str] {
    match kind {
        "retire" => RETIRE_STEPS,
        "provision" if params["engine"] == "rds" => PROVISION_RDS_STEPS,
        "provision" => PROVISION_STEPS,
        "promote" if params["engine"] == "rds" => crate::moves::PROMOTE_RDS_STEPS,
        "promote" => crate::moves::PROMOTE_STEPS,
        "erase" => crate::erase::ERASE_STEPS,
        _ => crate::moves::MOVE_STEPS,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Provision,
    Retire,
    Promote,
    Move,
    Demote,
    Erase,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Provision => "provision",
            OperationKind::Retire => "retire",
            OperationKind::Promote => "promote",
            OperationKind::Move => "move",
            OperationKind::Demote => "demote",
            OperationKind::Erase => "erase",
        }
    }
}

/// The steps of retiring a backend, in order.
pub const RETIRE_STEPS: &[&str] = &["drain", "destroy", "mark_retired"];

pub(crate) fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// An operation as the admin API shows it.
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct OperationView {
    pub id: Uuid,
    pub kind: String,
    pub tenant_id: Option<Uuid>,
    pub backend_id: Option<Uuid>,
    /// pending | running | succeeded | failed | cancelling | cancelled
    pub state: String,
    /// The step running now (or next), `done` at the end.
    pub step: String,
    /// `{"step": k, "steps": n}`: steps completed out of all.
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

const OP_COLUMNS: &str = "id, kind, tenant_id, backend_id, state, step, progress, params, attempts, error, actor, \
    created_at, updated_at, finished_at";

/// Queues an operation inside the caller's transaction.
pub(crate) async fn enqueue(
    txn: &impl ConnectionTrait,
    kind: OperationKind,
    tenant_id: Option<Uuid>,
    params: serde_json::Value,
    actor: &str,
) -> Result<Uuid, DbErr> {
    let id = new_id();
    let steps = steps_for(kind, &params);
    txn.execute_raw(stmt(
        "INSERT INTO operations (id, kind, tenant_id, backend_id, state, step, progress, params, actor) \
         VALUES ($1, $2, $3, ($6::jsonb->>'backend_id')::uuid, 'pending', $4, $5, $6, $7)",
        vec![
            id.into(),
            kind.as_str().into(),
            tenant_id.into(),
            steps[0].into(),
            json!({"step": 0, "steps": steps.len()}).into(),
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

/// Locks the tenant's row for the caller's transaction (serialising requests
/// for one tenant) and refuses with 409 while another operation of it runs.
pub(crate) async fn lock_idle_tenant(txn: &impl ConnectionTrait, tenant: Uuid) -> Result<(), Error> {
    txn.execute_raw(stmt("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", vec![tenant.into()])).await?;
    let busy = txn
        .query_one_raw(stmt(
            "SELECT kind FROM operations WHERE tenant_id = $1 AND state IN ('pending', 'running', 'cancelling') LIMIT 1",
            vec![tenant.into()],
        ))
        .await?;
    match busy {
        None => Ok(()),
        Some(row) => {
            let other: String = row.try_get("", "kind")?;
            Err(Error::Conflict {
                code: "operation_in_progress",
                message: format!("a {other} operation is running for this tenant; wait for it or cancel it first"),
            })
        }
    }
}

/// Ends an operation this worker holds, inside the caller's transaction.
pub(crate) async fn finish(
    txn: &impl ConnectionTrait,
    id: Uuid,
    owner: &str,
    state: &str,
    error: Option<String>,
) -> Result<(), DbErr> {
    let ended = txn
        .execute_raw(stmt(
            "UPDATE operations SET state = $3, step = 'done', error = coalesce($4, error), finished_at = now(), \
             updated_at = now(), lease_owner = NULL, lease_expires_at = NULL, \
             progress = jsonb_set(progress, '{step}', progress->'steps') \
             WHERE id = $1 AND lease_owner = $2",
            vec![id.into(), owner.into(), state.into(), error.clone().into()],
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
        vec![id.into(), state.into(), error.into()],
    ))
    .await?;
    Ok(())
}

/// Test hook: `TENANTRY_FAILPOINTS=provision.after.create_database,...` makes
/// the process abort right after that step is recorded, as a crash would.
pub(crate) fn failpoint(name: &str) {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("TENANTRY_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    });
    if points.iter().any(|p| p == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[derive(FromQueryResult)]
pub(crate) struct Claimed {
    pub(crate) id: Uuid,
    pub(crate) kind: String,
    pub(crate) tenant_id: Option<Uuid>,
    pub(crate) state: String,
    pub(crate) step: String,
    pub(crate) params: serde_json::Value,
    pub(crate) attempts: i32,
}

/// What a worker learns when it records progress.
pub(crate) enum Lease {
    Held,
    Cancelling,
    Lost,
}

impl ControlPlane {
    pub(crate) fn wake_workers(&self) {
        self.worker_wakeup.notify_waiters();
    }

    pub async fn operation(&self, id: Uuid) -> Result<OperationView, Error> {
        OperationView::find_by_statement(stmt(
            &format!("SELECT {OP_COLUMNS} FROM operations WHERE id = $1"),
            vec![id.into()],
        ))
        .one(self.registry())
        .await?
        .ok_or(Error::NotFound("operation"))
    }

    /// Newest first, optionally for one tenant and in one state.
    pub async fn operations(
        &self,
        tenant: Option<Uuid>,
        state: Option<&str>,
        limit: u64,
    ) -> Result<Vec<OperationView>, Error> {
        Ok(OperationView::find_by_statement(stmt(
            &format!(
                "SELECT {OP_COLUMNS} FROM operations WHERE ($1::uuid IS NULL OR tenant_id = $1) \
                 AND ($2::text IS NULL OR state = $2) ORDER BY created_at DESC LIMIT $3"
            ),
            vec![tenant.into(), state.map(str::to_string).into(), (limit.clamp(1, 1000) as i64).into()],
        ))
        .all(self.registry())
        .await?)
    }

    /// Asks for a rollback; the worker holding it (or the next to claim it)
    /// undoes what was created. Refused once the operation has finished.
    pub async fn cancel_operation(&self, actor: &str, id: Uuid) -> Result<OperationView, Error> {
        if self.operation(id).await?.kind == "erase" {
            return Err(Error::Conflict {
                code: "not_cancellable",
                message: "an erasure only goes forward; it cannot be cancelled".into(),
            });
        }
        let res = self
            .registry()
            .execute_raw(stmt(
                "UPDATE operations SET state = 'cancelling', updated_at = now(), \
                 lease_expires_at = CASE WHEN state = 'pending' THEN NULL ELSE lease_expires_at END \
                 WHERE id = $1 AND state IN ('pending', 'running') \
                 AND NOT coalesce((progress->>'cutover_done')::boolean, false)",
                vec![id.into()],
            ))
            .await?;
        let op = self.operation(id).await?;
        if res.rows_affected() == 0 && op.progress["cutover_done"] == true && op.state == "running" {
            return Err(Error::Conflict {
                code: "not_cancellable",
                message: "the tenant already serves from the target; move it back with another move".into(),
            });
        }
        if res.rows_affected() == 0 && op.state != "cancelling" {
            return Err(Error::Conflict {
                code: "not_cancellable",
                message: format!("the operation is {} and can no longer be cancelled", op.state),
            });
        }
        audit(self.registry(), actor, "operation.cancel", op.tenant_id, json!({"operation_id": id})).await?;
        self.wake_workers();
        Ok(op)
    }

    /// Polls until the operation ends or `timeout` passes.
    pub async fn wait_operation(&self, id: Uuid, timeout: Duration) -> Result<OperationView, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let op = self.operation(id).await?;
            if matches!(op.state.as_str(), "succeeded" | "failed" | "cancelled")
                || tokio::time::Instant::now() > deadline
            {
                return Ok(op);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs operations until the task is dropped.
    pub async fn run_worker(self: Arc<Self>) {
        let owner = format!("worker-{}-{}", std::process::id(), new_id().simple());
        static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = self.sweep_move_orphans().await
        {
            tracing::warn!(error = %e, "sweeping replication objects of interrupted moves failed");
        }
        loop {
            let woken = self.worker_wakeup.notified();
            match self.claim(&owner).await {
                Ok(Some(op)) => self.drive(&owner, op).await,
                Ok(None) => {
                    let _ = tokio::time::timeout(POLL, woken).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming operations failed; retrying");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn claim(&self, owner: &str) -> Result<Option<Claimed>, DbErr> {
        Claimed::find_by_statement(stmt(
            "UPDATE operations SET state = CASE WHEN state = 'pending' THEN 'running' ELSE state END, \
             lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2), attempts = attempts + 1, \
             updated_at = now() \
             WHERE id = (SELECT id FROM operations \
                WHERE state = 'pending' \
                   OR (state IN ('running', 'cancelling') AND (lease_expires_at IS NULL OR lease_expires_at < now())) \
                ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) \
             RETURNING id, kind, tenant_id, state, step, params, attempts",
            vec![owner.into(), (self.config().lease_secs as f64).into()],
        ))
        .one(self.registry())
        .await
    }

    /// Records that `step` is next and renews the lease; tells whether this
    /// worker still holds the operation and whether it was cancelled.
    pub(crate) async fn advance(&self, id: Uuid, owner: &str, step: &str, done: usize) -> Result<Lease, DbErr> {
        let row = self
            .registry()
            .query_one_raw(stmt(
                "UPDATE operations SET step = $3, progress = jsonb_set(progress, '{step}', to_jsonb($4::int)), \
                 lease_expires_at = now() + make_interval(secs => $5), updated_at = now() \
                 WHERE id = $1 AND lease_owner = $2 RETURNING state",
                vec![
                    id.into(),
                    owner.into(),
                    step.into(),
                    (done as i32).into(),
                    (self.config().lease_secs as f64).into(),
                ],
            ))
            .await?;
        Ok(match row {
            None => Lease::Lost,
            Some(r) if r.try_get::<String>("", "state")? == "cancelling" => Lease::Cancelling,
            Some(_) => Lease::Held,
        })
    }

    async fn drive(&self, owner: &str, op: Claimed) {
        match op.kind.as_str() {
            "retire" => return self.drive_retire(owner, op).await,
            "promote" | "move" | "demote" => return self.drive_move(owner, op).await,
            "erase" => return self.drive_erase(owner, op).await,
            _ => {}
        }
        let Some(tenant_id) = op.tenant_id else {
            let _ = finish(self.registry(), op.id, owner, "failed", Some("the tenant no longer exists".into())).await;
            return;
        };
        let database = op.params["database"].as_str().unwrap_or_default().to_string();
        if op.state == "cancelling" {
            self.roll_back(owner, op.id, tenant_id, &op.params, "cancelled", None).await;
            return;
        }
        let steps = steps_for(OperationKind::Provision, &op.params);
        let start = steps.iter().position(|s| *s == op.step).unwrap_or(0);
        for (i, step) in steps.iter().enumerate().skip(start) {
            match self.advance(op.id, owner, step, i).await {
                Ok(Lease::Held) => {}
                Ok(Lease::Cancelling) => {
                    self.roll_back(owner, op.id, tenant_id, &op.params, "cancelled", None).await;
                    return;
                }
                Ok(Lease::Lost) => return,
                Err(e) => {
                    tracing::warn!(operation = %op.id, error = %e, "recording progress failed");
                    return;
                }
            }
            if let Err(e) = self.provision_step(owner, op.id, tenant_id, &database, &op.params, step).await {
                self.step_failed(owner, &op, tenant_id, step, e).await;
                return;
            }
            failpoint(&format!("provision.after.{step}"));
        }
    }

    pub(crate) async fn provision_step(
        &self,
        owner: &str,
        op: Uuid,
        tenant_id: Uuid,
        database: &str,
        params: &serde_json::Value,
        step: &str,
    ) -> Result<(), Error> {
        let instance = params["instance"].as_str().unwrap_or_default();
        match step {
            "create_instance" => {
                let rds = self.rds_engine()?;
                let slug = params["slug"].as_str().unwrap_or_default();
                let tenant = tenant_id.to_string();
                let tags =
                    [("tenantry:tenant-id", tenant.as_str()), ("tenantry:slug", slug), ("managed-by", "tenantry")];
                rds.ensure_instance(instance, &tags).await.map_err(tenantry_provisioner::Error::from)?;
            }
            "wait_available" => {
                let ep =
                    self.rds_engine()?.wait_available(instance).await.map_err(tenantry_provisioner::Error::from)?;
                self.registry()
                    .execute_raw(stmt(
                        "UPDATE operations SET params = params || jsonb_build_object('host', $2::text, 'port', $3::int) \
                         WHERE id = $1",
                        vec![op.into(), ep.host.into(), i32::from(ep.port).into()],
                    ))
                    .await?;
            }
            "bootstrap" => {
                let target = self.bootstrap_target(op, instance).await?;
                let admin = tenantry_provisioner::LogicalProvisioner::connect(
                    &target.host,
                    target.port,
                    &target.admin_user,
                    &target.admin_password,
                )
                .await?;
                if !target.roles_exist {
                    let app_password = self.config().app_password.clone().ok_or_else(|| {
                        Error::invalid("app_password_missing", "control_plane.app_password is needed to bootstrap RDS")
                    })?;
                    let owner = tenantry_provisioner::RoleCredentials {
                        name: self.config().owner.user.clone(),
                        password: self.config().owner.password.clone(),
                    };
                    let app = tenantry_provisioner::RoleCredentials {
                        name: self.config().app_role.clone(),
                        password: app_password,
                    };
                    admin.ensure_roles(&owner, &app).await?;
                }
                admin.create_database(database, &self.config().owner.user, None).await?;
                admin.grant_connect(database, &self.config().app_role).await?;
            }
            "register_backend" if params["engine"] == "rds" => {
                let target = self.bootstrap_target(op, instance).await?;
                let addr = DatabaseAddress { host: target.host, port: target.port, database: database.to_string() };
                let backend =
                    self.register_database("operation", instance, BackendKind::Dedicated, Engine::Rds, &addr).await?;
                self.registry()
                    .execute_raw(stmt(
                        "UPDATE operations SET backend_id = $2 WHERE id = $1",
                        vec![op.into(), backend.id.into()],
                    ))
                    .await?;
            }
            "create_database" => {
                let template = self.config().template_database.clone();
                self.provisioner().create_database(database, &self.config().owner.user, Some(&template)).await?;
            }
            "register_backend" => {
                let backend = self.register_backend("operation", database, BackendKind::Dedicated).await?;
                self.registry()
                    .execute_raw(stmt(
                        "UPDATE operations SET backend_id = $2 WHERE id = $1",
                        vec![op.into(), backend.id.into()],
                    ))
                    .await?;
            }
            "place" => {
                let backend_id = self.operation(op).await?.backend_id.ok_or(Error::NotFound("backend"))?;
                let backend = self.backend(backend_id).await?;
                self.place_tenant("operation", tenant_id, &backend, Some((op, owner))).await?;
            }
            other => return Err(Error::invalid("unknown_step", format!("unknown step `{other}`"))),
        }
        Ok(())
    }

    async fn step_failed(&self, owner: &str, op: &Claimed, tenant_id: Uuid, step: &str, e: Error) {
        let error = format!("{step}: {e}");
        tracing::warn!(operation = %op.id, attempt = op.attempts, %error, "operation step failed");
        if op.attempts >= MAX_ATTEMPTS || e.is_permanent() {
            self.roll_back(owner, op.id, tenant_id, &op.params, "failed", Some(error)).await;
            return;
        }
        self.retry_later(op, owner, error).await;
    }

    /// Records the error and lets the lease lapse after an exponential backoff
    /// (2^attempts s, at most 32 s), so this or another worker retries the step.
    pub(crate) async fn retry_later(&self, op: &Claimed, owner: &str, error: String) {
        let backoff = f64::from(1u32 << op.attempts.clamp(0, 5));
        let _ = self
            .registry()
            .execute_raw(stmt(
                "UPDATE operations SET error = $3, lease_expires_at = now() + make_interval(secs => $4), updated_at = now() \
                 WHERE id = $1 AND lease_owner = $2",
                vec![op.id.into(), owner.into(), error.into(), backoff.into()],
            ))
            .await;
    }

    /// Undoes a provision: drops the database (or retires the RDS instance,
    /// with its final snapshot), forgets the backend, removes the tenant (never
    /// served), and ends the operation as `state`.
    async fn roll_back(
        &self,
        owner: &str,
        id: Uuid,
        tenant_id: Uuid,
        params: &serde_json::Value,
        state: &str,
        error: Option<String>,
    ) {
        let database = params["database"].as_str().unwrap_or_default();
        let instance = params["instance"].as_str().unwrap_or_default();
        let backend_name = if params["engine"] == "rds" { instance } else { database };
        let result: Result<(), Error> = async {
            if !database.is_empty() {
                self.destroy_storage(params["engine"].as_str().unwrap_or("logical"), backend_name, database, true)
                    .await?;
            }
            let txn = sea_orm::TransactionTrait::begin(self.registry()).await?;
            txn.execute_raw(stmt("DELETE FROM placements WHERE tenant_id = $1", vec![tenant_id.into()])).await?;
            txn.execute_raw(stmt("DELETE FROM api_keys WHERE tenant_id = $1", vec![tenant_id.into()])).await?;
            txn.execute_raw(stmt("DELETE FROM tenants WHERE id = $1 AND status <> 'active'", vec![tenant_id.into()]))
                .await?;
            txn.execute_raw(stmt(
                "DELETE FROM backends WHERE name = $1 AND kind = 'dedicated' \
                 AND NOT EXISTS (SELECT 1 FROM placements p WHERE p.backend_id = backends.id)",
                vec![backend_name.into()],
            ))
            .await?;
            finish(&txn, id, owner, state, error.clone()).await?;
            audit(
                &txn,
                "operation",
                "operation.rollback",
                None,
                json!({"operation_id": id, "tenant_id": tenant_id, "state": state}),
            )
            .await?;
            txn.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(operation = %id, error = %e, "rollback failed; it will be retried when the lease lapses");
        }
    }
}

/// Where an RDS instance is bootstrapped, and as whom.
struct BootstrapTarget {
    host: String,
    port: u16,
    admin_user: String,
    admin_password: secrecy::SecretString,
    /// The test override points at a cluster whose roles already exist.
    roles_exist: bool,
}

impl ControlPlane {
    /// Destroys a dedicated backend's storage: drops its logical database, or
    /// deletes its RDS instance after a final snapshot (whose id is returned).
    /// Safe to repeat.
    pub(crate) async fn destroy_storage(
        &self,
        engine: &str,
        name: &str,
        database: &str,
        final_snapshot: bool,
    ) -> Result<Option<String>, Error> {
        if engine != "rds" {
            self.provisioner().drop_database(database).await?;
            return Ok(None);
        }
        let snapshot =
            self.rds_engine()?.retire_with(name, final_snapshot).await.map_err(tenantry_provisioner::Error::from)?;
        if let Some(o) = &self.config().rds_bootstrap_override {
            let admin =
                tenantry_provisioner::LogicalProvisioner::connect(&o.host, o.port, &o.admin_user, &o.admin_password)
                    .await?;
            admin.drop_database(database).await?;
        }
        Ok(snapshot)
    }

    pub(crate) fn rds_engine(&self) -> Result<&tenantry_provisioner::RdsProvisioner, Error> {
        self.rds.as_ref().ok_or_else(|| Error::invalid("engine_unavailable", "the rds engine is not configured"))
    }

    async fn bootstrap_target(&self, op: Uuid, instance: &str) -> Result<BootstrapTarget, Error> {
        if let Some(o) = &self.config().rds_bootstrap_override {
            return Ok(BootstrapTarget {
                host: o.host.clone(),
                port: o.port,
                admin_user: o.admin_user.clone(),
                admin_password: o.admin_password.clone(),
                roles_exist: true,
            });
        }
        let rds = self.rds_engine()?;
        let params = self.operation(op).await?.params;
        let host = params["host"].as_str().ok_or(Error::NotFound("instance endpoint"))?.to_string();
        let port = params["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(5432);
        Ok(BootstrapTarget {
            host,
            port,
            admin_user: rds.config().master_username.clone(),
            admin_password: rds.master_password(instance),
            roles_exist: false,
        })
    }
}

impl ControlPlane {
    /// Queues the retirement of a backend that holds no tenant: drained, its
    /// database dropped (logical) or its instance deleted after a final
    /// snapshot (RDS), then marked retired.
    pub async fn retire_backend(&self, actor: &str, backend_id: Uuid) -> Result<OperationView, Error> {
        let backend = self.backend(backend_id).await?;
        if backend.kind == "template" {
            return Err(Error::Conflict {
                code: "not_retirable",
                message: "the template database is not retired".into(),
            });
        }
        if backend.status == "retired" {
            return Err(Error::Conflict { code: "already_retired", message: "the backend is already retired".into() });
        }
        if backend.tenants > 0 {
            return Err(Error::Conflict {
                code: "backend_in_use",
                message: format!("{} tenant(s) still live on this backend; move them first", backend.tenants),
            });
        }
        let txn = sea_orm::TransactionTrait::begin(self.registry()).await?;
        let busy = txn
            .query_one_raw(stmt(
                "SELECT 1 AS busy FROM operations WHERE kind = 'retire' AND backend_id = $1 \
                 AND state IN ('pending', 'running', 'cancelling')",
                vec![backend_id.into()],
            ))
            .await?;
        if busy.is_some() {
            return Err(Error::Conflict {
                code: "operation_in_progress",
                message: "a retirement is already running".into(),
            });
        }
        let params = json!({
            "backend_id": backend_id, "name": backend.name, "engine": backend.engine, "database": backend.database,
        });
        let id = enqueue(&txn, OperationKind::Retire, None, params, actor).await?;
        txn.commit().await?;
        self.wake_workers();
        self.operation(id).await
    }

    async fn drive_retire(&self, owner: &str, op: Claimed) {
        let backend_id = op.params["backend_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_default();
        let start = RETIRE_STEPS.iter().position(|s| *s == op.step).unwrap_or(0);
        for (i, step) in RETIRE_STEPS.iter().enumerate().skip(start) {
            match self.advance(op.id, owner, step, i).await {
                Ok(Lease::Held) => {}
                // A retirement is not undone: cancelling it before `destroy` leaves the
                // backend draining, visible and retirable again.
                Ok(Lease::Cancelling) if i < 2 => {
                    let _ = self
                        .registry()
                        .execute_raw(stmt(
                            "UPDATE backends SET status = 'ready', updated_at = now() WHERE id = $1 AND status = 'draining'",
                            vec![backend_id.into()],
                        ))
                        .await;
                    let _ = finish(self.registry(), op.id, owner, "cancelled", None).await;
                    return;
                }
                Ok(Lease::Cancelling) => {}
                Ok(Lease::Lost) | Err(_) => return,
            }
            let result: Result<(), Error> = async {
                match *step {
                    "drain" => {
                        self.registry()
                            .execute_raw(stmt(
                                "UPDATE backends SET status = 'draining', updated_at = now() WHERE id = $1",
                                vec![backend_id.into()],
                            ))
                            .await?;
                    }
                    "destroy" => {
                        let engine = op.params["engine"].as_str().unwrap_or("logical");
                        let name = op.params["name"].as_str().unwrap_or_default();
                        let database = op.params["database"].as_str().unwrap_or_default();
                        if let Some(snapshot) = self.destroy_storage(engine, name, database, true).await? {
                            self.registry()
                                .execute_raw(stmt(
                                    "UPDATE operations SET params = params || jsonb_build_object('final_snapshot', $2::text) \
                                     WHERE id = $1",
                                    vec![op.id.into(), snapshot.into()],
                                ))
                                .await?;
                        }
                    }
                    _ => {
                        let txn = sea_orm::TransactionTrait::begin(self.registry()).await?;
                        txn.execute_raw(stmt(
                            "UPDATE backends SET status = 'retired', updated_at = now() WHERE id = $1",
                            vec![backend_id.into()],
                        ))
                        .await?;
                        audit(&txn, "operation", "backend.retire", None, json!({"backend_id": backend_id})).await?;
                        finish(&txn, op.id, owner, "succeeded", None).await?;
                        txn.commit().await?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let error = format!("{step}: {e}");
                tracing::warn!(operation = %op.id, %error, "retirement step failed; will retry");
                self.retry_later(&op, owner, error).await;
                return;
            }
            failpoint(&format!("retire.after.{step}"));
        }
    }
}
