//! The request path at fleet size. First 100 shared tenants (the baseline),
//! then BENCH_TENANTS (default 100,000) in the same registry, of which
//! BENCH_ACTIVE (default 10,000) have an API key and hold BENCH_ROWS asset
//! rows on the one shared pool (default 10,000,000; skewed: the i-th active
//! tenant holds about 1/(i+1) of them, so a few are large and most small).
//! At each scale point: `GET /v1/assets/{id}` and `GET /v1/assets?limit=20`
//! for a random active tenant, from BENCH_CLIENTS closed-loop clients for
//! BENCH_SECS each, p50 / p99; the heap the app grew by while its key and
//! route caches filled with every active tenant (a counting allocator wraps
//! this process's, which hosts the app), per tenant; the number of `/metrics`
//! series.
//!
//! cargo bench --bench scale     (BENCH_TENANTS=100000 BENCH_ACTIVE=10000 BENCH_ROWS=10000000 BENCH_CLIENTS=16 BENCH_SECS=15 BENCH_SHARED_BUFFERS=2GB)

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

/// Closed-loop clients over random targets: p50 / p99 ms of gets and lists, errors.
async fn run_load(
    http: &reqwest::Client,
    app: &str,
    targets: &Arc<Vec<Target>>,
    clients: u64,
    secs: u64,
) -> (Vec<f64>, Vec<f64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, app, targets) = (http.clone(), app.to_string(), targets.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let (mut gets, mut lists, mut errors) = (Vec::new(), Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t = &targets[rng.random_range(0..targets.len())];
                let list = rng.random_bool(0.5);
                let t0 = Instant::now();
                let url =
                    if list { format!("{app}/v1/assets?limit=20") } else { format!("{app}/v1/assets/{}", t.asset) };
                match http.get(url).bearer_auth(&t.key).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        let ms = t0.elapsed().as_secs_f64() * 1000.0;
                        if list { lists.push(ms) } else { gets.push(ms) }
                    }
                    _ => errors += 1,
                }
            }
            (gets, lists, errors)
        }));
    }
    let (mut gets, mut lists, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (g, l, e) = t.await.expect("a load client");
        gets.extend(g);
        lists.extend(l);
        errors += e;
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
    let shared_buffers = std::env::var("BENCH_SHARED_BUFFERS").unwrap_or_else(|_| "2GB".into());
    tenantry::testkit::set_cluster_setting("shared_buffers", &shared_buffers);
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let spawned = tenantry::testkit::spawn_stack(|s, _| {
        s.control_plane.usage.storage_interval_secs = 24 * 3600;
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
    let mut results = Vec::new();
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
        let (gets, lists, errors) = run_load(&http, &app, &targets, clients, secs).await;
        let series =
            http.get(&resolver_metrics).send().await?.text().await?.lines().filter(|l| !l.starts_with('#')).count();
        results.push((n, a, r, gets, lists, errors, per_tenant, series));
    }

    println!(
        "| tenants (active, rows on the pool) | GET /v1/assets/{{id}} p50 / p99 ms | list p50 / p99 ms | requests | errors | heap per cached tenant (keys + routes) | /metrics series |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (n, a, r, gets, lists, errors, per_tenant, series) in &results {
        println!(
            "| {n} ({a}, {r}) | {:.2} / {:.2} | {:.2} / {:.2} | {} | {errors} | {:.0} B | {series} |",
            pct(gets, 0.5),
            pct(gets, 0.99),
            pct(lists, 0.5),
            pct(lists, 0.99),
            gets.len() + lists.len(),
            per_tenant
        );
    }
    let (b, s) = (&results[0], &results[1]);
    println!(
        "\nratio at {} tenants to 100: get p50 {:.2}, p99 {:.2}; list p50 {:.2}, p99 {:.2}",
        s.0,
        pct(&s.3, 0.5) / pct(&b.3, 0.5),
        pct(&s.3, 0.99) / pct(&b.3, 0.99),
        pct(&s.4, 0.5) / pct(&b.4, 0.5),
        pct(&s.4, 0.99) / pct(&b.4, 0.99)
    );
    Ok(())
}
