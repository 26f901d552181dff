//! The replication a move runs on: a publication with a row filter on the
//! source, a slot made beside it, a subscription on the target; dropped
//! again at `cleanup`, at a rollback and by the orphan sweep.

use std::time::Duration;

use rand::RngCore;
use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, Row};
use secrecy::{ExposeSecret, SecretString};

use tenantry_provisioner::quote_ident;

use crate::backend::Side;
use crate::error::Error;
use crate::kind::{Run, Stop};
use crate::moves::facts::{Facts, MoveParams};
use crate::operation::OperationKind;
use crate::registry::stmt;

/// `CONNECTION` string for a subscription reading from `side` as `login`.
fn conninfo(side: &Side, login: &Login) -> String {
    let v = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} dbname={} user={} password={} {}",
        v(&side.backend.host),
        side.backend.port,
        v(&side.backend.database),
        v(&login.user),
        v(login.password.expose_secret()),
        side.tls.conninfo(),
    )
}

/// Who a move's subscription logs in as on its source.
struct Login {
    user: String,
    password: SecretString,
}

/// The move's own replication role on the source, named like its slot: able
/// to log in, replicate and read the tenant tables (past their row policies:
/// the initial copy is a SELECT), with a fresh random password each time a
/// subscription is about to be made. The password is sent to the source only
/// as a SCRAM verifier and is kept nowhere but in the target's subscription
/// (readable by superusers only); the role is dropped at cleanup, at a
/// rollback and by the orphan sweep, so no long-lived secret is in any
/// conninfo. Only a superuser may make a role that replicates and bypasses
/// row security; an administrator that is not one (RDS's master user) lends
/// its own login, as before, and says so in the log.
async fn move_login(src: &mut PgConnection, f: &Facts) -> Result<Login, Error> {
    let may_make_role: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetch_one(&mut *src).await?;
    if !may_make_role {
        tracing::warn!(
            operation = %f.op.id,
            "the source's administrator may not make a role that replicates past row security: \
             the move's subscription logs in as the administrator"
        );
        return Ok(Login { user: f.source.admin.user.clone(), password: f.source.admin.password.clone() });
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let password = hex::encode(bytes);
    let verifier =
        tenantry_provisioner::scram::scram_secret(&password, tenantry_provisioner::scram::DEFAULT_ITERATIONS);
    let role = quote_ident(&f.name);
    let exists = exists(src, "SELECT 1 FROM pg_roles WHERE rolname = $1", &f.name).await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    let tables: Vec<String> = f.tables.iter().map(|t| format!("public.{}", quote_ident(t))).collect();
    let sql = format!(
        "{verb} ROLE {role} WITH LOGIN REPLICATION BYPASSRLS NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {secret}; \
         GRANT CONNECT ON DATABASE {db} TO {role}; GRANT USAGE ON SCHEMA public TO {role}; \
         GRANT SELECT ON {tables} TO {role}",
        secret = tenantry_provisioner::quote_literal(&verifier),
        db = quote_ident(&f.source.backend.database),
        tables = tables.join(", "),
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *src).await?;
    Ok(Login { user: f.name.clone(), password: SecretString::from(password) })
}

/// Drops a move's replication role on the source (after its slots, whose
/// walsenders use it): its grants in this database and on it, any session
/// still logged in as it, then the role. Safe to repeat.
pub(crate) async fn drop_role(source: &mut PgConnection, name: &str) -> Result<(), Error> {
    if !exists(source, "SELECT 1 FROM pg_roles WHERE rolname = $1", name).await? {
        return Ok(());
    }
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(name)
        .execute(&mut *source)
        .await?;
    let role = quote_ident(name);
    sqlx::raw_sql(AssertSqlSafe(format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")))
        .execute(&mut *source)
        .await?;
    Ok(())
}

pub(crate) async fn subscribe(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    if f.tables.is_empty() {
        return Err(Stop::Failed(Error::invalid("no_tables", "the source has no tenant tables")));
    }
    let mut src = f.source.admin().await?;
    // Publication before slot: pgoutput looks the publication up as of each
    // change it decodes, so it must predate the slot's starting point.
    if !exists(&mut src, "SELECT 1 FROM pg_publication WHERE pubname = $1", &f.name).await? {
        let filter = format!("WHERE (tenant_id = '{}'::uuid)", f.tenant);
        let list: Vec<String> = f.tables.iter().map(|t| format!("public.{} {filter}", quote_ident(t))).collect();
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')",
            quote_ident(&f.name),
            list.join(", ")
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut src).await?;
    }
    if !exists(&mut src, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &f.name).await? {
        // Made here, not by the subscription: creating it waits for running
        // transactions, which on a shared cluster include the CREATE SUBSCRIPTION.
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&f.name)
            .execute(&mut src)
            .await?;
    }
    let mut dst = f.target.admin().await?;
    if !exists(&mut dst, "SELECT 1 FROM pg_subscription WHERE subname = $1", &f.name).await? {
        let login = move_login(&mut src, f).await?;
        src.close().await?;
        // A promotion's fresh database is loaded without its secondary
        // indexes; `copy` builds them once every table is in.
        if run.kind == OperationKind::Promote {
            crate::moves::deferred::drop_secondary_indexes(run, &f.tables, &mut dst).await?;
        }
        // The initial copy starts with the subscription: time it from here.
        run.cp
            .registry()
            .execute_raw(stmt(
                "UPDATE operations SET progress = progress || jsonb_build_object('copy_started_at', now()) \
                 WHERE id = $1",
                vec![f.op.id.into()],
            ))
            .await?;
        let sql = format!(
            "CREATE SUBSCRIPTION {n} CONNECTION {c} PUBLICATION {n} \
             WITH (create_slot = false, slot_name = {s}, copy_data = true)",
            n = quote_ident(&f.name),
            c = tenantry_provisioner::quote_literal(&conninfo(&f.source, &login)),
            s = tenantry_provisioner::quote_literal(&f.name),
        );
        // The statement carries the move role's password: keep it out of the
        // target's statement log where the administrator may (a superuser).
        let _ =
            sqlx::raw_sql("SET log_statement = 'none'; SET log_min_error_statement = 'panic'").execute(&mut dst).await;
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut dst).await?;
    } else {
        src.close().await?;
    }
    dst.close().await?;
    Ok(())
}

/// Drops the subscription, the slots and the publication, and the move's
/// sentinels on the target.
pub(crate) async fn cleanup(run: &Run<'_, MoveParams>, f: &Facts) -> Result<(), Stop> {
    let mut tadmin = f.target.admin().await?;
    let oid = drop_subscription(&mut tadmin, &f.name).await?;
    tadmin.close().await?;
    let mut sadmin = f.source.admin().await?;
    drop_slots(&mut sadmin, &f.name, oid).await?;
    drop_publication(&mut sadmin, &f.name).await?;
    drop_role(&mut sadmin, &f.name).await?;
    sadmin.close().await?;
    let mut t = run.cp.tenant_conn(&f.target, f.tenant).await?;
    sqlx::query("DELETE FROM tenantry_move_sentinels WHERE tenant_id = $1").bind(f.tenant).execute(&mut t).await?;
    t.close().await?;
    Ok(())
}

async fn exists(conn: &mut PgConnection, sql: &'static str, name: &str) -> Result<bool, Error> {
    Ok(sqlx::query(sql).bind(name).fetch_optional(conn).await?.is_some())
}

/// Drops a subscription (and, through it, its slots on the publisher). When the
/// publisher cannot be reached the subscription is detached from its slot
/// first; the slots are then dropped on the source by [`drop_slots`].
/// Returns the subscription's oid, whose table-sync slots are named after it.
pub(crate) async fn drop_subscription(target: &mut PgConnection, name: &str) -> Result<Option<i64>, Error> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT oid::bigint FROM pg_subscription WHERE subname = $1")
        .bind(name)
        .fetch_optional(&mut *target)
        .await?;
    if oid.is_none() {
        return Ok(None);
    }
    let ident = quote_ident(name);
    // Bounded: a DROP SUBSCRIPTION holds a transaction open while it drops
    // the slots on the publisher, and a table-sync worker creating its slot
    // there waits for every running transaction to end, this one included,
    // while the DROP waits for that slot: neither would end. Past the bound
    // the subscription is detached from its slots (below), which
    // `drop_slots` then drops on the source, ending their walsenders.
    // Each its own statement: DROP SUBSCRIPTION may not run in a transaction block.
    sqlx::raw_sql("SET statement_timeout = '5s'").execute(&mut *target).await?;
    let dropped =
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SUBSCRIPTION IF EXISTS {ident}"))).execute(&mut *target).await;
    sqlx::raw_sql("RESET statement_timeout").execute(&mut *target).await?;
    if dropped.is_err() {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER SUBSCRIPTION {ident} DISABLE; ALTER SUBSCRIPTION {ident} SET (slot_name = NONE); \
             DROP SUBSCRIPTION IF EXISTS {ident}"
        )))
        .execute(&mut *target)
        .await?;
    }
    Ok(oid)
}

/// Drops the move's slot and its subscription's table-sync slots on the
/// source, ending any walsender still attached. Safe to repeat.
pub(crate) async fn drop_slots(source: &mut PgConnection, name: &str, sub_oid: Option<i64>) -> Result<(), Error> {
    let sync = sub_oid.map(|o| format!("pg_{o}_sync_%")).unwrap_or_else(|| "-".into());
    for _ in 0..100 {
        let rows = sqlx::query(
            "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2",
        )
        .bind(name)
        .bind(&sync)
        .fetch_all(&mut *source)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            let slot: String = r.try_get(0)?;
            match r.try_get::<Option<i32>, _>(1)? {
                Some(pid) => {
                    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut *source).await?;
                }
                None => {
                    // Lost a race with a walsender attaching, or someone dropped it: look again.
                    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&slot).execute(&mut *source).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Busy { code: "slot_busy", message: format!("replication slot `{name}` stays in use") })
}

pub(crate) async fn drop_publication(source: &mut PgConnection, name: &str) -> Result<(), Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))).execute(source).await?;
    Ok(())
}

pub(crate) async fn slot_lag(admin: &mut PgConnection, name: &str) -> Result<i64, Error> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(confirmed_flush_lsn, restart_lsn))::bigint \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .fetch_optional(admin)
    .await?
    .flatten();
    lag.ok_or_else(|| Error::Conflict { code: "slot_missing", message: format!("replication slot `{name}` is gone") })
}
