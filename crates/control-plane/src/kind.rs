//! What an operation kind implements for the runner: its parameters, its
//! steps, its failure policy, each step, and its rollback. The runner
//! (`runner.rs`) knows no kind; a kind knows no runner loop.

use std::future::Future;

use sea_orm::{ConnectionTrait, DbErr};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Error;
use crate::operation::{OperationKind, OperationState, Step};
use crate::plane::ControlPlane;
use crate::registry::{self, Lease, OperationView};

/// How far a failure or a cancel undoes an operation of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Rolled back until it succeeds (a provision: nobody was served yet).
    RollBack,
    /// Rolled back until this step starts; forward only from there (a
    /// retirement: once the storage goes, it is gone).
    RollBackUntil(Step),
    /// Rolled back until the cutover seals the source (a move: the progress's
    /// `sealing`, recorded before the seal); forward only after it.
    RollBackUntilSeal,
    /// Never rolled back or cancelled (an erasure).
    ForwardOnly,
}

/// Why a step stopped before it finished.
#[derive(Debug)]
pub(crate) enum Stop {
    /// An operator asked for a cancel.
    Cancelled,
    /// Another worker holds the operation now.
    Lost,
    /// This process is stopping: the operation is handed back.
    Shutdown,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<DbErr> for Stop {
    fn from(e: DbErr) -> Self {
        Stop::Failed(e.into())
    }
}

impl From<sea_orm::sqlx::Error> for Stop {
    fn from(e: sea_orm::sqlx::Error) -> Self {
        Stop::Failed(e.into())
    }
}

/// One claimed operation as its kind's steps see it.
pub(crate) struct Run<'a, P> {
    pub(crate) cp: &'a ControlPlane,
    pub(crate) id: Uuid,
    pub(crate) kind: OperationKind,
    pub(crate) owner: &'a str,
    pub(crate) tenant: Option<Uuid>,
    pub(crate) params: P,
    pub(crate) attempts: i32,
    pub(crate) shutdown: &'a CancellationToken,
}

impl<P> Run<'_, P> {
    /// The tenant the operation is for (every kind but a retirement has one).
    pub(crate) fn tenant(&self) -> Result<Uuid, Error> {
        self.tenant.ok_or(Error::NotFound("tenant"))
    }

    /// Renews the lease and merges `patch` into the progress; stops the step
    /// when the operation was cancelled or taken over, or this process stops.
    pub(crate) async fn heartbeat(&self, patch: Value) -> Result<(), Stop> {
        if self.shutdown.is_cancelled() {
            return Err(Stop::Shutdown);
        }
        match registry::heartbeat(self.cp.registry(), self.id, self.owner, patch, self.cp.config().lease_secs).await? {
            Lease::Held => Ok(()),
            Lease::Cancelling => Err(Stop::Cancelled),
            Lease::Lost => Err(Stop::Lost),
        }
    }

    /// Merges facts a step learnt into the stored parameters (read back by
    /// later steps through [`Run::view`]).
    pub(crate) async fn set_params(&self, patch: Value) -> Result<(), Error> {
        Ok(registry::set_params(self.cp.registry(), self.id, patch).await?)
    }

    /// The operation as stored now.
    pub(crate) async fn view(&self) -> Result<OperationView, Error> {
        registry::operation(self.cp.registry(), self.id).await?.ok_or(Error::NotFound("operation"))
    }

    /// Ends the operation inside the caller's transaction.
    pub(crate) async fn finish(
        &self,
        txn: &impl ConnectionTrait,
        state: OperationState,
        error: Option<String>,
    ) -> Result<(), DbErr> {
        registry::finish(txn, self.id, self.owner, state, error).await
    }
}

impl<P> Run<'_, P> {
    /// Ends a rolled-back operation inside the caller's transaction, audited
    /// with `detail`.
    pub(crate) async fn rolled_back(
        &self,
        txn: &impl ConnectionTrait,
        outcome: OperationState,
        error: Option<String>,
        detail: Value,
    ) -> Result<(), DbErr> {
        self.finish(txn, outcome, error).await?;
        let mut body = serde_json::json!({"operation_id": self.id, "tenant_id": self.tenant, "state": outcome});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), detail) {
            b.extend(extra);
        }
        registry::audit(txn, "operation", "operation.rollback", None, body).await
    }
}

/// One kind of operation. Implemented by a unit type per kind; registered
/// with one line in `runner.rs`.
pub(crate) trait Kind: Send + Sync + 'static {
    /// The parameters, parsed once when the operation is claimed.
    type Params: Serialize + DeserializeOwned + Send + Sync;
    /// What survives between steps of one run in this process.
    type State: Default + Send;
    /// Crash hooks are named `<FAILPOINTS>.after.<step>`.
    const FAILPOINTS: &'static str;
    const POLICY: Policy;
    /// Whether each step's duration goes into the progress's `step_ms`.
    const TIMED: bool = false;

    /// The steps, in order.
    fn steps(kind: OperationKind, params: &Self::Params) -> &'static [Step];

    /// Runs one step. Safe to repeat: a crash may run it again.
    fn step(
        run: &Run<'_, Self::Params>,
        state: &mut Self::State,
        step: Step,
    ) -> impl Future<Output = Result<(), Stop>> + Send;

    /// Undoes what the steps made and ends the operation as `outcome`.
    fn roll_back(
        run: &Run<'_, Self::Params>,
        outcome: OperationState,
        error: Option<String>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Queues an operation of kind `K` inside the caller's transaction.
pub(crate) async fn enqueue<K: Kind>(
    txn: &impl ConnectionTrait,
    kind: OperationKind,
    tenant: Option<Uuid>,
    params: &K::Params,
    actor: &str,
) -> Result<Uuid, Error> {
    let steps = K::steps(kind, params);
    let first = steps.first().copied().unwrap_or(Step::Done);
    let json = serde_json::to_value(params).map_err(|e| Error::invalid("invalid_params", e.to_string()))?;
    Ok(registry::enqueue(txn, kind, tenant, json, (first, steps.len()), actor).await?)
}

/// Test hook: `TENANTRY_FAILPOINTS=provision.after.create_database,...` makes
/// the process abort right after that step is recorded, as a crash would.
/// `name@/path/marker` fires once across processes: only for the process that
/// creates the marker file first (so replicas sharing one list each crash at
/// most once, wherever the operation happens to run).
pub(crate) fn failpoint(name: &str) {
    static POINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("TENANTRY_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    });
    let fires = |p: &String| match p.split_once('@') {
        Some((point, marker)) => {
            point == name && std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok()
        }
        None => p == name,
    };
    if points.iter().any(fires) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
