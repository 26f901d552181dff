//! The request path at fleet size. First 100 shared tenants (the baseline),
//! then BENCH_TENANTS (default 100,000) in the same registry, of which
//! BENCH_ACTIVE (default 10,000) have an API key and hold BENCH_ROWS asset
//! rows on the one shared pool (default 10,000,000; skewed: the i-th active
//! tenant holds about 1/(i+1) of them, so a few are large and most small).
//! At each scale point: `GET /v1/assets/{id}` and `GET /v1/assets?limit=20`
//! for a random active tenant, p50 / p99, from BENCH_CLIENTS closed-loop
//! clients for BENCH_SECS, then open-loop at a fixed rate (BENCH_OPEN_RATE,
//! else half of what the first point served closed-loop), each after
//! BENCH_WARMUP seconds not counted; the heap the app grew by while its key
//! and route caches filled with every active tenant (a counting allocator
//! wraps this process's, which hosts the app), per tenant; the number of
//! `/metrics` series. Metering at the production defaults unless
//! BENCH_DEV_METERING=1; BENCH_TRACE=1 prints slow requests per second.
//!
//! cargo bench --bench scale     (BENCH_TENANTS=100000 BENCH_ACTIVE=10000 BENCH_ROWS=10000000 BENCH_CLIENTS=16 BENCH_SECS=15 BENCH_WARMUP=5 BENCH_SHARED_BUFFERS=2GB)

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use sea_orm::sqlx;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

#[path = "common/mod.rs"]
mod common;
#[path = "common/heap.rs"]
mod heap;
use common::{env_or, pct};

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// An active tenant as the load sees it.
struct Target {
    key: String,
    asset: String,
}

/// `ids` resident on the pool, and `rows` asset rows over them, harmonic
/// (at least one each), in batches.
async fn add_rows(pool: &mut sqlx::postgres::PgConnection, ids: &[uuid::Uuid], rows: u64) -> anyhow::Result<()> {
    let h: f64 = (1..=ids.len()).map(|i| 1.0 / i as f64).sum();
    let counts: Vec<i64> = (0..ids.len()).map(|i| ((rows as f64 / (h * (i + 1) as f64)) as i64).max(1)).collect();
    sqlx::query("TRUNCATE assets CASCADE").execute(&mut *pool).await?;
    // Resident on the pool at the registry's epoch, as a placement makes them.
    sqlx::query(
        "INSERT INTO tenant_residency (tenant_id, epoch, state) SELECT id, 1, 'active' FROM unnest($1::uuid[]) id \
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(ids)
    .execute(&mut *pool)
    .await?;
    for (ids, counts) in ids.chunks(500).zip(counts.chunks(500)) {
        sqlx::query(
            "INSERT INTO assets (tenant_id, id, name, tag, category, location, status) \
             SELECT t.id, gen_random_uuid(), 'Asset ' || g, 'T-' || g, 'cat-' || (g % 10), 'site ' || (g % 7), 'active' \
             FROM unnest($1::uuid[], $2::int8[]) AS t(id, n), generate_series(1, t.n) g",
        )
        .bind(ids)
        .bind(counts)
        .execute(&mut *pool)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE assets").execute(&mut *pool).await?;
    // Write the load's dirty pages out now, not during the measurement.
    sqlx::query("CHECKPOINT").execute(&mut *pool).await?;
    Ok(())
}

/// Latencies (ms, sorted) of gets and lists, and errors.
type Seen = (Vec<f64>, Vec<f64>, u64);

/// One scale point's figures.
struct Point {
    tenants: u64,
    active: u64,
    rows: u64,
    closed: Seen,
    open: Seen,
    per_tenant: f64,
    series: usize,
}

/// How one load phase is driven.
#[derive(Clone, Copy)]
enum Drive {
    /// Each client sends its next request when the last one answered: the
    /// machine saturated, so latency is the clients over the throughput.
    Closed,
    /// Requests at a fixed total rate, whatever the answers: latency counted
    /// from when a request was due, as a service level is.
    Open { rate: u64 },
}

/// Clients over random targets for `warmup` (not counted) and then `secs`:
/// sorted latencies (ms) of gets and lists, and errors.
async fn run_load(
    http: &reqwest::Client,
    app: &str,
    targets: &Arc<Vec<Target>>,
    clients: u64,
    (warmup, secs): (u64, u64),
    drive: Drive,
) -> Seen {
    let measure_from = Instant::now() + Duration::from_secs(warmup);
    let deadline = measure_from + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, app, targets) = (http.clone(), app.to_string(), targets.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let mut tick = match drive {
                Drive::Closed => None,
                Drive::Open { rate } => {
                    let period = Duration::from_secs_f64(clients as f64 / rate.max(1) as f64);
                    // Clients start spread over one period, not in lockstep.
                    let first = tokio::time::Instant::now() + period.mul_f64(c as f64 / clients as f64);
                    let mut tick = tokio::time::interval_at(first, period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    Some(tick)
                }
            };
            let (mut answered, mut pending) = (Vec::new(), Vec::new());
            loop {
                let due = match tick.as_mut() {
                    Some(t) => t.tick().await.into_std(),
                    None => Instant::now(),
                };
                if due >= deadline {
                    break;
                }
                let t = &targets[rng.random_range(0..targets.len())];
                let list = rng.random_bool(0.5);
                let url =
                    if list { format!("{app}/v1/assets?limit=20") } else { format!("{app}/v1/assets/{}", t.asset) };
                let request = http.get(url).bearer_auth(&t.key).send();
                let answer = async move {
                    let ok = match request.await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    (due, list, ok, due.elapsed().as_secs_f64() * 1000.0)
                };
                let answering = tokio::spawn(answer);
                match drive {
                    Drive::Closed => answered.push(answering.await.expect("a request")),
                    Drive::Open { .. } => pending.push(answering),
                }
            }
            for answering in pending {
                answered.push(answering.await.expect("a request"));
            }
            answered
        }));
    }
    let (mut gets, mut lists, mut errors) = (Vec::new(), Vec::new(), 0);
    let trace = env_or("BENCH_TRACE", 0) > 0;
    let mut per_second = vec![(0u64, 0u64, 0f64); secs as usize + 1];
    for t in tasks {
        for (due, list, ok, ms) in t.await.expect("a load client") {
            if due < measure_from {
                continue;
            }
            if trace {
                let s = &mut per_second[(due - measure_from).as_secs() as usize];
                s.0 += 1;
                s.1 += u64::from(ms > 10.0);
                s.2 = s.2.max(ms);
            }
            match (ok, list) {
                (false, _) => errors += 1,
                (true, true) => lists.push(ms),
                (true, false) => gets.push(ms),
            }
        }
    }
    if trace {
        for (second, (n, slow, max)) in per_second.iter().enumerate() {
            eprintln!("  second {second}: {n} requests, {slow} over 10 ms, slowest {max:.1} ms");
        }
    }
    gets.sort_by(f64::total_cmp);
    lists.sort_by(f64::total_cmp);
    (gets, lists, errors)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_or("BENCH_TENANTS", 100_000);
    let active = env_or("BENCH_ACTIVE", 10_000).min(total);
    let rows = env_or("BENCH_ROWS", 10_000_000);
    let clients = env_or("BENCH_CLIENTS", 16);
    let secs = env_or("BENCH_SECS", 15);
    // The pool at 10 M rows is about 3.3 GB of table and indexes, of which the
    // load touches a fraction: a database host sized for it (shared_buffers at
    // a quarter of an 8 GB host) rather than the test clusters' 128 MB.
    let shared_buffers = common::size_cluster("2GB");
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let warmup = env_or("BENCH_WARMUP", 5);
    let spawned = tenantry::testkit::spawn_stack(|s, _| {
        s.control_plane.usage.storage_interval_secs = 24 * 3600;
        // Metering at the production defaults, not the dev stack's (which folds
        // often so that a new user's console shows figures soon): at 10,000
        // active tenants every flush is 10,000 samples and every fold 10,000
        // tenants' rollups. BENCH_DEV_METERING=1 keeps the dev stack's.
        if env_or("BENCH_DEV_METERING", 0) == 0 {
            s.app.usage_flush_ms = tenantry_app::config::DEFAULT_USAGE_FLUSH_MS;
            s.control_plane.usage.rollup_interval_ms =
                tenantry_control_plane::config::UsageConfig::default().rollup_interval_ms;
        }
        eprintln!(
            "metering: app flush every {} ms, fold every {} ms",
            s.app.usage_flush_ms, s.control_plane.usage.rollup_interval_ms
        );
    })
    .await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    let resolver_metrics = format!("{app}/metrics");
    let registry = cp.registry().clone();
    let pool_id = cp.backends().await?.into_iter().find(|b| b.name == spawned.pool_name).expect("the shared pool").id;
    tokio::spawn(stack.run_until_stopped());
    let mut pool =
        common::superuser(tc.cluster.port(), &tc.secrets.superuser_password, &spawned.pool_name, "bench-scale").await?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;

    let mut keyed = std::collections::HashMap::<uuid::Uuid, String>::new();
    let mut results: Vec<Point> = Vec::new();
    let mut open_rate: Option<u64> = None;
    for (n, a, r) in [(100, 100, rows / 1000), (total, active, rows)] {
        let t0 = Instant::now();
        let have: i64 = registry
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM tenants WHERE slug LIKE 'scale-%'",
            ))
            .await?
            .map(|row| row.try_get("", "n"))
            .transpose()?
            .unwrap_or(0);
        common::seed_tenants(&registry, pool_id, "scale", have as u64, n).await?;
        let ids = common::first_tenants(&registry, "scale", a).await?;
        add_rows(&mut pool, &ids, r).await?;
        let missing: Vec<uuid::Uuid> = ids.iter().filter(|id| !keyed.contains_key(id)).copied().collect();
        let new_keys: Vec<(uuid::Uuid, String)> = futures::stream::iter(missing)
            .map(|id| {
                let cp = cp.clone();
                async move { anyhow::Ok((id, cp.create_api_key("bench", id, "bench").await?.key)) }
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        keyed.extend(new_keys);
        let assets: std::collections::HashMap<uuid::Uuid, uuid::Uuid> =
            sqlx::query_as("SELECT DISTINCT ON (tenant_id) tenant_id, id FROM assets ORDER BY tenant_id, id")
                .fetch_all(&mut pool)
                .await?
                .into_iter()
                .collect();
        let targets: Arc<Vec<Target>> =
            Arc::new(ids.iter().map(|id| Target { key: keyed[id].clone(), asset: assets[id].to_string() }).collect());
        let size: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('assets')").fetch_one(&mut pool).await?;
        eprintln!(
            "{n} tenants, {a} active, {r} rows seeded in {:.0} s; assets with its indexes: {} MB (shared_buffers {shared_buffers})",
            t0.elapsed().as_secs_f64(),
            size >> 20
        );

        // Warm the key and route caches with every active tenant, one request
        // each, and keep the heap they grew by.
        let before = heap::in_use();
        let warmed: Vec<()> = futures::stream::iter(targets.iter())
            .map(|t| {
                let http = http.clone();
                let url = format!("{app}/v1/assets/{}", t.asset);
                async move {
                    let r = http.get(url).bearer_auth(&t.key).send().await?;
                    let status = r.status();
                    anyhow::ensure!(status.is_success(), "warm-up: {status} {}", r.text().await.unwrap_or_default());
                    Ok(())
                }
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let per_tenant = heap::in_use().saturating_sub(before) as f64 / warmed.len() as f64;
        eprintln!("{n} tenants: closed loop, {clients} clients, {warmup} s warm-up then {secs} s");
        let closed = run_load(&http, &app, &targets, clients, (warmup, secs), Drive::Closed).await;
        // The open-loop rate: BENCH_OPEN_RATE, else half of what the first
        // (100-tenant) point served closed-loop; the same at every point.
        let rate = *open_rate.get_or_insert_with(|| {
            let served = (closed.0.len() + closed.1.len()) as u64 / secs.max(1);
            env_or("BENCH_OPEN_RATE", served / 2)
        });
        eprintln!("{n} tenants: open loop, {rate} requests/s, {warmup} s warm-up then {secs} s");
        let open = run_load(&http, &app, &targets, clients, (warmup, secs), Drive::Open { rate }).await;
        let series =
            http.get(&resolver_metrics).send().await?.text().await?.lines().filter(|l| !l.starts_with('#')).count();
        results.push(Point { tenants: n, active: a, rows: r, closed, open, per_tenant, series });
    }

    let rate = open_rate.unwrap_or(0);
    println!(
        "| tenants (active, rows on the pool) | load | GET /v1/assets/{{id}} p50 / p99 ms | list p50 / p99 ms | requests | errors | heap per cached tenant (keys + routes) | /metrics series |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for p in &results {
        for (load, (gets, lists, errors)) in
            [("closed loop".to_string(), &p.closed), (format!("open, {rate}/s"), &p.open)]
        {
            println!(
                "| {} ({}, {}) | {load} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {errors} | {:.0} B | {} |",
                p.tenants,
                p.active,
                p.rows,
                pct(gets, 0.5),
                pct(gets, 0.99),
                pct(lists, 0.5),
                pct(lists, 0.99),
                gets.len() + lists.len(),
                p.per_tenant,
                p.series
            );
        }
    }
    let (b, s) = (&results[0], &results[1]);
    for (load, bl, sl) in [("closed loop", &b.closed, &s.closed), ("open loop", &b.open, &s.open)] {
        println!(
            "ratio at {} tenants to 100, {load}: get p50 {:.2}, p99 {:.2}; list p50 {:.2}, p99 {:.2}",
            s.tenants,
            pct(&sl.0, 0.5) / pct(&bl.0, 0.5),
            pct(&sl.0, 0.99) / pct(&bl.0, 0.99),
            pct(&sl.1, 0.5) / pct(&bl.1, 0.5),
            pct(&sl.1, 0.99) / pct(&bl.1, 0.99)
        );
    }
    Ok(())
}
