//! How a legacy source's tables and columns map onto Tenantry's tables: the
//! default (the product's names), and an estate's `mapping` (renames, values
//! for missing target columns, ignored tables).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A target table's columns (without `tenant_id`): name, and whether a row
/// needs a value for it (no default in the tenant schema).
pub(crate) const TARGETS: &[(&str, &[(&str, bool)])] = &[
    (
        "assets",
        &[
            ("id", true),
            ("name", true),
            ("tag", true),
            ("category", false),
            ("location", false),
            ("status", true),
            ("attributes", false),
            ("created_at", false),
            ("updated_at", false),
        ],
    ),
    (
        "maintenance_schedules",
        &[
            ("id", true),
            ("asset_id", true),
            ("title", true),
            ("interval_days", true),
            ("next_due_at", true),
            ("last_done_at", false),
            ("created_at", false),
            ("updated_at", false),
        ],
    ),
    (
        "asset_issues",
        &[
            ("id", true),
            ("asset_id", true),
            ("title", true),
            ("description", false),
            ("status", true),
            ("priority", true),
            ("created_at", false),
            ("updated_at", false),
        ],
    ),
];

pub(crate) fn target_columns(table: &str) -> Option<&'static [(&'static str, bool)]> {
    TARGETS.iter().find(|(t, _)| *t == table).map(|(_, c)| *c)
}

/// How one Tenantry table is filled from the legacy source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The legacy table's name (default: the target's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Target column -> legacy column, where the names differ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Target column -> value, for target columns the legacy table lacks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub values: BTreeMap<String, serde_json::Value>,
    /// Legacy column -> value a revert writes back for a row that has none
    /// (a legacy column `NOT NULL` without a database default, which the
    /// legacy application fills itself): rows made in Tenantry after the
    /// cutover carry no value for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub legacy_values: BTreeMap<String, serde_json::Value>,
}

/// An estate's mapping onto Tenantry's tables. Default: the legacy tables use
/// the product's table and column names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Per target table (`assets`, `maintenance_schedules`, `asset_issues`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, TableMapping>,
    /// Legacy tables left behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

impl Mapping {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for (table, m) in &self.tables {
            let Some(cols) = target_columns(table) else {
                return Err(Error::invalid(
                    "invalid_mapping",
                    format!(
                        "`{table}` is not a Tenantry table; expected assets, maintenance_schedules or asset_issues"
                    ),
                ));
            };
            if let Some((col, _)) = m.legacy_values.iter().find(|(_, v)| v.is_null()) {
                return Err(Error::invalid(
                    "invalid_mapping",
                    format!("`{table}`: legacy_values.{col} is null; give the value a revert writes back"),
                ));
            }
            for col in m.columns.keys().chain(m.values.keys()) {
                if !cols.iter().any(|(c, _)| c == col) {
                    return Err(Error::invalid("invalid_mapping", format!("`{table}` has no column `{col}`")));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn legacy_table<'a>(&'a self, target: &'a str) -> &'a str {
        self.tables.get(target).and_then(|m| m.from.as_deref()).unwrap_or(target)
    }
}
