//! Online moves: promote, move and demote while the tenant keeps writing,
//! with fencing, verification, cancellation, crash recovery and stale caches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, connect, scalar, spawn_app, spawn_app_with};

/// A second shared pool on the test cluster; returns its backend id.
pub(crate) async fn second_pool(app: &TestApp) -> (String, String) {
    let name = tenantry::testkit::unique("pool");
    let b = app
        .cp
        .register_backend("test", &name, tenantry_core::BackendKind::SharedPool)
        .await
        .expect("register a second pool");
    (b.id.to_string(), name)
}

/// `n` assets, each with a schedule and an issue.
pub(crate) async fn seed_many(app: &TestApp, key: &str, prefix: &str, n: usize) {
    for i in 0..n {
        app.seed(key, &format!("{prefix}-{i}")).await;
    }
}

/// Rows of `tenant` per tenant table in database `db` (as the superuser).
pub(crate) async fn rows_in(db: &str, tenant: &str) -> i64 {
    let conn = connect(db, false);
    let mut total = 0;
    for t in tenantry_core::entities::TENANT_TABLES {
        total += scalar(&conn, &format!("SELECT count(*) FROM {t} WHERE tenant_id = '{tenant}'")).await;
    }
    total
}

/// Replication objects of moves (and table-sync slots, and the moves' roles
/// holding grants) in these databases.
pub(crate) async fn leftovers(dbs: &[&str]) -> i64 {
    let postgres = connect("postgres", false);
    let list = dbs.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
    let mut n = scalar(
        &postgres,
        &format!(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database IN ({list}) \
                       AND (slot_name LIKE 'tenantry_mv_%' OR slot_name LIKE 'pg_%_sync_%')) \
                  + (SELECT count(*) FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
                       WHERE d.datname IN ({list}) AND s.subname LIKE 'tenantry_mv_%') \
                  + (SELECT count(DISTINCT r.oid) FROM pg_roles r \
                       JOIN pg_shdepend s ON s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid \
                       JOIN pg_database d ON d.oid = s.dbid \
                       WHERE d.datname IN ({list}) AND r.rolname LIKE 'tenantry_mv_%')"
        ),
    )
    .await;
    for db in dbs {
        let c = connect(db, false);
        n += scalar(&c, "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'tenantry_mv_%'").await;
    }
    n
}

/// Writes assets through the app API until stopped; counts outcomes.
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    pub(crate) ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    pub(crate) worst_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) fn start_writer(app: &TestApp, key: &str, prefix: &str) -> Writer {
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
    /// Waits until `n` writes in all have succeeded (20 s at most).
    pub(crate) async fn wrote(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.ok.load(Ordering::Relaxed) < n {
            assert!(std::time::Instant::now() < deadline, "only {} writes in 20 s", self.ok.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed), self.worst_ms.load(Ordering::Relaxed))
    }
}

pub(crate) async fn asset_count(app: &TestApp, key: &str) -> usize {
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

pub(crate) async fn start(app: &TestApp, path: &str, body: Value) -> String {
    let (s, op) = app.admin_call(Method::POST, path, Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    op["id"].as_str().expect("operation id").to_string()
}

#[tokio::test]
async fn a_tenant_moves_between_shared_pools_while_writing_and_loses_nothing() {
    let app = spawn_app().await;
    let a = app.create_tenant("mover", "shared").await;
    let b = app.create_tenant("neighbour", "shared").await;
    let (pool2, pool2_name) = second_pool(&app).await;
    seed_many(&app, &a.key, "M", 20).await;
    seed_many(&app, &b.key, "N", 3).await;

    let writer = start_writer(&app, &a.key, "W");
    let neighbour = start_writer(&app, &b.key, "NW");
    writer.wrote(10).await;
    neighbour.wrote(10).await;
    let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    let done = app.wait_operation(&op).await;
    // Writes go on landing after the move, on the new home.
    writer.wrote(writer.ok.load(Ordering::Relaxed) + 10).await;
    let (ok, errors, worst) = writer.finish().await;
    let (n_ok, n_errors, _) = neighbour.finish().await;

    eprintln!("move: {done:#}\nwrites ok {ok}, worst {worst} ms");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(errors, 0, "the moving tenant's writes all succeeded ({ok} ok, worst {worst} ms)");
    assert_eq!(n_errors, 0, "the neighbour saw no errors ({n_ok} ok)");
    assert_eq!(app.cp.tenant(&b.id).await.unwrap().placement.unwrap().backend_name, app.pool_name, "same pool");
    assert!(ok > 20, "writes went on during the move: {ok}");
    let p = &done["progress"];
    assert_eq!(p["cutover_done"], true);
    assert_eq!(p["verified"], "checksums", "{p}");
    assert_eq!(p["counts"]["assets"], p["checksums"]["assets"]["rows"], "{p}");
    assert!(p["counts"]["assets"].as_i64().unwrap() >= 20, "{p}");
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

#[tokio::test]
async fn promote_then_demote_round_trips_and_retires_the_dedicated_database() {
    let app = spawn_app().await;
    let a = app.create_tenant("grower", "shared").await;
    seed_many(&app, &a.key, "G", 10).await;
    let writer = start_writer(&app, &a.key, "PW");

    let op = start(&app, &format!("/v1/tenants/{}/promote", a.id), json!({"engine": "logical"})).await;
    let done = app.wait_operation(&op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["kind"], "promote");
    let t = app.cp.tenant(&a.id).await.unwrap();
    assert_eq!(t.tier, tenantry_core::Tier::Dedicated);
    let dedicated = app.cp.backend(t.placement.as_ref().unwrap().backend_id).await.unwrap();
    assert_eq!((dedicated.kind.as_str(), dedicated.tenants), ("dedicated", 1));
    assert_eq!(rows_in(&app.pool_name, &a.id).await, 0, "the shared pool no longer holds the tenant");

    let op = start(&app, &format!("/v1/tenants/{}/demote", a.id), json!({})).await;
    let done = app.wait_operation(&op).await;
    let (ok, errors, worst) = writer.finish().await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(errors, 0, "no write failed across promote and demote ({ok} ok, worst {worst} ms)");
    let t = app.cp.tenant(&a.id).await.unwrap();
    assert_eq!(t.tier, tenantry_core::Tier::Shared);
    assert_eq!(t.placement.as_ref().unwrap().epoch, 3);
    assert_eq!(t.placement.as_ref().unwrap().backend_name, app.pool_name);
    assert_eq!(asset_count(&app, &a.key).await, 10 + ok as usize);
    assert_eq!(rows_in(&app.pool_name, &a.id).await, 30 + ok as i64);
    assert_eq!(app.cp.backend(dedicated.id).await.unwrap().status, tenantry_core::BackendStatus::Retired);
    let postgres = connect("postgres", false);
    let gone = format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", dedicated.database);
    assert_eq!(scalar(&postgres, &gone).await, 0, "the dedicated database was dropped");
    assert_eq!(leftovers(&[&app.pool_name]).await, 0);

    // The audit log tells the story.
    let registry = connect(&app.cp.config().registry_database, false);
    let cutovers =
        format!("SELECT count(*) FROM audit_log WHERE tenant_id = '{}' AND action = 'tenant.move.cutover'", a.id);
    assert_eq!(scalar(&registry, &cutovers).await, 2);
}

#[tokio::test]
async fn the_move_plan_is_a_dry_run_with_sizes_and_checks() {
    let app = spawn_app().await;
    let a = app.create_tenant("planned", "shared").await;
    let (pool2, _) = second_pool(&app).await;
    seed_many(&app, &a.key, "P", 4).await;

    let (s, plan) = app.admin_call(Method::GET, &format!("/v1/tenants/{}/move-plan?target={pool2}", a.id), None).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["kind"], "move");
    assert_eq!(plan["ready"], true, "{plan}");
    assert_eq!(plan["total_rows"], 12);
    let assets = plan["tables"].as_array().unwrap().iter().find(|t| t["table"] == "assets").unwrap().clone();
    assert_eq!(assets["rows"], 4);
    assert!(assets["bytes"].as_i64().unwrap() > 0);
    let names: Vec<&str> = plan["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for expected in ["wal_level_logical", "replica_identity", "same_schema_version", "target_empty_for_tenant"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert_eq!(plan["max_write_pause_ms"], 2000);

    let (s, plan) =
        app.admin_call(Method::GET, &format!("/v1/tenants/{}/move-plan?target=dedicated", a.id), None).await;
    assert_eq!(
        (s, plan["kind"].clone(), plan["target"]["id"].clone()),
        (StatusCode::OK, json!("promote"), Value::Null)
    );

    // Nothing changed: no operation, same placement.
    let (_, ops) = app.admin_call(Method::GET, &format!("/v1/operations?tenant={}", a.id), None).await;
    assert_eq!(ops["operations"].as_array().unwrap().len(), 0);
    assert_eq!(app.cp.tenant(&a.id).await.unwrap().placement.unwrap().epoch, 1);

    let (s, body) = app.admin_call(Method::GET, &format!("/v1/tenants/{}/move-plan?target=nowhere", a.id), None).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("unknown_target")));
    let (s, body) = app.admin_call(Method::GET, &format!("/v1/tenants/{}/move-plan", a.id), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn bad_move_requests_get_clear_4xx_errors() {
    let app = spawn_app().await;
    let a = app.create_tenant("asked", "shared").await;
    let d = app.create_tenant("big", "dedicated").await;
    let (pool2, _) = second_pool(&app).await;
    let pool1 = app.cp.tenant(&a.id).await.unwrap().placement.unwrap().backend_id;
    let template = app
        .cp
        .backends()
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.kind == tenantry_core::BackendKind::Template)
        .unwrap()
        .id;
    let dedicated = app.cp.tenant(&d.id).await.unwrap().placement.unwrap().backend_id;

    let cases: Vec<(String, Value, StatusCode, &str)> = vec![
        (
            format!("/v1/tenants/{}/move", a.id),
            json!({"target_backend_id": pool1}),
            StatusCode::CONFLICT,
            "already_there",
        ),
        (
            format!("/v1/tenants/{}/move", a.id),
            json!({"target_backend_id": uuid::Uuid::nil()}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_backend",
        ),
        (
            format!("/v1/tenants/{}/move", a.id),
            json!({"target_backend_id": template}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_target",
        ),
        (
            format!("/v1/tenants/{}/move", a.id),
            json!({"target_backend_id": dedicated}),
            StatusCode::CONFLICT,
            "backend_in_use",
        ),
        (
            format!("/v1/tenants/{}/move", a.id),
            json!({"target": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (format!("/v1/tenants/{}/promote", d.id), json!({}), StatusCode::CONFLICT, "already_dedicated"),
        (
            format!("/v1/tenants/{}/promote", a.id),
            json!({"engine": "rds"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "engine_unavailable",
        ),
        (
            format!("/v1/tenants/{}/promote", a.id),
            json!({"region": "mars-1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "region_unavailable",
        ),
        (format!("/v1/tenants/{}/demote", a.id), json!({}), StatusCode::CONFLICT, "already_shared"),
        (
            format!("/v1/tenants/{}/demote", d.id),
            json!({"target_pool_id": dedicated}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_shared_pool",
        ),
        (
            "/v1/tenants/nobody/move".to_string(),
            json!({"target_backend_id": pool2}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (path, body, status, code) in cases {
        let (s, resp) = app.admin_call(Method::POST, &path, Some(body.clone())).await;
        assert_eq!((s, resp["error"]["code"].as_str().unwrap_or_default()), (status, code), "{path} {body}: {resp}");
    }

    // One operation per tenant at a time.
    let first = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    let (s, resp) = app
        .admin_call(Method::POST, &format!("/v1/tenants/{}/move", a.id), Some(json!({"target_backend_id": pool2})))
        .await;
    assert_eq!((s, resp["error"]["code"].clone()), (StatusCode::CONFLICT, json!("operation_in_progress")));
    let done = app.wait_operation(&first).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Finished operations are not cancellable.
    let (s, resp) = app.admin_call(Method::POST, &format!("/v1/operations/{first}/cancel"), None).await;
    assert_eq!((s, resp["error"]["code"].clone()), (StatusCode::CONFLICT, json!("not_cancellable")));
}

#[tokio::test]
async fn cancelling_before_the_cutover_rolls_everything_back() {
    // A lag threshold no slot can meet holds the move in catch-up.
    let app = spawn_app_with(|s| s.control_plane.moves.max_lag_bytes = -1).await;
    let a = app.create_tenant("undecided", "shared").await;
    let (pool2, pool2_name) = second_pool(&app).await;
    seed_many(&app, &a.key, "U", 5).await;
    let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    for _ in 0..400 {
        let (_, o) = app.admin_call(Method::GET, &format!("/v1/operations/{op}"), None).await;
        if o["step"] == "catch_up" && o["progress"]["lag_bytes"].is_i64() {
            assert_eq!(o["progress"]["rows_copied"], 15, "{o}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows_in(&pool2_name, &a.id).await, 15, "the initial copy reached the target");
    // The subscription logs in as the move's own role, not the administrator.
    let role = format!("tenantry_mv_{}", op.replace('-', ""));
    let postgres = connect("postgres", false);
    let q = |sql: String| {
        let postgres = &postgres;
        async move { scalar(postgres, &sql).await }
    };
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{role}' AND rolcanlogin AND rolreplication \
             AND rolbypassrls AND NOT rolsuper AND NOT rolcreaterole AND NOT rolcreatedb"
        ))
        .await,
        1
    );
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM pg_subscription WHERE subname = '{role}' \
             AND subconninfo LIKE '%user=''{role}''%' AND subconninfo LIKE '%sslmode=verify-full%'"
        ))
        .await,
        1
    );
    assert_eq!(q(format!("SELECT count(*) FROM pg_stat_replication WHERE usename = '{role}'")).await, 1);
    let (s, _) = app.admin_call(Method::POST, &format!("/v1/operations/{op}/cancel"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let done = app.wait_operation(&op).await;
    assert_eq!(done["state"], "cancelled", "{done}");

    assert_eq!(rows_in(&pool2_name, &a.id).await, 0, "copied rows removed from the target");
    assert_eq!(rows_in(&app.pool_name, &a.id).await, 15, "the source is untouched");
    assert_eq!(leftovers(&[&app.pool_name, &pool2_name]).await, 0);
    assert_eq!(
        q(format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")).await,
        0,
        "the move's role is dropped"
    );
    let t = app.cp.tenant(&a.id).await.unwrap();
    assert_eq!(t.placement.unwrap().epoch, 1);
    assert_eq!(app.post(&a.key, "/v1/assets", json!({"name": "after", "tag": "AFTER"})).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn a_fence_that_cannot_drain_in_time_is_lifted_and_the_tenant_keeps_writing() {
    // 0 ms: replication can never deliver the sentinel inside the bound.
    let app = spawn_app_with(|s| {
        s.control_plane.moves.fence_timeout_ms = 0;
        s.control_plane.moves.cutover_tries = 50;
    })
    .await;
    let a = app.create_tenant("hostage", "shared").await;
    let (pool2, _) = second_pool(&app).await;
    seed_many(&app, &a.key, "H", 2).await;
    let writer = start_writer(&app, &a.key, "HW");
    let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    let mut attempts = 0;
    for _ in 0..400 {
        let (_, o) = app.admin_call(Method::GET, &format!("/v1/operations/{op}"), None).await;
        attempts = o["progress"]["cutover_attempts"].as_i64().unwrap_or(0);
        if attempts >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(attempts >= 3, "cutover retried: {attempts}");
    let (ok, errors, _) = writer.finish().await;
    assert_eq!(errors, 0, "writes kept succeeding on the source ({ok} ok)");
    assert!(ok > 0);
    assert_eq!(app.cp.tenant(&a.id).await.unwrap().placement.unwrap().epoch, 1, "not flipped");
    app.admin_call(Method::POST, &format!("/v1/operations/{op}/cancel"), None).await;
    assert_eq!(app.wait_operation(&op).await["state"], "cancelled");
}

#[tokio::test]
async fn an_app_with_a_stale_cache_follows_the_tenant_and_writes_nothing_to_the_source() {
    let app = spawn_app().await;
    let a = app.create_tenant("followed", "shared").await;
    let (pool2, pool2_name) = second_pool(&app).await;
    seed_many(&app, &a.key, "S", 3).await;
    // A second app process that never hears about moves: only the residency
    // check can tell it.
    let stale = app.another_app(|s| s.app.listen_for_changes = false).await;
    let client = reqwest::Client::new();
    let list = |url: String| {
        let (client, key) = (client.clone(), a.key.clone());
        async move { client.get(format!("{url}/v1/assets")).bearer_auth(key).send().await.unwrap().status() }
    };
    assert_eq!(list(stale.clone()).await, StatusCode::OK, "its cache now holds epoch 1 on the old pool");

    let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    assert_eq!(app.wait_operation(&op).await["state"], "succeeded");

    let resp = client
        .post(format!("{stale}/v1/assets"))
        .bearer_auth(&a.key)
        .json(&json!({"name": "late", "tag": "STALE-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let pool1 = connect(&app.pool_name, false);
    assert_eq!(scalar(&pool1, "SELECT count(*) FROM assets WHERE tag = 'STALE-1'").await, 0);
    let pool2c = connect(&pool2_name, false);
    assert_eq!(scalar(&pool2c, "SELECT count(*) FROM assets WHERE tag = 'STALE-1'").await, 1);
    assert_eq!(list(stale).await, StatusCode::OK);
}

#[tokio::test]
async fn orphaned_replication_objects_are_found_and_dropped() {
    let app = spawn_app().await;
    let pool = connect(&app.pool_name, false);
    let name = format!("tenantry_mv_{}", uuid::Uuid::new_v4().simple());
    use sea_orm::ConnectionTrait;
    pool.execute_unprepared(&format!("CREATE PUBLICATION {name} FOR TABLE assets WITH (publish = 'insert')"))
        .await
        .unwrap();
    pool.execute_unprepared(&format!("SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")).await.unwrap();
    // A move's role, made with its grants as a move makes it.
    pool.execute_unprepared(&format!(
        "CREATE ROLE {name} LOGIN REPLICATION; GRANT CONNECT ON DATABASE {db} TO {name}; \
         GRANT SELECT ON assets TO {name}",
        db = app.pool_name
    ))
    .await
    .unwrap();
    assert_eq!(leftovers(&[&app.pool_name]).await, 3);
    let dropped = app.cp.sweep_move_orphans().await.unwrap();
    assert!(dropped.iter().any(|d| d.contains(&name)), "{dropped:?}");
    assert!(dropped.contains(&format!("role {name}")), "{dropped:?}");
    assert_eq!(leftovers(&[&app.pool_name]).await, 0);
    assert_eq!(scalar(&pool, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'")).await, 0);
}

#[tokio::test]
async fn a_promotion_to_rds_provisions_through_the_api_and_moves_the_tenant() {
    let app = spawn_app_with(crate::helpers::with_rds).await;
    let a = app.create_tenant("cloudy", "shared").await;
    seed_many(&app, &a.key, "C", 3).await;
    let op = start(&app, &format!("/v1/tenants/{}/promote", a.id), json!({"engine": "rds"})).await;
    let done = app.wait_operation(&op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let t = app.cp.tenant(&a.id).await.unwrap();
    let backend = app.cp.backend(t.placement.unwrap().backend_id).await.unwrap();
    assert_eq!((backend.engine.as_str(), backend.kind.as_str()), ("rds", "dedicated"));
    assert!(backend.name.starts_with("tenantry-"), "{}", backend.name);
    assert_eq!(asset_count(&app, &a.key).await, 3);
    assert_eq!(rows_in(&backend.database, &a.id).await, 9);
    assert_eq!(rows_in(&app.pool_name, &a.id).await, 0);

    // And back: the instance is retired with a final snapshot.
    let op = start(&app, &format!("/v1/tenants/{}/demote", a.id), json!({})).await;
    let done = app.wait_operation(&op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let snapshot = done["params"]["final_snapshot"].as_str().expect("final snapshot").to_string();
    assert_eq!(snapshot, format!("{}-final", backend.name));
    assert_eq!(app.cp.backend(backend.id).await.unwrap().status, tenantry_core::BackendStatus::Retired);
    assert_eq!(asset_count(&app, &a.key).await, 3);
}

/// A real `tenantry serve` child runs the move and aborts right after the
/// chosen step (or inside the cutover, fenced); a fresh worker in this process
/// resumes once the lease lapses. Every time: the move completes, every row is
/// on the target exactly once, the source is empty, nothing is left behind.
#[tokio::test]
async fn a_move_killed_at_any_step_resumes_with_nothing_lost_or_duplicated() {
    let app = spawn_app_with(|s| {
        s.control_plane.operation_workers = 0;
        s.control_plane.lease_secs = 1;
    })
    .await;
    let a = app.create_tenant("crashy", "shared").await;
    let pool1 = app.cp.tenant(&a.id).await.unwrap().placement.unwrap().backend_id;
    let (pool2, pool2_name) = second_pool(&app).await;
    seed_many(&app, &a.key, "K", 5).await;
    let config = app.config_file("lease_secs = 1");
    let mut points: Vec<String> =
        tenantry_control_plane::moves::MOVE_STEPS.iter().map(|s| format!("move.after.{s}")).collect();
    points.insert(5, "move.cutover.fenced".into());
    let names = [app.pool_name.clone(), pool2_name.clone()];
    for (i, point) in points.iter().enumerate() {
        let (target, target_name, source_name) =
            if i % 2 == 0 { (pool2.clone(), &names[1], &names[0]) } else { (pool1.to_string(), &names[0], &names[1]) };
        // A write between moves: the resumed move must carry it too.
        assert_eq!(
            app.post(&a.key, "/v1/assets", json!({"name": "x", "tag": format!("between-{i}")})).await.0,
            StatusCode::CREATED
        );
        let expected = rows_in(source_name, &a.id).await;
        let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": target})).await;
        let (cfg, fp) = (config.clone(), point.clone());
        let out = tokio::task::spawn_blocking(move || crate::helpers::run_child(&cfg, &fp)).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&format!("failpoint {point}")), "{point}: {stderr}");

        let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
        let done = app.wait_operation(&op).await;
        worker.abort();
        assert_eq!(done["state"], "succeeded", "crash at {point}: {done}");
        assert_eq!(rows_in(target_name, &a.id).await, expected, "crash at {point}: every row, once");
        assert_eq!(rows_in(source_name, &a.id).await, 0, "crash at {point}: source purged");
        assert_eq!(leftovers(&[&names[0], &names[1]]).await, 0, "crash at {point}: nothing left behind");
        let status = app.get_until(&a.key, "/v1/assets", StatusCode::OK).await;
        assert_eq!(status, StatusCode::OK, "crash at {point}: the tenant serves");
    }
    assert_eq!(asset_count(&app, &a.key).await, 5 + points.len());
}

#[tokio::test]
async fn the_cli_plans_promotes_and_demotes_with_progress() {
    let app = spawn_app().await;
    let a = app.create_tenant("cli-mover", "shared").await;
    seed_many(&app, &a.key, "L", 2).await;
    let (admin, token) = (app.admin.clone(), app.token.clone());
    let run = move |args: Vec<&'static str>| {
        let (admin, token) = (admin.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
                .args(&args)
                .env("TENANTRY_ADMIN_URL", &admin)
                .env("TENANTRY_ADMIN_TOKEN", &token)
                .output()
                .expect("run the CLI")
        })
    };
    let out = run(vec!["tenants", "plan", "cli-mover", "--target", "dedicated"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("promote") && stdout.contains("[ok  ] wal_level_logical") && stdout.contains("ready"),
        "{stdout}"
    );

    let out = run(vec!["tenants", "promote", "cli-mover"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("succeeded") && stdout.contains("write pause"), "{stdout}");
    assert_eq!(app.cp.tenant(&a.id).await.unwrap().tier, tenantry_core::Tier::Dedicated);

    let out = run(vec!["tenants", "promote", "cli-mover"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already_dedicated"));

    let out = run(vec!["tenants", "demote", "cli-mover"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(app.cp.tenant(&a.id).await.unwrap().tier, tenantry_core::Tier::Shared);
    assert_eq!(asset_count(&app, &a.key).await, 2);
}

/// Names of the secondary indexes (unique constraints' included) on the
/// tenant tables of a database.
async fn secondary_indexes(db: &str) -> Vec<String> {
    use sea_orm::ConnectionTrait;
    let c = connect(db, false);
    c.query_all_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND NOT x.indisprimary AND t.relname <> 'tenant_residency' ORDER BY 1",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get_by_index::<String>(0).unwrap())
    .collect()
}

/// A promotion loads its fresh database without secondary indexes and builds
/// them after the copy, also when it is killed right after dropping them: the
/// dedicated database ends with every index the schema has, and the tenant
/// finds its rows by tag (a unique index) there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_builds_its_indexes_after_the_copy_even_after_a_crash() {
    let app = spawn_app_with(|s| {
        s.control_plane.operation_workers = 0;
        s.control_plane.lease_secs = 1;
    })
    .await;
    let a = app.create_tenant("indexed", "shared").await;
    seed_many(&app, &a.key, "IX", 20).await;
    let expected = secondary_indexes(&app.pool_name).await;
    assert!(expected.len() >= 3, "{expected:?}");
    let op = start(&app, &format!("/v1/tenants/{}/promote", a.id), json!({"engine": "logical"})).await;
    let config = app.config_file("lease_secs = 1");
    let (cfg, fp) = (config.clone(), "move.after.subscribe".to_string());
    let out = tokio::task::spawn_blocking(move || crate::helpers::run_child(&cfg, &fp)).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("failpoint move.after.subscribe"));
    let view = app.cp.operation(op.parse().unwrap()).await.unwrap();
    let new_db = view.params["database"].as_str().unwrap().to_string();
    let deferred = view.params["deferred_indexes"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(deferred, expected.len(), "every secondary index recorded before it was dropped");
    assert!(secondary_indexes(&new_db).await.is_empty(), "loaded without them");

    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&op).await;
    worker.abort();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"]["indexes_rebuilt"], expected.len());
    assert_eq!(secondary_indexes(&new_db).await, expected, "built again, every one");
    let (s, found) = app.get(&a.key, "/v1/assets/by-tag/IX-7").await;
    assert_eq!(s, StatusCode::OK, "{found}");
    let (s, dup) = app.post(&a.key, "/v1/assets", json!({"name": "dup", "tag": "IX-7"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "the unique tag holds again: {dup}");
}
