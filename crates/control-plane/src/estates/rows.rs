//! One legacy row, mapped onto a Tenantry table: what both the initial copy
//! and the change stream of an adoption apply. Ids map deterministically
//! (`keys.rs`), foreign keys the same way, asset columns with no
//! target go into `attributes`, and the mapping's values fill target columns
//! the legacy table lacks. The result is one JSON object per row, which the
//! target takes as `jsonb_populate_record(NULL::<table>, $1)`: every value is
//! converted by its column type's own input function.

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::legacy::Table;
use super::mapping::target_columns;
use super::pgoutput::Value;

/// Maps one legacy row of `table` (`columns` named as the legacy table names
/// them, which after a change of the table may differ from `table.columns`)
/// onto its target: a JSON object with `tenant_id` and every target column
/// the row or the mapping gives.
pub fn map_row(tenant: Uuid, table: &Table, columns: &[String], values: &[Value]) -> Result<Map<String, Json>, String> {
    let (target, mapping) = (table.target, &table.mapping);
    let targets = target_columns(target).ok_or_else(|| format!("`{target}` is not a Tenantry table"))?;
    if columns.len() != values.len() {
        return Err(format!("{} columns but {} values", columns.len(), values.len()));
    }
    let position = |legacy: &str| columns.iter().position(|c| c == legacy);
    let mut row = Map::new();
    row.insert("tenant_id".into(), Json::String(tenant.to_string()));
    let mut used = vec![false; columns.len()];
    // The id from the key, the asset id from the foreign key.
    for (col, key, of) in std::iter::once(("id", Some(&table.key), target)).chain(std::iter::once((
        "asset_id",
        table.parent.as_ref(),
        "assets",
    ))) {
        let Some(key) = key else { continue };
        let at: Option<Vec<usize>> = key.columns.iter().map(|c| position(c)).collect();
        let Some(at) = at else { continue };
        for i in &at {
            used[*i] = true;
        }
        if at.iter().any(|i| values[*i] == Value::Unchanged) {
            continue;
        }
        let value = match key.text_of(columns, values) {
            Some(text) => Json::String(key.id(tenant, of, &text)?.to_string()),
            None => Json::Null,
        };
        row.insert(col.to_string(), value);
    }
    for (col, _) in targets.iter().filter(|(c, _)| !matches!(*c, "id" | "asset_id")) {
        let legacy = mapping.columns.get(*col).map(String::as_str).unwrap_or(col);
        let Some(i) = position(legacy) else {
            if let Some(v) = mapping.values.get(*col) {
                row.insert(col.to_string(), v.clone());
            }
            continue;
        };
        used[i] = true;
        let value = &values[i];
        let mapped = match (col, value) {
            (_, Value::Unchanged) => continue,
            (_, Value::Null) => Json::Null,
            (&"attributes", Value::Text(v)) => serde_json::from_str(v).map_err(|e| format!("attributes: {e}"))?,
            (_, Value::Text(v)) => Json::String(v.clone()),
        };
        row.insert(col.to_string(), mapped);
    }
    if target == "assets" {
        let mut attributes = match row.remove("attributes") {
            Some(Json::Object(m)) => m,
            _ => Map::new(),
        };
        for ((c, v), used) in columns.iter().zip(values).zip(used) {
            if used {
                continue;
            }
            // A NULL is left out: an absent attribute reads the same, and a
            // revert writes an absent attribute back as NULL.
            if let Value::Text(t) = v {
                attributes.insert(c.clone(), Json::String(t.clone()));
            }
        }
        row.insert("attributes".into(), Json::Object(attributes));
    }
    Ok(row)
}

/// The target columns [`map_row`] gives for every row of `table` (with all
/// its columns): what a comparison compares.
pub fn mapped_columns(table: &Table) -> Vec<&'static str> {
    let has = |c: &String| table.columns.contains(c);
    target_columns(table.target)
        .unwrap_or(&[])
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| match *c {
            "id" => true,
            "asset_id" => table.parent.as_ref().is_some_and(|p| p.columns.iter().all(has)),
            "attributes" if table.target == "assets" => true,
            other => {
                let legacy = table.mapping.columns.get(other).map_or(other, String::as_str);
                table.columns.iter().any(|x| x == legacy) || table.mapping.values.contains_key(other)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estates::keys::Key;
    use crate::estates::mapping::TableMapping;

    fn t(v: &str) -> Value {
        Value::Text(v.into())
    }

    fn table(target: &'static str, key: &[(&str, &str)], parent: Option<Key>, cols: &[&str], m: TableMapping) -> Table {
        Table {
            target,
            legacy: target.into(),
            key: Key::new(&key.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect::<Vec<_>>()).unwrap(),
            parent,
            columns: cols.iter().map(|c| c.to_string()).collect(),
            mapping: m,
        }
    }

    #[test]
    fn a_legacy_row_maps_ids_renames_and_keeps_what_has_no_place() {
        let tenant = Uuid::parse_str("0192f000-0000-7000-8000-000000000001").unwrap();
        let mut m = TableMapping::default();
        m.columns.insert("name".into(), "label".into());
        m.values.insert("location".into(), Json::String("HQ".into()));
        let assets = table("assets", &[("id", "integer")], None, &["id", "label", "tag", "status", "color"], m);
        let row =
            map_row(tenant, &assets, &assets.columns, &[t("42"), t("Pump"), t("P-1"), t("active"), t("red")]).unwrap();
        let id = Uuid::new_v5(&tenant, b"assets:42").to_string();
        assert_eq!(row["id"], Json::String(id.clone()));
        assert_eq!((&row["name"], &row["location"]), (&Json::String("Pump".into()), &Json::String("HQ".into())));
        assert_eq!(row["attributes"], serde_json::json!({"color": "red"}), "a column with no target is kept");
        assert_eq!(row["tenant_id"], Json::String(tenant.to_string()));

        let parent = Some(Key::referring(&assets.key, vec!["asset_id".into()]));
        let cols = ["id", "asset_id", "title", "status", "priority"];
        let issues = table("asset_issues", &[("id", "bigint")], parent, &cols, TableMapping::default());
        let issue =
            map_row(tenant, &issues, &issues.columns, &[t("7"), t("42"), t("Leak"), t("open"), Value::Null]).unwrap();
        assert_eq!(issue["asset_id"], Json::String(id), "foreign keys map like the ids they name");
        assert_eq!(issue["priority"], Json::Null);
        let kept = Uuid::now_v7();
        let by_uuid = table("assets", &[("id", "uuid")], None, &["id"], TableMapping::default());
        assert_eq!(by_uuid.key.id(tenant, "assets", &kept.to_string()).unwrap(), kept, "a uuid id is kept");
        assert!(by_uuid.key.id(tenant, "assets", "x-1").is_err());
    }

    #[test]
    fn a_composite_key_and_its_foreign_key_make_the_ids_and_stay_out_of_attributes() {
        let tenant = Uuid::parse_str("0192f000-0000-7000-8000-000000000001").unwrap();
        let assets = table(
            "assets",
            &[("org_id", "integer"), ("id", "integer")],
            None,
            &["org_id", "id", "name"],
            TableMapping::default(),
        );
        let row = map_row(tenant, &assets, &assets.columns, &[t("3"), t("42"), t("Pump")]).unwrap();
        assert_eq!(row["id"], Json::String(Uuid::new_v5(&tenant, b"assets:(3,42)").to_string()));
        assert_eq!(row["attributes"], serde_json::json!({}), "key columns make the id, not attributes");
        let parent = Some(Key::referring(&assets.key, vec!["org_id".into(), "asset".into()]));
        let cols = ["org_id", "code", "asset", "title"];
        let issues =
            table("asset_issues", &[("org_id", "integer"), ("code", "text")], parent, &cols, TableMapping::default());
        let issue = map_row(tenant, &issues, &issues.columns, &[t("3"), t("L 1"), t("42"), t("Leak")]).unwrap();
        assert_eq!(issue["asset_id"], row["id"]);
        assert_eq!(issue["id"], Json::String(Uuid::new_v5(&tenant, b"asset_issues:(3,\"L 1\")").to_string()));
    }
}
