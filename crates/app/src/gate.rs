//! The app's side of the tenant gate on direct connections (tenant schema 6;
//! see `tenantry_core::gate` and `migrations/tenant/0006_vouched_context.sql`).
//! A proof is bound to its backend's pid and to the connection's gate counter,
//! which `tenantry_gate_open()` starts at a random value on the server and
//! every gate call advances; so the app keeps, per connection, the pid and the
//! counter value its next proof uses.
//!
//! sqlx keeps no user data on a pooled connection, so a connection is known
//! here by its prepared identity statement: sqlx caches a prepared statement's
//! metadata per connection and hands the same allocation back on every
//! `prepare` of the same text, with no round trip. Should the cache ever give
//! a different one (evicted, or another sqlx), the connection is simply opened
//! again: one round trip, never a wrong proof (the backend checks it).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, Executor, SqlSafeStr, Statement};
use tenantry_core::gate::{Binding, GateKey};

/// The statement whose cached metadata names a connection.
const IDENTITY: &str = "SELECT 1 AS tenantry_connection";

/// The gate's state on one backend connection.
pub(crate) struct Session {
    pid: u32,
    next: AtomicI64,
}

impl Session {
    /// The binding of the next gate call on this connection (each call,
    /// accepted or not, advances the server's counter once).
    pub(crate) fn binding(&self) -> Binding {
        let (pid, n) = self.next_call();
        Binding::Direct { pid, n }
    }

    /// The pid and the counter value of the next gate call (see [`Session::binding`]).
    pub(crate) fn next_call(&self) -> (u32, i64) {
        (self.pid, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// The signing key and every open connection's gate state.
pub(crate) struct Gate {
    key: GateKey,
    sessions: Cache<usize, Arc<Session>>,
}

impl Gate {
    /// `connections`: how many connections may be open at once (the cache
    /// keeps twice that); an entry unused for `idle` is forgotten (its
    /// connection, if still open, opens its gate again).
    pub(crate) fn new(key: GateKey, connections: u64, idle: Duration) -> Self {
        Gate { key, sessions: Cache::builder().max_capacity(connections * 2).time_to_idle(idle).build() }
    }

    pub(crate) fn key(&self) -> &GateKey {
        &self.key
    }

    /// This connection's gate state, opening the gate first if this process
    /// has not (one round trip, once per connection).
    pub(crate) async fn session(&self, conn: &mut PgConnection) -> Result<Arc<Session>, sqlx::Error> {
        let id = identity(conn).await?;
        match self.sessions.get(&id) {
            Some(session) => Ok(session),
            None => self.open(conn, id).await,
        }
    }

    /// Opens the gate again (after a refusal: the counter is elsewhere, or
    /// the identity named another connection before).
    pub(crate) async fn reopen(&self, conn: &mut PgConnection) -> Result<Arc<Session>, sqlx::Error> {
        let id = identity(conn).await?;
        self.open(conn, id).await
    }

    async fn open(&self, conn: &mut PgConnection, id: usize) -> Result<Arc<Session>, sqlx::Error> {
        let (pid, start): (i32, i64) =
            sqlx::query_as("SELECT pg_backend_pid(), tenantry_gate_open()").fetch_one(&mut *conn).await?;
        let session = Arc::new(Session { pid: pid as u32, next: AtomicI64::new(start) });
        self.sessions.insert(id, session.clone());
        Ok(session)
    }
}

async fn identity(conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
    let statement = conn.prepare(IDENTITY.into_sql_str()).await?;
    Ok(statement.columns().as_ptr() as usize)
}

/// Whether the backend refused the gate's proof or counter (the app opens the
/// gate again and retries once).
pub(crate) fn refused(e: &sqlx::Error) -> bool {
    use tenantry_core::gate::{GATE_CLOSED, NOT_VOUCHED};
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some(NOT_VOUCHED | GATE_CLOSED)))
}
