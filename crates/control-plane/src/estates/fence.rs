//! The legacy side's fence at an adoption's cutover: a `BEFORE INSERT OR
//! UPDATE OR DELETE OR TRUNCATE` trigger on each of the source's tables that
//! refuses the write with a clear error naming the adoption. A trigger, not a
//! REVOKE: legacy applications often connect as the tables' owner, whom a
//! REVOKE does not stop. Creating it takes a lock that waits for the tables'
//! in-flight writes, so once `fence` returns every write the legacy source
//! acknowledged is in the WAL before the fence. `lift` removes it (a
//! cancelled adoption, or a revert giving the source back its writes).

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use uuid::Uuid;

use tenantry_provisioner::quote_ident;

/// SQLSTATE of a write the fence refused (`tenantry adoption in progress`).
pub const FENCED: &str = "TA001";

fn names(operation: Uuid) -> (String, String) {
    let short = operation.simple().to_string();
    (format!("tenantry_adopt_fence_{short}"), format!("tenantry_adopt_fenced_{short}"))
}

/// Where the adoption behind a fence stands, which its refusal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Copying and catching up; the cutover is under way.
    Adopting,
    /// The tenant serves from Tenantry; the source can still be reverted.
    Adopted,
    /// The way back is closed: the legacy copy is frozen for good.
    Released,
}

/// The fence's trigger function, refusing with a message for `stage`.
fn refusal(schema: &str, operation: Uuid, stage: Stage) -> String {
    let (function, _) = names(operation);
    let f = format!("{}.{}", quote_ident(schema), quote_ident(&function));
    let said = match stage {
        Stage::Adopting => format!("is being adopted by Tenantry (operation {operation})"),
        Stage::Adopted => format!(
            "was adopted by Tenantry (operation {operation}) and is served from there; a revert of the source gives \
             it its writes back"
        ),
        Stage::Released => {
            format!("was adopted by Tenantry (operation {operation}) and released: this copy is frozen")
        }
    };
    format!(
        "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $fence$ \
         BEGIN RAISE EXCEPTION 'tenant data in %.% {said}; the legacy source no longer takes writes', \
         TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '{FENCED}'; END $fence$"
    )
}

/// Says `stage` in the refusal of `operation`'s fence on `schema`, when the
/// fence is there. Repeatable.
pub async fn restate(conn: &mut PgConnection, schema: &str, operation: Uuid, stage: Stage) -> Result<(), sqlx::Error> {
    if is_fenced(conn, schema, operation).await? {
        sqlx::raw_sql(AssertSqlSafe(refusal(schema, operation, stage))).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Fences `tables` of `schema` for `operation`, in one transaction (all or
/// none), waiting at most `lock_timeout_ms` for in-flight writes. Repeatable.
pub async fn fence(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[String],
    operation: Uuid,
    lock_timeout_ms: u64,
) -> Result<(), sqlx::Error> {
    let (function, trigger) = names(operation);
    let f = format!("{}.{}", quote_ident(schema), quote_ident(&function));
    let mut tx = conn.begin().await?;
    // Flushed at commit whatever the estate's setting: the drain that follows
    // reads the slot up to the flushed WAL, which then holds every write
    // acknowledged before the fence.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{}ms'; SET LOCAL synchronous_commit = on",
        lock_timeout_ms.max(1)
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(AssertSqlSafe(refusal(schema, operation, Stage::Adopting))).execute(&mut *tx).await?;
    for table in tables {
        let t = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let (tr, tt) = (quote_ident(&trigger), quote_ident(&format!("{trigger}_truncate")));
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TRIGGER IF EXISTS {tr} ON {t}; \
             CREATE TRIGGER {tr} BEFORE INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}(); \
             DROP TRIGGER IF EXISTS {tt} ON {t}; \
             CREATE TRIGGER {tt} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {f}();"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Whether `operation`'s fence is on `schema`.
pub async fn is_fenced(conn: &mut PgConnection, schema: &str, operation: Uuid) -> Result<bool, sqlx::Error> {
    let (function, _) = names(operation);
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.proname = $2)",
    )
    .bind(schema)
    .bind(function)
    .fetch_one(&mut *conn)
    .await
}

/// Removes `operation`'s fence from `schema` (its triggers go with the function).
pub async fn lift(conn: &mut PgConnection, schema: &str, operation: Uuid) -> Result<(), sqlx::Error> {
    let (function, _) = names(operation);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP FUNCTION IF EXISTS {}.{}() CASCADE",
        quote_ident(schema),
        quote_ident(&function)
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
