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

pub struct Stack {
    app_port: u16,
    admin_port: u16,
    app: Server,
    admin: Server,
    control_plane: Arc<ControlPlane>,
    resolver: Resolver,
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Stack {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let control_plane = Arc::new(ControlPlane::start(settings.control_plane.clone()).await?);
        let shutdown = CancellationToken::new();
        let operation_workers = (0..settings.control_plane.operation_workers)
            .map(|_| tokio::spawn(control_plane.clone().run_worker(shutdown.clone())))
            .collect();
        let mut workers = vec![AbortOnDrop(tokio::spawn(control_plane.clone().run_usage()))];
        let resolver = Resolver::start(settings.app.clone()).await?;
        workers.push(AbortOnDrop(tokio::spawn(tenantry_app::jobs::run(
            resolver.clone(),
            settings.app.jobs.clone(),
            resolver.job_stats(),
        ))));
        let app_listener = TcpListener::bind(settings.app.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (app): {e}", settings.app.listen))?;
        let admin_listener = TcpListener::bind(settings.control_plane.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", settings.control_plane.listen))?;
        let app_port = app_listener.local_addr()?.port();
        let admin_port = admin_listener.local_addr()?.port();
        let baseline = settings.app.baseline.as_ref().map(|b| {
            tenantry_app::http::BaselinePool(tenantry_core::db::lazy_pool(
                &b.host,
                b.port,
                &b.database,
                &b.credentials,
                "tenantry-baseline",
                tenantry_core::db::PoolSizing {
                    max_connections: settings.app.connections_per_pool,
                    ..Default::default()
                },
            ))
        });
        let app = tenantry_app::http::server(resolver.clone(), app_listener, settings.app.workers, baseline)?;
        let admin = tenantry_control_plane::server::server(
            control_plane.clone(),
            admin_listener,
            settings.control_plane.workers,
        )?;
        Ok(Self {
            app_port,
            admin_port,
            app,
            admin,
            control_plane,
            resolver,
            _workers: workers,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            operation_workers,
        })
    }

    pub fn app_port(&self) -> u16 {
        self.app_port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn control_plane(&self) -> Arc<ControlPlane> {
        self.control_plane.clone()
    }

    pub fn resolver(&self) -> Resolver {
        self.resolver.clone()
    }

    /// Handles that stop both servers gracefully.
    pub fn handles(&self) -> [ServerHandle; 2] {
        [self.app.handle(), self.admin.handle()]
    }

    /// Serves both listeners until both stop (Ctrl-C stops them).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Stack { app, admin, _workers, shutdown, operation_workers, .. } = self;
        let (a, b) = tokio::join!(app, admin);
        shutdown.cancel();
        let stopped = tokio::time::timeout(WORKER_STOP, futures::future::join_all(operation_workers)).await;
        if stopped.is_err() {
            tracing::warn!("operation workers did not stop in time; their leases lapse instead");
        }
        a.and(b)
    }
}
