//! Throwaway PostgreSQL clusters for the test suite and the benchmarks: one
//! per process, started on first use, killed with the process.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::OnceLock;

use tenantry_provisioner::{ClusterSpec, LocalCluster};

use crate::dev::{DevSecrets, SUPERUSER};

pub mod procs;

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub secrets: DevSecrets,
}

impl TestCluster {
    /// How a client verifies the test cluster: verify-full against its CA.
    pub fn tls(&self) -> tenantry_core::db::Tls {
        crate::dev::verified(&self.cluster.ca_file())
    }
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
/// `max_connections` of the process's cluster (read when it starts).
static MAX_CONNECTIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(400);

/// Sets the `max_connections` the process's cluster starts with: a benchmark
/// that measures a connection-starved cluster calls it before [`cluster`].
pub fn set_max_connections(n: u32) {
    MAX_CONNECTIONS.store(n, std::sync::atomic::Ordering::SeqCst);
}
/// Settings the process's cluster starts with on top of the defaults.
static EXTRA_SETTINGS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Starts the process's cluster with `name = value` (the last word over the
/// defaults): a benchmark sized like a production database (`shared_buffers`
/// for its working set) calls it before [`cluster`].
pub fn set_cluster_setting(name: &str, value: &str) {
    EXTRA_SETTINGS.lock().unwrap_or_else(|p| p.into_inner()).push((name.into(), value.into()));
}
static ROLES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Removes clusters left by earlier test processes that are gone.
fn sweep_stale(root: &std::path::Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = name.strip_prefix("tenantry-test-").and_then(|p| p.parse::<u32>().ok())
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The process-wide test cluster, started on first use.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        let root = std::env::temp_dir();
        sweep_stale(&root);
        let base_dir = root.join(format!("tenantry-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base_dir);
        let secrets = DevSecrets::generate();
        let mut settings = ClusterSpec::base_settings(MAX_CONNECTIONS.load(std::sync::atomic::Ordering::SeqCst));
        // A throwaway cluster: durability buys nothing here.
        settings.extend(
            [("fsync", "off"), ("synchronous_commit", "off"), ("full_page_writes", "off")]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        settings.extend(EXTRA_SETTINGS.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        let spec = ClusterSpec {
            base_dir,
            port: free_port(),
            superuser: SUPERUSER.into(),
            superuser_password: secrets.superuser_password.clone(),
            settings,
        };
        let cluster = LocalCluster::start(spec).expect("start the test PostgreSQL cluster");
        TestCluster { cluster, secrets }
    })
}

/// A stack on the process's test cluster with a fresh registry and shared pool.
pub struct Spawned {
    pub stack: crate::Stack,
    pub registry_db: String,
    pub pool_name: String,
}

/// A database of the test cluster as its superuser (a small lazy pool).
pub fn connect_as_superuser(database: &str) -> sea_orm::DatabaseConnection {
    let tc = cluster();
    let creds = tenantry_core::db::Credentials {
        user: SUPERUSER.into(),
        password: tc.secrets.superuser_password.clone().into(),
    };
    let sizing = tenantry_core::db::PoolSizing { max_connections: 2, tls: tc.tls(), ..Default::default() };
    tenantry_core::db::lazy_pool("127.0.0.1", tc.cluster.port(), database, &creds, "tenantry-testkit", sizing)
}

/// A database name unique to this run.
/// SQL that puts a backend at tenant schema 6 back to schema 5's gates, for a
/// test or benchmark of a backend one schema behind: `tenantry_enter`, and
/// policies on a bare `app.tenant_id` (the registry must then say 5 too).
pub fn schema_5_gates_sql() -> String {
    let fence = include_str!("../../migrations/tenant/0004_crash_safe_fence.sql");
    let enter = &fence[fence.find("CREATE OR REPLACE FUNCTION tenantry_enter").expect("schema 4's tenantry_enter")..];
    let mut sql = String::from(
        "CREATE OR REPLACE FUNCTION tenantry_current_tenant() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE \
         AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;\n",
    );
    sql.push_str(&enter.replace("{app_role}", crate::dev::APP_ROLE));
    for table in
        tenantry_core::entities::TENANT_TABLES.iter().chain(&["maintenance_overdue", "tenantry_move_sentinels"])
    {
        sql.push_str(&format!(
            "\nALTER POLICY tenant_isolation ON {table} USING (tenant_id = tenantry_current_tenant()) \
             WITH CHECK (tenant_id = tenantry_current_tenant());"
        ));
    }
    sql
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Builds a stack (listeners on port 0) on a fresh registry and shared pool;
/// `configure` may adjust the settings first (it is told the shared pool's name).
pub async fn spawn_stack(configure: impl FnOnce(&mut crate::Settings, &str)) -> anyhow::Result<Spawned> {
    if std::env::var_os("TENANTRY_TEST_LOG").is_some() {
        crate::telemetry::init(&Default::default());
    }
    let tc = tokio::task::spawn_blocking(cluster).await?;
    ROLES.get_or_try_init(|| crate::dev::prepare_roles(&tc.cluster, &tc.secrets)).await?;
    let registry_db = unique("reg");
    crate::dev::create_registry(&tc.cluster, &tc.secrets, &registry_db).await?;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut settings =
        crate::dev::settings_for(tc.cluster.port(), &tc.cluster.ca_file(), &tc.secrets, &registry_db, any, any);
    let pool_name = unique("pool");
    // Tests and benches seed past-due schedules: the overdue job runs only where
    // a test turns it on.
    settings.app.jobs.overdue_interval_secs = 0;
    configure(&mut settings, &pool_name);
    let stack = crate::Stack::build(&settings).await?;
    stack.control_plane().register_backend("test", &pool_name, tenantry_core::BackendKind::SharedPool).await?;
    Ok(Spawned { stack, registry_db, pool_name })
}

/// A moto server (the RDS API emulator, from PyPI) on loopback, started on
/// first use and killed with the process. `scripts/test` installs it under
/// `.tools/moto`; `TENANTRY_MOTO_SERVER` may point elsewhere.
pub struct Moto {
    pub endpoint: String,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| {
        let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/moto/bin/moto_server");
        let bin = std::env::var_os("TENANTRY_MOTO_SERVER")
            .map(PathBuf::from)
            .or_else(|| local.exists().then_some(local))
            .unwrap_or_else(|| PathBuf::from("moto_server"));
        let port = free_port();
        keep_running(
            &bin,
            &["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()],
            port,
            "run scripts/test, which installs moto",
        );
        Moto { endpoint: format!("http://127.0.0.1:{port}") }
    })
}

/// Runs `bin args` from a keeper thread, killed with this process (parent-death
/// signal), and waits until it listens on `port`.
fn keep_running(bin: &std::path::Path, args: &[String], port: u16, hint: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let shown = bin.display().to_string();
    let (bin, args, hint) = (bin.to_path_buf(), args.to_vec(), hint.to_string());
    std::thread::Builder::new()
        .name("child-keeper".into())
        .spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new(&bin);
            cmd.args(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            // SAFETY: prctl only sets this child's parent-death signal.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{}: {e}; {hint}", bin.display())));
                }
            }
        })
        .expect("start a keeper thread");
    rx.recv().expect("keeper").unwrap_or_else(|e| panic!("cannot start a test server: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{shown} did not listen on port {port} within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A real PgBouncer (Debian's `pgbouncer`, 1.18, installed by scripts/test)
/// in transaction mode in front of the test cluster, started on first use and
/// killed with the process. Its `stats_users` may read `SHOW STATS`.
pub struct PgBouncer {
    pub port: u16,
}

static PGBOUNCER: OnceLock<PgBouncer> = OnceLock::new();
static CLEARTEXT_PGBOUNCER: OnceLock<PgBouncer> = OnceLock::new();

pub fn pgbouncer() -> &'static PgBouncer {
    PGBOUNCER.get_or_init(|| start_pgbouncer(true))
}

/// A second PgBouncer like [`pgbouncer`] that offers no TLS at all: a
/// cleartext-only server for the tests of `require`.
pub fn cleartext_pgbouncer() -> &'static PgBouncer {
    CLEARTEXT_PGBOUNCER.get_or_init(|| start_pgbouncer(false))
}

fn start_pgbouncer(tls: bool) -> PgBouncer {
    {
        let tc = cluster();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tenantry-pgbouncer-{}-{tls}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a pgbouncer folder");
        let users = format!(
            "\"{}\" \"{}\"\n\"{}\" \"{}\"\n",
            crate::dev::APP_ROLE,
            tc.secrets.app_password,
            crate::dev::SUPERUSER,
            tc.secrets.superuser_password
        );
        std::fs::write(dir.join("userlist.txt"), users).expect("userlist");
        // It serves the cluster's own certificate (made for 127.0.0.1; the key
        // belongs to the user both run as), so the app verifies it as it
        // verifies the cluster.
        let client_tls = if tls {
            format!(
                "client_tls_sslmode = allow\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                tc.cluster.ca_file().with_file_name("server.crt").display(),
                tc.cluster.ca_file().with_file_name("server.key").display(),
            )
        } else {
            String::new()
        };
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {auth}\npool_mode = transaction\n\
             max_client_conn = 1000\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\nstats_users = {app}\nlogfile =\npidfile =\n{client_tls}",
            pg = tc.cluster.port(),
            auth = dir.join("userlist.txt").display(),
            app = crate::dev::APP_ROLE,
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).expect("pgbouncer.ini");
        let pgbouncer =
            std::env::var_os("TENANTRY_PGBOUNCER").map_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from);
        let mut bin = pgbouncer.clone();
        let mut args = Vec::new();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // PgBouncer refuses to run as root. Its own `-u` drops to another
            // user after the parent-death signal is set, which clears it, and
            // the server outlived the tests; setpriv changes the user first
            // and then sets the signal, which the exec keeps.
            bin = PathBuf::from("setpriv");
            args.extend(
                ["--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig=KILL"].map(String::from),
            );
            args.push(pgbouncer.display().to_string());
            for f in ["userlist.txt", "pgbouncer.ini"] {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644));
            }
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        }
        args.push(ini_path.display().to_string());
        keep_running(&bin, &args, port, "run scripts/test, which installs pgbouncer");
        PgBouncer { port }
    }
}

static CHROMEDRIVER: OnceLock<String> = OnceLock::new();

/// A chromedriver (Debian's `chromium-driver`, installed by scripts/test) on
/// loopback, started on first use and killed with the process; its URL.
/// `TENANTRY_CHROMEDRIVER` may point elsewhere.
pub fn chromedriver() -> &'static str {
    CHROMEDRIVER.get_or_init(|| {
        let bin =
            std::env::var_os("TENANTRY_CHROMEDRIVER").map_or_else(|| PathBuf::from("chromedriver"), PathBuf::from);
        let port = free_port();
        keep_running(&bin, &[format!("--port={port}")], port, "run scripts/test, which installs chromium-driver");
        format!("http://127.0.0.1:{port}")
    })
}

/// RDS settings against the process's moto server.
pub fn rds_config() -> tenantry_provisioner::RdsConfig {
    let moto = moto();
    serde_json::from_value(serde_json::json!({
        "region": "us-east-1",
        "endpoint_url": moto.endpoint,
        "static_credentials": {"access_key_id": "testing", "secret_access_key": "testing"},
        "master_password_key": "test-master-key",
        "wait_secs": 30,
    }))
    .expect("valid RDS settings")
}

/// An OpenID Connect provider on loopback (`tests/oidc_provider.py`: discovery,
/// a key set of real RSA, P-256 and Ed25519 keys made by joserfc), its own
/// process and issuer on each call, killed with this process. The test signs
/// its users in by having the provider sign their claims (`mint`), rotates its
/// keys, or takes it down. `scripts/test` installs joserfc under `.tools/oidc`;
/// `TENANTRY_OIDC_PYTHON` may name another interpreter.
pub struct OidcProvider {
    pub issuer: String,
    http: reqwest::Client,
}

pub fn oidc_provider() -> OidcProvider {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = root.join(".tools/oidc/bin/python");
    let bin = std::env::var_os("TENANTRY_OIDC_PYTHON")
        .map(PathBuf::from)
        .or_else(|| local.exists().then_some(local))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let port = free_port();
    let script = root.join("tests/oidc_provider.py").display().to_string();
    keep_running(&bin, &[script, port.to_string()], port, "run scripts/test, which installs joserfc");
    OidcProvider { issuer: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
}

impl OidcProvider {
    async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let res = self.http.post(format!("{}/control/{path}", self.issuer)).json(&body).send().await.expect("provider");
        assert!(res.status().is_success(), "provider /control/{path}: {}", res.status());
        res.json().await.expect("provider JSON")
    }

    /// A token of these claims (`iss` added) signed with the provider's key
    /// for `alg` (`RS256` by default, `ES256`, `EdDSA`), or forged (`none`,
    /// `HS256-public`).
    pub async fn mint(&self, claims: serde_json::Value, alg: Option<&str>) -> String {
        let v = self.control("mint", serde_json::json!({"claims": claims, "alg": alg})).await;
        v["token"].as_str().expect("a token").to_string()
    }

    /// Publishes a new key of type `kty` (`RSA`, `EC`, `OKP`) and withdraws
    /// the old one; the new key's id.
    pub async fn rotate(&self, kty: &str) -> String {
        self.control("rotate", serde_json::json!({"kty": kty})).await["kid"].as_str().unwrap().to_string()
    }

    /// While down, the provider answers every request with 503.
    pub async fn set_down(&self, down: bool) {
        self.control("down", serde_json::json!({"down": down})).await;
    }

    /// People who can sign in at its login page (`/authorize`), each with
    /// the claims their ID token carries.
    pub async fn add_user(&self, username: &str, claims: serde_json::Value) {
        self.control("users", serde_json::json!({ username: claims })).await;
    }

    /// Code exchanges at its token endpoint, and how many it refused.
    pub async fn token_requests(&self) -> (u64, u64) {
        (self.stat("token_requests").await, self.stat("token_refusals").await)
    }

    /// How many times its key set was fetched.
    pub async fn jwks_fetches(&self) -> u64 {
        self.stat("jwks_fetches").await
    }

    /// How many times its discovery document was fetched.
    pub async fn discovery_fetches(&self) -> u64 {
        self.stat("discovery_fetches").await
    }

    async fn stat(&self, name: &str) -> u64 {
        let res = self.http.get(format!("{}/control/stats", self.issuer)).send().await.expect("provider");
        res.json::<serde_json::Value>().await.expect("stats")[name].as_u64().unwrap()
    }
}
