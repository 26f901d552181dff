use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{connect, scalar, spawn_app};

#[tokio::test]
async fn shared_tenant_is_placed_on_the_shared_pool_at_epoch_1() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    assert_eq!(t.tenant["tier"], "shared");
    assert_eq!(t.tenant["status"], "active");
    assert_eq!(t.tenant["placement"]["epoch"], 1);
    assert_eq!(t.tenant["placement"]["backend_name"], app.pool_name.as_str());
}

#[tokio::test]
async fn dedicated_tenant_gets_its_own_migrated_database() {
    let app = spawn_app().await;
    let t = app.create_tenant("globex", "dedicated").await;
    let db = app.database_of(&t.id).await;
    assert_eq!(db, format!("tenant_{}", t.id.replace('-', "")));
    let (s, backends) = app.admin_call(Method::GET, "/v1/backends", None).await;
    assert_eq!(s, StatusCode::OK);
    let dedicated: Vec<_> =
        backends["backends"].as_array().unwrap().iter().filter(|b| b["kind"] == "dedicated").collect();
    assert_eq!(dedicated.len(), 1);
    assert_eq!(dedicated[0]["schema_version"], tenantry_core::TENANT_SCHEMA_LATEST);
    assert_eq!(dedicated[0]["tenants"], 1);
    let version = scalar(&connect(&db, false), "SELECT max(version)::bigint FROM tenantry_schema_migrations").await;
    assert_eq!(version, i64::from(tenantry_core::TENANT_SCHEMA_LATEST));
}

#[tokio::test]
async fn tenant_is_found_by_id_and_by_slug() {
    let app = spawn_app().await;
    let t = app.create_tenant("initech", "shared").await;
    let (s1, by_id) = app.admin_call(Method::GET, &format!("/v1/tenants/{}", t.id), None).await;
    let (s2, by_slug) = app.admin_call(Method::GET, "/v1/tenants/initech", None).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(by_id, by_slug);
    let (s, body) = app.admin_call(Method::GET, "/v1/tenants/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn tenant_list_pages_with_a_cursor() {
    let app = spawn_app().await;
    for slug in ["t-one", "t-two", "t-three"] {
        app.create_tenant(slug, "shared").await;
    }
    let (s, page1) = app.admin_call(Method::GET, "/v1/tenants?limit=2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page1["tenants"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().expect("a next cursor");
    let (_, page2) = app.admin_call(Method::GET, &format!("/v1/tenants?limit=2&cursor={cursor}"), None).await;
    let slugs: Vec<_> = page2["tenants"].as_array().unwrap().iter().map(|t| t["slug"].clone()).collect();
    assert_eq!(slugs, vec![json!("t-three")]);
    assert!(page2["next_cursor"].is_null());
}

#[tokio::test]
async fn admin_api_refuses_missing_or_wrong_token() {
    let app = spawn_app().await;
    let resp = app.http.get(format!("{}/v1/tenants", app.admin)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app.http.get(format!("{}/v1/tenants", app.admin)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn revoked_key_gets_401_at_once_and_other_keys_keep_working() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let (s, second) = app.admin_call(Method::POST, "/v1/tenants/acme/api-keys", Some(json!({"name": "ci"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(app.get(&t.key, "/v1/tenant").await.0, StatusCode::OK);
    let (s, _) = app
        .admin_call(Method::DELETE, &format!("/v1/tenants/{}/api-keys/{}", t.id, second["id"].as_str().unwrap()), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let second_key = second["key"].as_str().unwrap();
    // The revocation reaches the app's cache through NOTIFY; allow it a moment.
    let status = app.get_until(second_key, "/v1/tenant", StatusCode::UNAUTHORIZED).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get(&t.key, "/v1/tenant").await.0, StatusCode::OK);
    let (s, _) = app
        .admin_call(Method::DELETE, &format!("/v1/tenants/{}/api-keys/{}", t.id, second["id"].as_str().unwrap()), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "revoking twice is a 404");
}

#[tokio::test]
async fn every_admin_action_is_audited_with_its_actor() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let registry = connect(&app.cp.config().registry_database, false);
    let n = scalar(
        &registry,
        &format!("SELECT count(*) FROM audit_log WHERE tenant_id = '{}' AND actor = 'admin-token' AND action IN ('tenant.create', 'api_key.create')", t.id),
    )
    .await;
    assert_eq!(n, 2);
}

#[tokio::test]
async fn api_keys_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let registry = connect(&app.cp.config().registry_database, false);
    let n = scalar(
        &registry,
        &format!(
            "SELECT count(*) FROM api_keys WHERE encode(key_hash, 'escape') LIKE '%{}%' OR prefix = '{}'",
            &t.key[5..],
            t.key
        ),
    )
    .await;
    assert_eq!(n, 0);
    let n = scalar(&registry, "SELECT count(*) FROM api_keys WHERE octet_length(key_hash) = 32").await;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn both_listeners_serve_health_and_openapi() {
    let app = spawn_app().await;
    for base in [&app.app, &app.admin] {
        let health: serde_json::Value =
            app.http.get(format!("{base}/healthz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok");
    }
    let spec: serde_json::Value =
        app.http.get(format!("{}/openapi.json", app.app)).send().await.unwrap().json().await.unwrap();
    for path in [
        "/v1/assets",
        "/v1/assets/{id}",
        "/v1/assets/by-tag/{tag}",
        "/v1/maintenance-schedules/due",
        "/v1/issues/{id}",
        "/v1/tenant",
    ] {
        assert!(spec["paths"][path].is_object(), "app spec lacks {path}");
    }
    let spec: serde_json::Value =
        app.http.get(format!("{}/openapi.json", app.admin)).send().await.unwrap().json().await.unwrap();
    for path in [
        "/v1/tenants",
        "/v1/tenants/{tenant}",
        "/v1/tenants/{tenant}/api-keys",
        "/v1/tenants/{tenant}/api-keys/{key_id}",
        "/v1/backends",
    ] {
        assert!(spec["paths"][path].is_object(), "admin spec lacks {path}");
    }
}

/// At 20,000 tenants the admin list pages through every tenant once with its
/// cursor, and a search by slug or name (any case, its wildcards literal)
/// finds the matches through the registry's trigram indexes, not a scan.
#[tokio::test]
async fn a_large_registry_pages_by_cursor_and_searches_by_trigram() {
    use sea_orm::ConnectionTrait;
    let app = spawn_app().await;
    let registry = connect(&app.cp.config().registry_database, false);
    registry
        .execute_unprepared(
            "INSERT INTO tenants (id, slug, name, tier, status, region) \
             SELECT gen_random_uuid(), 'fleet-' || lpad(i::text, 5, '0'), 'Fleet Customer ' || i || CASE WHEN i % 5000 = 7 THEN ' 100%_Pure' ELSE '' END, \
                    'shared', 'active', 'local' FROM generate_series(0, 19999) i; ANALYZE tenants;",
        )
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants?limit=1000&cursor={c}"),
            None => "/v1/tenants?limit=1000".to_string(),
        };
        let (s, page) = app.admin_call(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for t in page["tenants"].as_array().unwrap() {
            assert!(seen.insert(t["id"].as_str().unwrap().to_string()), "a tenant seen twice");
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 20_000);
    assert!(pages >= 20);

    let (s, found) = app.admin_call(Method::GET, "/v1/tenants?q=FLEET-1234", None).await;
    assert_eq!(s, StatusCode::OK);
    let slugs: Vec<&str> = found["tenants"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs.len(), 10, "fleet-12340 to fleet-12349, any case: {slugs:?}");
    let (_, found) = app.admin_call(Method::GET, "/v1/tenants?q=01234", None).await;
    assert_eq!(found["tenants"][0]["slug"], "fleet-01234", "{found}");
    let (_, found) = app.admin_call(Method::GET, "/v1/tenants?q=100%25_pure", None).await;
    assert_eq!(found["tenants"].as_array().unwrap().len(), 4, "by name, `%` and `_` literal: {found}");
    let (_, found) = app.admin_call(Method::GET, "/v1/tenants?q=100%25xpure", None).await;
    assert_eq!(found["tenants"].as_array().unwrap().len(), 0, "`_` is no wildcard");

    // Whether an index can answer it (at 20,000 rows a scan is still cheaper).
    use sea_orm::TransactionTrait;
    let txn = registry.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL enable_seqscan = off").await.unwrap();
    let plan = txn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "EXPLAIN (FORMAT JSON) SELECT id FROM tenants WHERE slug ILIKE '%fleet-1234%' OR name ILIKE '%fleet-1234%'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<serde_json::Value>(0)
        .unwrap()
        .to_string();
    assert!(plan.contains("tenants_slug_trgm") && plan.contains("tenants_name_trgm"), "{plan}");
}
