//! Usage metering and cost, heavy-tenant recommendations, and the Prometheus
//! series of both listeners.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;

use crate::helpers::*;

/// Meters flushed, folded and measured within a second.
fn fast_usage(s: &mut tenantry::Settings) {
    s.app.usage_flush_ms = 100;
    s.control_plane.usage.rollup_interval_ms = 100;
    s.control_plane.usage.storage_interval_secs = 1;
}

#[tokio::test]
async fn requests_errors_db_time_and_storage_are_metered_per_tenant_and_priced_per_tier() {
    let app = spawn_app_with(fast_usage).await;
    let a = app.create_tenant("metered-shared", "shared").await;
    let d = app.create_tenant("metered-dedicated", "dedicated").await;
    let (asset, _, _) = app.seed(&a.key, "M-1").await; // 3 requests
    for _ in 0..5 {
        assert_eq!(app.get(&a.key, &format!("/v1/assets/{asset}")).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        let missing = uuid::Uuid::now_v7();
        assert_eq!(app.get(&a.key, &format!("/v1/assets/{missing}")).await.0, StatusCode::NOT_FOUND);
    }
    app.seed(&d.key, "D-1").await; // 3 requests
    app.seed(&d.key, "D-2").await; // 3 requests

    let path = format!("/v1/tenants/{}/usage?window=24h", a.id);
    let u = app.admin_until(&path, |u| u["requests"] == 10 && u["rows"] == 3).await;
    assert_eq!(u["requests"], 10, "{u}");
    assert_eq!(u["client_errors"], 2, "{u}");
    assert_eq!(u["server_errors"], 0, "{u}");
    assert!(u["db_time_ms"].as_f64().unwrap() > 0.0, "{u}");
    assert_eq!(u["tier"], "shared");
    assert_eq!(u["tables"]["assets"]["rows"], 1, "{u}");
    assert_eq!(u["tables"]["asset_issues"]["rows"], 1, "{u}");
    let shared_bytes = u["bytes"].as_i64().unwrap();
    assert!(shared_bytes > 0, "{u}");
    assert_eq!(u["cost"]["base"], 0.0, "a shared tenant pays no fixed price: {u}");
    assert!(u["cost"]["requests"].as_f64().unwrap() >= 0.0);
    let series: i64 = u["series"].as_array().unwrap().iter().map(|p| p["requests"].as_i64().unwrap()).sum();
    assert_eq!(series, 10, "the hourly points add up to the total: {u}");

    let path = format!("/v1/tenants/{}/usage?window=24h", d.id);
    let du = app.admin_until(&path, |u| u["requests"] == 6 && u["rows"] == 6).await;
    assert_eq!(du["requests"], 6, "{du}");
    assert_eq!(du["tier"], "dedicated");
    let dedicated_bytes = du["bytes"].as_i64().unwrap();
    assert!(
        dedicated_bytes > 1_000_000 && dedicated_bytes > shared_bytes,
        "a dedicated tenant is charged its whole database: {dedicated_bytes} vs {shared_bytes}"
    );
    // 25 a month prorated to a day.
    let base = du["cost"]["base"].as_f64().unwrap();
    assert!((base - 25.0 * 24.0 / 730.0).abs() < 0.001, "{du}");
    assert!(du["monthly_estimate"].as_f64().unwrap() >= 25.0, "{du}");

    // The fleet view, sorted and bounded.
    let (s, top) = app.admin_call(Method::GET, "/v1/usage?top=1&sort=requests&window=1h", None).await;
    assert_eq!(s, StatusCode::OK, "{top}");
    let tenants = top["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0]["slug"], "metered-shared", "{top}");
    let (_, by_cost) = app.admin_call(Method::GET, "/v1/usage?top=10", None).await;
    assert_eq!(by_cost["sort"], "cost");
    assert_eq!(by_cost["tenants"][0]["slug"], "metered-dedicated", "the dedicated base price dominates: {by_cost}");

    for (path, code) in [
        ("/v1/usage?window=3w", "invalid_window"),
        ("/v1/usage?window=0h", "invalid_window"),
        ("/v1/usage?top=0", "invalid_top"),
        ("/v1/usage?sort=size", "invalid_query"),
        ("/v1/usage?tenant=x", "invalid_query"),
    ] {
        let (s, body) = app.admin_call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let (s, body) = app.admin_call(Method::GET, "/v1/tenants/nobody/usage", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn the_app_role_may_append_usage_samples_and_nothing_more() {
    let app = spawn_app().await;
    let registry = connect(&app.cp.config().registry_database, true);
    let tenant = uuid::Uuid::now_v7();
    let insert = format!(
        "INSERT INTO usage_samples (tenant_id, at, requests, client_errors, server_errors, db_time_us) \
         VALUES ('{tenant}', now(), 1, 0, 0, 10)"
    );
    sea_orm::ConnectionTrait::execute_unprepared(&registry, &insert).await.expect("the app appends usage");
    for forbidden in [
        "SELECT count(*) FROM usage_samples",
        "DELETE FROM usage_samples",
        "UPDATE usage_samples SET requests = 0",
        "SELECT count(*) FROM usage_rollups",
        "INSERT INTO usage_rollups (tenant_id, granularity, period_start) VALUES (gen_random_uuid(), 'hour', now())",
        "UPDATE tenants SET status = 'active'",
        "INSERT INTO audit_log (actor, action) VALUES ('app', 'x')",
    ] {
        let err = sea_orm::ConnectionTrait::execute_unprepared(&registry, forbidden).await;
        assert!(err.is_err(), "the app role may not: {forbidden}");
    }
}

#[tokio::test]
async fn recommendations_name_the_tenant_that_dominates_its_pool_with_a_move_plan() {
    let app = spawn_app_with(|s| {
        fast_usage(s);
        s.control_plane.usage.recommend.share = 0.5;
        s.control_plane.usage.recommend.min_rows = 20;
        s.control_plane.usage.recommend.min_bytes = i64::MAX;
        s.control_plane.usage.recommend.min_db_time_ms = i64::MAX;
    })
    .await;
    let heavy = app.create_tenant("heavy-one", "shared").await;
    let light = app.create_tenant("light-one", "shared").await;
    let dedicated = app.create_tenant("already-alone", "dedicated").await;
    for i in 0..10 {
        app.seed(&heavy.key, &format!("H-{i}")).await;
    }
    app.seed(&light.key, "L-1").await;
    for i in 0..10 {
        app.seed(&dedicated.key, &format!("A-{i}")).await;
    }
    // Storage is measured in passes that may straddle the seeding above: wait
    // for a pass that saw every seeded row of both shared tenants.
    let body = app
        .admin_until("/v1/recommendations", |b| {
            b["recommendations"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["usage"]["rows"] == 30 && r["share"]["rows"] == 0.909))
        })
        .await;
    let recs = body["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "only the heavy shared tenant: {body}");
    let r = &recs[0];
    assert_eq!(r["slug"], "heavy-one");
    assert_eq!(r["share"]["rows"], 0.909, "30 of 33 rows: {r}");
    assert!(r["reasons"][0].as_str().unwrap().contains("91% of the pool's rows"), "{r}");
    assert_eq!(r["usage"]["rows"], 30);
    assert_eq!(r["plan"]["kind"], "promote", "{r}");
    assert_eq!(r["plan"]["total_rows"], 30, "{r}");
    assert_eq!(r["plan"]["ready"], true, "{r}");
    assert!(r["plan_error"].is_null());
}

/// The value of the sample of `family` whose labels include all of `labels`.
fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn both_listeners_export_prometheus_series_by_route_status_and_tier() {
    let app = spawn_app().await;
    let a = app.create_tenant("scraped", "shared").await;
    let d = app.create_tenant("scraped-alone", "dedicated").await;
    let (asset, _, _) = app.seed(&a.key, "S-1").await;
    for _ in 0..3 {
        app.get(&a.key, &format!("/v1/assets/{asset}")).await;
    }
    app.get(&a.key, &format!("/v1/assets/{}", uuid::Uuid::now_v7())).await;
    app.get(&d.key, "/v1/assets").await;

    let text = app.http.get(format!("{}/metrics", app.app)).send().await.unwrap().text().await.unwrap();
    let route = r#"route="/v1/assets/{id}""#;
    assert_eq!(
        sample(&text, "tenantry_app_http_requests_total", &[route, r#"status="200""#, r#"tier="shared""#]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tenantry_app_http_requests_total", &[route, r#"status="404""#, r#"tier="shared""#]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "tenantry_app_http_requests_total",
            &[r#"route="/v1/assets""#, r#"method="GET""#, r#"tier="dedicated""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "tenantry_app_http_request_duration_seconds_count", &[route, r#"tier="shared""#]),
        Some(4.0)
    );
    assert!(sample(&text, "tenantry_app_http_request_duration_seconds_bucket", &[route, r#"le="10""#]).is_some());
    let hits = sample(&text, "tenantry_app_cache_requests_total", &[r#"cache="api_key""#, r#"result="hit""#]).unwrap();
    let misses =
        sample(&text, "tenantry_app_cache_requests_total", &[r#"cache="api_key""#, r#"result="miss""#]).unwrap();
    // 8 keyed requests; at least one miss per key (a NOTIFY may drop the cache once more).
    assert_eq!(hits + misses, 8.0, "{text}");
    assert!(misses >= 2.0 && hits >= 5.0, "{text}");
    assert!(sample(&text, "tenantry_app_backend_pools", &[]).unwrap() >= 2.0);

    let (s, _) = app.admin_call(Method::GET, "/v1/tenants", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = app.metrics_text(&app.admin).await;
    assert_eq!(
        sample(
            &text,
            "tenantry_admin_http_requests_total",
            &[r#"route="/v1/tenants""#, r#"method="GET""#, r#"status="200""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tenantry_admin_http_requests_total",
            &[r#"route="/v1/tenants""#, r#"method="POST""#, r#"status="202""#]
        ),
        Some(1.0),
        "the dedicated tenant's creation: {text}"
    );
    assert_eq!(sample(&text, "tenantry_operations", &[r#"kind="provision""#, r#"state="succeeded""#]), Some(1.0));
    assert_eq!(sample(&text, "tenantry_tenants", &[r#"tier="shared""#, r#"status="active""#]), Some(1.0));
    let pool = format!(r#"backend="{}""#, app.pool_name);
    assert_eq!(
        sample(&text, "tenantry_backend_schema_version", &[&pool]),
        Some(f64::from(tenantry_core::TENANT_SCHEMA_LATEST))
    );
    assert_eq!(sample(&text, "tenantry_backend_tenants", &[&pool]), Some(1.0));
    assert_eq!(sample(&text, "tenantry_backend_migration_failed", &[&pool]), Some(0.0));
}

/// 20,000 tenants' counts (100,000 values) go out in slices of 1,000 tenants,
/// each its own statement. A slice that fails keeps its counts and every later
/// slice's for the next flush, which writes them: each tenant exactly once.
#[tokio::test]
async fn a_flush_writes_twenty_thousand_tenants_in_slices_and_keeps_what_a_failed_slice_did_not_write() {
    // Arrange: the background flusher stays out of the way; 20,000 tenants
    // have counts; one of them makes its slice's INSERT fail.
    let app = spawn_app_with(|s| s.app.usage_flush_ms = 3_600_000).await;
    let meter = app.resolver.usage().clone();
    let tenants: Vec<uuid::Uuid> = (0..20_000).map(|_| uuid::Uuid::now_v7()).collect();
    for t in &tenants {
        meter.db_time(*t, Duration::from_micros(7_777));
    }
    let poisoned = tenants[7];
    let as_app = connect(&app.cp.config().registry_database, true);
    let registry = connect(&app.cp.config().registry_database, false);
    registry
        .execute_unprepared(&format!(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.tenant_id = '{poisoned}' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON usage_samples FOR EACH ROW EXECUTE FUNCTION poison()"
        ))
        .await
        .unwrap();

    // Act 1: the flush stops at the poisoned slice.
    let failed = meter.flush(&as_app).await;

    // Assert 1: whole slices before it are written, the rest kept, none twice.
    assert!(failed.is_err());
    let written = scalar(&registry, "SELECT count(*) FROM usage_samples WHERE db_time_us = 7777").await;
    let pending = meter.pending();
    assert_eq!(written % 1_000, 0, "only whole slices are written: {written}");
    assert_eq!(written + pending.len() as i64, 20_000);
    assert!(pending.contains_key(&poisoned));
    let ids = pending.keys().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(",");
    assert_eq!(scalar(&registry, &format!("SELECT count(*) FROM usage_samples WHERE tenant_id IN ({ids})")).await, 0);

    // Act 2: the next flush, the registry healthy again.
    registry.execute_unprepared("DROP TRIGGER poison ON usage_samples").await.unwrap();
    let rest = meter.flush(&as_app).await;

    // Assert 2: every tenant once, in statements of at most 1,000 tenants.
    assert_eq!(rest.expect("the flush succeeds") as i64, 20_000 - written);
    assert!(meter.pending().is_empty(), "nothing is left for a later flush");
    let once = "SELECT count(DISTINCT tenant_id) FROM usage_samples WHERE db_time_us = 7777";
    assert_eq!(scalar(&registry, once).await, 20_000);
    assert_eq!(scalar(&registry, "SELECT count(*) FROM usage_samples WHERE db_time_us = 7777").await, 20_000);
    let statements = "SELECT count(DISTINCT at) FROM usage_samples WHERE db_time_us = 7777";
    assert_eq!(scalar(&registry, statements).await, 20, "one timestamp per slice");
    let largest = "SELECT max(n) FROM (SELECT count(*) AS n FROM usage_samples GROUP BY at) s";
    assert_eq!(scalar(&registry, largest).await, 1_000);
}

/// A storage pass over a pool of 1,234 tenants (several count batches and
/// record batches) records each tenant's own rows and shares every table's
/// bytes out by rows; a rollup of a backlog of 120,001 samples (several fold
/// statements) folds each sample exactly once.
#[tokio::test]
async fn a_storage_pass_over_a_crowded_pool_and_a_rollup_of_a_backlog_count_every_tenant_and_sample() {
    // Arrange: the passes run only when called.
    let app = spawn_app_with(|s| {
        s.control_plane.usage.rollup_interval_ms = 3_600_000;
        s.control_plane.usage.storage_interval_secs = 86_400;
    })
    .await;
    let registry = connect(&app.cp.config().registry_database, false);
    let pool = app.cp.backends().await.unwrap().into_iter().find(|b| b.name == app.pool_name).unwrap().id;
    registry
        .execute_unprepared(&format!(
            "WITH t AS (INSERT INTO tenants (id, slug, name, tier, status, region) \
               SELECT gen_random_uuid(), 'crowd-' || lpad(i::text, 4, '0'), 'Crowd ' || i, 'shared', 'active', 'local' \
               FROM generate_series(0, 1233) i RETURNING id) \
             INSERT INTO placements (tenant_id, backend_id, epoch) SELECT id, '{pool}', 1 FROM t"
        ))
        .await
        .unwrap();
    let tenants: Vec<(uuid::Uuid, i64)> = registry
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id, substring(slug from 7)::int % 7 AS n FROM tenants WHERE slug LIKE 'crowd-%'",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get("", "id").unwrap(), i64::from(r.try_get::<i32>("", "n").unwrap())))
        .collect();
    let data = connect(&app.pool_name, false);
    let ids = tenants.iter().map(|(id, _)| format!("'{id}'")).collect::<Vec<_>>().join(",");
    let ns = tenants.iter().map(|(_, n)| n.to_string()).collect::<Vec<_>>().join(",");
    data.execute_unprepared(&format!(
        "INSERT INTO assets (tenant_id, id, name, tag, status) \
         SELECT t.id, gen_random_uuid(), 'Crowd asset', 'C-' || g, 'active' \
         FROM unnest(ARRAY[{ids}]::uuid[], ARRAY[{ns}]::int[]) AS t(id, n), generate_series(1, t.n) g"
    ))
    .await
    .unwrap();

    // Act
    let measured = app.cp.measure_storage().await.unwrap();

    // Assert: every tenant's own rows, table by table.
    assert_eq!(measured, tenants.len());
    let right = scalar(
        &registry,
        "SELECT count(*) FROM usage_storage s JOIN tenants t ON t.id = s.tenant_id \
         WHERE t.slug LIKE 'crowd-%' AND s.rows = substring(t.slug from 7)::int % 7 \
         AND (s.tables -> 'assets' ->> 'rows')::int = s.rows AND (s.tables -> 'asset_issues' ->> 'rows')::int = 0",
    )
    .await;
    assert_eq!(right, tenants.len() as i64, "tenants whose measurement matches their rows");
    let shared_out = scalar(
        &registry,
        "SELECT coalesce(sum((tables -> 'assets' ->> 'bytes')::bigint), 0)::bigint FROM usage_storage",
    )
    .await;
    let size = scalar(&data, "SELECT pg_total_relation_size('assets')").await;
    assert!((shared_out - size).abs() <= tenants.len() as i64, "assets' {size} bytes shared out as {shared_out}");
    let empty = tenants.iter().find(|(_, n)| *n == 0).unwrap().0;
    assert_eq!(
        scalar(&registry, &format!("SELECT bytes FROM usage_storage WHERE tenant_id = '{empty}'")).await,
        0,
        "a tenant without rows holds no bytes of a shared table"
    );

    // Arrange: a backlog of samples, over several batches, each of more
    // tenants than one statement folds (so each batch is folded in slices).
    registry
        .execute_unprepared(
            "INSERT INTO usage_samples (tenant_id, at, requests, client_errors, server_errors, db_time_us) \
             SELECT (SELECT id FROM tenants WHERE slug = 'crowd-' || lpad((g % 1234)::text, 4, '0')), now(), 1, 0, 0, 2 \
             FROM generate_series(1, 120001) g",
        )
        .await
        .unwrap();

    // Act
    let folded = app.cp.rollup_usage().await.unwrap();

    // Assert
    assert_eq!(folded, 120_001);
    assert_eq!(scalar(&registry, "SELECT count(*) FROM usage_samples").await, 0);
    for granularity in ["hour", "day"] {
        let requests = scalar(
            &registry,
            &format!(
                "SELECT coalesce(sum(requests), 0)::bigint FROM usage_rollups WHERE granularity = '{granularity}'"
            ),
        )
        .await;
        assert_eq!(requests, 120_001, "{granularity} rollups count every sample once");
    }
    // Each tenant's samples went into its one hour row: 97 or 98 each.
    let spread = scalar(
        &registry,
        "SELECT (count(*) * 1000 + max(requests) - min(requests))::bigint FROM usage_rollups WHERE granularity = 'hour'",
    )
    .await;
    assert_eq!(spread, 1234 * 1000 + 1, "one hour row per tenant, the samples shared out evenly");
}

/// The recommendations' database time over their window is kept as samples
/// are folded: samples inside the window are added, older ones only reach
/// their rollups; when the window's first hour moves on, the hours that left
/// it are subtracted. After each fold it equals the sum of the window's rollups.
#[tokio::test]
async fn the_recommendations_window_is_kept_as_usage_is_folded_and_moves_on_by_the_hour() {
    let app = spawn_app_with(|s| {
        s.control_plane.usage.rollup_interval_ms = 3_600_000;
        s.control_plane.usage.storage_interval_secs = 86_400;
    })
    .await;
    let registry = connect(&app.cp.config().registry_database, false);
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let sample = |tenant: uuid::Uuid, ago: &str, db: i64| {
        format!(
            "INSERT INTO usage_samples (tenant_id, at, requests, client_errors, server_errors, db_time_us) \
             VALUES ('{tenant}', now() - interval '{ago}', 1, 0, 0, {db})"
        )
    };
    let summed = "SELECT coalesce(sum(db_time_us), 0)::bigint FROM usage_rollups \
                  WHERE granularity = 'hour' AND period_start >= (SELECT since FROM usage_window_state) AND tenant_id = '{t}'";
    let kept = "SELECT coalesce(sum(db_time_us), 0)::bigint FROM usage_window WHERE tenant_id = '{t}'";
    let both = async |t: uuid::Uuid| {
        (
            scalar(&registry, &kept.replace("{t}", &t.to_string())).await,
            scalar(&registry, &summed.replace("{t}", &t.to_string())).await,
        )
    };

    // Inside the window (now, 22 hours ago) and outside it (30 hours ago).
    for sql in [sample(a, "1 second", 1000), sample(a, "22 hours", 200), sample(b, "30 hours", 500)] {
        registry.execute_unprepared(&sql).await.unwrap();
    }
    assert_eq!(app.cp.rollup_usage().await.unwrap(), 3);
    assert_eq!(both(a).await, (1200, 1200));
    assert_eq!(both(b).await, (0, 0), "a sample older than the window reaches only its rollup");
    assert_eq!(scalar(&registry, &format!("SELECT count(*) FROM usage_rollups WHERE tenant_id = '{b}'")).await, 2);

    // The window as a fold two hours ago left it: its first hour two hours
    // back, holding those hours' 700.
    registry
        .execute_unprepared(&format!(
            "UPDATE usage_window_state SET since = since - interval '2 hours'; \
             INSERT INTO usage_rollups (tenant_id, granularity, period_start, db_time_us) \
               SELECT '{a}', 'hour', since, 700 FROM usage_window_state; \
             UPDATE usage_window SET db_time_us = db_time_us + 700 WHERE tenant_id = '{a}'"
        ))
        .await
        .unwrap();
    registry.execute_unprepared(&sample(a, "1 second", 5)).await.unwrap();
    assert_eq!(app.cp.rollup_usage().await.unwrap(), 1);
    assert_eq!(both(a).await, (1205, 1205), "the hours that left the window were subtracted");

    // The shares read the kept window.
    app.cp.heavy_tenants().await.expect("the heavy-tenant shares");
}
