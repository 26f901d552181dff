//! Adopting legacy sources (issue 13): a legacy writer keeps writing to its
//! schema during the copy and catch-up; at the cutover its writes fail with
//! TA001 naming the adoption, every write it had acknowledged is in Tenantry,
//! and the tenant serves. Dedicated targets, the database-per-tenant layout
//! and a mapping; verification catching a change behind the adoption's back;
//! a kill at every step; adopt-all with a broken source; release; bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, Connection};
use serde_json::{Value, json};

use crate::estates::{add, estate_body, legacy_estate};
use crate::helpers::{TestApp, cluster, connect, scalar, spawn_app, spawn_app_with};

async fn legacy_conn(db: &str) -> PgConnection {
    let tc = cluster();
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(tc.cluster.port())
        .database(db)
        .username("postgres")
        .password(&tc.secrets.superuser_password);
    PgConnection::connect_with(&opts).await.unwrap()
}

async fn estate(app: &TestApp, db: &str) -> String {
    let (s, e) =
        add(app, estate_body(&tenantry::testkit::unique("est"), db, "postgres", &cluster().secrets.superuser_password))
            .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    e["id"].as_str().unwrap().to_string()
}

/// The legacy application: inserts assets (with a schedule now and then),
/// renames and deletes some, until the fence refuses a write.
struct LegacyWriter {
    handle: tokio::task::JoinHandle<(Vec<String>, String)>,
    ok: Arc<AtomicU64>,
}

impl LegacyWriter {
    fn start(db: &str, schema: &str, prefix: &str) -> Self {
        let (db, schema, prefix) = (db.to_string(), schema.to_string(), prefix.to_string());
        let ok = Arc::new(AtomicU64::new(0));
        let ok2 = ok.clone();
        let handle = tokio::spawn(async move {
            let mut conn = legacy_conn(&db).await;
            let mut live: Vec<String> = Vec::new();
            let mut i = 0u64;
            loop {
                i += 1;
                let tag = format!("{prefix}-{i}");
                let sql = match i % 7 {
                    3 if live.len() > 2 => format!(
                        "UPDATE {schema}.assets SET name = 'renamed {i}' WHERE tag = '{}'",
                        live[live.len() - 2]
                    ),
                    5 if live.len() > 3 => {
                        format!("DELETE FROM {schema}.assets WHERE tag = '{}'", live.remove(live.len() - 3))
                    }
                    6 => format!(
                        "WITH a AS (INSERT INTO {schema}.assets (name, tag) VALUES ('W{i}', '{tag}') RETURNING id) \
                         INSERT INTO {schema}.maintenance_schedules (asset_id, title, interval_days, next_due_at) \
                         SELECT id, 'Check {i}', 7, '2027-02-01' FROM a"
                    ),
                    _ => format!("INSERT INTO {schema}.assets (name, tag, color) VALUES ('W{i}', '{tag}', 'c{i}')"),
                };
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await {
                    Ok(_) => {
                        if sql.starts_with("INSERT") || sql.starts_with("WITH") {
                            live.push(tag);
                        }
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let db_err =
                            e.as_database_error().map(|d| (d.code().map(|c| c.to_string()), d.message().to_string()));
                        match db_err {
                            Some((Some(code), message)) if code == "TA001" => return (live, message),
                            other => panic!("legacy write `{sql}` failed: {other:?} {e}"),
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
        });
        LegacyWriter { handle, ok }
    }

    async fn wrote(&self, n: u64) {
        for _ in 0..2000 {
            if self.ok.load(Ordering::Relaxed) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the legacy writer did not write {n} times");
    }

    /// The tags it inserted and did not delete, and the fence's message.
    async fn fenced(self) -> (Vec<String>, String) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), self.handle).await;
        waited.expect("the legacy writer is fenced within 60 s").unwrap()
    }
}

/// The legacy source's rows, mapped by hand: (tag, name) of assets, and
/// schedule titles, sorted.
async fn legacy_rows(db: &str, schema: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut c = legacy_conn(db).await;
    let assets = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT tag, name FROM {schema}.assets ORDER BY tag")))
        .fetch_all(&mut c)
        .await
        .unwrap();
    let scheds = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT title FROM {schema}.maintenance_schedules ORDER BY title"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    (assets, scheds)
}

/// The tenant's rows on a backend database, the same way.
async fn target_rows(db: &str, tenant: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut c = legacy_conn(db).await;
    let assets = sqlx::query_as("SELECT tag, name FROM assets WHERE tenant_id = $1::uuid ORDER BY tag")
        .bind(tenant)
        .fetch_all(&mut c)
        .await
        .unwrap();
    let scheds =
        sqlx::query_scalar("SELECT title FROM maintenance_schedules WHERE tenant_id = $1::uuid ORDER BY title")
            .bind(tenant)
            .fetch_all(&mut c)
            .await
            .unwrap();
    (assets, scheds)
}

async fn adopt(app: &TestApp, estate: &str, body: Value) -> (StatusCode, Value) {
    app.admin_call(Method::POST, &format!("/v1/estates/{estate}/adopt"), Some(body)).await
}

async fn source_state(app: &TestApp, estate: &str, source: &str) -> Value {
    let (_, body) = app.admin_call(Method::GET, &format!("/v1/estates/{estate}/sources"), None).await;
    body["sources"].as_array().unwrap().iter().find(|s| s["name"] == source).cloned().unwrap_or(Value::Null)
}

/// Replication objects an adoption left on the legacy cluster.
async fn replication_leftovers(db: &str) -> i64 {
    let mut c = legacy_conn(db).await;
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantry\\_ad\\_%' AND database = current_database()) \
              + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'tenantry\\_ad\\_%')",
    )
    .fetch_one(&mut c)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_is_adopted_onto_the_shared_pool_while_the_legacy_app_writes() {
    let app = spawn_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let writer = LegacyWriter::start(&db, "tenant_acme", "L");
    writer.wrote(20).await;

    let (s, op) = adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-legacy", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "adopt");
    let tenant = op["tenant_id"].as_str().unwrap().to_string();
    // The tenant exists at once: keys can be issued, requests wait for the cutover.
    let (s, key) =
        app.admin_call(Method::POST, &format!("/v1/tenants/{tenant}/api-keys"), Some(json!({"name": "k"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let (s, body) = app.get(&key, "/v1/assets").await;
    if s != StatusCode::OK {
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("tenant_provisioning")));
    }
    let (s, again) =
        adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-twice", "tier": "shared"})).await;
    assert_eq!((s, again["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("source_taken")), "{again}");

    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (live, fence_message) = writer.fenced().await;
    assert!(
        fence_message.contains(op["id"].as_str().unwrap()) && fence_message.contains("adopted"),
        "the legacy writer is refused naming the adoption: {fence_message}"
    );

    // Every acknowledged legacy write is in Tenantry, mapped.
    let (legacy_assets, legacy_scheds) = legacy_rows(&db, "tenant_acme").await;
    let (target_assets, target_scheds) = target_rows(&app.pool_name, &tenant).await;
    assert_eq!(target_assets, legacy_assets, "assets as of the fence");
    assert_eq!(target_scheds, legacy_scheds, "schedules as of the fence");
    let tags: Vec<&String> = legacy_assets.iter().map(|(t, _)| t).collect();
    assert!(live.iter().all(|t| tags.contains(&t)), "every insert the writer saw acknowledged is there");
    assert!(live.len() > 10, "the writer wrote during the adoption: {}", live.len());

    let p = &done["progress"];
    assert_eq!(p["verified"]["mismatched"], 0, "{p}");
    assert!(p["pause_ms"].is_i64(), "{p}");
    for (table, c) in p["counts"].as_object().unwrap() {
        assert_eq!(c["legacy"], c["target"], "{table}: {c}");
        let sums = &p["checksums"][table];
        assert_eq!(sums["legacy"], sums["target"], "{table}: the legacy source as of the fence and the target");
        assert_eq!(sums["legacy"].as_str().map(str::len), Some(16), "{sums}");
        assert_eq!(sums["legacy_rows_hashed"], c["legacy"], "every legacy row hashed, as of the fence: {sums}");
    }
    assert_ne!(p["checksums"]["assets"]["target"], p["checksums"]["maintenance_schedules"]["target"], "{p}");
    // The tenant serves: ids are UUID v5 of "assets:<id>", extra columns in attributes.
    let tenant_id = uuid::Uuid::parse_str(&tenant).unwrap();
    let (s, pump) = app.get(&key, "/v1/assets/by-tag/P-1").await;
    assert_eq!(s, StatusCode::OK, "{pump}");
    assert_eq!(pump["id"], uuid::Uuid::new_v5(&tenant_id, b"assets:1").to_string());
    assert_eq!(pump["attributes"], json!({"color": "red"}));
    let (s, _) = app.post(&key, "/v1/assets", json!({"name": "New", "tag": "T-NEW"})).await;
    assert_eq!(s, StatusCode::CREATED, "the adopted tenant writes");

    let src = source_state(&app, &estate, "tenant_acme").await;
    assert_eq!((src["state"].as_str(), src["tenant_id"].as_str()), (Some("adopted"), Some(tenant.as_str())), "{src}");
    assert_eq!(replication_leftovers(&db).await, 0, "slot and publication dropped");
    assert_eq!(source_state(&app, &estate, "tenant_broken").await["state"], "not_adopted", "other sources untouched");
    // The fence now says the adoption is done, and how to get the writes back.
    let mut c = legacy_conn(&db).await;
    let refused = sqlx::raw_sql("INSERT INTO tenant_acme.assets (name, tag) VALUES ('Late', 'L-1')")
        .execute(&mut c)
        .await
        .expect_err("still fenced");
    let refused = refused.as_database_error().map(|d| (d.code().map(|c| c.to_string()), d.message().to_string()));
    let (code, message) = refused.unwrap();
    assert_eq!(code.as_deref(), Some("TA001"));
    assert!(message.contains("was adopted by Tenantry") && message.contains("revert"), "{message}");

    // Release with drop: the legacy schema goes; releasing twice is a conflict.
    let (s, body) = app
        .admin_call(
            Method::POST,
            &format!("/v1/estates/{estate}/release"),
            Some(json!({"source": "tenant_acme", "drop": true})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let mut c = legacy_conn(&db).await;
    let schema: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'tenant_acme'")
            .fetch_optional(&mut c)
            .await
            .unwrap();
    assert_eq!(schema, None, "the legacy schema is dropped");
    let (s, body) = app
        .admin_call(Method::POST, &format!("/v1/estates/{estate}/release"), Some(json!({"source": "tenant_acme"})))
        .await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("source_not_adopted")), "{body}");
}

/// Database per tenant, a mapping with a renamed column and one that has no
/// target (kept in attributes), onto a new dedicated database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_per_tenant_source_is_adopted_onto_a_dedicated_database_with_a_mapping() {
    let app = spawn_app().await;
    let prefix = tenantry::testkit::unique("legacydb");
    let source = format!("{prefix}_acme");
    connect("postgres", false).execute_unprepared(&format!("CREATE DATABASE {source}")).await.unwrap();
    connect(&source, false)
        .execute_unprepared(
            "CREATE TABLE assets (id bigserial PRIMARY KEY, label text NOT NULL, tag text NOT NULL,
                 status text NOT NULL DEFAULT 'active', floor integer);
             CREATE TABLE asset_issues (id bigserial PRIMARY KEY, asset_id bigint NOT NULL, title text NOT NULL,
                 status text NOT NULL DEFAULT 'open', priority text NOT NULL DEFAULT 'low');
             INSERT INTO assets (label, tag, floor) SELECT 'Unit ' || g, 'U-' || g, g % 5 FROM generate_series(1, 300) g;
             INSERT INTO asset_issues (asset_id, title) SELECT g, 'Issue ' || g FROM generate_series(1, 300, 3) g;",
        )
        .await
        .unwrap();
    let mut body = estate_body(&prefix, "postgres", "postgres", &cluster().secrets.superuser_password);
    body["layout"] = json!("database_per_tenant");
    body["pattern"] = json!(format!("{prefix}\\_%"));
    body["mapping"] = json!({"tables": {"assets": {"columns": {"name": "label"}, "values": {"location": "HQ"}}}});
    let (s, e) = add(&app, body).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let estate = e["id"].as_str().unwrap();
    let writer = LegacyWriterDb::start(&source);

    let (s, op) = adopt(&app, estate, json!({"source": source, "slug": "acme-db", "tier": "dedicated"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let written = writer.fenced().await;
    let tenant = app.cp.tenant("acme-db").await.unwrap();
    assert_eq!(tenant.tier, tenantry_core::Tier::Dedicated);
    let backend = app.cp.backend(tenant.placement.unwrap().backend_id).await.unwrap();
    assert_ne!(backend.name, app.pool_name, "a database of its own");
    // Loaded without its secondary indexes, built again after the copy: the
    // database has every index the tenant schema has.
    assert!(done["progress"]["indexes_rebuilt"].as_u64().unwrap_or(0) >= 2, "{done}");
    let indexes = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'";
    let (adopted, template) = (connect(&backend.database, false), connect(&app.cp.config().template_database, false));
    assert_eq!(scalar(&adopted, indexes).await, scalar(&template, indexes).await, "every index is back");

    let (assets, _) = target_rows(&backend.database, &tenant.id.to_string()).await;
    assert_eq!(assets.len() as u64, 300 + written, "every legacy row, the ones written during the adoption too");
    let key = app.cp.create_api_key("test", tenant.id, "k").await.unwrap().key;
    let (s, unit) = app.get(&key, "/v1/assets/by-tag/U-7").await;
    assert_eq!(s, StatusCode::OK, "{unit}");
    assert_eq!((unit["name"].as_str(), unit["location"].as_str()), (Some("Unit 7"), Some("HQ")), "renamed and given");
    assert_eq!(unit["attributes"], json!({"floor": "2"}), "a column with no target is kept");
    assert_eq!(unit["id"], uuid::Uuid::new_v5(&tenant.id, b"assets:7").to_string());
    let (_, issues) = app.get(&key, "/v1/issues?limit=200").await;
    let issue7 = issues["issues"].as_array().unwrap().iter().find(|i| i["title"] == "Issue 7").cloned();
    assert_eq!(issue7.map(|i| i["asset_id"].clone()), Some(unit["id"].clone()), "the child followed its parent's id");

    // Released without drop: the legacy copy stays, and its fence says it is frozen.
    let (s, body) =
        app.admin_call(Method::POST, &format!("/v1/estates/{estate}/release"), Some(json!({"source": source}))).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let mut c = legacy_conn(&source).await;
    let refused = sqlx::raw_sql("INSERT INTO assets (label, tag) VALUES ('Late', 'L-1')")
        .execute(&mut c)
        .await
        .expect_err("still fenced");
    let message = refused.as_database_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains("released: this copy is frozen"), "{message}");
}

/// A legacy writer on a database-per-tenant source: inserts until fenced.
struct LegacyWriterDb(tokio::task::JoinHandle<u64>);

impl LegacyWriterDb {
    fn start(db: &str) -> Self {
        let db = db.to_string();
        LegacyWriterDb(tokio::spawn(async move {
            let mut conn = legacy_conn(&db).await;
            for i in 0.. {
                let sql = format!("INSERT INTO assets (label, tag) VALUES ('Late {i}', 'LATE-{i}')");
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
                    Ok(_) => {}
                    Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("TA001") => return i,
                    Err(e) => panic!("legacy write failed: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            unreachable!()
        }))
    }

    async fn fenced(self) -> u64 {
        self.0.await.unwrap()
    }
}

/// Killed after every step (and inside the cutover, right after the legacy
/// fence) while the legacy application writes: each run resumes where the
/// last stopped, and the result is the legacy source as of the fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adoption_killed_at_every_step_resumes_and_loses_nothing() {
    let app = manual_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let writer = LegacyWriter::start(&db, "tenant_acme", "K");
    writer.wrote(10).await;
    let (s, op) = adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-killed", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let tenant = op["tenant_id"].as_str().unwrap().to_string();
    let config = app.config_file("lease_secs = 1");
    let points = [
        "adopt.after.subscribe",
        "adopt.after.copy",
        "adopt.after.catch_up",
        "adopt.cutover.fenced",
        "adopt.after.cutover",
    ];
    for point in points {
        crash_at(&config, point).await;
    }
    let (live, message) = writer.fenced().await;
    assert!(message.contains(&id), "{message}");
    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&id).await;
    worker.abort();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (legacy_assets, legacy_scheds) = legacy_rows(&db, "tenant_acme").await;
    assert_eq!(target_rows(&app.pool_name, &tenant).await, (legacy_assets.clone(), legacy_scheds));
    let tags: Vec<&String> = legacy_assets.iter().map(|(t, _)| t).collect();
    assert!(live.iter().all(|t| tags.contains(&t)), "every acknowledged legacy write is there");
    assert_eq!(replication_leftovers(&db).await, 0);
    assert_eq!(source_state(&app, &estate, "tenant_acme").await["state"], "adopted");
}

/// An adoption into a new dedicated database loads it without its secondary
/// indexes; killed once the rows are in and the indexes not yet built, the
/// resumed run builds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adoption_into_a_new_database_killed_before_its_index_builds_builds_them_on_resume() {
    let app = manual_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let (s, op) =
        adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-built", "tier": "dedicated"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let config = app.config_file("lease_secs = 1");
    crash_at(&config, "adopt.copy.loaded").await;
    let (_, view) = app.admin_call(Method::GET, &format!("/v1/operations/{id}"), None).await;
    let backend = app.cp.backend(view["backend_id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    let indexes = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'";
    let (target, template) = (connect(&backend.database, false), connect(&app.cp.config().template_database, false));
    let all = scalar(&template, indexes).await;
    assert!(scalar(&target, indexes).await < all, "the rows were loaded without the secondary indexes");

    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&id).await;
    worker.abort();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(scalar(&target, indexes).await, all, "every index is back");
    let tenant = op["tenant_id"].as_str().unwrap();
    let (legacy_assets, legacy_scheds) = legacy_rows(&db, "tenant_acme").await;
    assert_eq!(target_rows(&backend.database, tenant).await, (legacy_assets, legacy_scheds));
}

/// A stack whose operations run only where the test says (in-process
/// workers it starts, or children it crashes), with a 1 s lease.
async fn manual_app() -> TestApp {
    spawn_app_with(|s| {
        s.control_plane.operation_workers = 0;
        s.control_plane.lease_secs = 1;
    })
    .await
}

/// Runs a control-plane child until it crashes at `point`.
async fn crash_at(config: &std::path::Path, point: &str) {
    let (cfg, fp) = (config.to_path_buf(), point.to_string());
    let out = tokio::task::spawn_blocking(move || crate::helpers::run_child(&cfg, &fp)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("failpoint {point}")), "{point}: {stderr}");
}

/// A row changed on the target behind the adoption's back (between copy and
/// cutover) fails the verification before the tenant serves: the legacy
/// source as it was (fence lifted, slot and publication gone), the target's
/// rows and the tenant gone, the source `failed`. Then a cancel before the
/// cutover leaves the legacy source untouched too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verification_catches_a_change_behind_the_adoptions_back_and_a_cancel_leaves_the_legacy_untouched() {
    let app = manual_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let before = legacy_rows(&db, "tenant_acme").await;
    let (s, op) =
        adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-tampered", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let (id, tenant) = (op["id"].as_str().unwrap().to_string(), op["tenant_id"].as_str().unwrap().to_string());
    let config = app.config_file("lease_secs = 1");
    crash_at(&config, "adopt.after.copy").await;
    let pool = connect(&app.pool_name, false);
    pool.execute_unprepared(&format!(
        "UPDATE assets SET name = 'tampered' WHERE tenant_id = '{tenant}' AND tag = 'P-1'"
    ))
    .await
    .unwrap();
    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&id).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("verification_failed")
            || done["error"].as_str().unwrap().contains("differs"),
        "{done}"
    );
    assert_eq!(legacy_rows(&db, "tenant_acme").await, before, "the legacy source as it was");
    let mut c = legacy_conn(&db).await;
    sqlx::raw_sql("UPDATE tenant_acme.assets SET status = 'active'").execute(&mut c).await.expect("no fence left");
    assert_eq!(replication_leftovers(&db).await, 0);
    assert_eq!(target_rows(&app.pool_name, &tenant).await.0.len(), 0, "nothing left on the target");
    assert!(app.cp.tenant(&tenant).await.is_err(), "the never-served tenant is gone");
    assert_eq!(source_state(&app, &estate, "tenant_acme").await["state"], "failed");

    // A failed source can be adopted again; cancelled before the cutover,
    // the legacy source is untouched and the source is as if never adopted.
    let (s, op) =
        adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-cancelled", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    worker.abort();
    crash_at(&config, "adopt.after.catch_up").await;
    let (s, body) = app.admin_call(Method::POST, &format!("/v1/operations/{id}/cancel"), None).await;
    assert!(s.is_success(), "{s} {body}");
    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&id).await;
    worker.abort();
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(replication_leftovers(&db).await, 0);
    assert_eq!(legacy_rows(&db, "tenant_acme").await, before);
    assert_eq!(source_state(&app, &estate, "tenant_acme").await["state"], "not_adopted");
}

/// A row changed directly on the target after the comparison pass looked at
/// it (here while the fence waits for a legacy transaction in flight) is
/// caught in the pause from the target's own record of what was written
/// since the pass began (the rows' transaction ids), and the adoption is
/// rolled back: the legacy source as it was, nothing left on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_the_target_after_its_row_was_compared_is_caught_in_the_pause() {
    let app = spawn_app_with(|s| {
        s.control_plane.operation_workers = 0;
        s.control_plane.lease_secs = 1;
        // Long enough for the test to act while the fence waits.
        s.control_plane.moves.fence_timeout_ms = 60_000;
    })
    .await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let before = legacy_rows(&db, "tenant_acme").await;
    let (s, op) = adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-behind", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let (id, tenant) = (op["id"].as_str().unwrap().to_string(), op["tenant_id"].as_str().unwrap().to_string());
    crash_at(&app.config_file("lease_secs = 1"), "adopt.after.catch_up").await;
    // A legacy write in flight: the cutover compares every row, then its
    // fence waits for this transaction.
    let mut holder = legacy_conn(&db).await;
    sqlx::raw_sql("BEGIN; UPDATE tenant_acme.assets SET status = status WHERE tag = 'P-1'")
        .execute(&mut holder)
        .await
        .unwrap();
    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let mut watch = legacy_conn(&db).await;
    let waiting =
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'tenant_acme.assets'::regclass)";
    while !sqlx::query_scalar::<_, bool>(waiting).fetch_one(&mut watch).await.unwrap() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pool = connect(&app.pool_name, false);
    pool.execute_unprepared(&format!(
        "UPDATE assets SET name = 'changed behind' WHERE tenant_id = '{tenant}' AND tag = 'P-1'"
    ))
    .await
    .unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    let done = app.wait_operation(&id).await;
    worker.abort();
    assert_eq!(done["state"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("verification_failed") || error.contains("differs"), "{done}");
    assert!(error.contains("(changed on the target)"), "caught from the target's record, not by the pass: {done}");
    let sums = &done["progress"]["checksums"];
    assert_ne!(sums["assets"]["legacy"], sums["assets"]["target"], "the checksums differ too: {sums}");
    let schedules = &sums["maintenance_schedules"];
    assert_eq!(schedules["legacy"], schedules["target"], "an untouched table's agree: {sums}");
    assert_eq!(legacy_rows(&db, "tenant_acme").await, before, "the legacy source as it was");
    let mut c = legacy_conn(&db).await;
    sqlx::raw_sql("UPDATE tenant_acme.assets SET status = 'active'").execute(&mut c).await.expect("no fence left");
    assert_eq!(target_rows(&app.pool_name, &tenant).await.0.len(), 0, "nothing left on the target");
    assert_eq!(source_state(&app, &estate, "tenant_acme").await["state"], "failed");
}

/// Bad input: an estate or source that does not exist, a source with
/// problems (no primary key, duplicate tags, orphans), a bad slug or tier.
#[tokio::test]
async fn a_bad_adoption_request_is_refused_with_a_clear_4xx() {
    let app = spawn_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let cases = [
        (
            format!("/v1/estates/{}/adopt", uuid::Uuid::now_v7()),
            json!({"source": "tenant_acme", "slug": "x-1", "tier": "shared"}),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/estates/{estate}/adopt"),
            json!({"source": "tenant_nope", "slug": "x-2", "tier": "shared"}),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/estates/{estate}/adopt"),
            json!({"source": "tenant_broken", "slug": "x-3", "tier": "shared"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/estates/{estate}/adopt"),
            json!({"source": "tenant_acme", "slug": "Not A Slug", "tier": "shared"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/estates/{estate}/adopt"),
            json!({"source": "tenant_acme", "slug": "x-5", "tier": "gold"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/estates/{estate}/adopt"),
            json!({"source": "tenant_acme", "slug": "x-6", "tier": "shared", "engine": "rds"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/estates/{estate}/adopt-all"),
            json!({"tier": "shared", "concurrency": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (format!("/v1/estates/{estate}/release"), json!({"source": "tenant_acme"}), StatusCode::CONFLICT),
    ];
    for (path, body, want) in cases {
        let (s, answer) = app.admin_call(Method::POST, &path, Some(body.clone())).await;
        assert_eq!(s, want, "{path} {body}: {answer}");
        assert!(answer["error"]["code"].is_string() && answer["error"]["message"].is_string(), "{answer}");
    }
    let (_, broken) = app
        .admin_call(
            Method::POST,
            &format!("/v1/estates/{estate}/adopt"),
            Some(json!({"source": "tenant_broken", "slug": "x-3", "tier": "shared"})),
        )
        .await;
    let message = broken["error"]["message"].as_str().unwrap();
    assert!(message.contains("primary key") && message.contains("tag"), "the problems are named: {message}");
    assert!(app.cp.tenant("x-3").await.is_err(), "no tenant is left behind by a refused adoption");
}

/// Adopt-all over 50 schemas, one of them broken (a table that maps
/// nowhere): the broken one is reported, the 49 others are adopted, never
/// more than `concurrency` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopt_all_adopts_every_source_at_bounded_concurrency_and_reports_the_broken_one() {
    let app = spawn_app_with(|s| s.control_plane.operation_workers = 6).await;
    let db = tenantry::testkit::unique("fleet");
    connect("postgres", false).execute_unprepared(&format!("CREATE DATABASE {db}")).await.unwrap();
    connect(&db, false)
        .execute_unprepared(
            "DO $$ BEGIN FOR i IN 1..50 LOOP EXECUTE format(
                'CREATE SCHEMA shop_%1$s;
                 CREATE TABLE shop_%1$s.assets (id serial PRIMARY KEY, name text NOT NULL, tag text NOT NULL,
                     status text NOT NULL DEFAULT ''active'');
                 INSERT INTO shop_%1$s.assets (name, tag) SELECT ''A'' || g, ''T-'' || g FROM generate_series(1, 20) g;',
                lpad(i::text, 2, '0'));
             END LOOP; END $$;
             CREATE TABLE shop_13.invoices (total numeric);",
        )
        .await
        .unwrap();
    let mut body = estate_body("fleet", &db, "postgres", &cluster().secrets.superuser_password);
    body["pattern"] = json!("shop\\_%");
    let (s, e) = add(&app, body).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let estate = e["id"].as_str().unwrap();
    let (s, all) = app
        .admin_call(
            Method::POST,
            &format!("/v1/estates/{estate}/adopt-all"),
            Some(json!({"tier": "shared", "concurrency": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{all}");
    let queued = all["queued"].as_array().unwrap();
    assert_eq!(queued.len(), 50);
    let refused: Vec<&Value> = queued.iter().filter(|q| q["operation"].is_null()).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["source"], "shop_13");
    assert!(refused[0]["error"].as_str().unwrap().contains("invoices"), "the problem is named: {}", refused[0]);
    let batch = all["batch"].as_str().unwrap().to_string();

    // Watch the batch: never more than 3 running.
    let mut most = 0i64;
    for _ in 0..6000 {
        let row = app
            .cp
            .registry()
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE state = 'running') AS running, \
                        count(*) FILTER (WHERE state IN ('pending', 'running')) AS open \
                 FROM operations WHERE params->>'batch' = $1",
                [batch.clone().into()],
            ))
            .await
            .unwrap()
            .unwrap();
        let (running, open): (i64, i64) = (row.try_get("", "running").unwrap(), row.try_get("", "open").unwrap());
        most = most.max(running);
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!((2..=3).contains(&most), "at most 3 adoptions at once, and more than one: {most}");
    let (_, sources) = app.admin_call(Method::GET, &format!("/v1/estates/{estate}/sources"), None).await;
    let states: Vec<(String, String)> = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().to_string()))
        .collect();
    let adopted = states.iter().filter(|(_, st)| st == "adopted").count();
    assert_eq!(adopted, 49, "{states:?}");
    assert_eq!(states.iter().find(|(n, _)| n == "shop_13").unwrap().1, "not_adopted");
    let t = app.cp.tenant("07").await.unwrap();
    assert_eq!(t.status, tenantry_core::TenantStatus::Active);
    assert_eq!(target_rows(&app.pool_name, &t.id.to_string()).await.0.len(), 20);
}

/// Revert: the tenant's changes since the cutover go back to the legacy
/// source (an update and a delete by legacy id; a new asset with an id from
/// the legacy sequence and its schedule following it), the legacy source
/// takes writes again, the tenant stops serving. Killed after fencing the
/// tenant and right after the point of no return, it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reverted_source_gets_the_tenants_changes_back_and_takes_writes_again() {
    let app = manual_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let (s, op) = adopt(&app, &estate, json!({"source": "tenant_acme", "slug": "acme-back", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(app.wait_operation(op["id"].as_str().unwrap()).await["state"], "succeeded");
    worker.abort();
    let tenant = op["tenant_id"].as_str().unwrap().to_string();
    let key = app.cp.create_api_key("test", tenant.parse().unwrap(), "k").await.unwrap().key;

    // Changes made through Tenantry after the cutover.
    let (_, pump) = app.get(&key, "/v1/assets/by-tag/P-1").await;
    let (s, _) = app
        .call(
            &key,
            Method::PATCH,
            &format!("/v1/assets/{}", pump["id"].as_str().unwrap()),
            Some(json!({"name": "Big pump"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, valve) = app.get(&key, "/v1/assets/by-tag/V-1").await;
    let (s, _) = app.call(&key, Method::DELETE, &format!("/v1/assets/{}", valve["id"].as_str().unwrap()), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, fan) = app.post(&key, "/v1/assets", json!({"name": "Fan", "tag": "F-9"})).await;
    assert_eq!(s, StatusCode::CREATED, "{fan}");
    let (s, _) = app
        .post(
            &key,
            &format!("/v1/assets/{}/maintenance-schedules", fan["id"].as_str().unwrap()),
            json!({"title": "Dust", "interval_days": 14, "next_due_at": "2027-03-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, rev) = app
        .admin_call(Method::POST, &format!("/v1/estates/{estate}/revert"), Some(json!({"source": "tenant_acme"})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{rev}");
    let id = rev["id"].as_str().unwrap().to_string();
    let config = app.config_file("lease_secs = 1");
    crash_at(&config, "revert.after.fence_tenant").await;
    crash_at(&config, "revert.apply_back.sealed").await;
    let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&id).await;
    worker.abort();
    assert_eq!(done["state"], "succeeded", "{done}");

    let mut c = legacy_conn(&db).await;
    let assets: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT id, tag, name FROM tenant_acme.assets ORDER BY id").fetch_all(&mut c).await.unwrap();
    assert_eq!(assets.len(), 2, "{assets:?}");
    assert_eq!(assets[0], (1, "P-1".into(), "Big pump".into()), "updated by legacy id; V-1 deleted by legacy id");
    assert_eq!((&assets[1].1, &assets[1].2), (&"F-9".to_string(), &"Fan".to_string()));
    let next: i32 =
        sqlx::query_scalar("SELECT last_value::int FROM tenant_acme.assets_id_seq").fetch_one(&mut c).await.unwrap();
    assert!(assets[1].0 > 2 && assets[1].0 == next, "the new row's id comes from the legacy sequence: {assets:?}");
    let dust: (i32, String) =
        sqlx::query_as("SELECT asset_id, title FROM tenant_acme.maintenance_schedules WHERE title = 'Dust'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(dust, (assets[1].0, "Dust".into()), "the child follows its new parent's legacy id");
    let (legacy_assets, _) = legacy_rows(&db, "tenant_acme").await;
    assert_eq!(legacy_assets.len(), 2);
    sqlx::raw_sql("INSERT INTO tenant_acme.assets (name, tag) VALUES ('Legacy again', 'LA-1')")
        .execute(&mut c)
        .await
        .expect("the legacy source takes writes again");

    let (s, body) = app.get(&key, "/v1/assets").await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("tenant_reverted")), "{body}");
    assert_eq!(target_rows(&app.pool_name, &tenant).await.0.len(), 0, "purged from the shared pool");
    assert_eq!(source_state(&app, &estate, "tenant_acme").await["state"], "reverted");
    let (s, body) = app
        .admin_call(Method::POST, &format!("/v1/estates/{estate}/release"), Some(json!({"source": "tenant_acme"})))
        .await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("source_not_adopted")), "{body}");
}

/// The console adopts a source behind its dry run (CSRF-checked), and offers
/// the way back (revert) and its end (release) once it is adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_adopts_a_source_behind_its_dry_run_and_offers_revert_and_release() {
    let app = spawn_app().await;
    let db = legacy_estate().await;
    let estate = estate(&app, &db).await;
    let (http, cookie) = crate::console::http_session(&app).await;
    let get = |path: String| {
        let (http, cookie, base) = (http.clone(), cookie.clone(), app.admin.clone());
        async move {
            let r = http.get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let (http, cookie, base) = (http.clone(), cookie.clone(), app.admin.clone());
        async move {
            let r = http.post(format!("{base}{path}")).header("cookie", cookie).form(&form).send().await.unwrap();
            let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_string());
            (r.status(), location)
        }
    };
    let (s, dry) = get(format!("/console/estates/{estate}/plan?source=tenant_acme")).await;
    assert!(s == StatusCode::OK && dry.contains("Adopt now") && dry.contains("value=\"acme\""), "{dry}");
    let csrf = dry.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let form = |extra: Vec<(&'static str, String)>, token: &str| {
        let mut f = vec![("csrf", token.to_string()), ("source", "tenant_acme".to_string())];
        f.extend(extra);
        f
    };
    let (s, _) =
        post(format!("/console/estates/{estate}/adopt"), form(vec![("tier", "shared".into())], "forged")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a forged CSRF token is refused");
    let (s, location) = post(
        format!("/console/estates/{estate}/adopt"),
        form(vec![("tier", "shared".into()), ("slug", "acme-console".into())], &csrf),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let op = location.unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(app.wait_operation(&op).await["state"], "succeeded");
    let (_, page) = get(format!("/console/estates/{estate}")).await;
    assert!(page.contains("Adopted as tenant") && page.contains("Revert to the legacy source"), "{page}");
    let (s, _) = post(format!("/console/estates/{estate}/release"), form(vec![("drop", "on".into())], &csrf)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(source_state(&app, &estate, "tenant_acme").await["state"], "released");
    assert_eq!(app.cp.tenant("acme-console").await.unwrap().status, tenantry_core::TenantStatus::Active);
}

/// An estate laid out the way web frameworks' schema-per-tenant libraries
/// lay it out: their table names, a migrations table in every schema, and
/// `NOT NULL` columns whose defaults the application fills, not the database.
/// A row made in Tenantry after the cutover has no value for such a column:
/// the revert's dry run names it, the revert is refused with a 422 before the
/// tenant is fenced (it keeps serving), the mapping's `legacy_values` fills
/// one column and the row's `attributes` the other, and then the revert
/// writes every row back and the legacy writer works again.
#[tokio::test]
async fn a_revert_of_rows_the_legacy_columns_refuse_is_refused_before_the_fence_and_then_written_back() {
    let app = spawn_app().await;
    let db = tenantry::testkit::unique("framework");
    connect("postgres", false).execute_unprepared(&format!("CREATE DATABASE {db}")).await.unwrap();
    connect(&db, false)
        .execute_unprepared(
            "CREATE SCHEMA tenant_shop;
             CREATE TABLE tenant_shop.django_migrations (id bigserial PRIMARY KEY, app varchar(255) NOT NULL,
                 name varchar(255) NOT NULL, applied timestamptz NOT NULL);
             INSERT INTO tenant_shop.django_migrations (app, name, applied) VALUES ('inventory', '0001_initial', now());
             CREATE TABLE tenant_shop.inventory_item (id bigserial PRIMARY KEY, name varchar(200) NOT NULL,
                 sku varchar(64) NOT NULL, state varchar(20) NOT NULL, is_archived boolean NOT NULL,
                 serial_number varchar(64) NOT NULL, CONSTRAINT sku_short CHECK (length(sku) <= 8));
             INSERT INTO tenant_shop.inventory_item (name, sku, state, is_archived, serial_number)
                 VALUES ('Pump', 'P-1', 'active', false, 'SN-1'), ('Valve', 'V-1', 'active', true, 'SN-2');",
        )
        .await
        .unwrap();
    let mut body =
        estate_body(&tenantry::testkit::unique("est"), &db, "postgres", &cluster().secrets.superuser_password);
    body["mapping"] = json!({
        "tables": {"assets": {"from": "inventory_item", "columns": {"tag": "sku", "status": "state"},
                              "legacy_values": {"is_archived": false}}},
        "ignore": ["django_migrations"]
    });
    let (s, e) = add(&app, body).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let estate = e["id"].as_str().unwrap().to_string();
    let (s, op) = adopt(&app, &estate, json!({"source": "tenant_shop", "slug": "shop", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(app.wait_operation(op["id"].as_str().unwrap()).await["state"], "succeeded");
    let tenant = op["tenant_id"].as_str().unwrap().to_string();
    let key = app.cp.create_api_key("test", tenant.parse().unwrap(), "k").await.unwrap().key;

    // A row made in Tenantry: no serial number, no is_archived.
    let (s, fan) = app.post(&key, "/v1/assets", json!({"name": "Fan", "tag": "F-9"})).await;
    assert_eq!(s, StatusCode::CREATED, "{fan}");
    let fan_id = fan["id"].as_str().unwrap().to_string();

    let plan_path = format!("/v1/estates/{estate}/revert-plan?source=tenant_shop");
    let (s, plan) = app.admin_call(Method::GET, &plan_path, None).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["writable"], false, "{plan}");
    assert_eq!(
        plan["unwritable"],
        json!([{"table": "inventory_item", "column": "serial_number", "rows": [fan_id], "count": 1}]),
        "is_archived comes from legacy_values; serial_number from nowhere"
    );
    let revert_path = format!("/v1/estates/{estate}/revert");
    let revert = || app.admin_call(Method::POST, &revert_path, Some(json!({"source": "tenant_shop"})));
    let (s, body) = revert().await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unwritable_rows")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`inventory_item`") && message.contains("`serial_number`") && message.contains(&fan_id),
        "{message}"
    );
    assert_eq!(source_state(&app, &estate, "tenant_shop").await["state"], "adopted");
    let reverts = format!("SELECT count(*) FROM operations WHERE kind = 'revert' AND tenant_id = '{tenant}'");
    assert_eq!(scalar(app.cp.registry(), &reverts).await, 0, "no revert was queued");
    // Still serving from Tenantry, writes included.
    let (s, _) = app
        .post(&key, "/v1/assets", json!({"name": "Heater", "tag": "H-1", "attributes": {"serial_number": "SN-7"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // The missing value, given on the row itself.
    let (s, _) = app
        .call(
            &key,
            Method::PATCH,
            &format!("/v1/assets/{fan_id}"),
            Some(json!({"attributes": {"serial_number": "SN-9"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, plan) = app.admin_call(Method::GET, &plan_path, None).await;
    assert_eq!((s, &plan["writable"]), (StatusCode::OK, &json!(true)), "{plan}");

    // A row the legacy table's CHECK refuses: found by a write-back tried and
    // rolled back, before anything is fenced.
    let (s, crane) = app
        .post(
            &key,
            "/v1/assets",
            json!({"name": "Crane", "tag": "CRANE-LONG-1", "attributes": {"serial_number": "SN-8"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{crane}");
    let (s, plan) = app.admin_call(Method::GET, &plan_path, None).await;
    assert_eq!((s, &plan["writable"], &plan["unwritable"]), (StatusCode::OK, &json!(false), &json!([])), "{plan}");
    let refused = plan["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("CHECK constraint") && refused.contains("sku_short"), "{plan}");
    let (s, body) = revert().await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unwritable_rows")),
        "{body}"
    );
    assert_eq!(scalar(app.cp.registry(), &reverts).await, 0, "no revert was queued");
    let mut c = legacy_conn(&db).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_shop.inventory_item").fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 2, "the trial wrote nothing that stayed");
    let (s, _) = app.call(&key, Method::DELETE, &format!("/v1/assets/{}", crane["id"].as_str().unwrap()), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let (s, rev) = revert().await;
    assert_eq!(s, StatusCode::ACCEPTED, "{rev}");
    let done = app.wait_operation(rev["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let rows: Vec<(String, String, bool, String)> =
        sqlx::query_as("SELECT sku, name, is_archived, serial_number FROM tenant_shop.inventory_item ORDER BY sku")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("F-9".into(), "Fan".into(), false, "SN-9".into()),
            ("H-1".into(), "Heater".into(), false, "SN-7".into()),
            ("P-1".into(), "Pump".into(), false, "SN-1".into()),
            ("V-1".into(), "Valve".into(), true, "SN-2".into()),
        ]
    );
    sqlx::raw_sql(
        "INSERT INTO tenant_shop.inventory_item (name, sku, state, is_archived, serial_number) \
         VALUES ('Again', 'A-1', 'active', false, 'SN-10')",
    )
    .execute(&mut c)
    .await
    .expect("the legacy writer works again");
    assert_eq!(scalar(&connect(&db, false), "SELECT count(*) FROM tenant_shop.django_migrations").await, 1);
}

/// Composite and text keys: a legacy `equipment` keyed by `(org_id, code)`
/// (codes with spaces, commas and quotes) and its `issues` keyed by a text
/// `ref` (`042` and `42` both), naming their equipment by a two-column
/// foreign key. Adopted while the legacy app writes; each id is the UUID v5
/// of `"<table>:<key text>"`, the key text as PostgreSQL itself writes it
/// (`ROW(org_id, code)::text`); changed in Tenantry and reverted, the legacy
/// side has every change under its own keys and takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn composite_and_text_keys_are_adopted_by_their_key_text_and_reverted_under_their_own_keys() {
    let app = spawn_app().await;
    let db = tenantry::testkit::unique("keys");
    connect("postgres", false).execute_unprepared(&format!("CREATE DATABASE {db}")).await.unwrap();
    connect(&db, false)
        .execute_unprepared(
            r#"CREATE SCHEMA tenant_org;
             CREATE SEQUENCE tenant_org.codes;
             CREATE TABLE tenant_org.equipment (org_id integer NOT NULL,
                 code text NOT NULL DEFAULT 'E-' || nextval('tenant_org.codes'), name text NOT NULL,
                 tag text NOT NULL, status text NOT NULL DEFAULT 'active', PRIMARY KEY (org_id, code));
             CREATE TABLE tenant_org.issues (ref varchar(20) PRIMARY KEY DEFAULT 'ISS-' || nextval('tenant_org.codes'),
                 org_id integer NOT NULL, equipment_code text NOT NULL, title text NOT NULL,
                 status text NOT NULL, priority text NOT NULL,
                 FOREIGN KEY (equipment_code, org_id) REFERENCES tenant_org.equipment (code, org_id));
             INSERT INTO tenant_org.equipment (org_id, code, name, tag) VALUES
                 (7, 'A 1', 'Pump', 'P-1'), (7, 'B,"2"', 'Valve', 'V-1'), (8, 'A 1', 'Crane', 'C-1');
             INSERT INTO tenant_org.issues (ref, org_id, equipment_code, title, status, priority) VALUES
                 ('042', 7, 'A 1', 'Leak', 'open', 'high'), ('42', 7, 'B,"2"', 'Stuck', 'open', 'low'),
                 ('x', 8, 'A 1', 'Rust', 'open', 'medium');
             CREATE SCHEMA tenant_odd;
             CREATE TABLE tenant_odd.equipment (org_id integer, code text, name text, tag text, status text,
                 PRIMARY KEY (org_id, code));
             CREATE TABLE tenant_odd.issues (ref timestamptz PRIMARY KEY, org_id integer, equipment_code text,
                 title text, status text, priority text);"#,
        )
        .await
        .unwrap();
    let mut body =
        estate_body(&tenantry::testkit::unique("est"), &db, "postgres", &cluster().secrets.superuser_password);
    body["mapping"] = json!({"tables": {
        "assets": {"from": "equipment", "legacy_values": {"org_id": 7}},
        "asset_issues": {"from": "issues"}
    }});
    let (s, e) = add(&app, body).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let estate = e["id"].as_str().unwrap().to_string();
    let source = source_state(&app, &estate, "tenant_org").await;
    assert_eq!(source["problems"], json!([]), "{source}");
    let tables = source["tables"].as_array().unwrap();
    let key_of = |t: &str| tables.iter().find(|x| x["legacy"] == t).unwrap()["primary_key"].clone();
    assert_eq!(key_of("equipment"), json!("(org_id integer, code text) -> uuid v5 of \"assets:(org_id,code)\""));
    assert_eq!(key_of("issues"), json!("ref character varying(20) -> uuid v5 of \"asset_issues:<ref>\""));
    let odd = source_state(&app, &estate, "tenant_odd").await["problems"].to_string();
    assert!(odd.contains("names its asset by (org_id, code) of `equipment`, and declares no foreign key"), "{odd}");
    assert!(odd.contains("key column `ref` is `timestamp with time zone`"), "{odd}");

    // The legacy app keeps writing: new equipment, and a title changed by key.
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut c = legacy_conn(&db).await;
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let sql = format!(
                    "INSERT INTO tenant_org.equipment (org_id, code, name, tag) VALUES (7, 'W ({i})', 'W{i}', 'W-{i}'); \
                     UPDATE tenant_org.issues SET title = 'Stuck {i}' WHERE ref = '42'"
                );
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await {
                    Ok(_) => acknowledged.push(format!("W-{i}")),
                    Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("TA001") => {
                        return acknowledged;
                    }
                    Err(e) => panic!("legacy write failed: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            unreachable!()
        })
    };
    let (s, op) = adopt(&app, &estate, json!({"source": "tenant_org", "slug": "org", "tier": "shared"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let written = tokio::time::timeout(std::time::Duration::from_secs(60), writer).await.unwrap().unwrap();
    assert!(!written.is_empty(), "the legacy app wrote during the adoption");
    let tenant: uuid::Uuid = op["tenant_id"].as_str().unwrap().parse().unwrap();
    let key = app.cp.create_api_key("test", tenant, "k").await.unwrap().key;

    // Every id from the key text PostgreSQL writes for it.
    let mut c = legacy_conn(&db).await;
    let keys: Vec<(String, String)> = sqlx::query_as("SELECT tag, ROW(org_id, code)::text FROM tenant_org.equipment")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3 + written.len());
    for (tag, text) in &keys {
        let (s, asset) = app.get(&key, &format!("/v1/assets/by-tag/{tag}")).await;
        assert_eq!(s, StatusCode::OK, "{tag}: {asset}");
        let want = uuid::Uuid::new_v5(&tenant, format!("assets:{text}").as_bytes());
        assert_eq!(asset["id"], want.to_string(), "{tag} keyed {text}");
        assert_eq!(asset["attributes"], json!({}), "key columns make the id, not attributes");
    }
    assert!(keys.iter().any(|(_, k)| k == "(7,\"B,\"\"2\"\"\")"), "{keys:?}");
    let issue_id = |r: &str| uuid::Uuid::new_v5(&tenant, format!("asset_issues:{r}").as_bytes()).to_string();
    let (_, leak) = app.get(&key, &format!("/v1/issues/{}", issue_id("042"))).await;
    let (_, stuck) = app.get(&key, &format!("/v1/issues/{}", issue_id("42"))).await;
    assert_eq!(
        (leak["title"].as_str(), stuck["title"].as_str()),
        (Some("Leak"), Some(format!("Stuck {}", written.len() - 1).as_str()))
    );
    let (_, pump) = app.get(&key, "/v1/assets/by-tag/P-1").await;
    let (_, crane) = app.get(&key, "/v1/assets/by-tag/C-1").await;
    assert_eq!(leak["asset_id"], pump["id"], "the two-column foreign key names the asset");
    let (_, rust) = app.get(&key, &format!("/v1/issues/{}", issue_id("x"))).await;
    assert_eq!(rust["asset_id"], crane["id"], "(8,'A 1') is not (7,'A 1')");

    // Changes in Tenantry: an update, a delete, a new asset with a new issue.
    let pump_id = pump["id"].as_str().unwrap();
    let (s, _) =
        app.call(&key, Method::PATCH, &format!("/v1/assets/{pump_id}"), Some(json!({"name": "Big pump"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, fan) = app.post(&key, "/v1/assets", json!({"name": "Fan", "tag": "F-9"})).await;
    assert_eq!(s, StatusCode::CREATED, "{fan}");
    let noisy = json!({"title": "Noisy", "priority": "low"});
    let (s, _) = app.post(&key, &format!("/v1/assets/{}/issues", fan["id"].as_str().unwrap()), noisy).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app.call(&key, Method::DELETE, &format!("/v1/issues/{}", issue_id("42")), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let (s, plan) =
        app.admin_call(Method::GET, &format!("/v1/estates/{estate}/revert-plan?source=tenant_org"), None).await;
    assert_eq!((s, &plan["writable"]), (StatusCode::OK, &json!(true)), "{plan}");
    let (s, rev) = app
        .admin_call(Method::POST, &format!("/v1/estates/{estate}/revert"), Some(json!({"source": "tenant_org"})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{rev}");
    let done = app.wait_operation(rev["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let equipment: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT org_id, code, name FROM tenant_org.equipment WHERE tag IN ('P-1', 'V-1', 'C-1', 'F-9') ORDER BY tag",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(equipment.len(), 4, "{equipment:?}");
    assert_eq!(equipment[0], (8, "A 1".to_string(), "Crane".to_string()));
    assert_eq!(equipment[2], (7, "A 1".to_string(), "Big pump".to_string()), "updated under its own key");
    assert_eq!(equipment[3], (7, "B,\"2\"".to_string(), "Valve".to_string()));
    let fan_row = &equipment[1];
    assert!(
        fan_row.0 == 7 && fan_row.1.starts_with("E-") && fan_row.2 == "Fan",
        "org_id from legacy_values, code from its default: {fan_row:?}"
    );
    let issues: Vec<(String, i32, String, String)> =
        sqlx::query_as("SELECT ref::text, org_id, equipment_code, title FROM tenant_org.issues ORDER BY title")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(issues.len(), 3, "42 deleted under its own key: {issues:?}");
    assert_eq!((issues[0].0.as_str(), issues[0].3.as_str()), ("042", "Leak"));
    assert_eq!(
        (&issues[1].1, &issues[1].2, issues[1].3.as_str()),
        (&7, &fan_row.1, "Noisy"),
        "the new issue names its new asset by both key columns"
    );
    assert!(issues[1].0.starts_with("ISS-"));
    sqlx::raw_sql("INSERT INTO tenant_org.equipment (org_id, name, tag) VALUES (7, 'Again', 'A-1')")
        .execute(&mut c)
        .await
        .expect("the legacy source takes writes again");
}
