//! The one operation runner. It claims an operation (`FOR UPDATE SKIP LOCKED`
//! and a lease), parses its kind and parameters once, records each step
//! before running it, renews the lease, retries a failed step with backoff,
//! applies the kind's failure [`Policy`] (roll back up to its point of no
//! return, forward only after it), honours cancel, and hands the operation
//! back when the process stops. It knows no kind: each kind implements
//! [`Kind`] in its own file and is registered below with one line.
//!
//! ```text
//!   pending --claim--> running --step ... step--> succeeded
//!      |                 |   \--transient error--> (backoff 2^attempts s, lease lapses) --> claimed again
//!      |                 |   \--permanent error or MAX_ATTEMPTS--> rolled back --> failed
//!      |                 |                              (past the point of no return: failed, kept)
//!      +--cancel--+------+
//!                 v
//!            cancelling --rollback--> cancelled   (past the point of no return: cancel is ignored)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use tenantry_core::new_id;

use crate::erase::Erase;
use crate::error::Error;
use crate::estates::adopt::Adopt;
use crate::estates::revert::Revert;
use crate::kind::{Kind, Policy, Run, Stop, failpoint};
use crate::moves::Move;
use crate::operation::{OperationKind, OperationState, Step};
use crate::plane::ControlPlane;
use crate::provision::Provision;
use crate::registry::{self, ClaimedRow, Lease};
use crate::retire::Retire;

/// Failed attempts of one operation before its policy gives up on it.
pub(crate) const MAX_ATTEMPTS: i32 = 5;
/// How often an idle worker looks for operations other processes queued.
const POLL: Duration = Duration::from_millis(500);
/// Longest wait before a failed step is retried (2^attempts s up to this).
const MAX_BACKOFF_SECS: u32 = 32;

/// The registration: which implementation runs each kind.
async fn dispatch(cp: &ControlPlane, owner: &str, row: ClaimedRow, kind: OperationKind, stop: &CancellationToken) {
    match kind {
        OperationKind::Provision => drive::<Provision>(cp, owner, row, kind, stop).await,
        OperationKind::Retire => drive::<Retire>(cp, owner, row, kind, stop).await,
        OperationKind::Promote | OperationKind::Move | OperationKind::Demote => {
            drive::<Move>(cp, owner, row, kind, stop).await
        }
        OperationKind::Erase => drive::<Erase>(cp, owner, row, kind, stop).await,
        OperationKind::Adopt => drive::<Adopt>(cp, owner, row, kind, stop).await,
        OperationKind::Revert => drive::<Revert>(cp, owner, row, kind, stop).await,
    }
}

/// The failure policy of a kind, for the cancel API.
pub(crate) fn policy(kind: OperationKind) -> Policy {
    match kind {
        OperationKind::Provision => Provision::POLICY,
        OperationKind::Retire => Retire::POLICY,
        OperationKind::Promote | OperationKind::Move | OperationKind::Demote => Move::POLICY,
        OperationKind::Erase => Erase::POLICY,
        OperationKind::Adopt => Adopt::POLICY,
        OperationKind::Revert => Revert::POLICY,
    }
}

/// Whether the operation is past its point of no return at `step` (which
/// has `started` or is about to).
pub(crate) fn committed(
    policy: Policy,
    steps: &[Step],
    step: Step,
    started: bool,
    progress: &serde_json::Value,
) -> bool {
    match policy {
        Policy::RollBack => false,
        Policy::RollBackUntil(until) => {
            let at = |s: Step| steps.iter().position(|x| *x == s);
            match (at(step), at(until)) {
                (Some(i), Some(u)) => i > u || (i == u && started),
                _ => step == Step::Done,
            }
        }
        Policy::RollBackUntilSeal => registry::past_seal(progress),
        Policy::ForwardOnly => true,
    }
}

impl ControlPlane {
    /// Runs operations until `shutdown` is cancelled; the operation in hand
    /// is handed back at its next step boundary (or heartbeat).
    pub async fn run_worker(self: Arc<Self>, shutdown: CancellationToken) {
        let owner = format!("worker-{}-{}", std::process::id(), new_id().simple());
        self.workers_running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(&self.workers_running);
        static SWEPT: AtomicBool = AtomicBool::new(false);
        if !SWEPT.swap(true, Ordering::SeqCst)
            && let Err(e) = self.sweep_move_orphans().await
        {
            tracing::warn!(error = %e, "sweeping replication objects of interrupted moves failed");
        }
        while !shutdown.is_cancelled() {
            let woken = self.worker_wakeup.notified();
            match registry::claim(self.registry(), &owner, self.config().lease_secs).await {
                Ok(Some(row)) => self.run_claimed(&owner, row, &shutdown).await,
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::timeout(POLL, woken) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming operations failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn run_claimed(&self, owner: &str, row: ClaimedRow, shutdown: &CancellationToken) {
        let span = tracing::info_span!(
            "operation",
            operation_id = %row.id,
            kind = %row.kind,
            tenant_id = ?row.tenant_id,
            step = tracing::field::Empty,
        );
        let id = row.id;
        match row.kind.parse::<OperationKind>() {
            Ok(kind) => dispatch(self, owner, row, kind, shutdown).instrument(span).await,
            Err(e) => {
                let error = format!("not run: {e}");
                span.in_scope(|| tracing::error!(%error, "operation of an unknown kind"));
                let _ = registry::finish(self.registry(), id, owner, OperationState::Failed, Some(error)).await;
            }
        }
    }
}

/// Counts a worker loop as running until it ends (or its task is aborted).
struct Running<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ControlPlane {
    /// Ready when the registry answers and, with operation workers
    /// configured, every worker loop runs; otherwise why not.
    pub async fn readiness(&self) -> Result<(), String> {
        tenantry_core::registry::RegistryReader::new(self.registry().clone()).ping().await?;
        let (running, wanted) = (self.workers_running.load(Ordering::SeqCst), self.config().operation_workers);
        if running < wanted {
            return Err(format!("{running} of {wanted} operation workers running"));
        }
        Ok(())
    }
}

/// One run of one claimed operation of kind `K`.
async fn drive<K: Kind>(
    cp: &ControlPlane,
    owner: &str,
    row: ClaimedRow,
    kind: OperationKind,
    stop: &CancellationToken,
) {
    let unreadable = |what: String| async move {
        tracing::error!(error = %what, "operation not run");
        let _ = registry::finish(cp.registry(), row.id, owner, OperationState::Failed, Some(what)).await;
    };
    let params: K::Params = match serde_json::from_value(row.params.clone()) {
        Ok(p) => p,
        Err(e) => return unreadable(format!("not run: its parameters do not parse: {e}")).await,
    };
    let (state, at) = match (row.state.parse::<OperationState>(), row.step.parse::<Step>()) {
        (Ok(s), Ok(step)) => (s, step),
        (Err(e), _) | (_, Err(e)) => return unreadable(format!("not run: {e}")).await,
    };
    let steps = K::steps(kind, &params);
    let Some(start) = steps.iter().position(|s| *s == at) else {
        return unreadable(format!("not run: `{at}` is not a step of {kind}")).await;
    };
    let run =
        Run { cp, id: row.id, kind, owner, tenant: row.tenant_id, params, attempts: row.attempts, shutdown: stop };
    if state == OperationState::Cancelling && !is_committed::<K>(&run, steps, at, true).await {
        return roll_back::<K>(&run, OperationState::Cancelled, None).await;
    }
    let mut kept = K::State::default();
    for (i, step) in steps.iter().copied().enumerate().skip(start) {
        if stop.is_cancelled() {
            return hand_back(&run).await;
        }
        match registry::advance(cp.registry(), run.id, owner, step, i, cp.config().lease_secs).await {
            Ok(Lease::Held) => {}
            Ok(Lease::Cancelling) if !is_committed::<K>(&run, steps, step, false).await => {
                return roll_back::<K>(&run, OperationState::Cancelled, None).await;
            }
            // Past the point of no return a cancel changes nothing.
            Ok(Lease::Cancelling) => {}
            Ok(Lease::Lost) => return,
            Err(e) => {
                tracing::warn!(error = %e, "recording progress failed");
                return;
            }
        }
        tracing::Span::current().record("step", step.as_str());
        let started = Instant::now();
        let work = K::step(&run, &mut kept, step).instrument(tracing::info_span!("step", %step));
        let result = keep_lease(&run, work).await;
        match result {
            Ok(()) if K::TIMED => {
                let ms = started.elapsed().as_millis() as i64;
                let _ = registry::record_step_ms(cp.registry(), run.id, serde_json::json!({ step.as_str(): ms })).await;
            }
            Ok(()) => {}
            Err(Stop::Lost) => return,
            Err(Stop::Shutdown) => return hand_back(&run).await,
            Err(Stop::Cancelled) if !is_committed::<K>(&run, steps, step, true).await => {
                return roll_back::<K>(&run, OperationState::Cancelled, None).await;
            }
            Err(Stop::Cancelled) => return retry_later(&run, format!("{step}: interrupted"), 0).await,
            Err(Stop::Failed(e)) => return failed::<K>(&run, steps, step, e).await,
        }
        failpoint(&format!("{}.after.{step}", K::FAILPOINTS));
    }
}

/// Runs a step while renewing the operation's lease every third of it, so a
/// step that reports no progress for a while (a copy, an instance coming up)
/// keeps its claim. Taken over meanwhile: the step is dropped where it stands,
/// as a crash would leave it (every step is safe to resume).
async fn keep_lease<P>(run: &Run<'_, P>, work: impl Future<Output = Result<(), Stop>>) -> Result<(), Stop> {
    let lease = run.cp.config().lease_secs;
    let every = Duration::from_millis(lease * 1000 / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                match registry::heartbeat(run.cp.registry(), run.id, run.owner, serde_json::json!({}), lease).await {
                    Ok(Lease::Lost) => {
                        tracing::warn!("lease lost while a step ran; another worker holds the operation");
                        return Err(Stop::Lost);
                    }
                    // A cancel is seen by the step's own heartbeats; a failed
                    // renewal is tried again at the next tick.
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
                }
            }
        }
    }
}

/// A step failed: retried later, or (permanent, or out of attempts) rolled
/// back before the point of no return and failed as it stands after it.
async fn failed<K: Kind>(run: &Run<'_, K::Params>, steps: &[Step], step: Step, e: Error) {
    let error = format!("{step}: {e}");
    tracing::warn!(attempt = run.attempts, permanent = e.is_permanent(), %error, "operation step failed");
    if !e.is_permanent() && run.attempts < MAX_ATTEMPTS {
        return retry_later(run, error, run.attempts).await;
    }
    if is_committed::<K>(run, steps, step, true).await {
        // What the operation did stays; what is left is for an operator (or,
        // for an erasure, for asking again, which resumes at this step).
        let _ = run.finish(run.cp.registry(), OperationState::Failed, Some(error)).await;
    } else {
        roll_back::<K>(run, OperationState::Failed, Some(error)).await;
    }
}

/// [`committed`] as the registry says now.
async fn is_committed<K: Kind>(run: &Run<'_, K::Params>, steps: &[Step], step: Step, started: bool) -> bool {
    let progress = run.view().await.map(|v| v.progress).unwrap_or_default();
    committed(K::POLICY, steps, step, started, &progress)
}

async fn roll_back<K: Kind>(run: &Run<'_, K::Params>, outcome: OperationState, error: Option<String>) {
    if let Err(e) = K::roll_back(run, outcome, error).await {
        tracing::error!(error = %e, "rollback failed; it is retried when the lease lapses");
    }
}

/// Records the error and lets the lease lapse after an exponential backoff
/// (2^attempts s, at most 32 s), so this or another worker retries the step.
async fn retry_later<P>(run: &Run<'_, P>, error: String, attempts: i32) {
    let backoff = f64::from((1u32 << attempts.clamp(0, 5)).min(MAX_BACKOFF_SECS));
    let backoff = if attempts == 0 { 0.0 } else { backoff };
    if let Err(e) = registry::retry_later(run.cp.registry(), run.id, run.owner, &error, backoff).await {
        tracing::warn!(error = %e, "recording a failed step failed; the lease lapses anyway");
    }
}

async fn hand_back<P>(run: &Run<'_, P>) {
    tracing::info!("process stopping: operation handed back");
    if let Err(e) = registry::release(run.cp.registry(), run.id, run.owner).await {
        tracing::warn!(error = %e, "handing the operation back failed; its lease lapses instead");
    }
}
