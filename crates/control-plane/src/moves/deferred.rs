//! A promotion's (or an adoption's) fresh dedicated database serves nobody
//! until the cutover, so its tables are loaded the way bulk loaders load
//! (pgcopydb, Citus):
//! secondary indexes and unique constraints are dropped before the initial
//! copy and built again, several at once, once every table is copied. The
//! primary keys stay (the subscription's updates and deletes find rows by
//! them, and the foreign keys reference them). The definitions are recorded
//! in the operation's parameters before anything is dropped, so a crash at
//! any instant rebuilds what is missing; a rollback destroys the database.

use futures::StreamExt;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use serde::{Deserialize, Serialize};
use serde_json::json;

use tenantry_provisioner::quote_ident;

use crate::error::Error;
use crate::kind::{Run, Stop};

/// Index builds running at once.
const BUILDS_AT_ONCE: usize = 3;

/// One dropped index, or the unique constraint it backed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Deferred {
    table: String,
    index: String,
    /// `CREATE [UNIQUE] INDEX name ON public.t USING ...`.
    definition: String,
    constraint: Option<String>,
    /// `UNIQUE (tenant_id, tag)`.
    constraint_definition: Option<String>,
}

#[derive(Deserialize, Default)]
struct Learnt {
    #[serde(default)]
    deferred_indexes: Option<Vec<Deferred>>,
}

async fn recorded<P>(run: &Run<'_, P>) -> Result<Option<Vec<Deferred>>, Error> {
    let learnt: Learnt = serde_json::from_value(run.view().await?.params).unwrap_or_default();
    Ok(learnt.deferred_indexes)
}

/// Records, then drops, the secondary indexes of `tables` on the target.
/// Repeatable: a second run finds the record and drops what is left.
/// A secondary index: table, name, definition, and its unique constraint
/// with that constraint's definition.
type IndexRow = (String, String, String, Option<String>, Option<String>);

pub(crate) async fn drop_secondary_indexes<P>(
    run: &Run<'_, P>,
    tables: &[String],
    dst: &mut PgConnection,
) -> Result<(), Error> {
    let deferred = match recorded(run).await? {
        Some(d) => d,
        None => {
            let rows: Vec<IndexRow> = sqlx::query_as(
                "SELECT t.relname::text AS table, c.relname::text AS index, pg_get_indexdef(i.indexrelid) AS definition, \
                        con.conname::text AS constraint, pg_get_constraintdef(con.oid) AS constraint_definition \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype = 'u' \
                 WHERE n.nspname = 'public' AND t.relname = ANY($1) AND NOT i.indisprimary \
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid) \
                 ORDER BY 1, 2",
            )
            .bind(tables)
            .fetch_all(&mut *dst)
            .await?;
            let found: Vec<Deferred> = rows
                .into_iter()
                .map(|(table, index, definition, constraint, constraint_definition)| Deferred {
                    table,
                    index,
                    definition,
                    constraint,
                    constraint_definition,
                })
                .collect();
            run.set_params(json!({"deferred_indexes": found})).await?;
            found
        }
    };
    for d in &deferred {
        let t = format!("public.{}", quote_ident(&d.table));
        let sql = match &d.constraint {
            Some(c) => format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {}", quote_ident(c)),
            None => format!("DROP INDEX IF EXISTS public.{}", quote_ident(&d.index)),
        };
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *dst).await?;
    }
    Ok(())
}

/// Builds the dropped indexes again (of `only` that table, or all),
/// [`BUILDS_AT_ONCE`] at a time, each on its own session as `opts` (the
/// target's administrator). Repeatable: what exists is left alone. Returns
/// how many it looked at and the milliseconds it took.
pub(crate) async fn rebuild<P>(
    run: &Run<'_, P>,
    opts: sea_orm::sqlx::postgres::PgConnectOptions,
    only: Option<&str>,
) -> Result<(usize, u64), Stop> {
    let Some(deferred) = recorded(run).await? else { return Ok((0, 0)) };
    let deferred: Vec<Deferred> = deferred.into_iter().filter(|d| only.is_none_or(|t| d.table == t)).collect();
    let started = std::time::Instant::now();
    let results: Vec<Result<(), Error>> = futures::stream::iter(deferred.clone())
        .map(|d| {
            let opts = opts.clone();
            build(opts, d)
        })
        .buffer_unordered(BUILDS_AT_ONCE)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok((deferred.len(), started.elapsed().as_millis() as u64))
}

/// Builds one dropped index (or its constraint) unless it exists.
async fn build(opts: sea_orm::sqlx::postgres::PgConnectOptions, d: Deferred) -> Result<(), Error> {
    let mut c = PgConnection::connect_with(&opts).await?;
    // Builds use the maintenance memory and parallel workers they are given.
    sqlx::raw_sql("SET maintenance_work_mem = '256MB'").execute(&mut c).await?;
    let exists: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relname = $1",
    )
    .bind(&d.index)
    .fetch_optional(&mut c)
    .await?;
    if exists.is_none() {
        let t = format!("public.{}", quote_ident(&d.table));
        let sql = match (&d.constraint, &d.constraint_definition) {
            (Some(name), Some(def)) => format!("ALTER TABLE {t} ADD CONSTRAINT {} {def}", quote_ident(name)),
            _ => d.definition.clone(),
        };
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await?;
    }
    c.close().await?;
    Ok(())
}
