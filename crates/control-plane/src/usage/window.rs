//! The heavy-tenant window's database time per tenant, maintained as usage is
//! folded (`usage_window`, migration 10) rather than summed from the window's
//! rollups on every pass: a fold adds the samples it folds that fall inside
//! the window; when the window's first hour moves on, the hours that left it
//! are subtracted from it. Every fold runs in one transaction with the
//! window's state row locked, so the additions and the subtractions agree on
//! where the window starts (a sample of an hour that already left is in its
//! rollup, never in the window). A window of days (more than 48 hours), or a
//! change of its length, rebuilds it from the rollups.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::registry::stmt;
use crate::usage::model::Window;

/// Where the maintained window starts and how long it is, if it is kept.
pub(crate) struct Kept {
    pub(crate) hours: i64,
    pub(crate) since: DateTime<Utc>,
}

/// The recommendations' window of hours, when it is kept incrementally.
pub(crate) fn kept(window: Window) -> bool {
    window.granularity() == "hour"
}

/// The kept window's state as the registry has it (`lock`: for this transaction).
pub(crate) async fn state(db: &impl ConnectionTrait, lock: bool) -> Result<Option<Kept>, Error> {
    let sql = if lock {
        "SELECT hours, since FROM usage_window_state FOR UPDATE"
    } else {
        "SELECT hours, since FROM usage_window_state"
    };
    Ok(match db.query_one_raw(stmt(sql, vec![])).await? {
        Some(r) => Some(Kept { hours: i64::from(r.try_get::<i32>("", "hours")?), since: r.try_get("", "since")? }),
        None => None,
    })
}

/// Opens a fold's transaction with the window at `window.since(now)`:
/// advanced (the hours that left subtracted) or rebuilt as needed. Returns
/// the transaction and the window's first hour.
pub(crate) async fn begin(cp: &ControlPlane, window: Window) -> Result<(DatabaseTransaction, DateTime<Utc>), Error> {
    let txn = cp.registry().begin().await?;
    let since = window.since(Utc::now());
    match state(&txn, true).await? {
        Some(k) if k.hours == window.hours && k.since == since => {}
        Some(k)
            if k.hours == window.hours && k.since < since && since - k.since < chrono::TimeDelta::hours(k.hours) =>
        {
            txn.execute_raw(stmt(
                "UPDATE usage_window w SET db_time_us = w.db_time_us - r.db \
                 FROM (SELECT tenant_id, sum(db_time_us) AS db FROM usage_rollups \
                       WHERE granularity = 'hour' AND period_start >= $1 AND period_start < $2 GROUP BY 1) r \
                 WHERE w.tenant_id = r.tenant_id",
                vec![k.since.into(), since.into()],
            ))
            .await?;
            txn.execute_raw(stmt("DELETE FROM usage_window WHERE db_time_us = 0", vec![])).await?;
            txn.execute_raw(stmt("UPDATE usage_window_state SET since = $1", vec![since.into()])).await?;
        }
        _ => {
            // First use, a new length, or a window that moved on entirely.
            txn.execute_raw(stmt("DELETE FROM usage_window", vec![])).await?;
            txn.execute_raw(stmt(
                "INSERT INTO usage_window (tenant_id, db_time_us) SELECT tenant_id, sum(db_time_us) \
                 FROM usage_rollups WHERE granularity = 'hour' AND period_start >= $1 GROUP BY 1 \
                 HAVING sum(db_time_us) <> 0",
                vec![since.into()],
            ))
            .await?;
            txn.execute_raw(stmt(
                "INSERT INTO usage_window_state (hours, since) VALUES ($1, $2) \
                 ON CONFLICT (only_row) DO UPDATE SET hours = excluded.hours, since = excluded.since",
                vec![(window.hours as i32).into(), since.into()],
            ))
            .await?;
        }
    }
    Ok((txn, since))
}

/// The fold statement's part that adds the folded samples (`moved`) inside the
/// window (starting at `${since}`) to it.
pub(crate) fn add_moved(since: usize) -> String {
    format!(
        "INSERT INTO usage_window (tenant_id, db_time_us) \
         SELECT tenant_id, sum(db_time_us) FROM moved WHERE date_trunc('hour', at, 'UTC') >= ${since} GROUP BY 1 \
         ON CONFLICT (tenant_id) DO UPDATE SET db_time_us = usage_window.db_time_us + excluded.db_time_us"
    )
}
