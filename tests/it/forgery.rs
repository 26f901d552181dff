//! An attacker with SQL injection: arbitrary SQL as the app role on a
//! connection to a backend, inside or outside a legitimate transaction. Each
//! test is one way to forge another tenant's context (tenant schema 6, the
//! vouched gate); each asserts that tenant B's rows stay unseen, unchanged and
//! unplanted, beside a control in which the app's own gate reads A's rows.

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Row};
use tenantry_core::entities::TENANT_TABLES;
use tenantry_core::gate::{self, Binding, GateKeys};
use uuid::Uuid;

use crate::helpers::*;

/// What the current transaction of `conn` can do to `victim`'s rows: rows
/// seen (over every tenant table, with no filter), rows changed, rows
/// planted. Each probe runs under a savepoint, so a refusal (an error) is a
/// zero and the transaction goes on.
async fn reach(conn: &mut PgConnection, victim: &str) -> (i64, u64, u64) {
    let mut seen = 0;
    for table in TENANT_TABLES {
        run(conn, "SAVEPOINT probe").await.expect("savepoint");
        match sqlx::query(AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&mut *conn).await {
            Ok(row) => seen += row.get::<i64, _>(0),
            Err(_) => run(conn, "ROLLBACK TO SAVEPOINT probe").await.expect("rollback to savepoint"),
        }
    }
    let changed = affected(conn, format!("UPDATE assets SET name = 'pwned' WHERE tenant_id = '{victim}'")).await;
    let planted = affected(
        conn,
        format!(
            "INSERT INTO assets (tenant_id, id, name, tag, status) \
             VALUES ('{victim}', gen_random_uuid(), 'x', 'PLANTED', 'active')"
        ),
    )
    .await;
    (seen, changed, planted)
}

/// Rows a statement affected under a savepoint; a refusal is 0.
async fn affected(conn: &mut PgConnection, sql: String) -> u64 {
    run(conn, "SAVEPOINT probe").await.expect("savepoint");
    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
        Ok(done) => done.rows_affected(),
        Err(_) => {
            run(conn, "ROLLBACK TO SAVEPOINT probe").await.expect("rollback to savepoint");
            0
        }
    }
}

/// A, B with one asset each on the shared pool; B's id.
async fn two_tenants() -> (TestApp, Created, Created) {
    let app = spawn_app().await;
    let a = app.create_tenant("victim-a", "shared").await;
    let b = app.create_tenant("attacker-b", "shared").await;
    app.seed(&a.key, "A-1").await;
    app.seed(&b.key, "B-1").await;
    (app, a, b)
}

/// Every row `tenant` has on the shared pool, over every tenant table.
async fn own_rows(app: &TestApp, tenant: &Created) -> i64 {
    let superuser = connect(&app.pool_name, false);
    let mut n = 0;
    for table in TENANT_TABLES {
        n += scalar(&superuser, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{}'", tenant.id)).await;
    }
    n
}

async fn assert_untouched(app: &TestApp, victim: &Created) {
    let superuser = connect(&app.pool_name, false);
    let q = format!(
        "SELECT count(*) FROM assets WHERE tenant_id = '{}' AND (name = 'pwned' OR tag = 'PLANTED')",
        victim.id
    );
    assert_eq!(scalar(&superuser, &q).await, 0, "the victim's rows are as they were");
}

#[tokio::test]
async fn a_bare_set_config_or_set_of_another_tenant_sees_changes_and_plants_nothing() {
    let (app, a, b) = two_tenants().await;
    let mut conn = app_conn(&app.pool_name, false).await;
    for forge in [
        format!("BEGIN; SELECT set_config('app.tenant_id', '{}', true)", a.id),
        format!("BEGIN; SET LOCAL app.tenant_id = '{}'", a.id),
        format!("BEGIN; SET app.tenant_id = '{}'", a.id),
        // Another spelling of the same uuid, with the old context GUC too.
        format!("BEGIN; SELECT set_config('app.tenant_id', '{{{}}}', true)", a.id.to_uppercase()),
    ] {
        run(&mut conn, &forge).await.expect("the app role may set its own settings");
        assert_eq!(reach(&mut conn, &a.id).await, (0, 0, 0), "{forge}");
        run(&mut conn, "ROLLBACK; RESET app.tenant_id").await.unwrap();
    }
    // Control: the app's own gate for B reads B's row, and still none of A's.
    let (_, begin) = vouched_begin(&mut conn, &b.id).await;
    run(&mut conn, &begin).await.expect("the app's proof is accepted");
    let row: i64 = sqlx::query_scalar("SELECT count(*) FROM assets").fetch_one(&mut conn).await.unwrap();
    assert_eq!(row, 1, "B's own asset");
    assert_eq!(reach(&mut conn, &a.id).await, (own_rows(&app, &b).await, 0, 0), "B sees its own rows, nothing of A's");
    run(&mut conn, "ROLLBACK").await.unwrap();
    assert_untouched(&app, &a).await;
}

#[tokio::test]
async fn no_function_the_app_role_may_execute_sets_another_tenants_context() {
    let (app, a, _b) = two_tenants().await;
    let mut conn = app_conn(&app.pool_name, false).await;
    // Every function of Tenantry's the app role may execute (PostgreSQL's own
    // are the set_config test's): a new one fails this test until it is
    // called below.
    let callable: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND has_function_privilege(p.oid, 'EXECUTE') ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        callable,
        [
            "tenantry_current_tenant",
            "tenantry_gate",
            "tenantry_gate_claim",
            "tenantry_gate_claim_digest",
            "tenantry_gate_digest",
            "tenantry_gate_open",
            "tenantry_gate_window",
            "tenantry_lock_key"
        ]
    );
    let key = gate_key();
    let (pid, n): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(&mut conn).await.unwrap();
    let tenant: Uuid = a.id.parse().unwrap();
    let forged = "'\\x00'::bytea".to_string();
    let garbage = format!("'\\x{}'::bytea", "ab".repeat(32));
    // A proof made with the right message under another key.
    let other = GateKeys { current: "not-the-gate-key-not-the-gate-key".into(), previous: None }.signer();
    let wrong_key = gate::call(&other, tenant, 1, Binding::Direct { pid: pid as u32, n }, false);
    let attempts = [
        format!("SELECT tenantry_gate('{tenant}', 1, {kid}, {n}, NULL, NULL, {forged}, NULL)", kid = key.kid()),
        format!("SELECT tenantry_gate('{tenant}', 1, {kid}, {n}, NULL, NULL, {garbage}, true)", kid = key.kid()),
        format!(
            "SELECT tenantry_gate('{tenant}', 1, {kid}, NULL, '{}', 0, {garbage}, true)",
            Uuid::new_v4(),
            kid = key.kid()
        ),
        format!(
            "SELECT tenantry_gate_claim('{tenant}', 1, {kid}, '{}', 0, {garbage})",
            Uuid::new_v4(),
            kid = key.kid()
        ),
        format!("SELECT tenantry_gate_claim_digest('{}', '{tenant}', 1)", Uuid::new_v4()),
        format!("SELECT {wrong_key}"),
        format!("SELECT tenantry_gate('{tenant}', 1, 0, {n}, NULL, NULL, NULL, true)"),
        format!("SELECT tenantry_gate_open(), set_config('app.tenant_id', '{tenant}', true)"),
        format!(
            "SELECT tenantry_current_tenant(), set_config('app.tenant_id', '{tenant}', true), tenantry_current_tenant()"
        ),
        format!("SELECT tenantry_gate_digest('{tenant}'), tenantry_lock_key('{tenant}'), tenantry_gate_window()"),
        format!(
            "SELECT set_config('app.tenant_id', '{tenant}', true), \
             setval('tenantry_gate.t' || pg_backend_pid(), tenantry_gate_digest('{tenant}'))"
        ),
    ];
    for attempt in &attempts {
        run(&mut conn, "BEGIN").await.unwrap();
        let _ = run(&mut conn, &format!("SAVEPOINT f; {attempt}")).await;
        let _ = run(&mut conn, "ROLLBACK TO SAVEPOINT f").await;
        // Whatever the call left set, the policies see no tenant.
        let _ = run(&mut conn, &format!("SELECT set_config('app.tenant_id', '{tenant}', true)")).await;
        assert_eq!(reach(&mut conn, &a.id).await, (0, 0, 0), "{attempt}");
        run(&mut conn, "ROLLBACK").await.unwrap();
    }
    // The counter, the context and the claims are the owner's: the app role can neither
    // write nor drop them, and DISCARD TEMP leaves them.
    for tamper in [
        format!("SELECT setval('tenantry_gate.n{pid}', 1)"),
        format!("SELECT nextval('tenantry_gate.n{pid}')"),
        format!("DROP SEQUENCE tenantry_gate.t{pid}"),
        format!("ALTER SEQUENCE tenantry_gate.n{pid} RESTART"),
        "CREATE SEQUENCE tenantry_gate.mine".to_string(),
        "SELECT ipad FROM tenantry_gate_keys".to_string(),
        "SELECT * FROM tenantry_gate_nonces".to_string(),
    ] {
        assert!(run(&mut conn, &tamper).await.is_err(), "{tamper} must be refused");
    }
    run(&mut conn, "DISCARD TEMP").await.unwrap();
    // Control: the app's own gate (opened again: one attempt above did).
    let (_, begin) = vouched_begin(&mut conn, &a.id).await;
    run(&mut conn, &begin).await.expect("the app's proof is accepted");
    assert_eq!(reach(&mut conn, &a.id).await.0, own_rows(&app, &a).await, "A's gate sees A's rows");
    run(&mut conn, "ROLLBACK").await.unwrap();
    assert_untouched(&app, &a).await;
}

#[tokio::test]
async fn the_schema_5_read_gate_idiom_over_tenantry_admitted_sees_nothing() {
    let (app, a, _b) = two_tenants().await;
    let mut conn = app_conn(&app.pool_name, false).await;
    let idiom = format!(
        "SELECT count(*) FROM assets WHERE tenant_id = '{a}' AND (SELECT pg_catalog.set_config('app.tenant_id', \
         g.tenant_id::text, true) FROM tenantry_admitted g WHERE g.tenant_id = '{a}' AND g.epoch = 1) IS NOT NULL",
        a = a.id
    );
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(idiom.clone())).fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 0, "the view admits A, but a context set beside it is not vouched for");
    // And the schema-5 enter function is gone.
    let gone = run(&mut conn, &format!("SELECT tenantry_enter('{}', 1)", a.id)).await.unwrap_err();
    assert!(gone.to_string().contains("does not exist"), "{gone}");
    // Control: the same read behind the app's gate finds A's asset.
    let (pid, n): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(&mut conn).await.unwrap();
    let call = gate::call(&gate_key(), a.id.parse().unwrap(), 1, Binding::Direct { pid: pid as u32, n }, true);
    let gated = format!("SELECT count(*) FROM assets WHERE tenant_id = '{}' AND (SELECT {call})", a.id);
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(gated)).fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_gate_replayed_from_pg_stat_activity_on_another_connection_sees_nothing() {
    let (app, a, _b) = two_tenants().await;
    // The app's connection enters A and stays in its transaction, so its
    // statement sits in pg_stat_activity, where the app role reads it.
    let mut app_side = app_conn(&app.pool_name, false).await;
    let (app_pid, begin) = vouched_begin(&mut app_side, &a.id).await;
    run(&mut app_side, &begin).await.unwrap();
    let mut attacker = app_conn(&app.pool_name, false).await;
    let seen: String = sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind(app_pid)
        .fetch_one(&mut attacker)
        .await
        .unwrap();
    assert!(seen.contains("tenantry_gate("), "the app's gate is visible: {seen}");
    // Replayed as it is, and with this connection's gate opened first.
    for prepare in ["", "SELECT tenantry_gate_open();"] {
        let replay = format!("{prepare}BEGIN; SELECT tenantry_gate({}", seen.split_once("tenantry_gate(").unwrap().1);
        let refused = run(&mut attacker, &replay).await.unwrap_err();
        assert!(
            refused.to_string().contains("not vouched for") || refused.to_string().contains("not open"),
            "{refused}"
        );
        run(&mut attacker, "ROLLBACK; BEGIN").await.unwrap();
        assert_eq!(reach(&mut attacker, &a.id).await, (0, 0, 0), "{replay}");
        run(&mut attacker, "ROLLBACK").await.unwrap();
    }
    // Control: the app's own transaction reads A's row.
    assert_eq!(reach(&mut app_side, &a.id).await.0, own_rows(&app, &a).await);
    run(&mut app_side, "ROLLBACK").await.unwrap();
    assert_untouched(&app, &a).await;
}

#[tokio::test]
async fn a_gate_replayed_in_a_later_transaction_on_its_own_connection_sees_nothing() {
    let (app, a, _b) = two_tenants().await;
    let mut conn = app_conn(&app.pool_name, false).await;
    let (_, begin) = vouched_begin(&mut conn, &a.id).await;
    run(&mut conn, &begin).await.unwrap();
    assert_eq!(reach(&mut conn, &a.id).await.0, own_rows(&app, &a).await, "control: the first use reads A's rows");
    let seal: String =
        sqlx::query_scalar("SELECT current_setting('app.tenant_id')").fetch_one(&mut conn).await.unwrap();
    run(&mut conn, "ROLLBACK").await.unwrap();
    // The same statement again: its counter value is spent, rolled back or not.
    let refused = run(&mut conn, &begin).await.unwrap_err();
    assert!(refused.to_string().contains("counter"), "{refused}");
    run(&mut conn, "ROLLBACK").await.unwrap();
    // The earlier transaction's context carried over by hand, in a new one.
    run(&mut conn, &format!("BEGIN; SELECT set_config('app.tenant_id', '{seal}', true)")).await.unwrap();
    assert_eq!(reach(&mut conn, &a.id).await, (0, 0, 0), "a context is its own transaction's");
    run(&mut conn, "ROLLBACK").await.unwrap();
    // After a commit as well.
    run(&mut conn, "BEGIN; COMMIT").await.unwrap();
    assert!(run(&mut conn, &begin).await.is_err());
    run(&mut conn, "ROLLBACK").await.unwrap();
    assert_untouched(&app, &a).await;
}

#[tokio::test]
async fn through_pgbouncer_a_replayed_gate_or_a_bare_set_config_sees_nothing() {
    let (app, a, _b) = two_tenants().await;
    let mut conn = app_conn(&app.pool_name, true).await;
    let bare = format!("BEGIN; SELECT set_config('app.tenant_id', '{}', true)", a.id);
    run(&mut conn, &bare).await.unwrap();
    assert_eq!(reach(&mut conn, &a.id).await, (0, 0, 0));
    run(&mut conn, "ROLLBACK").await.unwrap();
    // The app's pooled gate: the proof (a single-use nonce, the time) claimed
    // in a committed transaction of its own, then the gate on that claim.
    let tenant: Uuid = a.id.parse().unwrap();
    let binding = Binding::pooled_now();
    let claim = gate::claim(&gate_key(), tenant, 1, binding);
    let enter = format!("BEGIN; SELECT {}", gate::call(&gate_key(), tenant, 1, binding, false));
    run(&mut conn, &format!("{claim}{enter}")).await.expect("the app's pooled proof is accepted");
    assert_eq!(reach(&mut conn, &a.id).await.0, own_rows(&app, &a).await, "control: A's rows");
    // Rolled back: neither the claim nor its use is undone.
    run(&mut conn, "ROLLBACK").await.unwrap();
    for _ in 0..3 {
        // The whole message again, on whatever server connection PgBouncer gives.
        let refused = run(&mut conn, &format!("{claim}{enter}")).await.unwrap_err();
        assert!(refused.to_string().contains("used before"), "{refused}");
        run(&mut conn, "ROLLBACK").await.unwrap();
        // The gate without its claim.
        let refused = run(&mut conn, &enter).await.unwrap_err();
        assert!(refused.to_string().contains("not claimed"), "{refused}");
        run(&mut conn, "ROLLBACK; BEGIN").await.unwrap();
        assert_eq!(reach(&mut conn, &a.id).await, (0, 0, 0));
        run(&mut conn, "ROLLBACK").await.unwrap();
    }
    // A proof of another time: outside the window.
    let stale = Binding::Pooled { nonce: Uuid::new_v4(), at_ms: 1_000 };
    let old = format!("{}{}", gate::claim(&gate_key(), tenant, 1, stale), enter);
    let refused = run(&mut conn, &old).await.unwrap_err();
    assert!(refused.to_string().contains("time window"), "{refused}");
    run(&mut conn, "ROLLBACK").await.unwrap();
    assert_untouched(&app, &a).await;
}
