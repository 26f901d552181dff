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
