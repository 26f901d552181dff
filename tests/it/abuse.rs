//! What a client can make the server keep or do by sending junk: metric
//! series, registry lookups. Each is bounded whatever is sent.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

/// Series (sample lines) in a Prometheus text.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count()
}

#[tokio::test]
async fn a_thousand_made_up_methods_add_one_method_label_on_each_listener() {
    let app = spawn_app().await;
    for base in [app.app.clone(), app.admin.clone()] {
        // Every series a first odd method can add: its `other` label.
        let warm = Method::from_bytes(b"WARMUP").unwrap();
        app.http.request(warm, format!("{base}/healthz")).send().await.unwrap();
        let before = series(&app.metrics_text(&base).await);
        for i in 0..1000 {
            let method = Method::from_bytes(format!("X{i:04}").as_bytes()).unwrap();
            let resp = app.http.request(method, format!("{base}/healthz")).send().await.unwrap();
            assert!(resp.status().is_client_error(), "{}", resp.status());
        }
        let text = app.metrics_text(&base).await;
        // The scrape itself adds at most its own GET series.
        let after = series(&text);
        assert!(after <= before + 2 * 16, "{base}: {before} series before, {after} after");
        assert!(!text.contains("X0999"), "a made-up method never becomes a label");
        assert!(text.contains("method=\"other\""), "made-up methods are counted as other");
    }
}

#[tokio::test]
async fn the_admin_listeners_metrics_need_the_admin_token() {
    let app = spawn_app().await;
    let resp = app.http.get(format!("{}/metrics", app.admin)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app.http.get(format!("{}/metrics", app.admin)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(app.metrics_text(&app.admin).await.contains("tenantry_admin_http_requests_total"));
}

#[tokio::test]
async fn a_flood_of_one_forged_key_costs_one_registry_lookup_and_real_keys_keep_working() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    assert_eq!(app.get(&t.key, "/v1/tenant").await.0, StatusCode::OK);
    let forged: Vec<String> = (0..5).map(|i| format!("tnry_{:040x}", i + 1)).collect();
    let before = app.resolver.cache_stats().key_misses;
    let mut flood = Vec::new();
    for worker in 0..8 {
        let (http, url, forged) = (app.http.clone(), format!("{}/v1/tenant", app.app), forged.clone());
        flood.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..50 {
                let key = &forged[(worker + i) % forged.len()];
                statuses.push(http.get(&url).bearer_auth(key).send().await.unwrap().status());
            }
            statuses
        }));
    }
    // The real tenant, meanwhile: never a 5xx.
    for _ in 0..50 {
        assert_eq!(app.get(&t.key, "/v1/tenant").await.0, StatusCode::OK);
    }
    for task in flood {
        for status in task.await.unwrap() {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    let lookups = app.resolver.cache_stats().key_misses - before;
    // Each forged key once (two requests for one may race to its first lookup).
    assert!((5..=5 * 8).contains(&lookups), "{lookups} registry lookups for 400 requests with 5 forged keys");
}

/// A JWT-shaped bearer naming `issuer`, signed by nobody.
fn made_up_token(issuer: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = b64(serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}));
    let claims = b64(serde_json::json!({"iss": issuer, "sub": "mallory", "aud": "tenantry", "exp": 4_000_000_000u64}));
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

/// Tokens of made-up issuers: each issuer costs at most one registry look-up
/// (then it is known unknown), every one answers 401 (or 503 `busy` while
/// look-ups queue), never a 5xx of another kind, and a real tenant's
/// requests keep working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tokens_from_made_up_issuers_costs_one_lookup_per_issuer() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let before = app.resolver.cache_stats().issuer_misses;
    let issuers: Vec<String> = (0..20).map(|i| format!("https://evil-{i}.example")).collect();
    let mut flood = Vec::new();
    for worker in 0..8 {
        let (http, url, issuers) = (app.http.clone(), format!("{}/v1/tenant", app.app), issuers.clone());
        flood.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..50 {
                let token = made_up_token(&issuers[(worker + i) % issuers.len()]);
                statuses.push(http.get(&url).bearer_auth(token).send().await.unwrap().status());
            }
            statuses
        }));
    }
    for _ in 0..50 {
        assert_eq!(app.get(&t.key, "/v1/tenant").await.0, StatusCode::OK);
    }
    for task in flood {
        for status in task.await.unwrap() {
            assert!(matches!(status, StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE), "{status}");
        }
    }
    let lookups = app.resolver.cache_stats().issuer_misses - before;
    assert!((20..=20 * 8).contains(&lookups), "{lookups} registry look-ups for 400 tokens of 20 made-up issuers");
    let again = app.resolver.cache_stats().issuer_misses;
    assert_eq!(
        app.http
            .get(format!("{}/v1/tenant", app.app))
            .bearer_auth(made_up_token(&issuers[0]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.resolver.cache_stats().issuer_misses, again, "a known-unknown issuer costs no look-up");
}

async fn sign_in(http: &reqwest::Client, admin: &str, token: &str, name: &str) -> reqwest::Response {
    http.post(format!("{admin}/console/login"))
        .form(&[("name", name), ("token", token), ("next", "/console")])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_sign_in_is_counted_not_audited_and_one_address_gets_ten_a_minute() {
    let app = spawn_app().await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for i in 0..9 {
        let res = sign_in(&http, &app.admin, "guess-guess-guess-guess-guess-guess", &format!("mallory{i}")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.metric(&app.admin, "tenantry_admin_console_sign_ins_refused_total").await, 9.0);
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?actor=console:mallory0", None).await;
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(0), "no unverified name in the audit log: {audit}");
    // The tenth attempt (the right token) still gets in; the eleventh, right or not, waits.
    assert_eq!(sign_in(&http, &app.admin, &app.token, "alice").await.status(), StatusCode::SEE_OTHER);
    let res = sign_in(&http, &app.admin, &app.token, "alice").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.text().await.unwrap().contains("too many sign-in attempts"));
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?actor=admin-token%20(console)", None).await;
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(1), "the verified sign-in is: {audit}");
}

#[tokio::test]
async fn a_console_session_ends_when_the_admin_token_changes_and_when_idle() {
    let app = spawn_app().await;
    let (http, cookie) = crate::console::http_session(&app).await;
    let page = async |admin: &str| {
        http.get(format!("{admin}/console/tenants")).header("cookie", &cookie).send().await.unwrap().status()
    };
    assert_eq!(page(&app.admin).await, StatusCode::OK);
    // Another control plane on the same registry whose token has changed.
    let new_token = "rotated-rotated-rotated-rotated-rotated";
    let (_, rotated) = app.another_stack(|s| s.control_plane.admin_token = new_token.to_string().into()).await;
    assert_eq!(page(&rotated).await, StatusCode::SEE_OTHER, "signed in with the old token: out");
    assert_eq!(page(&app.admin).await, StatusCode::OK, "still the token here");
    // Idle past the limit (30 minutes by default).
    use sea_orm::ConnectionTrait;
    connect(&app.cp.config().registry_database, false)
        .execute_unprepared("UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes'")
        .await
        .unwrap();
    assert_eq!(page(&app.admin).await, StatusCode::SEE_OTHER, "idle: out");
}

#[tokio::test]
async fn the_session_cookie_is_secure_unless_turned_off_for_plain_http() {
    let app = spawn_app_with(|s| s.control_plane.console_secure_cookie = true).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = sign_in(&http, &app.admin, &app.token, "carol").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("Secure"), "{cookie}");
}
