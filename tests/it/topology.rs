//! Production topology, for real: two `tenantry serve --role app` and two
//! `--role control-plane` processes on one registry. A client writes through
//! both apps (a refused connection goes to the other, a 503 is retried for up
//! to 10 s) while a tenant moves; the process holding the move is killed
//! after its copy, right after the fence and right after the seal (crash
//! hooks that fire once, whichever process runs the move), and restarted the
//! way a supervisor would. Then an app and a control plane get SIGTERM under
//! load. Every move succeeds and every acknowledged write is there, once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use tenantry::testkit::procs::{Fleet, Proc, pid_of, ready, supervise, write_anywhere};

use crate::helpers::{TestApp, cluster, connect, spawn_app_with};
use crate::moves::{asset_count, second_pool, seed_many};

const FENCE_MS: u64 = 2000;
const LEASE_SECS: u64 = 5;

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    worst_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

fn load(http: reqwest::Client, apps: Vec<String>, key: String) -> Load {
    let (stop, ok, worst_ms): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
    let (s, o, w) = (stop.clone(), ok.clone(), worst_ms.clone());
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut n = 0usize;
        while !s.load(Ordering::Relaxed) {
            match write_anywhere(&http, &apps, &key, &format!("topo-{n}"), n).await {
                Ok(ms) => {
                    o.fetch_add(1, Ordering::Relaxed);
                    w.fetch_max(ms, Ordering::Relaxed);
                }
                Err(e) => failures.push(e),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        failures
    });
    Load { stop, ok, worst_ms, task }
}

async fn wait_op(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, op) = app.admin_call(Method::GET, &format!("/v1/operations/{id}"), None).await;
        if matches!(op["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) || Instant::now() > deadline {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn move_to(app: &TestApp, tenant: &str, backend: &str) -> String {
    let (s, op) = app
        .admin_call(Method::POST, &format!("/v1/tenants/{tenant}/move"), Some(json!({"target_backend_id": backend})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    op["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apps_and_two_control_planes_move_a_tenant_through_crashes_and_sigterm() {
    // The in-process stack only sets up the registry and serves the test's
    // admin calls: it runs no operation worker.
    let app = spawn_app_with(|s| s.control_plane.operation_workers = 0).await;
    let a = app.create_tenant("topology", "shared").await;
    let pool1 = app.cp.tenant(&a.id).await.unwrap().placement.unwrap().backend_id.to_string();
    let (pool2, _) = second_pool(&app).await;
    seed_many(&app, &a.key, "T", 10).await;

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(tenantry::testkit::unique("topology"));
    std::fs::create_dir_all(&dir).unwrap();
    let full =
        app.config_file(&format!("lease_secs = {LEASE_SECS}\n[control_plane.moves]\nfence_timeout_ms = {FENCE_MS}"));
    let text = std::fs::read_to_string(&full).unwrap();
    // One app knows only its own section; the other is handed the whole file,
    // with owner and cluster passwords that would fail if it ever used them.
    let app_only = dir.join("app-only.toml");
    std::fs::write(&app_only, text.split("[control_plane]").next().unwrap()).unwrap();
    let secrets = &cluster().secrets;
    let wrong = dir.join("app-with-wrong-owner.toml");
    std::fs::write(
        &wrong,
        text.replace(&secrets.owner_password, "not-the-owner-password")
            .replace(&secrets.superuser_password, "not-the-superuser-password"),
    )
    .unwrap();
    let hooks = ["move.after.copy", "move.cutover.fenced", "move.cutover.sealed"];
    let failpoints: Vec<String> = hooks.iter().map(|h| format!("{h}@{}", dir.join(h).display())).collect::<Vec<_>>();
    let fp = vec![("TENANTRY_FAILPOINTS".to_string(), failpoints.join(","))];

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tenantry"));
    let procs = Arc::new(Mutex::new(vec![
        Proc::start(bin, "app", &app_only, vec![], dir.join("app-1.log")),
        Proc::start(bin, "app", &wrong, vec![], dir.join("app-2.log")),
        Proc::start(bin, "control-plane", &full, fp.clone(), dir.join("cp-1.log")),
        Proc::start(bin, "control-plane", &full, fp.clone(), dir.join("cp-2.log")),
    ]));
    let _fleet = Fleet(procs.clone());
    let urls: Vec<(String, PathBuf)> = procs.lock().unwrap().iter().map(|p| (p.url(), p.log.clone())).collect();
    for (url, log) in &urls {
        ready(&app.http, url, log).await;
    }
    let apps = vec![urls[0].0.clone(), urls[1].0.clone()];
    // A supervisor restarts whatever exits, as systemd or Kubernetes would.
    let supervising = Arc::new(AtomicBool::new(true));
    let supervisor = supervise(procs.clone(), supervising.clone());

    let writer = load(app.http.clone(), apps.clone(), a.key.clone());
    // 1. A move whose holder is killed three times.
    let op = move_to(&app, &a.id, &pool2).await;
    let done = wait_op(&app, &op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    for h in hooks {
        assert!(dir.join(h).exists(), "the crash hook {h} fired");
    }
    let restarts: u32 = procs.lock().unwrap().iter().map(|p| p.restarts).sum();
    assert!(restarts >= 3, "three control-plane crashes, {restarts} restarts");
    let crash_worst = writer.worst_ms.load(Ordering::Relaxed);

    // 2. SIGTERM an app under load: it stops accepting, finishes what it
    // has, exits; the client's next write goes to the other app.
    let app1 = procs.lock().unwrap()[0].pid();
    let before = writer.ok.load(Ordering::Relaxed);
    assert!(Command::new("kill").args(["-TERM", &app1.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = procs.lock().unwrap()[0].child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the app did not stop within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "a SIGTERMed app exits cleanly: {status:?}");
    while writer.ok.load(Ordering::Relaxed) < before + 20 {
        assert!(Instant::now() < deadline, "writes go on through the other app");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3. SIGTERM the control plane holding a move: it hands the move back at
    // once, and the other resumes it well before a lease would lapse.
    let registry = connect(&app.cp.config().registry_database, false);
    let op = move_to(&app, &a.id, &pool1).await;
    let holder = loop {
        let owner = registry_owner(&registry, &op).await;
        if let Some(pid) = owner.as_deref().and_then(pid_of) {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    supervising.store(false, Ordering::Relaxed);
    let _ = supervisor.await;
    let termed_at = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &holder.to_string()]).status().unwrap().success());
    let resumed_after = loop {
        let owner = registry_owner(&registry, &op).await;
        let (_, view) = app.admin_call(Method::GET, &format!("/v1/operations/{op}"), None).await;
        if owner.as_deref().and_then(pid_of).is_some_and(|p| p != holder) || view["state"] == "succeeded" {
            break termed_at.elapsed();
        }
        assert!(termed_at.elapsed() < Duration::from_secs(30), "nobody resumed the move: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done = wait_op(&app, &op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        resumed_after < Duration::from_secs(LEASE_SECS),
        "resumed {resumed_after:?} after SIGTERM, sooner than the {LEASE_SECS} s lease"
    );

    let acknowledged = writer.ok.load(Ordering::Relaxed);
    writer.stop.store(true, Ordering::Relaxed);
    let failures = writer.task.await.unwrap();
    let worst = writer.worst_ms.load(Ordering::Relaxed);
    let acknowledged = acknowledged.max(writer.ok.load(Ordering::Relaxed));
    eprintln!(
        "topology: {acknowledged} writes acknowledged, longest {worst} ms (during the crashes {crash_worst} ms), \
         {restarts} restarts, move resumed {resumed_after:?} after SIGTERM"
    );
    assert!(failures.is_empty(), "no write failed: {failures:?}");
    assert!(crash_worst < FENCE_MS + 1000, "the longest write ({crash_worst} ms) within the fence bound plus 1 s");
    assert_eq!(asset_count(&app, &a.key).await as u64, 10 + acknowledged, "0 lost, 0 duplicated");
}

async fn registry_owner(registry: &sea_orm::DatabaseConnection, op: &str) -> Option<String> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let row = registry
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT lease_owner FROM operations WHERE id = '{op}' AND state = 'running'"),
        ))
        .await
        .unwrap()?;
    row.try_get::<Option<String>>("", "lease_owner").unwrap()
}
