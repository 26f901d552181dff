//! The initial copy (the subscription's table sync, watched per table) and
//! the catch-up until the slot's lag is small enough for a cutover.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use serde_json::json;
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use crate::backend::table_list;
use crate::error::Error;
use crate::kind::{Run, Stop};
use crate::moves::facts::{Facts, MoveParams};
use crate::moves::replication::slot_lag;
use crate::operation::OperationKind;
use crate::registry::stmt;

/// The tenant's rows per table.
pub(crate) async fn counts(
    conn: &mut PgConnection,
    tenant: Uuid,
    tables: &[String],
) -> Result<BTreeMap<String, i64>, Error> {
    let mut out = BTreeMap::new();
    for t in tables {
        let sql = format!("SELECT count(*) FROM public.{} WHERE tenant_id = $1", quote_ident(t));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *conn).await?;
        out.insert(t.clone(), n);
    }
    Ok(out)
}

pub(crate) async fn copy(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    let mut admin = f.target.admin().await?;
    let mut data = run.cp.tenant_conn(&f.target, f.tenant).await?;
    let mut last_count = Instant::now() - Duration::from_secs(10);
    let mut synced: BTreeMap<String, i64> = BTreeMap::new();
    let promote = run.kind == OperationKind::Promote;
    let (mut built, mut indexes_rebuilt, mut index_build_ms) = (std::collections::BTreeSet::new(), 0usize, 0u64);
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
        // A promotion builds each table's indexes as soon as its sync is done
        // (its rows are in), while the other tables still copy.
        if promote {
            for (t, state) in &states {
                if matches!(state.as_str(), "s" | "r") && !built.contains(t) {
                    let (n, ms) =
                        crate::moves::deferred::rebuild(run, f.target.options(&f.target.admin), Some(t)).await?;
                    (indexes_rebuilt, index_build_ms) = (indexes_rebuilt + n, index_build_ms + ms);
                    built.insert(t.clone());
                }
            }
        }
        if !done && last_count.elapsed() >= Duration::from_secs(1) {
            // Rows copied: tables whose sync finished counted once, the rest
            // as their COPY reports them (counting growing tables every
            // second slowed the copy it measured).
            for (t, state) in &states {
                if matches!(state.as_str(), "f" | "s" | "r") && !synced.contains_key(t) {
                    synced.insert(t.clone(), counts(&mut data, f.tenant, std::slice::from_ref(t)).await?[t]);
                }
            }
            let copying: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(p.tuples_processed), 0)::bigint FROM pg_stat_progress_copy p \
                 JOIN pg_subscription_rel r ON r.srrelid = p.relid JOIN pg_subscription s ON s.oid = r.srsubid \
                 WHERE s.subname = $1 AND r.srsubstate NOT IN ('f', 's', 'r') AND p.datname = current_database()",
            )
            .bind(&f.name)
            .fetch_one(&mut admin)
            .await?;
            let copied = copying + synced.values().sum::<i64>();
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
            run.heartbeat(json!({"rows_copied": copied, "tables": tables, "copy_errors": errors})).await?;
            last_count = Instant::now();
        }
        if done {
            if promote {
                // Whatever is still missing (a run resumed after a crash).
                let (_, ms) = crate::moves::deferred::rebuild(run, f.target.options(&f.target.admin), None).await?;
                index_build_ms += ms;
                run.heartbeat(json!({"indexes_rebuilt": indexes_rebuilt, "index_build_ms": index_build_ms})).await?;
            }
            // Fresh statistics for the rows just copied in: the tenant's queries
            // on the target (and foreign-key checks) plan with them from the flip on.
            sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", table_list(&f.tables)))).execute(&mut data).await?;
            run.cp
                .registry()
                .execute_raw(stmt(
                    "UPDATE operations SET progress = progress || jsonb_build_object('copy_ms', \
                     round(extract(epoch FROM now() - (progress->>'copy_started_at')::timestamptz) * 1000)) \
                     WHERE id = $1 AND progress ? 'copy_started_at'",
                    vec![f.op.id.into()],
                ))
                .await?;
            // The final figures, outside the copy's time.
            let copied: i64 = counts(&mut data, f.tenant, &f.tables).await?.values().sum();
            run.heartbeat(json!({"rows_copied": copied, "tables": f.tables.iter().map(|t| (t.as_str(), "ready")).collect::<BTreeMap<_, _>>(), "copy_errors": errors})).await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.close().await?;
    data.close().await?;
    Ok(())
}

/// Waits until the slot's lag is under `moves.max_lag_bytes`.
pub(crate) async fn catch_up(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    let mut src = f.source.admin().await?;
    loop {
        let lag = slot_lag(&mut src, &f.name).await?;
        run.heartbeat(json!({"lag_bytes": lag})).await?;
        if lag <= run.cp.config().moves.max_lag_bytes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    src.close().await?;
    Ok(())
}
