use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn malformed_json_unknown_fields_and_bad_values_get_clear_4xx() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let raw = |body: &'static str| {
        app.http
            .post(format!("{}/v1/assets", app.app))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = raw("{\"name\": ").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(&resp.json().await.unwrap()), "malformed_json");

    let (s, body) = app.post(&t.key, "/v1/assets", json!({"name": "x", "tag": "t", "colour": "red"})).await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    assert!(body["error"]["message"].as_str().unwrap().contains("colour"), "{body}");

    let (s, body) = app.post(&t.key, "/v1/assets", json!({"name": "x", "tag": "t", "status": "lost"})).await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    let (s, body) = app.post(&t.key, "/v1/assets", json!({"name": " ", "tag": "t"})).await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let (s, body) = app.post(&t.key, "/v1/assets", json!({"name": "x", "tag": "t", "attributes": [1]})).await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let (asset, _, _) = app.seed(&t.key, "S-1").await;
    let (s, body) = app
        .post(&t.key, &format!("/v1/assets/{asset}/maintenance-schedules"), json!({"title": "x", "interval_days": 0}))
        .await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
}

#[tokio::test]
async fn bad_ids_cursors_limits_and_dates_are_400() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    for path in [
        "/v1/assets/not-a-uuid",
        "/v1/issues/123",
        "/v1/assets?cursor=zzz",
        "/v1/assets?limit=0",
        "/v1/assets?limit=100000",
        "/v1/maintenance-schedules/due?before=yesterday",
        "/v1/issues?status=closed",
    ] {
        let (s, body) = app.get(&t.key, path).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body["error"]["message"].as_str().is_some(), "{path}: {body}");
    }
}

#[tokio::test]
async fn oversize_body_is_413() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let big = "x".repeat(tenantry_core::web::MAX_JSON_BODY + 1);
    let (s, body) = app.post(&t.key, "/v1/assets", json!({"name": big, "tag": "t"})).await;
    assert_eq!((s, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
}

#[tokio::test]
async fn duplicate_tag_is_409_and_duplicate_slug_is_409() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    app.seed(&t.key, "DUP").await;
    let (s, body) = app.post(&t.key, "/v1/assets", json!({"name": "x", "tag": "DUP"})).await;
    assert_eq!((s, code(&body)), (StatusCode::CONFLICT, "duplicate_tag"));
    let (s, other) = app.post(&t.key, "/v1/assets", json!({"name": "y", "tag": "OTHER"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = app
        .call(
            &t.key,
            Method::PATCH,
            &format!("/v1/assets/{}", other["id"].as_str().unwrap()),
            Some(json!({"tag": "DUP"})),
        )
        .await;
    assert_eq!((s, code(&body)), (StatusCode::CONFLICT, "duplicate_tag"));

    let (s, body) = app
        .admin_call(Method::POST, "/v1/tenants", Some(json!({"slug": "acme", "name": "Again", "tier": "dedicated"})))
        .await;
    assert_eq!((s, code(&body)), (StatusCode::CONFLICT, "slug_taken"));
    // The failed attempt left no backend behind.
    let (_, backends) = app.admin_call(Method::GET, "/v1/backends", None).await;
    let live: Vec<_> = backends["backends"].as_array().unwrap().iter().filter(|b| b["kind"] != "template").collect();
    assert_eq!(live.len(), 1, "only the shared pool: {backends}");
}

#[tokio::test]
async fn bad_tenant_requests_are_refused_with_a_named_problem() {
    let app = spawn_app().await;
    let cases = [
        (json!({"slug": "Bad Slug", "name": "x", "tier": "shared"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (json!({"slug": "-x", "name": "x", "tier": "shared"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (json!({"slug": "ok-slug", "name": "x", "tier": "gold"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (json!({"slug": "ok-slug", "name": "", "tier": "shared"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"),
        (
            json!({"slug": "ok-slug", "name": "x", "tier": "shared", "plan": "pro"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"slug": "ok-slug", "name": "x", "tier": "shared", "region": "mars-1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "region_unavailable",
        ),
        (
            json!({"slug": "ok-slug", "name": "x", "tier": "dedicated", "region": "mars-1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "region_unavailable",
        ),
    ];
    for (body, status, expected) in cases {
        let (s, resp) = app.admin_call(Method::POST, "/v1/tenants", Some(body.clone())).await;
        assert_eq!((s, code(&resp)), (status, expected), "{body}");
    }
    let (_, list) = app.admin_call(Method::GET, "/v1/tenants", None).await;
    assert_eq!(list["tenants"].as_array().unwrap().len(), 0, "no half-made tenant remains");
}

#[tokio::test]
async fn unknown_routes_and_missing_keys_answer_in_json() {
    let app = spawn_app().await;
    let (s, body) = app.get("tnry_0000000000000000000000000000000000000000", "/v1/assets").await;
    assert_eq!((s, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let resp = app.http.get(format!("{}/v1/assets", app.app)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (s, body) = app.get("whatever", "/v1/nothing-here").await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, "no_route"));
}

#[tokio::test]
async fn a_nul_character_anywhere_is_refused_with_422_not_500() {
    let app = spawn_app().await;
    let t = app.create_tenant("nul-acme", "shared").await;
    let (asset, _, _) = app.seed(&t.key, "N-1").await;
    let refused = |s: StatusCode, answer: &Value, what: &str| {
        assert_eq!((s, code(answer)), (StatusCode::UNPROCESSABLE_ENTITY, "nul_character"), "{what}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("NUL"), "{answer}");
    };
    let app_cases = [
        ("/v1/assets".to_string(), json!({"name": "a\u{0}b", "tag": "N-2"})),
        ("/v1/assets".to_string(), json!({"name": "a", "tag": "N-3", "attributes": {"k": "v\u{0}"}})),
        ("/v1/assets".to_string(), json!({"name": "a", "tag": "N-4", "attributes": {"k\u{0}": 1}})),
        (format!("/v1/assets/{asset}/issues"), json!({"title": "broken\u{0}"})),
        (format!("/v1/assets/{asset}/maintenance-schedules"), json!({"title": "oil\u{0}", "interval_days": 7})),
    ];
    for (path, body) in app_cases {
        let (s, answer) = app.post(&t.key, &path, body.clone()).await;
        refused(s, &answer, &format!("{path} {body}"));
    }
    let (s, answer) = app.get(&t.key, "/v1/assets/by-tag/N%00-1").await;
    refused(s, &answer, "a NUL in an app path");

    let admin_cases = [
        (Method::POST, "/v1/tenants".to_string(), Some(json!({"slug": "nul-b", "name": "B\u{0}", "tier": "shared"}))),
        (Method::POST, format!("/v1/tenants/{}/api-keys", t.id), Some(json!({"name": "ci\u{0}"}))),
        (Method::PATCH, format!("/v1/tenants/{}/settings", t.id), Some(json!({"flags": {"beta\u{0}": true}}))),
        (Method::GET, "/v1/tenants/nul%00acme".to_string(), None),
        (Method::GET, "/v1/audit?actor=a%00".to_string(), None),
    ];
    for (method, path, body) in admin_cases {
        let (s, answer) = app.admin_call(method.clone(), &path, body.clone()).await;
        refused(s, &answer, &format!("{method} {path} {body:?}"));
    }
    let (_, list) = app.admin_call(Method::GET, "/v1/tenants", None).await;
    assert_eq!(list["tenants"].as_array().unwrap().len(), 1, "no tenant was made of a refused request");
    let form = app
        .http
        .post(format!("{}/console/login", app.admin))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=a%00b&csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNPROCESSABLE_ENTITY, "a NUL in a console form");
    // Every JSON media type the JSON extractor takes, not only application/json.
    for kind in ["text/json", "application/merge-patch+json", "application/json; charset=utf-8"] {
        let res = app
            .http
            .post(format!("{}/v1/assets", app.app))
            .bearer_auth(&t.key)
            .header("content-type", kind)
            .body(r#"{"name": "a\u0000b", "tag": "N-9"}"#)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let answer: Value = res.json().await.unwrap();
        refused(status, &answer, kind);
    }
}
