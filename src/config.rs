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

/// Configuration sections `TENANTRY_<SECTION>__...` may set. Other `TENANTRY_*`
/// variables (the `dev` command's flags, the CLI's admin URL and token, test
/// hooks) are not configuration and are left alone.
const SECTIONS: &[&str] = &["app__", "control_plane__", "log__"];

fn env() -> Env {
    Env::prefixed("TENANTRY_")
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|p| key.starts_with(p))
        })
        .split("__")
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
        let settings: Settings = fig.merge(env()).extract().map_err(|e| format!("configuration: {e}"))?;
        settings.app.validate().map_err(|e| format!("configuration: {e}"))?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("tenantry-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).expect("write config");
        path
    }

    const MINIMAL: &str = r#"
        [app.registry]
        port = 6432
        [app.credentials]
        user = "tenantry_app"
        password = "app-secret"
        [control_plane]
        admin_token = "token"
        app_role = "tenantry_app"
        [control_plane.owner]
        user = "tenantry_owner"
        password = "owner-secret"
        [control_plane.cluster]
        admin_user = "postgres"
        admin_password = "pg-secret"
    "#;

    #[test]
    fn a_minimal_file_loads_with_documented_defaults_and_hides_secrets() {
        let path = write(MINIMAL);
        let s = Settings::load(Some(&path)).expect("valid configuration");
        assert_eq!(s.app.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.control_plane.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(s.app.registry.port, 6432);
        assert_eq!(s.app.max_pools(), 32);
        assert_eq!(s.log.format, LogFormat::Text);
        let printed = format!("{s:?}");
        for secret in ["app-secret", "owner-secret", "pg-secret"] {
            assert!(!printed.contains(secret), "{secret} leaked into Debug output");
        }
    }

    #[test]
    fn the_example_configuration_is_valid_once_secrets_are_given() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tenantry.example.toml");
        let secrets = r#"
            [app.credentials]
            password = "a"
            [control_plane]
            admin_token = "t"
            app_password = "a"
            [control_plane.owner]
            password = "o"
            [control_plane.cluster]
            admin_password = "p"
            [control_plane.rds]
            master_password_key = "k"
        "#;
        let s: Settings = Figment::new()
            .merge(Toml::file(&example))
            .merge(Toml::string(secrets))
            .extract()
            .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        s.app.validate().expect("valid app settings");
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.control_plane.rds.expect("rds section").allocated_storage, 50);
    }

    #[test]
    fn only_section_variables_are_configuration() {
        assert!(SECTIONS.iter().any(|p| "control_plane__admin_token".starts_with(p)));
        for other in ["moto_server", "admin_token", "dev_pg_port", "failpoints", "config"] {
            assert!(!SECTIONS.iter().any(|p| other.starts_with(p)), "{other}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named_in_the_error() {
        let path = write(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"));
        let err = Settings::load(Some(&path)).unwrap_err();
        assert!(err.contains("xml"), "{err}");
        let path = write(&MINIMAL.replace("port = 6432", "port = 6432\nportt = 1"));
        let err = Settings::load(Some(&path)).unwrap_err();
        assert!(err.contains("portt"), "{err}");
        let path = write(&format!("{MINIMAL}\n[app]\nconnections_per_pool = 0\n"));
        let err = Settings::load(Some(&path)).unwrap_err();
        assert!(err.contains("connections_per_pool"), "{err}");
        let err = Settings::load(Some(std::path::Path::new("/nonexistent/tenantry.toml"))).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
