//! Many dedicated tenants under mixed load through the app API, with a
//! connection budget: the peak number of app connections seen in
//! `pg_stat_activity` must stay within the budget; latency is reported.
//!
//! cargo bench --bench connections     (BENCH_TENANTS=200 BENCH_BUDGET=64 BENCH_PER_POOL=4 BENCH_SECS=10 BENCH_CONCURRENCY=32)

mod common;

use common::env_or;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tenantry::dev::SUPERUSER;
use tenantry_control_plane::tenants::NewTenant;
use tenantry_core::{TenantSlug, Tier};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let tenants = env_or("BENCH_TENANTS", 200);
    let budget = env_or("BENCH_BUDGET", 64) as u32;
    let per_pool = env_or("BENCH_PER_POOL", 4) as u32;
    let secs = env_or("BENCH_SECS", 10);
    let concurrency = env_or("BENCH_CONCURRENCY", 32);
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let spawned = tenantry::testkit::spawn_stack(|s, _| {
        s.app.max_connections_total = budget;
        s.app.connections_per_pool = per_pool;
        s.app.connection_wait_ms = 5000;
    })
    .await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    let registry_db = spawned.registry_db.clone();
    tokio::spawn(stack.run_until_stopped());

    eprintln!("provisioning {tenants} dedicated tenants");
    let http = reqwest::Client::new();
    let mut targets = Vec::new();
    for i in 0..tenants {
        let created = cp
            .create_tenant(
                "bench",
                NewTenant {
                    engine: None,
                    slug: TenantSlug::parse(&format!("conn-{i}"))?,
                    name: format!("Conn {i}"),
                    tier: Tier::Dedicated,
                    region: None,
                },
            )
            .await?;
        let op = created.operation.expect("an operation");
        let done = cp.wait_operation(op.id, Duration::from_secs(60)).await?;
        anyhow::ensure!(done.state == tenantry_control_plane::operation::OperationState::Succeeded, "{:?}", done.error);
        let key = cp.create_api_key("bench", created.tenant.id, "bench").await?.key;
        let asset = common::first_asset(&http, &app, &key).await?;
        targets.push((key, asset));
    }
    let targets = Arc::new(targets);

    // Sample the app role's backend connections (not its registry pool).
    let watcher = tenantry_core::db::lazy_pool(
        "127.0.0.1",
        tc.cluster.port(),
        &registry_db,
        &tenantry_core::db::Credentials {
            user: SUPERUSER.into(),
            password: tc.secrets.superuser_password.clone().into(),
        },
        "bench-watch",
        tenantry_core::db::PoolSizing { tls: tc.tls(), ..Default::default() },
    );
    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(row)) = watcher
                    .query_one_raw(Statement::from_string(
                        DbBackend::Postgres,
                        "SELECT count(*) AS n FROM pg_stat_activity WHERE usename = 'tenantry_app' AND application_name = 'tenantry-app'",
                    ))
                    .await
                {
                    let n: i64 = row.try_get("", "n").unwrap_or(0);
                    peak.fetch_max(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (http, targets, errors, app) = (http.clone(), targets.clone(), errors.clone(), app.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = (w as usize * 7919) % targets.len();
            let mut n = 0u64;
            while Instant::now() < deadline {
                i = (i + 13) % targets.len();
                n += 1;
                let (key, asset) = &targets[i];
                let t0 = Instant::now();
                let resp = if n.is_multiple_of(5) {
                    http.post(format!("{app}/v1/assets"))
                        .bearer_auth(key)
                        .json(&serde_json::json!({"name": "Load", "tag": format!("L-{w}-{n}")}))
                        .send()
                        .await
                } else {
                    http.get(format!("{app}/v1/assets/{asset}")).bearer_auth(key).send().await
                };
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    println!(
        "| dedicated tenants | budget | per pool | requests | req/s | p50 ms | p99 ms | errors | peak app connections |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {tenants} | {budget} | {per_pool} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
        lat.len(),
        lat.len() as f64 / secs as f64,
        p(0.5),
        p(0.99),
        errors.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed)
    );
    Ok(())
}
