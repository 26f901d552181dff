use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, SqlxPostgresConnector, Statement};
use serde_json::{Value, json};

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use tenantry::dev::{APP_ROLE, SUPERUSER};
use tenantry_control_plane::ControlPlane;
use tenantry_core::gate::{self, Binding, GateKey, GateKeys};

pub use tenantry::testkit::cluster;

pub struct TestApp {
    pub app: String,
    pub admin: String,
    pub token: String,
    pub http: reqwest::Client,
    pub cp: Arc<ControlPlane>,
    pub resolver: tenantry_app::Resolver,
    pub pool_name: String,
    pub settings: tenantry::Settings,
}

/// A fresh registry and shared pool on the test cluster, and both listeners
/// on port 0.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with adjusted settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut tenantry::Settings)) -> TestApp {
    let mut settings = None;
    let spawned = tenantry::testkit::spawn_stack(|s, _| {
        configure(s);
        settings = Some(s.clone());
    })
    .await
    .expect("spawn the stack");
    let stack = spawned.stack;
    let app = TestApp {
        app: format!("http://127.0.0.1:{}", stack.app_port()),
        admin: format!("http://127.0.0.1:{}", stack.admin_port()),
        token: cluster().secrets.admin_token.clone(),
        http: reqwest::Client::new(),
        cp: stack.control_plane(),
        resolver: stack.resolver(),
        pool_name: spawned.pool_name,
        settings: settings.expect("configured"),
    };
    tokio::spawn(stack.run_until_stopped());
    app
}

/// Turns on the RDS engine against the process's moto server, bootstrapping
/// instances onto the test cluster (moto's endpoints are unreachable).
pub fn with_rds(s: &mut tenantry::Settings) {
    let tc = cluster();
    s.control_plane.rds = Some(tenantry::testkit::rds_config());
    s.control_plane.rds_bootstrap_override = Some(tenantry_control_plane::config::BootstrapOverride {
        host: "127.0.0.1".into(),
        port: tc.cluster.port(),
        admin_user: SUPERUSER.into(),
        admin_password: tc.secrets.superuser_password.clone().into(),
    });
}

/// A database of the test cluster, as the superuser or as the app role.
pub fn connect(database: &str, as_app: bool) -> DatabaseConnection {
    let tc = cluster();
    let (user, password) = if as_app {
        (APP_ROLE, tc.secrets.app_password.as_str())
    } else {
        (SUPERUSER, tc.secrets.superuser_password.as_str())
    };
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(tc.cluster.port())
        .database(database)
        .username(user)
        .password(password);
    SqlxPostgresConnector::from_sqlx_postgres_pool(PgPoolOptions::new().max_connections(2).connect_lazy_with(opts))
}

/// Runs `tenantry serve` with `TENANTRY_FAILPOINTS=failpoint` until it exits
/// (aborted by the failpoint) or 60 s pass (then killed).
pub fn run_child(config: &std::path::Path, failpoint: &str) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["serve", "--config"])
        .arg(config)
        .env("TENANTRY_FAILPOINTS", failpoint)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tenantry serve");
    // Its output is read as it comes (a full pipe would stall the child);
    // a child that never reaches its failpoint is killed after two minutes.
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("child output");
        let _ = done.send(());
        out
    });
    if waited.recv_timeout(std::time::Duration::from_secs(120)).is_err() {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    reader.join().expect("the child's reader")
}

/// A scalar from a query (the first column of the first row, as i64).
pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("an integer")
}

pub struct Created {
    pub tenant: Value,
    pub id: String,
    pub key: String,
}

impl TestApp {
    /// Another app process on the same registry (no operation workers); its
    /// base URL. `configure` adjusts its settings.
    pub async fn another_app(&self, configure: impl FnOnce(&mut tenantry::Settings)) -> String {
        self.another_stack(configure).await.0
    }

    /// Another stack on the same registry (no operation workers): its app and
    /// admin base URLs.
    pub async fn another_stack(&self, configure: impl FnOnce(&mut tenantry::Settings)) -> (String, String) {
        let mut s = self.settings.clone();
        s.control_plane.operation_workers = 0;
        configure(&mut s);
        let stack = tenantry::Stack::build(&s).await.expect("a second stack");
        let urls =
            (format!("http://127.0.0.1:{}", stack.app_port()), format!("http://127.0.0.1:{}", stack.admin_port()));
        tokio::spawn(stack.run_until_stopped());
        urls
    }

    pub async fn admin_call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let build = |method: Method| {
            let mut req = self.http.request(method, format!("{}{path}", self.admin)).bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            req
        };
        let resp = match build(method.clone()).send().await {
            Ok(resp) => resp,
            // A kept-alive connection the server closed just as it was reused
            // (hyper's IncompleteMessage): a GET is asked again, once.
            Err(e) if method == Method::GET && e.is_request() => build(method).send().await.expect("admin request"),
            Err(e) => panic!("admin request: {e:?}"),
        };
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.app)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("app request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        self.call(key, Method::GET, path, None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(key, Method::POST, path, Some(body)).await
    }

    /// Creates a tenant and one API key for it.
    pub async fn create_tenant(&self, slug: &str, tier: &str) -> Created {
        let (status, created) =
            self.admin_call(Method::POST, "/v1/tenants", Some(json!({"slug": slug, "name": slug, "tier": tier}))).await;
        let expected = if tier == "dedicated" { StatusCode::ACCEPTED } else { StatusCode::CREATED };
        assert_eq!(status, expected, "{created}");
        let id = created["tenant"]["id"].as_str().expect("tenant id").to_string();
        if let Some(op) = created["operation"]["id"].as_str() {
            let op = self.wait_operation(op).await;
            assert_eq!(op["state"], "succeeded", "{op}");
        }
        let (_, tenant) = self.admin_call(Method::GET, &format!("/v1/tenants/{id}"), None).await;
        let (status, key) = self.admin_call(Method::POST, &format!("/v1/tenants/{id}/api-keys"), Some(json!({}))).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        Created { tenant, id, key: key["key"].as_str().expect("key").to_string() }
    }

    /// A configuration file for a `tenantry` child process on this app's
    /// registry (listeners on port 0); `extra` is appended to `[control_plane]`.
    pub fn config_file(&self, extra: &str) -> std::path::PathBuf {
        let cfg = self.cp.config();
        tenantry::testkit::procs::child_config(&cfg.registry_database, &cfg.template_database, extra)
    }

    /// GETs `path` until it answers `want` (caches learn of registry changes
    /// through NOTIFY, a moment later); the last status.
    pub async fn get_until(&self, key: &str, path: &str, want: StatusCode) -> StatusCode {
        let mut status = StatusCode::IM_A_TEAPOT;
        for _ in 0..100 {
            status = self.get(key, path).await.0;
            if status == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        status
    }

    /// Puts the harness's real PgBouncer (transaction mode) in front of every
    /// backend for the app's requests, through the admin API.
    pub async fn through_pgbouncer(&self) {
        let port = tenantry::testkit::pgbouncer().port;
        let (_, list) = self.admin_call(Method::GET, "/v1/backends", None).await;
        let backends = list["backends"].as_array().expect("backends");
        let before = self.resolver.cache_stats().notifications;
        for b in backends {
            let path = format!("/v1/backends/{}/pooler", b["id"].as_str().unwrap());
            let body = serde_json::json!({"host": "127.0.0.1", "port": port, "mode": "transaction"});
            let (s, view) = self.admin_call(Method::PUT, &path, Some(body)).await;
            assert_eq!(s, StatusCode::OK, "{view}");
            assert_eq!(view["pooler"]["port"], port);
        }
        // Every app cache has dropped the direct routes (NOTIFY) once a fresh
        // read of the registry would give the pooled ones.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.resolver.cache_stats().notifications < before + backends.len() as u64 {
            assert!(std::time::Instant::now() < deadline, "the pooler change reached the app");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Transactions PgBouncer has carried so far, over every database.
    pub async fn pgbouncer_transactions(&self) -> i64 {
        self.pgbouncer_stat(None, "total_xact_count").await
    }

    /// A `SHOW STATS` total of PgBouncer's, of `database` or of every one.
    pub async fn pgbouncer_stat(&self, database: Option<&str>, column: &str) -> i64 {
        let tc = cluster();
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(tenantry::testkit::pgbouncer().port)
            .database("pgbouncer")
            .username(APP_ROLE)
            .password(&tc.secrets.app_password)
            .statement_cache_capacity(0)
            .extra_float_digits(None);
        use sea_orm::sqlx::{Connection, Row};
        let mut conn = sea_orm::sqlx::postgres::PgConnection::connect_with(&opts).await.expect("the pgbouncer console");
        let rows = sea_orm::sqlx::raw_sql("SHOW STATS").fetch_all(&mut conn).await.expect("SHOW STATS");
        rows.iter()
            .filter(|r| {
                r.try_get::<String, _>("database")
                    .is_ok_and(|d| d != "pgbouncer" && database.is_none_or(|want| d == want))
            })
            // NUMERIC, in text (the console speaks the simple protocol only).
            .map(|r| {
                let raw = r.try_get_raw(column).expect("a SHOW STATS column");
                raw.as_str().ok().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
            })
            .sum()
    }

    /// Polls `path` on the admin API until `done` holds (20 s at most); the last body.
    pub async fn admin_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (s, body) = self.admin_call(Method::GET, path, None).await;
            assert_eq!(s, StatusCode::OK, "{path}: {body}");
            if done(&body) || std::time::Instant::now() > deadline {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The Prometheus text at `{base}/metrics` (the admin listener's needs the token).
    pub async fn metrics_text(&self, base: &str) -> String {
        let mut req = self.http.get(format!("{base}/metrics"));
        if base == self.admin {
            req = req.bearer_auth(&self.token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{base}/metrics");
        res.text().await.unwrap()
    }

    /// A counter or gauge from the Prometheus text at `{base}/metrics`.
    pub async fn metric(&self, base: &str, name: &str) -> f64 {
        let text = self.metrics_text(base).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in {base}/metrics"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// Polls an operation until it ends (30 s at most).
    pub async fn wait_operation(&self, id: &str) -> Value {
        for _ in 0..600 {
            let (_, op) = self.admin_call(Method::GET, &format!("/v1/operations/{id}"), None).await;
            if matches!(op["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return op;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("operation {id} did not finish in 30 s");
    }

    /// Creates an asset with one schedule and one issue; returns their ids.
    pub async fn seed(&self, key: &str, tag: &str) -> (String, String, String) {
        let (s, asset) = self.post(key, "/v1/assets", json!({"name": "Pump", "tag": tag, "category": "pumps"})).await;
        assert_eq!(s, StatusCode::CREATED, "{asset}");
        let asset_id = asset["id"].as_str().expect("id").to_string();
        let (s, sched) = self
            .post(
                key,
                &format!("/v1/assets/{asset_id}/maintenance-schedules"),
                json!({"title": "Oil", "interval_days": 30, "next_due_at": "2026-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{sched}");
        let (s, issue) = self
            .post(key, &format!("/v1/assets/{asset_id}/issues"), json!({"title": "Leak", "priority": "high"}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{issue}");
        (asset_id, sched["id"].as_str().expect("id").into(), issue["id"].as_str().expect("id").into())
    }

    /// The database name a tenant lives in now.
    pub async fn database_of(&self, tenant_id: &str) -> String {
        let t = self.cp.tenant(tenant_id).await.expect("tenant");
        let backend = self.cp.backend(t.placement.expect("placed").backend_id).await.expect("backend");
        backend.database
    }
}

// --- The tenant gate as the app drives it, on single connections (the
// forgery and isolation tests play the app and the attacker).

pub fn gate_key() -> GateKey {
    GateKeys { current: cluster().secrets.gate_key.clone().into(), previous: None }.signer()
}

/// One connection as the app role, straight to PostgreSQL or through the
/// harness's PgBouncer.
pub async fn app_conn(database: &str, through_pgbouncer: bool) -> PgConnection {
    let tc = cluster();
    let port = if through_pgbouncer { tenantry::testkit::pgbouncer().port } else { tc.cluster.port() };
    let mut opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .database(database)
        .username(APP_ROLE)
        .password(&tc.secrets.app_password);
    if through_pgbouncer {
        opts = opts.statement_cache_capacity(0).extra_float_digits(None);
    }
    PgConnection::connect_with(&opts).await.expect("an app-role connection")
}

pub async fn run(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(conn).await.map(|_| ())
}

/// The app's own gate on a direct connection: the gate opened, a proof for
/// `tenant` at epoch 1 with this connection's pid and counter; the statement
/// the app sends (`BEGIN; SELECT tenantry_gate(...)`).
pub async fn vouched_begin(conn: &mut PgConnection, tenant: &str) -> (i32, String) {
    let (pid, n): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(&mut *conn).await.expect("open");
    let binding = Binding::Direct { pid: pid as u32, n };
    (pid, format!("BEGIN; SELECT {}", gate::call(&gate_key(), tenant.parse().unwrap(), 1, binding, false)))
}
