//! Staff (issue 25): the operator's own people signed in to the admin API by
//! the operator's identity provider (a real OIDC provider on loopback), each
//! route needing its staff role, the audit naming the verified person, and
//! the shared admin token as its own actor that can be switched off.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::json;

use tenantry_control_plane::staff::{StaffConfig, StaffRole};

fn staff_config(issuer: &str) -> StaffConfig {
    let role_map = BTreeMap::from([
        ("readers".to_string(), StaffRole::Viewer),
        ("sales".to_string(), StaffRole::SalesOps),
        ("ops".to_string(), StaffRole::Operator),
        ("root".to_string(), StaffRole::Admin),
    ]);
    StaffConfig {
        issuer: issuer.into(),
        audience: "tenantry-admin".into(),
        jwks_uri: None,
        role_claim: "groups".into(),
        role_map,
        client_id: Some("tenantry-console".into()),
        client_secret: None,
    }
}

/// Each staff role opens its own routes and no others (403 naming the role
/// needed); a person whose groups map to no role is refused everything;
/// forged, foreign and mis-addressed tokens are refused with 401; the audit
/// and the operations name the verified person; the OpenAPI says each
/// route's role; the admin token, switched off, signs nobody in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_in_with_the_operators_provider_and_hold_the_roles_their_groups_map() {
    let idp = tenantry::testkit::oidc_provider();
    let issuer = idp.issuer.clone();
    let app = crate::helpers::spawn_app_with(|s| s.control_plane.staff = Some(staff_config(&issuer))).await;
    let now = chrono::Utc::now().timestamp();
    let token = |sub: &str, groups: serde_json::Value| {
        let claims = json!({"sub": sub, "aud": "tenantry-admin", "exp": now + 3600, "groups": groups,
            "email": format!("{sub}@ops.example")});
        let idp = &idp;
        async move { idp.mint(claims, None).await }
    };
    let call = |token: String, method: Method, path: String, body: Option<serde_json::Value>| {
        let mut req = app.http.request(method, format!("{}{path}", app.admin)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (sam, olga, rita, vic, nobody) = (
        token("sam", json!(["sales"])).await,
        token("olga", json!(["ops", "marketing"])).await,
        token("rita", json!("root")).await,
        token("vic", json!(["readers"])).await,
        token("nobody", json!(["marketing"])).await,
    );

    // Sales-ops create a tenant and issue its key, and move nothing.
    let (s, created) = call(
        sam.clone(),
        Method::POST,
        "/v1/tenants".into(),
        Some(json!({"slug": "staff-acme", "name": "Acme", "tier": "shared"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let tenant = created["tenant"]["id"].as_str().unwrap().to_string();
    let (s, _) =
        call(sam.clone(), Method::POST, format!("/v1/tenants/{tenant}/api-keys"), Some(json!({"name": "k"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let target = uuid::Uuid::now_v7();
    let (s, e) = call(
        sam.clone(),
        Method::POST,
        format!("/v1/tenants/{tenant}/move"),
        Some(json!({"target_backend_id": target})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("`operator`"), "{e}");
    let (s, _) = call(sam.clone(), Method::DELETE, format!("/v1/tenants/{tenant}"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "sales-ops erase nothing");
    // An operator changes limits and asks for moves (here, to a backend that
    // does not exist: refused for that, not for the role), and creates no tenant.
    let (s, e) = call(
        olga.clone(),
        Method::POST,
        format!("/v1/tenants/{tenant}/move"),
        Some(json!({"target_backend_id": target})),
    )
    .await;
    assert!(s.is_client_error() && s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED, "{s} {e}");
    let (s, e) = call(
        olga.clone(),
        Method::PATCH,
        format!("/v1/tenants/{tenant}/settings"),
        Some(json!({"limits": {"requests_per_second": 50}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let (s, _) = call(olga.clone(), Method::POST, "/v1/tenants".into(), Some(json!({"slug": "x", "name": "x"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(olga.clone(), Method::GET, format!("/v1/tenants/{tenant}/export"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a tenant's data is for admins");
    // A viewer reads; a person of no staff group does nothing.
    let (s, _) = call(vic.clone(), Method::GET, "/v1/tenants".into(), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(vic.clone(), Method::POST, "/v1/tenants".into(), Some(json!({"slug": "y", "name": "y"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, e) = call(nobody.clone(), Method::GET, "/v1/tenants".into(), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("none"), "{e}");

    // Refused: 401 invalid_token.
    let other = tenantry::testkit::oidc_provider();
    for (why, t) in [
        (
            "HS256 keyed with the public key",
            idp.mint(
                json!({"sub": "m", "aud": "tenantry-admin", "exp": now + 60, "groups": "root"}),
                Some("HS256-public"),
            )
            .await,
        ),
        (
            "alg none",
            idp.mint(json!({"sub": "m", "aud": "tenantry-admin", "exp": now + 60, "groups": "root"}), Some("none"))
                .await,
        ),
        (
            "another audience",
            idp.mint(json!({"sub": "m", "aud": "tenantry", "exp": now + 60, "groups": "root"}), None).await,
        ),
        (
            "expired",
            idp.mint(json!({"sub": "m", "aud": "tenantry-admin", "exp": now - 3600, "groups": "root"}), None).await,
        ),
        (
            "another provider",
            other.mint(json!({"sub": "m", "aud": "tenantry-admin", "exp": now + 60, "groups": "root"}), None).await,
        ),
    ] {
        let (s, e) = call(t, Method::GET, "/v1/tenants".into(), None).await;
        assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")), "{why}: {e}");
    }

    // An admin erases; the audit names each verified person, never a typed name.
    let (s, op) = call(rita.clone(), Method::DELETE, format!("/v1/tenants/{tenant}"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let (_, audit) = call(vic.clone(), Method::GET, format!("/v1/audit?tenant={tenant}"), None).await;
    let actor_of = |action: &str| {
        audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == action).map(|e| e["actor"].clone())
    };
    assert_eq!(actor_of("tenant.create"), Some(json!(format!("sam@ops.example (sub sam at {})", idp.issuer))));
    let erase = actor_of("tenant.erase").or_else(|| actor_of("operation.enqueue"));
    assert!(
        audit.to_string().contains(&format!("rita@ops.example (sub rita at {})", idp.issuer)),
        "the erasure is the admin's: {erase:?} {audit}"
    );
    // The admin token is its own actor.
    let (s, _) = app.admin_call(Method::GET, "/v1/tenants", None).await;
    assert_eq!(s, StatusCode::OK);

    // The OpenAPI says each route's staff role.
    let spec: serde_json::Value =
        app.http.get(format!("{}/openapi.json", app.admin)).send().await.unwrap().json().await.unwrap();
    let description =
        |path: &str, method: &str| spec["paths"][path][method]["description"].as_str().unwrap_or("").to_string();
    assert!(
        description("/v1/tenants", "post").contains("Staff role: `sales_ops`"),
        "{}",
        description("/v1/tenants", "post")
    );
    assert!(description("/v1/tenants/{tenant}", "delete").contains("Staff role: `admin`"));
    assert!(description("/v1/tenants", "get").contains("Staff role: `viewer`"));
    // Every write route has its role written down (none closed by default).
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                let listed = tenantry_control_plane::staff::ROUTE_ROLES
                    .iter()
                    .any(|(m, p, _)| m.eq_ignore_ascii_case(method) && p == path);
                assert!(listed, "{method} {path} has no staff role in ROUTE_ROLES");
            }
        }
    }
}

/// With `admin_token_enabled = false` the admin token signs nobody in, on
/// the API or the console; staff still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_switched_off_signs_nobody_in() {
    let idp = tenantry::testkit::oidc_provider();
    let issuer = idp.issuer.clone();
    let app = crate::helpers::spawn_app_with(|s| {
        s.control_plane.staff = Some(staff_config(&issuer));
        s.control_plane.admin_token_enabled = false;
    })
    .await;
    let (s, e) = app.admin_call(Method::GET, "/v1/tenants", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("switched off"), "{e}");
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/console/login", app.admin))
        .form(&[("name", "bob"), ("token", app.token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error() && res.headers().get("set-cookie").is_none(), "{}", res.status());
    let now = chrono::Utc::now().timestamp();
    let rita =
        idp.mint(json!({"sub": "rita", "aud": "tenantry-admin", "exp": now + 600, "groups": "root"}), None).await;
    let res = app.http.get(format!("{}/v1/tenants", app.admin)).bearer_auth(rita).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
