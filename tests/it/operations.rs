//! Durable operations: progress, listing, cancel with rollback, and a crash
//! after every step of a provision resuming to exactly one ready backend.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{connect, run_child, scalar, spawn_app, spawn_app_with};

async fn create_dedicated(app: &crate::helpers::TestApp, slug: &str) -> (String, String) {
    let (s, created) = app
        .admin_call(Method::POST, "/v1/tenants", Some(json!({"slug": slug, "name": slug, "tier": "dedicated"})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["tenant"]["status"], "provisioning");
    (created["tenant"]["id"].as_str().unwrap().into(), created["operation"]["id"].as_str().unwrap().into())
}

#[tokio::test]
async fn a_provision_reports_its_steps_and_is_listed_for_its_tenant() {
    let app = spawn_app().await;
    let (tenant, op) = create_dedicated(&app, "globex").await;
    let done = app.wait_operation(&op).await;
    assert_eq!(
        (done["kind"].clone(), done["state"].clone(), done["step"].clone(), done["progress"].clone()),
        (json!("provision"), json!("succeeded"), json!("done"), json!({"step": 3, "steps": 3}))
    );
    assert!(done["backend_id"].is_string() && done["finished_at"].is_string(), "{done}");
    let (_, list) = app.admin_call(Method::GET, &format!("/v1/operations?tenant={tenant}&state=succeeded"), None).await;
    assert_eq!(list["operations"].as_array().map(Vec::len), Some(1));
    let (s, _) = app.admin_call(Method::GET, "/v1/operations?state=sleeping", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, body) = app.admin_call(Method::POST, &format!("/v1/operations/{op}/cancel"), None).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("not_cancellable")));
    let (s, _) = app.admin_call(Method::GET, &format!("/v1/operations/{}", uuid::Uuid::now_v7()), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_provisioning_tenant_answers_503_until_its_database_is_ready() {
    let app = spawn_app_with(|s| s.control_plane.operation_workers = 0).await;
    let (tenant, op) = create_dedicated(&app, "globex").await;
    let (_, key) = app.admin_call(Method::POST, &format!("/v1/tenants/{tenant}/api-keys"), None).await;
    let key = key["key"].as_str().unwrap();
    let (s, body) = app.get(key, "/v1/assets").await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("tenant_provisioning")));
    tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    assert_eq!(app.wait_operation(&op).await["state"], "succeeded");
    assert_eq!(app.get_until(key, "/v1/assets", StatusCode::OK).await, StatusCode::OK);
}

#[tokio::test]
async fn cancelling_a_pending_provision_leaves_no_tenant_backend_or_database() {
    let app = spawn_app_with(|s| s.control_plane.operation_workers = 0).await;
    let (tenant, op) = create_dedicated(&app, "short-lived").await;
    let (s, body) = app.admin_call(Method::POST, &format!("/v1/operations/{op}/cancel"), None).await;
    assert_eq!((s, body["state"].clone()), (StatusCode::ACCEPTED, json!("cancelling")));
    tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
    let done = app.wait_operation(&op).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(app.admin_call(Method::GET, &format!("/v1/tenants/{tenant}"), None).await.0, StatusCode::NOT_FOUND);
    let db = format!("tenant_{}", tenant.replace('-', ""));
    let postgres = connect("postgres", false);
    assert_eq!(scalar(&postgres, &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")).await, 0);
    // The slug is free again.
    let (s, _) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(json!({"slug": "short-lived", "name": "again", "tier": "shared"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn a_provision_killed_after_any_step_resumes_to_exactly_one_ready_backend() {
    killed_after_every_step("logical").await;
}

#[tokio::test]
async fn an_rds_provision_killed_after_any_step_resumes_to_exactly_one_ready_backend() {
    killed_after_every_step("rds").await;
}

/// This process serves the API but runs no worker; a child `tenantry serve`
/// does the work and aborts right after the chosen step is recorded; then a
/// fresh worker resumes.
async fn killed_after_every_step(engine: &str) {
    let tc = crate::helpers::cluster();
    let rds = engine == "rds";
    let app = spawn_app_with(|s| {
        s.control_plane.operation_workers = 0;
        s.control_plane.lease_secs = 1;
        if rds {
            crate::helpers::with_rds(s);
        }
    })
    .await;
    let extra = if rds {
        format!(
            r#"lease_secs = 1
            rds = {{ region = "us-east-1", endpoint_url = "{moto}", master_password_key = "test-master-key", wait_secs = 30, static_credentials = {{ access_key_id = "testing", secret_access_key = "testing" }} }}
            rds_bootstrap_override = {{ host = "127.0.0.1", port = {port}, admin_user = "postgres", admin_password = "{su}" }}"#,
            moto = tenantry::testkit::moto().endpoint,
            port = tc.cluster.port(),
            su = tc.secrets.superuser_password,
        )
    } else {
        "lease_secs = 1".to_string()
    };
    let config = app.config_file(&extra);
    let registry = connect(&app.cp.config().registry_database, false);
    let postgres = connect("postgres", false);
    let steps = if rds {
        tenantry_control_plane::provision::PROVISION_RDS_STEPS
    } else {
        tenantry_control_plane::provision::PROVISION_STEPS
    };
    for (i, step) in steps.iter().enumerate() {
        let (s, created) = app
            .admin_call(
                Method::POST,
                "/v1/tenants",
                Some(json!({"slug": format!("crash-{i}"), "name": "crash", "tier": "dedicated", "engine": engine})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{created}");
        let tenant = created["tenant"]["id"].as_str().unwrap().to_string();
        let op = created["operation"]["id"].as_str().unwrap().to_string();
        let cfg = config.clone();
        let fp = format!("provision.after.{step}");
        let out = tokio::task::spawn_blocking(move || run_child(&cfg, &fp)).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&format!("failpoint provision.after.{step}")), "{stderr}");
        let (_, seen) = app.admin_call(Method::GET, &format!("/v1/operations/{op}"), None).await;
        let expected_state = if i + 1 == steps.len() { "succeeded" } else { "running" };
        assert_eq!(seen["state"], expected_state, "after a crash following {step}: {seen}");

        // A fresh worker resumes the interrupted operation once its lease lapses.
        let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
        let done: Value = app.wait_operation(&op).await;
        worker.abort();
        assert_eq!(done["state"], "succeeded", "crash after {step}: {done}");
        let db = format!("tenant_{}", tenant.replace('-', ""));
        let backend_name =
            if rds { tenantry_provisioner::rds::instance_id(&tenant.replace('-', "")) } else { db.clone() };
        let ready = format!("SELECT count(*) FROM backends WHERE name = '{backend_name}' AND status = 'ready'");
        assert_eq!(scalar(&registry, &ready).await, 1, "crash after {step}");
        assert_eq!(scalar(&postgres, &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")).await, 1);
        assert_eq!(
            scalar(&registry, &format!("SELECT count(*) FROM placements WHERE tenant_id = '{tenant}' AND epoch = 1"))
                .await,
            1
        );
        let (_, key) = app.admin_call(Method::POST, &format!("/v1/tenants/{tenant}/api-keys"), None).await;
        let status = app.get_until(key["key"].as_str().unwrap(), "/v1/assets", StatusCode::OK).await;
        assert_eq!(status, StatusCode::OK, "tenant provisioned across a crash after {step} serves");
    }
}

#[tokio::test]
async fn the_cli_creates_a_dedicated_tenant_watches_it_and_shows_it() {
    let app = spawn_app().await;
    let (admin, token) = (app.admin.clone(), app.token.clone());
    let cli = move |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args(args)
            .env("TENANTRY_ADMIN_URL", &admin)
            .env("TENANTRY_ADMIN_TOKEN", &token)
            .output()
            .expect("run the CLI")
    };
    let run = |args: Vec<&'static str>| {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || cli(&args))
    };
    let out =
        run(vec!["tenants", "create", "--slug", "cli-corp", "--name", "CLI Corp", "--tier", "dedicated", "--wait"])
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("succeeded"), "{stdout}");
    let out = run(vec!["tenants", "show", "cli-corp"]).await.unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((shown["tier"].clone(), shown["status"].clone()), (json!("dedicated"), json!("active")));
    let out = run(vec!["tenants", "list"]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-corp"));
    let out = run(vec!["tenants", "create", "--slug", "cli-corp", "--name", "again"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("slug_taken"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn an_empty_logical_backend_is_retired_and_a_busy_one_is_refused() {
    let app = spawn_app().await;
    let t = app.create_tenant("busy", "dedicated").await;
    let busy = t.tenant["placement"]["backend_id"].as_str().unwrap().to_string();
    let (s, body) = app.admin_call(Method::POST, &format!("/v1/backends/{busy}/retire"), None).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("backend_in_use")));

    let name = format!("spare_{}", uuid::Uuid::new_v4().simple());
    let spare = app.cp.register_backend("test", &name, tenantry_core::BackendKind::Dedicated).await.unwrap();
    let (s, op) = app.admin_call(Method::POST, &format!("/v1/backends/{}/retire", spare.id), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!((done["kind"].clone(), done["state"].clone()), (json!("retire"), json!("succeeded")), "{done}");
    let (_, backends) = app.admin_call(Method::GET, "/v1/backends", None).await;
    let row = backends["backends"].as_array().unwrap().iter().find(|b| b["name"] == json!(name)).unwrap().clone();
    assert_eq!(row["status"], "retired");
    let postgres = connect("postgres", false);
    assert_eq!(scalar(&postgres, &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).await, 0);
    let (s, body) = app.admin_call(Method::POST, &format!("/v1/backends/{}/retire", spare.id), None).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("already_retired")));
}

/// `/readyz`: a control plane is ready when the registry answers and every
/// operation worker loop it is configured for runs; one whose workers do not
/// run says so (a load balancer then sends it nothing).
#[tokio::test]
async fn readiness_requires_the_registry_and_every_worker_loop() {
    let app = spawn_app().await;
    for base in [&app.admin, &app.app] {
        let r = app.http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{base}");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
    }
    let mut cfg = app.cp.config().clone();
    cfg.operation_workers = 2;
    let idle = std::sync::Arc::new(tenantry_control_plane::ControlPlane::start(cfg).await.unwrap());
    let why = idle.readiness().await.unwrap_err();
    assert!(why.contains("0 of 2 operation workers running"), "{why}");
    let stop = tokio_util::sync::CancellationToken::new();
    let workers: Vec<_> = (0..2).map(|_| tokio::spawn(idle.clone().run_worker(stop.clone()))).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while idle.readiness().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "ready once both loops run");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert!(idle.readiness().await.unwrap_err().contains("0 of 2"), "not ready once the loops stopped");
}
