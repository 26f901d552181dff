//! Routed `GET /v1/assets/{id}` (key -> tenant -> placement -> pool ->
//! BEGIN; tenantry_enter; query; COMMIT, under forced RLS) against a baseline
//! handler in the same binary that runs the same tenant-filtered query on one
//! static pool with no routing, no RLS and no transaction. Same process, same
//! run, alternating rounds so drift hits both sides alike.
//!
//! cargo bench --bench routing            (BENCH_SECS, BENCH_ROUNDS, BENCH_CONCURRENCY)

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry::dev::SUPERUSER;
use tenantry_app::config::BaselineConfig;
use tenantry_core::db::Credentials;
use tenantry_core::{TenantSlug, Tier};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Sample {
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

async fn run_load(
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    key: Option<&str>,
    concurrency: u64,
    secs: u64,
) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let urls = urls.clone();
        let key = key.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(50_000);
            let mut errors = 0u64;
            let mut i = worker as usize * 7919;
            while Instant::now() < deadline {
                i = (i + 1) % urls.len();
                let mut req = client.get(&urls[i]);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let t0 = Instant::now();
                match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        latencies_us.extend(l);
        errors += e;
    }
    Sample { latencies_us, errors, elapsed: start.elapsed() }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 5);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let rows = env_or("BENCH_ROWS", 1000);

    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let spawned = tenantry::testkit::spawn_stack(|s, pool| {
        s.app.baseline = Some(BaselineConfig {
            host: "127.0.0.1".into(),
            port: tc.cluster.port(),
            database: pool.to_string(),
            credentials: Credentials { user: SUPERUSER.into(), password: tc.secrets.superuser_password.clone().into() },
        });
    })
    .await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let tenant = cp
        .create_tenant(
            "bench",
            tenantry_control_plane::tenants::NewTenant {
                engine: None,
                slug: TenantSlug::parse("bench")?,
                name: "Bench".into(),
                tier: Tier::Shared,
                region: None,
            },
        )
        .await?
        .tenant;
    // A neighbour on the same pool, so the tenant filter has something to skip.
    cp.create_tenant(
        "bench",
        tenantry_control_plane::tenants::NewTenant {
            engine: None,
            slug: TenantSlug::parse("neighbour")?,
            name: "Neighbour".into(),
            tier: Tier::Shared,
            region: None,
        },
    )
    .await?;
    let key = cp.create_api_key("bench", tenant.id, "bench").await?.key;
    // Measure the request path, not the tier's default rate limit.
    cp.update_settings(
        "bench",
        "bench",
        &serde_json::json!({"limits": {"requests_per_second": 10_000_000, "burst": 10_000_000, "max_concurrent_requests": 100_000}}),
    )
    .await?;
    let resolver = stack.resolver();
    let owner = resolver.authenticate(&key).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let tx = resolver.enter(&owner).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut ids = Vec::new();
    for i in 0..rows {
        let a = tenantry_app::data::create_asset(
            &tx,
            tenantry_app::data::NewAsset {
                name: format!("Asset {i}"),
                tag: format!("B-{i:06}"),
                category: "bench".into(),
                location: "rack".into(),
                status: "active".into(),
                attributes: serde_json::json!({"i": i}),
            },
        )
        .await?;
        ids.push(a.id);
    }
    tx.commit().await?;
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    tokio::spawn(stack.run_until_stopped());

    let routed: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("{app}/v1/assets/{id}")).collect());
    let baseline: Arc<Vec<String>> =
        Arc::new(ids.iter().map(|id| format!("{app}/bench/baseline/assets/{id}?tenant={}", tenant.id)).collect());
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency as usize).build()?;

    // Warm up caches and pools on both paths.
    run_load(&client, routed.clone(), Some(&key), concurrency, 1).await;
    run_load(&client, baseline.clone(), None, concurrency, 1).await;

    let (mut r_lat, mut b_lat) = (Vec::new(), Vec::new());
    let (mut r_time, mut b_time) = (Duration::ZERO, Duration::ZERO);
    let (mut r_err, mut b_err) = (0, 0);
    for round in 0..rounds {
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for is_routed in order {
            let s = if is_routed {
                run_load(&client, routed.clone(), Some(&key), concurrency, secs).await
            } else {
                run_load(&client, baseline.clone(), None, concurrency, secs).await
            };
            let rps = s.latencies_us.len() as f64 / s.elapsed.as_secs_f64();
            eprintln!("round {round} {}: {rps:.0} req/s", if is_routed { "routed" } else { "baseline" });
            if is_routed {
                r_lat.extend(s.latencies_us);
                r_time += s.elapsed;
                r_err += s.errors;
            } else {
                b_lat.extend(s.latencies_us);
                b_time += s.elapsed;
                b_err += s.errors;
            }
        }
    }
    r_lat.sort_unstable();
    b_lat.sort_unstable();
    let r_rps = r_lat.len() as f64 / r_time.as_secs_f64();
    let b_rps = b_lat.len() as f64 / b_time.as_secs_f64();
    println!("| path | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| baseline (static pool, no RLS, no txn) | {b_rps:.0} | {:.2} | {:.2} | {b_err} |",
        pct(&b_lat, 0.5),
        pct(&b_lat, 0.99)
    );
    println!(
        "| routed (full request path) | {r_rps:.0} | {:.2} | {:.2} | {r_err} |",
        pct(&r_lat, 0.5),
        pct(&r_lat, 0.99)
    );
    println!(
        "\nrouted/baseline throughput = {:.3}  ({} rounds x {secs} s, concurrency {concurrency}, {rows} rows)",
        r_rps / b_rps,
        rounds,
    );
    Ok(())
}
