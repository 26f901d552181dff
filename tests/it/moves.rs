//! Online moves: promote, move and demote while the tenant keeps writing,
//! with fencing, verification, cancellation, crash recovery and stale caches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, connect, scalar, spawn_app, spawn_app_with};

/// A second shared pool on the test cluster; returns its backend id.
async fn second_pool(app: &TestApp) -> (String, String) {
    let name = tenantry::testkit::unique("pool");
    let b = app
        .cp
        .register_backend("test", &name, tenantry_core::BackendKind::SharedPool)
        .await
        .expect("register a second pool");
    (b.id.to_string(), name)
}

/// `n` assets, each with a schedule and an issue.
async fn seed_many(app: &TestApp, key: &str, prefix: &str, n: usize) {
    for i in 0..n {
        app.seed(key, &format!("{prefix}-{i}")).await;
    }
}

/// Rows of `tenant` per tenant table in database `db` (as the superuser).
async fn rows_in(db: &str, tenant: &str) -> i64 {
    let conn = connect(db, false);
    let mut total = 0;
    for t in tenantry_core::entities::TENANT_TABLES {
        total += scalar(&conn, &format!("SELECT count(*) FROM {t} WHERE tenant_id = '{tenant}'")).await;
    }
    total
}

/// Replication objects named after moves, anywhere on the cluster.
async fn leftovers(dbs: &[&str]) -> i64 {
    let postgres = connect("postgres", false);
    let mut n = scalar(
        &postgres,
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantry_mv_%' OR slot_name LIKE 'pg_%_sync_%') \
         + (SELECT count(*) FROM pg_subscription WHERE subname LIKE 'tenantry_mv_%')",
    )
    .await;
    for db in dbs {
        let c = connect(db, false);
        n += scalar(&c, "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'tenantry_mv_%'").await;
    }
    n
}

/// Writes assets through the app API until stopped; counts outcomes.
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    worst_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn start_writer(app: &TestApp, key: &str, prefix: &str) -> Writer {
    let (stop, ok, errors, worst_ms) = Default::default();
    let (stop2, ok2, errors2, worst2): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
        (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors), Arc::clone(&worst_ms));
    let (http, url, key, prefix) =
        (app.http.clone(), format!("{}/v1/assets", app.app), key.to_string(), prefix.to_string());
    let task = tokio::spawn(async move {
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let t0 = std::time::Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(&key)
                .json(&json!({"name": "live", "tag": format!("{prefix}-{i}")}))
                .send()
                .await;
            worst2.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
            match resp {
                Ok(r) if r.status() == StatusCode::CREATED => ok2.fetch_add(1, Ordering::Relaxed),
                Ok(r) => {
                    eprintln!("write failed: {} {}", r.status(), r.text().await.unwrap_or_default());
                    errors2.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => {
                    eprintln!("write failed: {e}");
                    errors2.fetch_add(1, Ordering::Relaxed)
                }
            };
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Writer { stop, ok, errors, worst_ms, task }
}

impl Writer {
    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed), self.worst_ms.load(Ordering::Relaxed))
    }
}

async fn asset_count(app: &TestApp, key: &str) -> usize {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/assets?limit=200&cursor={c}"),
            None => "/v1/assets?limit=200".to_string(),
        };
        let (s, page) = app.get(key, &path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        n += page["assets"].as_array().expect("assets").len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return n,
        }
    }
}

async fn start(app: &TestApp, path: &str, body: Value) -> String {
    let (s, op) = app.admin_call(Method::POST, path, Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    op["id"].as_str().expect("operation id").to_string()
}

#[tokio::test]
async fn a_tenant_moves_between_shared_pools_while_writing_and_loses_nothing() {
    let app = spawn_app().await;
    let (pool2, pool2_name) = second_pool(&app).await;
    let a = app.create_tenant("mover", "shared").await;
    let b = app.create_tenant("neighbour", "shared").await;
    seed_many(&app, &a.key, "M", 20).await;
    seed_many(&app, &b.key, "N", 3).await;

    let writer = start_writer(&app, &a.key, "W");
    let neighbour = start_writer(&app, &b.key, "NW");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    let done = app.wait_operation(&op).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, errors, worst) = writer.finish().await;
    let (n_ok, n_errors, _) = neighbour.finish().await;

    eprintln!("move: {done:#}\nwrites ok {ok}, worst {worst} ms");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(errors, 0, "the moving tenant's writes all succeeded ({ok} ok, worst {worst} ms)");
    assert_eq!(n_errors, 0, "the neighbour saw no errors ({n_ok} ok)");
    assert!(ok > 20, "writes went on during the move: {ok}");
    let p = &done["progress"];
    assert_eq!(p["cutover_done"], true);
    assert_eq!(p["verified"], "checksums", "{p}");
    assert!(p["pause_ms"].as_f64().expect("pause measured") < 2000.0, "{p}");
    assert!(p["rows_total"].as_i64().unwrap() >= 60, "{p}");
    assert!(p["rows_copied"].as_i64().unwrap() >= 60, "{p}");

    // Every acknowledged write is there, once; the source holds none of them.
    assert_eq!(asset_count(&app, &a.key).await, 20 + ok as usize);
    assert_eq!(rows_in(&app.pool_name, &a.id).await, 0, "source purged");
    assert_eq!(rows_in(&pool2_name, &a.id).await, 60 + ok as i64);
    assert_eq!(asset_count(&app, &b.key).await, 3 + n_ok as usize);
    let t = app.cp.tenant(&a.id).await.unwrap();
    let placement = t.placement.unwrap();
    assert_eq!(placement.backend_id.to_string(), pool2);
    assert_eq!(placement.epoch, 2);
    assert_eq!(leftovers(&[&app.pool_name, &pool2_name]).await, 0, "no slot, publication or subscription left");
    let pool1 = connect(&app.pool_name, false);
    assert_eq!(scalar(&pool1, &format!("SELECT count(*) FROM tenant_residency WHERE tenant_id = '{}'", a.id)).await, 0);
}
