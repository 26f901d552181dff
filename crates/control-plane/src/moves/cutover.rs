//! The cutover, crash-safe: fence the source (with a deadline the backend
//! enforces itself), wait for the move's sentinel on the target, make the
//! target resident at epoch + 1, seal the source (`moved`, naming the target)
//! while the deadline holds, flip the placement. Only the pause between
//! [`fence`] and the seal stops the tenant's writes, and never for longer than
//! `moves.fence_timeout_ms`: a control plane that dies in it leaves a fence
//! that lapses by itself (`tenantry_enter` lets the tenant in again past
//! `fenced_until`), and one that dies after the seal leaves a source that
//! sends stale apps to the target (TR002). The seal only succeeds inside the
//! deadline and under the tenant's exclusive lock, so no write reaches the
//! source after its sentinel, and there is never more than one writable home.

use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::{BackendKind, Tier, new_id};

use crate::backend::{LOCK_NOT_AVAILABLE, sqlstate};
use crate::error::Error;
use crate::kind::{Run, Stop, failpoint};
use crate::moves::facts::{Facts, MoveParams, MoveRun};
use crate::moves::replication::slot_lag;
use crate::registry::{audit, stmt};

pub(crate) async fn cutover(run: &Run<'_, MoveParams>, f: &Facts, state: &mut MoveRun) -> Result<(), Stop> {
    if f.op.progress["cutover_done"] == true {
        return Ok(());
    }
    // Resumed after the seal (the process holding the move died before the
    // flip, or the flip's outcome was unknown): only the bookkeeping is left.
    if sealed(run, f).await? {
        tracing::info!(operation = %f.op.id, "the source was sealed by an earlier run; flipping the placement");
        return flip(run, f).await;
    }
    let tries = run.cp.config().moves.cutover_tries.max(1);
    let mut deferred = String::new();
    for attempt in 1..=tries {
        match try_cutover(run, f, state).await? {
            Cutover::Done => return Ok(()),
            Cutover::Deferred(why) => {
                tracing::info!(operation = %f.op.id, attempt, reason = %why, "cutover deferred; writes resumed on the source");
                let tried = f.op.progress["cutover_attempts"].as_i64().unwrap_or(0) + i64::from(attempt);
                run.heartbeat(json!({"cutover_attempts": tried, "last_deferral": why})).await?;
                deferred = why;
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
        }
    }
    Err(Stop::Failed(Error::Deferred(format!("{tries} times: {deferred}"))))
}

/// What one cutover try came to.
enum Cutover {
    /// The placement flipped: the tenant serves from the target.
    Done,
    /// The fence was lifted (or never taken) and the tenant keeps serving
    /// from the source; why, in words.
    Deferred(String),
}

/// One cutover try.
async fn try_cutover(run: &Run<'_, MoveParams>, f: &Facts, state: &mut MoveRun) -> Result<Cutover, Stop> {
    let timeout = Duration::from_millis(run.cp.config().moves.fence_timeout_ms);
    // Everything the pause needs is connected before it starts.
    let mut s = run.cp.tenant_conn(&f.source, f.tenant).await?;
    let mut t = run.cp.tenant_conn(&f.target, f.tenant).await?;
    let mut v = run.cp.tenant_conn(&f.target, f.tenant).await?;
    let lag = {
        let mut a = f.source.admin().await?;
        let lag = slot_lag(&mut a, &f.name).await?;
        a.close().await?;
        lag
    };
    if lag > run.cp.config().moves.max_lag_bytes {
        return Ok(Cutover::Deferred(format!("replication lag {lag} bytes over the threshold")));
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
        return Ok(Cutover::Deferred(format!(
            "subscription not healthy: {ready} of {} tables ready, {errors} errors",
            f.tables.len()
        )));
    }
    sqlx::raw_sql(AssertSqlSafe(format!("SET lock_timeout = '{}ms'", timeout.as_millis().max(1))))
        .execute(&mut s)
        .await?;
    // The fence: the exclusive lock waits for the tenant's in-flight
    // transactions (they hold it shared) and, once committed with the
    // residency `fenced` until now + the bound, every later transaction is
    // turned away at its first statement (TR001) until the seal or the
    // deadline: the app waits and re-resolves without holding a connection,
    // so neighbours on this pool never queue behind the move.
    let sentinel = new_id();
    let asked_at = Instant::now();
    let (fenced_at, lock_ms) = match fence(&mut s, f, sentinel, timeout).await {
        Ok(Fence::Taken(at)) => (at, (at - asked_at).as_secs_f64() * 1000.0),
        Ok(Fence::Busy) => {
            return Ok(Cutover::Deferred("in-flight transactions did not finish within the fence timeout".into()));
        }
        Ok(Fence::NotResident) => {
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
    };
    // Measured before the backend's own clock started: this deadline is never
    // later than the one the backend enforces.
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
        return Ok(Cutover::Deferred(format!(
            "replication did not deliver the fence within {} ms",
            timeout.as_millis()
        )));
    }
    failpoint("move.cutover.sentinel_seen");
    let new_epoch = f.epoch + 1;
    // The target may serve at epoch + 1 from here: nobody can know that
    // epoch before the seal names it (or the flip publishes it).
    let prepared = async {
        sqlx::query(
            "INSERT INTO tenant_residency (tenant_id, epoch, state) VALUES ($1, $2, 'active') \
             ON CONFLICT (tenant_id) DO UPDATE SET epoch = EXCLUDED.epoch, state = 'active', \
             fenced_by = NULL, fenced_until = NULL, moved_to = NULL, moved_epoch = NULL, updated_at = now()",
        )
        .bind(f.tenant)
        .bind(new_epoch)
        .execute(&mut t)
        .await?;
        // The checksum snapshot: the target exactly as the source left it
        // (taken before the seal, after which redirected writes may land).
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").execute(&mut v).await?;
        Ok::<(), sqlx::Error>(())
    }
    .await;
    if let Err(e) = prepared {
        unfence(&mut s, f).await;
        return Err(e.into());
    }
    failpoint("move.cutover.target_active");
    // The point of no return is recorded before it is passed: from here a
    // cancel is refused and a failure never rolls the move back.
    if !mark_sealing(run, f, true).await? {
        unfence(&mut s, f).await;
        deactivate_target(&mut t, f, new_epoch).await;
        return Err(Stop::Cancelled);
    }
    match seal(&mut s, f, deadline).await {
        Ok(true) => {}
        Ok(false) => {
            // The fence lapsed first: writes may have reached the source after
            // the sentinel. This try is void; the next fences again.
            unfence(&mut s, f).await;
            deactivate_target(&mut t, f, new_epoch).await;
            mark_sealing(run, f, false).await?;
            return Ok(Cutover::Deferred(format!("the fence lapsed ({} ms) before the seal", timeout.as_millis())));
        }
        // Unknown whether it committed: the resumed step finds out (`sealed`).
        Err(e) => return Err(e.into()),
    }
    let sealed_ms = fenced_at.elapsed().as_secs_f64() * 1000.0;
    failpoint("move.cutover.sealed");
    let _ = s.close().await;
    let _ = t.close().await;
    state.snapshot = Some(v);
    flip(run, f).await?;
    let flip_ms = fenced_at.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(operation = %f.op.id, tenant_id = %f.tenant, pause_ms = sealed_ms, "cutover done");
    let r = |ms: f64| (ms * 10.0).round() / 10.0;
    run.heartbeat(json!({
            // The tenant's writes were refused from the fence to the seal;
            // after it a stale app follows the sealed source to the target.
            "pause_ms": r(sealed_ms),
            "lag_bytes": 0,
            // Where the pause went: waiting for in-flight transactions (before
            // the pause), until the sentinel arrived, to the seal; then the flip.
            "cutover_phases_ms": {"lock_wait": r(lock_ms), "sentinel": r(sentinel_ms), "seal": r(sealed_ms - sentinel_ms), "flip": r(flip_ms - sealed_ms)},
    }))
    .await?;
    Ok(Cutover::Done)
}

/// Records (or, after a void seal, withdraws) the move's point of no
/// return in the registry, while this worker holds the lease and no cancel
/// was asked for. `false`: lost, or cancelled first.
async fn mark_sealing(run: &Run<'_, MoveParams>, f: &Facts, on: bool) -> Result<bool, Stop> {
    let n = run
        .cp
        .registry()
        .execute_raw(stmt(
            "UPDATE operations SET progress = progress || jsonb_build_object('sealing', $3::boolean), \
             updated_at = now() WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            vec![f.op.id.into(), run.owner.into(), on.into()],
        ))
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Whether this move's seal holds on the source (the tenant `moved` by it).
async fn sealed(run: &Run<'_, MoveParams>, f: &Facts) -> Result<bool, Stop> {
    let mut s = run.cp.tenant_conn(&f.source, f.tenant).await?;
    let row: Option<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT state, fenced_by FROM tenant_residency WHERE tenant_id = $1")
            .bind(f.tenant)
            .fetch_optional(&mut s)
            .await?;
    let _ = s.close().await;
    Ok(matches!(row, Some((state, by)) if state == "moved" && by == Some(f.op.id)))
}

/// The registry flip: placement at the target, epoch + 1, the tenant's tier,
/// `cutover_done`, audited, while this worker holds the lease (a cancel asked
/// for after the seal changes nothing). Repeatable after a crash.
async fn flip(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    let new_epoch = f.epoch + 1;
    let tier = if f.target.backend.kind == BackendKind::Dedicated { Tier::Dedicated } else { Tier::Shared };
    let txn = run.cp.registry().begin().await?;
    let held = txn
        .execute_raw(stmt(
            "UPDATE operations SET progress = progress || jsonb_build_object('cutover_done', true), \
             updated_at = now() WHERE id = $1 AND lease_owner = $2 AND state IN ('running', 'cancelling')",
            vec![f.op.id.into(), run.owner.into()],
        ))
        .await?
        .rows_affected();
    if held == 0 {
        txn.rollback().await?;
        return Err(Stop::Lost);
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
        return Err(Stop::Failed(Error::Conflict {
            code: "placement_changed",
            message: format!("the tenant's placement is no longer at epoch {} on the source", f.epoch),
        }));
    }
    txn.execute_raw(stmt(
        "UPDATE tenants SET tier = $2, updated_at = now() WHERE id = $1",
        vec![f.tenant.into(), tier.as_str().into()],
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
    failpoint("move.cutover.flipped");
    Ok(())
}

/// How taking the fence went.
enum Fence {
    /// Committed at this instant: from here every new transaction of the
    /// tenant on the source is refused (TR001) until the seal or the deadline.
    Taken(Instant),
    /// In-flight transactions held the lock past the fence timeout.
    Busy,
    /// The source does not hold the tenant at the move's epoch.
    NotResident,
}

/// The fence, in one source transaction: the exclusive advisory lock waits
/// for the tenant's in-flight transactions (they hold it shared); the
/// residency turns `fenced` by this operation until now + `bound` (the
/// backend's clock), and the move's sentinel row is written, both committed
/// together. A fence of an earlier try of this move (lapsed or not) is taken
/// over; an erasure's fence (no deadline) is not.
async fn fence(s: &mut PgConnection, f: &Facts, sentinel: Uuid, bound: Duration) -> Result<Fence, sqlx::Error> {
    let mut tx = s.begin().await?;
    // Flushed at commit even where synchronous_commit is off: walsenders
    // only send flushed WAL, and the wal writer may wait 200 ms otherwise.
    sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
    let lock =
        sqlx::query("SELECT pg_advisory_xact_lock(tenantry_lock_key($1))").bind(f.tenant).execute(&mut *tx).await;
    match lock {
        Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => return Ok(Fence::Busy),
        other => other?,
    };
    let fenced_at = Instant::now();
    let n = sqlx::query(
        "UPDATE tenant_residency SET state = 'fenced', fenced_by = $3, \
         fenced_until = clock_timestamp() + make_interval(secs => $4::float8 / 1000), updated_at = now() \
         WHERE tenant_id = $1 AND epoch = $2 AND (state = 'active' OR (state = 'fenced' AND fenced_by = $3))",
    )
    .bind(f.tenant)
    .bind(f.epoch)
    .bind(f.op.id)
    .bind(bound.as_millis() as f64)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("INSERT INTO tenantry_move_sentinels (tenant_id, id) VALUES ($1, $2)")
        .bind(f.tenant)
        .bind(sentinel)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(if n == 1 { Fence::Taken(fenced_at) } else { Fence::NotResident })
}

/// The seal: under the tenant's exclusive lock (so every transaction that
/// entered has ended), the source turns `moved` to the target at epoch + 1,
/// only if this move's fence still holds by the backend's clock. `false`: the
/// fence lapsed (or the lock could not be had before it would), so writes may
/// have landed after the sentinel and this try is void.
async fn seal(s: &mut PgConnection, f: &Facts, deadline: Instant) -> Result<bool, sqlx::Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let mut tx = s.begin().await?;
    sqlx::raw_sql(AssertSqlSafe(format!("SET LOCAL lock_timeout = '{}ms'", left.as_millis().max(1))))
        .execute(&mut *tx)
        .await?;
    let lock =
        sqlx::query("SELECT pg_advisory_xact_lock(tenantry_lock_key($1))").bind(f.tenant).execute(&mut *tx).await;
    match lock {
        Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => return Ok(false),
        other => other?,
    };
    let n = sqlx::query(
        "UPDATE tenant_residency SET state = 'moved', moved_to = $3, moved_epoch = $4, updated_at = now() \
         WHERE tenant_id = $1 AND epoch = $2 AND state = 'fenced' AND fenced_by = $5 \
         AND fenced_until > clock_timestamp()",
    )
    .bind(f.tenant)
    .bind(f.epoch)
    .bind(f.target.backend.id)
    .bind(f.epoch + 1)
    .bind(f.op.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

/// Lifts a fence early (it would lapse by itself): the tenant serves from the
/// source again. Never touches a sealed source.
pub(crate) async fn unfence(s: &mut PgConnection, f: &Facts) {
    let r = sqlx::query(
        "UPDATE tenant_residency SET state = 'active', fenced_by = NULL, fenced_until = NULL, updated_at = now() \
         WHERE tenant_id = $1 AND epoch = $2 AND state = 'fenced'",
    )
    .bind(f.tenant)
    .bind(f.epoch)
    .execute(&mut *s)
    .await;
    if let Err(e) = r {
        tracing::error!(tenant_id = %f.tenant, error = %e, "lifting the fence failed; it lapses by itself");
    }
}

/// A void try's target residency goes again (nobody could have used it:
/// its epoch was never published).
async fn deactivate_target(t: &mut PgConnection, f: &Facts, epoch: i64) {
    let r = sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1 AND epoch = $2")
        .bind(f.tenant)
        .bind(epoch)
        .execute(&mut *t)
        .await;
    if let Err(e) = r {
        tracing::warn!(tenant_id = %f.tenant, error = %e, "removing the target's residency failed; the next try resets it");
    }
}
