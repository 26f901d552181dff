//! Legacy estates (issue 13, first part): registering a schema-per-tenant
//! estate the harness builds, with its connection and what adoption needs
//! checked at once; its sources found, mapped and sized, with the problems
//! that would stop an adoption; the dry run of adopting one.

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::helpers::{TestApp, cluster, connect, scalar, spawn_app};

/// A legacy schema-per-tenant database: integer ids, the product's tables, no
/// `tenant_id`. `tenant_acme` is clean (with an extra `color` column on
/// assets); `tenant_broken` has a table without a primary key, a duplicate
/// tag, an issue whose asset is gone, and a table that maps nowhere.
pub(crate) async fn legacy_estate() -> String {
    let db = tenantry::testkit::unique("legacy");
    let postgres = connect("postgres", false);
    postgres.execute_unprepared(&format!("CREATE DATABASE {db}")).await.unwrap();
    let legacy = connect(&db, false);
    for schema in ["tenant_acme", "tenant_broken", "other_stuff"] {
        legacy
            .execute_unprepared(&format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.assets (id serial PRIMARY KEY, name text NOT NULL, tag text NOT NULL,
                     status text NOT NULL DEFAULT 'active', color text);
                 CREATE TABLE {schema}.maintenance_schedules (id serial PRIMARY KEY, asset_id integer NOT NULL,
                     title text NOT NULL, interval_days integer NOT NULL, next_due_at timestamptz NOT NULL);
                 CREATE TABLE {schema}.asset_issues (id serial PRIMARY KEY, asset_id integer NOT NULL,
                     title text NOT NULL, status text NOT NULL DEFAULT 'open', priority text NOT NULL DEFAULT 'low');
                 INSERT INTO {schema}.assets (name, tag, color) VALUES ('Pump', 'P-1', 'red'), ('Valve', 'V-1', NULL);
                 INSERT INTO {schema}.maintenance_schedules (asset_id, title, interval_days, next_due_at)
                     VALUES (1, 'Oil', 30, '2027-01-01');
                 INSERT INTO {schema}.asset_issues (asset_id, title) VALUES (1, 'Leak');"
            ))
            .await
            .unwrap();
    }
    legacy
        .execute_unprepared(
            "ALTER TABLE tenant_broken.asset_issues DROP CONSTRAINT asset_issues_pkey;
             INSERT INTO tenant_broken.assets (name, tag) VALUES ('Twin', 'P-1');
             INSERT INTO tenant_broken.asset_issues (asset_id, title) VALUES (99, 'Orphan');
             CREATE TABLE tenant_broken.invoices (id serial PRIMARY KEY, total numeric);",
        )
        .await
        .unwrap();
    db
}

pub(crate) fn estate_body(name: &str, db: &str, user: &str, password: &str) -> Value {
    json!({"name": name, "host": "127.0.0.1", "port": cluster().cluster.port(), "database": db,
           "user": user, "password": password, "layout": "schema_per_tenant", "pattern": "tenant\\_%"})
}

pub(crate) async fn add(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.admin_call(Method::POST, "/v1/estates", Some(body)).await
}

#[tokio::test]
async fn an_estate_is_registered_checked_and_its_sources_mapped_with_their_problems() {
    let app = spawn_app().await;
    let db = legacy_estate().await;
    let su = &cluster().secrets.superuser_password;
    let (s, estate) = add(&app, estate_body("legacy-one", &db, "postgres", su)).await;
    assert_eq!(s, StatusCode::CREATED, "{estate}");
    assert!(!estate.to_string().contains(su.as_str()), "the password is never returned: {estate}");
    assert_eq!(estate["layout"], "schema_per_tenant");
    let id = estate["id"].as_str().unwrap().to_string();
    let registry = connect(&app.cp.config().registry_database, false);
    let stored = scalar(
        &registry,
        &format!("SELECT count(*) FROM estates WHERE position(convert_to('{su}', 'UTF8') in password_enc) > 0"),
    )
    .await;
    assert_eq!(stored, 0, "the password is not kept in the clear");
    let audited = scalar(
        &registry,
        &format!("SELECT count(*) FROM audit_log WHERE action = 'estate.add' AND details::text NOT LIKE '%{su}%'"),
    )
    .await;
    assert_eq!(audited, 1, "the addition is audited, without the password");
    let (s, list) = app.admin_call(Method::GET, "/v1/estates", None).await;
    assert_eq!((s, list["estates"].as_array().unwrap().len()), (StatusCode::OK, 1));

    let (s, body) = app.admin_call(Method::GET, &format!("/v1/estates/{id}/sources"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let sources = body["sources"].as_array().unwrap();
    let names: Vec<&str> = sources.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tenant_acme", "tenant_broken"], "the pattern selects the tenants' schemas only");
    let acme = &sources[0];
    assert_eq!(acme["state"], "not_adopted");
    assert_eq!(acme["problems"], json!([]), "{acme}");
    let assets = acme["tables"].as_array().unwrap().iter().find(|t| t["legacy"] == "assets").unwrap();
    assert_eq!((assets["target"].clone(), assets["rows"].clone()), (json!("assets"), json!(2)));
    assert!(assets["bytes"].as_i64().unwrap() > 0);
    assert!(assets["primary_key"].as_str().unwrap().contains("uuid v5"), "{assets}");
    assert!(
        assets["columns"].as_array().unwrap().contains(&json!({"legacy": "color", "target": "attributes.color"})),
        "a legacy column with no target is kept in attributes: {assets}"
    );
    let problems = sources[1]["problems"].to_string();
    for expected in [
        "`asset_issues` has no primary key",
        "tag(s) used by more than one row",
        "whose asset does not exist",
        "table `invoices` does not map",
    ] {
        assert!(problems.contains(expected), "{expected}: {problems}");
    }

    let (s, plan) = app
        .admin_call(Method::GET, &format!("/v1/estates/{id}/adoption-plan?source=tenant_acme&tier=shared"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["ready"], true, "{plan}");
    assert_eq!(plan["target"], app.pool_name.as_str());
    assert!(plan["estimated_copy_secs"].as_f64().is_some() && plan["expected_pause_ms"].as_u64().unwrap() < 1000);
    let (s, plan) = app
        .admin_call(Method::GET, &format!("/v1/estates/{id}/adoption-plan?source=tenant_broken&tier=dedicated"), None)
        .await;
    assert_eq!((s, plan["ready"].clone()), (StatusCode::OK, json!(false)), "{plan}");
    assert_eq!(plan["target"], "new dedicated database");
    let (s, _) = app
        .admin_call(Method::GET, &format!("/v1/estates/{id}/adoption-plan?source=tenant_nobody&tier=shared"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a source that does not exist");

    // The console shows the estate, its sources and the dry run.
    let (http, cookie) = crate::console::http_session(&app).await;
    let page = |path: String| {
        let (http, cookie, base) = (http.clone(), cookie.clone(), app.admin.clone());
        async move {
            let r = http.get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (s, list) = page("/console/estates".into()).await;
    assert!(s == StatusCode::OK && list.contains("legacy-one"), "{list}");
    let (s, one) = page(format!("/console/estates/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    for expected in ["tenant_acme", "tenant_broken", "has no primary key", "Dry run"] {
        assert!(one.contains(expected), "{expected} on the estate page");
    }
    let (s, dry) = page(format!("/console/estates/{id}/plan?source=tenant_acme")).await;
    assert!(s == StatusCode::OK && dry.contains("Preflight checks") && dry.contains("Ready."), "{dry}");

    // The same through the CLI.
    let cli = |args: Vec<String>| {
        let (admin, token) = (app.admin.clone(), app.token.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
                .arg("estates")
                .args(&args)
                .env("TENANTRY_ADMIN_URL", admin)
                .env("TENANTRY_ADMIN_TOKEN", token)
                .output()
                .expect("run the CLI")
        })
    };
    let out = cli(vec!["sources".into(), id.clone()]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tenant_acme [not_adopted]") && stdout.contains("problem: table `invoices`"), "{stdout}");
    let out = cli(vec!["plan".into(), id.clone(), "--source".into(), "tenant_acme".into()]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("[ok  ] source_maps") && stdout.contains("ready"), "{stdout}");

    let (s, _) = app.admin_call(Method::DELETE, &format!("/v1/estates/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.admin_call(Method::GET, &format!("/v1/estates/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_estate_is_refused_with_a_422_naming_what_is_wrong() {
    let app = spawn_app().await;
    let db = legacy_estate().await;
    let su = &cluster().secrets.superuser_password;
    // A role that may log in but neither replicate nor create a publication.
    let postgres = connect("postgres", false);
    let reader = tenantry::testkit::unique("reader");
    postgres.execute_unprepared(&format!("CREATE ROLE {reader} LOGIN PASSWORD 'reader-pw'")).await.unwrap();
    let dead_port = tenantry::testkit::free_port();
    let cases = [
        (json!({"port": dead_port}), "estate_unreachable", "127.0.0.1"),
        (json!({"password": "wrong"}), "estate_unreachable", "password authentication failed"),
        (json!({"database": "no_such_database"}), "estate_unreachable", "does not exist"),
        (json!({"user": reader, "password": "reader-pw"}), "estate_not_ready", "may not replicate"),
        (json!({"user": reader, "password": "reader-pw"}), "estate_not_ready", "may not create a publication"),
        (json!({"mapping": {"tables": {"invoices": {}}}}), "invalid_mapping", "not a Tenantry table"),
        (json!({"name": ""}), "invalid_estate", "`name`"),
    ];
    for (i, (change, code, words)) in cases.into_iter().enumerate() {
        let mut body = estate_body(&format!("bad-{i}"), &db, "postgres", su);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, answer) = add(&app, body.clone()).await;
        assert_eq!(
            (s, answer["error"]["code"].as_str().unwrap_or("")),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{change}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{change}: {message}");
        assert!(!message.contains("reader-pw") && !message.contains(su.as_str()), "no secret echoed: {message}");
    }
    let (s, _) = add(&app, estate_body("twice", &db, "postgres", su)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, answer) = add(&app, estate_body("twice", &db, "postgres", su)).await;
    assert_eq!((s, answer["error"]["code"].clone()), (StatusCode::CONFLICT, json!("estate_exists")));
    let missing = uuid::Uuid::now_v7();
    for path in [format!("/v1/estates/{missing}"), format!("/v1/estates/{missing}/sources")] {
        assert_eq!(app.admin_call(Method::GET, &path, None).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let (_, list) = app.admin_call(Method::GET, "/v1/estates", None).await;
    assert_eq!(list["estates"].as_array().unwrap().len(), 1, "no half-made estate remains");
}

/// The control plane reads a legacy source's changes as their subscriber:
/// a pgoutput slot peeked over an ordinary connection, decoded here.
#[tokio::test]
async fn a_legacy_sources_changes_are_read_from_a_pgoutput_slot_and_decoded() {
    use tenantry_control_plane::estates::pgoutput::{Message, Value, decode};
    let db = legacy_estate().await;
    let legacy = connect(&db, false);
    let slot = tenantry::testkit::unique("adopt");
    legacy.execute_unprepared(&format!("CREATE PUBLICATION {slot} FOR TABLE tenant_acme.assets")).await.unwrap();
    // Its own statement: a slot cannot be made in a transaction that wrote.
    legacy
        .execute_unprepared(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"))
        .await
        .unwrap();
    legacy
        .execute_unprepared(
            "INSERT INTO tenant_acme.assets (name, tag) VALUES ('Fan', 'F-1');
             UPDATE tenant_acme.assets SET name = 'Big pump' WHERE id = 1;
             DELETE FROM tenant_acme.assets WHERE id = 2;",
        )
        .await
        .unwrap();
    // The SQL interface decodes up to the flushed WAL (the test cluster
    // commits asynchronously): wait until the transaction is there.
    let peek = format!(
        "SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, \
         'proto_version', '1', 'publication_names', '{slot}')"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let rows = legacy
            .query_all_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, peek.clone()))
            .await
            .unwrap();
        if rows.len() >= 6 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let messages: Vec<Message> =
        rows.iter().map(|r| decode(&r.try_get::<Vec<u8>>("", "data").unwrap()).expect("decodes")).collect();
    let relation = messages.iter().find_map(|m| match m {
        Message::Relation(r) => Some(r.clone()),
        _ => None,
    });
    let relation = relation.unwrap_or_else(|| panic!("the relation is described: {messages:?}"));
    assert_eq!((relation.schema.as_str(), relation.name.as_str()), ("tenant_acme", "assets"));
    let names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "tag", "status", "color"]);
    assert!(relation.columns[0].key, "the primary key is the identity");
    let changes: Vec<&Message> = messages
        .iter()
        .filter(|m| matches!(m, Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. }))
        .collect();
    assert_eq!(changes.len(), 3, "{messages:?}");
    let Message::Insert { new, .. } = changes[0] else { panic!("{:?}", changes[0]) };
    assert_eq!((&new[1], &new[2]), (&Value::Text("Fan".into()), &Value::Text("F-1".into())));
    let Message::Update { old, new, .. } = changes[1] else { panic!("{:?}", changes[1]) };
    assert_eq!((old, &new[0], &new[1]), (&None, &Value::Text("1".into()), &Value::Text("Big pump".into())));
    let Message::Delete { old, .. } = changes[2] else { panic!("{:?}", changes[2]) };
    assert_eq!(old[0], Value::Text("2".into()), "a delete names the key");
    // One simple-protocol message, so one transaction: begin, relation, three changes, commit.
    assert!(matches!(messages.first(), Some(Message::Begin { .. })), "{messages:?}");
    assert!(matches!(messages.last(), Some(Message::Commit { .. })), "{messages:?}");
    legacy.execute_unprepared(&format!("SELECT pg_drop_replication_slot('{slot}')")).await.unwrap();
}

/// Database per tenant: every database matching the pattern is a source,
/// its `public` tables mapped the same way.
#[tokio::test]
async fn a_database_per_tenant_estate_lists_each_database_as_a_source() {
    let app = spawn_app().await;
    let prefix = tenantry::testkit::unique("legacydb");
    let postgres = connect("postgres", false);
    for t in ["acme", "globex"] {
        let db = format!("{prefix}_{t}");
        postgres.execute_unprepared(&format!("CREATE DATABASE {db}")).await.unwrap();
        connect(&db, false)
            .execute_unprepared(
                "CREATE TABLE assets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), label text NOT NULL,
                     tag text NOT NULL, status text NOT NULL DEFAULT 'active');
                 INSERT INTO assets (label, tag) VALUES ('Pump', 'P-1'), ('Valve', 'V-1'), ('Fan', 'F-1');",
            )
            .await
            .unwrap();
    }
    let mut body = estate_body("per-db", "postgres", "postgres", &cluster().secrets.superuser_password);
    body["layout"] = json!("database_per_tenant");
    body["pattern"] = json!(format!("{prefix}\\_%"));
    body["mapping"] = json!({"tables": {"assets": {"columns": {"name": "label"}}}});
    let (s, estate) = add(&app, body).await;
    assert_eq!(s, StatusCode::CREATED, "{estate}");
    let (s, body) =
        app.admin_call(Method::GET, &format!("/v1/estates/{}/sources", estate["id"].as_str().unwrap()), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let sources = body["sources"].as_array().unwrap();
    let names: Vec<String> = sources.iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, [format!("{prefix}_acme"), format!("{prefix}_globex")]);
    for s in sources {
        assert_eq!(s["problems"], json!([]), "{s}");
        let assets = &s["tables"][0];
        assert_eq!((assets["target"].clone(), assets["rows"].clone()), (json!("assets"), json!(3)));
        assert_eq!(assets["primary_key"], "id uuid (kept)");
        assert!(
            assets["columns"].as_array().unwrap().contains(&json!({"legacy": "label", "target": "name"})),
            "the renamed column maps: {assets}"
        );
    }
}

/// A transaction scoped to `tenant` (RLS is forced on the owner too).
async fn in_scope(
    conn: &mut sea_orm::sqlx::postgres::PgConnection,
    tenant: uuid::Uuid,
) -> sea_orm::sqlx::Transaction<'_, sea_orm::sqlx::Postgres> {
    use sea_orm::sqlx::Connection;
    let mut tx = conn.begin().await.unwrap();
    sea_orm::sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Legacy rows mapped and applied to a tenant on the shared pool: ids become
/// UUID v5 of "<table>:<id>", foreign keys follow, a column with no target
/// lands in attributes; applying again changes nothing; updates and deletes
/// go by the mapped id. The app API then serves them to the tenant.
#[tokio::test]
async fn mapped_legacy_rows_apply_idempotently_and_the_tenant_serves_them() {
    use sea_orm::sqlx::{Connection, postgres::PgConnectOptions};
    use tenantry_control_plane::estates::{apply, keys::Key, legacy::Table, mapping::TableMapping};
    use tenantry_control_plane::estates::{pgoutput::Value, rows::map_row};
    let app = spawn_app().await;
    let t = app.create_tenant("adopted", "shared").await;
    let tenant: uuid::Uuid = t.id.parse().unwrap();
    let tc = cluster();
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(tc.cluster.port())
        .database(&app.pool_name)
        .username("tenantry_owner")
        .password(&tc.secrets.owner_password);
    let mut conn = sea_orm::sqlx::postgres::PgConnection::connect_with(&opts).await.unwrap();
    let text = |v: &str| Value::Text(v.into());
    let asset_cols: Vec<String> = ["id", "name", "tag", "status", "color"].map(String::from).into();
    let sched_cols: Vec<String> = ["id", "asset_id", "title", "interval_days", "next_due_at"].map(String::from).into();
    let int_key = Key::new(&[("id".into(), "integer".into())]).unwrap();
    let table = |target: &'static str, columns: &[String], parent: Option<Key>| Table {
        target,
        legacy: target.into(),
        key: int_key.clone(),
        parent,
        columns: columns.to_vec(),
        mapping: TableMapping::default(),
    };
    let assets = table("assets", &asset_cols, None);
    let schedules =
        table("maintenance_schedules", &sched_cols, Some(Key::referring(&int_key, vec!["asset_id".into()])));
    let pump = |name: &str| {
        map_row(tenant, &assets, &asset_cols, &[text("42"), text(name), text("P-1"), text("active"), text("red")])
            .unwrap()
    };
    let oil = map_row(
        tenant,
        &schedules,
        &sched_cols,
        &[text("7"), text("42"), text("Oil"), text("30"), text("2027-01-01 00:00:00+00")],
    )
    .unwrap();
    // As the owner, in the tenant's scope: RLS is forced on the owner too.
    let apply_in_scope = async |conn: &mut sea_orm::sqlx::postgres::PgConnection,
                                table: &str,
                                rows: Vec<serde_json::Map<String, serde_json::Value>>| {
        let mut tx = in_scope(conn, tenant).await;
        let n = apply::upsert(&mut tx, table, &rows).await.unwrap();
        tx.commit().await.unwrap();
        n
    };
    assert_eq!(apply_in_scope(&mut conn, "assets", vec![pump("Pump")]).await, 1);
    assert_eq!(apply_in_scope(&mut conn, "maintenance_schedules", vec![oil.clone()]).await, 1);
    assert_eq!(apply_in_scope(&mut conn, "assets", vec![pump("Pump")]).await, 1, "a repeat lands on the same row");

    let id = uuid::Uuid::new_v5(&tenant, b"assets:42");
    let (s, asset) = app.get(&t.key, "/v1/assets/by-tag/P-1").await;
    assert_eq!(s, StatusCode::OK, "{asset}");
    assert_eq!(asset["id"], id.to_string(), "integer ids become UUID v5 of \"assets:42\"");
    assert_eq!(asset["attributes"], json!({"color": "red"}));
    assert_eq!(
        (asset["category"].clone(), asset["name"].clone()),
        (json!(""), json!("Pump")),
        "defaults where the legacy row says nothing"
    );
    let (_, scheds) = app.get(&t.key, &format!("/v1/assets/{id}/maintenance-schedules")).await;
    assert_eq!(scheds["maintenance_schedules"][0]["title"], "Oil", "the foreign key followed: {scheds}");
    assert_eq!(app.get(&t.key, "/v1/assets").await.1["assets"].as_array().unwrap().len(), 1);

    apply_in_scope(&mut conn, "assets", vec![pump("Big pump")]).await;
    assert_eq!(app.get(&t.key, "/v1/assets/by-tag/P-1").await.1["name"], "Big pump", "an update by the mapped id");
    let mut tx = in_scope(&mut conn, tenant).await;
    assert_eq!(apply::delete(&mut tx, "assets", tenant, &[id]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(app.get(&t.key, "/v1/assets/by-tag/P-1").await.0, StatusCode::NOT_FOUND, "a delete by the mapped id");

    // The initial copy's bulk path: a plain insert, and the same page written
    // again (a crash between its write and its cursor) lands on the same rows.
    let page: Vec<_> = ["Pump", "Valve"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            map_row(
                tenant,
                &assets,
                &asset_cols,
                &[text(&format!("{}", 100 + i)), text(name), text(&format!("B-{i}")), text("active"), text("blue")],
            )
            .unwrap()
        })
        .collect();
    let batch = apply::CopyBatch::new("assets", &page).unwrap().expect("two rows");
    for round in ["first", "again"] {
        let mut tx = in_scope(&mut conn, tenant).await;
        assert_eq!(apply::insert_bulk(&mut tx, &batch).await.unwrap(), 2, "{round}");
        tx.commit().await.unwrap();
    }
    let (_, all) = app.get(&t.key, "/v1/assets").await;
    let names: std::collections::BTreeSet<_> =
        all["assets"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["Pump".to_string(), "Valve".to_string()].into(), "each row once: {all}");
}

/// The legacy fence: a trigger refuses every write to the source's tables
/// with an error naming the adoption (the tables' owner included), waits for
/// in-flight writes (bounded), leaves other sources alone, and lifts cleanly.
#[tokio::test]
async fn the_legacy_fence_refuses_writes_naming_the_adoption_and_lifts() {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
    use sea_orm::sqlx::{self, Connection};
    use tenantry_control_plane::estates::fence;
    let db = legacy_estate().await;
    let tc = cluster();
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(tc.cluster.port())
        .database(&db)
        .username("postgres")
        .password(&tc.secrets.superuser_password);
    let mut control = PgConnection::connect_with(&opts).await.unwrap();
    let mut legacy_app = PgConnection::connect_with(&opts).await.unwrap();
    let tables: Vec<String> = ["assets", "maintenance_schedules", "asset_issues"].map(String::from).into();
    let op = uuid::Uuid::now_v7();

    // An in-flight legacy write holds the fence back, within its bound.
    let mut writing = legacy_app.begin().await.unwrap();
    sqlx::query("INSERT INTO tenant_acme.assets (name, tag) VALUES ('Late', 'L-1')")
        .execute(&mut *writing)
        .await
        .unwrap();
    let waited = fence::fence(&mut control, "tenant_acme", &tables, op, 200).await.unwrap_err();
    assert_eq!(
        waited.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55P03"),
        "the fence waits for in-flight writes: {waited}"
    );
    writing.commit().await.unwrap();
    fence::fence(&mut control, "tenant_acme", &tables, op, 2000).await.unwrap();
    fence::fence(&mut control, "tenant_acme", &tables, op, 2000).await.expect("repeatable");

    for sql in [
        "INSERT INTO tenant_acme.assets (name, tag) VALUES ('New', 'N-1')",
        "UPDATE tenant_acme.asset_issues SET title = 'x'",
        "DELETE FROM tenant_acme.maintenance_schedules",
        "TRUNCATE tenant_acme.asset_issues",
    ] {
        let err = sqlx::raw_sql(sql).execute(&mut legacy_app).await.unwrap_err();
        let db_err = err.as_database_error().expect("a database error");
        assert_eq!(db_err.code().as_deref(), Some(fence::FENCED), "{sql}");
        assert!(
            db_err.message().contains(&op.to_string()) && db_err.message().contains("adopted"),
            "{}",
            db_err.message()
        );
    }
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenant_acme.assets").fetch_one(&mut legacy_app).await.unwrap();
    assert_eq!(rows, 3, "reads go on; the write acknowledged before the fence is there");
    sqlx::raw_sql("INSERT INTO tenant_broken.assets (name, tag) VALUES ('Other', 'O-1')")
        .execute(&mut legacy_app)
        .await
        .expect("another source is not fenced");

    fence::lift(&mut control, "tenant_acme", op).await.unwrap();
    sqlx::raw_sql("INSERT INTO tenant_acme.assets (name, tag) VALUES ('After', 'A-1')")
        .execute(&mut legacy_app)
        .await
        .expect("writes again once lifted");
}
