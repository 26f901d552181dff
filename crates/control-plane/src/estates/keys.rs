//! A legacy table's key, and the Tenantry id it becomes.
//!
//! A key is one column or several (`(org_id, id)`); a child's foreign key to
//! its asset is a key of the same shape, named by the child's columns. Every
//! key has a canonical text: one column's is its value's text form (`42`,
//! `PUMP-042`); several columns' is PostgreSQL's text form of the row of
//! them, `ROW(org_id, id)::text` (`(7,42)`, `(7,"A 1")`). The id:
//!
//! - a one-column uuid key is kept;
//! - any other key becomes the UUID v5 of `"<target table>:<canonical text>"`
//!   in the namespace of the tenant's id (`assets:42`, `assets:PUMP-042`,
//!   `assets:(7,42)`).
//!
//! So a text key `042` and an integer key `42` stay apart, re-running an
//! adoption yields the same ids, and an integration computes them from SQL.

use uuid::Uuid;

use tenantry_provisioner::{quote_ident, quote_literal};

use super::pgoutput::Value;

/// What kind of id a key makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// One `smallint`, `integer` or `bigint` column.
    Integer,
    /// One `uuid` column: the id is the key.
    Uuid,
    /// One `text`, `character varying` or `character` column.
    Text,
    /// Several columns, each one of the above.
    Composite,
}

/// A key: its columns (in the table's, or for a foreign key the parent key's,
/// order) with their types, and the kind of id it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub kind: KeyKind,
}

fn is_integer(ty: &str) -> bool {
    matches!(ty, "smallint" | "integer" | "bigint")
}

fn is_text(ty: &str) -> bool {
    ty == "text" || ty.starts_with("character varying") || ty.starts_with("character(") || ty == "character"
}

impl Key {
    /// The key of these `(column, type)`s; refused (in words) for no column or
    /// a type whose text form is not a stable identity (a float, a timestamp).
    pub fn new(columns: &[(String, String)]) -> Result<Key, String> {
        let kind = match columns {
            [] => return Err("has no primary key".into()),
            [(_, ty)] if is_integer(ty) => KeyKind::Integer,
            [(_, ty)] if ty == "uuid" => KeyKind::Uuid,
            [(_, ty)] if is_text(ty) => KeyKind::Text,
            _ => KeyKind::Composite,
        };
        if let Some((c, ty)) = columns.iter().find(|(_, ty)| !(is_integer(ty) || is_text(ty) || ty == "uuid")) {
            return Err(format!(
                "key column `{c}` is `{ty}`: keys of integer, text and uuid columns (one or several) are adoptable"
            ));
        }
        Ok(Key {
            columns: columns.iter().map(|(c, _)| c.clone()).collect(),
            types: columns.iter().map(|(_, t)| t.clone()).collect(),
            kind,
        })
    }

    /// The key of the child's `columns` naming a parent keyed by `parent`.
    pub fn referring(parent: &Key, columns: Vec<String>) -> Key {
        Key { columns, types: parent.types.clone(), kind: parent.kind }
    }

    /// How the sources listing shows it: `id integer -> uuid v5 of "assets:<id>"`.
    pub fn describe(&self, target: &str) -> String {
        let cols = self.columns.iter().zip(&self.types).map(|(c, t)| format!("{c} {t}")).collect::<Vec<_>>();
        match self.kind {
            KeyKind::Uuid => format!("{} (kept)", cols[0]),
            KeyKind::Composite => {
                format!("({}) -> uuid v5 of \"{target}:({})\"", cols.join(", "), self.columns.join(","))
            }
            _ => format!("{} -> uuid v5 of \"{target}:<{}>\"", cols[0], self.columns[0]),
        }
    }

    /// The canonical text of a row's key (`columns` names the row's
    /// `values`); `None` when a part is missing, NULL or not sent.
    pub fn text_of(&self, columns: &[String], values: &[Value]) -> Option<String> {
        let mut parts = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let i = columns.iter().position(|n| n == c)?;
            match values.get(i) {
                Some(Value::Text(v)) => parts.push(v.as_str()),
                _ => return None,
            }
        }
        Some(self.join(&parts))
    }

    /// The canonical text of these parts (one per column).
    pub fn join(&self, parts: &[&str]) -> String {
        if self.kind != KeyKind::Composite {
            return parts.first().map(|p| p.to_string()).unwrap_or_default();
        }
        record_text(parts)
    }

    /// The parts of a canonical text, one per column.
    pub fn parts(&self, text: &str) -> Result<Vec<String>, String> {
        if self.kind != KeyKind::Composite {
            return Ok(vec![text.to_string()]);
        }
        let parts =
            record_parts(text).ok_or_else(|| format!("`{text}` is not a key of ({})", self.columns.join(", ")))?;
        if parts.len() != self.columns.len() {
            return Err(format!(
                "`{text}` has {} parts; the key ({}) has {}",
                parts.len(),
                self.columns.join(", "),
                self.columns.len()
            ));
        }
        Ok(parts)
    }

    /// The Tenantry id of the key `text` in `table` (the target table).
    pub fn id(&self, tenant: Uuid, table: &str, text: &str) -> Result<Uuid, String> {
        match self.kind {
            KeyKind::Uuid => Uuid::parse_str(text).map_err(|_| format!("`{text}` is not a uuid id")),
            KeyKind::Integer => {
                let n: i64 = text.parse().map_err(|_| format!("`{text}` is not an integer id"))?;
                Ok(Uuid::new_v5(&tenant, format!("{table}:{n}").as_bytes()))
            }
            KeyKind::Text | KeyKind::Composite => Ok(Uuid::new_v5(&tenant, format!("{table}:{text}").as_bytes())),
        }
    }

    /// SQL for the key's canonical text of a row (`alias.` before each column
    /// when given): `"id"::text`, or `ROW("org_id", "id")::text`.
    pub fn sql_text(&self, alias: Option<&str>) -> String {
        let cols = self.qualified(alias);
        match self.kind {
            KeyKind::Composite => format!("ROW({})::text", cols.join(", ")),
            _ => format!("{}::text", cols[0]),
        }
    }

    fn qualified(&self, alias: Option<&str>) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| match alias {
                Some(a) => format!("{a}.{}", quote_ident(c)),
                None => quote_ident(c),
            })
            .collect()
    }

    /// `"org_id", "id"`: the key's columns, for `ORDER BY`.
    pub fn order(&self) -> String {
        self.qualified(None).join(", ")
    }

    /// SQL true for rows whose key comes after the key `text`, in key order.
    pub fn after(&self, text: &str) -> Result<String, String> {
        let values = self.typed(&self.parts(text)?.iter().map(|p| quote_literal(p)).collect::<Vec<_>>());
        Ok(format!("({}) > ({})", self.order(), values.join(", ")))
    }

    /// SQL true for the row whose key is given by parameters `$n` (one text
    /// per column, from `n` on): `("org_id", "id") = ($1::bigint, $2::text)`.
    pub fn equals_params(&self, n: usize) -> String {
        let params: Vec<String> = (0..self.columns.len()).map(|i| format!("${}", n + i)).collect();
        format!("({}) = ({})", self.order(), self.typed(&params).join(", "))
    }

    /// SQL true for rows whose key is among parameters `$n...` (one text array
    /// per column, from [`Key::columns_of`]).
    pub fn among_params(&self, n: usize) -> String {
        if self.columns.len() == 1 {
            return format!("{} = ANY(${n}::text[]::{}[])", quote_ident(&self.columns[0]), self.types[0]);
        }
        let params: Vec<String> = (0..self.columns.len()).map(|i| format!("${}::text[]", n + i)).collect();
        let names: Vec<String> = (0..self.columns.len()).map(|i| format!("k{i}")).collect();
        format!(
            "({}) IN (SELECT {} FROM unnest({}) AS u({}))",
            self.order(),
            self.typed(&names).join(", "),
            params.join(", "),
            names.join(", ")
        )
    }

    /// The keys `texts` as one array of parts per column, for [`Key::among_params`].
    pub fn columns_of(&self, texts: &[String]) -> Result<Vec<Vec<String>>, String> {
        let mut out = vec![Vec::with_capacity(texts.len()); self.columns.len()];
        for t in texts {
            for (col, part) in out.iter_mut().zip(self.parts(t)?) {
                col.push(part);
            }
        }
        Ok(out)
    }

    fn typed(&self, values: &[String]) -> Vec<String> {
        values.iter().zip(&self.types).map(|(v, t)| format!("{v}::{t}")).collect()
    }
}

/// PostgreSQL's text form of a row of non-NULL text values (`record_out`):
/// a value is quoted when empty or holding `"`, `\`, `(`, `)`, `,` or a
/// space, and inside quotes `"` and `\` are doubled.
fn record_text(parts: &[&str]) -> String {
    let mut out = String::from("(");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let quote = p.is_empty() || p.chars().any(|c| matches!(c, '"' | '\\' | '(' | ')' | ',') || is_c_space(c));
        if quote {
            out.push('"');
        }
        for c in p.chars() {
            if c == '"' || c == '\\' {
                out.push(c);
            }
            out.push(c);
        }
        if quote {
            out.push('"');
        }
    }
    out.push(')');
    out
}

/// `isspace()` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// The values of a row's text form (`record_in`'s reading: quotes, doubled
/// quotes, backslash escapes); `None` if it is not one.
fn record_parts(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next()?),
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            other => cur.push(other),
        }
    }
    if quoted {
        return None;
    }
    parts.push(cur);
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cols: &[(&str, &str)]) -> Key {
        Key::new(&cols.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn keys_of_each_kind_make_their_ids() {
        let tenant = Uuid::parse_str("0192f000-0000-7000-8000-000000000001").unwrap();
        let int = key(&[("id", "integer")]);
        let text = key(&[("code", "character varying(20)")]);
        let both = key(&[("org_id", "bigint"), ("code", "text")]);
        assert_eq!((int.kind, text.kind, both.kind), (KeyKind::Integer, KeyKind::Text, KeyKind::Composite));
        assert_eq!(int.id(tenant, "assets", "42").unwrap(), Uuid::new_v5(&tenant, b"assets:42"));
        assert_ne!(text.id(tenant, "assets", "042").unwrap(), int.id(tenant, "assets", "42").unwrap());
        assert_eq!(both.join(&["7", "A 1"]), "(7,\"A 1\")");
        assert_eq!(both.id(tenant, "assets", "(7,\"A 1\")").unwrap(), Uuid::new_v5(&tenant, b"assets:(7,\"A 1\")"));
        assert!(int.id(tenant, "assets", "x").is_err());
        assert!(Key::new(&[("at".into(), "timestamp with time zone".into())]).is_err());
        assert!(Key::new(&[]).is_err());
    }

    #[test]
    fn composite_texts_read_back_into_their_parts() {
        let both = key(&[("a", "text"), ("b", "text"), ("c", "integer")]);
        for parts in [["x", "y", "1"], ["", "a,b", "2"], ["say \"hi\"", "back\\slash", "3"], ["(p)", " lead", "4"]] {
            let text = both.join(&parts);
            assert_eq!(both.parts(&text).unwrap(), parts.map(String::from).to_vec(), "{text}");
        }
        assert!(both.parts("(1,2)").is_err(), "a part short");
        assert!(both.parts("no parens").is_err());
    }
}
