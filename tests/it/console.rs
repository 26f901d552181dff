//! The admin console, in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (both installed by scripts/test), against the real
//! server. Set `TENANTRY_SCREENSHOTS=1` to refresh the screenshots in
//! docs/console/.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A fresh headless Chromium (its own profile folder) on the process's chromedriver.
async fn browser() -> Client {
    let profile = std::env::temp_dir().join(format!("tenantry-chromium-{}", uuid::Uuid::new_v4()));
    let binary = std::env::var("TENANTRY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let driver = tokio::task::spawn_blocking(tenantry::testkit::chromedriver).await.expect("chromedriver");
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session");
    // `find` waits up to 5 s for an element of a page still loading.
    let wait = fantoccini::wd::TimeoutConfiguration::new(None, None, Some(Duration::from_secs(5)));
    c.update_timeouts(wait).await.expect("timeouts");
    c
}

/// Saves the page as docs/console/<name>.png when asked to.
async fn screenshot(c: &Client, name: &str) {
    if std::env::var_os("TENANTRY_SCREENSHOTS").is_none() {
        return;
    }
    let png = c.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).expect("docs/console");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.expect("text")
}

async fn fill(c: &Client, css: &str, value: &str) {
    let el = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    el.clear().await.expect("clear");
    el.send_keys(value).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.expect("click");
}

/// Waits until the operation page's live state reads `state`.
async fn wait_state(c: &Client, state: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = text(c, "#op-state").await;
        if now == state || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (a navigation may still be under way) until the page is at `path`
/// (or under it, when `path` ends with `/`).
async fn wait_path(c: &Client, path: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let url = c.current_url().await.expect("url");
        if url.path() == path || (path.ends_with('/') && url.path().starts_with(path)) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let page = c.source().await.unwrap_or_default();
            panic!("still at {url}, not {path}: {page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs in from a signed-out visit to `path`; lands back on `path`.
async fn sign_in(c: &Client, app: &TestApp, path: &str) {
    c.goto(&format!("{}{path}", app.admin)).await.expect("goto");
    let url = c.current_url().await.expect("url");
    assert_eq!(url.path(), "/console/login", "signed out: sent to sign-in");
    fill(c, "#name", "alice").await;
    fill(c, "#token", &app.token).await;
    click(c, "form button[type=submit]").await;
    wait_path(c, path.split('?').next().unwrap()).await;
}

#[tokio::test]
async fn sales_ops_creates_a_tenant_and_promotes_it_after_the_dry_run() {
    // Usage measured within a second, so the list shows figures.
    let app = spawn_app_with(|s| {
        s.app.usage_flush_ms = 100;
        s.control_plane.usage.rollup_interval_ms = 100;
        s.control_plane.usage.storage_interval_secs = 1;
    })
    .await;
    for (slug, tier) in [("northwind", "shared"), ("initech", "dedicated")] {
        let t = app.create_tenant(slug, tier).await;
        app.seed(&t.key, &format!("{slug}-1")).await;
    }
    let c = browser().await;
    sign_in(&c, &app, "/console/tenants").await;
    assert!(text(&c, "header").await.contains("admin-token (console)"), "the signed-in actor is shown");

    // Create a tenant with the form.
    click(&c, "a[href='/console/tenants/new']").await;
    fill(&c, "#slug", "acme-console").await;
    fill(&c, "#name", "Acme from the console").await;
    click(&c, "form button.primary").await;
    wait_path(&c, "/console/tenants/acme-console").await;
    assert!(text(&c, ".notice").await.contains("Tenant created"));
    let created = app.cp.tenant("acme-console").await.expect("created in the registry");
    assert_eq!(created.tier, tenantry_core::Tier::Shared);

    // The list shows usage figures once the seeds' requests are rolled up.
    let measured = |u: &serde_json::Value| {
        u["tenants"].as_array().is_some_and(|ts| ts.iter().filter(|t| t["requests"].as_i64() > Some(0)).count() >= 2)
    };
    let usage = app.admin_until("/v1/usage?window=24h", measured).await;
    assert!(measured(&usage), "both seeded tenants' requests are rolled up: {usage}");
    c.goto(&format!("{}/console/tenants", app.admin)).await.unwrap();
    let list = text(&c, "table").await;
    for slug in ["acme-console", "northwind", "initech"] {
        assert!(list.contains(slug), "{slug} listed: {list}");
    }
    screenshot(&c, "tenants").await;
    // Filters narrow the list.
    c.goto(&format!("{}/console/tenants?tier=dedicated", app.admin)).await.unwrap();
    let list = text(&c, "table tbody").await;
    assert!(list.contains("initech") && !list.contains("northwind"), "{list}");

    // Promote: the dry run first, then the confirmation.
    c.goto(&format!("{}/console/tenants/acme-console", app.admin)).await.unwrap();
    screenshot(&c, "tenant").await;
    click(&c, "a[href='/console/tenants/acme-console/promote']").await;
    wait_path(&c, "/console/tenants/acme-console/promote").await;
    let plan = text(&c, "main").await;
    assert!(plan.contains("Dry run") && plan.contains("Preflight checks"), "{plan}");
    assert!(!plan.contains('✗'), "every check passes: {plan}");
    screenshot(&c, "promote").await;
    click(&c, "#confirm").await;
    wait_path(&c, "/console/operations/").await;
    assert_eq!(wait_state(&c, "succeeded").await, "succeeded", "the live page follows the operation");
    let pause = text(&c, "#op-pause").await;
    assert!(pause.ends_with(" ms"), "the measured pause is shown: {pause}");
    screenshot(&c, "operation").await;

    click(&c, "h1 a").await;
    wait_path(&c, "/console/tenants/acme-console").await;
    assert_eq!(text(&c, ".titlebar .badge.strong").await, "dedicated", "the tier changed");
    let t = app.cp.tenant("acme-console").await.unwrap();
    assert_eq!(t.tier, tenantry_core::Tier::Dedicated);
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?actor=admin-token%20(console)", None).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"tenant.create") && actions.contains(&"operation.create"), "{actions:?}");

    c.goto(&format!("{}/console/backends", app.admin)).await.unwrap();
    assert!(text(&c, "table").await.contains(&app.pool_name));
    screenshot(&c, "backends").await;
    c.goto(&format!("{}/console/audit", app.admin)).await.unwrap();
    assert!(text(&c, "table").await.contains("admin-token (console)"));
    screenshot(&c, "audit").await;
    c.close().await.unwrap();
}

#[tokio::test]
async fn an_admin_edits_a_limit_revokes_a_key_and_erases_with_the_typed_slug() {
    let app = spawn_app().await;
    let t = app.create_tenant("globex-console", "shared").await;
    app.seed(&t.key, "G-1").await;
    let c = browser().await;
    sign_in(&c, &app, "/console/tenants/globex-console").await;

    // A limit.
    fill(&c, "#requests_per_second", "7").await;
    click(&c, "form[action$='/settings'] button[type=submit]").await;
    assert!(text(&c, ".notice").await.contains("saved"));
    let (_, settings) = app.admin_call(Method::GET, "/v1/tenants/globex-console/settings", None).await;
    assert_eq!(settings["limits"]["requests_per_second"], 7, "{settings}");
    assert_eq!(settings["settings"]["limits"]["burst"], Value::Null, "empty fields keep the tier default");
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?action=tenant.settings", None).await;
    assert_eq!(audit["entries"][0]["actor"], "admin-token (console)");

    // A key: shown once, works, then revoked.
    fill(&c, "#key-name", "ci").await;
    click(&c, "form[action$='/keys'] button[type=submit]").await;
    wait_path(&c, "/console/tenants/globex-console/keys").await;
    let key = c.find(Locator::Css("#new-key")).await.unwrap().prop("value").await.unwrap().expect("the key");
    assert_eq!(app.get(&key, "/v1/assets").await.0, StatusCode::OK, "the new key works");
    c.goto(&format!("{}/console/tenants/globex-console", app.admin)).await.unwrap();
    assert!(c.find(Locator::Css("#new-key")).await.is_err(), "a key is shown once only");
    let row = c.find(Locator::XPath("//tr[td[normalize-space()='ci']]")).await.unwrap();
    assert!(row.text().await.unwrap().contains(&key[..11]), "listed by its prefix, never in full");
    row.find(Locator::Css("button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".notice").await.contains("revoked"));
    let status = app.get_until(&key, "/v1/assets", StatusCode::UNAUTHORIZED).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked key is refused");
    assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK, "the other key still works");

    // Erase: the button stays disabled until the slug is typed exactly.
    c.goto(&format!("{}/console/tenants/globex-console/erase", app.admin)).await.unwrap();
    let button = c.find(Locator::Css("#erase")).await.unwrap();
    assert!(!button.is_enabled().await.unwrap(), "disabled before typing");
    fill(&c, "#confirm", "globex").await;
    assert!(!button.is_enabled().await.unwrap(), "disabled for a wrong slug");
    fill(&c, "#confirm", "globex-console").await;
    assert!(button.is_enabled().await.unwrap(), "enabled for the exact slug");
    button.click().await.unwrap();
    wait_path(&c, "/console/operations/").await;
    assert_eq!(wait_state(&c, "succeeded").await, "succeeded");
    assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::NOT_FOUND, "the tenant is gone");
    let gone = app.cp.tenant("globex-console").await.unwrap();
    assert_eq!(gone.status, tenantry_core::TenantStatus::Erased);
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_change_without_the_sessions_csrf_token_is_refused() {
    let app = spawn_app().await;
    app.create_tenant("csrf-target", "shared").await;
    let c = browser().await;
    sign_in(&c, &app, "/console/tenants/csrf-target").await;
    // A forged form: right fields, wrong token.
    c.execute("document.querySelector(\"form[action$='/settings'] input[name=csrf]\").value = 'forged';", vec![])
        .await
        .unwrap();
    fill(&c, "#requests_per_second", "1").await;
    click(&c, "form[action$='/settings'] button[type=submit]").await;
    wait_path(&c, "/console/tenants/csrf-target/settings").await;
    assert!(text(&c, "main").await.contains("did not come from the console"), "refused with a plain message");
    let (_, settings) = app.admin_call(Method::GET, "/v1/tenants/csrf-target/settings", None).await;
    assert_eq!(settings["settings"], json!({}), "nothing changed: {settings}");
    c.close().await.unwrap();
}

/// The console's session cookie, signed in over plain HTTP (no browser).
pub(crate) async fn http_session(app: &TestApp) -> (reqwest::Client, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = http
        .post(format!("{}/console/login", app.admin))
        .form(&[("name", "bob"), ("token", app.token.as_str()), ("next", "/console/audit")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/console/audit");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: not Secure");
    (http, cookie.split(';').next().unwrap().to_string())
}

/// The Tenants list pages through the whole registry in slug order, and its
/// search and filters count what they match.
#[tokio::test]
async fn the_tenants_list_pages_searches_and_filters_a_large_registry() {
    let app = spawn_app().await;
    use sea_orm::ConnectionTrait;
    let registry = crate::helpers::connect(&app.cp.config().registry_database, false);
    registry
        .execute_unprepared(
            "INSERT INTO tenants (id, slug, name, tier, status, region) \
             SELECT gen_random_uuid(), 'many-' || lpad(i::text, 3, '0'), 'Many ' || i, \
                    CASE WHEN i % 10 = 0 THEN 'dedicated' ELSE 'shared' END, 'active', 'local' \
             FROM generate_series(0, 119) i",
        )
        .await
        .unwrap();
    let (http, cookie) = http_session(&app).await;
    let page = async |path: &str| {
        let res = http.get(format!("{}{path}", app.admin)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        res.text().await.unwrap()
    };
    let slugs = |html: &str| -> Vec<String> {
        html.split("href=\"/console/tenants/many-")
            .skip(1)
            .map(|rest| format!("many-{}", &rest[..3]))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let first = page("/console/tenants").await;
    assert!(first.contains("120 tenants · page 1 of 3"), "{first}");
    let want: Vec<String> = (0..50).map(|i| format!("many-{i:03}")).collect();
    assert_eq!(slugs(&first), want);
    let last = page("/console/tenants?page=2").await;
    assert_eq!(slugs(&last), (100..120).map(|i| format!("many-{i:03}")).collect::<Vec<_>>());
    assert!(!last.contains("rel=\"next\""), "no page after the last");
    let found = page("/console/tenants?q=many-07").await;
    assert_eq!(slugs(&found), (70..80).map(|i| format!("many-{i:03}")).collect::<Vec<_>>());
    assert!(found.contains(">10 tenants<"), "{found}");
    let dedicated = page("/console/tenants?tier=dedicated").await;
    assert_eq!(slugs(&dedicated), (0..12).map(|i| format!("many-{:03}", i * 10)).collect::<Vec<_>>());
    // LIKE wildcards are searched for literally.
    let none = page("/console/tenants?q=%25").await;
    assert!(slugs(&none).is_empty() && none.contains(">0 tenants<"), "{none}");
}

#[tokio::test]
async fn sessions_are_cookies_of_the_registry_and_sign_out_ends_them() {
    let app = spawn_app().await;
    let t = app.create_tenant("cookie-jar", "shared").await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // Signed out: every console page redirects to sign-in, with the way back.
    let res = http.get(format!("{}/console/tenants?tier=shared", app.admin)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/console/login?next=%2Fconsole%2Ftenants%3Ftier%3Dshared");
    // A wrong token is refused, audited, and sets no cookie.
    let res = http
        .post(format!("{}/console/login", app.admin))
        .form(&[("name", "mallory"), ("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get("set-cookie").is_none());
    assert!(res.text().await.unwrap().contains("not the admin token"));
    // An open redirect is not followed.
    let res = http
        .post(format!("{}/console/login", app.admin))
        .form(&[("name", "bob"), ("token", app.token.as_str()), ("next", "https://evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["location"], "/console");

    let (http, cookie) = http_session(&app).await;
    let page = |path: &str| http.get(format!("{}{path}", app.admin)).header("cookie", &cookie).send();
    let tenant_page = page("/console/tenants/cookie-jar").await.unwrap();
    assert_eq!(tenant_page.status(), StatusCode::OK);
    let html = tenant_page.text().await.unwrap();
    for caption in ["Requests per day", "Database time per day", "Storage"] {
        assert!(html.contains(&format!("<figcaption>{caption}<span class=\"peak\"> · peak ")), "{caption}: {html}");
    }
    assert_eq!(html.matches("<div class=\"axis\">").count(), 3, "each chart has its time axis");
    // A plain POST without the form's token (another site's form, say): 403, nothing done.
    let res = http
        .post(format!("{}/console/tenants/cookie-jar/erase", app.admin))
        .header("cookie", &cookie)
        .form(&[("csrf", "x"), ("confirm", "cookie-jar")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK, "not erased");
    // The erase confirmation is checked on the server too.
    let body = page("/console/tenants/cookie-jar/erase").await.unwrap().text().await.unwrap();
    let csrf = body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let res = http
        .post(format!("{}/console/tenants/cookie-jar/erase", app.admin))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("confirm", "cookie")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK, "not erased");
    // Promote offers engine and region; a region the engine cannot provision
    // in fails the dry run on the page, and a forged POST starts nothing.
    let body = page("/console/tenants/cookie-jar/promote").await.unwrap().text().await.unwrap();
    assert!(body.contains(r#"<select id="region" name="region">"#), "{body}");
    assert!(body.contains(r#"<input type="hidden" name="region" value="local">"#), "{body}");
    let body = page("/console/tenants/cookie-jar/promote?engine=logical&region=mars-1").await.unwrap().text().await;
    let body = body.unwrap();
    assert!(body.contains("The dry run failed: no logical capacity in region `mars-1`"), "{body}");
    assert!(!body.contains("id=\"confirm\""), "nothing to confirm: {body}");
    let res = http
        .post(format!("{}/console/tenants/cookie-jar/promote", app.admin))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("engine", "logical"), ("region", "mars-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("no logical capacity in region `mars-1`"));
    let (_, ops) = app.admin_call(Method::GET, &format!("/v1/operations?tenant={}", t.id), None).await;
    assert!(!ops.to_string().contains("promote"), "no promotion started: {ops}");
    // Unknown pages and bad ids answer HTML errors, not 500s.
    assert_eq!(page("/console/nowhere").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(page("/console/operations/not-a-uuid").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(page("/console/tenants/nobody").await.unwrap().status(), StatusCode::NOT_FOUND);
    // Sign out: the same cookie no longer opens anything.
    let res = http
        .post(format!("{}/console/logout", app.admin))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = page("/console/tenants").await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "a revoked session is signed out");
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?action=console", None).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    // A refused sign-in is counted, never audited under the name it gave.
    assert!(actions.contains(&"console.sign_out") && !actions.contains(&"console.sign_in_refused"), "{actions:?}");
    assert!(app.metric(&app.admin, "tenantry_admin_console_sign_ins_refused_total").await >= 1.0);
}

/// Staff sign in to the console through the operator's identity provider
/// (authorization code with PKCE, in Chromium through the provider's own
/// login page): the session holds their staff roles (a sales-ops person may
/// promote, not erase), the audit names the person; a sign-in's callback is
/// taken once, only in the browser that started it.
#[tokio::test]
async fn staff_sign_in_to_the_console_through_the_operators_identity_provider() {
    let idp = tenantry::testkit::oidc_provider();
    let issuer = idp.issuer.clone();
    let app = spawn_app_with(|s| {
        s.control_plane.staff = Some(tenantry_control_plane::staff::StaffConfig {
            issuer: issuer.clone(),
            audience: "tenantry-admin".into(),
            jwks_uri: None,
            role_claim: "groups".into(),
            role_map: [("sales".to_string(), tenantry_control_plane::staff::StaffRole::SalesOps)].into(),
            client_id: Some("tenantry-console".into()),
            client_secret: None,
        })
    })
    .await;
    app.create_tenant("sso-acme", "shared").await;
    idp.add_user("sam", json!({"email": "sam@ops.example", "groups": ["sales"]})).await;
    idp.add_user("eve", json!({"email": "eve@ops.example", "groups": ["marketing"]})).await;

    let c = browser().await;
    c.goto(&format!("{}/console/tenants/sso-acme", app.admin)).await.unwrap();
    wait_path(&c, "/console/login").await;
    click(&c, "#sso").await;
    fill(&c, "#username", "sam").await;
    click(&c, "#sign-in").await;
    wait_path(&c, "/console/tenants/sso-acme").await;
    c.goto(&format!("{}/console/tenants/sso-acme/promote", app.admin)).await.unwrap();
    assert!(!c.source().await.unwrap().contains("staff role"), "sales-ops open the promotion");
    c.goto(&format!("{}/console/tenants/sso-acme/erase", app.admin)).await.unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("needs the `admin` staff role"), "{page}");
    c.close().await.unwrap();
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?action=console.sign_in", None).await;
    assert_eq!(audit["entries"][0]["actor"], format!("sam@ops.example (sub sam at {})", idp.issuer), "{audit}");

    // Without a browser: the provider's answer is taken once, in the browser
    // that started the sign-in; a person of no staff group gets no session.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sign_in = |user: &'static str| {
        let (http, app, idp) = (&http, &app, &idp);
        async move {
            let res = http.get(format!("{}/console/sso/login", app.admin)).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
            let browser = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
            let to = reqwest::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
            assert!(to.as_str().starts_with(&format!("{}/authorize?", idp.issuer)), "{to}");
            let mut form: Vec<(String, String)> = to.query_pairs().into_owned().collect();
            form.push(("username".into(), user.into()));
            let res = http.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap();
            let back = res.headers()["location"].to_str().unwrap().to_string();
            assert!(back.starts_with(&format!("{}/console/sso/callback?", app.admin)), "{back}");
            (browser, back)
        }
    };
    let (cookie, back) = sign_in("sam").await;
    let res = http.get(&back).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "another browser's callback is refused");
    let res = http.get(&back).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get_all("set-cookie").iter().any(|c| c.to_str().unwrap().starts_with("tenantry_session=")));
    let res = http.get(&back).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "a callback is taken once");
    let (cookie, back) = sign_in("eve").await;
    let res = http.get(&back).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no staff group, no session");
    assert!(res.headers().get("set-cookie").is_none_or(|c| !c.to_str().unwrap().starts_with("tenantry_session=")));
}

/// A tenant's people in the console: its identity providers and the people
/// who signed in, one erased with a button (audited by id); another
/// tenant's person is not reachable through this tenant's page.
#[tokio::test]
async fn a_tenants_people_are_listed_and_one_is_erased_in_the_console() {
    let app = spawn_app().await;
    let acme = app.create_tenant("people-acme", "shared").await;
    let globex = app.create_tenant("people-globex", "shared").await;
    let idp = tenantry::testkit::oidc_provider();
    let (s, e) = app
        .admin_call(
            Method::PUT,
            &format!("/v1/tenants/{}/identity-providers/main", acme.id),
            Some(json!({"issuer": idp.issuer, "audience": "tenantry", "role_claim": "roles",
                "role_map": {"office": "manager"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let registry = connect(&app.cp.config().registry_database, false);
    use sea_orm::ConnectionTrait as _;
    for (tenant, email) in
        [(&acme.id, "ann@acme.example"), (&acme.id, "bob@acme.example"), (&globex.id, "gil@globex.example")]
    {
        registry
            .execute_unprepared(&format!(
                "INSERT INTO tenant_users (tenant_id, issuer, subject, email, role, first_seen, last_seen) \
                 VALUES ('{tenant}', '{}', '{email}', '{email}', 'viewer', now(), now())",
                idp.issuer
            ))
            .await
            .unwrap();
    }
    let c = browser().await;
    sign_in(&c, &app, "/console/tenants/people-acme").await;
    click(&c, "#people-link").await;
    wait_path(&c, "/console/tenants/people-acme/people").await;
    assert!(text(&c, "#providers").await.contains(&idp.issuer));
    assert!(text(&c, "#providers").await.contains("office → manager"));
    let people = text(&c, "#people").await;
    assert!(people.contains("ann@acme.example") && people.contains("bob@acme.example"), "{people}");
    assert!(!people.contains("gil@globex.example"), "globex's person is not acme's: {people}");
    let row = c.find(Locator::XPath("//tr[td[normalize-space()='bob@acme.example']]")).await.unwrap();
    row.find(Locator::Css("button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".notice").await.contains("Erased"));
    assert!(!text(&c, "#people").await.contains("bob@acme.example"));
    // A provider put from its JSON (refused in words when bad), then removed.
    fill(&c, "#provider-name", "second").await;
    fill(&c, "#provider-config", "{\"issuer\": \"ftp://x\", \"audience\": \"a\"}").await;
    click(&c, "#provider-form button[type=submit]").await;
    assert!(text(&c, ".error").await.contains("https"), "refused in words");
    fill(&c, "#provider-config", "{\"issuer\": \"http://127.0.0.1:9/second\", \"audience\": \"a\"}").await;
    click(&c, "#provider-form button[type=submit]").await;
    assert!(text(&c, ".notice").await.contains("saved"));
    assert!(text(&c, "#providers").await.contains("http://127.0.0.1:9/second"));
    let row = c.find(Locator::XPath("//table[@id='providers']//tr[td[normalize-space()='second']]")).await.unwrap();
    row.find(Locator::Css("button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".notice").await.contains("removed"));
    assert!(!text(&c, "#providers").await.contains("/second"));
    c.close().await.unwrap();
    let (_, audit) = app.admin_call(Method::GET, "/v1/audit?action=user.erase", None).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1, "{audit}");
    let (_, list) = app.admin_call(Method::GET, &format!("/v1/tenants/{}/identity-providers", acme.id), None).await;
    assert_eq!(list["identity_providers"].as_array().unwrap().len(), 1, "only `main` is left: {list}");
    assert!(!audit.to_string().contains("bob@acme.example"), "the audit keeps the id only: {audit}");
    // Globex's person is untouched (erasing through a tenant names only its own: the admin API test).
    let gil =
        crate::helpers::scalar(&registry, "SELECT count(*) FROM tenant_users WHERE email = 'gil@globex.example'").await;
    assert_eq!(gil, 1);
}
