//! Resolves a request to its tenant's backend. Three moka caches:
//! API-key hash -> tenant, tenant -> route (placement and address), (backend,
//! statement timeout) -> pool. Key and route entries are dropped the moment the registry announces a
//! change (LISTEN `tenantry_registry`); a stale route that slips through is
//! still caught by `tenantry_enter`'s residency check, which makes
//! [`Resolver::enter`] re-resolve and retry once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use sea_orm::sqlx::Postgres;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::PgListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use uuid::Uuid;

use tenantry_core::TenantStatus;
use tenantry_core::db::{PoolSizing, lazy_pool};
use tenantry_core::registry::{BackendAddress, KeyOwner, RegistryReader, Route};
use tenantry_core::web::ApiError;

use crate::config::AppConfig;
use sea_orm::Select;
use tenantry_core::entities::TenantScoped;

use crate::budget::{BackendPool, OpenCap, Slot};
use crate::gate::Gate;
use crate::scope::{EnterError, Entry, Pooled, TenantTx, read_once, read_pooled, scoped};
use crate::usage::UsageMeter;

/// Registry notifications channel (see migrations/registry).
const CHANNEL: &str = "tenantry_registry";
/// Most API keys kept in memory.
const MAX_CACHED_KEYS: u64 = 100_000;
/// Unknown keys remembered (a flood of one forged key costs one registry
/// query), and for how long: a key is never presented before it is created
/// (its 160 random bits are not guessed), so remembering briefly misses
/// nothing.
const MAX_UNKNOWN_KEYS: u64 = 10_000;
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(10);
/// Registry lookups of uncached keys at once: a flood of distinct forged keys
/// holds at most these of the registry pool's 8 connections, so route lookups
/// of real tenants always find one. A lookup waits this long for its turn,
/// then answers 503.
const KEY_LOOKUPS: usize = 4;
const KEY_LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Most tenant routes kept in memory.
const MAX_CACHED_ROUTES: u64 = 100_000;
/// Pools kept (an idle pool holds no connection once the cap closed them;
/// a pool unused for `pool_idle_secs` goes).
const MAX_POOLS: u64 = 20_000;
/// A backend connection idle this long is checked (a round trip) before a
/// request gets it; one in steady use is not (see `PoolSizing::check_idle_after`).
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);
/// Seconds a client is told to wait when a backend is unreachable.
const RETRY_AFTER_SECS: u64 = 1;

/// Route cache counters, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// API keys looked up in the registry (not cached, not known unknown).
    pub key_misses: u64,
    pub route_misses: u64,
    pub notifications: u64,
    pub stale_routes: u64,
    /// Token issuers looked up in the registry (not cached, not known unknown).
    pub issuer_misses: u64,
}

struct Inner {
    gates: crate::limits::Gates,
    usage: Arc<UsageMeter>,
    jobs: Arc<crate::jobs::JobStats>,
    /// Cache hits and misses: keys, then routes.
    key_hits: AtomicU64,
    key_misses: AtomicU64,
    route_hits: AtomicU64,
    route_misses: AtomicU64,
    /// Registry notifications applied (each drops cached keys or routes).
    notifications: AtomicU64,
    /// The registry LISTEN connection is up (or being re-established now).
    listening: std::sync::atomic::AtomicBool,
    /// Requests that found their cached route stale at the backend (TR001)
    /// and re-resolved: what NOTIFY exists to keep at zero.
    stale_routes: AtomicU64,
    registry: RegistryReader,
    /// Tenant users' bearer tokens.
    tokens: crate::tokens::Tokens,
    /// Their sign-ins, appended to the registry with the usage counts.
    signins: Arc<crate::signins::SignInMeter>,
    cfg: AppConfig,
    keys: Cache<[u8; 32], Arc<KeyOwner>>,
    /// Key hashes the registry did not know, briefly (see [`UNKNOWN_KEY_TTL`]).
    unknown_keys: Cache<[u8; 32], ()>,
    /// Turns of the registry lookups of uncached keys.
    key_lookups: Arc<Semaphore>,
    routes: Cache<Uuid, Arc<Route>>,
    pools: Cache<PoolKey, BackendPool>,
    /// One permit per connection the process may use at once, across every
    /// backend: requests wait (bounded) for a slot instead of opening more.
    budget: Arc<Semaphore>,
    /// The same number as a strict cap on open connections, idle ones included.
    cap: Arc<OpenCap>,
    /// The tenant gate's key and each connection's gate state.
    gate: Arc<Gate>,
}

/// One pool per backend and tenant statement timeout: the timeout is the
/// session default of every connection in the pool (set in the startup
/// packet), so every statement a tenant runs, single-statement reads
/// included, runs under its own timeout at no extra round trip. Tenants on a
/// tier default share one pool per backend; an override gets its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    backend: Uuid,
    /// The pooler in front of it, if any (a change of pooler is a new pool).
    pooler: Option<(String, u16)>,
    statement_timeout_ms: Option<u32>,
}

/// Cheap to clone; one per process.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
    _listener: Arc<ListenerTask>,
}

/// The resolver's background tasks (registry listener, usage flusher),
/// stopped when the last clone of the resolver goes.
struct ListenerTask(Vec<JoinHandle<()>>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Longest a request waits for a fenced tenant (a move's cutover) before a
/// retryable 503; above the control plane's default fence bound of 2 s.
const FENCE_WAIT: Duration = Duration::from_millis(2500);
/// How often a waiting request looks again.
const FENCE_POLL: Duration = Duration::from_millis(20);

impl Resolver {
    /// Connects to the registry and starts listening for invalidations.
    pub async fn start(cfg: AppConfig) -> Result<Self, sea_orm::DbErr> {
        let r = &cfg.registry;
        let registry = lazy_pool(
            &r.host,
            r.port,
            &r.database,
            &cfg.credentials,
            "tenantry-app-registry",
            PoolSizing { max_connections: 8, tls: r.tls.clone(), ..PoolSizing::default() },
        );
        let ttl = Duration::from_secs(cfg.cache_ttl_secs);
        let cap = Arc::new(OpenCap::new(cfg.max_connections_total as usize));
        let closing = cap.clone();
        let lookups = Arc::new(Semaphore::new(KEY_LOOKUPS));
        let inner = Arc::new(Inner {
            registry: RegistryReader::new(registry.clone()),
            tokens: crate::tokens::Tokens::new(
                RegistryReader::new(registry.clone()),
                ttl,
                Duration::from_secs(cfg.token_key_refetch_secs),
                lookups.clone(),
            ),
            keys: Cache::builder().max_capacity(MAX_CACHED_KEYS).time_to_live(ttl).build(),
            unknown_keys: Cache::builder().max_capacity(MAX_UNKNOWN_KEYS).time_to_live(UNKNOWN_KEY_TTL).build(),
            key_lookups: lookups,
            routes: Cache::builder().max_capacity(MAX_CACHED_ROUTES).time_to_live(ttl).build(),
            pools: Cache::builder()
                .max_capacity(MAX_POOLS)
                .time_to_idle(Duration::from_secs(cfg.pool_idle_secs))
                .eviction_listener(move |key: Arc<PoolKey>, pool: BackendPool, cause| {
                    // Close at once so idle connections do not outlive the budget:
                    // close() lets checked-out connections finish first, and a
                    // request that looked the pool up just before sees PoolClosed
                    // and looks again (see `on_backend`).
                    tracing::info!(backend = %key.backend, timeout_ms = ?key.statement_timeout_ms, ?cause, "closing backend pool");
                    // Its connections count against the cap until they are closed.
                    closing.closing(pool.pg().clone());
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let _ = pool.db.close().await;
                        });
                    }
                })
                .build(),
            budget: Arc::new(Semaphore::new(cfg.max_connections_total as usize)),
            cap,
            gate: Arc::new(Gate::new(
                cfg.gate.signer(),
                u64::from(cfg.max_connections_total),
                Duration::from_secs(cfg.pool_idle_secs.max(60)),
            )),
            gates: Default::default(),
            usage: Default::default(),
            signins: Default::default(),
            jobs: Default::default(),
            key_hits: AtomicU64::new(0),
            key_misses: AtomicU64::new(0),
            route_hits: AtomicU64::new(0),
            route_misses: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            stale_routes: AtomicU64::new(0),
            listening: std::sync::atomic::AtomicBool::new(false),
            cfg,
        });
        let mut tasks = vec![tokio::spawn(crate::usage::run_flusher(
            inner.usage.clone(),
            inner.signins.clone(),
            registry.clone(),
            Duration::from_millis(inner.cfg.usage_flush_ms.max(100)),
        ))];
        if inner.cfg.listen_for_changes {
            let mut listener = PgListener::connect_with(registry.get_postgres_connection_pool())
                .await
                .map_err(|e| sea_orm::DbErr::Custom(format!("LISTEN on the registry: {e}")))?;
            listener
                .listen(CHANNEL)
                .await
                .map_err(|e| sea_orm::DbErr::Custom(format!("LISTEN on the registry: {e}")))?;
            inner.listening.store(true, Ordering::SeqCst);
            tasks.push(tokio::spawn(listen(listener, inner.clone())));
        }
        Ok(Self { inner, _listener: Arc::new(ListenerTask(tasks)) })
    }

    /// The tenant owning a presented API key (401 when unknown or revoked).
    pub async fn authenticate(&self, presented: &str) -> Result<Arc<KeyOwner>, ApiError> {
        let unauthorized = || ApiError::unauthorized("missing, unknown or revoked API key");
        let hash = tenantry_core::api_key::hash_presented(presented).ok_or_else(unauthorized)?;
        if let Some(owner) = self.inner.keys.get(&hash) {
            self.inner.key_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(owner);
        }
        if self.inner.unknown_keys.contains_key(&hash) {
            return Err(unauthorized());
        }
        self.inner.key_misses.fetch_add(1, Ordering::Relaxed);
        let _turn = match tokio::time::timeout(KEY_LOOKUP_WAIT, self.inner.key_lookups.clone().acquire_owned()).await {
            Ok(Ok(turn)) => turn,
            _ => {
                return Err(ApiError::unavailable(
                    "busy",
                    "too many unknown API keys are being checked; retry shortly",
                    RETRY_AFTER_SECS,
                ));
            }
        };
        let Some(owner) = self.inner.registry.key_owner(&hash).await? else {
            self.inner.unknown_keys.insert(hash, ());
            return Err(unauthorized());
        };
        let owner = Arc::new(owner);
        self.inner.keys.insert(hash, owner.clone());
        Ok(owner)
    }

    /// The person a bearer token signs in, and their tenant (`wanted`: the
    /// request's `X-Tenant`, for a token naming several).
    pub async fn sign_in(
        &self,
        token: &str,
        wanted: Option<&str>,
    ) -> Result<(Arc<KeyOwner>, Arc<crate::tokens::Person>), ApiError> {
        let (owner, person, fresh) = self.inner.tokens.sign_in(token, wanted).await?;
        if fresh {
            self.inner.signins.record(&person);
        }
        Ok((owner, person))
    }

    async fn route(&self, tenant_id: Uuid) -> Result<Arc<Route>, ApiError> {
        if let Some(route) = self.inner.routes.get(&tenant_id) {
            self.inner.route_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(route);
        }
        self.inner.route_misses.fetch_add(1, Ordering::Relaxed);
        let Some(route) = self.inner.registry.route(tenant_id).await? else {
            // No placement: not placed yet, or erased (the placement goes last).
            return Err(if self.inner.registry.erased(tenant_id).await? {
                ApiError::not_found("tenant")
            } else {
                ApiError::unavailable(
                    "tenant_not_placed",
                    "the tenant has no backend yet; retry shortly",
                    RETRY_AFTER_SECS,
                )
            });
        };
        let route = Arc::new(route);
        self.inner.routes.insert(tenant_id, route.clone());
        Ok(route)
    }

    /// The pool for `backend` at a statement timeout, marked used now.
    fn pool(&self, backend: &BackendAddress, statement_timeout_ms: Option<u32>) -> BackendPool {
        let cfg = &self.inner.cfg;
        let key = PoolKey { backend: backend.id, pooler: backend.pooler.clone(), statement_timeout_ms };
        let pool = self.inner.pools.get_with(key, || {
            let (host, port) = backend.pooler.clone().unwrap_or_else(|| (backend.host.clone(), backend.port));
            BackendPool::new(
                lazy_pool(
                    &host,
                    port,
                    &backend.database,
                    &cfg.credentials,
                    "tenantry-app",
                    PoolSizing {
                        max_connections: cfg.connections_per_pool,
                        statement_timeout_ms,
                        pooled: backend.pooler.is_some(),
                        check_idle_after: Some(CHECK_IDLE_AFTER),
                        generic_plans: true,
                        tls: cfg.backend_tls.clone(),
                        ..PoolSizing::default()
                    },
                ),
                backend.pooler.is_none(),
            )
        });
        pool.touch();
        pool
    }

    /// Opens a transaction on the tenant's backend and enters the tenant: the
    /// first statement takes the tenant's shared fence lock, checks residency at
    /// the cached epoch and sets `app.tenant_id` for this transaction only.
    pub async fn enter(&self, tenant: &KeyOwner) -> Result<TenantTx, ApiError> {
        let tenant_id = tenant.tenant_id;
        let (tx, slot) = self
            .on_backend(tenant, move |conn, entry| {
                let gate = self.inner.gate.clone();
                async move { TenantTx::begin(conn, tenant_id, entry, &gate).await }
            })
            .await?;
        Ok(tx.holding(slot))
    }

    /// Admits a request of `owner` under its rate and concurrency limits.
    pub fn admit(&self, owner: &KeyOwner) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        self.inner.gates.admit(owner)
    }

    /// A connection slot from the global budget, waiting at most
    /// `connection_wait_ms`.
    async fn slot(&self, tenant: Uuid) -> Result<Slot, ApiError> {
        let wait = Duration::from_millis(self.inner.cfg.connection_wait_ms);
        match tokio::time::timeout(wait, self.inner.budget.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot::new(permit, tenant, self.inner.usage.clone())),
            _ => Err(budget_exhausted(&self.inner.cfg)),
        }
    }

    /// Prometheus text for the resolver's pools, connections and budget.
    /// Ready when the registry answers and (with `listen_for_changes`) the
    /// LISTEN connection is up; otherwise why not.
    pub async fn readiness(&self) -> Result<(), String> {
        self.inner.registry.ping().await?;
        if self.inner.cfg.listen_for_changes && !self.inner.listening.load(Ordering::SeqCst) {
            return Err("the registry's LISTEN connection is down (reconnecting)".into());
        }
        Ok(())
    }

    /// The route cache's counters (also in `/metrics`).
    pub fn cache_stats(&self) -> CacheStats {
        let inner = &self.inner;
        CacheStats {
            key_misses: inner.key_misses.load(Ordering::Relaxed),
            route_misses: inner.route_misses.load(Ordering::Relaxed),
            notifications: inner.notifications.load(Ordering::Relaxed),
            stale_routes: inner.stale_routes.load(Ordering::Relaxed),
            issuer_misses: inner.tokens.issuer_lookups(),
        }
    }

    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let inner = &self.inner;
        inner.pools.run_pending_tasks();
        let open = self.connections_open();
        let mut idle = 0usize;
        // A backend may have a pool per statement timeout: one series per
        // backend, and only for backends with a connection open, so the series
        // are bounded by the budget whatever the fleet's size.
        let mut per_backend = std::collections::BTreeMap::<Uuid, u32>::new();
        for (key, pool) in inner.pools.iter() {
            let pool = pool.pg();
            idle += pool.num_idle();
            if pool.size() > 0 {
                *per_backend.entry(key.backend).or_default() += pool.size();
            }
        }
        let _ = writeln!(
            out,
            "# HELP tenantry_app_token_issuer_lookups_total Token issuers looked up in the registry (not cached)."
        );
        let _ = writeln!(out, "# TYPE tenantry_app_token_issuer_lookups_total counter");
        let _ = writeln!(out, "tenantry_app_token_issuer_lookups_total {}", inner.tokens.issuer_lookups());
        let _ =
            writeln!(out, "# HELP tenantry_app_sign_ins_pending People with sign-ins not yet flushed to the registry.");
        let _ = writeln!(out, "# TYPE tenantry_app_sign_ins_pending gauge");
        let _ = writeln!(out, "tenantry_app_sign_ins_pending {}", inner.signins.pending());
        let _ = writeln!(out, "# HELP tenantry_app_sign_ins_dropped_total Sign-ins not recorded (too many pending).");
        let _ = writeln!(out, "# TYPE tenantry_app_sign_ins_dropped_total counter");
        let _ = writeln!(out, "tenantry_app_sign_ins_dropped_total {}", inner.signins.dropped());
        let _ = writeln!(out, "# HELP tenantry_app_backend_pools Open backend connection pools.");
        let _ = writeln!(out, "# TYPE tenantry_app_backend_pools gauge");
        let _ = writeln!(out, "tenantry_app_backend_pools {}", inner.pools.entry_count());
        let _ = writeln!(out, "# HELP tenantry_app_backend_connections Open connections per backend.");
        let _ = writeln!(out, "# TYPE tenantry_app_backend_connections gauge");
        for (id, n) in per_backend {
            let _ = writeln!(out, "tenantry_app_backend_connections{{backend=\"{id}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tenantry_app_connections_open Open connections across all backend pools (capped by the budget)."
        );
        let _ = writeln!(out, "# TYPE tenantry_app_connections_open gauge");
        let _ = writeln!(out, "tenantry_app_connections_open {open}");
        let _ = writeln!(out, "# HELP tenantry_app_connections_idle Idle connections across all backend pools.");
        let _ = writeln!(out, "# TYPE tenantry_app_connections_idle gauge");
        let _ = writeln!(out, "tenantry_app_connections_idle {idle}");
        let _ = writeln!(out, "# HELP tenantry_app_connections_in_use Connection slots taken from the budget.");
        let _ = writeln!(out, "# TYPE tenantry_app_connections_in_use gauge");
        let _ = writeln!(out, "tenantry_app_connections_in_use {}", self.connections_in_use());
        let _ = writeln!(out, "# HELP tenantry_app_connection_budget Connection slots this process may use.");
        let _ = writeln!(out, "# TYPE tenantry_app_connection_budget gauge");
        let _ = writeln!(out, "tenantry_app_connection_budget {}", inner.cfg.max_connections_total);
        let cache = |name: &str, hits: &AtomicU64, misses: &AtomicU64| {
            format!(
                "tenantry_app_cache_requests_total{{cache=\"{name}\",result=\"hit\"}} {}\n\
                 tenantry_app_cache_requests_total{{cache=\"{name}\",result=\"miss\"}} {}\n",
                hits.load(Ordering::Relaxed),
                misses.load(Ordering::Relaxed)
            )
        };
        let _ = writeln!(out, "# HELP tenantry_app_cache_requests_total Resolver cache lookups by cache and result.");
        let _ = writeln!(out, "# TYPE tenantry_app_cache_requests_total counter");
        out.push_str(&cache("api_key", &inner.key_hits, &inner.key_misses));
        out.push_str(&cache("route", &inner.route_hits, &inner.route_misses));
        let stats = self.cache_stats();
        let _ = writeln!(
            out,
            "# HELP tenantry_app_registry_notifications_total Registry notifications applied to the caches."
        );
        let _ = writeln!(out, "# TYPE tenantry_app_registry_notifications_total counter");
        let _ = writeln!(out, "tenantry_app_registry_notifications_total {}", stats.notifications);
        let _ = writeln!(
            out,
            "# HELP tenantry_app_stale_routes_total Requests whose cached route the backend refused as stale."
        );
        let _ = writeln!(out, "# TYPE tenantry_app_stale_routes_total counter");
        let _ = writeln!(out, "tenantry_app_stale_routes_total {}", stats.stale_routes);
        let _ = writeln!(
            out,
            "# HELP tenantry_app_usage_tenants_pending Tenants with usage not yet flushed to the registry."
        );
        let _ = writeln!(out, "# TYPE tenantry_app_usage_tenants_pending gauge");
        let _ = writeln!(out, "tenantry_app_usage_tenants_pending {}", inner.usage.pending_tenants());
        let jobs = &inner.jobs;
        for (name, help, v) in [
            ("tenantry_app_job_runs_total", "Completed passes of the overdue-maintenance job.", &jobs.runs),
            (
                "tenantry_app_job_issues_opened_total",
                "Asset issues opened by the overdue-maintenance job.",
                &jobs.issues_opened,
            ),
            (
                "tenantry_app_job_tenant_failures_total",
                "Tenants a job pass skipped after an error.",
                &jobs.tenant_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let (rate, concurrency) = inner.gates.rejections();
        let _ = writeln!(out, "# HELP tenantry_app_rejected_requests_total Requests turned away by a tenant limit.");
        let _ = writeln!(out, "# TYPE tenantry_app_rejected_requests_total counter");
        let _ = writeln!(out, "tenantry_app_rejected_requests_total{{limit=\"rate\"}} {rate}");
        let _ = writeln!(out, "tenantry_app_rejected_requests_total{{limit=\"concurrency\"}} {concurrency}");
        out
    }

    /// Connections in use now, across all backends.
    pub fn connections_in_use(&self) -> usize {
        self.inner.cfg.max_connections_total as usize - self.inner.budget.available_permits()
    }

    /// One tenant-scoped query in one round trip (see [`crate::scope::read_once`]);
    /// `shape` adds conditions, order and limits to the already-scoped select.
    pub async fn read<E: TenantScoped>(
        &self,
        tenant: &KeyOwner,
        shape: impl Fn(Select<E>) -> Select<E> + Sync,
    ) -> Result<Vec<E::Model>, ApiError> {
        let tenant_id = tenant.tenant_id;
        let select = || shape(scoped::<E>(tenant_id));
        let (rows, _slot) = self
            .on_backend(tenant, |conn, entry| {
                let Entry { epoch, pooled, schema_version } = entry;
                let gate = &self.inner.gate;
                async move {
                    match pooled {
                        // Through a pooler: one simple-protocol message.
                        Some(pooled) => {
                            read_pooled(conn, (tenant_id, epoch), pooled, select, schema_version, gate).await
                        }
                        None => read_once(conn, (tenant_id, epoch), select, schema_version, gate).await,
                    }
                }
            })
            .await?;
        Ok(rows)
    }

    /// Runs `work` against the tenant's backend at its cached epoch, holding a
    /// slot of the connection budget (returned with the result). If the backend
    /// says the tenant is not resident there, the cached route is dropped and
    /// `work` retried against the fresh placement; while the tenant stays fenced
    /// (a move's cutover) the request waits, holding neither a connection nor a
    /// budget slot, for at most [`FENCE_WAIT`], then gets a retryable 503.
    /// (`work` returns a future that owns what it needs, so callers' futures
    /// stay `Send` for spawned jobs.)
    async fn on_backend<T, F>(
        &self,
        tenant: &KeyOwner,
        work: impl Fn(PoolConnection<Postgres>, Entry) -> F,
    ) -> Result<(T, Slot), ApiError>
    where
        F: std::future::Future<Output = Result<T, EnterError>>,
    {
        let deadline = tokio::time::Instant::now() + FENCE_WAIT;
        let mut not_resident = false;
        let mut evicted = 0;
        let mut redirects = 0;
        let mut failed: Option<(Uuid, String)> = None;
        loop {
            let route = self.route(tenant.tenant_id).await?;
            // An erasure fences the tenant on its backend before it deletes a
            // row; the fresh route read after that refusal says why: gone.
            // (Erasure is terminal: the cached route keeps answering 404.)
            if matches!(route.tenant_status, TenantStatus::Erasing | TenantStatus::Erased) {
                return Err(ApiError::not_found("tenant"));
            }
            if let Some((backend, e)) = &failed
                && *backend == route.backend.id
            {
                return Err(backend_down(&route, e));
            }
            if !tenantry_core::supported_tenant_schema().contains(&route.schema_version) {
                tracing::warn!(
                    backend = %route.backend.id,
                    schema_version = route.schema_version,
                    supported = ?tenantry_core::supported_tenant_schema(),
                    "refusing to route: backend schema version not supported by this build"
                );
                return Err(ApiError::unavailable(
                    "schema_unsupported",
                    "the tenant's database is at a schema version this server does not support; retry shortly",
                    RETRY_AFTER_SECS,
                ));
            }
            let mut slot = self.slot(tenant.tenant_id).await?;
            let pool = self.pool(&route.backend, tenant.limits.statement_timeout_ms);
            slot.on(&pool);
            let entry = Entry {
                epoch: route.placement.epoch,
                pooled: route
                    .backend
                    .pooler
                    .as_ref()
                    .map(|_| Pooled { statement_timeout_ms: tenant.limits.statement_timeout_ms }),
                schema_version: route.schema_version,
            };
            let wait = Duration::from_millis(self.inner.cfg.connection_wait_ms);
            let attempt = match self.inner.cap.acquire(pool.pg(), || self.live_pools(), wait).await {
                Ok(conn) => work(conn, entry).await,
                Err(sea_orm::sqlx::Error::PoolTimedOut) => return Err(budget_exhausted(&self.inner.cfg)),
                Err(e) => Err(crate::scope::classify(e)),
            };
            match attempt {
                Ok(t) => {
                    tracing::Span::current().record("backend", tracing::field::display(route.backend.id));
                    return Ok((t, slot));
                }
                Err(EnterError::NotResident) => {
                    drop(slot);
                    self.inner.routes.invalidate(&tenant.tenant_id);
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    // The first miss is a stale cache (re-resolve at once); misses after
                    // it mean the tenant is fenced: wait for the flip.
                    if not_resident {
                        tokio::time::sleep(FENCE_POLL).await;
                    } else {
                        self.inner.stale_routes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(tenant_id = %tenant.tenant_id, epoch = route.placement.epoch, "stale placement; re-resolving");
                    }
                    not_resident = true;
                }
                // A sealed source names the tenant's new home: go there at once,
                // even before the registry's flip says so (the control plane may
                // have died between the seal and the flip).
                Err(EnterError::Moved { backend, epoch }) => {
                    drop(slot);
                    self.inner.stale_routes.fetch_add(1, Ordering::Relaxed);
                    if tokio::time::Instant::now() >= deadline || redirects >= 3 {
                        break;
                    }
                    redirects += 1;
                    match self.inner.registry.route_to(tenant.tenant_id, backend, epoch).await? {
                        Some(next) if next.placement.epoch > route.placement.epoch => {
                            tracing::info!(tenant_id = %tenant.tenant_id, %backend, epoch, "tenant moved; following the sealed source");
                            self.inner.routes.insert(tenant.tenant_id, Arc::new(next));
                        }
                        _ => self.inner.routes.invalidate(&tenant.tenant_id),
                    }
                }
                // Evicted (so removed from the cache) between lookup and use: the
                // next lookup makes a new pool.
                Err(EnterError::PoolClosed) if evicted < 3 => evicted += 1,
                Err(EnterError::PoolClosed) => break,
                Err(EnterError::Backend(e)) => {
                    if failed.is_some() {
                        return Err(backend_down(&route, &e));
                    }
                    // Still the tenant's home? The registry says; if it moved, try there.
                    self.inner.routes.invalidate(&tenant.tenant_id);
                    failed = Some((route.backend.id, e));
                }
                // A statement timeout is a 503 `statement_timeout`, anything else a 500.
                Err(EnterError::Query(e)) => return Err(e.into()),
                Err(EnterError::Gate) => {
                    tracing::error!(
                        backend = %route.backend.id,
                        "the backend refused the tenant gate's proof after the gate was opened anew: \
                         is this app's gate key installed there (`tenantry migrate` installs the control plane's)?"
                    );
                    return Err(ApiError::unavailable(
                        "gate_refused",
                        "the tenant's database refused this server's credentials; retry shortly",
                        RETRY_AFTER_SECS,
                    ));
                }
            }
        }
        Err(ApiError::unavailable("tenant_moving", "the tenant is being moved; retry shortly", RETRY_AFTER_SECS))
    }

    /// This process's pending sign-ins (flushed with the usage counts).
    pub fn signins(&self) -> &Arc<crate::signins::SignInMeter> {
        &self.inner.signins
    }

    /// The people who signed in to `tenant` (as folded by the control plane).
    pub async fn tenant_users(
        &self,
        tenant: Uuid,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<tenantry_core::registry::TenantUser>, ApiError> {
        Ok(self.inner.registry.tenant_users(tenant, after, limit).await?)
    }

    /// This process's usage counts (flushed to the registry periodically).
    pub fn usage(&self) -> &Arc<UsageMeter> {
        &self.inner.usage
    }

    /// Counters of the background jobs this process runs.
    pub fn job_stats(&self) -> Arc<crate::jobs::JobStats> {
        self.inner.jobs.clone()
    }

    /// The tenant gate's key and connections' gate state.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.inner.gate
    }

    /// The registry's read model (for jobs that visit every tenant).
    pub fn registry(&self) -> &RegistryReader {
        &self.inner.registry
    }

    /// Every live backend pool (evicted ones are the cap's to count).
    fn live_pools(&self) -> Vec<BackendPool> {
        self.inner.pools.iter().map(|(_, pool)| pool).collect()
    }

    /// Connections open now (idle ones and those of closing pools included).
    pub fn connections_open(&self) -> usize {
        self.inner.cap.open(&self.live_pools())
    }

    /// Number of open backend pools (for tests and metrics).
    pub async fn open_pools(&self) -> u64 {
        self.inner.pools.run_pending_tasks();
        self.inner.pools.entry_count()
    }
}

fn budget_exhausted(cfg: &AppConfig) -> ApiError {
    tracing::warn!(budget = cfg.max_connections_total, "connection budget exhausted");
    ApiError::unavailable(
        "connection_budget_exhausted",
        "all database connections of this server are busy; retry shortly",
        RETRY_AFTER_SECS,
    )
}

fn backend_down(route: &Route, e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(backend = %route.backend.id, error = %e, "backend unavailable");
    ApiError::unavailable(
        "backend_unavailable",
        "the tenant's database is unavailable; retry shortly",
        RETRY_AFTER_SECS,
    )
}

async fn listen(mut listener: PgListener, inner: Arc<Inner>) {
    loop {
        let received = listener.try_recv().await;
        // Ok: connected (a dropped connection is re-established, and LISTEN
        // re-issued, by the next try_recv); Err: reconnecting failed.
        inner.listening.store(received.is_ok(), Ordering::SeqCst);
        match received {
            Ok(Some(n)) => apply(&inner, n.payload()),
            // The connection dropped; the next try_recv reconnects. Anything
            // announced meanwhile is lost, so forget everything.
            Ok(None) => forget_all(&inner),
            Err(e) => {
                tracing::warn!(error = %e, "registry listener failed; retrying");
                forget_all(&inner);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Drops every cached key and route: notifications may have been missed.
fn forget_all(inner: &Inner) {
    inner.keys.invalidate_all();
    inner.routes.invalidate_all();
}

fn apply(inner: &Inner, payload: &str) {
    inner.notifications.fetch_add(1, Ordering::Relaxed);
    match payload.split_once(':') {
        Some(("placement", id)) => {
            if let Ok(id) = Uuid::parse_str(id) {
                inner.routes.invalidate(&id);
            }
        }
        Some(("key", hex_hash)) => {
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(hex_hash, &mut hash).is_ok() {
                inner.keys.invalidate(&hash);
            }
        }
        Some(("tenant", id)) => {
            // A status change affects every key of the tenant; keys are not
            // indexed by tenant, and status changes are rare.
            inner.keys.invalidate_all();
            if let Ok(id) = Uuid::parse_str(id) {
                inner.routes.invalidate(&id);
            }
        }
        // A backend's version or status changed: routes through it are stale.
        Some(("backend", _)) => inner.routes.invalidate_all(),
        // A tier's default limits changed: every cached key owner may be stale.
        Some(("tier", _)) => inner.keys.invalidate_all(),
        _ => tracing::warn!(payload, "unknown registry notification"),
    }
}
