//! Verification after the flip: per-table counts, checksums and foreign
//! keys of the target as of the flip (a snapshot taken inside the pause)
//! against the fenced, unchanging source.

use std::collections::BTreeMap;

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, Row};
use serde_json::{Value, json};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use crate::error::Error;
use crate::kind::{Run, Stop};
use crate::moves::facts::{Facts, MoveParams, MoveRun};

/// Counts, checksums and foreign keys of the target as of the flip (the
/// snapshot taken inside the pause) against the fenced, unchanging source.
/// Kept out of the pause: they take time in proportion to the tenant, and
/// the sentinel already proved every write arrived before the flip.
pub(crate) async fn verify(run: &Run<'_, MoveParams>, f: &Facts, state: &mut MoveRun) -> Result<(), Stop> {
    let mut src = run.cp.tenant_conn(&f.source, f.tenant).await?;
    // The sentinels were cleaned up on the target after the snapshot was taken.
    let tables: Vec<String> = f.tables.iter().filter(|t| *t != "tenantry_move_sentinels").cloned().collect();
    let source = checksums(&mut src, f.tenant, &tables).await?;
    src.close().await?;
    let (target, verified) = match state.snapshot.take() {
        Some(mut v) => {
            let sums = checksums(&mut v, f.tenant, &tables).await?;
            let orphaned: BTreeMap<String, i64> =
                orphans(&mut v, f.tenant).await?.into_iter().filter(|(_, n)| *n > 0).collect();
            if !orphaned.is_empty() {
                return Err(Stop::Failed(Error::invalid(
                    "orphaned_rows",
                    format!("rows without their parent on the target: {orphaned:?}; the source copy is kept"),
                )));
            }
            let _ = sqlx::raw_sql("COMMIT").execute(&mut v).await;
            let _ = v.close().await;
            (sums, "checksums")
        }
        None => {
            // Resumed in another process: the flip's snapshot is gone. The
            // target now may hold the tenant's newer writes.
            let mut t = run.cp.tenant_conn(&f.target, f.tenant).await?;
            let sums = checksums(&mut t, f.tenant, &tables).await?;
            t.close().await?;
            if sums != source {
                run.heartbeat(
                    json!({"verified": "counts", "verify_note": "resumed after a restart and the tenant has written since the cutover: counts were verified at the cutover, checksums could not be compared"}),
                )
                .await?;
                return Ok(());
            }
            (sums, "checksums")
        }
    };
    let rows = |m: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        m.iter().map(|(k, v)| (k.clone(), v["rows"].clone())).collect()
    };
    if rows(&source) != rows(&target) {
        return Err(Stop::Failed(Error::invalid(
            "count_mismatch",
            format!(
                "row counts differ: source {:?}, target {:?}; the source copy is kept",
                rows(&source),
                rows(&target)
            ),
        )));
    }
    if source != target {
        let bad: Vec<&String> = source.keys().filter(|k| source.get(*k) != target.get(*k)).collect();
        return Err(Stop::Failed(Error::invalid(
            "checksum_mismatch",
            format!("checksums differ in {bad:?}; the source copy is kept for inspection"),
        )));
    }
    run.heartbeat(json!({"verified": verified, "counts": rows(&source), "checksums": source})).await
}

/// Per table: row count and an order-independent sum of row hashes (the
/// session's formatting settings are pinned in [`ControlPlane::tenant_conn`]).
async fn checksums(conn: &mut PgConnection, tenant: Uuid, tables: &[String]) -> Result<BTreeMap<String, Value>, Error> {
    let mut out = BTreeMap::new();
    for t in tables {
        let sql = format!(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::bigint), 0)::text \
             FROM public.{} r WHERE tenant_id = $1",
            quote_ident(t)
        );
        let row = sqlx::query(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *conn).await?;
        out.insert(t.clone(), json!({"rows": row.try_get::<i64, _>(0)?, "sum": row.try_get::<String, _>(1)?}));
    }
    Ok(out)
}

/// Child rows of the tenant whose parent row is missing, per foreign key.
/// Table-sync workers copy each table at its own snapshot and do not check
/// foreign keys, so the target is checked explicitly.
async fn orphans(conn: &mut PgConnection, tenant: Uuid) -> Result<BTreeMap<String, i64>, Error> {
    /// name, child table, parent table, child columns, parent columns
    type ForeignKey = (String, String, String, Vec<String>, Vec<String>);
    let fks: Vec<ForeignKey> = sqlx::query_as(
        "SELECT c.conname::text, c.conrelid::regclass::text, c.confrelid::regclass::text,             array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),             array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)                   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace          WHERE c.contype = 'f' AND n.nspname = 'public'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for (name, child, parent, child_cols, parent_cols) in fks {
        let join: Vec<String> = child_cols
            .iter()
            .zip(&parent_cols)
            .map(|(c, p)| format!("p.{} = ch.{}", quote_ident(p), quote_ident(c)))
            .collect();
        // regclass::text is already a quoted, schema-qualified-when-needed name.
        let sql = format!(
            "SELECT count(*) FROM {child} ch WHERE ch.tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
            join.join(" AND ")
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *conn).await?;
        out.insert(name, n);
    }
    Ok(out)
}
