//! Typed control-plane configuration (validated on load by the binary).

use std::net::SocketAddr;

use secrecy::SecretString;
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
    /// Bearer token for the admin API.
    pub admin_token: SecretString,
    /// Registry database name on `cluster`. Default `tenantry`.
    #[serde(default = "default_registry_db")]
    pub registry_database: String,
    /// Template database on `cluster`, kept at the latest tenant schema; dedicated
    /// logical backends are copied from it. Default `tenantry_template`.
    #[serde(default = "default_template_db")]
    pub template_database: String,
    /// Seconds an operation worker's claim lasts without renewal; a crashed
    /// worker's operation is resumed by another after this. Default 30.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Operation workers in this process; 0 serves the API only. Default 1.
    #[serde(default = "default_operation_workers")]
    pub operation_workers: usize,
    /// Role that owns schemas and runs migrations (not superuser, not BYPASSRLS).
    pub owner: Credentials,
    /// Role the app connects as; migrations grant it DML only.
    pub app_role: String,
    /// The app role's password, needed to create the role on new RDS
    /// instances. Default: none (RDS bootstrap then fails with a clear error).
    #[serde(default)]
    pub app_password: Option<SecretString>,
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
    30
}
fn default_workers() -> usize {
    2
}
