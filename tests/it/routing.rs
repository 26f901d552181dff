//! The request path follows placements: a stale cached epoch is caught by the
//! backend's residency check, re-resolved and retried once.

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;

use crate::helpers::{cluster, connect, scalar, spawn_app};

#[tokio::test]
async fn a_stale_cached_epoch_is_re_resolved_and_the_request_succeeds() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let (asset, _, _) = app.seed(&t.key, "R-1").await;
    // Bump the epoch on both sides without notifying the app (triggers off), so
    // its cache still says epoch 1.
    let registry = connect(&app.cp.config().registry_database, false);
    registry
        .execute_unprepared(&format!(
            "SET session_replication_role = replica; UPDATE placements SET epoch = 2 WHERE tenant_id = '{}'; RESET session_replication_role;",
            t.id
        ))
        .await
        .unwrap();
    let pool = connect(&app.pool_name, false);
    pool.execute_unprepared(&format!("UPDATE tenant_residency SET epoch = 2 WHERE tenant_id = '{}'", t.id))
        .await
        .unwrap();

    let (s, body) = app.get(&t.key, &format!("/v1/assets/{asset}")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["tag"], "R-1");
}

#[tokio::test]
async fn a_fenced_tenant_gets_a_retryable_503_and_no_write_lands() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    app.seed(&t.key, "F-1").await;
    let pool = connect(&app.pool_name, false);
    pool.execute_unprepared(&format!("UPDATE tenant_residency SET state = 'fenced' WHERE tenant_id = '{}'", t.id))
        .await
        .unwrap();

    let resp = app
        .http
        .post(format!("{}/v1/assets", app.app))
        .bearer_auth(&t.key)
        .json(&serde_json::json!({"name": "late", "tag": "LATE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_moving");
    assert_eq!(crate::helpers::scalar(&pool, "SELECT count(*) FROM assets WHERE tag = 'LATE'").await, 0);
}

#[tokio::test]
async fn a_placement_change_is_announced_to_the_app_cache() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    let (asset, _, _) = app.seed(&t.key, "N-1").await;
    let before = app.resolver.cache_stats();
    // Move residency to epoch 5 first (a request on the cached route would now
    // fail the check), then update the placement with triggers on: the NOTIFY
    // must drop the cached route before the next request.
    let pool = connect(&app.pool_name, false);
    pool.execute_unprepared(&format!("UPDATE tenant_residency SET epoch = 5 WHERE tenant_id = '{}'", t.id))
        .await
        .unwrap();
    let registry = connect(&app.cp.config().registry_database, false);
    registry
        .execute_unprepared(&format!("UPDATE placements SET epoch = 5 WHERE tenant_id = '{}'", t.id))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.resolver.cache_stats().notifications == before.notifications {
        assert!(std::time::Instant::now() < deadline, "no registry notification reached the app");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (s, _) = app.get(&t.key, &format!("/v1/assets/{asset}")).await;
    assert_eq!(s, StatusCode::OK);
    let after = app.resolver.cache_stats();
    assert_eq!(after.stale_routes, before.stale_routes, "the route was dropped by NOTIFY, not found stale");
    assert_eq!(after.route_misses, before.route_misses + 1, "the request re-read the placement once");
}

/// The budget caps *open* connections, idle ones included: a storm of
/// requests over more cold tenants (each on its own database) than the budget
/// has connections never has more open to the cluster than the budget, as
/// PostgreSQL itself counts them (sampled every 10 ms), and every request is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_connections_never_exceed_the_budget_under_a_storm_of_cold_tenants() {
    const BUDGET: i64 = 3;
    let app = crate::helpers::spawn_app_with(|s| {
        s.app.max_connections_total = BUDGET as u32;
        s.app.connections_per_pool = 2;
        s.app.connection_wait_ms = 20_000;
        s.app.pool_idle_secs = 600;
    })
    .await;
    let mut tenants = Vec::new();
    let mut databases = Vec::new();
    for i in 0..8 {
        let t = app.create_tenant(&format!("storm-{i}"), "dedicated").await;
        let placed = app.cp.tenant(&t.id).await.unwrap().placement.unwrap();
        databases.push(app.cp.backend(placed.backend_id).await.unwrap().database);
        tenants.push(t);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, databases) = (stop.clone(), databases.clone());
        tokio::spawn(async move {
            let pg = connect("postgres", false);
            let mut most = 0i64;
            let list = databases.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
            let sql =
                format!("SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenantry_app' AND datname IN ({list})");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(crate::helpers::scalar(&pg, &sql).await);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            most
        })
    };
    for round in 0..3 {
        let requests = (0..40).map(|i| {
            let key = tenants[(i + round) % tenants.len()].key.clone();
            let app = &app;
            async move { app.get(&key, "/v1/assets").await }
        });
        for (s, body) in futures::future::join_all(requests).await {
            assert_eq!(s, StatusCode::OK, "round {round}: {body}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();
    assert!(most <= BUDGET, "{most} connections open to the tenants' databases, budget {BUDGET}");
    assert!(most >= 2, "the storm used the budget: {most}");
    assert!(app.resolver.connections_open() <= BUDGET as usize);
}

/// At the cap, the connection closed to make room is the least recently used
/// one: a tenant in steady use keeps its connection (the same server process)
/// while a stream of cold tenants passes through the rest of the budget.
#[tokio::test]
async fn a_busy_tenant_keeps_its_connection_while_cold_tenants_come_and_go() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.app.max_connections_total = 2;
        s.app.connections_per_pool = 1;
        s.app.pool_idle_secs = 600;
    })
    .await;
    let busy = app.create_tenant("lru-busy", "dedicated").await;
    let busy_db = {
        let placed = app.cp.tenant(&busy.id).await.unwrap().placement.unwrap();
        app.cp.backend(placed.backend_id).await.unwrap().database
    };
    let mut cold = Vec::new();
    for i in 0..10 {
        cold.push(app.create_tenant(&format!("lru-cold-{i}"), "dedicated").await);
    }
    let pg = connect("postgres", false);
    let busy_pid = async || {
        crate::helpers::scalar(
            &pg,
            &format!(
                "SELECT coalesce(max(pid), 0)::bigint FROM pg_stat_activity WHERE usename = 'tenantry_app' AND datname = '{busy_db}'"
            ),
        )
        .await
    };
    let (s, body) = app.get(&busy.key, "/v1/assets").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let first = busy_pid().await;
    assert_ne!(first, 0, "the busy tenant has a connection open");
    for (i, t) in cold.iter().chain(cold.iter()).enumerate() {
        // A cold tenant opens a connection at the cap: one must close.
        let (s, body) = app.get(&t.key, "/v1/assets").await;
        assert_eq!(s, StatusCode::OK, "cold {i}: {body}");
        let (s, body) = app.get(&busy.key, "/v1/assets").await;
        assert_eq!(s, StatusCode::OK, "busy after cold {i}: {body}");
        let now = busy_pid().await;
        if now != first {
            let seen = pg
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT string_agg(datname || ':' || pid || ':' || state, ', ') AS s FROM pg_stat_activity WHERE usename = 'tenantry_app'",
                ))
                .await
                .unwrap()
                .and_then(|r| r.try_get::<Option<String>>("", "s").ok().flatten());
            panic!(
                "after cold tenant {i} the busy tenant's connection {first} was closed (now {now}); busy db {busy_db}; open: {seen:?}"
            );
        }
    }
    assert!(app.resolver.connections_open() <= 2);
}

/// At the cap the connection that closes is the least *used* pool's, not the
/// least recently used one's: with two tenants asking all the time and cold
/// tenants coming between their requests two at a time, a least-recently-used
/// choice closes a busy tenant's connection on every second cold request.
#[tokio::test]
async fn busy_tenants_keep_their_connections_when_cold_tenants_come_between_their_requests() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.app.max_connections_total = 3;
        s.app.connections_per_pool = 1;
        s.app.pool_idle_secs = 600;
    })
    .await;
    let mut busy = Vec::new();
    for i in 0..2 {
        let t = app.create_tenant(&format!("lfu-busy-{i}"), "dedicated").await;
        let database = app.database_of(&t.id).await;
        busy.push((t, database));
    }
    let mut cold = Vec::new();
    for i in 0..8 {
        cold.push(app.create_tenant(&format!("lfu-cold-{i}"), "dedicated").await);
    }
    let pg = connect("postgres", false);
    let pid = async |db: &str| {
        let sql = format!(
            "SELECT coalesce(max(pid), 0)::bigint FROM pg_stat_activity WHERE usename = 'tenantry_app' AND datname = '{db}'"
        );
        scalar(&pg, &sql).await
    };
    for _ in 0..5 {
        for (t, _) in &busy {
            assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK);
        }
    }
    let mut first = Vec::new();
    for (_, db) in &busy {
        first.push(pid(db).await);
    }
    assert!(first.iter().all(|p| *p != 0), "{first:?}");
    for (round, pair) in cold.chunks(2).enumerate() {
        for t in pair {
            assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK, "cold tenant, round {round}");
        }
        for ((t, db), was) in busy.iter().zip(&first) {
            assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK);
            assert_eq!(pid(db).await, *was, "round {round}: {} opened a new connection", t.tenant["slug"]);
        }
        assert!(app.resolver.connections_open() <= 3);
    }
}

#[tokio::test]
async fn requests_wait_for_a_connection_slot_instead_of_exceeding_the_budget() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.app.max_connections_total = 2;
        s.app.connections_per_pool = 1;
    })
    .await;
    let mut keys = Vec::new();
    for slug in ["budget-a", "budget-b", "budget-c"] {
        let t = app.create_tenant(slug, "dedicated").await;
        app.seed(&t.key, "B-1").await;
        keys.push(t.key);
    }
    let requests = (0..30).map(|i| {
        let key = keys[i % keys.len()].clone();
        let app = &app;
        async move { app.get(&key, "/v1/assets").await.0 }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(app.resolver.connections_in_use(), 0, "every slot is given back");
    let metrics = app.http.get(format!("{}/metrics", app.app)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tenantry_app_connection_budget 2"), "{metrics}");
    assert!(metrics.contains("tenantry_app_connections_in_use 0"), "{metrics}");
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tenantry_app_connections_open "))
        .and_then(|v| v.parse().ok())
        .expect("an open-connections gauge");
    assert!((1..=2).contains(&open), "open connections (idle included) within the budget: {metrics}");
}

/// The app's registry LISTEN connection is cut: the app re-listens, drops
/// its caches (announcements may have been missed meanwhile), and hears the
/// next change again.
#[tokio::test]
async fn an_app_whose_listen_connection_drops_relistens_and_drops_its_caches() {
    let app = spawn_app().await;
    let t = app.create_tenant("relisten", "shared").await;
    let (asset, _, _) = app.seed(&t.key, "R-1").await;
    let postgres = connect("postgres", false);
    let registry = &app.cp.config().registry_database;
    let cut = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{registry}' AND application_name = 'tenantry-app-registry' AND query LIKE 'LISTEN%'"
    );
    assert_eq!(scalar(&postgres, &cut).await, 1, "one LISTEN connection to cut");
    // Cached routes are dropped: the next request reads the placement again.
    let before = app.resolver.cache_stats();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert_eq!(app.get(&t.key, &format!("/v1/assets/{asset}")).await.0, StatusCode::OK);
        if app.resolver.cache_stats().route_misses > before.route_misses {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the caches were not dropped after the LISTEN connection died");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Listening again: a registry change reaches the app.
    let relistened = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = '{registry}' AND application_name = 'tenantry-app-registry' AND query LIKE 'LISTEN%'"
    );
    while scalar(&postgres, &relistened).await != 1 {
        assert!(std::time::Instant::now() < deadline, "the app did not LISTEN again");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let heard = app.resolver.cache_stats().notifications;
    let reg = connect(registry, false);
    reg.execute_unprepared(&format!("UPDATE placements SET updated_at = now() WHERE tenant_id = '{}'", t.id))
        .await
        .unwrap();
    while app.resolver.cache_stats().notifications == heard {
        assert!(std::time::Instant::now() < deadline, "no notification after re-listening");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let ready = app.http.get(format!("{}/readyz", app.app)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "ready again");
}

/// The app's backend pools plan a prepared read once per connection
/// (`plan_cache_mode = force_generic_plan`, `PoolSizing::generic_plans`): on a
/// pool whose tenants differ widely in size PostgreSQL would otherwise keep
/// building a custom plan for a small tenant's every read. The same read, 8
/// times on one session of each kind of pool: only generic plans, against a
/// custom plan per execution without the setting.
#[tokio::test]
async fn backend_pools_plan_a_prepared_read_once_per_connection_however_skewed_the_pool() {
    let app = spawn_app().await;
    let big = app.create_tenant("big", "shared").await;
    let small = app.create_tenant("small", "shared").await;
    let pool = connect(&app.pool_name, false);
    pool.execute_unprepared(&format!(
        "INSERT INTO assets (tenant_id, id, name, tag, category, location, status) \
         SELECT '{}', gen_random_uuid(), 'A ' || g, 'B-' || g, 'c', 'l', 'active' FROM generate_series(1, 5000) g; \
         INSERT INTO assets (tenant_id, id, name, tag, category, location, status) \
         VALUES ('{}', gen_random_uuid(), 'Only', 'S-1', 'c', 'l', 'active'); ANALYZE assets",
        big.id, small.id
    ))
    .await
    .unwrap();
    let tc = cluster();
    let creds = tenantry_core::db::Credentials {
        user: tenantry::dev::APP_ROLE.into(),
        password: tc.secrets.app_password.clone().into(),
    };
    let small_id: uuid::Uuid = small.id.parse().unwrap();
    for generic in [true, false] {
        let sizing = tenantry_core::db::PoolSizing {
            max_connections: 1,
            generic_plans: generic,
            tls: tc.tls(),
            ..Default::default()
        };
        let db = tenantry_core::db::lazy_pool("127.0.0.1", tc.cluster.port(), &app.pool_name, &creds, "plans", sizing);
        let session = db.get_postgres_connection_pool();
        // The app's read: the vouched gate, its values bound (one connection,
        // so one pid and one counter).
        let (pid, start): (i32, i64) =
            sea_orm::sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(session).await.unwrap();
        let key = crate::helpers::gate_key();
        for n in start..start + 8 {
            let names: Vec<String> = sea_orm::sqlx::query_scalar(
                "SELECT name FROM assets WHERE tenant_id = $1 \
                 AND (SELECT tenantry_gate($1, 1, $2, $3, NULL, NULL, $4, \
                      EXISTS (SELECT 1 FROM tenantry_admitted g WHERE g.tenant_id = $1 AND g.epoch = 1))) \
                 ORDER BY id LIMIT 21",
            )
            .bind(small_id)
            .bind(key.kid())
            .bind(n)
            .bind(key.direct(small_id, 1, pid as u32, n))
            .fetch_all(session)
            .await
            .unwrap();
            assert_eq!(names, vec!["Only".to_string()], "the small tenant's one row, under its RLS scope");
        }
        let (generic_plans, custom_plans): (i64, i64) = sea_orm::sqlx::query_as(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%ORDER BY id LIMIT 21'",
        )
        .fetch_one(session)
        .await
        .unwrap();
        if generic {
            assert_eq!((generic_plans, custom_plans), (8, 0), "planned once, executed 8 times");
        } else {
            assert!(custom_plans >= 5, "without the setting: a custom plan per execution ({custom_plans})");
        }
    }
}

/// The app role's stored secret is made by Tenantry with few iterations (a
/// password sent in clear would be stored with the server's 4,096): every
/// connection start pays them. `tenantry scram-secret` makes the same for a
/// role made by hand, logs in with its password only, and refuses a count
/// below 4,096 for a password short enough to be guessed.
#[tokio::test]
async fn the_app_role_logs_in_with_a_scram_secret_of_few_iterations_made_client_side() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "shared").await;
    assert_eq!(app.get(&t.key, "/v1/assets").await.0, StatusCode::OK);
    let tc = cluster();
    let admin = connect("postgres", false);
    let stored = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{}'", tenantry::dev::APP_ROLE),
        ))
        .await
        .unwrap()
        .expect("the app role")
        .try_get_by_index::<String>(0)
        .unwrap();
    let want = format!("SCRAM-SHA-256${}:", tenantry::dev::APP_SCRAM_ITERATIONS);
    assert!(stored.starts_with(&want), "{}", &stored[..want.len().min(stored.len())]);
    assert_eq!(scalar(&connect("postgres", true), "SELECT 1::bigint").await, 1);

    let cli = |password: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args(["scram-secret", "--iterations", "16"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tenantry scram-secret");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let password = tenantry::dev::random_secret(16);
    let out = cli(&password);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("SCRAM-SHA-256$16:"), "{secret}");
    assert!(!secret.contains(&password));
    let role = format!("scram_probe_{}", &tenantry::dev::random_secret(4));
    admin.execute_unprepared(&format!("CREATE ROLE {role} LOGIN PASSWORD '{secret}'")).await.unwrap();
    let login = |password: String| {
        let opts = sea_orm::sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(tc.cluster.port())
            .database("postgres")
            .username(&role)
            .password(&password);
        async move {
            use sea_orm::sqlx::{Connection, Row};
            let mut conn = sea_orm::sqlx::postgres::PgConnection::connect_with(&opts).await?;
            let row = sea_orm::sqlx::query("SELECT current_user::text").fetch_one(&mut conn).await?;
            row.try_get::<String, _>(0)
        }
    };
    assert_eq!(login(password.clone()).await.unwrap(), role);
    let wrong = login(format!("{password}x")).await.unwrap_err().to_string();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    admin.execute_unprepared(&format!("DROP ROLE {role}")).await.unwrap();

    let short = cli("guessable");
    assert!(!short.status.success());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.contains("at least 24 characters"), "{err}");
}
