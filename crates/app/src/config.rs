//! Typed app configuration (validated on load by the binary).

use std::net::SocketAddr;

use serde::Deserialize;
use tenantry_core::db::Credentials;
use tenantry_core::gate::GateKeys;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAddress {
    /// Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Default `tenantry`.
    #[serde(default = "default_registry_db")]
    pub database: String,
    /// How the registry's server is verified. Default `verify-full`.
    #[serde(default)]
    pub tls: tenantry_core::db::Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App API listener. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the registry is (read as the app role).
    pub registry: RegistryAddress,
    /// The app role: not owner, not superuser, not BYPASSRLS.
    pub credentials: Credentials,
    /// The tenant gate's key (`current` signs every tenant transaction's
    /// proof; at least 32 characters): the same as the control plane's
    /// `control_plane.gate.current`, which installs it on every backend.
    /// Required.
    pub gate: GateKeys,
    /// How backends' servers (and poolers in front of them) are verified.
    /// Default `verify-full`.
    #[serde(default)]
    pub backend_tls: tenantry_core::db::Tls,
    /// Connections the process may hold across all backends. Default 256.
    #[serde(default = "default_budget")]
    pub max_connections_total: u32,
    /// Connections per backend pool. Default 8; pools = total / per-pool.
    #[serde(default = "default_per_pool")]
    pub connections_per_pool: u32,
    /// How long a request waits for one of the `max_connections_total` slots
    /// before answering 503. Default 2000.
    #[serde(default = "default_wait")]
    pub connection_wait_ms: u64,
    /// An unused backend pool is closed after this many seconds. Default 300.
    #[serde(default = "default_idle")]
    pub pool_idle_secs: u64,
    /// Safety-net lifetime of cached keys and placements (NOTIFY invalidates
    /// them at once). Default 60.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
    /// An identity provider's key set is fetched again for a token with an
    /// unknown `kid` at most this often, per key set. Default 30.
    #[serde(default = "default_token_refetch")]
    pub token_key_refetch_secs: u64,
    /// HTTP worker threads. Default 2.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Benchmarks only, and only on a loopback `listen` (refused otherwise;
    /// said at start-up): mounts `GET /bench/baseline/assets/{id}?tenant=`, the
    /// same tenant-filtered query on one static pool with no routing, no RLS and
    /// no transaction (and, with `isolated`, `/bench/isolated/...`). Absent (the
    /// default): not mounted.
    #[serde(default)]
    pub baseline: Option<BaselineConfig>,
    /// LISTEN for registry changes (moves, revocations) and drop cached entries
    /// at once. Default true. Off, caches expire after `cache_ttl_secs` only and
    /// the backend's residency check alone catches a moved tenant (the tests
    /// use this to prove that safety net).
    #[serde(default = "default_true")]
    pub listen_for_changes: bool,
    /// How often per-tenant usage counts are appended to the registry, ms.
    /// Default 5000.
    #[serde(default = "default_usage_flush")]
    pub usage_flush_ms: u64,
    /// Background jobs run by this process (routed per tenant like requests).
    #[serde(default)]
    pub jobs: JobsConfig,
}

/// Routed background jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// How often the overdue-maintenance job visits every tenant, seconds;
    /// 0 disables it in this process. Default 60.
    pub overdue_interval_secs: u64,
    /// Tenants visited at once. Default 4.
    pub concurrency: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { overdue_interval_secs: 60, concurrency: 4 }
    }
}

/// How often usage counts are flushed to the registry unless configured, ms.
pub const DEFAULT_USAGE_FLUSH_MS: u64 = 5000;

fn default_usage_flush() -> u64 {
    DEFAULT_USAGE_FLUSH_MS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    pub host: String,
    pub port: u16,
    pub database: String,
    /// A role that reads the table without row-level security (e.g. a superuser).
    pub credentials: Credentials,
    /// The app role: mounts `GET /bench/isolated/assets/{id}?tenant=&epoch=`,
    /// the routed read's exact statement (gate, forced RLS) on one static pool,
    /// with no routing; it splits the routed path's cost into PostgreSQL's
    /// isolation work and the app's routing. Absent: not mounted.
    #[serde(default)]
    pub isolated: Option<Credentials>,
}

impl AppConfig {
    /// Configuration problems a person must fix, or `Ok`.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections_per_pool == 0 || self.connections_per_pool > self.max_connections_total {
            return Err("app.connections_per_pool must be between 1 and app.max_connections_total".into());
        }
        if self.workers == 0 {
            return Err("app.workers must be at least 1".into());
        }
        if self.baseline.is_some() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "app.baseline mounts the benchmark's unauthenticated, RLS-free routes (/bench/...): only on a loopback \
                 listener, not {}",
                self.listen
            ));
        }
        self.gate.validate("app")
    }
}

fn default_true() -> bool {
    true
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_registry_db() -> String {
    "tenantry".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_budget() -> u32 {
    256
}
fn default_per_pool() -> u32 {
    8
}
fn default_wait() -> u64 {
    2000
}
fn default_idle() -> u64 {
    300
}
fn default_cache_ttl() -> u64 {
    60
}
fn default_token_refetch() -> u64 {
    30
}
fn default_workers() -> usize {
    2
}
