//! Real `tenantry serve` child processes for multi-process tests and
//! benchmarks: each with a role, a port, a log file and a way to start again,
//! a fleet that kills them all when dropped, readiness waits, and a client
//! write that fails over between app processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::cluster;

/// A configuration file for a child process on `registry` (listeners on port
/// 0, overridden per process); `extra` is appended to `[control_plane]`.
pub fn child_config(registry: &str, template: &str, extra: &str) -> PathBuf {
    let tc = cluster();
    let path = std::env::temp_dir().join(format!("tenantry-child-{}.toml", uuid::Uuid::new_v4()));
    let text = format!(
        r#"
[app]
listen = "127.0.0.1:0"
[app.registry]
port = {port}
database = "{registry}"
tls = {{ mode = "verify-full", ca_file = "{ca}" }}
[app.credentials]
user = "tenantry_app"
password = "{app_pw}"
[app.gate]
current = "{gate}"
[app.backend_tls]
mode = "verify-full"
ca_file = "{ca}"
[app.jobs]
overdue_interval_secs = 0
[control_plane]
listen = "127.0.0.1:0"
admin_token = "unused-unused-unused-unused-unused-0"
app_role = "tenantry_app"
registry_database = "{registry}"
template_database = "{template}"
secrets_key = "estates:{owner_pw}"
{extra}
[control_plane.gate]
current = "{gate}"
[control_plane.backend_tls]
mode = "verify-full"
ca_file = "{ca}"
[control_plane.estate_tls]
mode = "verify-full"
ca_file = "{ca}"
[control_plane.owner]
user = "tenantry_owner"
password = "{owner_pw}"
[control_plane.cluster]
port = {port}
admin_user = "postgres"
admin_password = "{su_pw}"
tls = {{ mode = "verify-full", ca_file = "{ca}" }}
"#,
        port = tc.cluster.port(),
        app_pw = tc.secrets.app_password,
        owner_pw = tc.secrets.owner_password,
        su_pw = tc.secrets.superuser_password,
        gate = tc.secrets.gate_key,
        ca = tc.cluster.ca_file().display(),
    );
    std::fs::write(&path, text).expect("write a child configuration");
    path
}

/// One `tenantry serve --role ...` child: its role, port and how to start it again.
pub struct Proc {
    pub role: &'static str,
    pub port: u16,
    pub log: PathBuf,
    pub child: Child,
    pub restarts: u32,
    bin: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Proc {
    /// Starts `bin serve --role role --config config` on a free port, its
    /// output appended to `log`.
    pub fn start(bin: &Path, role: &'static str, config: &Path, env: Vec<(String, String)>, log: PathBuf) -> Self {
        let port = super::free_port();
        let child = spawn(bin, role, config, port, &env, &log);
        Proc { role, port, log, child, restarts: 0, bin: bin.to_path_buf(), config: config.to_path_buf(), env }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Restarts it if it exited (a crash hook fired, or SIGTERM): `true` then.
    pub fn supervise(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.child = spawn(&self.bin, self.role, &self.config, self.port, &self.env, &self.log);
            self.restarts += 1;
            return true;
        }
        false
    }

    /// Sends a signal (`TERM`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([format!("-{name}"), self.pid().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{name} {}", self.pid());
    }
}

fn spawn(bin: &Path, role: &str, config: &Path, port: u16, env: &[(String, String)], log: &Path) -> Child {
    let listen = if role == "app" { "TENANTRY_APP__LISTEN" } else { "TENANTRY_CONTROL_PLANE__LISTEN" };
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("a log file");
    Command::new(bin)
        .args(["serve", "--role", role, "--config"])
        .arg(config)
        .env(listen, format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn,tenantry_control_plane::runner=info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start tenantry serve")
}

/// Every child, killed when dropped (whatever the outcome).
pub struct Fleet(pub Arc<Mutex<Vec<Proc>>>);

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Ok(mut procs) = self.0.lock() {
            for p in procs.iter_mut() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

/// A supervisor, as systemd or Kubernetes would be: every 100 ms, restarts
/// each control-plane process that exited, until `on` turns false.
pub fn supervise(procs: Arc<Mutex<Vec<Proc>>>, on: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while on.load(std::sync::atomic::Ordering::Relaxed) {
            for p in procs.lock().unwrap().iter_mut().filter(|p| p.role == "control-plane") {
                p.supervise();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Waits (30 s at most) until `url/readyz` answers 200; panics with the log.
pub async fn ready(http: &reqwest::Client, url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready in 30 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One asset write through whichever app answers: a refused connection goes
/// to the next app, a 503 is retried, for at most 10 s. A write whose answer
/// was lost and whose retry finds its tag taken (409) did land. The time it
/// took, or why it failed.
pub async fn write_anywhere(
    http: &reqwest::Client,
    apps: &[String],
    key: &str,
    tag: &str,
    start: usize,
) -> Result<u64, String> {
    let t0 = Instant::now();
    let mut i = start;
    let mut sent = false;
    loop {
        let r = http
            .post(format!("{}/v1/assets", apps[i % apps.len()]))
            .bearer_auth(key)
            .json(&serde_json::json!({"name": "fleet", "tag": tag}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == StatusCode::CREATED => return Ok(t0.elapsed().as_millis() as u64),
            Ok(r) if r.status() == StatusCode::CONFLICT && sent => return Ok(t0.elapsed().as_millis() as u64),
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(r) => return Err(format!("{tag}: {} {}", r.status(), r.text().await.unwrap_or_default())),
            Err(e) if e.is_connect() => i += 1,
            Err(e) => {
                sent = true;
                i += 1;
                eprintln!("{tag}: {e}; retrying on the next app");
            }
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("{tag}: no success in 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `worker-<pid>-<id>` (an operation's lease owner) -> pid.
pub fn pid_of(owner: &str) -> Option<u32> {
    owner.strip_prefix("worker-")?.split('-').next()?.parse().ok()
}
