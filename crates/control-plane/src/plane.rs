//! The control plane's handle: the registry pool, the configuration, the
//! provisioners and the owner-role pools to backends. Every action is a
//! method on it, in the file named after what it acts on.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use tenantry_core::db::{PoolSizing, lazy_pool};
use tenantry_provisioner::{DatabaseAddress, LogicalProvisioner, RdsProvisioner};

use crate::config::ControlPlaneConfig;
use crate::error::Error;
use crate::usage::model::HeavyTenants;

/// Owner-role pools to backends serve migrations and residency writes, one
/// statement at a time per backend: one connection each.
const BACKEND_POOL_CONNECTIONS: u32 = 1;
/// Owner pools idle this long are dropped (and their connection closed).
const BACKEND_POOL_IDLE: Duration = Duration::from_secs(30);
/// At most this many owner pools (so connections) at once: 64 stays well under a
/// cluster's max_connections even with hundreds of dedicated databases on it.
const MAX_BACKEND_POOLS: u64 = 64;
/// Registry connections of one control-plane process: API handlers, workers
/// and the usage loop share them.
const REGISTRY_CONNECTIONS: u32 = 8;

/// Console sign-in attempts one client address may make in [`SIGN_IN_WINDOW`].
pub const SIGN_IN_ATTEMPTS: u32 = 10;
pub const SIGN_IN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Client addresses whose attempts are counted at once (a flood from more
/// addresses than this forgets the oldest, which then start over).
const SIGN_IN_CLIENTS: u64 = 100_000;

pub struct ControlPlane {
    pub(crate) worker_wakeup: tokio::sync::Notify,
    /// Operation worker loops running in this process (for `/readyz`).
    pub(crate) workers_running: std::sync::atomic::AtomicUsize,
    pub(crate) rds: Option<RdsProvisioner>,
    registry: DatabaseConnection,
    cfg: ControlPlaneConfig,
    provisioner: LogicalProvisioner,
    backend_pools: Cache<Uuid, DatabaseConnection>,
    /// The console's heavy-tenant badges (see `heavy_tenants_cached`).
    pub(crate) heavy: Cache<(), Arc<HeavyTenants>>,
    /// Console sign-in attempts per client address in the current minute.
    pub(crate) sign_in_attempts: Cache<std::net::IpAddr, Arc<std::sync::atomic::AtomicU32>>,
    /// Refused console sign-ins (a metric).
    pub(crate) sign_ins_refused: std::sync::atomic::AtomicU64,
    /// Staff tokens' checker, when the operator's identity provider is configured.
    pub(crate) staff: Option<crate::staff::Staff>,
}

impl ControlPlane {
    /// Connects to the registry (lazily) and to the cluster's administrator.
    pub(crate) async fn connect(cfg: ControlPlaneConfig) -> Result<Self, Error> {
        let c = &cfg.cluster;
        let registry = lazy_pool(
            &c.host,
            c.port,
            &cfg.registry_database,
            &cfg.owner,
            "tenantry-control-plane",
            PoolSizing { max_connections: REGISTRY_CONNECTIONS, tls: c.tls.clone(), ..PoolSizing::default() },
        );
        let tls = c.tls.clone();
        let provisioner =
            LogicalProvisioner::connect(&c.host, c.port, &c.admin_user, &c.admin_password, |o| tls.apply(o)).await?;
        let backend_pools = Cache::builder()
            .max_capacity(MAX_BACKEND_POOLS)
            .time_to_idle(BACKEND_POOL_IDLE)
            // No explicit close on eviction: a migration may still hold the pool;
            // it closes when its last handle drops.
            .build();
        let rds = match &cfg.rds {
            Some(r) => Some(RdsProvisioner::new(r.clone()).await),
            None => None,
        };
        let heavy = Cache::builder().max_capacity(1).time_to_live(crate::usage::model::HEAVY_TTL).build();
        Ok(Self {
            staff: cfg.staff.clone().map(crate::staff::Staff::new),
            worker_wakeup: tokio::sync::Notify::new(),
            workers_running: Default::default(),
            rds,
            registry,
            cfg,
            provisioner,
            backend_pools,
            heavy,
            sign_in_attempts: Cache::builder().max_capacity(SIGN_IN_CLIENTS).time_to_live(SIGN_IN_WINDOW).build(),
            sign_ins_refused: Default::default(),
        })
    }

    pub(crate) fn provisioner(&self) -> &LogicalProvisioner {
        &self.provisioner
    }

    pub fn registry(&self) -> &DatabaseConnection {
        &self.registry
    }

    pub fn config(&self) -> &ControlPlaneConfig {
        &self.cfg
    }

    pub(crate) fn rds_engine(&self) -> Result<&RdsProvisioner, Error> {
        self.rds.as_ref().ok_or_else(|| Error::invalid("engine_unavailable", "the rds engine is not configured"))
    }

    /// Wakes idle workers of this process: an operation was queued or cancelled.
    pub(crate) fn wake_workers(&self) {
        self.worker_wakeup.notify_waiters();
    }

    pub(crate) async fn owner_pool(&self, id: Uuid, addr: &DatabaseAddress) -> DatabaseConnection {
        self.backend_pools
            .get_with(id, async {
                lazy_pool(
                    &addr.host,
                    addr.port,
                    &addr.database,
                    &self.cfg.owner,
                    "tenantry-control-plane",
                    PoolSizing {
                        max_connections: BACKEND_POOL_CONNECTIONS,
                        idle_timeout: BACKEND_POOL_IDLE,
                        tls: self.cfg.backend_tls.clone(),
                        ..PoolSizing::default()
                    },
                )
            })
            .await
    }
}
