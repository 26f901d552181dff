//! The tenants of a legacy estate (its sources: schemas or databases matching
//! the estate's pattern), how each legacy table maps onto Tenantry's tables,
//! what would stop an adoption, and the dry run of one.
//!
//! Ids: see `keys.rs` (a uuid legacy id is kept; any other key, one column or
//! several, becomes the UUID v5 of `"<target table>:<key text>"`), and
//! foreign keys map the same way.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::FromQueryResult;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use serde::Serialize;
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use super::keys::Key;
use super::mapping::{Mapping, TARGETS, target_columns};
use super::{Estate, Layout, requirements};
use crate::error::Error;
use crate::moves::plan::Check;
use crate::plane::ControlPlane;
use crate::registry::stmt;

/// Where a source stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    NotAdopted,
    Adopting,
    Adopted,
    Released,
    Reverted,
    Failed,
}

/// One legacy column and where it goes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ColumnMap {
    pub legacy: String,
    /// `name`, or `attributes.<legacy>` for an asset column with no target.
    pub target: Option<String>,
}

/// One legacy table and how it maps.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceTable {
    pub legacy: String,
    /// The Tenantry table, or none (ignored or unmapped).
    pub target: Option<String>,
    pub rows: i64,
    pub bytes: i64,
    /// `id integer -> uuid v5`, `id uuid (kept)`, or none.
    pub primary_key: Option<String>,
    pub columns: Vec<ColumnMap>,
}

/// `GET /v1/estates/{id}/sources`: one schema (or database) of the estate.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Source {
    pub name: String,
    pub state: SourceState,
    pub tenant_id: Option<Uuid>,
    pub tables: Vec<SourceTable>,
    /// What would stop (or lose data in) an adoption of this source.
    pub problems: Vec<String>,
}

#[derive(FromQueryResult)]
struct SourceRow {
    name: String,
    state: String,
    tenant_id: Option<Uuid>,
}

/// A table of a legacy source, read from the catalog.
pub(super) struct LegacyTable {
    pub(super) name: String,
    pub(super) columns: Vec<(String, String)>,
    pub(super) primary_key: Vec<(String, String)>,
    /// Declared foreign keys: the parent table, and (own column, parent
    /// column) pairs.
    pub(super) foreign_keys: Vec<(String, Vec<(String, String)>)>,
}

impl LegacyTable {
    /// This table's key.
    pub(super) fn key(&self) -> Result<Key, String> {
        Key::new(&self.primary_key).map_err(|e| format!("table `{}` {e}", self.name))
    }

    /// The key naming its asset, for a child of `assets`: one column (the
    /// mapping's `asset_id`, by default `asset_id`) for a one-column asset
    /// key; for a key of several columns, the foreign key declared to the
    /// assets table, in the asset key's order.
    pub(super) fn parent_key(
        &self,
        found: &[LegacyTable],
        target: &str,
        mapping: &Mapping,
    ) -> Result<Option<Key>, String> {
        if target == "assets" {
            return Ok(None);
        }
        let assets = mapping.legacy_table("assets");
        let Some(parent) = found.iter().find(|f| f.name == assets) else { return Ok(None) };
        let Ok(parent_key) = parent.key() else { return Ok(None) };
        if parent_key.columns.len() == 1 {
            let col =
                mapping.tables.get(target).and_then(|m| m.columns.get("asset_id")).map_or("asset_id", String::as_str);
            return Ok(Some(Key::referring(&parent_key, vec![col.to_string()])));
        }
        let declared = self.foreign_keys.iter().filter(|(p, _)| *p == parent.name).find_map(|(_, pairs)| {
            parent_key
                .columns
                .iter()
                .map(|pc| pairs.iter().find(|(_, p)| p == pc).map(|(c, _)| c.clone()))
                .collect::<Option<Vec<String>>>()
        });
        match declared {
            Some(cols) => Ok(Some(Key::referring(&parent_key, cols))),
            None => Err(format!(
                "`{}` names its asset by ({}) of `{assets}`, and declares no foreign key to it saying which of its \
                 columns do: declare one",
                self.name,
                parent_key.columns.join(", ")
            )),
        }
    }
}

pub(super) async fn legacy_tables(conn: &mut PgConnection, schema: &str) -> Result<Vec<LegacyTable>, Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname, a.attnum",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    // Key columns in the key's order, not the table's.
    let keys: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, array_agg(a.attname::text ORDER BY k.i) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_index x ON x.indrelid = c.oid AND x.indisprimary \
         CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, i) \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
         WHERE n.nspname = $1 GROUP BY c.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    let fks: Vec<(String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, p.relname::text, array_agg(a.attname::text ORDER BY k.i), \
                array_agg(pa.attname::text ORDER BY k.i) \
         FROM pg_constraint f JOIN pg_class c ON c.oid = f.conrelid JOIN pg_class p ON p.oid = f.confrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL unnest(f.conkey, f.confkey) WITH ORDINALITY AS k(own, parent, i) \
         JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.own \
         JOIN pg_attribute pa ON pa.attrelid = f.confrelid AND pa.attnum = k.parent \
         WHERE f.contype = 'f' AND n.nspname = $1 GROUP BY f.oid, c.relname, p.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    let mut tables: Vec<LegacyTable> = Vec::new();
    for (table, column, ty) in rows {
        if tables.last().is_none_or(|t| t.name != table) {
            let order = keys.iter().find(|(t, _)| *t == table).map(|(_, k)| k.clone()).unwrap_or_default();
            let foreign_keys = fks
                .iter()
                .filter(|(c, ..)| *c == table)
                .map(|(_, p, own, theirs)| (p.clone(), own.iter().cloned().zip(theirs.iter().cloned()).collect()))
                .collect();
            tables.push(LegacyTable {
                name: table,
                columns: Vec::new(),
                primary_key: order.into_iter().map(|c| (c, String::new())).collect(),
                foreign_keys,
            });
        }
        let t = tables.last_mut().expect("pushed");
        if let Some(k) = t.primary_key.iter_mut().find(|(c, _)| *c == column) {
            k.1 = ty.clone();
        }
        t.columns.push((column, ty));
    }
    Ok(tables)
}

async fn scalar(conn: &mut PgConnection, sql: String) -> Result<i64, Error> {
    Ok(sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql)).fetch_one(&mut *conn).await?)
}

/// Inspects one source (`schema` on `conn`): tables, mapping, sizes, problems.
async fn inspect(
    conn: &mut PgConnection,
    schema: &str,
    mapping: &Mapping,
) -> Result<(Vec<SourceTable>, Vec<String>), Error> {
    let found = legacy_tables(conn, schema).await?;
    let mut tables = Vec::new();
    let mut problems = Vec::new();
    let q = |t: &str| format!("{}.{}", quote_ident(schema), quote_ident(t));
    let assets = mapping.legacy_table("assets");
    if !found.iter().any(|t| t.name == assets) {
        problems.push(format!("no `{assets}` table: nothing to adopt as assets"));
    }
    for t in &found {
        let target = TARGETS.iter().map(|(n, _)| *n).find(|n| mapping.legacy_table(n) == t.name);
        let rows = scalar(conn, format!("SELECT count(*) FROM {}", q(&t.name))).await?;
        let bytes =
            scalar(conn, format!("SELECT pg_total_relation_size('{}')::bigint", q(&t.name).replace('\'', "''")))
                .await?;
        let Some(target) = target else {
            if !mapping.ignore.contains(&t.name) {
                problems.push(format!(
                    "table `{}` does not map to a Tenantry table: rename it in the mapping or list it in `ignore`",
                    t.name
                ));
            }
            tables.push(SourceTable {
                legacy: t.name.clone(),
                target: None,
                rows,
                bytes,
                primary_key: None,
                columns: vec![],
            });
            continue;
        };
        let m = mapping.tables.get(target).cloned().unwrap_or_default();
        let key = t.key().map_err(|e| problems.push(e)).ok();
        let parent = t.parent_key(&found, target, mapping).map_err(|e| problems.push(e)).ok().flatten();
        let primary_key = key.as_ref().map(|k| k.describe(target));
        let legacy_of =
            |target_col: &str| m.columns.get(target_col).map(String::as_str).unwrap_or(target_col).to_string();
        let mut used = BTreeSet::new();
        let mut columns = Vec::new();
        // The key's columns make the id, the foreign key's the asset id.
        for (k, col) in key.iter().map(|k| (k, "id")).chain(parent.iter().map(|k| (k, "asset_id"))) {
            for c in k.columns.iter().filter(|c| t.columns.iter().any(|(n, _)| n == *c)) {
                used.insert(c.clone());
                columns.push(ColumnMap { legacy: c.clone(), target: Some(col.to_string()) });
            }
        }
        for (col, required) in target_columns(target).unwrap_or(&[]) {
            let legacy = legacy_of(col);
            let made = match *col {
                "id" => key.is_some(),
                "asset_id" => parent.as_ref().is_some_and(|p| p.columns.iter().all(|c| used.contains(c))),
                _ => false,
            };
            if made {
                continue;
            }
            if t.columns.iter().any(|(c, _)| *c == legacy) {
                used.insert(legacy.clone());
                columns.push(ColumnMap { legacy, target: Some(col.to_string()) });
            } else if *required && !m.values.contains_key(*col) {
                problems.push(format!(
                    "`{}` has no column for `{target}.{col}`: rename one in the mapping or give a value",
                    t.name
                ));
            }
        }
        for (col, _) in &t.columns {
            if used.contains(col) {
                continue;
            }
            if target == "assets" {
                columns.push(ColumnMap { legacy: col.clone(), target: Some(format!("attributes.{col}")) });
            } else {
                problems.push(format!("`{}.{col}` has no place in `{target}` and would be lost", t.name));
                columns.push(ColumnMap { legacy: col.clone(), target: None });
            }
        }
        // Rows the target would refuse.
        if target == "assets" && used.contains(&legacy_of("tag")) {
            let tag = quote_ident(&legacy_of("tag"));
            let dups = scalar(
                conn,
                format!("SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY {tag} HAVING count(*) > 1) d", q(&t.name)),
            )
            .await?;
            if dups > 0 {
                problems.push(format!(
                    "`{}`: {dups} tag(s) used by more than one row (tags are unique per tenant)",
                    t.name
                ));
            }
        }
        if let (Some(p), Some(parent)) = (&parent, found.iter().find(|f| f.name == assets))
            && p.columns.iter().all(|c| used.contains(c))
        {
            let pairs: Vec<String> = p
                .columns
                .iter()
                .zip(&parent.primary_key)
                .map(|(own, (theirs, _))| format!("p.{} = c.{}", quote_ident(theirs), quote_ident(own)))
                .collect();
            let orphans = scalar(
                conn,
                format!(
                    "SELECT count(*) FROM {} c WHERE NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
                    q(&t.name),
                    q(assets),
                    pairs.join(" AND ")
                ),
            )
            .await?;
            if orphans > 0 {
                problems.push(format!("`{}`: {orphans} row(s) whose asset does not exist", t.name));
            }
        }
        tables.push(SourceTable {
            legacy: t.name.clone(),
            target: Some(target.to_string()),
            rows,
            bytes,
            primary_key,
            columns,
        });
    }
    Ok((tables, problems))
}

/// `GET /v1/estates/{id}/adoption-plan`: the dry run of adopting one source.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdoptionPlan {
    pub estate_id: Uuid,
    pub source: String,
    pub tier: tenantry_core::Tier,
    /// The shared pool it would land on, or `new dedicated database`.
    pub target: String,
    pub tables: Vec<SourceTable>,
    pub checks: Vec<Check>,
    pub estimated_copy_secs: f64,
    /// The legacy source's write pause at the cutover (a fence trigger, the
    /// slot drained to its LSN, counts): independent of the tenant's size.
    pub expected_pause_ms: u64,
    pub ready: bool,
}

impl ControlPlane {
    /// The estate's sources with their mapping, sizes, problems and state.
    pub async fn estate_sources(&self, estate: Uuid) -> Result<Vec<Source>, Error> {
        let estate = self.estate(estate).await?;
        let states: BTreeMap<String, SourceRow> = SourceRow::find_by_statement(stmt(
            "SELECT name, state, tenant_id FROM estate_sources WHERE estate_id = $1",
            vec![estate.view.id.into()],
        ))
        .all(self.registry())
        .await?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
        let mut out = Vec::new();
        let found = source_names(&estate).await?;
        // A source released with its data dropped is still listed, with its state.
        let gone = states.keys().filter(|n| !found.contains(n)).cloned().collect::<Vec<_>>();
        for (name, present) in found.into_iter().map(|n| (n, true)).chain(gone.into_iter().map(|n| (n, false))) {
            let (tables, problems) = if present {
                inspect_source(&estate, &name).await?
            } else {
                (vec![], vec!["no longer in the estate (dropped on release)".to_string()])
            };
            let (state, tenant_id) = match states.get(&name) {
                Some(r) => (parse_state(&r.state), r.tenant_id),
                None => (SourceState::NotAdopted, None),
            };
            out.push(Source { name, state, tenant_id, tables, problems });
        }
        Ok(out)
    }

    /// The dry run of adopting `source` onto `tier` (optionally a given shared pool).
    pub async fn adoption_plan(
        &self,
        estate: Uuid,
        source: &str,
        tier: tenantry_core::Tier,
        target: Option<Uuid>,
    ) -> Result<AdoptionPlan, Error> {
        let estate = self.estate(estate).await?;
        if !source_names(&estate).await?.iter().any(|n| n == source) {
            return Err(Error::NotFound("source"));
        }
        let (tables, problems) = inspect_source(&estate, source).await?;
        let mut conn = estate.connect(None).await?;
        let missing = requirements(&mut conn).await?;
        let _ = conn.close().await;
        let mut checks = vec![Check {
            name: "estate_grants_adoption".into(),
            ok: missing.is_empty(),
            detail: if missing.is_empty() {
                "logical WAL, replication, publication, a free slot".into()
            } else {
                missing.join("; ")
            },
        }];
        checks.push(Check {
            name: "source_maps".into(),
            ok: problems.is_empty(),
            detail: if problems.is_empty() { "every table and column has a place".into() } else { problems.join("; ") },
        });
        let target_name = match (tier, target) {
            (tenantry_core::Tier::Dedicated, _) => "new dedicated database".to_string(),
            (tenantry_core::Tier::Shared, Some(id)) => {
                let b = self.backend(id).await?;
                let ok = b.kind == tenantry_core::BackendKind::SharedPool
                    && b.status == tenantry_core::BackendStatus::Ready
                    && b.schema_version == tenantry_core::TENANT_SCHEMA_LATEST;
                checks.push(Check {
                    name: "target_ready".into(),
                    ok,
                    detail: format!("{} ({:?}, {:?}, schema {})", b.name, b.kind, b.status, b.schema_version),
                });
                b.name
            }
            (tenantry_core::Tier::Shared, None) => {
                let region = self.config().default_region.clone();
                self.pick_shared_pool(&region).await?.name
            }
        };
        let rows: i64 = tables.iter().filter(|t| t.target.is_some()).map(|t| t.rows).sum();
        let rate = self.config().moves.copy_rows_per_sec.max(1) as f64;
        let ready = checks.iter().all(|c| c.ok);
        Ok(AdoptionPlan {
            estate_id: estate.view.id,
            source: source.to_string(),
            tier,
            target: target_name,
            tables,
            checks,
            estimated_copy_secs: (rows as f64 / rate * 10.0).round() / 10.0,
            expected_pause_ms: 500,
            ready,
        })
    }
}

pub(super) fn parse_state(s: &str) -> SourceState {
    match s {
        "adopting" => SourceState::Adopting,
        "adopted" => SourceState::Adopted,
        "released" => SourceState::Released,
        "reverted" => SourceState::Reverted,
        "failed" => SourceState::Failed,
        _ => SourceState::NotAdopted,
    }
}

/// The schemas (or databases) of the estate matching its pattern.
pub(super) async fn source_names(estate: &Estate) -> Result<Vec<String>, Error> {
    let mut conn = estate.connect(None).await?;
    let sql = match estate.view.layout {
        Layout::SchemaPerTenant => "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1",
        Layout::DatabasePerTenant => {
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 AND datallowconn AND NOT datistemplate ORDER BY 1"
        }
    };
    let names = sqlx::query_scalar::<_, String>(sql).bind(&estate.view.pattern).fetch_all(&mut conn).await?;
    let _ = conn.close().await;
    Ok(names)
}

async fn inspect_source(estate: &Estate, name: &str) -> Result<(Vec<SourceTable>, Vec<String>), Error> {
    let (mut conn, schema) = match estate.view.layout {
        Layout::SchemaPerTenant => (estate.connect(None).await?, name),
        Layout::DatabasePerTenant => (estate.connect(Some(name)).await?, "public"),
    };
    let result = inspect(&mut conn, schema, &estate.view.mapping).await;
    let _ = conn.close().await;
    result
}
