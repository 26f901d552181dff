//! One legacy source as an adoption reads it: where it lives (a schema of the
//! estate's database, or a database of its own with its `public` schema), its
//! mapped tables (parents first) with their key, columns and mapping, and the
//! rows of a table read in key order, as text, the way the change stream
//! carries them.

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

use super::keys::Key;
use super::mapping::{TARGETS, TableMapping};
use super::pgoutput::Value;
use super::sources::legacy_tables;
use super::{Estate, Layout};
use crate::error::Error;

/// One legacy table an adoption copies.
#[derive(Debug, Clone)]
pub struct Table {
    /// The Tenantry table it fills.
    pub target: &'static str,
    pub legacy: String,
    /// Its primary key.
    pub key: Key,
    /// For a child of `assets`: its columns naming the asset's key.
    pub parent: Option<Key>,
    pub columns: Vec<String>,
    pub mapping: TableMapping,
}

impl Table {
    /// The canonical text of a row's key (`row` in `columns` order).
    pub fn key_text(&self, row: &[Value]) -> Option<String> {
        self.key.text_of(&self.columns, row)
    }

    /// The Tenantry id of the legacy key `text`.
    pub(crate) fn id(&self, tenant: Uuid, text: &str) -> Result<Uuid, Error> {
        self.key
            .id(tenant, self.target, text)
            .map_err(|e| Error::invalid("unmappable_row", format!("`{}`: {e}", self.legacy)))
    }
}

/// A legacy source, read from its catalog.
pub(crate) struct Source {
    /// The database to connect to (the estate's own for a schema per tenant).
    pub(crate) database: Option<String>,
    pub(crate) schema: String,
    /// Mapped tables, parents first (the order of `mapping::TARGETS`).
    pub(crate) tables: Vec<Table>,
}

impl Source {
    /// Reads `name`'s mapped tables; a table whose key cannot be adopted is
    /// refused (the sources listing names it as a problem).
    pub(crate) async fn read(estate: &Estate, name: &str) -> Result<Source, Error> {
        let (database, schema) = match estate.view.layout {
            Layout::SchemaPerTenant => (None, name.to_string()),
            Layout::DatabasePerTenant => (Some(name.to_string()), "public".to_string()),
        };
        let mut conn = estate.connect(database.as_deref()).await?;
        let found = legacy_tables(&mut conn, &schema).await;
        let _ = sqlx::Connection::close(conn).await;
        let found = found?;
        let mapping = &estate.view.mapping;
        let mut tables = Vec::new();
        for (target, _) in TARGETS {
            let legacy = mapping.legacy_table(target);
            let Some(t) = found.iter().find(|t| t.name == legacy) else { continue };
            let refused = |e: String| Error::invalid("source_not_adoptable", format!("`{name}`: {e}"));
            let key = t.key().map_err(refused)?;
            let parent = t.parent_key(&found, target, mapping).map_err(refused)?;
            tables.push(Table {
                target,
                legacy: t.name.clone(),
                key,
                parent,
                columns: t.columns.iter().map(|(c, _)| c.clone()).collect(),
                mapping: mapping.tables.get(*target).cloned().unwrap_or_default(),
            });
        }
        if tables.is_empty() {
            return Err(Error::invalid("source_not_adoptable", format!("`{name}` has no table that maps")));
        }
        Ok(Source { database, schema, tables })
    }

    pub(crate) async fn connect(&self, estate: &Estate) -> Result<PgConnection, Error> {
        let mut conn = estate.connect(self.database.as_deref()).await?;
        // Text forms that do not depend on the estate's session defaults.
        sqlx::raw_sql(crate::backend::PINNED_FORMATS).execute(&mut conn).await?;
        Ok(conn)
    }

    /// `"schema"."table"`.
    pub(crate) fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// The table mapped from the legacy table `legacy`.
    pub(crate) fn table(&self, legacy: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.legacy == legacy)
    }

    /// The publication and slot of an adoption share this name.
    pub(crate) fn replication_name(op: Uuid) -> String {
        format!("tenantry_ad_{}", op.simple())
    }

    /// `FOR TABLE a, b, c` of the publication.
    pub(crate) fn table_list(&self) -> String {
        self.tables.iter().map(|t| self.qualified(&t.legacy)).collect::<Vec<_>>().join(", ")
    }

    pub(crate) fn legacy_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.legacy.clone()).collect()
    }
}

/// A page of `table`'s rows in key order after `after` (text form of the
/// key), at most `limit`: each row's values as text, in `table.columns`
/// order, read with `COPY ... TO STDOUT` (text format).
pub(crate) async fn copy_page(
    conn: &mut PgConnection,
    source: &Source,
    table: &Table,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Vec<Value>>, Error> {
    use futures::StreamExt;
    let key = table.key.order();
    let values = table.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let from = match after {
        Some(a) => format!("WHERE {}", table.key.after(a).map_err(|e| Error::invalid("unmappable_row", e))?),
        None => String::new(),
    };
    let sql = format!(
        "COPY (SELECT {values} FROM {} {from} ORDER BY {key} LIMIT {limit}) TO STDOUT",
        source.qualified(&table.legacy)
    );
    let mut out = conn.copy_out_raw(&sql).await?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = out.next().await {
        buf.extend_from_slice(&chunk?);
    }
    drop(out);
    let text = String::from_utf8(buf).map_err(|_| Error::invalid("stream_undecodable", "COPY output is not UTF-8"))?;
    Ok(text.lines().map(|line| line.split('\t').map(copy_value).collect()).collect())
}

/// One field of COPY's text format.
fn copy_value(field: &str) -> Value {
    if field == "\\N" {
        return Value::Null;
    }
    if !field.contains('\\') {
        return Value::Text(field.to_string());
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Value::Text(out)
}

/// `table`'s rows with these keys (text form), as [`copy_page`] gives them.
pub(crate) async fn by_keys(
    conn: &mut PgConnection,
    source: &Source,
    table: &Table,
    keys: &[String],
) -> Result<Vec<Vec<Value>>, Error> {
    let values = table.columns.iter().map(|c| format!("{}::text", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT ARRAY[{values}]::text[] FROM {} WHERE {}",
        source.qualified(&table.legacy),
        table.key.among_params(1)
    );
    let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
    for column in table.key.columns_of(keys).map_err(|e| Error::invalid("unmappable_row", e))? {
        query = query.bind(column);
    }
    let got: Vec<Vec<Option<String>>> = query.fetch_all(&mut *conn).await?;
    Ok(got.into_iter().map(texts).collect())
}

fn texts(row: Vec<Option<String>>) -> Vec<Value> {
    row.into_iter().map(|v| v.map_or(Value::Null, Value::Text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_fields_unescape() {
        assert_eq!(copy_value("\\N"), Value::Null);
        assert_eq!(copy_value("plain"), Value::Text("plain".into()));
        assert_eq!(copy_value("a\\tb\\nc\\\\d"), Value::Text("a\tb\nc\\d".into()));
    }
}
