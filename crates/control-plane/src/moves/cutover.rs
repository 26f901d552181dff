//! The cutover: fence the source, wait for the move's sentinel on the
//! target, make the target resident at epoch + 1, flip the placement. Only
//! the pause between [`fence`] and the flip stops the tenant's writes; past
//! `moves.fence_timeout_ms` the fence is lifted ([`unfence`]) and the cutover
//! tried again.

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
    sqlx::raw_sql(AssertSqlSafe(format!("SET lock_timeout = '{}ms'", timeout.as_millis()))).execute(&mut s).await?;
    // The fence: the exclusive lock waits for the tenant's in-flight
    // transactions (they hold it shared) and, once committed with the
    // residency `fenced`, every later transaction is turned away at its first
    // statement (TR001): the app waits and re-resolves without holding a
    // connection, so neighbours on this pool never queue behind the move.
    let sentinel = new_id();
    let asked_at = Instant::now();
    let (fenced_at, lock_ms) = match fence(&mut s, f, sentinel).await {
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
    if Instant::now() >= deadline {
        unfence(&mut s, f).await;
        return Ok(Cutover::Deferred(format!("the fence took longer than {} ms", timeout.as_millis())));
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
    let tier = if f.target.backend.kind == BackendKind::Dedicated { Tier::Dedicated } else { Tier::Shared };
    let flip = async {
        let txn = run.cp.registry().begin().await?;
        let held = txn
            .execute_raw(stmt(
                "UPDATE operations SET progress = progress || jsonb_build_object('cutover_done', true), \
                 updated_at = now() WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                vec![f.op.id.into(), run.owner.into()],
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
    state.snapshot = Some(v);
    tracing::info!(operation = %f.op.id, tenant_id = %f.tenant, pause_ms, "cutover done");
    let r = |ms: f64| (ms * 10.0).round() / 10.0;
    run.heartbeat(json!({
            "pause_ms": r(pause_ms),
            "lag_bytes": 0,
            // Where the pause went: waiting for in-flight transactions (before
            // the pause), then until the sentinel arrived, counts matched, flip.
            "cutover_phases_ms": {"lock_wait": r(lock_ms), "sentinel": r(sentinel_ms), "flip": r(pause_ms - sentinel_ms)},
    }))
    .await?;
    Ok(Cutover::Done)
}

/// How taking the fence went.
enum Fence {
    /// Committed at this instant: from here every new transaction of the
    /// tenant on the source is refused (TR001).
    Taken(Instant),
    /// In-flight transactions held the lock past the fence timeout.
    Busy,
    /// The source does not hold the tenant at the move's epoch.
    NotResident,
}

/// The fence, in one source transaction: the exclusive advisory lock waits
/// for the tenant's in-flight transactions (they hold it shared); the
/// residency turns `fenced` and the move's sentinel row is written, both
/// committed together. The app waits and re-resolves without holding a
/// connection, so neighbours on this pool never queue behind the move.
async fn fence(s: &mut PgConnection, f: &Facts, sentinel: Uuid) -> Result<Fence, sqlx::Error> {
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
    Ok(if n == 1 { Fence::Taken(fenced_at) } else { Fence::NotResident })
}

/// Lifts a fence: the tenant serves from the source again.
pub(crate) async fn unfence(s: &mut PgConnection, f: &Facts) {
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
