//! How an adoption (and a revert) checks the target against the legacy
//! source: legacy rows mapped and compared with the target's rows of the same
//! ids, row by row (md5 of the row in the target's types, the same columns on
//! both sides), and per-table checksums.
//!
//! A table's checksum is the sum, modulo 2^64, of the first 64 bits of each
//! row's md5: independent of row order, so the legacy side's is kept up to
//! date row by row. Every comparison records the hash of each legacy row it
//! mapped, by id, in a temporary table of the target session
//! (`tenantry_pass`); the pause's second look at the rows changed since the
//! pass replaces their hashes (or drops those of rows gone), so the sum over
//! that table is the legacy source's checksum as of the fence. The target's
//! is read whole, in the pause, from the tenant's rows.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use super::legacy::Table;
use super::pgoutput::Value;
use super::rows::{map_row, mapped_columns};
use crate::error::Error;

/// Maps a page of legacy rows (in `table.columns` order) onto the target.
pub(super) fn mapped(tenant: Uuid, table: &Table, rows: &[Vec<Value>]) -> Result<Vec<Map<String, Json>>, Error> {
    rows.iter()
        .map(|r| {
            map_row(tenant, table, &table.columns, r)
                .map_err(|e| Error::invalid("unmappable_row", format!("`{}`: {e}", table.legacy)))
        })
        .collect()
}

/// Rows of `table` that differ between the legacy rows given (mapped) and
/// the target, looking at the target rows with these ids (the legacy rows'
/// own, plus `also`: ids whose legacy row may be gone). Returns the legacy
/// keys (or target ids) that differ.
pub(super) async fn differing(
    target: &mut PgConnection,
    tenant: Uuid,
    table: &Table,
    rows: &[Vec<Value>],
    also: &[Uuid],
) -> Result<Vec<String>, Error> {
    let mapped = mapped(tenant, table, rows)?;
    let keys: Vec<Option<String>> = rows.iter().map(|r| table.key_text(r)).collect();
    differing_mapped(target, tenant, table, &mapped, &keys, also).await
}

/// md5 of a row of `table`'s compared columns, `alias` naming the row.
fn row_hash(table: &Table, alias: &str) -> String {
    let list: Vec<String> = mapped_columns(table).iter().map(|c| format!("{alias}.{}", quote_ident(c))).collect();
    format!("md5(ROW({})::text)", list.join(", "))
}

/// The first 64 bits of an md5 (hex text) as a number, for a sum.
fn bits(md5: &str) -> String {
    format!("('x' || left({md5}, 16))::bit(64)::bigint::numeric")
}

/// [`differing`] for rows already mapped (`keys`: each row's legacy key).
/// Records the legacy rows' hashes for the checksum.
pub(super) async fn differing_mapped(
    target: &mut PgConnection,
    tenant: Uuid,
    table: &Table,
    mapped: &[Map<String, Json>],
    keys: &[Option<String>],
    also: &[Uuid],
) -> Result<Vec<String>, Error> {
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    for (m, k) in mapped.iter().zip(keys) {
        if let (Some(Json::String(id)), Some(k)) = (m.get("id"), k) {
            by_id.insert(id.clone(), k.clone());
        }
    }
    let mut ids: BTreeSet<Uuid> = also.iter().copied().collect();
    ids.extend(by_id.keys().filter_map(|i| Uuid::parse_str(i).ok()));
    if ids.is_empty() {
        return Ok(vec![]);
    }
    sqlx::raw_sql(
        "CREATE TEMP TABLE IF NOT EXISTS tenantry_pass (tbl text, id uuid, h text NOT NULL, PRIMARY KEY (tbl, id))",
    )
    .execute(&mut *target)
    .await?;
    let staged = super::apply::stage(target, table.target, mapped).await?;
    // The legacy rows' hashes replace those recorded for their ids; an id
    // looked at whose legacy row is gone loses its hash.
    let sql = format!(
        "WITH l AS (SELECT l.id, {} AS h FROM {staged} l), \
              r AS (SELECT r.id, {} AS h FROM public.{} r WHERE r.tenant_id = $1 AND r.id = ANY($2)), \
              gone AS (DELETE FROM pg_temp.tenantry_pass p WHERE p.tbl = $3 AND p.id = ANY($2) \
                       AND p.id NOT IN (SELECT id FROM l)), \
              kept AS (INSERT INTO pg_temp.tenantry_pass (tbl, id, h) SELECT $3, id, h FROM l \
                       ON CONFLICT (tbl, id) DO UPDATE SET h = EXCLUDED.h) \
         SELECT coalesce(l.id, r.id)::text FROM l FULL JOIN r ON r.id = l.id WHERE l.h IS DISTINCT FROM r.h",
        row_hash(table, "l"),
        row_hash(table, "r"),
        quote_ident(table.target)
    );
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let bad: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&ids)
        .bind(table.target)
        .fetch_all(&mut *target)
        .await?;
    Ok(bad.into_iter().map(|id| by_id.get(&id).cloned().unwrap_or(id)).collect())
}

/// A table's checksum as the API shows it: 16 hex digits.
fn hex(sum: &str) -> Result<String, Error> {
    let n: i128 = sum.parse().map_err(|_| Error::invalid("verification_failed", format!("checksum `{sum}`")))?;
    Ok(format!("{:016x}", n.rem_euclid(1 << 64) as u64))
}

/// The legacy rows the comparisons hashed for `table` (as of the last look at
/// each) and their checksum.
pub(super) async fn legacy_checksum(target: &mut PgConnection, table: &Table) -> Result<(i64, String), Error> {
    let sql =
        format!("SELECT count(*), coalesce(sum({}), 0)::text FROM pg_temp.tenantry_pass WHERE tbl = $1", bits("h"));
    let (n, sum): (i64, String) = sqlx::query_as(AssertSqlSafe(sql)).bind(table.target).fetch_one(&mut *target).await?;
    Ok((n, hex(&sum)?))
}

/// The tenant's rows of `table` on the target: how many, their checksum, and
/// (given the target's transaction horizon, see `adopt::horizon`) the ids of
/// those written since; one pass over the rows.
pub(super) async fn target_checksum(
    target: &mut PgConnection,
    tenant: Uuid,
    table: &Table,
    since: Option<i64>,
) -> Result<(i64, String, Vec<Uuid>), Error> {
    // A row's xmin is the 32-bit id of the transaction that wrote it, and
    // age() is its distance back from now, modulo 2^32 (PostgreSQL keeps
    // every live id within 2^31 of the next; a frozen row's age is the
    // largest): a row written at or after `since` is no older than `since`.
    let sql = format!(
        "SELECT count(*), coalesce(sum({}), 0)::text, \
                coalesce(array_agg(id) FILTER (WHERE age(xmin) <= age($2::text::xid)), '{{}}') \
         FROM public.{} r WHERE tenant_id = $1",
        bits(&row_hash(table, "r")),
        quote_ident(table.target)
    );
    let (n, sum, ids): (i64, String, Vec<Uuid>) = sqlx::query_as(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(since.map(|x| x % 4_294_967_296))
        .fetch_one(&mut *target)
        .await?;
    Ok((n, hex(&sum)?, ids))
}
