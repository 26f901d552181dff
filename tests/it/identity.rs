//! People (issue 25): a tenant's identity providers as registry data, put,
//! listed, tested against a real OpenID Connect provider on loopback, and
//! removed; an issuer shared between tenants only by organisation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

/// Providers are put (201, then 200 replacing), listed, tested against the
/// provider itself (discovery and keys), refused when bad (422 naming the
/// field) or when their issuer already signs another tenant in (409), and
/// removed; each change is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_providers_are_put_listed_tested_and_removed_and_an_issuer_names_one_tenant() {
    let app = spawn_app().await;
    let acme = app.create_tenant("idp-acme", "shared").await;
    let globex = app.create_tenant("idp-globex", "shared").await;
    let idp = tenantry::testkit::oidc_provider();
    let path = |t: &str, name: &str| format!("/v1/tenants/{t}/identity-providers/{name}");
    let put = |t: String, name: &str, body: serde_json::Value| {
        let p = path(&t, name);
        let app = &app;
        async move { app.admin_call(Method::PUT, &p, Some(body)).await }
    };
    let body = json!({
        "issuer": idp.issuer, "audience": "tenantry", "role_claim": "roles",
        "role_map": {"field-staff": "technician", "office": "manager"}, "email_domains": ["Acme.example"]
    });
    let (s, created) = put(acme.id.clone(), "main", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["issuer"], idp.issuer);
    assert_eq!(created["role_map"]["field-staff"], "technician");
    assert_eq!(created["email_domains"], json!(["acme.example"]), "domains kept in lower case");
    let (s, replaced) = put(acme.id.clone(), "main", json!({"issuer": idp.issuer, "audience": "tenantry-app"})).await;
    assert_eq!((s, &replaced["audience"]), (StatusCode::OK, &json!("tenantry-app")), "{replaced}");
    let (s, list) = app
        .admin_call(
            Method::GET,
            &format!("/v1/tenants/{}/identity-providers", acme.tenant["slug"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["identity_providers"].as_array().unwrap().len(), 1, "{list}");

    // The test fetches discovery and keys from the provider.
    let (s, test) = app.admin_call(Method::POST, &format!("{}/test", path(&acme.id, "main")), None).await;
    assert_eq!(s, StatusCode::OK, "{test}");
    assert_eq!(test["ok"], true, "{test}");
    assert_eq!(test["jwks_uri"], format!("{}/jwks", idp.issuer));
    let algorithms: Vec<&str> =
        test["keys"].as_array().unwrap().iter().filter_map(|k| k["algorithm"].as_str()).collect();
    assert_eq!(algorithms, ["RS256", "ES256", "EdDSA"], "{test}");
    assert_eq!(idp.jwks_fetches().await, 1);
    idp.set_down(true).await;
    let (_, test) = app.admin_call(Method::POST, &format!("{}/test", path(&acme.id, "main")), None).await;
    assert_eq!(test["ok"], false, "{test}");
    assert!(test["problems"][0].as_str().unwrap().contains("503"), "{test}");
    idp.set_down(false).await;

    // Refused in words.
    for (bad, field) in [
        (json!({"issuer": "http://idp.example.com", "audience": "a"}), "https"),
        (json!({"issuer": idp.issuer, "audience": ""}), "audience"),
        (json!({"issuer": idp.issuer, "audience": "a", "org_claim": "org"}), "go together"),
        (json!({"issuer": idp.issuer, "audience": "a", "role_map": {"x": "admin"}}), "role_claim"),
        (json!({"issuer": idp.issuer, "audience": "a", "role_claim": "r", "role_map": {"x": "owner"}}), "owner"),
        (json!({"issuer": idp.issuer, "audience": "a", "extra": 1}), "extra"),
    ] {
        let (s, e) = put(acme.id.clone(), "bad", bad.clone()).await;
        assert!(s.is_client_error(), "{bad}: {s} {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(field), "{bad}: {e}");
    }
    let (s, e) = put(acme.id.clone(), "Bad Name", body.clone()).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_name")), "{e}");
    let (s, _) = put(uuid::Uuid::now_v7().to_string(), "main", body.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // One issuer, several tenants: only by organisation, a different one each.
    let (s, e) = put(globex.id.clone(), "main", json!({"issuer": idp.issuer, "audience": "tenantry"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("issuer_taken")), "{e}");
    let by_org =
        |org: &str| json!({"issuer": idp.issuer, "audience": "tenantry", "org_claim": "org_id", "org_value": org});
    let (s, e) = put(globex.id.clone(), "main", by_org("org_globex")).await;
    assert_eq!(s, StatusCode::CONFLICT, "acme's provider names the issuer without an organisation: {e}");
    let (s, _) = put(acme.id.clone(), "main", by_org("org_acme")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = put(globex.id.clone(), "main", by_org("org_globex")).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let (s, e) = put(globex.id.clone(), "second", by_org("org_acme")).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("issuer_taken")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("organisation `org_acme`"), "{e}");
    let (s, e) = put(globex.id.clone(), "second", by_org("org_globex_eu")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("this tenant's provider `main`"), "{e}");

    // The CLI lists and tests them.
    let cli = |args: Vec<String>| {
        let (admin, token) = (app.admin.clone(), app.token.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
                .args(["tenants", "idp"])
                .args(&args)
                .env("TENANTRY_ADMIN_URL", admin)
                .env("TENANTRY_ADMIN_TOKEN", token)
                .output()
                .expect("run the CLI")
        })
    };
    let out = cli(vec![globex.id.clone(), "list".into()]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("org_globex") && stdout.contains(&idp.issuer), "{stdout}");
    let out = cli(vec![globex.id.clone(), "test".into(), "main".into()]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("EdDSA") && stdout.trim_end().ends_with("ok"), "{stdout}");

    let (s, _) = app.admin_call(Method::DELETE, &path(&acme.id, "main"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.admin_call(Method::DELETE, &path(&acme.id, "main"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = app.admin_call(Method::GET, &format!("/v1/audit?tenant={}", acme.id), None).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["identity_provider.create", "identity_provider.update", "identity_provider.delete"] {
        assert!(actions.contains(&a), "{a}: {actions:?}");
    }
}

/// A token's claims: `sub`, `aud`, `exp` an hour on, and `extra`.
fn claims(aud: &str, extra: serde_json::Value) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    let mut c = json!({"sub": "u-1", "aud": aud, "exp": now + 3600, "iat": now, "email": "ann@acme.example"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Tenant users signed in by their own identity provider: tokens of RS256,
/// ES256 and EdDSA keys accepted, each forgery and bad claim refused with 401
/// `invalid_token` (and its `WWW-Authenticate`), roles per route, a key
/// rotation taken without a restart, a cross-tenant user choosing with
/// `X-Tenant` and refused a tenant its claims do not name, one issuer's
/// organisations kept apart, and a provider that does not answer costing only
/// its own tenant's sign-ins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_users_sign_in_with_their_providers_tokens_and_hold_the_roles_their_claims_map() {
    // Key sets fetched again for an unknown kid at most every 3 s (30 by default).
    let app = crate::helpers::spawn_app_with(|s| s.app.token_key_refetch_secs = 3).await;
    let acme = app.create_tenant("tok-acme", "shared").await;
    let globex = app.create_tenant("tok-globex", "shared").await;
    let initech = app.create_tenant("tok-initech", "shared").await;
    let hooli = app.create_tenant("tok-hooli", "shared").await;
    let (own, shared, silent) =
        (tenantry::testkit::oidc_provider(), tenantry::testkit::oidc_provider(), tenantry::testkit::oidc_provider());
    let put = |t: &str, body: serde_json::Value| {
        let p = format!("/v1/tenants/{t}/identity-providers/main");
        let app = &app;
        async move {
            let (s, e) = app.admin_call(Method::PUT, &p, Some(body)).await;
            assert_eq!(s, StatusCode::CREATED, "{e}");
        }
    };
    put(
        &acme.id,
        json!({"issuer": own.issuer, "audience": "tenantry", "role_claim": "roles",
        "role_map": {"office": "manager", "field": "technician", "boss": "admin"}}),
    )
    .await;
    for (t, org) in [(&globex.id, "g1"), (&initech.id, "i1")] {
        put(
            t,
            json!({"issuer": shared.issuer, "audience": "tenantry", "org_claim": "org_id", "org_value": org,
            "role_claim": "roles", "role_map": {"office": "manager"}}),
        )
        .await;
    }
    put(&hooli.id, json!({"issuer": silent.issuer, "audience": "tenantry"})).await;
    let call = |token: String, method: Method, path: &str, body: Option<serde_json::Value>, tenant: Option<&str>| {
        let mut req = app.http.request(method, format!("{}{path}", app.app)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(t) = tenant {
            req = req.header("X-Tenant", t);
        }
        async move {
            let r = req.send().await.unwrap();
            let www = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
            (r.status(), www, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };

    // Each key type signs a manager in.
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = own.mint(claims("tenantry", json!({"roles": ["office"]})), Some(alg)).await;
        let (s, _, me) = call(token, Method::GET, "/v1/me", None, None).await;
        assert_eq!(s, StatusCode::OK, "{alg}: {me}");
        assert_eq!((me["tenant"].as_str(), me["role"].as_str()), (Some("tok-acme"), Some("manager")), "{alg}");
        assert_eq!((me["subject"].as_str(), me["email"].as_str()), (Some("u-1"), Some("ann@acme.example")));
    }
    let discovered = own.discovery_fetches().await;
    let manager = own.mint(claims("tenantry", json!({"roles": ["office"]})), None).await;
    let (s, _, pump) =
        call(manager.clone(), Method::POST, "/v1/assets", Some(json!({"name": "Pump", "tag": "P-1"})), None).await;
    assert_eq!(s, StatusCode::CREATED, "{pump}");
    let pump_path = format!("/v1/assets/{}", pump["id"].as_str().unwrap());
    assert_eq!(own.discovery_fetches().await, discovered, "the key set's address is discovered once, not per request");

    // Refused: 401 invalid_token, with WWW-Authenticate.
    let now = chrono::Utc::now().timestamp();
    let refused = [
        ("alg none", own.mint(claims("tenantry", json!({})), Some("none")).await),
        ("HS256 keyed with the public key", own.mint(claims("tenantry", json!({})), Some("HS256-public")).await),
        ("wrong audience", own.mint(claims("someone-else", json!({})), None).await),
        ("expired", own.mint(claims("tenantry", json!({"exp": now - 3600})), None).await),
        ("not yet valid", own.mint(claims("tenantry", json!({"nbf": now + 3600})), None).await),
        ("unknown issuer", own.mint(claims("tenantry", json!({"iss": "http://127.0.0.1:9/evil"})), None).await),
        ("no subject", own.mint(json!({"aud": "tenantry", "exp": now + 60}), None).await),
        ("garbage", "a.b.c".to_string()),
    ];
    for (why, token) in refused {
        let (s, www, e) = call(token, Method::GET, "/v1/me", None, None).await;
        assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")), "{why}: {e}");
        assert_eq!(www.as_deref(), Some("Bearer error=\"invalid_token\""), "{why}");
    }
    let skewed = own.mint(claims("tenantry", json!({"exp": now - 30})), None).await;
    assert_eq!(call(skewed, Method::GET, "/v1/me", None, None).await.0, StatusCode::OK, "30 s of skew is taken");

    // Roles per route.
    let technician = own.mint(claims("tenantry", json!({"sub": "tech", "roles": "field"})), None).await;
    let viewer = own.mint(claims("tenantry", json!({"sub": "viewer"})), None).await;
    let (s, _, e) = call(technician.clone(), Method::DELETE, &pump_path, None, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("`manager`"), "{e}");
    let (s, _, _) =
        call(technician.clone(), Method::PATCH, &pump_path, Some(json!({"status": "in_repair"})), None).await;
    assert_eq!(s, StatusCode::OK, "a technician changes an asset's status");
    let (s, _, _) = call(technician.clone(), Method::PATCH, &pump_path, Some(json!({"name": "Renamed"})), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "but not its name");
    let (s, _, _) =
        call(technician.clone(), Method::POST, &format!("{pump_path}/issues"), Some(json!({"title": "Leak"})), None)
            .await;
    assert_eq!(s, StatusCode::CREATED, "a technician files an issue");
    let (s, _, _) =
        call(viewer.clone(), Method::POST, "/v1/assets", Some(json!({"name": "X", "tag": "X-1"})), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot write");
    assert_eq!(call(viewer, Method::GET, &pump_path, None, None).await.0, StatusCode::OK, "but reads");

    // A key rotation: the new key's tokens are taken after one refetch, the
    // withdrawn key's no more.
    // Until the refetch interval since the last fetch has passed, the new
    // key's tokens are refused without a fetch; then one fetch takes it.
    let fetches = own.jwks_fetches().await;
    let new_kid = own.rotate("RSA").await;
    let rotated = own.mint(claims("tenantry", json!({"roles": ["office"]})), None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, _, e) = call(rotated.clone(), Method::GET, "/v1/me", None, None).await;
        if s == StatusCode::OK {
            break;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
        assert_eq!(own.jwks_fetches().await, fetches, "refused within the interval without a fetch");
        assert!(std::time::Instant::now() < deadline, "the key signed by {new_kid} is never taken");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(own.jwks_fetches().await, fetches + 1, "one refetch for the unknown kid");
    let (s, _, _) = call(manager.clone(), Method::GET, "/v1/me", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the withdrawn key signs nobody in");
    assert_eq!(own.jwks_fetches().await, fetches + 1, "and costs no second fetch within the interval");

    // One issuer, two tenants by organisation; a user of both picks one.
    let of_globex = shared.mint(claims("tenantry", json!({"org_id": "g1", "roles": "office"})), None).await;
    let (s, _, me) = call(of_globex.clone(), Method::GET, "/v1/me", None, None).await;
    assert_eq!((s, me["tenant"].as_str()), (StatusCode::OK, Some("tok-globex")), "{me}");
    let (s, _, e) = call(of_globex.clone(), Method::GET, "/v1/me", None, Some("tok-initech")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another organisation's tenant: {e}");
    let (s, _, e) = call(of_globex.clone(), Method::GET, &pump_path, None, Some("tok-acme")).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")), "{e}");
    let (s, _, e) = call(of_globex, Method::GET, &pump_path, None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "acme's asset is not globex's: {e}");
    let both = shared.mint(claims("tenantry", json!({"org_id": ["g1", "i1"]})), None).await;
    let (s, _, e) = call(both.clone(), Method::GET, "/v1/me", None, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("tenant_required")), "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("tok-globex") && message.contains("tok-initech"), "{message}");
    for t in ["tok-globex", "tok-initech"] {
        let (s, _, me) = call(both.clone(), Method::GET, "/v1/me", None, Some(t)).await;
        assert_eq!((s, me["tenant"].as_str()), (StatusCode::OK, Some(t)), "{me}");
    }
    let (s, _, _) = call(both, Method::GET, "/v1/me", None, Some("tok-hooli")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a tenant of another issuer");

    // A provider that does not answer: only its own tenant's sign-ins fail.
    silent.set_down(true).await;
    let token = silent.mint(claims("tenantry", json!({})), None).await;
    let (s, _, e) = call(token, Method::GET, "/v1/me", None, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("identity_provider_unavailable")),
        "{e}"
    );
    let again = own.mint(claims("tenantry", json!({"roles": ["office"]})), None).await;
    assert_eq!(call(again, Method::GET, "/v1/me", None, None).await.0, StatusCode::OK, "others sign in");
    // API keys keep working, as admins; a key issued with a role holds only it.
    let (s, me) = app.get(&acme.key, "/v1/me").await;
    assert_eq!((s, me["role"].as_str(), me["subject"].as_str()), (StatusCode::OK, Some("admin"), Some("api-key")));
    let keys = format!("/v1/tenants/{}/api-keys", acme.id);
    let (s, issued) =
        app.admin_call(Method::POST, &keys, Some(json!({"name": "wall display", "role": "viewer"}))).await;
    assert_eq!((s, issued["role"].as_str()), (StatusCode::CREATED, Some("viewer")), "{issued}");
    let display = issued["key"].as_str().unwrap();
    assert_eq!(app.get(display, "/v1/me").await.1["role"], "viewer");
    assert_eq!(app.get(display, &pump_path).await.0, StatusCode::OK);
    let (s, e) = app.post(display, "/v1/assets", json!({"name": "Y", "tag": "Y-1"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{e}");
    let (s, _) = app.admin_call(Method::POST, &keys, Some(json!({"role": "owner"}))).await;
    assert!(s.is_client_error(), "an unknown role is refused: {s}");
}

/// The people who sign in: a consultant whose `tenants` claim names two
/// tenants picks one per request; each sign-in is appended by the app and
/// folded by the control plane into the tenant's users (`GET /v1/users`,
/// admins only, each tenant its own); one person erased on the admin API
/// (the audit naming only their id) and not brought back by a sign-in seen
/// before the erasure; a tenant's erasure erasing its users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_become_the_tenants_users_and_a_person_is_erased() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.app.usage_flush_ms = 100;
        s.control_plane.usage.rollup_interval_ms = 100;
    })
    .await;
    let acme = app.create_tenant("ppl-acme", "shared").await;
    let globex = app.create_tenant("ppl-globex", "shared").await;
    let initech = app.create_tenant("ppl-initech", "shared").await;
    let idp = tenantry::testkit::oidc_provider();
    let put = |t: &str, body: serde_json::Value| {
        let p = format!("/v1/tenants/{t}/identity-providers/main");
        let app = &app;
        async move { app.admin_call(Method::PUT, &p, Some(body)).await }
    };
    let by_tenants = json!({"issuer": idp.issuer, "audience": "tenantry", "tenants_claim": "tenants",
        "role_claim": "roles", "role_map": {"boss": "admin"}});
    for t in [&acme.id, &globex.id] {
        let (s, e) = put(t, by_tenants.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
    }
    let (s, e) = put(&initech.id, json!({"issuer": idp.issuer, "audience": "tenantry"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "an issuer shared by `tenants` takes no tenant without one: {e}");
    let (s, e) = put(
        &initech.id,
        json!({"issuer": idp.issuer, "audience": "tenantry", "tenants_claim": "tenants", "org_claim": "o",
        "org_value": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, e) = put(
        &initech.id,
        json!({"issuer": idp.issuer, "audience": "tenantry", "org_claim": "org_id",
        "org_value": "i1"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "an organisation beside them: {e}");
    let call = |token: &str, path: &str, tenant: Option<&str>| {
        let mut req = app.http.get(format!("{}{path}", app.app)).bearer_auth(token);
        if let Some(t) = tenant {
            req = req.header("X-Tenant", t);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };

    // A consultant of acme and globex.
    let consultant = idp
        .mint(
            claims(
                "tenantry",
                json!({"sub": "consultant", "email": "cy@consult.example", "name": "Cy",
                "tenants": ["ppl-acme", "ppl-globex"]}),
            ),
            None,
        )
        .await;
    let (s, e) = call(&consultant, "/v1/me", None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("tenant_required")), "{e}");
    for t in ["ppl-acme", "ppl-globex"] {
        let (s, me) = call(&consultant, "/v1/me", Some(t)).await;
        assert_eq!((s, me["tenant"].as_str(), me["role"].as_str()), (StatusCode::OK, Some(t), Some("viewer")));
    }
    let (s, _) = call(&consultant, "/v1/me", Some("ppl-initech")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a tenant the claim does not name");
    let boss = idp
        .mint(claims("tenantry", json!({"sub": "boss", "name": "Ann", "tenants": ["ppl-acme"], "roles": "boss"})), None)
        .await;
    let (s, me) = call(&boss, "/v1/me", None).await;
    assert_eq!((s, me["tenant"].as_str(), me["role"].as_str()), (StatusCode::OK, Some("ppl-acme"), Some("admin")));
    let (s, e) = call(&consultant, "/v1/users", Some("ppl-acme")).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "a viewer: {e}");

    // Their sign-ins become acme's users, seen by its admin.
    let users_of = |token: String, tenant: &'static str| {
        let call = &call;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let (s, list) = call(&token, "/v1/users", Some(tenant)).await;
                assert_eq!(s, StatusCode::OK, "{list}");
                let subjects: Vec<String> = list["users"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u["subject"].as_str().unwrap().to_string())
                    .collect();
                if subjects.len() >= 2 || std::time::Instant::now() > deadline {
                    return (subjects, list);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let (mut subjects, list) = users_of(boss.clone(), "ppl-acme").await;
    subjects.sort();
    assert_eq!(subjects, ["boss", "consultant"], "{list}");
    let cy = list["users"].as_array().unwrap().iter().find(|u| u["subject"] == "consultant").unwrap().clone();
    assert_eq!(
        (cy["email"].as_str(), cy["name"].as_str(), cy["role"].as_str()),
        (Some("cy@consult.example"), Some("Cy"), Some("viewer"))
    );
    assert!(cy["first_seen"].as_str() <= cy["last_seen"].as_str(), "{cy}");
    // Globex's users are its own: the consultant, not acme's boss.
    let globex_admin =
        idp.mint(claims("tenantry", json!({"sub": "g-boss", "tenants": ["ppl-globex"], "roles": "boss"})), None).await;
    let (mut subjects, list) = users_of(globex_admin, "ppl-globex").await;
    subjects.sort();
    assert_eq!(subjects, ["consultant", "g-boss"], "{list}");
    let globex_cy = list["users"].as_array().unwrap().iter().find(|u| u["subject"] == "consultant").unwrap().clone();
    assert_ne!(globex_cy["id"], cy["id"], "a person has an id per tenant");

    // The admin API lists them and erases one; the audit names only the id.
    let (s, listed) = app.admin_call(Method::GET, &format!("/v1/tenants/{}/users?limit=1", acme.id), None).await;
    assert_eq!((s, listed["users"].as_array().unwrap().len()), (StatusCode::OK, 1), "{listed}");
    assert!(listed["next"].is_string(), "a full page says where the next starts: {listed}");
    let (s, e) = app.admin_call(Method::GET, &format!("/v1/tenants/{}/users?limit=x", acme.id), None).await;
    assert!(s.is_client_error(), "{e}");
    let (admin, token) = (app.admin.clone(), app.token.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args(["tenants", "users", "ppl-acme", "list"])
            .env("TENANTRY_ADMIN_URL", admin)
            .env("TENANTRY_ADMIN_TOKEN", token)
            .output()
            .expect("run the CLI")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("cy@consult.example") && stdout.lines().count() == 2, "{stdout}");
    let cy_path = |t: &str, id: &serde_json::Value| format!("/v1/tenants/{t}/users/{}", id.as_str().unwrap());
    let (s, _) = app.admin_call(Method::DELETE, &cy_path(&acme.id, &globex_cy["id"]), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "globex's person is not erased through acme");
    let (s, _) = app.admin_call(Method::DELETE, &cy_path(&acme.id, &cy["id"]), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.admin_call(Method::DELETE, &cy_path(&acme.id, &cy["id"]), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = app.admin_call(Method::GET, &format!("/v1/audit?tenant={}", acme.id), None).await;
    let erased = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == "user.erase").unwrap();
    assert_eq!(erased["details"]["user"], cy["id"], "{erased}");
    assert!(!audit.to_string().contains("cy@consult.example") && !audit.to_string().contains("\"consultant\""));
    // A sign-in seen before the erasure and folded after it does not bring
    // them back; a later one does.
    let registry = crate::helpers::connect(&app.cp.config().registry_database, false);
    use sea_orm::ConnectionTrait as _;
    registry
        .execute_unprepared(&format!(
            "INSERT INTO sign_in_samples (tenant_id, issuer, subject, email, role, first_at, last_at) \
             VALUES ('{}', '{}', 'consultant', 'cy@consult.example', 'viewer', now() - interval '1 minute', \
             now() - interval '1 second')",
            acme.id, idp.issuer
        ))
        .await
        .unwrap();
    app.cp.fold_sign_ins().await.unwrap();
    let (_, list) = call(&boss, "/v1/users", None).await;
    assert_eq!(list["users"].as_array().unwrap().len(), 1, "only the boss: {list}");
    let app_role = crate::helpers::connect(&app.cp.config().registry_database, true);
    for forbidden in ["SELECT count(*) FROM sign_in_samples", "DELETE FROM tenant_users", "SELECT * FROM user_erasures"]
    {
        assert!(app_role.execute_unprepared(forbidden).await.is_err(), "the app role may not: {forbidden}");
    }

    // A tenant's erasure erases its users.
    let (s, op) = app.admin_call(Method::DELETE, &format!("/v1/tenants/{}", globex.id), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(app.wait_operation(op["id"].as_str().unwrap()).await["state"], "succeeded");
    let left = crate::helpers::scalar(
        &registry,
        &format!("SELECT count(*) FROM tenant_users WHERE tenant_id = '{}'", globex.id),
    )
    .await;
    assert_eq!(left, 0, "the erased tenant's users are gone");
}
