//! The one door to tenant data. A [`TenantTx`] is a transaction already
//! entered as one tenant (RLS is armed); every query made through it also
//! filters on that tenant and every insert stamps it. The connection itself is
//! private to this module, so no handler can run an unscoped query.
//!
//! The transaction is opened and the tenant entered in one round trip: a
//! simple-protocol `BEGIN; SELECT tenantry_gate(<uuid>, <epoch>, <proof> ...)`
//! (every value is typed, so inlining them cannot inject anything; the proof is
//! good for this transaction on this connection only, see `crate::gate`).
//! sea-orm queries then run on the same pooled connection through [`TxConn`]'s
//! `ConnectionTrait`.

use std::sync::Arc;

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Postgres};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, ExecResult, FromQueryResult, IntoActiveModel, QueryFilter,
    QueryResult, QueryTrait, RuntimeErr, Select, Statement,
};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Mutex;
use uuid::Uuid;

use sea_orm::sea_query::Expr;
use tenantry_core::db::{MOVED, NOT_RESIDENT, moved_to, moved_to_db, sqlstate};
use tenantry_core::entities::TenantScoped;
use tenantry_core::gate::{self, Binding, GATE_SCHEMA, GateKey};

use crate::gate::Gate;

/// Why a tenant could not be entered (or a one-shot read failed).
pub enum EnterError {
    /// The backend says the tenant is not resident at this epoch (moved or fenced).
    NotResident,
    /// The backend's sealed fence says the tenant moved to `backend` at `epoch`.
    Moved { backend: Uuid, epoch: i64 },
    /// The backend could not be reached or failed.
    Backend(String),
    /// The pool was evicted (and closed) after it was looked up: look again.
    PoolClosed,
    /// A one-shot read failed.
    Query(DbErr),
    /// The backend refused the gate's proof or counter, again after the gate
    /// was opened anew (a gate key it does not have).
    Gate,
}

/// The backend refused the gate's proof or counter.
fn refused_db(e: &DbErr) -> bool {
    matches!(sqlstate(e).as_deref(), Some(tenantry_core::gate::NOT_VOUCHED | tenantry_core::gate::GATE_CLOSED))
}

pub(crate) fn classify(e: sqlx::Error) -> EnterError {
    match &e {
        sqlx::Error::PoolClosed => EnterError::PoolClosed,
        sqlx::Error::Database(db) if db.code().as_deref() == Some(NOT_RESIDENT) => EnterError::NotResident,
        _ if crate::gate::refused(&e) => EnterError::Gate,
        _ => match moved_to(&e) {
            Some((backend, epoch)) => EnterError::Moved { backend, epoch },
            None => EnterError::Backend(e.to_string()),
        },
    }
}

/// `SELECT ... WHERE tenant_id = <tenant>`: the start of every tenant query.
pub fn scoped<E: TenantScoped>(tenant_id: Uuid) -> Select<E> {
    E::find().filter(E::tenant_column().eq(tenant_id))
}

/// The first tenant schema whose backends have the `tenantry_admitted` view
/// (tenant migration 5); on older ones every read takes [`enter_gate`].
pub const ADMITTED_VIEW_SCHEMA: i32 = 5;

/// The schema-5 read gate (a backend one schema behind): admits the tenant at
/// `epoch` (an InitPlan over `tenantry_admitted` that sets `app.tenant_id`
/// for this statement's implicit transaction), or yields no row, so the read
/// returns nothing.
fn admitted_gate(tenant_id: Uuid, epoch: i64) -> sea_orm::sea_query::SimpleExpr {
    Expr::cust_with_values(
        "(SELECT pg_catalog.set_config('app.tenant_id', g.tenant_id::text, true) \
          FROM tenantry_admitted g WHERE g.tenant_id = $1::uuid AND g.epoch = $2::bigint) IS NOT NULL",
        [sea_orm::Value::from(tenant_id), sea_orm::Value::from(epoch)],
    )
}

/// The schema-5 authoritative gate: `tenantry_enter` takes the shared fence
/// lock, checks residency and sets the tenant, or raises TR001/TR002.
fn enter_gate(tenant_id: Uuid, epoch: i64) -> sea_orm::sea_query::SimpleExpr {
    Expr::cust_with_values(
        "(SELECT tenantry_enter($1::uuid, $2::bigint))",
        [sea_orm::Value::from(tenant_id), sea_orm::Value::from(epoch)],
    )
}

/// The vouched read gate (schema 6) on a direct connection, its values bound
/// as parameters (so no proof is ever in a statement's text): an InitPlan
/// that checks residency over `tenantry_admitted` in the read's own snapshot
/// and hands the answer to `tenantry_gate`, which verifies the proof and sets
/// the tenant, or raises why not (TR001/TR002; TR003/TR004: the proof or
/// counter was refused).
fn vouched_gate(key: &GateKey, tenant_id: Uuid, epoch: i64, (pid, n): (u32, i64)) -> sea_orm::sea_query::SimpleExpr {
    Expr::cust_with_values(
        "(SELECT tenantry_gate($1::uuid, $2::bigint, $3::integer, $4::bigint, NULL, NULL, $5::bytea, \
          EXISTS (SELECT 1 FROM tenantry_admitted g WHERE g.tenant_id = $6::uuid AND g.epoch = $7::bigint)))",
        [
            sea_orm::Value::from(tenant_id),
            sea_orm::Value::from(epoch),
            sea_orm::Value::from(key.kid()),
            sea_orm::Value::from(n),
            sea_orm::Value::from(key.direct(tenant_id, epoch, pid, n)),
            sea_orm::Value::from(tenant_id),
            sea_orm::Value::from(epoch),
        ],
    )
}

/// A single scoped query in one round trip and one prepared statement:
/// `SELECT ... WHERE <scope> AND <gate>`. The gate's sub-select has no column
/// references, so PostgreSQL runs it as an InitPlan behind a one-time filter,
/// before the scan starts: the residency check and the tenant's context
/// precede reading any row, and all of it lives in the statement's own
/// implicit transaction. Should a plan ever evaluate the RLS policy first, it
/// sees no tenant and returns no rows: the ordering can fail closed, never
/// open.
///
/// On a schema-6 backend the gate is [`vouched_gate`], which raises any
/// refusal itself: one statement, whatever the answer. A refused proof or
/// counter (the connection's gate state was lost) opens the gate again and
/// reads once more. On a schema-5 backend the read first goes through
/// [`admitted_gate`]; no rows may be a refusal, so it is asked again through
/// [`enter_gate`], which raises the refusal or answers for an admitted tenant.
/// (`select` builds the scoped query: a second time only for a second ask.)
pub(crate) async fn read_once<E: TenantScoped>(
    mut conn: PoolConnection<Postgres>,
    (tenant_id, epoch): (Uuid, i64),
    select: impl Fn() -> Select<E>,
    schema_version: i32,
    gate: &Gate,
) -> Result<Vec<E::Model>, EnterError> {
    if schema_version >= GATE_SCHEMA {
        let mut session = gate.session(&mut conn).await.map_err(classify)?;
        let db = TxConn(Mutex::new(Some(conn)), false);
        let mut reopened = false;
        loop {
            let gated = select().filter(vouched_gate(gate.key(), tenant_id, epoch, session.next_call()));
            match gated.all(&db).await {
                Err(e) if !reopened && refused_db(&e) => {
                    reopened = true;
                    let mut guard = db.0.lock().await;
                    let conn = guard.as_mut().ok_or_else(|| EnterError::Query(gone()))?;
                    session = gate.reopen(conn).await.map_err(classify)?;
                }
                rows => return rows.map_err(read_err),
            }
        }
    }
    let db = TxConn(Mutex::new(Some(conn)), false);
    if schema_version >= ADMITTED_VIEW_SCHEMA {
        let rows = select().filter(admitted_gate(tenant_id, epoch)).all(&db).await.map_err(read_err)?;
        if !rows.is_empty() {
            return Ok(rows);
        }
    }
    select().filter(enter_gate(tenant_id, epoch)).all(&db).await.map_err(read_err)
}

/// [`read_once`] through a connection pooler (PgBouncer in transaction mode),
/// where a statement of the extended protocol is two messages (parse, then
/// bind and execute) that may reach two servers. The gated select goes as one
/// simple-protocol Query instead, its values written into the text by
/// sea-query's PostgreSQL quoting (strings as escaped literals, uuids and
/// numbers typed), after the tenant's `SET LOCAL statement_timeout` when it
/// has one: one message and one implicit transaction, so the pooler keeps one
/// server for all of it and the tenant's context ends with it. The app cannot
/// know which server it reaches, so on a schema-6 backend the proof is bound
/// to a single-use nonce and the time instead of a pid and counter.
pub(crate) async fn read_pooled<E: TenantScoped>(
    mut conn: PoolConnection<Postgres>,
    (tenant_id, epoch): (Uuid, i64),
    pooled: Pooled,
    select: impl Fn() -> Select<E>,
    schema_version: i32,
    gate: &Gate,
) -> Result<Vec<E::Model>, EnterError> {
    let timeout = pooled.local_timeout();
    let message = |gated: Select<E>| {
        let stmt = gated.build(DbBackend::Postgres);
        let values = stmt.values.map(|v| v.0).unwrap_or_default();
        let sql = sea_orm::sea_query::inject_parameters(&stmt.sql, &values, &sea_orm::sea_query::PostgresQueryBuilder);
        format!("{timeout}{sql}")
    };
    if schema_version >= GATE_SCHEMA {
        let vouched = || {
            let binding = Binding::pooled_now();
            let call = gate::call(gate.key(), tenant_id, epoch, binding, true);
            let claim = gate::claim(gate.key(), tenant_id, epoch, binding);
            format!("{claim}{}", message(select().filter(Expr::cust(format!("(SELECT {call})")))))
        };
        return match fetch_simple::<E>(&mut conn, vouched()).await {
            // A proof outside the backend's time window (a clock step): once
            // more with a fresh one.
            Err(EnterError::Gate) => fetch_simple::<E>(&mut conn, vouched()).await,
            rows => rows,
        };
    }
    if schema_version >= ADMITTED_VIEW_SCHEMA {
        let rows = fetch_simple::<E>(&mut conn, message(select().filter(admitted_gate(tenant_id, epoch)))).await?;
        if !rows.is_empty() {
            return Ok(rows);
        }
    }
    fetch_simple::<E>(&mut conn, message(select().filter(enter_gate(tenant_id, epoch)))).await
}

/// The rows of one simple-protocol message, as `E`'s models.
async fn fetch_simple<E: TenantScoped>(
    conn: &mut PoolConnection<Postgres>,
    message: String,
) -> Result<Vec<E::Model>, EnterError> {
    let rows =
        sqlx::raw_sql(AssertSqlSafe(message)).fetch_all(&mut **conn).await.map_err(|e| read_err(query_err(e)))?;
    rows.into_iter()
        .map(|row| <E::Model as FromQueryResult>::from_query_result(&QueryResult::from(row), ""))
        .collect::<Result<Vec<_>, DbErr>>()
        .map_err(EnterError::Query)
}

fn read_err(e: DbErr) -> EnterError {
    if refused_db(&e) {
        return EnterError::Gate;
    }
    match (sqlstate(&e).as_deref(), &e) {
        (Some(NOT_RESIDENT), _) => EnterError::NotResident,
        (Some(MOVED), _) => match moved_to_db(&e) {
            Some((backend, epoch)) => EnterError::Moved { backend, epoch },
            None => EnterError::NotResident,
        },
        (_, DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::ConnectionClosed)) => EnterError::PoolClosed,
        (_, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) => EnterError::Backend(e.to_string()),
        _ => EnterError::Query(e),
    }
}

/// How the request path reaches a tenant on its backend: the cached
/// placement's epoch, the pooler in between (if any) and the backend's
/// tenant-schema version (which gates it has).
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub epoch: i64,
    pub pooled: Option<Pooled>,
    pub schema_version: i32,
}

/// How a transaction goes through a connection pooler (PgBouncer in
/// transaction mode): the tenant's statement timeout is set transaction-locally
/// (a pooler drops startup options) and statements are unnamed (PgBouncer 1.18
/// keeps no named prepared statement across transactions).
#[derive(Debug, Clone, Copy)]
pub struct Pooled {
    pub statement_timeout_ms: Option<u32>,
}

impl Pooled {
    /// `SET LOCAL statement_timeout = <ms>; ` for a tenant with its own
    /// timeout (to open a message with), else nothing.
    fn local_timeout(self) -> String {
        match self.statement_timeout_ms {
            Some(ms) => format!("SET LOCAL statement_timeout = {ms}; "),
            None => String::new(),
        }
    }
}

/// A pooled connection inside an open transaction; usable by sea-orm.
/// `unnamed`: every statement is parsed unnamed (through a pooler).
pub struct TxConn(Mutex<Option<PoolConnection<Postgres>>>, bool);

fn gone() -> DbErr {
    DbErr::Custom("tenant transaction already finished".into())
}

fn query(stmt: &Statement, unnamed: bool) -> sqlx::query::Query<'_, Postgres, SqlxValues> {
    let values = stmt.values.clone().unwrap_or(sea_orm::sea_query::Values(Vec::new()));
    sqlx::query_with(AssertSqlSafe(stmt.sql.as_str()), SqlxValues(values)).persistent(!unnamed)
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}

#[async_trait::async_trait]
impl ConnectionTrait for TxConn {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut guard = self.0.lock().await;
        let conn = guard.as_mut().ok_or_else(gone)?;
        query(&stmt, self.1).execute(&mut **conn).await.map(Into::into).map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut guard = self.0.lock().await;
        let conn = guard.as_mut().ok_or_else(gone)?;
        sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(&mut **conn).await.map(Into::into).map_err(exec_err)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut guard = self.0.lock().await;
        let conn = guard.as_mut().ok_or_else(gone)?;
        query(&stmt, self.1).fetch_optional(&mut **conn).await.map(|r| r.map(Into::into)).map_err(query_err)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut guard = self.0.lock().await;
        let conn = guard.as_mut().ok_or_else(gone)?;
        query(&stmt, self.1)
            .fetch_all(&mut **conn)
            .await
            .map(|rows| rows.into_iter().map(Into::into).collect())
            .map_err(query_err)
    }
}

pub struct TenantTx {
    conn: TxConn,
    tenant_id: Uuid,
    /// The connection-budget slot this transaction occupies.
    _slot: Option<crate::budget::Slot>,
}

impl TenantTx {
    /// Begins a transaction on `conn` and enters the tenant at `epoch`, in
    /// one round trip. On failure the connection is rolled back before it
    /// returns to its pool.
    pub(crate) async fn begin(
        mut conn: PoolConnection<Postgres>,
        tenant_id: Uuid,
        entry: Entry,
        gate: &Gate,
    ) -> Result<Self, EnterError> {
        // One message: BEGIN and the gate. (The tenant's statement timeout is
        // the session default of the pool the resolver chose; through a pooler
        // it is set for this transaction only.)
        let Entry { epoch, pooled, schema_version } = entry;
        let timeout = pooled.map(Pooled::local_timeout).unwrap_or_default();
        let mut session = None;
        let mut reopened = false;
        loop {
            let (claim, enter) = if schema_version < GATE_SCHEMA {
                (String::new(), format!("tenantry_enter('{tenant_id}'::uuid, {epoch}::bigint)"))
            } else if pooled.is_some() {
                let binding = Binding::pooled_now();
                (
                    gate::claim(gate.key(), tenant_id, epoch, binding),
                    gate::call(gate.key(), tenant_id, epoch, binding, false),
                )
            } else {
                let current = match session.take() {
                    Some(s) => s,
                    None => gate.session(&mut conn).await.map_err(classify)?,
                };
                let call = gate::call(gate.key(), tenant_id, epoch, current.binding(), false);
                session = Some(current);
                (String::new(), call)
            };
            let sql = format!("{claim}BEGIN; {timeout}SELECT {enter}");
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                Ok(_) => {
                    return Ok(Self { conn: TxConn(Mutex::new(Some(conn)), pooled.is_some()), tenant_id, _slot: None });
                }
                Err(e) => {
                    if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                        // Never hand a connection in an unknown state back to the pool.
                        let _ = conn.close().await;
                        return Err(classify(e));
                    }
                    // A refused proof or counter: open the gate anew, once.
                    if reopened || !crate::gate::refused(&e) {
                        return Err(classify(e));
                    }
                    reopened = true;
                    if pooled.is_none() && schema_version >= GATE_SCHEMA {
                        session = Some(gate.reopen(&mut conn).await.map_err(classify)?);
                    }
                }
            }
        }
    }

    pub(crate) fn holding(mut self, slot: crate::budget::Slot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// `SELECT ... WHERE tenant_id = <this tenant>`.
    pub fn select<E: TenantScoped>(&self) -> Select<E> {
        scoped(self.tenant_id)
    }

    /// One row by id, or `None` (also for another tenant's id).
    pub async fn get<E: TenantScoped>(&self, id: Uuid) -> Result<Option<E::Model>, DbErr> {
        self.select::<E>().filter(E::id_column().eq(id)).one(&self.conn).await
    }

    /// Rows of a scoped select.
    pub async fn all<E: TenantScoped>(&self, select: Select<E>) -> Result<Vec<E::Model>, DbErr> {
        select.all(&self.conn).await
    }

    /// Deletes one row by id; `false` when there was none for this tenant.
    pub async fn delete<E: TenantScoped>(&self, id: Uuid) -> Result<bool, DbErr> {
        let res = E::delete_many()
            .filter(E::tenant_column().eq(self.tenant_id))
            .filter(E::id_column().eq(id))
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Inserts a row built by `build`, which receives this tenant's id to stamp.
    pub async fn insert<E, A>(&self, build: impl FnOnce(Uuid) -> A) -> Result<E::Model, DbErr>
    where
        E: TenantScoped,
        A: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
        E::Model: IntoActiveModel<A>,
    {
        build(self.tenant_id).insert(&self.conn).await
    }

    /// Inserts a row built by `build` unless it would violate a unique key;
    /// `true` when it was inserted.
    pub async fn insert_if_absent<E, A>(&self, build: impl FnOnce(Uuid) -> A) -> Result<bool, DbErr>
    where
        E: TenantScoped,
        A: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
        E::Model: IntoActiveModel<A>,
    {
        let inserted =
            E::insert(build(self.tenant_id)).on_conflict_do_nothing().exec_without_returning(&self.conn).await?;
        Ok(matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0))
    }

    /// Saves changes to a row previously read through this transaction (so it
    /// belongs to this tenant: its primary key starts with our tenant id).
    /// `None` when the row is gone (deleted by a concurrent request since it
    /// was read).
    pub async fn update<E, A>(&self, model: A) -> Result<Option<E::Model>, DbErr>
    where
        E: TenantScoped,
        A: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
        E::Model: IntoActiveModel<A>,
    {
        debug_assert_eq!(
            model.get(E::tenant_column()).into_value(),
            Some(sea_orm::Value::from(self.tenant_id)),
            "update of a row that is not this tenant's"
        );
        match model.update(&self.conn).await {
            Ok(row) => Ok(Some(row)),
            Err(DbErr::RecordNotUpdated) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn commit(mut self) -> Result<(), DbErr> {
        let mut conn = self.conn.0.get_mut().take().ok_or_else(gone)?;
        sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map(|_| ()).map_err(exec_err)
    }
}

impl Drop for TenantTx {
    /// Not committed (an error path): roll back before the connection is reused.
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.0.get_mut().take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                            let _ = conn.close().await;
                        }
                    });
                }
                // No runtime to roll back on: close the connection instead.
                Err(_) => drop(conn.detach()),
            }
        }
    }
}
