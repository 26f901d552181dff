//! Cross-tier reports and routed background jobs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn the_asset_report_spans_both_tiers_and_reports_a_silent_backend_as_missing() {
    let app = spawn_app_with(|s| s.control_plane.reports.backend_timeout_ms = 1500).await;
    let a = app.create_tenant("report-shared", "shared").await;
    let d = app.create_tenant("report-dedicated", "dedicated").await;
    let e = app.create_tenant("report-silent", "dedicated").await;
    app.seed(&a.key, "A-1").await;
    let (asset, _, issue) = app.seed(&a.key, "A-2").await;
    let (s, _) =
        app.call(&a.key, Method::PATCH, &format!("/v1/issues/{issue}"), Some(json!({"status": "resolved"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        app.call(&a.key, Method::PATCH, &format!("/v1/assets/{asset}"), Some(json!({"status": "in_repair"}))).await;
    assert_eq!(s, StatusCode::OK);
    app.seed(&d.key, "D-1").await;
    app.seed(&e.key, "E-1").await;

    // e's database stops answering: its address now leads to a socket that
    // accepts connections and never replies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let registry = connect(&app.cp.config().registry_database, false);
    let backend = app.cp.tenant(&e.id).await.unwrap().placement.unwrap().backend_id;
    scalar(
        &registry,
        &format!(
            "WITH u AS (UPDATE backends SET port = {port} WHERE id = '{backend}' RETURNING 1) SELECT count(*) FROM u"
        ),
    )
    .await;

    let started = std::time::Instant::now();
    let (s, r) = app.admin_call(Method::GET, "/v1/reports/assets", None).await;
    let took = started.elapsed();
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(took < Duration::from_secs(10), "bounded by the per-backend timeout, took {took:?}");
    assert_eq!(r["complete"], false, "{r}");
    let tenant = |slug: &str| r["tenants"].as_array().unwrap().iter().find(|t| t["slug"] == slug).cloned();
    let ta = tenant("report-shared").expect("the shared tenant answered");
    assert_eq!(ta["assets"], 2, "{r}");
    assert_eq!(ta["assets_by_status"], json!({"active": 1, "in_repair": 1}), "{r}");
    assert_eq!(ta["open_issues"], 1, "{r}");
    assert_eq!(ta["tier"], "shared");
    let td = tenant("report-dedicated").expect("the dedicated tenant answered");
    assert_eq!((td["assets"].clone(), td["open_issues"].clone()), (json!(1), json!(1)), "{r}");
    assert_eq!(td["tier"], "dedicated");
    assert!(tenant("report-silent").is_none(), "a silent backend's tenant is not counted as zero: {r}");
    assert_eq!(r["missing"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["missing"][0]["slug"], "report-silent");
    let missing: Vec<&Value> = r["backends"].as_array().unwrap().iter().filter(|b| b["status"] == "missing").collect();
    assert_eq!(missing.len(), 1, "{r}");
    assert!(missing[0]["error"].as_str().unwrap().contains("no answer within"), "{r}");
    assert_eq!((r["assets"].clone(), r["open_issues"].clone()), (json!(3), json!(2)), "{r}");
    drop(silent);
}

/// The issues of a tenant, through the app API.
async fn issues(app: &TestApp, key: &str) -> Vec<Value> {
    let (s, body) = app.get(key, "/v1/issues?limit=200").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["issues"].as_array().unwrap().clone()
}

async fn issues_until(app: &TestApp, key: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = issues(app, key).await;
        if list.len() >= n || std::time::Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_overdue_job_opens_one_issue_per_lapsed_schedule_from_two_processes_and_follows_a_move() {
    let jobs_on = |s: &mut tenantry::Settings| s.app.jobs.overdue_interval_secs = 1;
    let app = spawn_app_with(jobs_on).await;
    let a = app.create_tenant("overdue-a", "shared").await;
    let b = app.create_tenant("overdue-b", "shared").await;
    // Each seed has one lapsed schedule (due 2026-01-01) and one issue.
    let (asset, _, _) = app.seed(&a.key, "OA-1").await;
    let (s, _) = app
        .post(
            &a.key,
            &format!("/v1/assets/{asset}/maintenance-schedules"),
            json!({"title": "Future", "interval_days": 7, "next_due_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    app.seed(&b.key, "OB-1").await;
    // A second app process runs the same job against the same tenants.
    let second = app.another_app(jobs_on).await;

    let list = issues_until(&app, &a.key, 2).await;
    assert_eq!(list.len(), 2, "{list:?}");
    // Several passes of both processes later, still exactly one per lapse.
    let runs = "tenantry_app_job_runs_total";
    let (first_from, second_from) = (app.metric(&app.app, runs).await, app.metric(&second, runs).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.metric(&app.app, runs).await < first_from + 2.0 || app.metric(&second, runs).await < second_from + 2.0 {
        assert!(std::time::Instant::now() < deadline, "both processes' jobs ran twice more within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = issues(&app, &a.key).await;
    assert_eq!(list.len(), 2, "never a duplicate: {list:?}");
    let opened: Vec<&Value> = list.iter().filter(|i| i["title"] == "Maintenance overdue: Oil").collect();
    assert_eq!(opened.len(), 1, "{list:?}");
    assert_eq!(opened[0]["priority"], "high");
    assert_eq!(opened[0]["status"], "open");
    assert_eq!(opened[0]["asset_id"], asset.as_str());
    let b_list = issues_until(&app, &b.key, 2).await;
    assert_eq!(b_list.len(), 2, "b has its own lapse, no more: {b_list:?}");

    // Promote a; a new lapse is found on its new home.
    let (s, op) = app.admin_call(Method::POST, &format!("/v1/tenants/{}/promote", a.id), Some(json!({}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, _) = app
        .post(
            &a.key,
            &format!("/v1/assets/{asset}/maintenance-schedules"),
            json!({"title": "Belts", "interval_days": 90, "next_due_at": "2026-06-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let list = issues_until(&app, &a.key, 3).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().any(|i| i["title"] == "Maintenance overdue: Belts"), "{list:?}");
    let home = connect(&app.database_of(&a.id).await, false);
    let q = format!("SELECT count(*) FROM maintenance_overdue WHERE tenant_id = '{}' AND issue_id IS NOT NULL", a.id);
    assert_eq!(scalar(&home, &q).await, 2, "both markers live in the dedicated database");
    let pool = connect(&app.pool_name, false);
    assert_eq!(scalar(&pool, &q).await, 0, "nothing of a left behind in the pool");
    assert_eq!(issues(&app, &b.key).await.len(), 2, "b untouched");

    // The processes' counters add up to the three issues opened.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut total = 0.0;
        for base in [&app.app, &second] {
            total += app.metric(base, "tenantry_app_job_issues_opened_total").await;
        }
        if total == 3.0 || std::time::Instant::now() > deadline {
            assert_eq!(total, 3.0, "issues opened across both processes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
