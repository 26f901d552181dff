//! The permanent isolation suite: for every app route, tenant B's key with
//! tenant A's ids and tags gets 404 or an empty list, on every tier pairing;
//! and the database itself refuses to show rows without a tenant.

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::json;

use sea_orm::sqlx::{self, AssertSqlSafe};
use tenantry_core::gate::{self, Binding};

use crate::helpers::{TestApp, app_conn, connect, gate_key, run, scalar, spawn_app, vouched_begin};

async fn b_cannot_reach_a(a_tier: &str, b_tier: &str) {
    b_cannot_reach_a_via(a_tier, b_tier, false).await;
}

/// With `pooled`, every backend is reached through a real PgBouncer in
/// transaction mode, and the test checks that it carried the requests.
async fn b_cannot_reach_a_via(a_tier: &str, b_tier: &str, pooled: bool) {
    let app: TestApp = spawn_app().await;
    let a = app.create_tenant("tenant-a", a_tier).await;
    let b = app.create_tenant("tenant-b", b_tier).await;
    let carried = if pooled {
        app.through_pgbouncer().await;
        app.pgbouncer_transactions().await
    } else {
        0
    };
    let (asset, sched, issue) = app.seed(&a.key, "SHARED-TAG").await;
    let k = &b.key;

    // Reads by id and tag: exactly like a missing row.
    for path in [
        format!("/v1/assets/{asset}"),
        "/v1/assets/by-tag/SHARED-TAG".into(),
        format!("/v1/issues/{issue}"),
        format!("/v1/assets/{asset}/maintenance-schedules"),
    ] {
        let (s, body) = app.get(k, &path).await;
        assert_eq!(
            (s, body["error"]["code"].clone()),
            (StatusCode::NOT_FOUND, json!("not_found")),
            "{a_tier}->{b_tier} GET {path}"
        );
    }
    // Lists: empty.
    for (path, field) in [
        ("/v1/assets", "assets"),
        ("/v1/assets?q=SHARED", "assets"),
        ("/v1/issues", "issues"),
        ("/v1/maintenance-schedules/due?before=2100-01-01T00:00:00Z", "maintenance_schedules"),
    ] {
        let (s, body) = app.get(k, path).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body[field].as_array().map(Vec::len), Some(0), "{a_tier}->{b_tier} GET {path} leaked {body}");
    }
    // Writes: 404, and A's rows are unchanged.
    let writes = [
        (Method::PATCH, format!("/v1/assets/{asset}"), Some(json!({"name": "pwned"}))),
        (Method::PATCH, format!("/v1/maintenance-schedules/{sched}"), Some(json!({"title": "pwned"}))),
        (Method::PATCH, format!("/v1/issues/{issue}"), Some(json!({"title": "pwned"}))),
        (Method::POST, format!("/v1/assets/{asset}/issues"), Some(json!({"title": "pwned"}))),
        (
            Method::POST,
            format!("/v1/assets/{asset}/maintenance-schedules"),
            Some(json!({"title": "pwned", "interval_days": 1})),
        ),
        (Method::DELETE, format!("/v1/maintenance-schedules/{sched}"), None),
        (Method::DELETE, format!("/v1/issues/{issue}"), None),
        (Method::DELETE, format!("/v1/assets/{asset}"), None),
    ];
    for (method, path, body) in writes {
        let (s, _) = app.call(k, method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{a_tier}->{b_tier} {method} {path}");
    }
    let (_, still) = app.get(&a.key, &format!("/v1/assets/{asset}")).await;
    assert_eq!(still["name"], "Pump");
    let (_, issues) = app.get(&a.key, "/v1/issues").await;
    assert_eq!(issues["issues"].as_array().unwrap().len(), 1);
    assert_eq!(issues["issues"][0]["title"], "Leak");
    let (_, scheds) = app.get(&a.key, &format!("/v1/assets/{asset}/maintenance-schedules")).await;
    assert_eq!(scheds["maintenance_schedules"][0]["title"], "Oil");

    // Tags are unique per tenant, not globally: B may use A's tag, and B learns nothing.
    let (s, _) = app.post(k, "/v1/assets", json!({"name": "Mine", "tag": "SHARED-TAG"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, mine) = app.get(k, "/v1/assets/by-tag/SHARED-TAG").await;
    assert_eq!(mine["name"], "Mine");
    if pooled {
        let through = app.pgbouncer_transactions().await - carried;
        assert!(through >= 30, "the requests went through PgBouncer ({through} transactions)");
    }
}

#[tokio::test]
async fn through_pgbouncer_tenant_b_cannot_read_change_or_learn_of_tenant_a_rows() {
    b_cannot_reach_a_via("shared", "shared", true).await;
    b_cannot_reach_a_via("shared", "dedicated", true).await;
}

/// Through PgBouncer a read is one simple-protocol message, its values
/// written into the text: values that look like SQL stay values (each one
/// finds its own row, and only its tenant's), a tenant's statement timeout
/// goes in the same message, and a read that finds rows is one query.
#[tokio::test]
async fn through_pgbouncer_a_read_is_one_message_and_its_values_stay_values() {
    let app = spawn_app().await;
    let a = app.create_tenant("tenant-a", "shared").await;
    let b = app.create_tenant("tenant-b", "shared").await;
    let body = json!({"limits": {"statement_timeout_ms": 5000}});
    let (s, view) = app.admin_call(Method::PATCH, &format!("/v1/tenants/{}/settings", a.id), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    app.through_pgbouncer().await;
    let tricky = [
        "O'Brien",
        "back\\slash \\' and \\",
        "quote\"d",
        "'; DELETE FROM assets; --",
        "$1 $2::uuid",
        "E'\\x00'",
        "line\nbreak\ttab",
        "ünïcødé ✓",
    ];
    let mut ids = Vec::new();
    for (i, name) in tricky.iter().enumerate() {
        let (s, created) = app.post(&a.key, "/v1/assets", json!({"name": name, "tag": format!("TRICK-{i}")})).await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let encode = |v: &str| v.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    for (name, id) in tricky.iter().zip(&ids) {
        let path = format!("/v1/assets?q={}", encode(name));
        let (s, found) = app.get(&a.key, &path).await;
        assert_eq!(s, StatusCode::OK, "{name}: {found}");
        let names: Vec<&str> =
            found["assets"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec![*name], "the search for {name:?} found its row and no other");
        let (s, theirs) = app.get(&b.key, &path).await;
        assert_eq!((s, theirs["assets"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{name}");
        let (s, one) = app.get(&a.key, &format!("/v1/assets/{id}")).await;
        assert_eq!((s, one["name"].as_str()), (StatusCode::OK, Some(*name)));
    }
    assert_eq!(app.get(&a.key, "/v1/assets?limit=100").await.1["assets"].as_array().map(Vec::len), Some(tricky.len()));

    // A read that finds rows is one message, with or without a statement timeout.
    let stat = |column: &'static str| app.pgbouncer_stat(Some(&app.pool_name), column);
    let (s, mine) = app.post(&b.key, "/v1/assets", json!({"name": "B's own", "tag": "B-1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{mine}");
    for (key, id, statements) in [(&b.key, mine["id"].as_str().unwrap(), 1), (&a.key, ids[0].as_str(), 2)] {
        let (queries, transactions) = (stat("total_query_count").await, stat("total_xact_count").await);
        for _ in 0..10 {
            assert_eq!(app.get(key, &format!("/v1/assets/{id}")).await.0, StatusCode::OK);
        }
        // Two exchanges per read, each one message and its ReadyForQuery:
        // the read, and the empty Sync with which sqlx checks a connection
        // as it goes back into its pool. (Before, the request itself waited
        // for sqlx's check as the connection was taken, then BEGIN and enter,
        // the select and COMMIT, each an exchange of its own.)
        let exchanges = (stat("total_xact_count").await - transactions, stat("total_query_count").await - queries);
        assert_eq!(exchanges, (20, 20), "a read and the pool's check on return, {statements} statement(s) per read");
    }
}

#[tokio::test]
async fn tenant_b_cannot_read_change_or_learn_of_tenant_a_rows_shared_shared() {
    b_cannot_reach_a("shared", "shared").await;
}

#[tokio::test]
async fn tenant_b_cannot_read_change_or_learn_of_tenant_a_rows_shared_dedicated() {
    b_cannot_reach_a("shared", "dedicated").await;
    b_cannot_reach_a("dedicated", "shared").await;
}

#[tokio::test]
async fn tenant_b_cannot_read_change_or_learn_of_tenant_a_rows_dedicated_dedicated() {
    b_cannot_reach_a("dedicated", "dedicated").await;
}

#[tokio::test]
async fn app_role_without_a_tenant_sees_no_rows_in_any_tenant_table() {
    let app = spawn_app().await;
    let a = app.create_tenant("tenant-a", "shared").await;
    let d = app.create_tenant("tenant-d", "dedicated").await;
    app.seed(&a.key, "T-1").await;
    app.seed(&d.key, "T-1").await;
    for database in [app.pool_name.clone(), app.database_of(&d.id).await] {
        let superuser = connect(&database, false);
        let app_role = connect(&database, true);
        for table in tenantry_core::entities::TENANT_TABLES {
            assert_eq!(
                scalar(&superuser, &format!("SELECT count(*) FROM {table}")).await,
                1,
                "{database}.{table} holds the seeded row"
            );
            assert_eq!(
                scalar(&app_role, &format!("SELECT count(*) FROM {table}")).await,
                0,
                "{database}.{table} visible without a tenant"
            );
            let forced = scalar(&superuser, &format!("SELECT (relrowsecurity AND relforcerowsecurity)::int::bigint FROM pg_class WHERE relname = '{table}'")).await;
            assert_eq!(forced, 1, "{table} must FORCE row-level security");
        }
        // The app role bypasses nothing and owns nothing.
        let attrs = scalar(
            &superuser,
            "SELECT (rolsuper OR rolbypassrls)::int::bigint FROM pg_roles WHERE rolname = 'tenantry_app'",
        )
        .await;
        assert_eq!(attrs, 0);
        let owned = scalar(&superuser, "SELECT count(*) FROM pg_tables WHERE tableowner = 'tenantry_app'").await;
        assert_eq!(owned, 0);
        // The app role cannot read residency directly nor insert another tenant's rows.
        let err = sea_orm::ConnectionTrait::execute_unprepared(&app_role, "SELECT * FROM tenant_residency").await;
        assert!(err.is_err(), "tenant_residency must not be readable by the app role");
    }
}

#[tokio::test]
async fn a_tenant_entered_on_the_shared_pool_sees_only_its_own_rows() {
    let app = spawn_app().await;
    let a = app.create_tenant("tenant-a", "shared").await;
    let b = app.create_tenant("tenant-b", "shared").await;
    app.seed(&a.key, "T-1").await;
    app.seed(&b.key, "T-1").await;
    let mut conn = app_conn(&app.pool_name, false).await;
    let (_, begin) = vouched_begin(&mut conn, &a.id).await;
    run(&mut conn, &begin).await.expect("the app's gate enters A");
    for table in tenantry_core::entities::TENANT_TABLES {
        let q = format!("SELECT count(*), count(*) FILTER (WHERE tenant_id <> '{}') FROM {table}", a.id);
        let (n, other): (i64, i64) = sqlx::query_as(AssertSqlSafe(q)).fetch_one(&mut conn).await.unwrap();
        assert_eq!((n, other), (1, 0), "{table}: A sees its row and nothing of B's");
    }
    // RLS WITH CHECK: even a raw insert for B is refused while entered as A.
    let err = run(
        &mut conn,
        &format!("INSERT INTO assets (tenant_id, id, name, tag, status) VALUES ('{}', gen_random_uuid(), 'x', 'x', 'active')", b.id),
    )
    .await;
    assert!(err.is_err(), "an insert for another tenant must violate the policy");
    run(&mut conn, "ROLLBACK").await.unwrap();
    // Wrong epoch: refused with the distinct SQLSTATE, after the proof checked out.
    let (pid, n): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(&mut conn).await.unwrap();
    let call = gate::call(&gate_key(), a.id.parse().unwrap(), 2, Binding::Direct { pid: pid as u32, n }, false);
    let err = run(&mut conn, &format!("SELECT {call}")).await.unwrap_err();
    let code = match &err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("TR001"), "{err}");
}

#[tokio::test]
async fn dedicated_tenant_rows_live_in_its_own_database_not_the_shared_pool() {
    let app = spawn_app().await;
    let d = app.create_tenant("globex", "dedicated").await;
    app.seed(&d.key, "G-1").await;
    let own = connect(&app.database_of(&d.id).await, false);
    let pool = connect(&app.pool_name, false);
    for table in tenantry_core::entities::TENANT_TABLES {
        let q = format!("SELECT count(*) FROM {table} WHERE tenant_id = '{}'", d.id);
        assert_eq!(scalar(&own, &q).await, 1, "{table} in the dedicated database");
        assert_eq!(scalar(&pool, &q).await, 0, "{table} in the shared pool");
    }
}

#[tokio::test]
async fn every_table_holding_tenant_rows_forces_row_level_security_on_both_tiers() {
    let app = spawn_app().await;
    let d = app.create_tenant("rls-catalog", "dedicated").await;
    for database in [app.pool_name.clone(), app.database_of(&d.id).await] {
        let superuser = connect(&database, false);
        // Found from the catalog, so a table added by a later migration is covered.
        let unprotected = scalar(
            &superuser,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'tenant_residency' \
               AND NOT (c.relrowsecurity AND c.relforcerowsecurity \
                        AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))",
        )
        .await;
        assert_eq!(unprotected, 0, "{database}: a table with tenant_id lacks forced RLS or a policy");
        let tables = scalar(
            &superuser,
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'tenant_id' \
             AND table_name NOT IN ('tenant_residency')",
        )
        .await;
        assert!(tables >= 5, "{database}: assets, schedules, issues, overdue markers, move sentinels ({tables})");
    }
}

#[tokio::test]
async fn the_read_gate_admits_only_a_tenant_resident_at_its_epoch_and_shows_the_app_role_nothing_else() {
    let app = spawn_app().await;
    let a = app.create_tenant("gate-a", "shared").await;
    let b = app.create_tenant("gate-b", "shared").await;
    app.seed(&a.key, "A-1").await;
    app.seed(&b.key, "B-1").await;
    let superuser = connect(&app.pool_name, false);
    let mut conn = app_conn(&app.pool_name, false).await;
    let (pid, start): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(&mut conn).await.unwrap();
    let counter = std::sync::atomic::AtomicI64::new(start);
    // The app's one-statement read: A's rows behind the vouched read gate for
    // `who` at `epoch`; its count, or the SQLSTATE that refused it.
    let mut read = async |who: &str, epoch: i64| -> Result<i64, String> {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let call = gate::call(&gate_key(), who.parse().unwrap(), epoch, Binding::Direct { pid: pid as u32, n }, true);
        let q = format!("SELECT count(*) FROM assets WHERE tenant_id = '{}' AND (SELECT {call})", a.id);
        sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(&mut conn).await.map_err(|e| match e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
            other => other.to_string(),
        })
    };
    let residency = |set: &str| format!("UPDATE tenant_residency SET {set} WHERE tenant_id = '{}'", a.id);
    assert_eq!(read(&a.id, 1).await, Ok(1), "resident at its epoch: admitted");
    assert_eq!(read(&a.id, 2).await, Err("TR001".into()), "another epoch: refused, saying why");
    assert_eq!(read(&b.id, 1).await, Ok(0), "admitted as B, A's rows stay hidden");

    // A move's fence refuses reads until its deadline; a lapsed fence admits
    // again (nobody finished the move); a sealed source refuses for good.
    superuser
        .execute_unprepared(&residency(
            "state = 'fenced', fenced_by = gen_random_uuid(), fenced_until = now() + interval '1 hour'",
        ))
        .await
        .unwrap();
    assert_eq!(read(&a.id, 1).await, Err("TR001".into()), "fenced: refused");
    superuser.execute_unprepared(&residency("fenced_until = now() - interval '1 second'")).await.unwrap();
    assert_eq!(read(&a.id, 1).await, Ok(1), "fence past its deadline: admitted");
    superuser.execute_unprepared(&residency("state = 'fenced', fenced_until = NULL")).await.unwrap();
    assert_eq!(read(&a.id, 1).await, Err("TR001".into()), "a fence without a deadline (an erasure's) holds");
    superuser
        .execute_unprepared(&residency(
            "state = 'moved', moved_to = gen_random_uuid(), moved_epoch = 2, fenced_until = NULL",
        ))
        .await
        .unwrap();
    assert_eq!(read(&a.id, 1).await, Err("TR002".into()), "moved: refused, naming the new home");

    // The view names admitted tenants and epochs only (the app's registry knows
    // as much); states, fences and new homes stay in tenant_residency.
    let columns = scalar(
        &superuser,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'tenantry_admitted' \
         AND column_name NOT IN ('tenant_id', 'epoch')",
    )
    .await;
    assert_eq!(columns, 0);
    let app_role = connect(&app.pool_name, true);
    assert_eq!(scalar(&app_role, "SELECT count(*) FROM tenantry_admitted").await, 1, "B only, A is moved");
    let err = sea_orm::ConnectionTrait::execute_unprepared(&app_role, "UPDATE tenantry_admitted SET epoch = 9").await;
    assert!(err.is_err(), "the view is read-only for the app role");
}
