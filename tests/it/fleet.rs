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

async fn patch_settings(app: &crate::helpers::TestApp, tenant: &str, body: Value) -> (StatusCode, Value) {
    app.admin_call(Method::PATCH, &format!("/v1/tenants/{tenant}/settings"), Some(body)).await
}

#[tokio::test]
async fn a_tenant_over_its_rate_limit_gets_429_and_a_change_applies_without_restart() {
    let app = spawn_app().await;
    let a = app.create_tenant("hasty", "shared").await;
    let b = app.create_tenant("patient", "shared").await;
    let (s, view) = patch_settings(&app, &a.id, json!({"limits": {"requests_per_second": 1, "burst": 3}})).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!((view["limits"]["burst"].clone(), view["limits"]["max_page_size"].clone()), (json!(3), json!(500)));

    // The app learns of the change through the registry's NOTIFY.
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let resp = app.http.get(format!("{}/v1/assets", app.app)).bearer_auth(&a.key).send().await.unwrap();
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
            statuses.push(status);
            break;
        }
        statuses.push(status);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // The neighbour is not limited by it.
    for _ in 0..10 {
        assert_eq!(app.get(&b.key, "/v1/assets").await.0, StatusCode::OK);
    }
    // Back to the tier default: no more 429s.
    let (s, view) = patch_settings(&app, &a.id, json!({"limits": {"requests_per_second": null, "burst": null}})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(view["settings"]["limits"], json!({}));
    let ok = app.get_until(&a.key, "/v1/assets", StatusCode::OK).await;
    assert_eq!(ok, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(app.get(&a.key, "/v1/assets").await.0, StatusCode::OK);
    }
    let (_, trail) =
        app.admin_call(Method::GET, &format!("/v1/audit?tenant={}&action=tenant.settings", a.id), None).await;
    assert_eq!(trail["entries"].as_array().unwrap().len(), 2);
    let (_, metrics) = (0, app.http.get(format!("{}/metrics", app.app)).send().await.unwrap().text().await.unwrap());
    assert!(metrics.contains("tenantry_app_rejected_requests_total{limit=\"rate\"} "), "{metrics}");
    assert!(!metrics.contains("tenantry_app_rejected_requests_total{limit=\"rate\"} 0\n"), "{metrics}");
}

#[tokio::test]
async fn statement_timeout_concurrency_and_page_size_limits_apply_per_tenant() {
    let app = spawn_app().await;
    let a = app.create_tenant("slowpoke", "shared").await;
    let (asset, _, _) = app.seed(&a.key, "SLOW-1").await;
    let (s, _) = patch_settings(
        &app,
        &a.id,
        json!({"limits": {"statement_timeout_ms": 300, "max_concurrent_requests": 1, "max_page_size": 5}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let status = app.get_until(&a.key, "/v1/assets?limit=6", StatusCode::BAD_REQUEST).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "limit above the tenant's max_page_size");
    assert_eq!(app.get(&a.key, "/v1/assets?limit=5").await.0, StatusCode::OK);

    // Hold the asset's row lock from outside: the tenant's update waits on it
    // until its statement timeout fires; meanwhile its one in-flight slot is taken.
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let pool = crate::helpers::connect(&app.pool_name, false);
    let blocker = pool.begin().await.unwrap();
    blocker.execute_unprepared(&format!("SELECT 1 FROM assets WHERE id = '{asset}' FOR UPDATE")).await.unwrap();
    let slow = {
        let (http, url, key) = (app.http.clone(), format!("{}/v1/assets/{asset}", app.app), a.key.clone());
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let resp = http.patch(url).bearer_auth(key).json(&json!({"name": "renamed"})).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap(), t0.elapsed())
        })
    };
    // Once the update waits on the lock, the tenant's one slot is taken.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    while crate::helpers::scalar(&pool, waiting).await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, body) = app.get(&a.key, "/v1/assets").await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("too_many_concurrent_requests"))
    );
    let (s, body, took) = slow.await.unwrap();
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("statement_timeout")),
        "{body}"
    );
    assert!(took < std::time::Duration::from_secs(3), "the timeout fired, not a hang: {took:?}");
    blocker.rollback().await.unwrap();
    assert_eq!(app.get(&a.key, "/v1/assets").await.0, StatusCode::OK, "slot released");

    for bad in [json!({"limits": {"rps": 1}}), json!({"limits": {"burst": 0}}), json!([1]), json!({"flags": {"x": {}}})]
    {
        let (s, body) = patch_settings(&app, &a.id, bad.clone()).await;
        assert_eq!(
            (s, body["error"]["code"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_settings")),
            "{bad}"
        );
    }
}

/// An app process that never hears the registry's NOTIFY still answers 404
/// from the moment the erasure is accepted: the tenant is fenced on its
/// backend before the API returns, and the fresh route read says "erasing".
#[tokio::test]
async fn an_app_with_a_stale_cache_stops_serving_an_erased_tenant_at_once() {
    let app = spawn_app().await;
    let a = app.create_tenant("erased-while-cached", "shared").await;
    let (asset, _, _) = app.seed(&a.key, "EC-1").await;
    let stale = app.another_app(|s| s.app.listen_for_changes = false).await;
    let client = reqwest::Client::new();
    let call = |method: Method, path: String| {
        let (client, key, url) = (client.clone(), a.key.clone(), format!("{stale}{path}"));
        async move {
            let resp = client.request(method, url).bearer_auth(key).json(&json!({"name": "late"})).send().await;
            let resp = resp.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(call(Method::GET, "/v1/assets".into()).await.0, StatusCode::OK, "its cache now holds the key");

    let (s, op) = app.admin_call(Method::DELETE, &format!("/v1/tenants/{}", a.id), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    for (method, path) in [(Method::GET, "/v1/assets".to_string()), (Method::PATCH, format!("/v1/assets/{asset}"))] {
        let (s, body) = call(method.clone(), path.clone()).await;
        assert_eq!((s, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{method} {path}");
    }
    assert_eq!(app.wait_operation(op["id"].as_str().unwrap()).await["state"], "succeeded");
    assert_eq!(call(Method::GET, "/v1/assets".into()).await.0, StatusCode::NOT_FOUND);
}

/// Single-statement reads (lists, lookups) run under the tenant's own
/// statement timeout too, not only transactions: two tenants of one pool,
/// blocked on the same table lock, each give up at their own limit.
#[tokio::test]
async fn reads_give_up_at_each_tenants_own_statement_timeout() {
    let app = spawn_app().await;
    let quick = app.create_tenant("gives-up-quick", "shared").await;
    let patient = app.create_tenant("waits-longer", "shared").await;
    let (asset, _, _) = app.seed(&quick.key, "Q-1").await;
    app.seed(&patient.key, "P-1").await;
    for (t, ms) in [(&quick, 300), (&patient, 3000)] {
        let (s, body) =
            patch_settings(&app, &t.id, json!({"limits": {"statement_timeout_ms": ms, "max_page_size": 5}})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        // The page-size cap shows the change has reached the app.
        assert_eq!(app.get_until(&t.key, "/v1/assets?limit=6", StatusCode::BAD_REQUEST).await, StatusCode::BAD_REQUEST);
    }

    use sea_orm::{ConnectionTrait, TransactionTrait};
    let pool = crate::helpers::connect(&app.pool_name, false);
    let blocker = pool.begin().await.unwrap();
    blocker.execute_unprepared("LOCK TABLE assets IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let timed_get = |key: String, path: String| {
        let (http, url) = (app.http.clone(), format!("{}{path}", app.app));
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let resp = http.get(url).bearer_auth(key).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap()["error"]["code"].clone(), t0.elapsed())
        })
    };
    let quick_list = timed_get(quick.key.clone(), "/v1/assets".into());
    let quick_one = timed_get(quick.key.clone(), format!("/v1/assets/{asset}"));
    let patient_list = timed_get(patient.key.clone(), "/v1/assets".into());
    let three_secs = std::time::Duration::from_secs(3);
    for read in [quick_list, quick_one] {
        let (s, code, took) = read.await.unwrap();
        assert_eq!((s, code), (StatusCode::SERVICE_UNAVAILABLE, json!("statement_timeout")));
        assert!(took < three_secs, "gave up at its own 300 ms, not the other tenant's 3 s: {took:?}");
    }
    let (s, code, took) = patient_list.await.unwrap();
    assert_eq!((s, code), (StatusCode::SERVICE_UNAVAILABLE, json!("statement_timeout")));
    assert!(took >= three_secs, "waited its own 3 s: {took:?}");
    blocker.rollback().await.unwrap();
    for t in [&quick, &patient] {
        let (s, body) = app.get(&t.key, "/v1/assets").await;
        assert_eq!((s, body["assets"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{body}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_on_both_listeners() {
    let app = spawn_app().await;
    let a = app.create_tenant("traced", "shared").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let app_resp = app.http.get(format!("{}/v1/assets", app.app)).bearer_auth(&a.key).send().await.unwrap();
        let admin_resp =
            app.http.get(format!("{}/v1/tenants", app.admin)).bearer_auth(&app.token).send().await.unwrap();
        let unauthorized = app.http.get(format!("{}/v1/assets", app.app)).send().await.unwrap();
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        for resp in [app_resp, admin_resp, unauthorized] {
            let id =
                resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id").to_string();
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
            assert!(seen.insert(id), "request ids are unique");
        }
    }
}
