//! One legacy row, mapped onto a Tenantry table: what both the initial copy
//! and the change stream of an adoption apply. Ids map deterministically
//! (`sources::adopted_id`), foreign keys the same way, asset columns with no
//! target go into `attributes`, and the mapping's values fill target columns
//! the legacy table lacks. The result is one JSON object per row, which the
//! target takes as `jsonb_populate_record(NULL::<table>, $1)`: every value is
//! converted by its column type's own input function.

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::mapping::{TableMapping, target_columns};
use super::pgoutput::Value;

/// The id a legacy integer id becomes: UUID v5 of `"<table>:<id>"` in the
/// namespace of the tenant's id (so `assets:42`); a uuid id is kept.
pub fn adopted_id(tenant: Uuid, table: &str, legacy: &str) -> Result<Uuid, String> {
    if let Ok(n) = legacy.parse::<i64>() {
        return Ok(Uuid::new_v5(&tenant, format!("{table}:{n}").as_bytes()));
    }
    Uuid::parse_str(legacy).map_err(|_| format!("`{legacy}` is neither an integer nor a uuid id"))
}

/// Maps one legacy row (`columns` named as the legacy table names them) onto
/// `target`: a JSON object with `tenant_id` and every target column the row
/// or the mapping gives.
pub fn map_row(
    tenant: Uuid,
    target: &str,
    mapping: &TableMapping,
    columns: &[String],
    values: &[Value],
) -> Result<Map<String, Json>, String> {
    let targets = target_columns(target).ok_or_else(|| format!("`{target}` is not a Tenantry table"))?;
    if columns.len() != values.len() {
        return Err(format!("{} columns but {} values", columns.len(), values.len()));
    }
    let position = |legacy: &str| columns.iter().position(|c| c == legacy);
    let mut row = Map::new();
    row.insert("tenant_id".into(), Json::String(tenant.to_string()));
    let mut used = vec![false; columns.len()];
    for (col, _) in targets {
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
            (&"id", Value::Text(v)) => Json::String(adopted_id(tenant, target, v)?.to_string()),
            (&"asset_id", Value::Text(v)) => Json::String(adopted_id(tenant, "assets", v)?.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &str) -> Value {
        Value::Text(v.into())
    }

    #[test]
    fn a_legacy_row_maps_ids_renames_and_keeps_what_has_no_place() {
        let tenant = Uuid::parse_str("0192f000-0000-7000-8000-000000000001").unwrap();
        let mut m = TableMapping::default();
        m.columns.insert("name".into(), "label".into());
        m.values.insert("location".into(), Json::String("HQ".into()));
        let cols: Vec<String> = ["id", "label", "tag", "status", "color"].map(String::from).into();
        let row = map_row(tenant, "assets", &m, &cols, &[t("42"), t("Pump"), t("P-1"), t("active"), t("red")]).unwrap();
        let id = Uuid::new_v5(&tenant, b"assets:42").to_string();
        assert_eq!(row["id"], Json::String(id.clone()));
        assert_eq!((&row["name"], &row["location"]), (&Json::String("Pump".into()), &Json::String("HQ".into())));
        assert_eq!(row["attributes"], serde_json::json!({"color": "red"}), "a column with no target is kept");
        assert_eq!(row["tenant_id"], Json::String(tenant.to_string()));

        let cols: Vec<String> = ["id", "asset_id", "title", "status", "priority"].map(String::from).into();
        let issue = map_row(
            tenant,
            "asset_issues",
            &TableMapping::default(),
            &cols,
            &[t("7"), t("42"), t("Leak"), t("open"), Value::Null],
        )
        .unwrap();
        assert_eq!(issue["asset_id"], Json::String(id), "foreign keys map like the ids they name");
        assert_eq!(issue["priority"], Json::Null);
        let kept = Uuid::now_v7();
        assert_eq!(adopted_id(tenant, "assets", &kept.to_string()).unwrap(), kept, "a uuid id is kept");
        assert!(adopted_id(tenant, "assets", "x-1").is_err());
    }
}
