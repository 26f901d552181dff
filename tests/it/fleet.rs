//! Running the fleet: audit trail, erasure, export, limits.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

fn actions(page: &Value) -> Vec<String> {
    page["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_audit_log_is_filterable_by_tenant_actor_action_and_time() {
    let app = spawn_app().await;
    let a = app.create_tenant("audited", "shared").await;
    let b = app.create_tenant("provisioned", "dedicated").await;

    let (s, page) = app.admin_call(Method::GET, "/v1/audit?tenant=audited", None).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page["entries"].as_array().unwrap().iter().all(|e| e["tenant_id"] == json!(a.id)), "{page}");
    let got = actions(&page);
    for expected in ["tenant.create", "tenant.place", "api_key.create"] {
        assert!(got.contains(&expected.to_string()), "{got:?}");
    }
    assert!(!got.iter().any(|a| a.starts_with("operation")), "a shared tenant needs no operation: {got:?}");

    // Operation transitions are in the trail, under the operation's tenant.
    let (_, page) = app.admin_call(Method::GET, &format!("/v1/audit?tenant={}&action=operation", b.id), None).await;
    let got = actions(&page);
    assert!(
        got.contains(&"operation.create".to_string()) && got.contains(&"operation.succeeded".to_string()),
        "{got:?}"
    );
    assert!(got.iter().all(|a| a.starts_with("operation.")), "{got:?}");

    let (_, page) = app.admin_call(Method::GET, "/v1/audit?actor=admin-token", None).await;
    assert!(page["entries"].as_array().unwrap().iter().all(|e| e["actor"] == "admin-token"));
    assert!(page["entries"].as_array().unwrap().len() >= 4);

    let (_, page) = app.admin_call(Method::GET, "/v1/audit?since=2999-01-01T00:00:00Z", None).await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 0);

    // Pages walk back in time without overlap.
    let (_, first) = app.admin_call(Method::GET, "/v1/audit?limit=2", None).await;
    let cursor = first["next_cursor"].as_i64().expect("a next page");
    let (_, second) = app.admin_call(Method::GET, &format!("/v1/audit?limit=2&cursor={cursor}"), None).await;
    let first_ids: Vec<i64> = first["entries"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let second_ids: Vec<i64> =
        second["entries"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(first_ids.len(), 2);
    assert!(second_ids.iter().all(|id| *id < first_ids[1]), "{first_ids:?} then {second_ids:?}");

    for (query, code) in
        [("since=yesterday", "invalid_since"), ("limit=0", "invalid_limit"), ("cursor=abc", "invalid_query")]
    {
        let (s, body) = app.admin_call(Method::GET, &format!("/v1/audit?{query}"), None).await;
        assert_eq!(
            (s, body["error"]["code"].as_str().unwrap_or("")),
            (StatusCode::BAD_REQUEST, code),
            "{query}: {body}"
        );
    }
    let (s, _) = app.admin_call(Method::GET, "/v1/audit?tenant=nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn export(app: &crate::helpers::TestApp, tenant: &str) -> (StatusCode, Vec<Value>) {
    let resp =
        app.http.get(format!("{}/v1/tenants/{tenant}/export", app.admin)).bearer_auth(&app.token).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let lines = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (status, lines)
}

#[tokio::test]
async fn an_export_holds_every_row_of_the_tenant_and_nothing_else_on_either_tier() {
    let app = spawn_app().await;
    let a = app.create_tenant("exported", "shared").await;
    let b = app.create_tenant("bystander", "shared").await;
    let d = app.create_tenant("exported-big", "dedicated").await;
    for i in 0..3 {
        app.seed(&a.key, &format!("A-{i}")).await;
        app.seed(&d.key, &format!("D-{i}")).await;
    }
    app.seed(&b.key, "B-0").await;

    for (t, prefix) in [(&a, "A-"), (&d, "D-")] {
        let (s, lines) = export(&app, &t.id).await;
        assert_eq!(s, StatusCode::OK);
        let header = &lines[0];
        assert_eq!(header["format"], "tenantry-export-v1");
        assert_eq!(header["tenant_id"], json!(t.id));
        let rows: Vec<&Value> = lines.iter().filter(|l| l.get("row").is_some()).collect();
        assert_eq!(rows.len(), 9, "3 assets, 3 schedules, 3 issues: {lines:?}");
        assert!(rows.iter().all(|r| r["row"]["tenant_id"] == json!(t.id)), "only the tenant's rows");
        let tags: Vec<&str> =
            rows.iter().filter(|r| r["table"] == "assets").map(|r| r["row"]["tag"].as_str().unwrap()).collect();
        assert!(tags.iter().all(|t| t.starts_with(prefix)) && tags.len() == 3, "{tags:?}");
        assert_eq!(lines.last().unwrap()["end"], true);
        assert_eq!(lines.last().unwrap()["rows"], 9);
    }
    let (s, _) = export(&app, "nobody").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn erasing_a_shared_tenant_deletes_its_rows_everywhere_and_keeps_a_tombstone() {
    let app = spawn_app().await;
    let a = app.create_tenant("forgotten", "shared").await;
    let b = app.create_tenant("remembered", "shared").await;
    for i in 0..4 {
        app.seed(&a.key, &format!("F-{i}")).await;
    }
    app.seed(&b.key, "R-0").await;
    // A table added by a later migration is found from the catalog too.
    use sea_orm::ConnectionTrait;
    let pool = crate::helpers::connect(&app.pool_name, false);
    pool.execute_unprepared(
        "CREATE TABLE later_notes (tenant_id uuid NOT NULL, id uuid NOT NULL, body text, PRIMARY KEY (tenant_id, id)); \
         ALTER TABLE later_notes ENABLE ROW LEVEL SECURITY; ALTER TABLE later_notes FORCE ROW LEVEL SECURITY; \
         CREATE POLICY tenant_isolation ON later_notes USING (tenant_id = tenantry_current_tenant()); \
         ALTER TABLE later_notes OWNER TO tenantry_owner",
    )
    .await
    .unwrap();
    pool.execute_unprepared(&format!(
        "INSERT INTO later_notes VALUES ('{}', gen_random_uuid(), 'a'), ('{}', gen_random_uuid(), 'b')",
        a.id, b.id
    ))
    .await
    .unwrap();

    let (s, op) = app.admin_call(Method::DELETE, &format!("/v1/tenants/{}", a.id), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "erase");
    // From the moment it starts, the tenant's requests get 404.
    let (s, body) = app.get(&a.key, "/v1/assets").await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{body}");
    let (s, body) =
        app.admin_call(Method::POST, &format!("/v1/operations/{}/cancel", op["id"].as_str().unwrap()), None).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("not_cancellable")));
    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    for table in ["assets", "maintenance_schedules", "asset_issues", "later_notes", "tenant_residency"] {
        let n =
            crate::helpers::scalar(&pool, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{}'", a.id)).await;
        assert_eq!(n, 0, "{table} still holds the erased tenant's rows");
    }
    assert_eq!(
        crate::helpers::scalar(&pool, &format!("SELECT count(*) FROM later_notes WHERE tenant_id = '{}'", b.id)).await,
        1
    );
    assert_eq!(app.get(&b.key, "/v1/assets").await.0, StatusCode::OK, "the neighbour is untouched");
    let (s, body) = app.get(&a.key, "/v1/assets").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    let (_, t) = app.admin_call(Method::GET, &format!("/v1/tenants/{}", a.id), None).await;
    assert_eq!(
        (t["status"].clone(), t["name"].clone(), t["placement"].clone()),
        (json!("erased"), json!("(erased)"), Value::Null)
    );
    let registry = crate::helpers::connect(&app.cp.config().registry_database, false);
    let live_keys = format!("SELECT count(*) FROM api_keys WHERE tenant_id = '{}' AND revoked_at IS NULL", a.id);
    assert_eq!(crate::helpers::scalar(&registry, &live_keys).await, 0);
    let (_, trail) = app.admin_call(Method::GET, &format!("/v1/audit?tenant={}", a.id), None).await;
    let got = actions(&trail);
    assert!(got.contains(&"tenant.erase".to_string()) && got.contains(&"tenant.create".to_string()), "{got:?}");

    let (s, body) = app.admin_call(Method::DELETE, &format!("/v1/tenants/{}", a.id), None).await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("already_erased")));
    let (s, _) = export(&app, &a.id).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn erasing_a_dedicated_tenant_drops_its_database() {
    let app = spawn_app().await;
    let d = app.create_tenant("gone-big", "dedicated").await;
    app.seed(&d.key, "G-1").await;
    let db = app.database_of(&d.id).await;
    let (s, op) = app.admin_call(Method::DELETE, "/v1/tenants/gone-big", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let postgres = crate::helpers::connect("postgres", false);
    assert_eq!(
        crate::helpers::scalar(&postgres, &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")).await,
        0
    );
    let (_, backends) = app.admin_call(Method::GET, "/v1/backends", None).await;
    let b = backends["backends"].as_array().unwrap().iter().find(|b| b["database"] == json!(db)).unwrap().clone();
    assert_eq!(b["status"], "retired");
    assert_eq!(app.get(&d.key, "/v1/assets").await.0, StatusCode::NOT_FOUND);
}
