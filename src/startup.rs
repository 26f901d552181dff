//! Builds both listeners from [`Settings`]: `Stack::build` binds them (port 0
//! in tests; `app_port()` / `admin_port()` read the ports back) and
//! `run_until_stopped` serves until Ctrl-C or `stop`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use tenantry_app::Resolver;
use tenantry_control_plane::ControlPlane;
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::config::{ProcessSettings, Role};

pub struct Stack {
    role: Role,
    app: Option<(u16, Server, Resolver)>,
    admin: Option<(u16, Server, Arc<ControlPlane>)>,
    /// Operation workers, the usage loop and the app's jobs; stopped with the stack.
    _workers: Vec<AbortOnDrop>,
    /// Cancelled when the servers stop: operation workers hand back what they
    /// hold at their next step boundary.
    shutdown: CancellationToken,
    /// Dropping the stack (a test's end) stops the workers the same way.
    _stop_on_drop: tokio_util::sync::DropGuard,
    /// The operation workers, awaited (bounded) after `shutdown`.
    operation_workers: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a stopping process waits for its operation workers to hand back.
const WORKER_STOP: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a stopping listener lets in-flight requests finish.
const DRAIN: u64 = 10;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Stack {
    /// Both roles in one process (`--role all`).
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::start(&ProcessSettings::from(settings)).await
    }

    /// The parts of a process its role runs: the app API (resolver, jobs,
    /// usage flush), the admin API with the console, operation workers and
    /// usage rollups, or both.
    pub async fn start(settings: &ProcessSettings) -> anyhow::Result<Self> {
        for section in &settings.ignored {
            tracing::warn!(
                role = ?settings.role,
                "the [{section}] section is not used by this role and was not read: remove it (and its \
                 secrets) from this process's configuration"
            );
        }
        let shutdown = CancellationToken::new();
        let mut workers = Vec::new();
        let mut operation_workers = Vec::new();
        let admin = match &settings.control_plane {
            Some(cfg) => {
                let control_plane = Arc::new(ControlPlane::start(cfg.clone()).await?);
                operation_workers = (0..cfg.operation_workers)
                    .map(|_| tokio::spawn(control_plane.clone().run_worker(shutdown.clone())))
                    .collect();
                workers.push(AbortOnDrop(tokio::spawn(control_plane.clone().run_usage())));
                let listener = TcpListener::bind(cfg.listen)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", cfg.listen))?;
                let port = listener.local_addr()?.port();
                let server =
                    tenantry_control_plane::server::server(control_plane.clone(), listener, cfg.workers, DRAIN)?;
                Some((port, server, control_plane))
            }
            None => None,
        };
        let app = match &settings.app {
            Some(cfg) => {
                cfg.validate().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
                let resolver = Resolver::start(cfg.clone()).await?;
                workers.push(AbortOnDrop(tokio::spawn(tenantry_app::jobs::run(
                    resolver.clone(),
                    cfg.jobs.clone(),
                    resolver.job_stats(),
                ))));
                let listener = TcpListener::bind(cfg.listen)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {} (app): {e}", cfg.listen))?;
                let port = listener.local_addr()?.port();
                let baseline = cfg.baseline.as_ref().map(|b| {
                    tracing::warn!(
                        listen = %cfg.listen,
                        "benchmark routes /bench/baseline and /bench/isolated are mounted (app.baseline): \
                         unauthenticated reads of any tenant, on this loopback listener only"
                    );
                    let pool = |creds: &tenantry_core::db::Credentials, name: &str| {
                        tenantry_core::db::lazy_pool(
                            &b.host,
                            b.port,
                            &b.database,
                            creds,
                            name,
                            tenantry_core::db::PoolSizing {
                                max_connections: cfg.connections_per_pool,
                                // As the routed path's pools, for a like-for-like baseline.
                                check_idle_after: Some(tenantry_app::resolver::CHECK_IDLE_AFTER),
                                generic_plans: true,
                                tls: cfg.backend_tls.clone(),
                                ..Default::default()
                            },
                        )
                    };
                    tenantry_app::http::BaselinePool {
                        plain: pool(&b.credentials, "tenantry-baseline"),
                        isolated: b.isolated.as_ref().map(|c| pool(c, "tenantry-isolated")),
                    }
                });
                let server = tenantry_app::http::server(resolver.clone(), listener, cfg.workers, baseline, DRAIN)?;
                Some((port, server, resolver))
            }
            None => None,
        };
        Ok(Self {
            role: settings.role,
            app,
            admin,
            _workers: workers,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            operation_workers,
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The app listener's port (this process runs the app role).
    pub fn app_port(&self) -> u16 {
        self.app.as_ref().map(|a| a.0).expect("a process with the app role")
    }

    /// The admin listener's port (this process runs the control-plane role).
    pub fn admin_port(&self) -> u16 {
        self.admin.as_ref().map(|a| a.0).expect("a process with the control-plane role")
    }

    pub fn control_plane(&self) -> Arc<ControlPlane> {
        self.admin.as_ref().map(|a| a.2.clone()).expect("a process with the control-plane role")
    }

    pub fn resolver(&self) -> Resolver {
        self.app.as_ref().map(|a| a.2.clone()).expect("a process with the app role")
    }

    /// Where each listener of this process listens, for the start-up log line.
    pub fn ports(&self) -> (Option<u16>, Option<u16>) {
        (self.app.as_ref().map(|a| a.0), self.admin.as_ref().map(|a| a.0))
    }

    /// Handles that stop the servers gracefully.
    pub fn handles(&self) -> Vec<ServerHandle> {
        self.app.iter().map(|a| a.1.handle()).chain(self.admin.iter().map(|a| a.1.handle())).collect()
    }

    /// Serves until every listener stops (SIGTERM or Ctrl-C stops them: they
    /// stop accepting and let in-flight requests finish, at most 10 s); then
    /// the operation workers hand back what they hold and the leases are
    /// released, so another process resumes at once.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Stack { app, admin, _workers, shutdown, operation_workers, .. } = self;
        let servers = app.map(|a| a.1).into_iter().chain(admin.map(|a| a.1));
        let results = futures::future::join_all(servers).await;
        shutdown.cancel();
        let stopped = tokio::time::timeout(WORKER_STOP, futures::future::join_all(operation_workers)).await;
        if stopped.is_err() {
            tracing::warn!("operation workers did not stop in time; their leases lapse instead");
        }
        results.into_iter().collect()
    }
}
