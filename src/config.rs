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

/// What a `tenantry serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The app API only: needs `[app]` (registry address, app-role
    /// credentials); never connects as the owner or a superuser, runs no
    /// operation worker.
    App,
    /// The admin API, the console, operation workers and usage rollups:
    /// needs `[control_plane]`.
    ControlPlane,
    /// Both, in one process (small installations).
    All,
}

impl Role {
    pub fn runs_app(self) -> bool {
        matches!(self, Role::App | Role::All)
    }
    pub fn runs_control_plane(self) -> bool {
        matches!(self, Role::ControlPlane | Role::All)
    }
}

/// The configuration of one process of a given [`Role`]: only the sections
/// the role uses are read (and validated).
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub role: Role,
    pub app: Option<AppConfig>,
    pub control_plane: Option<ControlPlaneConfig>,
    pub log: LogConfig,
    /// Sections present but not used by this role (their secrets are never
    /// read); said once at start.
    pub ignored: Vec<&'static str>,
}

/// Which sections a configuration has, without reading them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Present {
    app: Option<serde::de::IgnoredAny>,
    control_plane: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    log: LogConfig,
}

fn figment(file: Option<&Path>) -> Result<Figment, String> {
    let mut fig = Figment::new();
    if let Some(file) = file {
        if !file.exists() {
            return Err(format!("configuration file {} does not exist", file.display()));
        }
        fig = fig.merge(Toml::file(file));
    }
    Ok(fig.merge(env()))
}

impl Settings {
    /// Reads `file` (when given) and the environment; explains what is wrong.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let settings: Settings = figment(file)?.extract().map_err(|e| format!("configuration: {e}"))?;
        settings.app.validate().map_err(|e| format!("configuration: {e}"))?;
        Ok(settings)
    }

    /// Reads the sections `role` needs; a missing one is an error, a
    /// superfluous one is left unread and reported in `ignored`.
    pub fn load_for(file: Option<&Path>, role: Role) -> Result<ProcessSettings, String> {
        let fig = figment(file)?;
        let present: Present = fig.extract().map_err(|e| format!("configuration: {e}"))?;
        let mut out = ProcessSettings { role, app: None, control_plane: None, log: present.log, ignored: Vec::new() };
        let flag = match role {
            Role::App => "--role app",
            Role::ControlPlane => "--role control-plane",
            Role::All => "--role all",
        };
        if role.runs_app() {
            if present.app.is_none() {
                return Err(format!(
                    "configuration: {flag} needs an [app] section (the registry's address and the app role's \
                     credentials); none was found in the file or TENANTRY_APP__* variables"
                ));
            }
            let app: AppConfig = fig.extract_inner("app").map_err(|e| format!("configuration: {e}"))?;
            app.validate().map_err(|e| format!("configuration: {e}"))?;
            out.app = Some(app);
        } else if present.app.is_some() {
            out.ignored.push("app");
        }
        if role.runs_control_plane() {
            if present.control_plane.is_none() {
                return Err(format!(
                    "configuration: {flag} needs a [control_plane] section (admin token, owner and cluster \
                     credentials); none was found in the file or TENANTRY_CONTROL_PLANE__* variables"
                ));
            }
            let cp: ControlPlaneConfig =
                fig.extract_inner("control_plane").map_err(|e| format!("configuration: {e}"))?;
            cp.validate().map_err(|e| format!("configuration: {e}"))?;
            out.control_plane = Some(cp);
        } else if present.control_plane.is_some() {
            out.ignored.push("control_plane");
        }
        Ok(out)
    }
}

impl From<&Settings> for ProcessSettings {
    fn from(s: &Settings) -> Self {
        ProcessSettings {
            role: Role::All,
            app: Some(s.app.clone()),
            control_plane: Some(s.control_plane.clone()),
            log: s.log.clone(),
            ignored: Vec::new(),
        }
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
        [app.gate]
        current = "gate-secret-gate-secret-gate-secret"
        [control_plane]
        admin_token = "token-token-token-token-token-token"
        app_role = "tenantry_app"
        [control_plane.gate]
        current = "gate-secret-gate-secret-gate-secret"
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
        assert_eq!(s.log.format, LogFormat::Text);
        let printed = format!("{s:?}");
        for secret in ["app-secret", "owner-secret", "pg-secret", "gate-secret"] {
            assert!(!printed.contains(secret), "{secret} leaked into Debug output");
        }
    }

    #[test]
    fn the_benchmark_routes_are_refused_on_a_listener_beyond_loopback() {
        let bench = "[app.baseline]\nhost = \"127.0.0.1\"\nport = 5432\ndatabase = \"pool\"\n[app.baseline.credentials]\nuser = \"u\"\npassword = \"p\"\n";
        let path = write(&format!("{MINIMAL}\n{bench}"));
        assert!(Settings::load_for(Some(&path), Role::App).is_ok(), "loopback (the default listener)");
        let path = write(&format!("[app]\nlisten = \"0.0.0.0:8080\"\n{MINIMAL}\n{bench}"));
        let err = Settings::load_for(Some(&path), Role::App).unwrap_err();
        assert!(err.contains("only on a loopback"), "{err}");
    }

    #[test]
    fn a_short_admin_token_or_gate_key_is_refused() {
        let path = write(&MINIMAL.replace("token-token-token-token-token-token", "short"));
        let err = Settings::load_for(Some(&path), Role::ControlPlane).unwrap_err();
        assert!(err.contains("admin_token must have at least 32"), "{err}");
        let path = write(&MINIMAL.replace("gate-secret-gate-secret-gate-secret", "gate"));
        let err = Settings::load_for(Some(&path), Role::App).unwrap_err();
        assert!(err.contains("app.gate.current must have at least 32"), "{err}");
    }

    #[test]
    fn the_example_configuration_is_valid_once_secrets_are_given() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tenantry.example.toml");
        let secrets = r#"
            [app.credentials]
            password = "a"
            [app.gate]
            current = "0123456789abcdef0123456789abcdef"
            [control_plane.gate]
            current = "0123456789abcdef0123456789abcdef"
            [control_plane]
            admin_token = "t-t-t-t-t-t-t-t-t-t-t-t-t-t-t-t-t"
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
    fn fewer_scram_rounds_for_the_app_role_need_a_generated_password() {
        let with = |password: &str, rounds: Option<u32>| {
            let mut extra = format!("app_role = \"tenantry_app\"\napp_password = \"{password}\"");
            if let Some(r) = rounds {
                extra.push_str(&format!("\napp_scram_iterations = {r}"));
            }
            let path = write(&MINIMAL.replace("app_role = \"tenantry_app\"", &extra));
            Settings::load_for(Some(&path), Role::ControlPlane)
                .map(|s| s.control_plane.expect("the control plane's section").app_scram_iterations)
        };
        assert_eq!(with("short-password", None), Ok(4096));
        let err = with("short-password", Some(16)).unwrap_err();
        assert!(err.contains("app_scram_iterations") && err.contains("24 characters"), "{err}");
        assert_eq!(with(&"x".repeat(40), Some(16)), Ok(16));
        assert_eq!(with("short-password", Some(8192)), Ok(8192));
        let err = with(&"x".repeat(40), Some(0)).unwrap_err();
        assert!(err.contains("between 1 and"), "{err}");
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

    #[test]
    fn each_role_reads_only_its_sections_and_names_what_is_missing() {
        let app_only = MINIMAL.split("[control_plane]").next().unwrap().to_string();
        let path = write(&app_only);
        let s = Settings::load_for(Some(&path), Role::App).expect("an app needs only [app]");
        assert!(s.app.is_some() && s.control_plane.is_none() && s.ignored.is_empty());
        let err = Settings::load_for(Some(&path), Role::ControlPlane).unwrap_err();
        assert!(err.contains("--role control-plane needs a [control_plane] section"), "{err}");
        let err = Settings::load_for(Some(&path), Role::All).unwrap_err();
        assert!(err.contains("[control_plane]"), "{err}");

        // The full file for an app: the control plane's section is not even read
        // (a broken one does not matter) and is reported as superfluous.
        let path = write(&MINIMAL.replace("admin_token = \"token-token-token-token-token-token\"", "admin_token = 42"));
        let s = Settings::load_for(Some(&path), Role::App).expect("unused sections are not read");
        assert_eq!(s.ignored, vec!["control_plane"]);
        assert!(Settings::load_for(Some(&path), Role::ControlPlane).unwrap_err().contains("admin_token"));

        let cp_only = format!("[control_plane]{}", MINIMAL.split("[control_plane]").nth(1).unwrap());
        let path = write(&cp_only);
        let s = Settings::load_for(Some(&path), Role::ControlPlane).expect("a control plane needs no [app]");
        assert!(s.app.is_none() && s.control_plane.is_some());
        assert!(Settings::load_for(Some(&path), Role::App).unwrap_err().contains("--role app needs an [app] section"));
    }
}
