use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn whoami_names_the_key_owner() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "dedicated").await;
    let (s, me) = app.get(&t.key, "/v1/tenant").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me, json!({"id": t.id, "slug": "acme", "tier": "dedicated"}));
}

#[tokio::test]
async fn asset_lifecycle_create_read_by_tag_update_delete() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let (s, a) = app
        .post(
            &t.key,
            "/v1/assets",
            json!({"name": "Drill", "tag": "D-1", "location": "Bay 2", "attributes": {"volts": 18}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(a["status"], "active");
    assert_eq!(a["attributes"]["volts"], 18);
    let id = a["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let (s, got) = app.get(&t.key, &format!("/v1/assets/{id}")).await;
    assert_eq!((s, got["name"].clone()), (StatusCode::OK, json!("Drill")));
    let (s, by_tag) = app.get(&t.key, "/v1/assets/by-tag/D-1").await;
    assert_eq!((s, by_tag["id"].clone()), (StatusCode::OK, json!(id)));

    let (s, upd) = app
        .call(
            &t.key,
            Method::PATCH,
            &format!("/v1/assets/{id}"),
            Some(json!({"status": "in_repair", "name": "Drill 2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (upd["status"].clone(), upd["name"].clone(), upd["location"].clone()),
        (json!("in_repair"), json!("Drill 2"), json!("Bay 2"))
    );

    let (s, _) = app.call(&t.key, Method::DELETE, &format!("/v1/assets/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&t.key, &format!("/v1/assets/{id}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.call(&t.key, Method::DELETE, &format!("/v1/assets/{id}"), None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn asset_list_filters_by_status_and_text_and_pages_with_an_opaque_cursor() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    for i in 0..5 {
        let status = if i % 2 == 0 { "active" } else { "retired" };
        let (s, _) = app
            .post(&t.key, "/v1/assets", json!({"name": format!("Pump {i}"), "tag": format!("P-{i}"), "status": status}))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    app.post(&t.key, "/v1/assets", json!({"name": "Crane", "tag": "C-1"})).await;

    let (_, page1) = app.get(&t.key, "/v1/assets?limit=4").await;
    assert_eq!(page1["assets"].as_array().unwrap().len(), 4);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app.get(&t.key, &format!("/v1/assets?limit=4&cursor={cursor}")).await;
    assert_eq!(page2["assets"].as_array().unwrap().len(), 2);
    assert!(page2["next_cursor"].is_null());

    let (_, retired) = app.get(&t.key, "/v1/assets?status=retired").await;
    let tags: Vec<_> = retired["assets"].as_array().unwrap().iter().map(|a| a["tag"].clone()).collect();
    assert_eq!(tags, vec![json!("P-1"), json!("P-3")]);

    let (_, found) = app.get(&t.key, "/v1/assets?q=cRaN").await;
    assert_eq!(found["assets"].as_array().unwrap().len(), 1);
    let (_, none) = app.get(&t.key, "/v1/assets?q=%25").await;
    assert_eq!(none["assets"].as_array().unwrap().len(), 0, "% is matched literally");
}

#[tokio::test]
async fn maintenance_schedules_are_listed_per_asset_and_by_due_date() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let (asset, sched, _) = app.seed(&t.key, "A-1").await;
    let (s, list) = app.get(&t.key, &format!("/v1/assets/{asset}/maintenance-schedules")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["maintenance_schedules"][0]["id"], json!(sched));

    let (_, due) = app.get(&t.key, "/v1/maintenance-schedules/due?before=2026-02-01T00:00:00Z").await;
    assert_eq!(due["maintenance_schedules"].as_array().unwrap().len(), 1);
    let (_, due) = app.get(&t.key, "/v1/maintenance-schedules/due?before=2025-12-01T00:00:00Z").await;
    assert_eq!(due["maintenance_schedules"].as_array().unwrap().len(), 0);

    let (s, upd) = app
        .call(
            &t.key,
            Method::PATCH,
            &format!("/v1/maintenance-schedules/{sched}"),
            Some(json!({"last_done_at": "2026-01-02T00:00:00Z", "next_due_at": "2026-02-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(upd["last_done_at"], "2026-01-02T00:00:00Z");
    let (s, _) = app.call(&t.key, Method::DELETE, &format!("/v1/maintenance-schedules/{sched}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, list) = app.get(&t.key, &format!("/v1/assets/{asset}/maintenance-schedules")).await;
    assert_eq!(list["maintenance_schedules"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn issues_are_created_filtered_updated_and_deleted() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "dedicated").await;
    let (_, _, issue) = app.seed(&t.key, "A-1").await;
    let (_, open) = app.get(&t.key, "/v1/issues?status=open").await;
    assert_eq!(open["issues"].as_array().unwrap().len(), 1);
    let (s, upd) =
        app.call(&t.key, Method::PATCH, &format!("/v1/issues/{issue}"), Some(json!({"status": "resolved"}))).await;
    assert_eq!((s, upd["status"].clone(), upd["priority"].clone()), (StatusCode::OK, json!("resolved"), json!("high")));
    let (_, open) = app.get(&t.key, "/v1/issues?status=open").await;
    assert_eq!(open["issues"].as_array().unwrap().len(), 0);
    let (s, got) = app.get(&t.key, &format!("/v1/issues/{issue}")).await;
    assert_eq!((s, got["title"].clone()), (StatusCode::OK, json!("Leak")));
    assert_eq!(app.call(&t.key, Method::DELETE, &format!("/v1/issues/{issue}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&t.key, &format!("/v1/issues/{issue}")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_an_asset_removes_its_schedules_and_issues() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let (asset, sched, issue) = app.seed(&t.key, "A-1").await;
    app.call(&t.key, Method::DELETE, &format!("/v1/assets/{asset}"), None).await;
    assert_eq!(app.get(&t.key, &format!("/v1/issues/{issue}")).await.0, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(&t.key, Method::PATCH, &format!("/v1/maintenance-schedules/{sched}"), Some(json!({"title": "x"})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn schedule_and_issue_on_a_missing_asset_are_404() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let missing = uuid::Uuid::now_v7();
    let (s, body) = app.post(&t.key, &format!("/v1/assets/{missing}/issues"), json!({"title": "x"})).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    let (s, _) = app
        .post(&t.key, &format!("/v1/assets/{missing}/maintenance-schedules"), json!({"title": "x", "interval_days": 7}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn quotes_backslashes_and_sql_in_tags_and_searches_are_plain_text() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let nasty = r#"O'Brien\'; DROP TABLE assets; -- ünï"#;
    let (s, created) = app.post(&t.key, "/v1/assets", json!({"name": nasty, "tag": nasty})).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let encoded: String = nasty.bytes().map(|b| format!("%{b:02X}")).collect();
    let (s, got) = app.get(&t.key, &format!("/v1/assets/by-tag/{encoded}")).await;
    assert_eq!((s, got["tag"].clone()), (StatusCode::OK, json!(nasty)));
    for q in [r#"Brien\'"#, "'; DROP", "ünï"] {
        let q_enc: String = q.bytes().map(|b| format!("%{b:02X}")).collect();
        let (s, found) = app.get(&t.key, &format!("/v1/assets?q={q_enc}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(found["assets"].as_array().map(Vec::len), Some(1), "q={q}: {found}");
    }
    let (s, all) = app.get(&t.key, "/v1/assets").await;
    assert_eq!((s, all["assets"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
}
