//! Mapped legacy rows written into a Tenantry table, idempotently: the same
//! row applied twice (a copied row the change stream repeats, a replay after
//! a crash) lands once. Runs on a tenant session of the target (owner role,
//! `app.tenant_id` set, RLS forced), inside the caller's transaction.

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use super::mapping::target_columns;

/// Inserts or updates `rows` (objects from `rows::map_row`, all with the same
/// keys) in `table` by `(tenant_id, id)`; columns a row does not name keep
/// their defaults on insert and their values on update. The rows written.
pub async fn upsert(conn: &mut PgConnection, table: &str, rows: &[Map<String, Json>]) -> Result<u64, sqlx::Error> {
    let Some(first) = rows.first() else { return Ok(0) };
    let (_, list, on_conflict) = statement_parts(table, first)?;
    let t = quote_ident(table);
    let sql = format!(
        "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{t}, $1) \
         ON CONFLICT (tenant_id, id) {on_conflict}"
    );
    let payload = Json::Array(rows.iter().cloned().map(Json::Object).collect());
    Ok(sqlx::query(AssertSqlSafe(sql)).bind(payload).execute(&mut *conn).await?.rows_affected())
}

/// The column list of rows shaped like `first` and the upsert's conflict clause.
fn statement_parts(table: &str, first: &Map<String, Json>) -> Result<(Vec<&'static str>, String, String), sqlx::Error> {
    let known =
        target_columns(table).ok_or_else(|| sqlx::Error::Protocol(format!("`{table}` is not a Tenantry table")))?;
    let columns: Vec<&str> =
        std::iter::once("tenant_id").chain(known.iter().map(|(c, _)| *c).filter(|c| first.contains_key(*c))).collect();
    let list = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let updates = columns
        .iter()
        .filter(|c| !matches!(**c, "tenant_id" | "id"))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let on_conflict = if updates.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {updates}") };
    Ok((columns, list, on_conflict))
}

/// Rows (shaped like `rows::map_row`'s) ready for `COPY` into a table's
/// staging twin: their column list, the upsert's conflict clause, and the
/// rows in COPY's text format. Made apart from any connection, so a copy
/// can build the next batch while one is written.
pub struct CopyBatch {
    table: String,
    list: String,
    on_conflict: String,
    text: String,
}

impl CopyBatch {
    /// `None` for no rows.
    pub fn new(table: &str, rows: &[Map<String, Json>]) -> Result<Option<CopyBatch>, sqlx::Error> {
        let Some(first) = rows.first() else { return Ok(None) };
        let (columns, list, on_conflict) = statement_parts(table, first)?;
        let mut text = String::with_capacity(rows.len() * 128);
        for row in rows {
            for (i, c) in columns.iter().enumerate() {
                if i > 0 {
                    text.push('\t');
                }
                match row.get(*c) {
                    None | Some(Json::Null) => text.push_str("\\N"),
                    Some(Json::String(v)) => escape_copy(&mut text, v),
                    Some(other) => escape_copy(&mut text, &other.to_string()),
                }
            }
            text.push('\n');
        }
        Ok(Some(CopyBatch { table: table.to_string(), list, on_conflict, text }))
    }
}

/// A large batch for the initial copy of an adoption: the rows go through
/// `COPY` into a session temporary table (no JSON on the way, see [`stage`]),
/// then one `INSERT ... SELECT` moves them in, in key order (the primary key's
/// index is then filled page by page). The copy writes rows the target has
/// not seen, so the insert is a plain one (an upsert's speculative insertion
/// costs about half again per row); only when a row is there already (the one
/// page written again after a crash between its write and its cursor) does
/// the same staged batch go in as an upsert, as [`upsert`] would. The rows
/// written.
pub async fn insert_bulk(conn: &mut PgConnection, batch: &CopyBatch) -> Result<u64, sqlx::Error> {
    let staged = stage_batch(conn, &batch.table, Some(batch)).await?;
    let list = &batch.list;
    let insert =
        format!("INSERT INTO public.{} ({list}) SELECT {list} FROM {staged} ORDER BY id", quote_ident(&batch.table));
    // A transaction of its own, or a savepoint in the caller's, so that a
    // refused insert leaves the connection usable for the upsert.
    let mut attempt = conn.begin().await?;
    match sqlx::query(AssertSqlSafe(insert.clone())).execute(&mut *attempt).await {
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => {
            attempt.rollback().await?;
            let upsert = format!("{insert} ON CONFLICT (tenant_id, id) {}", batch.on_conflict);
            Ok(sqlx::query(AssertSqlSafe(upsert)).execute(&mut *conn).await?.rows_affected())
        }
        done => {
            let n = done?.rows_affected();
            attempt.commit().await?;
            Ok(n)
        }
    }
}

/// Copies `rows` (shaped like `rows::map_row`'s) into the session's
/// temporary twin of `table` (same column types, no constraints or defaults), emptied
/// first; returns its name.
pub async fn stage(conn: &mut PgConnection, table: &str, rows: &[Map<String, Json>]) -> Result<String, sqlx::Error> {
    let batch = CopyBatch::new(table, rows)?;
    stage_batch(conn, table, batch.as_ref()).await
}

async fn stage_batch(conn: &mut PgConnection, table: &str, batch: Option<&CopyBatch>) -> Result<String, sqlx::Error> {
    let t = quote_ident(table);
    let staged = quote_ident(&format!("tenantry_stage_{table}"));
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TEMP TABLE IF NOT EXISTS {staged} AS SELECT * FROM public.{t} WITH NO DATA; TRUNCATE {staged}"
    )))
    .execute(&mut *conn)
    .await?;
    let Some(batch) = batch else { return Ok(staged) };
    let mut sink = conn.copy_in_raw(&format!("COPY {staged} ({}) FROM STDIN", batch.list)).await?;
    sink.send(batch.text.as_bytes()).await?;
    sink.finish().await?;
    Ok(staged)
}

/// A value in COPY's text format.
fn escape_copy(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t')) {
        out.push_str(v);
        return;
    }
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

/// Deletes the rows of `table` with these (mapped) ids. The rows deleted.
pub async fn delete(conn: &mut PgConnection, table: &str, tenant: Uuid, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if target_columns(table).is_none() {
        return Err(sqlx::Error::Protocol(format!("`{table}` is not a Tenantry table")));
    }
    let sql = format!("DELETE FROM {} WHERE tenant_id = $1 AND id = ANY($2)", quote_ident(table));
    Ok(sqlx::query(AssertSqlSafe(sql)).bind(tenant).bind(ids).execute(&mut *conn).await?.rows_affected())
}
