//! Layered configuration: an optional TOML file, then `TENANTRY_*` environment
//! variables (`__` separates levels: `TENANTRY_APP__LISTEN=0.0.0.0:8080`).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use tenantry_app::AppConfig;
use tenantry_control_plane::ControlPlaneConfig;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line, with span fields (tenant_id, tier, backend).
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set. Default `info`.
    #[serde(default)]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub app: AppConfig,
    pub control_plane: ControlPlaneConfig,
    #[serde(default)]
    pub log: LogConfig,
}

impl Settings {
    /// Reads `file` (when given) and the environment; explains what is wrong.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut fig = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(format!("configuration file {} does not exist", file.display()));
            }
            fig = fig.merge(Toml::file(file));
        }
        let settings: Settings =
            fig.merge(Env::prefixed("TENANTRY_").split("__")).extract().map_err(|e| format!("configuration: {e}"))?;
        settings.app.validate().map_err(|e| format!("configuration: {e}"))?;
        Ok(settings)
    }
}
