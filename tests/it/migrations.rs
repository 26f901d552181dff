//! Tenant-schema fan-out across the fleet.

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::helpers::{connect, spawn_app};

#[tokio::test]
async fn fan_out_migrates_every_backend_skips_a_failing_one_and_resumes() {
    let app = spawn_app().await;
    let a = app.create_tenant("ded-a", "dedicated").await;
    let b = app.create_tenant("ded-b", "dedicated").await;
    let (s, list) = app.admin_call(Method::GET, "/v1/migrations", None).await;
    assert_eq!(s, StatusCode::OK);
    let latest = tenantry_core::TENANT_SCHEMA_LATEST;
    assert_eq!(list["latest"], latest);
    let versions: Vec<_> = list["backends"].as_array().unwrap().iter().map(|b| b["schema_version"].clone()).collect();
    assert_eq!(versions, vec![json!(latest); 4], "template, shared pool and two dedicated");

    // The registry believes every backend is behind; B's database has also lost
    // its version table, so re-running migration 1 there fails.
    let registry = connect(&app.cp.config().registry_database, false);
    registry.execute_unprepared("UPDATE backends SET schema_version = 0").await.unwrap();
    let b_db = app.database_of(&b.id).await;
    connect(&b_db, false).execute_unprepared("DROP TABLE tenantry_schema_migrations").await.unwrap();

    // A backend below the supported range is not routed to.
    let (s, body) = app.get(&b.key, "/v1/assets").await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("schema_unsupported")));

    let (s, report) = app.admin_call(Method::POST, "/v1/migrations/apply", Some(json!({"concurrency": 2}))).await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!((report["applied"].clone(), report["failed"].clone()), (json!(3), json!(1)), "{report}");
    let failed = report["backends"].as_array().unwrap().iter().find(|r| r["outcome"] == "failed").unwrap();
    assert_eq!(failed["name"], json!(b_db));
    assert!(failed["error"].as_str().unwrap().contains("already exists"), "{failed}");

    let (_, list) = app.admin_call(Method::GET, "/v1/migrations", None).await;
    let row = list["backends"].as_array().unwrap().iter().find(|r| r["name"] == json!(b_db)).unwrap().clone();
    assert_eq!((row["migration_state"].clone(), row["schema_version"].clone()), (json!("failed"), json!(0)));
    // The others serve again.
    assert_eq!(app.get(&a.key, "/v1/assets").await.0, StatusCode::OK);

    // Repair B by hand, re-run: only B is migrated; a third run has nothing to do.
    let applied: Vec<String> =
        tenantry_control_plane::migrate::TENANT.iter().map(|m| format!("({}, '{}')", m.version, m.name)).collect();
    connect(&b_db, false)
        .execute_unprepared(&format!(
            "CREATE TABLE IF NOT EXISTS tenantry_schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO tenantry_schema_migrations (version, name) VALUES {}",
            applied.join(", ")
        ))
        .await
        .unwrap();
    let (_, report) = app.admin_call(Method::POST, "/v1/migrations/apply", None).await;
    assert_eq!(
        (report["applied"].clone(), report["up_to_date"].clone(), report["failed"].clone()),
        (json!(1), json!(3), json!(0))
    );
    let (_, report) = app.admin_call(Method::POST, "/v1/migrations/apply", None).await;
    assert_eq!((report["applied"].clone(), report["up_to_date"].clone()), (json!(0), json!(4)));
    let status = app.get_until(&b.key, "/v1/assets", StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "B is routed again once migrated");
}

#[tokio::test]
async fn apply_refuses_a_silly_concurrency() {
    let app = spawn_app().await;
    let (s, body) = app.admin_call(Method::POST, "/v1/migrations/apply", Some(json!({"concurrency": 0}))).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_concurrency")));
}

#[tokio::test]
async fn the_migrate_command_reports_every_backend_and_fails_when_one_fails() {
    let app = spawn_app().await;
    app.create_tenant("ded-a", "dedicated").await;
    let config = app.config_file("");
    let run = move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args(["migrate", "--concurrency", "4", "--config"])
            .arg(&config)
            .output()
            .expect("run tenantry migrate")
    };
    let out = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 backends at the latest tenant schema"), "{stdout}");

    // One backend that cannot be migrated makes the command fail, naming it.
    let registry = connect(&app.cp.config().registry_database, false);
    registry.execute_unprepared("UPDATE backends SET schema_version = 0").await.unwrap();
    connect(&app.pool_name, false).execute_unprepared("DROP TABLE tenantry_schema_migrations").await.unwrap();
    let out = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains(&format!("{} ", app.pool_name)) && stdout.contains("FAILED"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 3 backends failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_backend_one_tenant_schema_behind_is_served_through_its_own_gates() {
    let app = spawn_app().await;
    let a = app.create_tenant("behind", "shared").await;
    let (asset, ..) = app.seed(&a.key, "BH-1").await;
    // The pool as it was at tenant schema 5 (tenantry_enter, a policy on a
    // bare app.tenant_id; the read gate over tenantry_admitted), and the
    // registry saying so: still within the range this build serves.
    let behind = tenantry_core::TENANT_SCHEMA_LATEST - 1;
    assert_eq!(behind, 5);
    assert!(tenantry_core::supported_tenant_schema().contains(&behind));
    connect(&app.pool_name, false).execute_unprepared(&tenantry::testkit::schema_5_gates_sql()).await.unwrap();
    let registry = connect(&app.cp.config().registry_database, false);
    registry
        .execute_unprepared(&format!(
            "UPDATE backends SET schema_version = {behind} WHERE database = '{}'",
            app.pool_name
        ))
        .await
        .unwrap();

    // A write there enters through tenantry_enter.
    let (s, created) = app.post(&a.key, "/v1/assets", json!({"name": "Behind", "tag": "BH-2"})).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    // Reads there take schema 5's read gate: found, listed, missing.
    assert_eq!(app.get_until(&a.key, &format!("/v1/assets/{asset}"), StatusCode::OK).await, StatusCode::OK);
    let (s, list) = app.get(&a.key, "/v1/assets").await;
    assert_eq!((s, list["assets"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)), "{list}");
    let (s, body) = app.get(&a.key, &format!("/v1/assets/{}", uuid::Uuid::now_v7())).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{body}");
}
