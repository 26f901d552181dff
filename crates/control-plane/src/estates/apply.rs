//! Mapped legacy rows written into a Tenantry table, idempotently: the same
//! row applied twice (a copied row the change stream repeats, a replay after
//! a crash) lands once. Runs on a tenant session of the target (owner role,
//! `app.tenant_id` set, RLS forced), inside the caller's transaction.

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use super::mapping::target_columns;

/// Inserts or updates `rows` (objects from `rows::map_row`, all with the same
/// keys) in `table` by `(tenant_id, id)`; columns a row does not name keep
/// their defaults on insert and their values on update. The rows written.
pub async fn upsert(conn: &mut PgConnection, table: &str, rows: &[Map<String, Json>]) -> Result<u64, sqlx::Error> {
    let Some(first) = rows.first() else { return Ok(0) };
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
    let t = quote_ident(table);
    let sql = format!(
        "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{t}, $1) \
         ON CONFLICT (tenant_id, id) {on_conflict}"
    );
    let payload = Json::Array(rows.iter().cloned().map(Json::Object).collect());
    Ok(sqlx::query(AssertSqlSafe(sql)).bind(payload).execute(&mut *conn).await?.rows_affected())
}

/// Deletes the rows of `table` with these (mapped) ids. The rows deleted.
pub async fn delete(conn: &mut PgConnection, table: &str, tenant: Uuid, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    if target_columns(table).is_none() {
        return Err(sqlx::Error::Protocol(format!("`{table}` is not a Tenantry table")));
    }
    let sql = format!("DELETE FROM {} WHERE tenant_id = $1 AND id = ANY($2)", quote_ident(table));
    Ok(sqlx::query(AssertSqlSafe(sql)).bind(tenant).bind(ids).execute(&mut *conn).await?.rows_affected())
}
