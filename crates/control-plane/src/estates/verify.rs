//! How an adoption (and a revert) checks the target against the legacy
//! source: legacy rows mapped and compared with the target's rows of the same
//! ids, row by row (md5 of the row in the target's types, the same columns on
//! both sides), and per-table checksums.
//!
//! A table's checksum is the sum, modulo 2^64, of the first 64 bits of each
//! row's md5: independent of row order, so each side's is kept up to date row
//! by row, and the pause never reads a table whole to make one. Every
//! comparison records the two hashes of each id it looked at (the legacy
//! row's, the target row's; none for a side without the row) in a temporary
//! table of the target session (`tenantry_pass`), and returns what that
//! changed in each side's sum and row count ([`Sums`]): the first look at an
//! id adds its hashes, a later one (the pause's second look at the rows
//! changed since the pass) swaps the old for the new. A target row written
//! behind the adoption's back is looked at again from the target's own
//! record of what was written ([`rehash_target`]); one deleted behind its back
//! leaves the target's count of rows hashed above its count of rows, which
//! fails the adoption like any difference.

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
) -> Result<(Vec<String>, Sums), Error> {
    let mapped = mapped(tenant, table, rows)?;
    let keys: Vec<Option<String>> = rows.iter().map(|r| table.key_text(r)).collect();
    differing_mapped(target, tenant, table, &mapped, &keys, also).await
}

/// md5 of a row of `table`'s compared columns, `alias` naming the row.
fn row_hash(table: &Table, alias: &str) -> String {
    let list: Vec<String> = mapped_columns(table).iter().map(|c| format!("{alias}.{}", quote_ident(c))).collect();
    format!("md5(ROW({})::text)", list.join(", "))
}

/// The first 64 bits of an md5 (hex text) as a bigint, for a sum.
fn bits(md5: &str) -> String {
    format!("('x' || left({md5}, 16))::bit(64)::bigint")
}

/// What a comparison added to a table's checksums: each side's sum of row
/// hashes (modulo 2^64 when shown) and rows hashed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    pub(crate) legacy: i128,
    pub(crate) legacy_rows: i64,
    pub(crate) target: i128,
    pub(crate) target_rows: i64,
}

impl std::ops::AddAssign for Sums {
    fn add_assign(&mut self, o: Sums) {
        self.legacy += o.legacy;
        self.legacy_rows += o.legacy_rows;
        self.target += o.target;
        self.target_rows += o.target_rows;
    }
}

impl Sums {
    /// The checksums as the progress shows them: 16 hex digits each.
    pub(crate) fn view(&self) -> Json {
        serde_json::json!({
            "legacy": hex(self.legacy),
            "target": hex(self.target),
            "legacy_rows_hashed": self.legacy_rows,
            "target_rows_hashed": self.target_rows,
        })
    }

    pub(crate) fn agree(&self) -> bool {
        hex(self.legacy) == hex(self.target) && self.legacy_rows == self.target_rows
    }
}

/// 16 hex digits of a sum modulo 2^64.
fn hex(sum: i128) -> String {
    format!("{:016x}", sum.rem_euclid(1 << 64) as u64)
}

fn number(text: &str) -> Result<i128, Error> {
    text.parse().map_err(|_| Error::invalid("verification_failed", format!("a checksum sum `{text}`")))
}

/// The hash table's DDL, and the change a statement made to it: the new
/// hashes of the ids it wrote (`new`), less the old (`was`).
const PASS_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS tenantry_pass \
    (tbl text, id uuid, lh bigint, th bigint, PRIMARY KEY (tbl, id))";
const DELTA: &str = "(SELECT coalesce(sum(lh::numeric), 0) FROM new) - (SELECT coalesce(sum(lh::numeric), 0) FROM was), \
    (SELECT count(lh) FROM new) - (SELECT count(lh) FROM was), \
    (SELECT coalesce(sum(th::numeric), 0) FROM new) - (SELECT coalesce(sum(th::numeric), 0) FROM was), \
    (SELECT count(th) FROM new) - (SELECT count(th) FROM was)";

fn sums(row: &(String, i64, String, i64)) -> Result<Sums, Error> {
    Ok(Sums { legacy: number(&row.0)?, legacy_rows: row.1, target: number(&row.2)?, target_rows: row.3 })
}

/// [`differing`] for rows already mapped (`keys`: each row's legacy key).
/// Records both sides' hashes of every id looked at; returns the legacy keys
/// (or target ids) that differ, and what the look changed in the checksums.
pub(super) async fn differing_mapped(
    target: &mut PgConnection,
    tenant: Uuid,
    table: &Table,
    mapped: &[Map<String, Json>],
    keys: &[Option<String>],
    also: &[Uuid],
) -> Result<(Vec<String>, Sums), Error> {
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    for (m, k) in mapped.iter().zip(keys) {
        if let (Some(Json::String(id)), Some(k)) = (m.get("id"), k) {
            by_id.insert(id.clone(), k.clone());
        }
    }
    let mut ids: BTreeSet<Uuid> = also.iter().copied().collect();
    ids.extend(by_id.keys().filter_map(|i| Uuid::parse_str(i).ok()));
    if ids.is_empty() {
        return Ok((vec![], Sums::default()));
    }
    sqlx::raw_sql(PASS_TABLE).execute(&mut *target).await?;
    let staged = super::apply::stage(target, table.target, mapped).await?;
    let sql = format!(
        "WITH l AS (SELECT l.id, {} AS h FROM {staged} l), \
              r AS (SELECT r.id, {} AS h FROM public.{} r WHERE r.tenant_id = $1 AND r.id = ANY($2)), \
              j AS (SELECT i.id, l.h AS lmd5, r.h AS tmd5 FROM unnest($2::uuid[]) AS i(id) \
                    LEFT JOIN l ON l.id = i.id LEFT JOIN r ON r.id = i.id), \
              was AS (SELECT p.lh, p.th FROM pg_temp.tenantry_pass p WHERE p.tbl = $3 AND p.id = ANY($2)), \
              new AS (INSERT INTO pg_temp.tenantry_pass (tbl, id, lh, th) SELECT $3, id, {}, {} FROM j \
                      ON CONFLICT (tbl, id) DO UPDATE SET lh = EXCLUDED.lh, th = EXCLUDED.th RETURNING lh, th) \
         SELECT coalesce((SELECT array_agg(id::text) FROM j WHERE lmd5 IS DISTINCT FROM tmd5), '{{}}'), \
                ({DELTA})::text",
        row_hash(table, "l"),
        row_hash(table, "r"),
        quote_ident(table.target),
        bits("lmd5"),
        bits("tmd5"),
    );
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let (bad, delta): (Vec<String>, String) =
        sqlx::query_as(AssertSqlSafe(sql)).bind(tenant).bind(&ids).bind(table.target).fetch_one(&mut *target).await?;
    let bad = bad.into_iter().map(|id| by_id.get(&id).cloned().unwrap_or(id)).collect();
    Ok((bad, parse_delta(&delta)?))
}

/// The `(a,b,c,d)` text of the delta row.
fn parse_delta(text: &str) -> Result<Sums, Error> {
    let inner = text.trim_start_matches('(').trim_end_matches(')');
    let parts: Vec<&str> = inner.split(',').collect();
    let [a, b, c, d] = parts.as_slice() else {
        return Err(Error::invalid("verification_failed", format!("a checksum delta `{text}`")));
    };
    let int = |s: &str| s.parse::<i64>().map_err(|_| Error::invalid("verification_failed", format!("`{s}`")));
    sums(&(a.to_string(), int(b)?, c.to_string(), int(d)?))
}

/// The target side of the ids `ids` hashed again (rows written on the target
/// behind the adoption's back, found by their transaction ids); what that
/// changed in the target's checksum.
pub(super) async fn rehash_target(
    target: &mut PgConnection,
    tenant: Uuid,
    table: &Table,
    ids: &[Uuid],
) -> Result<Sums, Error> {
    if ids.is_empty() {
        return Ok(Sums::default());
    }
    sqlx::raw_sql(PASS_TABLE).execute(&mut *target).await?;
    let sql = format!(
        "WITH r AS (SELECT r.id, {} AS h FROM public.{} r WHERE r.tenant_id = $1 AND r.id = ANY($2)), \
              was AS (SELECT NULL::bigint AS lh, p.th FROM pg_temp.tenantry_pass p WHERE p.tbl = $3 AND p.id = ANY($2)), \
              new AS (INSERT INTO pg_temp.tenantry_pass (tbl, id, th) \
                      SELECT $3, i.id, {} FROM unnest($2::uuid[]) AS i(id) LEFT JOIN r ON r.id = i.id \
                      ON CONFLICT (tbl, id) DO UPDATE SET th = EXCLUDED.th RETURNING NULL::bigint AS lh, th) \
         SELECT ({DELTA})::text",
        row_hash(table, "r"),
        quote_ident(table.target),
        bits("r.h"),
    );
    let delta: String = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(ids)
        .bind(table.target)
        .fetch_one(&mut *target)
        .await?;
    parse_delta(&delta)
}
