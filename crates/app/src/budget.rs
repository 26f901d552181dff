//! The connection budget's unit: a [`Slot`] is one request's claim on one of
//! the process's `max_connections_total` connections, held while the request
//! uses its tenant's backend. Releasing it meters the time it was held as the
//! tenant's database time. [`OpenCap`] caps the connections open at once
//! (idle ones included) at the same number.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, PgPool, Postgres};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::usage::UsageMeter;

/// A slot of the connection budget held by one request.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    tenant: Uuid,
    started: Instant,
    usage: Arc<UsageMeter>,
    /// The pool this request uses, counted busy while the slot is held.
    on: Option<Arc<AtomicUsize>>,
}

impl Slot {
    /// A slot from a permit of the budget's semaphore, metered for `tenant`.
    pub(crate) fn new(permit: OwnedSemaphorePermit, tenant: Uuid, usage: Arc<UsageMeter>) -> Self {
        Slot { _permit: permit, tenant, started: Instant::now(), usage, on: None }
    }

    /// Counts `pool` busy until the slot is released (once per slot: a
    /// request that tries another pool takes a new slot).
    pub(crate) fn on(&mut self, pool: &BackendPool) {
        debug_assert!(self.on.is_none(), "a slot is on one pool");
        pool.busy.fetch_add(1, Ordering::SeqCst);
        self.on = Some(pool.busy.clone());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(busy) = self.on.take() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
        self.usage.db_time(self.tenant, self.started.elapsed());
    }
}

/// Longest an opener waits for the least used pool's connection to come
/// back into its pool before it takes another pool's idle one.
const SETTLE: Duration = Duration::from_millis(20);

/// When this process started counting pool use.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How long a pool's use is remembered: a request counts e^(-t / USE_MEMORY)
/// of one after `t`. Long enough to tell a tenant asking every second from one
/// that asked once, short enough that a tenant gone quiet gives way in a
/// minute or so.
const USE_MEMORY: Duration = Duration::from_secs(10);

/// A pool's recent use: its requests, each decayed by its age, as of `at`
/// (microseconds since [`EPOCH`]). Lock-free and approximate: two requests
/// touching the pool at the same instant may count once, which a choice of
/// which connection to close can afford on the request path.
#[derive(Default)]
struct Use {
    score: AtomicU64,
    at: AtomicU64,
}

impl Use {
    fn decayed(score: f64, since: u64, now: u64) -> f64 {
        let age = now.saturating_sub(since) as f64 / 1e6;
        score * (-age / USE_MEMORY.as_secs_f64()).exp()
    }

    /// The score as of `now` (microseconds since [`EPOCH`]).
    fn at(&self, now: u64) -> f64 {
        Self::decayed(f64::from_bits(self.score.load(Ordering::Relaxed)), self.at.load(Ordering::Relaxed), now)
    }

    /// One more request at `now`. Within a millisecond of the last decay the
    /// request is only added (the decay over it is below 0.01 %).
    fn count(&self, now: u64) {
        let since = self.at.load(Ordering::Relaxed);
        let score = f64::from_bits(self.score.load(Ordering::Relaxed));
        if now.saturating_sub(since) < 1_000 {
            self.score.store((score + 1.0).to_bits(), Ordering::Relaxed);
        } else {
            self.score.store((Self::decayed(score, since, now) + 1.0).to_bits(), Ordering::Relaxed);
            self.at.store(now, Ordering::Relaxed);
        }
    }
}

fn micros_now() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// A backend's pool, how much requests have used it lately, and how many
/// requests hold a budget slot on it now. At the cap, the least used pool
/// that no request is using gives up its connection: by use, not by last use,
/// so a stream of tenants asking once each (the cold ones) takes connections
/// from each other rather than from the tenants asking all the time, which
/// a least-recently-used choice would close after every few cold requests.
#[derive(Clone)]
pub(crate) struct BackendPool {
    pub(crate) db: DatabaseConnection,
    used: Arc<Use>,
    busy: Arc<AtomicUsize>,
    /// Straight to PostgreSQL (not through a pooler): see [`hang_up`].
    direct: bool,
}

impl BackendPool {
    pub(crate) fn new(db: DatabaseConnection, direct: bool) -> Self {
        BackendPool { db, used: Arc::new(Use::default()), busy: Arc::new(AtomicUsize::new(0)), direct }
    }

    /// Counts one request on the pool.
    pub(crate) fn touch(&self) {
        self.used.count(micros_now());
    }

    /// The least used of `pools` (as of one instant).
    fn least_used<'a>(pools: impl Iterator<Item = &'a BackendPool>) -> Option<&'a BackendPool> {
        let now = micros_now();
        pools.map(|p| (p.used.at(now), p)).min_by(|a, b| a.0.total_cmp(&b.0)).map(|(_, p)| p)
    }

    pub(crate) fn pg(&self) -> &PgPool {
        self.db.get_postgres_connection_pool()
    }
}

/// The strict cap on *open* connections: idle ones count too, and so do the
/// connections of an evicted pool until they are closed. A request that
/// needs a new connection opens one only while the process has fewer than
/// `limit` open; at the cap it closes an idle connection of another pool
/// first, or waits (bounded) for one to close. The decisions to open are
/// serialized, so that two of them cannot both see room for one; the
/// connecting itself is not (a reservation counts it meanwhile).
pub(crate) struct OpenCap {
    limit: usize,
    opening: tokio::sync::Mutex<()>,
    /// Openings decided but not finished: counted until their connection is
    /// counted by its pool (counted twice meanwhile, which only errs strict).
    reserved: std::sync::atomic::AtomicUsize,
    closing: std::sync::Mutex<Vec<PgPool>>,
}

impl OpenCap {
    pub(crate) fn new(limit: usize) -> Self {
        OpenCap {
            limit,
            opening: tokio::sync::Mutex::new(()),
            reserved: std::sync::atomic::AtomicUsize::new(0),
            closing: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// An evicted pool whose connections are being closed: still counted.
    pub(crate) fn closing(&self, pool: PgPool) {
        self.closing.lock().expect("closing pools").push(pool);
    }

    /// Pools being closed, those with connections left (the rest forgotten).
    fn still_closing(&self) -> Vec<PgPool> {
        let mut closing = self.closing.lock().expect("closing pools");
        closing.retain(|p| p.size() > 0);
        closing.clone()
    }

    /// Connections open now: `pools` (every live pool) and the closing ones.
    pub(crate) fn open(&self, pools: &[BackendPool]) -> usize {
        pools.iter().map(|p| p.pg().size() as usize).sum::<usize>()
            + self.still_closing().iter().map(|p| p.size() as usize).sum::<usize>()
    }

    /// A connection of `pool` within the cap; `pools` lists every live pool.
    /// Gives up with `PoolTimedOut` after `wait`.
    pub(crate) async fn acquire(
        &self,
        pool: &PgPool,
        pools: impl Fn() -> Vec<BackendPool>,
        wait: Duration,
    ) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        if let Some(c) = pool.try_acquire() {
            return Ok(c);
        }
        if pool.size() >= pool.options().get_max_connections() {
            // Full: it waits for one of its own, opening nothing.
            return pool.acquire().await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let one_at_a_time =
            tokio::time::timeout_at(deadline, self.opening.lock()).await.map_err(|_| sqlx::Error::PoolTimedOut)?;
        let mut settle_until = None;
        loop {
            if let Some(c) = pool.try_acquire() {
                return Ok(c);
            }
            let live = pools();
            let reserved = self.reserved.load(std::sync::atomic::Ordering::SeqCst);
            if self.open(&live) + reserved < self.limit {
                // Decided: the next opener may go on while this one connects
                // (a backend that does not answer holds up only its own requests).
                self.reserved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(one_at_a_time);
                let opened = pool.acquire().await;
                self.reserved.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                return opened;
            }
            // At the cap: close a connection elsewhere to make room. A closing
            // pool gives one up first (its connections go anyway), then the
            // least used pool that no request is using. Its connection may
            // still be on its way back into the pool (sqlx returns
            // connections from a spawned task): then this waits for it rather
            // than take a busier pool's.
            // Else (every pool is in use) the least used pool with an idle
            // connection.
            let mut freed = false;
            let closing = self.still_closing();
            let unused = BackendPool::least_used(
                live.iter().filter(|p| p.busy.load(Ordering::SeqCst) == 0 && p.pg().size() > 0),
            );
            let now = tokio::time::Instant::now();
            let settling =
                unused.is_some_and(|p| p.pg().num_idle() == 0) && now < *settle_until.get_or_insert(now + SETTLE);
            let donor = closing
                .iter()
                .find(|p| p.num_idle() > 0)
                .map(|p| (p, false))
                .or_else(|| unused.filter(|p| p.pg().num_idle() > 0).map(|p| (p.pg(), p.direct)))
                .or_else(|| {
                    if settling {
                        return None;
                    }
                    BackendPool::least_used(live.iter().filter(|p| p.pg().num_idle() > 0)).map(|p| (p.pg(), p.direct))
                });
            if let Some((c, direct)) = donor.and_then(|(p, direct)| p.try_acquire().map(|c| (c, direct))) {
                hang_up(c, direct).await;
                freed = true;
            }
            if !freed {
                if tokio::time::Instant::now() >= deadline {
                    return Err(sqlx::Error::PoolTimedOut);
                }
                // Every open connection is in use, closing or on its way back
                // into its pool: one frees soon.
                tokio::time::sleep(Duration::from_millis(if settling { 1 } else { 2 })).await;
            }
        }
    }
}

/// How long a hang-up waits for the server to end the backend.
const HANG_UP_WAIT: Duration = Duration::from_secs(5);

/// Closes `conn` so that PostgreSQL no longer counts it when this returns.
/// A plain close sends Terminate and returns at once, while the backend may
/// still show in `pg_stat_activity` for a moment: a connection opened right
/// after it would be one over the cap as PostgreSQL counts them. Straight to
/// PostgreSQL, the backend is asked to end itself instead: its FATAL reply
/// ("terminating connection due to administrator command", in the server log
/// for role `tenantry_app`) comes before it leaves `pg_stat_activity`, but
/// PostgreSQL keeps the socket open until the process exits, precisely so
/// that a client can close synchronously. So the next round trip ends at
/// that end-of-file, and returns only once the backend is gone. Through a
/// pooler the server connection is the pooler's: a plain close.
async fn hang_up(conn: PoolConnection<Postgres>, direct: bool) {
    if !direct {
        let _ = conn.close().await;
        return;
    }
    let mut raw = conn.detach();
    let _ = sqlx::raw_sql("SELECT pg_terminate_backend(pg_backend_pid())").execute(&mut raw).await;
    let _ = tokio::time::timeout(HANG_UP_WAIT, sqlx::raw_sql("SELECT 1").execute(&mut raw)).await;
}
