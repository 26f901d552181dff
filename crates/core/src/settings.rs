//! Tenant settings as data: limits and feature flags. Each tier has defaults
//! (registry table `tier_settings`); a tenant's own `settings` override them
//! key by key. `null` means "no limit" in a default and "inherit" in an override.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The limits the request path enforces; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    /// Sustained requests per second (token bucket).
    pub requests_per_second: Option<u32>,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: Option<u32>,
    /// Requests of the tenant in flight at once on one app process.
    pub max_concurrent_requests: Option<u32>,
    /// The tenant's statement timeout: `statement_timeout` in the startup packet of the
    /// pools its requests use (pools are keyed by backend and timeout), so every
    /// statement honours it, single reads included.
    pub statement_timeout_ms: Option<u32>,
    /// Largest `limit` a list request may ask for.
    pub max_page_size: Option<u32>,
}

/// The keys of [`Limits`].
pub const LIMIT_KEYS: &[&str] =
    &["requests_per_second", "burst", "max_concurrent_requests", "statement_timeout_ms", "max_page_size"];

/// The body of a settings PATCH (tenant or tier), as documented in the admin
/// API's OpenAPI: both sections optional, unknown keys refused. The handlers
/// check a body with [`validate_patch`], which accepts exactly this shape
/// (and keeps `null`, which this type's `Option` cannot tell from absent).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SettingsPatch {
    /// Limits to change; `null` restores the tier default (for a tier: no limit).
    limits: Option<LimitsPatch>,
    /// Feature flags to set: a name of 1-64 characters to a boolean, number or
    /// string; `null` removes the flag.
    flags: Option<std::collections::BTreeMap<String, Value>>,
}

/// The `limits` of a [`SettingsPatch`]: positive integers or `null`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct LimitsPatch {
    #[schema(minimum = 1, maximum = 4294967295_u64, nullable)]
    requests_per_second: Option<u32>,
    #[schema(minimum = 1, maximum = 4294967295_u64, nullable)]
    burst: Option<u32>,
    #[schema(minimum = 1, maximum = 4294967295_u64, nullable)]
    max_concurrent_requests: Option<u32>,
    #[schema(minimum = 1, maximum = 4294967295_u64, nullable)]
    statement_timeout_ms: Option<u32>,
    #[schema(minimum = 1, maximum = 4294967295_u64, nullable)]
    max_page_size: Option<u32>,
}

/// Tier defaults overridden by the tenant's settings: `limits` key by key,
/// `flags` key by key.
pub fn effective(tier: &Value, tenant: &Value) -> Value {
    let mut out = Map::new();
    for section in ["limits", "flags"] {
        let mut merged = tier.get(section).and_then(Value::as_object).cloned().unwrap_or_default();
        if let Some(own) = tenant.get(section).and_then(Value::as_object) {
            for (k, v) in own {
                if !v.is_null() {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
        out.insert(section.into(), Value::Object(merged));
    }
    Value::Object(out)
}

/// The limits in effective settings (unknown or malformed values: unlimited).
pub fn limits_of(effective: &Value) -> Limits {
    let get = |k: &str| effective["limits"][k].as_u64().and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    Limits {
        requests_per_second: get("requests_per_second"),
        burst: get("burst"),
        max_concurrent_requests: get("max_concurrent_requests"),
        statement_timeout_ms: get("statement_timeout_ms"),
        max_page_size: get("max_page_size"),
    }
}

/// Checks a settings patch: an object with optional `limits` (known keys,
/// positive integers or null) and `flags` (names of at most 64 characters,
/// boolean, number, string or null values).
pub fn validate_patch(patch: &Value) -> Result<(), String> {
    let obj = patch.as_object().ok_or("settings must be a JSON object")?;
    for key in obj.keys() {
        if key != "limits" && key != "flags" {
            return Err(format!("unknown settings section `{key}`; expected `limits` or `flags`"));
        }
    }
    if let Some(limits) = obj.get("limits") {
        let limits = limits.as_object().ok_or("`limits` must be an object")?;
        for (k, v) in limits {
            if !LIMIT_KEYS.contains(&k.as_str()) {
                return Err(format!("unknown limit `{k}`; expected one of {}", LIMIT_KEYS.join(", ")));
            }
            let ok = v.is_null() || v.as_u64().is_some_and(|n| (1..=u64::from(u32::MAX)).contains(&n));
            if !ok {
                return Err(format!("limit `{k}` must be a positive integer or null"));
            }
        }
    }
    if let Some(flags) = obj.get("flags") {
        let flags = flags.as_object().ok_or("`flags` must be an object")?;
        for (k, v) in flags {
            if k.is_empty() || k.len() > 64 {
                return Err("flag names must be 1-64 characters".into());
            }
            if v.is_array() || v.is_object() {
                return Err(format!("flag `{k}` must be a boolean, number, string or null"));
            }
        }
    }
    Ok(())
}

/// Applies a validated patch to a tenant's own settings: keys set to `null` are
/// removed (the tier default applies again).
pub fn apply_patch(current: &Value, patch: &Value) -> Value {
    let mut out = current.as_object().cloned().unwrap_or_default();
    for section in ["limits", "flags"] {
        let Some(changes) = patch.get(section).and_then(Value::as_object) else { continue };
        let mut merged = out.get(section).and_then(Value::as_object).cloned().unwrap_or_default();
        for (k, v) in changes {
            if v.is_null() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        out.insert(section.into(), Value::Object(merged));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tenant_overrides_tier_defaults_key_by_key() {
        let tier = json!({"limits": {"requests_per_second": 50, "burst": 100}, "flags": {"beta": false}});
        let own = json!({"limits": {"burst": 10, "requests_per_second": null}, "flags": {"beta": true}});
        let e = effective(&tier, &own);
        assert_eq!(limits_of(&e).requests_per_second, Some(50));
        assert_eq!(limits_of(&e).burst, Some(10));
        assert_eq!(e["flags"]["beta"], true);
    }

    #[test]
    fn patches_are_checked_and_null_removes_an_override() {
        assert!(validate_patch(&json!({"limits": {"rps": 1}})).is_err());
        assert!(validate_patch(&json!({"limits": {"burst": -1}})).is_err());
        assert!(validate_patch(&json!({"limits": {"burst": 0}})).is_err());
        assert!(validate_patch(&json!({"other": {}})).is_err());
        assert!(validate_patch(&json!({"flags": {"x": [1]}})).is_err());
        assert!(validate_patch(&json!({"limits": {"burst": 5, "max_page_size": null}, "flags": {"x": "on"}})).is_ok());
        let cur = json!({"limits": {"burst": 5, "max_page_size": 10}});
        let next = apply_patch(&cur, &json!({"limits": {"max_page_size": null, "burst": 7}}));
        assert_eq!(next, json!({"limits": {"burst": 7}}));
    }
}
