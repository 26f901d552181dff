//! Typed control-plane configuration (validated on load by the binary).

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tenantry_core::db::Credentials;

/// A PostgreSQL cluster on which Tenantry creates logical databases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Host backends on this cluster are reached at. Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Administrator role (superuser, or CREATEDB + CREATEROLE) used to create
    /// and drop databases.
    pub admin_user: String,
    pub admin_password: SecretString,
    /// Data-residency region of this cluster. Default `local`.
    #[serde(default = "default_region")]
    pub region: String,
    /// How the cluster's server is verified (registry, administrator,
    /// template, replication sweeps). Default `verify-full`.
    #[serde(default)]
    pub tls: tenantry_core::db::Tls,
}

/// Test-only: bootstrap RDS instances on this cluster instead of their
/// (emulated, unreachable) endpoints. The roles are expected to exist there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapOverride {
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_password: SecretString,
}

/// Everything the control plane needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Admin API listener. Default `127.0.0.1:8081`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token for the admin API and the console's sign-in: at least 32
    /// characters. Changing it ends every console session.
    pub admin_token: SecretString,
    /// Whether `admin_token` signs anyone in (the admin API's automation and
    /// break-glass actor `admin-token`, and the console's token sign-in).
    /// Default true; turn it off once staff sign in through `staff`.
    #[serde(default = "default_true_cp")]
    pub admin_token_enabled: bool,
    /// The operator's identity provider, signing staff in to the admin API
    /// by bearer token with the staff roles their groups map to. Default: none.
    #[serde(default)]
    pub staff: Option<crate::staff::StaffConfig>,
    /// A console session ends after this many minutes without a request.
    /// Default 30.
    #[serde(default = "default_console_idle")]
    pub console_idle_minutes: u32,
    /// The console's session cookie carries `Secure` (sent over HTTPS only).
    /// Default true; the dev stack, served over plain HTTP on loopback, turns
    /// it off. Over TLS it is set whatever this says.
    #[serde(default = "default_true_cp")]
    pub console_secure_cookie: bool,
    /// Key (any length; hashed to 256 bits) encrypting secrets the registry
    /// keeps, such as a legacy estate's password. Without it estates cannot be
    /// added. Default: none.
    #[serde(default)]
    pub secrets_key: Option<SecretString>,
    /// Registry database name on `cluster`. Default `tenantry`.
    #[serde(default = "default_registry_db")]
    pub registry_database: String,
    /// Template database on `cluster`, kept at the latest tenant schema; dedicated
    /// logical backends are copied from it. Default `tenantry_template`.
    #[serde(default = "default_template_db")]
    pub template_database: String,
    /// Seconds an operation worker's claim lasts without renewal; a crashed
    /// worker's operation is resumed by another after this. The runner renews
    /// it every third of this while a step runs. Default 10: a crash costs at
    /// most 10 s of a move's progress, never the tenant's writes (the cutover's
    /// fence has its own deadline), for one registry UPDATE per running
    /// operation every ~3 s.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Operation workers in this process; 0 serves the API only. Default 1.
    #[serde(default = "default_operation_workers")]
    pub operation_workers: usize,
    /// Role that owns schemas and runs migrations (not superuser, not BYPASSRLS).
    pub owner: Credentials,
    /// Role the app connects as; migrations grant it DML only.
    pub app_role: String,
    /// The tenant gate's keys, installed on every backend (at registration
    /// and by every migration run, `tenantry migrate`): `current` is the one
    /// apps sign with (`app.gate.current`), `previous` the one being rotated
    /// out. At least 32 characters each. Required.
    pub gate: tenantry_core::gate::GateKeys,
    /// How every backend's server is verified (owner pools, a move's
    /// sessions and its subscription, RDS bootstrap). Default `verify-full`.
    #[serde(default)]
    pub backend_tls: tenantry_core::db::Tls,
    /// How a legacy estate's server is verified. Default `verify-full`.
    #[serde(default)]
    pub estate_tls: tenantry_core::db::Tls,
    /// The app role's password, needed to create the role on new RDS
    /// instances. Default: none (RDS bootstrap then fails with a clear error).
    #[serde(default)]
    pub app_password: Option<SecretString>,
    /// SCRAM iterations of the app role's stored secret when Tenantry creates
    /// the role (on new RDS instances). Every connection start pays them in
    /// the app's CPU. Default 4,096 (PostgreSQL's). Below 4,096 the app
    /// password must be a generated secret of at least 24 characters: key
    /// stretching only protects passwords a person could guess
    /// (`tenantry_provisioner::scram`; `tenantry scram-secret` for roles made
    /// by hand).
    #[serde(default = "default_app_scram_iterations")]
    pub app_scram_iterations: u32,
    /// The RDS engine; absent (the default) disables it.
    #[serde(default)]
    pub rds: Option<tenantry_provisioner::RdsConfig>,
    /// Test-only endpoint mapping for the RDS bootstrap (see [`BootstrapOverride`]).
    #[serde(default)]
    pub rds_bootstrap_override: Option<BootstrapOverride>,
    /// The cluster holding the registry and the logical dedicated databases.
    pub cluster: ClusterConfig,
    /// Region for tenants created without one. Default `local`.
    #[serde(default = "default_region")]
    pub default_region: String,
    /// HTTP worker threads. Default 2.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Keep a final snapshot when an erasure deletes an RDS instance. Default
    /// false: an erasure leaves no copy behind.
    #[serde(default)]
    pub erase_final_snapshot: bool,
    /// Online moves (promote, move, demote).
    #[serde(default)]
    pub moves: MoveConfig,
    /// Usage metering, cost attribution and heavy-tenant advice.
    #[serde(default)]
    pub usage: UsageConfig,
    /// Cross-tier reports.
    #[serde(default)]
    pub reports: ReportConfig,
}

/// Usage metering and cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often app samples are folded into the hourly and daily rollups, ms.
    /// Default 10000.
    pub rollup_interval_ms: u64,
    /// How often every backend's rows and bytes per tenant are measured,
    /// seconds. Default 300.
    pub storage_interval_secs: u64,
    /// Hourly rollups older than this are deleted (daily ones are kept). Default 35.
    pub hourly_retention_days: i64,
    /// Unit prices per tier and engine; the first entry matching a tenant's tier
    /// and its backend's engine applies (`engine = "*"` matches any).
    pub prices: Vec<Price>,
    /// When a shared tenant is worth moving out (`GET /v1/recommendations`).
    pub recommend: RecommendConfig,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            rollup_interval_ms: 10_000,
            storage_interval_secs: 300,
            hourly_retention_days: 35,
            prices: vec![
                Price::new("shared", "*", 0.0, 0.40, 0.50, 0.25),
                Price::new("dedicated", "rds", 180.0, 0.20, 0.0, 0.115),
                Price::new("dedicated", "*", 25.0, 0.20, 0.10, 0.15),
            ],
            recommend: RecommendConfig::default(),
        }
    }
}

/// Unit prices (in any one currency) for tenants of one tier on one engine.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// `shared` or `dedicated`.
    pub tier: String,
    /// `logical`, `rds`, `external` or `*`.
    pub engine: String,
    /// Fixed price per month (a dedicated database's instance), prorated.
    #[serde(default)]
    pub base_per_month: f64,
    #[serde(default)]
    pub per_million_requests: f64,
    /// Per hour of database time spent serving the tenant's requests.
    #[serde(default)]
    pub per_db_hour: f64,
    /// Per GiB stored for a month (a shared tenant's share of its tables).
    #[serde(default)]
    pub per_gb_month: f64,
}

impl Price {
    fn new(tier: &str, engine: &str, base: f64, per_m: f64, per_db_hour: f64, per_gb: f64) -> Self {
        Self {
            tier: tier.into(),
            engine: engine.into(),
            base_per_month: base,
            per_million_requests: per_m,
            per_db_hour,
            per_gb_month: per_gb,
        }
    }
}

/// Thresholds of `GET /v1/recommendations`: a shared tenant is heavy when its
/// share of its pool's rows, bytes or database time reaches `share` and that
/// quantity is at least the matching floor (so a tiny pool's only tenant is not
/// "heavy").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendConfig {
    /// Default 0.4.
    pub share: f64,
    /// Default 100000 rows.
    pub min_rows: i64,
    /// Default 256 MiB.
    pub min_bytes: i64,
    /// Database time over the window, ms. Default 600000 (10 minutes a day).
    pub min_db_time_ms: i64,
    /// Window of database time considered, hours. Default 24.
    pub window_hours: i64,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        Self { share: 0.4, min_rows: 100_000, min_bytes: 256 << 20, min_db_time_ms: 600_000, window_hours: 24 }
    }
}

/// Cross-tier reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Longest a report waits for one backend before reporting it missing, ms.
    /// Default 3000.
    pub backend_timeout_ms: u64,
    /// Backends queried at once. Default 8.
    pub concurrency: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { backend_timeout_ms: 3000, concurrency: 8 }
    }
}

/// Online-move tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoveConfig {
    /// Longest write pause a cutover may cause: if in-flight transactions do not
    /// finish, or replication does not deliver the fence, within this bound the
    /// fence is lifted and the cutover retried later. Default 2000.
    pub fence_timeout_ms: u64,
    /// Replication lag (bytes of WAL behind) under which a cutover is tried.
    /// Default 16 MiB.
    pub max_lag_bytes: i64,
    /// Cutover tries per attempt of the operation before it backs off. Default 5.
    pub cutover_tries: u32,
    /// Rows deleted per statement when the source is purged. Default 5000.
    pub purge_batch: i64,
    /// Initial-copy speed used for the dry run's estimate, rows per second.
    /// Default 100000 (measured in `cargo bench --bench moves`).
    pub copy_rows_per_sec: u64,
}

impl Default for MoveConfig {
    fn default() -> Self {
        Self {
            fence_timeout_ms: 2000,
            max_lag_bytes: 16 << 20,
            cutover_tries: 5,
            purge_batch: 5000,
            copy_rows_per_sec: 100_000,
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_region() -> String {
    "local".into()
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_registry_db() -> String {
    "tenantry".into()
}
fn default_template_db() -> String {
    "tenantry_template".into()
}
fn default_operation_workers() -> usize {
    1
}
fn default_lease() -> u64 {
    10
}
fn default_app_scram_iterations() -> u32 {
    tenantry_provisioner::scram::DEFAULT_ITERATIONS
}
fn default_workers() -> usize {
    2
}

/// Fewest characters an app password needs for a SCRAM count below
/// PostgreSQL's: a generated secret (hex or base64 of 16+ bytes, Terraform's
/// `random_password` of 40 in `deploy/terraform/aws`).
pub const GENERATED_SECRET_CHARS: usize = 24;

/// `control_plane.app_scram_iterations`: 1 to 10,000,000, and below 4,096 only
/// for a password long enough to be a generated secret.
pub fn check_scram_iterations(iterations: u32, password: Option<&SecretString>) -> Result<(), String> {
    if !(1..=10_000_000).contains(&iterations) {
        return Err("control_plane.app_scram_iterations must be between 1 and 10000000".into());
    }
    let short = password.is_some_and(|p| p.expose_secret().chars().count() < GENERATED_SECRET_CHARS);
    if iterations < tenantry_provisioner::scram::DEFAULT_ITERATIONS && short {
        return Err(format!(
            "control_plane.app_scram_iterations below 4096 needs a password of at least \
             {GENERATED_SECRET_CHARS} characters (a generated secret): fewer iterations only help \
             where there is nothing to guess"
        ));
    }
    Ok(())
}

impl ControlPlaneConfig {
    /// Checks what serde cannot: ranges, names, and that test-only fields
    /// come with what they modify. A clear message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let named = |v: &str, field: &str| {
            if v.trim().is_empty() { Err(format!("control_plane.{field} must not be empty")) } else { Ok(()) }
        };
        named(self.admin_token.expose_secret(), "admin_token")?;
        if self.admin_token.expose_secret().chars().count() < MIN_ADMIN_TOKEN {
            return Err(format!("control_plane.admin_token must have at least {MIN_ADMIN_TOKEN} characters"));
        }
        if let Some(staff) = &self.staff {
            staff.validate()?;
        }
        if self.console_idle_minutes == 0 {
            return Err("control_plane.console_idle_minutes must be at least 1".into());
        }
        named(&self.registry_database, "registry_database")?;
        named(&self.template_database, "template_database")?;
        named(&self.owner.user, "owner.user")?;
        named(&self.app_role, "app_role")?;
        named(&self.cluster.admin_user, "cluster.admin_user")?;
        named(&self.default_region, "default_region")?;
        self.gate.validate("control_plane")?;
        if self.registry_database == self.template_database {
            return Err("control_plane.registry_database and template_database must differ".into());
        }
        if self.owner.user == self.app_role {
            return Err("control_plane.app_role must not be the owner role: it would bypass row-level security".into());
        }
        check_scram_iterations(self.app_scram_iterations, self.app_password.as_ref())?;
        if !(1..=3600).contains(&self.lease_secs) {
            return Err("control_plane.lease_secs must be between 1 and 3600".into());
        }
        if self.workers == 0 {
            return Err("control_plane.workers must be at least 1".into());
        }
        let m = &self.moves;
        if m.cutover_tries == 0 || m.purge_batch <= 0 {
            return Err("control_plane.moves: cutover_tries and purge_batch must be positive".into());
        }
        let u = &self.usage;
        if u.rollup_interval_ms == 0 || u.storage_interval_secs == 0 || u.hourly_retention_days <= 0 {
            return Err("control_plane.usage: intervals and hourly_retention_days must be positive".into());
        }
        if !(0.0..=1.0).contains(&u.recommend.share) {
            return Err("control_plane.usage.recommend.share must be between 0 and 1".into());
        }
        if self.reports.concurrency == 0 {
            return Err("control_plane.reports.concurrency must be at least 1".into());
        }
        // Test-only: it maps an emulator's unreachable endpoints onto a local
        // cluster, so it is refused unless the RDS API itself is on loopback.
        if self.rds_bootstrap_override.is_some() {
            let emulated = self.rds.as_ref().and_then(|r| r.endpoint_url.as_deref()).is_some_and(|u| {
                let host = u.split("://").nth(1).unwrap_or(u);
                ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host.starts_with(h))
            });
            if !emulated {
                return Err("control_plane.rds_bootstrap_override is test-only: it is accepted only with \
                    control_plane.rds.endpoint_url on loopback (an RDS emulator); remove it"
                    .into());
            }
        }
        Ok(())
    }
}

/// Shortest admin token accepted: a generated secret, not a password.
pub const MIN_ADMIN_TOKEN: usize = 32;

fn default_console_idle() -> u32 {
    30
}

fn default_true_cp() -> bool {
    true
}
