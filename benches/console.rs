//! The admin console at fleet size: the Tenants list (first, middle and last
//! page, a search, a tier filter) and a Tenant page, each rendered over HTTP
//! with a signed-in session, with 100 tenants (the baseline) and then with
//! BENCH_TENANTS (default 10,000) in the same registry, in one run. Every
//! tenant has a placement, a storage measurement and 24 hourly usage
//! rollups, as the console would find them in production.
//!
//! cargo bench --bench console     (BENCH_TENANTS=10000 BENCH_REPEAT=30)

use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use secrecy::ExposeSecret;

#[path = "common/mod.rs"]
mod common;
use common::{env_or, pct};

/// Tenants `bench-NNNNN` numbered from `from` (inclusive) to `to` (exclusive),
/// placed on `pool`, with storage and a day of hourly usage.
async fn add_tenants(db: &sea_orm::DatabaseConnection, pool: uuid::Uuid, from: u64, to: u64) -> anyhow::Result<()> {
    let sql = format!(
        "WITH t AS (INSERT INTO tenants (id, slug, name, tier, status, region) \
           SELECT gen_random_uuid(), 'bench-' || lpad(i::text, 5, '0'), 'Bench tenant ' || i, \
                  CASE WHEN i % 20 = 0 THEN 'dedicated' ELSE 'shared' END, 'active', 'local' \
           FROM generate_series({from}, {to} - 1) i RETURNING id), \
         p AS (INSERT INTO placements (tenant_id, backend_id, epoch) SELECT id, '{pool}', 1 FROM t), \
         s AS (INSERT INTO usage_storage (tenant_id, backend_id, rows, bytes, tables, measured_at) \
           SELECT id, '{pool}', 100 + (random() * 1000)::int, 100000 + (random() * 1e6)::int, '{{}}', now() FROM t) \
         INSERT INTO usage_rollups (tenant_id, granularity, period_start, requests, client_errors, server_errors, \
                                    db_time_us, rows, storage_bytes) \
           SELECT id, 'hour', date_trunc('hour', now(), 'UTC') - make_interval(hours => h), \
                  (random() * 500)::int, (random() * 5)::int, 0, (random() * 1e6)::int, NULL, NULL \
           FROM t, generate_series(0, 23) h"
    );
    db.execute_unprepared(&sql).await?;
    db.execute_unprepared("ANALYZE tenants; ANALYZE placements; ANALYZE usage_storage; ANALYZE usage_rollups").await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_or("BENCH_TENANTS", 10_000);
    let repeat = env_or("BENCH_REPEAT", 30) as usize;
    let spawned = tenantry::testkit::spawn_stack(|_, _| {}).await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let token = cp.config().admin_token.expose_secret().to_string();
    let admin = format!("http://127.0.0.1:{}", stack.admin_port());
    let pool = cp.backends().await?.into_iter().find(|b| b.name == spawned.pool_name).expect("the shared pool").id;
    tokio::spawn(stack.run_until_stopped());

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let res = http
        .post(format!("{admin}/console/login"))
        .form(&[("name", "bench"), ("token", token.as_str())])
        .send()
        .await?;
    anyhow::ensure!(res.status() == reqwest::StatusCode::SEE_OTHER, "sign-in: {}", res.status());
    let cookie = res.headers()["set-cookie"].to_str()?.split(';').next().unwrap_or_default().to_string();

    let pages = |n: u64| {
        let last = (n - 1) / 50;
        vec![
            ("Tenants, first page".to_string(), "/console/tenants".to_string()),
            ("Tenants, middle page".into(), format!("/console/tenants?page={}", last / 2)),
            ("Tenants, last page".into(), format!("/console/tenants?page={last}")),
            ("Tenants, search by slug".into(), format!("/console/tenants?q=bench-{:05}", n / 3)),
            ("Tenants, tier filter".into(), "/console/tenants?tier=dedicated".into()),
            ("Tenant page".into(), format!("/console/tenants/bench-{:05}", n / 2)),
        ]
    };
    let measure = async |path: &str| -> anyhow::Result<(f64, f64, usize)> {
        let mut ms = Vec::with_capacity(repeat);
        let mut size = 0;
        for _ in 0..repeat {
            let t0 = Instant::now();
            let res = http.get(format!("{admin}{path}")).header("cookie", &cookie).send().await?;
            anyhow::ensure!(res.status() == reqwest::StatusCode::OK, "{path}: {}", res.status());
            size = res.bytes().await?.len();
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        Ok((pct(&ms, 0.5), pct(&ms, 0.95), size))
    };

    // The heavy-tenant badges are computed at most every HEAVY_TTL for all
    // viewers: timed apart, uncached.
    let heavy = async || -> anyhow::Result<(f64, f64)> {
        let mut ms = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let t0 = Instant::now();
            cp.heavy_tenants().await?;
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        Ok((pct(&ms, 0.5), pct(&ms, 0.95)))
    };

    add_tenants(cp.registry(), pool, 0, 100).await?;
    let mut baseline = Vec::new();
    for (name, path) in pages(100) {
        baseline.push((name, measure(&path).await?));
    }
    let heavy_baseline = heavy().await?;
    let t0 = Instant::now();
    add_tenants(cp.registry(), pool, 100, total).await?;
    eprintln!("seeded {total} tenants in {:.1} s", t0.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(200)).await;

    println!(
        "| page | p50 ms (100 tenants) | p95 ms (100) | p50 ms ({total}) | p95 ms ({total}) | ratio p50 | HTML bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((name, path), (_, (b50, b95, _))) in pages(total).into_iter().zip(baseline) {
        let (p50, p95, size) = measure(&path).await?;
        println!("| {name} | {b50:.1} | {b95:.1} | {p50:.1} | {p95:.1} | {:.2} | {size} |", p50 / b50);
    }
    let ((b50, b95), (p50, p95)) = (heavy_baseline, heavy().await?);
    println!(
        "| heavy-tenant shares, uncached (every 15 s) | {b50:.1} | {b95:.1} | {p50:.1} | {p95:.1} | {:.2} | |",
        p50 / b50
    );
    Ok(())
}
