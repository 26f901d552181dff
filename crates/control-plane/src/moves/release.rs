//! Releasing the source after a verified move: a shared source's rows are
//! purged in keyset batches (and vacuumed), a dedicated source is retired.

use std::time::Instant;

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use tenantry_core::BackendKind;
use tenantry_provisioner::quote_ident;

use crate::backend::table_list;
use crate::kind::{Run, Stop};
use crate::moves::facts::{Facts, MoveParams};
use crate::operation::OperationState;
use crate::registry::{audit, stmt};

/// A purge of at least this many rows is followed by a VACUUM of the tables.
const VACUUM_AFTER_ROWS: i64 = 10_000;

pub(crate) async fn release(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    let source = &f.source.backend;
    let started = Instant::now();
    let mut vacuum_ms = 0;
    if source.kind == BackendKind::Dedicated {
        let database = source.database.clone();
        let snapshot = run.cp.destroy_storage(source.engine, &source.name, &database, true).await?;
        run.set_params(json!({"retired_source": source.id, "final_snapshot": snapshot})).await?;
        run.cp
            .registry()
            .execute_raw(stmt(
                "UPDATE backends SET status = 'retired', updated_at = now() WHERE id = $1",
                vec![source.id.into()],
            ))
            .await?;
    } else {
        let mut s = run.cp.tenant_conn(&f.source, f.tenant).await?;
        let batch = run.cp.config().moves.purge_batch.max(1);
        // Statistics first: the cascade checks of each deleted row are planned
        // from them, and stale ones (a pool analysed before the tenant arrived)
        // made them scan whole tables: 280 s instead of 2 s for 120 k rows.
        sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", table_list(&f.tables)))).execute(&mut s).await?;
        let purged = purge(&mut s, f.tenant, &f.tables, batch, Some(run)).await?;
        if purged >= VACUUM_AFTER_ROWS {
            // Give the space back to the pool's other tenants (and to the next
            // move in) now rather than whenever autovacuum comes by.
            let t0 = Instant::now();
            sqlx::raw_sql(AssertSqlSafe(format!("VACUUM (ANALYZE) {}", table_list(&f.tables)))).execute(&mut s).await?;
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
    run.cp.registry()
        .execute_raw(stmt(
            "UPDATE operations SET progress = jsonb_set(progress, '{step_ms}', \
             coalesce(progress->'step_ms', '{}'::jsonb) || jsonb_build_object('release_source', $2::bigint, 'vacuum', $3::bigint)) \
             WHERE id = $1",
            vec![f.op.id.into(), ms.into(), vacuum_ms.into()],
        ))
        .await?;
    let txn = run.cp.registry().begin().await?;
    audit(
        &txn,
        "operation",
        "tenant.move.done",
        Some(f.tenant),
        json!({"operation_id": f.op.id, "from": source.id, "to": f.target.backend.id}),
    )
    .await?;
    run.finish(&txn, OperationState::Succeeded, None).await?;
    txn.commit().await?;
    Ok(())
}

/// Deletes the tenant's rows from every table of a tenant session, in
/// batches; with `progress`, the operation's lease is renewed and its
/// `rows_purged` updated after each batch.
pub(crate) async fn purge<P>(
    conn: &mut PgConnection,
    tenant: Uuid,
    tables: &[String],
    batch: i64,
    progress: Option<&Run<'_, P>>,
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
                let r =
                    sqlx::query(AssertSqlSafe(by_ctid.clone())).bind(tenant).bind(batch).execute(&mut *conn).await?;
                r.rows_affected() as i64
            };
            total += n;
            if let Some(run) = progress {
                run.heartbeat(json!({"rows_purged": total})).await?;
            }
            if n < batch {
                break;
            }
        }
    }
    Ok(total)
}
