//! The `revert` kind: an adopted tenant goes back to its legacy source,
//! before that source is released.
//!
//! ```text
//! fence_tenant  the tenant fenced on its Tenantry backend (no deadline): its
//!               requests stop writing there
//! apply_back    one legacy transaction: the legacy fence lifted, every change
//!               made through Tenantry since the cutover applied back (updated
//!               and deleted rows by their legacy ids; new rows with ids from
//!               the legacy table's own sequence or identity, children
//!               following their new parent), then verified inside the same
//!               transaction (counts, and every row compared with the target
//!               after mapping); `sealing` recorded, then commit: the legacy
//!               source takes writes again, with the tenant's data
//! unplace       the tenant `reverted` (it stops serving), its placement gone,
//!               its rows purged from the Tenantry backend (a dedicated
//!               database destroyed), the source `reverted`
//! ```
//!
//! Policy: rolled back (the tenant unfenced, the legacy source untouched and
//! still fenced) until `sealing`; forward only after it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use tenantry_core::BackendKind;
use tenantry_provisioner::quote_ident;

use super::adopt::target_conn;
use super::fence;
use super::legacy::{self, Source, Table};
use super::verify::{differing_mapped, mapped};
use crate::backend::tenant_tables;
use crate::error::Error;
use crate::kind::{Kind, Policy, Run, Stop, failpoint};
use crate::operation::{OperationKind, OperationState, Step};
use crate::registry::{audit, past_seal, stmt};

pub const REVERT_STEPS: &[Step] = &[Step::FenceTenant, Step::ApplyBack, Step::Unplace];

/// A revert's parameters, as queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RevertParams {
    pub(crate) estate_id: Uuid,
    pub(crate) source: String,
    /// Where the tenant lives when the revert is queued.
    pub(crate) backend_id: Uuid,
}

/// The `revert` kind.
pub(crate) struct Revert;

impl Kind for Revert {
    type Params = RevertParams;
    type State = ();
    const FAILPOINTS: &'static str = "revert";
    const POLICY: Policy = Policy::RollBackUntilSeal;
    const TIMED: bool = true;

    fn steps(_: OperationKind, _: &RevertParams) -> &'static [Step] {
        REVERT_STEPS
    }

    async fn step(run: &Run<'_, RevertParams>, _: &mut (), step: Step) -> Result<(), Stop> {
        let tenant = run.tenant()?;
        match step {
            Step::FenceTenant => {
                let wait = Duration::from_millis(run.cp.config().moves.fence_timeout_ms);
                Ok(run.cp.fence_residency(tenant, run.params.backend_id, wait).await?)
            }
            Step::ApplyBack => apply_back(run, tenant).await,
            Step::Unplace => unplace(run, tenant).await,
            other => Err(Stop::Failed(Error::invalid("unknown_step", format!("`{other}` is not a step of a revert")))),
        }
    }

    async fn roll_back(
        run: &Run<'_, RevertParams>,
        outcome: OperationState,
        error: Option<String>,
    ) -> Result<(), Error> {
        let tenant = run.tenant()?;
        let side = run.cp.side(run.params.backend_id).await?;
        let mut t = run.cp.tenant_conn(&side, tenant).await?;
        sqlx::query(
            "UPDATE tenant_residency SET state = 'active', fenced_by = NULL, fenced_until = NULL, updated_at = now() \
             WHERE tenant_id = $1 AND state = 'fenced'",
        )
        .bind(tenant)
        .execute(&mut t)
        .await?;
        t.close().await?;
        let txn = run.cp.registry().begin().await?;
        run.rolled_back(&txn, outcome, error, json!({"estate_id": run.params.estate_id, "source": run.params.source}))
            .await?;
        txn.commit().await?;
        Ok(())
    }
}

/// The JSON value as the text a legacy column would show.
fn as_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// What a legacy row becomes from a target row: legacy column -> value, the
/// key left out. `parents` maps asset ids back to legacy asset keys.
fn legacy_values(t: &Table, row: &Map<String, Json>, parents: &BTreeMap<Uuid, String>) -> Map<String, Json> {
    let mut out = Map::new();
    let attributes = row.get("attributes").and_then(Json::as_object);
    let fk: &[String] = t.parent.as_ref().map_or(&[], |p| &p.columns);
    for c in t.columns.iter().filter(|c| !t.key.columns.contains(c) && !fk.contains(c)) {
        let renamed = t.mapping.columns.iter().find(|(_, legacy)| *legacy == c).map(|(target, _)| target.as_str());
        let target_col = renamed.unwrap_or(c);
        let value = match row.get(target_col) {
            Some(v) if renamed.is_some() || !t.mapping.columns.contains_key(c.as_str()) => v.clone(),
            _ => match attributes.and_then(|a| a.get(c.as_str())) {
                Some(v) if t.target == "assets" => v.clone(),
                _ => continue,
            },
        };
        out.insert(c.clone(), value);
    }
    // The foreign key's columns: the parts of the asset's legacy key.
    if let Some(p) = &t.parent {
        let parts = row
            .get("asset_id")
            .and_then(Json::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
            .and_then(|u| parents.get(&u))
            .and_then(|k| p.parts(k).ok());
        for (i, c) in p.columns.iter().enumerate() {
            out.insert(c.clone(), parts.as_ref().map_or(Json::Null, |ps| Json::String(ps[i].clone())));
        }
    }
    out
}

/// `values` with the mapping's `legacy_values` for columns it lacks or has
/// as null, and which columns those were.
fn filled(t: &Table, mut values: Map<String, Json>) -> (Map<String, Json>, Vec<String>) {
    let mut fills = Vec::new();
    for (c, v) in &t.mapping.legacy_values {
        if values.get(c).is_none_or(Json::is_null) && t.columns.contains(c) {
            values.insert(c.clone(), v.clone());
            fills.push(c.clone());
        }
    }
    (values, fills)
}

/// Legacy columns a revert filled from `legacy_values`, per target table and
/// legacy key: the legacy side holds a value the tenant's row never had, which
/// the verification leaves out of its comparison.
type Fills<'a> = BTreeMap<&'a str, BTreeMap<String, Vec<String>>>;

/// The legacy table's columns that refuse NULL and have no default (nor an
/// identity or generation): a written-back row must bring their values.
async fn required_columns(conn: &mut PgConnection, source: &Source, t: &Table) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 \
         AND NOT attisdropped AND attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = '' \
         ORDER BY attnum",
    )
    .bind(source.qualified(&t.legacy))
    .fetch_all(conn)
    .await?)
}

/// The tenant's rows of `t`'s target table, as JSON, by id.
async fn tenant_rows(target: &mut PgConnection, t: &Table, tenant: Uuid) -> Result<Vec<(Uuid, Json)>, Error> {
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, to_jsonb(r) FROM public.{} r WHERE tenant_id = $1",
        quote_ident(t.target)
    )))
    .bind(tenant)
    .fetch_all(target)
    .await?)
}

/// Rows a revert could not write back: a legacy column `NOT NULL` without a
/// default that the row has no value for.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Unwritable {
    /// The legacy table.
    pub table: String,
    pub column: String,
    /// Tenantry ids of the rows (the first 20).
    pub rows: Vec<Uuid>,
    /// How many rows in all.
    pub count: usize,
}

/// Which of the tenant's rows on its Tenantry backend could not be written
/// back to the legacy source as they are: checked before a revert is queued
/// (so it is refused before the tenant is fenced) and again inside it.
pub(crate) async fn unwritable(
    source: &Source,
    legacy: &mut PgConnection,
    target: &mut PgConnection,
    tenant: Uuid,
) -> Result<Vec<Unwritable>, Error> {
    let mut out = Vec::new();
    // Asset ids the legacy side will know: its own, and new ones (given keys
    // as they are inserted). Only whether a parent has a key matters here,
    // so an empty one stands for each.
    let mut parents: BTreeMap<Uuid, String> = BTreeMap::new();
    for t in &source.tables {
        let required = required_columns(legacy, source, t).await?;
        let keys: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {} FROM {}",
            t.key.sql_text(None),
            source.qualified(&t.legacy)
        )))
        .fetch_all(&mut *legacy)
        .await?;
        let mut known = BTreeSet::new();
        for k in keys {
            known.insert(t.id(tenant, &k)?);
        }
        let rows = tenant_rows(target, t, tenant).await?;
        let mut missing: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
        for (id, row) in &rows {
            let Json::Object(row) = row else { continue };
            let (values, _) = filled(t, legacy_values(t, row, &parents));
            let new = !known.contains(id);
            // An existing row keeps its key; a new one needs one.
            for c in required.iter().filter(|c| new || !t.key.columns.contains(c)) {
                let lacks = match values.get(c) {
                    None => new,
                    Some(v) => v.is_null(),
                };
                if lacks {
                    missing.entry(c.as_str()).or_default().push(*id);
                }
            }
            if t.target == "assets" {
                parents.insert(*id, t.key.join(&vec![""; t.key.columns.len()]));
            }
        }
        for (column, ids) in missing {
            out.push(Unwritable {
                table: t.legacy.clone(),
                column: column.to_string(),
                count: ids.len(),
                rows: ids.into_iter().take(20).collect(),
            });
        }
    }
    Ok(out)
}

/// The refusal for rows that cannot be written back, in words.
pub(crate) fn unwritable_error(problems: &[Unwritable]) -> Error {
    let each: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{} row(s) of `{}` have no value for `{}`, which is NOT NULL without a default there (e.g. {})",
                p.count,
                p.table,
                p.column,
                p.rows.iter().take(3).map(Uuid::to_string).collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    Error::invalid(
        "unwritable_rows",
        format!(
            "the revert cannot write the tenant's rows back: {}; give the rows the value (in `attributes`), or the \
             estate's mapping a `legacy_values` entry for the column",
            each.join("; ")
        ),
    )
}

async fn apply_back(run: &Run<'_, RevertParams>, tenant: Uuid) -> Result<(), Stop> {
    let estate = run.cp.estate(run.params.estate_id).await?;
    let source = Source::read(&estate, &run.params.source).await?;
    let mut legacy = source.connect(&estate).await?;
    let adoption = adoption_of(run).await?;
    if !fence::is_fenced(&mut legacy, &source.schema, adoption).await? {
        if past_seal(&run.view().await?.progress) {
            // Committed by an earlier attempt: the legacy source serves again.
            return Ok(());
        }
        return Err(Stop::Failed(Error::invalid(
            "legacy_unfenced",
            "the legacy source's fence is gone (lifted by hand?): its data may have changed since the cutover",
        )));
    }
    let side = run.cp.side(run.params.backend_id).await?;
    let mut target = target_conn(&side, tenant).await?;
    let problems = unwritable(&source, &mut legacy, &mut target, tenant).await?;
    if !problems.is_empty() {
        // Rolled back: the tenant serves from Tenantry again.
        return Err(Stop::Failed(unwritable_error(&problems)));
    }
    let mut tx = legacy.begin().await?;
    fence::lift(&mut tx, &source.schema, adoption).await?;
    let counts = write_back(&source, &mut tx, &mut target, tenant).await.map_err(worded)?;
    run.heartbeat(json!({"sealing": true, "applied_back": counts})).await?;
    failpoint("revert.apply_back.sealed");
    tx.commit().await?;
    target.close().await?;
    legacy.close().await?;
    Ok(())
}

/// A write-back refused by one of the legacy side's constraints, in words
/// (`NOT NULL`, `CHECK`, unique, foreign key: SQLSTATE class 23); anything
/// else as it is.
fn worded(e: Error) -> Error {
    let Error::Backend(sqlx::Error::Database(db)) = &e else { return e };
    if !db.code().is_some_and(|c| c.starts_with("23")) {
        return e;
    }
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let what = match db.code().as_deref() {
        Some("23502") => "a NOT NULL column without a default",
        Some("23514") => "a CHECK constraint",
        Some("23505") => "a unique index",
        Some("23503") => "a foreign key",
        _ => "an integrity constraint",
    };
    let table = pg.and_then(|p| p.table()).unwrap_or("?");
    let detail = match (pg.and_then(|p| p.column()), pg.and_then(|p| p.constraint())) {
        (Some(c), _) => format!("column `{c}`"),
        (None, Some(c)) => format!("constraint `{c}`"),
        _ => db.message().to_string(),
    };
    Error::invalid(
        "unwritable_rows",
        format!(
            "the legacy table `{table}` refuses the tenant's rows: {what} ({detail}) does not hold for a row made or \
             changed in Tenantry; nothing was written back"
        ),
    )
}

/// Writes every change made through Tenantry since the cutover back into the
/// legacy source, inside the caller's transaction (whose fence is lifted),
/// and verifies it there. Returns the counts per table.
pub(crate) async fn write_back(
    source: &Source,
    tx: &mut PgConnection,
    target: &mut PgConnection,
    tenant: Uuid,
) -> Result<Map<String, Json>, Error> {
    // Target id -> legacy key, per target table, as the legacy side will hold them.
    let mut keys: BTreeMap<&str, BTreeMap<Uuid, String>> = BTreeMap::new();
    let mut counts = Map::new();
    let mut deletes: Vec<(&Table, Vec<String>)> = Vec::new();
    let mut filled_in: Fills = BTreeMap::new();
    for t in &source.tables {
        let q = source.qualified(&t.legacy);
        let key = t.key.sql_text(None);
        let current: Vec<(String, Json)> =
            sqlx::query_as(AssertSqlSafe(format!("SELECT {key}, to_jsonb(r) FROM {q} r"))).fetch_all(&mut *tx).await?;
        let mut by_id: BTreeMap<Uuid, (String, Json)> = BTreeMap::new();
        for (k, row) in current {
            by_id.insert(t.id(tenant, &k)?, (k, row));
        }
        let rows = tenant_rows(target, t, tenant).await?;
        let parents = keys.get("assets").cloned().unwrap_or_default();
        let (mut inserted, mut updated) = (0, 0);
        let mut seen = BTreeSet::new();
        let mut table_keys = BTreeMap::new();
        for (id, row) in &rows {
            let Json::Object(row) = row else { continue };
            let (mut values, fills) = filled(t, legacy_values(t, row, &parents));
            match by_id.get(id) {
                Some((k, now)) => {
                    // An existing row keeps its key.
                    values.retain(|c, _| !t.key.columns.contains(c));
                    let cols: Vec<String> = values.keys().map(|c| quote_ident(c)).collect();
                    let list = cols.join(", ");
                    seen.insert(*id);
                    table_keys.insert(*id, k.clone());
                    if !fills.is_empty() {
                        filled_in.entry(t.target).or_default().insert(k.clone(), fills);
                    }
                    let same = values.iter().all(|(c, v)| as_text(v) == now.get(c).and_then(as_text));
                    if same || cols.is_empty() {
                        continue;
                    }
                    let sql = format!(
                        "UPDATE {q} SET ({list}) = (SELECT {list} FROM jsonb_populate_record(NULL::{q}, $1)) \
                         WHERE {}",
                        t.key.equals_params(2)
                    );
                    let mut update = sqlx::query(AssertSqlSafe(sql)).bind(Json::Object(values));
                    for part in t.key.parts(k).map_err(|e| Error::invalid("unmappable_row", e))? {
                        update = update.bind(part);
                    }
                    update.execute(&mut *tx).await?;
                    updated += 1;
                }
                None => {
                    let list = values.keys().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "INSERT INTO {q} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{q}, $1) \
                         RETURNING {key}"
                    );
                    let k: String =
                        sqlx::query_scalar(AssertSqlSafe(sql)).bind(Json::Object(values)).fetch_one(&mut *tx).await?;
                    if !fills.is_empty() {
                        filled_in.entry(t.target).or_default().insert(k.clone(), fills);
                    }
                    table_keys.insert(*id, k);
                    inserted += 1;
                }
            }
        }
        let gone: Vec<String> =
            by_id.iter().filter(|(id, _)| !seen.contains(id)).map(|(_, (k, _))| k.clone()).collect();
        counts.insert(
            t.target.to_string(),
            json!({"target": rows.len(), "inserted": inserted, "updated": updated, "deleted": gone.len()}),
        );
        keys.insert(t.target, table_keys);
        deletes.push((t, gone));
    }
    // Children before parents.
    for (t, gone) in deletes.iter().rev().filter(|(_, g)| !g.is_empty()) {
        let sql = format!("DELETE FROM {} WHERE {}", source.qualified(&t.legacy), t.key.among_params(1));
        let mut delete = sqlx::query(AssertSqlSafe(sql));
        for column in t.key.columns_of(gone).map_err(|e| Error::invalid("unmappable_row", e))? {
            delete = delete.bind(column);
        }
        delete.execute(&mut *tx).await?;
    }
    verify_back(source, tx, target, tenant, &keys, &filled_in).await?;
    Ok(counts)
}

/// The write-back tried in a transaction that is rolled back, so that every
/// legacy constraint (`CHECK`, unique, foreign key) is asked before a revert
/// fences anything. The legacy source stays fenced and unchanged.
pub(crate) async fn trial_write_back(
    source: &Source,
    legacy: &mut PgConnection,
    target: &mut PgConnection,
    tenant: Uuid,
    adoption: Uuid,
) -> Result<(), Error> {
    let mut tx = legacy.begin().await?;
    fence::lift(&mut tx, &source.schema, adoption).await?;
    let tried = write_back(source, &mut tx, target, tenant).await;
    tx.rollback().await?;
    tried.map(|_| ()).map_err(worded)
}

/// The legacy source (inside the revert's transaction) mapped forward again
/// must equal the tenant's rows on the target: counts and every row.
async fn verify_back(
    source: &Source,
    legacy: &mut PgConnection,
    target: &mut PgConnection,
    tenant: Uuid,
    keys: &BTreeMap<&str, BTreeMap<Uuid, String>>,
    filled_in: &Fills<'_>,
) -> Result<(), Error> {
    let back: BTreeMap<&str, BTreeMap<&String, Uuid>> =
        keys.iter().map(|(t, m)| (*t, m.iter().map(|(id, k)| (k, *id)).collect())).collect();
    let none = BTreeMap::new();
    for t in &source.tables {
        let ids = back.get(t.target).unwrap_or(&none);
        let assets = back.get("assets").unwrap_or(&none);
        let mut after: Option<String> = None;
        let mut rows_seen = 0usize;
        loop {
            let rows = legacy::copy_page(legacy, source, t, after.as_deref(), 5000).await?;
            let mut m = mapped(tenant, t, &rows)?;
            for (row, r) in m.iter_mut().zip(&rows) {
                let fills = t.key_text(r).and_then(|k| filled_in.get(t.target).and_then(|f| f.get(&k)));
                if let (Some(cols), Some(Json::Object(a))) = (fills, row.get_mut("attributes")) {
                    for c in cols {
                        a.remove(c);
                    }
                }
                if let Some(id) = t.key_text(r).and_then(|k| ids.get(&k)) {
                    row.insert("id".into(), Json::String(id.to_string()));
                }
                if let Some(p) = t.parent.as_ref().and_then(|p| p.text_of(&t.columns, r))
                    && let Some(id) = assets.get(&p)
                {
                    row.insert("asset_id".into(), Json::String(id.to_string()));
                }
            }
            let keys: Vec<Option<String>> = rows.iter().map(|r| t.key_text(r)).collect();
            let (bad, _) = differing_mapped(target, tenant, t, &m, &keys, &[]).await?;
            if !bad.is_empty() {
                return Err(Error::invalid(
                    "verification_failed",
                    format!(
                        "`{}` would not hold the tenant's data after the revert (legacy keys {:?}): a column of the \
                         tenant's rows has no place in the legacy table; the legacy source is left as it was",
                        t.legacy,
                        bad.iter().take(5).collect::<Vec<_>>()
                    ),
                ));
            }
            rows_seen += rows.len();
            after = rows.last().and_then(|r| t.key_text(r));
            if rows.len() < 5000 {
                break;
            }
        }
        let sql = format!("SELECT count(*) FROM public.{} WHERE tenant_id = $1", quote_ident(t.target));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).fetch_one(&mut *target).await?;
        if n != rows_seen as i64 {
            return Err(Error::invalid(
                "verification_failed",
                format!("`{}`: {rows_seen} legacy rows after the revert, {n} on the target", t.legacy),
            ));
        }
    }
    Ok(())
}

/// The adoption that placed the tenant (its fence names it).
async fn adoption_of(run: &Run<'_, RevertParams>) -> Result<Uuid, Error> {
    adoption_for(run.cp, run.tenant()?).await
}

/// The operation that adopted `tenant` (its legacy fence is named after it).
pub(crate) async fn adoption_for(cp: &crate::plane::ControlPlane, tenant: Uuid) -> Result<Uuid, Error> {
    let row = cp
        .registry()
        .query_one_raw(stmt(
            "SELECT id FROM operations WHERE kind = 'adopt' AND tenant_id = $1 AND state = 'succeeded' \
             ORDER BY created_at DESC LIMIT 1",
            vec![tenant.into()],
        ))
        .await?
        .ok_or(Error::NotFound("adoption"))?;
    Ok(row.try_get("", "id")?)
}

async fn unplace(run: &Run<'_, RevertParams>, tenant: Uuid) -> Result<(), Stop> {
    let txn = run.cp.registry().begin().await.map_err(Error::from)?;
    txn.execute_raw(stmt(
        "UPDATE tenants SET status = 'reverted', updated_at = now() WHERE id = $1",
        vec![tenant.into()],
    ))
    .await
    .map_err(Error::from)?;
    txn.execute_raw(stmt("DELETE FROM placements WHERE tenant_id = $1", vec![tenant.into()]))
        .await
        .map_err(Error::from)?;
    txn.execute_raw(stmt(
        "UPDATE estate_sources SET state = 'reverted', updated_at = now() WHERE estate_id = $1 AND name = $2",
        vec![run.params.estate_id.into(), run.params.source.clone().into()],
    ))
    .await
    .map_err(Error::from)?;
    txn.commit().await.map_err(Error::from)?;
    let side = run.cp.side(run.params.backend_id).await?;
    if side.backend.kind == BackendKind::Dedicated {
        let b = &side.backend;
        run.cp.destroy_storage(b.engine, &b.name, &b.database, true).await?;
        run.cp
            .registry()
            .execute_raw(stmt("UPDATE backends SET status = 'retired' WHERE id = $1", vec![b.id.into()]))
            .await
            .map_err(Error::from)?;
    } else {
        let mut t = target_conn(&side, tenant).await?;
        for table in tenant_tables(&mut t).await? {
            let sql = format!("DELETE FROM public.{} WHERE tenant_id = $1", quote_ident(&table));
            sqlx::query(AssertSqlSafe(sql)).bind(tenant).execute(&mut t).await?;
        }
        sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1").bind(tenant).execute(&mut t).await?;
        t.close().await?;
    }
    let txn = run.cp.registry().begin().await.map_err(Error::from)?;
    audit(
        &txn,
        "operation",
        "estate.reverted",
        Some(tenant),
        json!({"estate_id": run.params.estate_id, "source": run.params.source, "operation_id": run.id}),
    )
    .await
    .map_err(Error::from)?;
    run.finish(&txn, OperationState::Succeeded, None).await.map_err(Error::from)?;
    txn.commit().await.map_err(Error::from)?;
    Ok(())
}
