//! The `adopt` kind: one legacy source becomes a Tenantry tenant, online.
//!
//! ```text
//! [create_database register_backend | create_instance ... register_backend]   (dedicated only)
//! subscribe  legacy: publication for the source's tables, then a pgoutput slot
//! copy       every table in key order, page by page, mapped (ids -> UUID v5) and
//!            upserted into the target; the cursor per table is in the progress
//! catch_up   the slot's changes decoded, mapped and applied until its lag is small
//! cutover    outside the pause: every legacy row compared with the target (md5
//!            of the mapped row in the target's types); rows that differ, and rows
//!            changed since, are looked at again in the pause.
//!            pause: legacy fence (a trigger: writes fail with TA001 naming the
//!            adoption; waits for in-flight writes) -> slot drained to the fence
//!            -> those rows compared again, counts compared -> `sealing` -> the
//!            tenant placed (residency, placement, active) -> source `adopted`
//! cleanup    slot and publication dropped; the fence stays until revert or release
//! ```
//!
//! Policy: rolled back until `sealing` (a mismatch fails the adoption before
//! the tenant serves: fence lifted, slot and publication dropped, target rows
//! and the never-served tenant removed, the legacy source as it was).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use tenantry_core::Engine;
use tenantry_provisioner::quote_ident;

use super::Estate;
use super::fence;
use super::legacy::{self, Source, Table};
use super::stream::{self, Applier, Dirty};
use super::verify::{self, Sums, differing, mapped};
use crate::backend::{PINNED_FORMATS, Side, enter, table_list, tenant_tables};
use crate::error::Error;
use crate::kind::{Kind, Policy, Run, Stop, failpoint};
use crate::operation::{OperationKind, OperationState, Step};
use crate::provision::NewDatabase;
use crate::registry::{audit, past_seal, stmt};

/// Rows per second look at changed rows.
const PAGE: i64 = 5000;
/// Rows per page of the initial copy and the comparison (COPY on both sides).
const COPY_PAGE: i64 = 20_000;

pub const ADOPT_STEPS: &[Step] = &[Step::Subscribe, Step::Copy, Step::CatchUp, Step::Cutover, Step::Cleanup];
pub const ADOPT_DEDICATED_STEPS: &[Step] = &[
    Step::CreateDatabase,
    Step::RegisterBackend,
    Step::Subscribe,
    Step::Copy,
    Step::CatchUp,
    Step::Cutover,
    Step::Cleanup,
];
pub const ADOPT_RDS_STEPS: &[Step] = &[
    Step::CreateInstance,
    Step::WaitAvailable,
    Step::Bootstrap,
    Step::RegisterBackend,
    Step::Subscribe,
    Step::Copy,
    Step::CatchUp,
    Step::Cutover,
    Step::Cleanup,
];

/// An adoption's parameters, as queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AdoptParams {
    pub(crate) estate_id: Uuid,
    pub(crate) source: String,
    pub(crate) slug: String,
    /// The shared pool it lands on; a dedicated adoption makes its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backend_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) new_database: Option<NewDatabase>,
    /// Operations of one `adopt-all` share a batch; at most `concurrency` of
    /// them run at once (the runner's claim sees to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) concurrency: Option<i32>,
}

/// The `adopt` kind.
pub(crate) struct Adopt;

/// What every step of an adoption reads.
struct Facts {
    tenant: Uuid,
    estate: Estate,
    source: Source,
    name: String,
}

impl Facts {
    async fn read(run: &Run<'_, AdoptParams>) -> Result<Facts, Error> {
        let estate = run.cp.estate(run.params.estate_id).await?;
        let source = Source::read(&estate, &run.params.source).await?;
        Ok(Facts { tenant: run.tenant()?, estate, source, name: Source::replication_name(run.id) })
    }

    async fn legacy(&self) -> Result<PgConnection, Error> {
        self.source.connect(&self.estate).await
    }
}

/// Where the adopted rows go: the shared pool chosen when it was asked for,
/// or the dedicated database its first steps registered.
async fn target_side(run: &Run<'_, AdoptParams>) -> Result<Side, Error> {
    let id = match run.params.backend_id {
        Some(id) => id,
        None => run.view().await?.backend_id.ok_or(Error::NotFound("backend"))?,
    };
    run.cp.side(id).await
}

/// A session on the target that writes like a replication apply worker: as
/// the administrator, in the tenant's scope, foreign keys left to the
/// verification (`session_replication_role = replica`: a child may arrive
/// before its parent), with the text forms the comparison relies on.
pub(super) async fn target_conn(side: &Side, tenant: Uuid) -> Result<PgConnection, Error> {
    let mut c = side.admin().await?;
    sqlx::raw_sql(AssertSqlSafe(format!("SET session_replication_role = replica; {PINNED_FORMATS}")))
        .execute(&mut c)
        .await?;
    enter(&mut c, tenant).await?;
    Ok(c)
}

impl Kind for Adopt {
    type Params = AdoptParams;
    type State = ();
    const FAILPOINTS: &'static str = "adopt";
    const POLICY: Policy = Policy::RollBackUntilSeal;
    const TIMED: bool = true;

    fn steps(_: OperationKind, params: &AdoptParams) -> &'static [Step] {
        match &params.new_database {
            Some(n) if n.engine == Engine::Rds => ADOPT_RDS_STEPS,
            Some(_) => ADOPT_DEDICATED_STEPS,
            None => ADOPT_STEPS,
        }
    }

    async fn step(run: &Run<'_, AdoptParams>, _: &mut (), step: Step) -> Result<(), Stop> {
        if let Some(new) = &run.params.new_database
            && matches!(
                step,
                Step::CreateDatabase
                    | Step::CreateInstance
                    | Step::WaitAvailable
                    | Step::Bootstrap
                    | Step::RegisterBackend
            )
        {
            return Ok(new.step(run.cp, run.id, run.tenant()?, step).await?);
        }
        let f = Facts::read(run).await?;
        match step {
            Step::Subscribe => subscribe(run, &f).await,
            Step::Copy => copy(run, &f).await,
            Step::CatchUp => catch_up(run, &f).await,
            Step::Cutover => cutover(run, &f).await,
            Step::Cleanup => cleanup(run, &f).await,
            other => {
                Err(Stop::Failed(Error::invalid("unknown_step", format!("`{other}` is not a step of an adoption"))))
            }
        }
    }

    async fn roll_back(
        run: &Run<'_, AdoptParams>,
        outcome: OperationState,
        error: Option<String>,
    ) -> Result<(), Error> {
        roll_back(run, outcome, error).await
    }
}

async fn subscribe(run: &Run<'_, AdoptParams>, f: &Facts) -> Result<(), Stop> {
    let side = target_side(run).await?;
    if side.backend.schema_version != tenantry_core::TENANT_SCHEMA_LATEST {
        return Err(Stop::Failed(Error::invalid(
            "target_not_ready",
            format!("backend `{}` is not at the latest tenant schema", side.backend.name),
        )));
    }
    let mut legacy = f.legacy().await?;
    stream::create(&mut legacy, &f.source, &f.name).await?;
    let mut total = BTreeMap::new();
    for t in &f.source.tables {
        let n: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", f.source.qualified(&t.legacy))))
                .fetch_one(&mut legacy)
                .await?;
        total.insert(t.legacy.clone(), n);
    }
    legacy.close().await?;
    let all: i64 = total.values().sum();
    run.heartbeat(json!({"rows_total": all, "rows_total_by_table": total, "rows_copied": 0})).await
}

async fn copy(run: &Run<'_, AdoptParams>, f: &Facts) -> Result<(), Stop> {
    let progress = run.view().await?.progress;
    let mut cursors: BTreeMap<String, Json> =
        serde_json::from_value(progress["copy_cursor"].clone()).unwrap_or_default();
    let mut copied: BTreeMap<String, i64> =
        serde_json::from_value(progress["rows_copied_by_table"].clone()).unwrap_or_default();
    let side = target_side(run).await?;
    let tables: Vec<String> = f.source.tables.iter().map(|t| t.target.to_string()).collect();
    // A dedicated database this adoption made serves nobody until the
    // cutover: loaded without its secondary indexes, built after the copy.
    let fresh = run.params.backend_id.is_none();
    if fresh {
        let mut admin = side.admin().await?;
        crate::moves::deferred::drop_secondary_indexes(run, &tables, &mut admin).await?;
        admin.close().await?;
    }
    let mut legacy = f.legacy().await?;
    // Two writers: the target's index upkeep is most of the copy's cost,
    // and one backend inserting leaves a core idle.
    let mut writers = [target_conn(&side, f.tenant).await?, target_conn(&side, f.tenant).await?];
    for t in &f.source.tables {
        let after = match cursors.get(&t.legacy) {
            Some(Json::Bool(true)) => continue,
            Some(Json::String(k)) => Some(k.as_str()),
            _ => None,
        };
        // Pipelined: the next pages are read and mapped while these are
        // written, one page per writer. The cursor saved is past the pages
        // written.
        let mut pages = read_pages(&mut legacy, f, t, after).await?;
        // read_pages stops at the first page that is not full: the table goes
        // on exactly when its last page is full.
        while let Some(last) = pages.last() {
            let more = last.next_after();
            let read_next = async {
                match more {
                    Some(k) => read_pages(&mut legacy, f, t, Some(k)).await,
                    None => Ok(vec![]),
                }
            };
            let [first, second] = &mut writers;
            let (a, b, next) =
                tokio::join!(write_page(first, pages.first()), write_page(second, pages.get(1)), read_next);
            a?;
            b?;
            *copied.entry(t.legacy.clone()).or_default() += pages.iter().map(|p| p.rows as i64).sum::<i64>();
            let cursor = more.map_or(Json::Bool(true), |k| Json::String(k.to_string()));
            cursors.insert(t.legacy.clone(), cursor);
            let all: i64 = copied.values().sum();
            run.heartbeat(json!({"rows_copied": all, "rows_copied_by_table": copied, "copy_cursor": cursors})).await?;
            pages = next?;
        }
    }
    if fresh {
        crate::kind::failpoint("adopt.copy.loaded");
        let (rebuilt, ms) = crate::moves::deferred::rebuild(run, side.options(&side.admin), None).await?;
        run.heartbeat(json!({"indexes_rebuilt": rebuilt, "index_build_ms": ms})).await?;
    }
    let [mut target, other] = writers;
    other.close().await?;
    sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", table_list(&tables)))).execute(&mut target).await?;
    legacy.close().await?;
    target.close().await?;
    Ok(())
}

/// A page of the copy: how many legacy rows, the rows mapped and ready for
/// COPY, and the last row's key (the cursor past it).
struct Page {
    rows: usize,
    batch: Option<super::apply::CopyBatch>,
    last: Option<String>,
}

impl Page {
    /// The key the table's next page starts after; `None` when this page
    /// was its last (not full).
    fn next_after(&self) -> Option<&str> {
        self.last.as_deref().filter(|_| self.rows == COPY_PAGE as usize)
    }
}

async fn read_page(legacy: &mut PgConnection, f: &Facts, t: &Table, after: Option<&str>) -> Result<Page, Error> {
    let rows = legacy::copy_page(legacy, &f.source, t, after, COPY_PAGE).await?;
    let last = rows.last().and_then(|r| t.key_text(r));
    // Off the async thread, so the page being written meanwhile keeps moving.
    let (tenant, table, n) = (f.tenant, t.clone(), rows.len());
    let batch = move || -> Result<_, Error> {
        Ok(super::apply::CopyBatch::new(table.target, &mapped(tenant, &table, &rows)?)?)
    };
    let batch = match tokio::task::spawn_blocking(batch).await {
        Ok(batch) => batch?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return Err(Error::Busy { code: "shutting_down", message: "the process is stopping".into() }),
    };
    Ok(Page { rows: n, batch, last })
}

async fn write_page(conn: &mut PgConnection, page: Option<&Page>) -> Result<u64, sqlx::Error> {
    match page {
        Some(Page { batch: Some(batch), .. }) => super::apply::insert_bulk(conn, batch).await,
        _ => Ok(0),
    }
}

/// The next pages of `t` past `after`, one per writer (fewer at the table's end).
async fn read_pages(legacy: &mut PgConnection, f: &Facts, t: &Table, after: Option<&str>) -> Result<Vec<Page>, Error> {
    let first = read_page(legacy, f, t, after).await?;
    let second = match first.next_after() {
        Some(k) => Some(read_page(legacy, f, t, Some(k)).await?),
        None => None,
    };
    // An empty page after a full one says only that the table ended.
    Ok(std::iter::once(first).chain(second.filter(|p| p.rows > 0)).collect())
}

async fn catch_up(run: &Run<'_, AdoptParams>, f: &Facts) -> Result<(), Stop> {
    let side = target_side(run).await?;
    let mut legacy = f.legacy().await?;
    let mut target = target_conn(&side, f.tenant).await?;
    let mut applier = Applier::new(&f.source, f.tenant, f.name.clone());
    loop {
        let n = applier.drain(&mut legacy, &mut target).await?;
        let lag = stream::lag(&mut legacy, &f.name).await?;
        run.heartbeat(json!({"lag_bytes": lag, "changes_applied": applier.applied})).await?;
        if lag <= run.cp.config().moves.max_lag_bytes {
            break;
        }
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    legacy.close().await?;
    target.close().await?;
    Ok(())
}

/// Per target table, what the comparisons added up (see `verify.rs`).
type Checksums = BTreeMap<&'static str, Sums>;

/// Every legacy row against the target; the legacy keys that differ, the
/// rows compared, and the checksums made on the way (added to `sums`).
async fn compare_all(
    run: &Run<'_, AdoptParams>,
    f: &Facts,
    legacy: &mut PgConnection,
    target: &mut PgConnection,
    sums: &mut Checksums,
) -> Result<(BTreeMap<String, BTreeSet<String>>, i64), Stop> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut compared = 0i64;
    for t in &f.source.tables {
        let mut after: Option<String> = None;
        loop {
            let rows = legacy::copy_page(legacy, &f.source, t, after.as_deref(), COPY_PAGE).await?;
            compared += rows.len() as i64;
            let (bad, delta) = differing(target, f.tenant, t, &rows, &[]).await?;
            *sums.entry(t.target).or_default() += delta;
            out.entry(t.legacy.clone()).or_default().extend(bad);
            after = rows.last().and_then(|r| t.key_text(r));
            run.heartbeat(json!({"rows_compared": compared})).await?;
            if (rows.len() as i64) < COPY_PAGE {
                break;
            }
        }
    }
    Ok((out, compared))
}

/// Rows per table: the legacy source's and the tenant's on the target; and,
/// given the target's transaction horizon when the comparison pass began
/// (`since`, from [`horizon`]), the ids of the target rows written since, per
/// legacy table: read in the same pass over the tenant's rows as the count.
async fn counts(
    f: &Facts,
    legacy: &mut PgConnection,
    target: &mut PgConnection,
    since: Option<i64>,
) -> Result<(BTreeMap<&'static str, (i64, i64)>, BTreeMap<String, Vec<Uuid>>), Error> {
    let mut out = BTreeMap::new();
    let mut written = BTreeMap::new();
    for t in &f.source.tables {
        let l: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", f.source.qualified(&t.legacy))))
                .fetch_one(&mut *legacy)
                .await?;
        // A row's xmin is the 32-bit id of the transaction that wrote it, and
        // age() is its distance back from now, modulo 2^32 (PostgreSQL keeps
        // every live id within 2^31 of the next; a frozen row's age is the
        // largest): a row written at or after `since` is no older than `since`.
        let sql = format!(
            "SELECT count(*), coalesce(array_agg(id) FILTER (WHERE age(xmin) <= age($2::text::xid)), '{{}}') \
             FROM public.{} WHERE tenant_id = $1",
            quote_ident(t.target)
        );
        let (r, ids): (i64, Vec<Uuid>) = sqlx::query_as(AssertSqlSafe(sql))
            .bind(f.tenant)
            .bind(since.map(|x| x % 4_294_967_296))
            .fetch_one(&mut *target)
            .await?;
        out.insert(t.target, (l, r));
        written.insert(t.legacy.clone(), ids);
    }
    Ok((out, written))
}

/// The target's next transaction id (64-bit): every transaction from now on
/// has this id or a later one.
async fn horizon(target: &mut PgConnection) -> Result<i64, Error> {
    Ok(sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8").fetch_one(&mut *target).await?)
}

async fn cutover(run: &Run<'_, AdoptParams>, f: &Facts) -> Result<(), Stop> {
    let side = target_side(run).await?;
    if past_seal(&run.view().await?.progress) {
        return place(run, f, &side).await;
    }
    let mut legacy = f.legacy().await?;
    let mut target = target_conn(&side, f.tenant).await?;
    let mut applier = Applier::new(&f.source, f.tenant, f.name.clone());
    let fenced = fence::is_fenced(&mut legacy, &f.source.schema, run.id).await?;
    let mut compared = 0;
    let started;
    let mut since = None;
    let mut sums = Checksums::new();
    if !fenced {
        // Outside the pause: every row compared, the rows that differ and the
        // rows changed meanwhile kept for a second look inside it. Changed on
        // either side: every change the applier writes from here on is noted
        // (the legacy's), and so is the target's transaction horizon, past
        // which any row the applier did not write was written behind the
        // adoption's back.
        applier.drain(&mut legacy, &mut target).await?;
        applier.dirty = Some(Dirty::default());
        since = Some(horizon(&mut target).await?);
        let (differ, n) = compare_all(run, f, &mut legacy, &mut target, &mut sums).await?;
        compared = n;
        applier.drain(&mut legacy, &mut target).await?;
        if let Some(d) = applier.dirty.as_mut() {
            for (t, keys) in differ {
                d.keys.entry(t).or_default().extend(keys);
            }
        }
        started = Instant::now();
        let bound = run.cp.config().moves.fence_timeout_ms;
        fence::fence(&mut legacy, &f.source.schema, &f.source.legacy_names(), run.id, bound).await?;
        failpoint("adopt.cutover.fenced");
    } else {
        started = Instant::now();
    }
    // Every write acknowledged before the fence is in the slot: apply it.
    applier.drain(&mut legacy, &mut target).await?;
    let mut reverified = 0;
    let mut mismatched: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut dirty_keys = BTreeMap::new();
    match applier.dirty.take() {
        Some(dirty) => {
            dirty_keys = dirty.keys;
            for t in &f.source.tables {
                let keys: Vec<String> =
                    dirty_keys.get(&t.legacy).map(|k| k.iter().cloned().collect()).unwrap_or_default();
                for chunk in keys.chunks(PAGE as usize) {
                    let rows = legacy::by_keys(&mut legacy, &f.source, t, chunk).await?;
                    let ids: Vec<Uuid> = chunk.iter().filter_map(|k| t.id(f.tenant, k).ok()).collect();
                    reverified += chunk.len();
                    let (bad, delta) = differing(&mut target, f.tenant, t, &rows, &ids).await?;
                    *sums.entry(t.target).or_default() += delta;
                    if !bad.is_empty() {
                        mismatched.entry(t.legacy.clone()).or_default().extend(bad);
                    }
                }
            }
        }
        None => {
            // Resumed with the legacy side fenced: it no longer changes, so
            // every row is compared again (a longer pause, once).
            let (differ, n) = compare_all(run, f, &mut legacy, &mut target, &mut sums).await?;
            compared = n;
            for (t, keys) in differ.into_iter().filter(|(_, k)| !k.is_empty()) {
                mismatched.insert(t, keys.into_iter().collect());
            }
        }
    }
    let (rows, written) = counts(f, &mut legacy, &mut target, since).await?;
    // Rows written on the target since the pass that no legacy change
    // explains: changed behind the adoption's back, after they were compared
    // (and hashed again for the target's checksum).
    for t in &f.source.tables {
        let explained: BTreeSet<Uuid> =
            dirty_keys.get(&t.legacy).into_iter().flatten().filter_map(|k| t.id(f.tenant, k).ok()).collect();
        let behind: Vec<Uuid> =
            written.get(&t.legacy).into_iter().flatten().filter(|id| !explained.contains(id)).copied().collect();
        *sums.entry(t.target).or_default() += verify::rehash_target(&mut target, f.tenant, t, &behind).await?;
        if !behind.is_empty() {
            let named = behind.iter().map(|id| format!("{id} (changed on the target)"));
            mismatched.entry(t.legacy.clone()).or_default().extend(named);
        }
    }
    // Counts, and checksums whose rows hashed are the rows counted (a row
    // deleted on the target behind the adoption's back leaves one more hashed).
    let mut differ = false;
    let (mut counts, mut checksums) = (serde_json::Map::new(), serde_json::Map::new());
    for t in &f.source.tables {
        let (l, r) = rows.get(t.target).copied().unwrap_or_default();
        let s = sums.get(t.target).copied().unwrap_or_default();
        differ |= l != r || !s.agree() || s.legacy_rows != l || s.target_rows != r;
        counts.insert(t.target.to_string(), json!({"legacy": l, "target": r}));
        checksums.insert(t.target.to_string(), s.view());
    }
    let (counts, checksums) = (Json::Object(counts), Json::Object(checksums));
    if !mismatched.is_empty() || differ {
        let sample: BTreeMap<&String, Vec<&String>> =
            mismatched.iter().map(|(t, k)| (t, k.iter().take(5).collect())).collect();
        run.heartbeat(json!({"counts": counts, "checksums": checksums, "mismatched": sample})).await?;
        return Err(Stop::Failed(Error::invalid(
            "verification_failed",
            format!(
                "the target differs from the legacy source as of the fence: counts {counts}, checksums {checksums}, \
                 differing rows (legacy keys) {sample:?}; the adoption is rolled back and the legacy source left as it was"
            ),
        )));
    }
    legacy.close().await?;
    target.close().await?;
    run.heartbeat(json!({
        "sealing": true,
        "counts": counts,
        "checksums": checksums,
        "verified": {"rows_compared": compared, "rows_compared_again_in_pause": reverified, "mismatched": 0},
    }))
    .await?;
    place(run, f, &side).await?;
    let pause_ms = started.elapsed().as_millis() as i64;
    run.heartbeat(json!({"cutover_done": true, "pause_ms": pause_ms})).await
}

/// The tenant's first home: residency, placement, active; the source adopted.
async fn place(run: &Run<'_, AdoptParams>, f: &Facts, side: &Side) -> Result<(), Stop> {
    run.cp.place_tenant("operation", f.tenant, &side.backend, None).await?;
    run.cp
        .registry()
        .execute_raw(stmt(
            "UPDATE estate_sources SET state = 'adopted', updated_at = now() \
             WHERE estate_id = $1 AND name = $2 AND operation_id = $3",
            vec![run.params.estate_id.into(), run.params.source.clone().into(), run.id.into()],
        ))
        .await
        .map_err(Error::from)?;
    Ok(())
}

async fn cleanup(run: &Run<'_, AdoptParams>, f: &Facts) -> Result<(), Stop> {
    let mut legacy = f.legacy().await?;
    stream::drop(&mut legacy, &f.name).await?;
    fence::restate(&mut legacy, &f.source.schema, run.id, fence::Stage::Adopted).await?;
    legacy.close().await?;
    let txn = run.cp.registry().begin().await.map_err(Error::from)?;
    audit(
        &txn,
        "operation",
        "estate.adopted",
        Some(f.tenant),
        json!({"estate_id": run.params.estate_id, "source": run.params.source, "operation_id": run.id}),
    )
    .await
    .map_err(Error::from)?;
    run.finish(&txn, OperationState::Succeeded, None).await.map_err(Error::from)?;
    txn.commit().await.map_err(Error::from)?;
    Ok(())
}

/// Undoes an adoption before its seal: the legacy side as it was (fence
/// lifted, slot and publication gone), the target's rows of the tenant and a
/// database made for it gone, the never-served tenant removed.
async fn roll_back(run: &Run<'_, AdoptParams>, outcome: OperationState, error: Option<String>) -> Result<(), Error> {
    let tenant = run.tenant()?;
    let estate = run.cp.estate(run.params.estate_id).await?;
    let name = Source::replication_name(run.id);
    match Source::read(&estate, &run.params.source).await {
        Ok(source) => {
            let mut legacy = source.connect(&estate).await?;
            fence::lift(&mut legacy, &source.schema, run.id).await?;
            stream::drop(&mut legacy, &name).await?;
            legacy.close().await?;
        }
        // Its tables are gone (dropped meanwhile): nothing is fenced; the slot
        // and publication still go. An estate that does not answer is an
        // error: the rollback is retried, never finished with the legacy
        // source still fenced.
        Err(Error::Invalid { code: "source_not_adoptable", .. }) => {
            let database = match estate.view.layout {
                super::Layout::SchemaPerTenant => None,
                super::Layout::DatabasePerTenant => Some(run.params.source.as_str()),
            };
            if let Ok(mut legacy) = estate.connect(database).await {
                stream::drop(&mut legacy, &name).await?;
                legacy.close().await?;
            }
        }
        Err(e) => return Err(e),
    }
    let backend = match run.params.backend_id {
        Some(id) => Some(id),
        None => run.view().await?.backend_id,
    };
    if let Some(id) = backend
        && let Ok(side) = run.cp.side(id).await
    {
        let mut target = target_conn(&side, tenant).await?;
        for t in tenant_tables(&mut target).await? {
            let sql = format!("DELETE FROM public.{} WHERE tenant_id = $1", quote_ident(&t));
            sqlx::query(AssertSqlSafe(sql)).bind(tenant).execute(&mut target).await?;
        }
        sqlx::query("DELETE FROM tenant_residency WHERE tenant_id = $1").bind(tenant).execute(&mut target).await?;
        target.close().await?;
    }
    if let Some(new) = &run.params.new_database {
        new.destroy(run.cp).await?;
    }
    let txn = run.cp.registry().begin().await?;
    crate::registry::forget_unserved(&txn, tenant).await?;
    let state = if outcome == OperationState::Cancelled {
        "DELETE FROM estate_sources"
    } else {
        "UPDATE estate_sources SET state = 'failed', tenant_id = NULL, updated_at = now()"
    };
    txn.execute_raw(stmt(
        &format!("{state} WHERE estate_id = $1 AND name = $2 AND operation_id = $3"),
        vec![run.params.estate_id.into(), run.params.source.clone().into(), run.id.into()],
    ))
    .await?;
    run.rolled_back(&txn, outcome, error, json!({"estate_id": run.params.estate_id, "source": run.params.source}))
        .await?;
    txn.commit().await?;
    Ok(())
}
