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
//! copy        initial sync of every table (rows copied / total in the progress); a promotion
//!             loads its fresh database without secondary indexes and builds them after
//!             (`deferred.rs`)
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

pub mod copy;
pub mod cutover;
pub mod deferred;
pub mod facts;
pub mod plan;
pub mod release;
pub mod replication;
pub mod request;
pub mod rollback;
pub mod sweep;
pub mod verify;

use crate::error::Error;
use crate::kind::{Kind, Policy, Run, Stop};
use crate::moves::facts::{Facts, MoveParams, MoveRun};
use crate::operation::{OperationKind, OperationState, Step};
use tenantry_core::Engine;

/// The steps every move runs once its target exists.
pub const MOVE_STEPS: &[Step] = &[
    Step::Preflight,
    Step::Subscribe,
    Step::Copy,
    Step::CatchUp,
    Step::Cutover,
    Step::Cleanup,
    Step::Verify,
    Step::ReleaseSource,
];
/// Promote to a new logical database, then move.
pub const PROMOTE_STEPS: &[Step] = &[
    Step::CreateDatabase,
    Step::RegisterBackend,
    Step::Preflight,
    Step::Subscribe,
    Step::Copy,
    Step::CatchUp,
    Step::Cutover,
    Step::Cleanup,
    Step::Verify,
    Step::ReleaseSource,
];
/// Promote to a new RDS instance, then move.
pub const PROMOTE_RDS_STEPS: &[Step] = &[
    Step::CreateInstance,
    Step::WaitAvailable,
    Step::Bootstrap,
    Step::RegisterBackend,
    Step::Preflight,
    Step::Subscribe,
    Step::Copy,
    Step::CatchUp,
    Step::Cutover,
    Step::Cleanup,
    Step::Verify,
    Step::ReleaseSource,
];

/// The `promote`, `move` and `demote` kinds: one implementation.
pub(crate) struct Move;

impl Kind for Move {
    type Params = MoveParams;
    type State = MoveRun;
    const FAILPOINTS: &'static str = "move";
    const POLICY: Policy = Policy::RollBackUntilSeal;
    const TIMED: bool = true;

    fn steps(kind: OperationKind, params: &MoveParams) -> &'static [Step] {
        match (kind, params.engine) {
            (OperationKind::Promote, Some(Engine::Rds)) => PROMOTE_RDS_STEPS,
            (OperationKind::Promote, _) => PROMOTE_STEPS,
            _ => MOVE_STEPS,
        }
    }

    async fn step(run: &Run<'_, MoveParams>, state: &mut MoveRun, step: Step) -> Result<(), Stop> {
        if matches!(
            step,
            Step::CreateDatabase | Step::CreateInstance | Step::WaitAvailable | Step::Bootstrap | Step::RegisterBackend
        ) {
            let new = run.params.new_database()?;
            return Ok(new.step(run.cp, run.id, run.tenant()?, step).await?);
        }
        let f = Facts::read(run).await?;
        match step {
            Step::Preflight => plan::preflight(run, &f).await,
            Step::Subscribe => replication::subscribe(run, &f).await,
            Step::Copy => copy::copy(run, &f).await,
            Step::CatchUp => copy::catch_up(run, &f).await,
            Step::Cutover => cutover::cutover(run, &f, state).await,
            Step::Cleanup => replication::cleanup(run, &f).await,
            Step::Verify => verify::verify(run, &f, state).await,
            Step::ReleaseSource => release::release(run, &f).await,
            other => Err(Stop::Failed(Error::invalid("unknown_step", format!("`{other}` is not a step of a move")))),
        }
    }

    async fn roll_back(run: &Run<'_, MoveParams>, outcome: OperationState, error: Option<String>) -> Result<(), Error> {
        rollback::roll_back(run, outcome, error).await
    }
}
