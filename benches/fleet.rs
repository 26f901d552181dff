//! A fleet of dedicated logical databases on one connection-starved cluster
//! (`max_connections` 300), measured in one run:
//! - provisioning: N dedicated tenants through the operation runner (each one
//!   created, claimed, copied from the template, registered, placed and
//!   `succeeded`), `BENCH_WORKERS` at a time: rate and p50 / p95 per
//!   provision, beside raw `CREATE DATABASE ... TEMPLATE` copies;
//! - migrations over the whole fleet: a no-op run, and one real migration (an
//!   index) by a serial loop against the fan-out (`BENCH_FANOUT`);
//! - a storage measurement pass over every backend;
//! - skewed load: `BENCH_CLIENTS` open-loop clients, each at every rate of
//!   `BENCH_RATES` requests/s (80 % reads of an asset, 20 % writes), 80 % of requests to the
//!   hottest 10 % of tenants, through one app process with a budget of
//!   `BENCH_BUDGET` connections; beside the same load over `BENCH_BASE`
//!   tenants that fit the budget. `pg_stat_activity` is sampled every 10 ms
//!   for the app's open connections (idle ones included).
//!
//! - all of the load, and 200 connection starts, for each SCRAM iteration
//!   count of the app role's secret in `BENCH_SCRAM` (PostgreSQL's 4,096 and
//!   the dev stack's count by default).
//!
//! cargo bench --bench fleet   (BENCH_TENANTS=1000 BENCH_WORKERS=4 BENCH_FANOUT=8 BENCH_CLIENTS=64
//!                              BENCH_RATES=2,4,6 BENCH_SECS=20 BENCH_BUDGET=64 BENCH_BASE=48
//!                              BENCH_SCRAM=4096,16)

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use sea_orm::ConnectionTrait;
use sea_orm::sqlx::{self, Connection};
use tenantry_control_plane::fleet::{BackendRun, Outcome};
use tenantry_control_plane::migrate::{Migration, TENANT};
use tenantry_control_plane::operation::OperationState;
use tenantry_control_plane::tenants::NewTenant;
use tenantry_core::{TenantSlug, Tier};
use tenantry_provisioner::LogicalProvisioner;

use common::{env_or, pct};

/// The tenant schema plus one more migration, as a release would ship it.
static WITH_EXTRA: std::sync::LazyLock<&'static [Migration]> = std::sync::LazyLock::new(|| {
    let mut set: Vec<Migration> =
        TENANT.iter().map(|m| Migration { version: m.version, name: m.name, sql: m.sql }).collect();
    set.push(Migration {
        version: TENANT.len() as i32 + 1,
        name: "bench_extra_index",
        sql: "CREATE INDEX bench_assets_created_idx ON assets (tenant_id, created_at)",
    });
    Box::leak(set.into_boxed_slice())
});

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn failed(runs: &[BackendRun]) -> usize {
    runs.iter().filter(|r| matches!(r.outcome, Outcome::Failed { .. })).count()
}

/// What one load run saw, per class of tenant.
#[derive(Default)]
struct Seen {
    hot: Vec<f64>,
    cold: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

/// One tenant as the load sees it: an API key and one of its assets.
struct Target {
    key: String,
    asset: String,
}

#[derive(Clone, Copy)]
struct Load {
    clients: u64,
    rate: u64,
    secs: u64,
    warmup: u64,
}

/// Open-loop load over `targets`: with probability 0.8 one of the first
/// `hot` targets, else one of the rest (uniform within each class; with
/// `hot == targets.len()` every request goes to the hot class).
async fn run_load(
    http: &reqwest::Client,
    app: &str,
    targets: &Arc<Vec<Target>>,
    hot: usize,
    load: &Load,
    run: usize,
) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(load.warmup);
    let end = measure_from + Duration::from_secs(load.secs);
    let spread = load.clients as f64;
    let mut clients = Vec::new();
    for c in 0..load.clients {
        let (http, app, targets, seen) = (http.clone(), app.to_string(), targets.clone(), seen.clone());
        let period = Duration::from_micros(1_000_000 / load.rate.max(1));
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            // Clients start spread over one period, not in lockstep.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(c as f64 / spread), period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::new();
            let mut n = 0u64;
            loop {
                let at = tick.tick().await.into_std();
                if at >= end {
                    break;
                }
                n += 1;
                let is_hot = hot >= targets.len() || rng.random_bool(0.8);
                let i = if is_hot { rng.random_range(0..hot) } else { rng.random_range(hot..targets.len()) };
                let write = n.is_multiple_of(5);
                let (http, app, targets, seen) = (http.clone(), app.clone(), targets.clone(), seen.clone());
                tasks.push(tokio::spawn(async move {
                    let t = &targets[i];
                    let resp = if write {
                        http.post(format!("{app}/v1/assets"))
                            .bearer_auth(&t.key)
                            .json(&serde_json::json!({"name": "Load", "tag": format!("L-{run}-{c}-{n}")}))
                            .send()
                            .await
                    } else {
                        http.get(format!("{app}/v1/assets/{}", t.asset)).bearer_auth(&t.key).send().await
                    };
                    let outcome = match resp {
                        Ok(r) if r.status().is_success() => r.bytes().await.map(|_| ()).map_err(|e| e.to_string()),
                        Ok(r) => Err(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => Err(e.to_string()),
                    };
                    // From the time the request was due: a stall of the load
                    // generator counts against the server, not for it.
                    let latency = ms(at.elapsed());
                    if at < measure_from {
                        return;
                    }
                    let mut s = seen.lock().expect("load results");
                    match outcome {
                        Ok(()) if is_hot => s.hot.push(latency),
                        Ok(()) => s.cold.push(latency),
                        Err(e) => {
                            s.errors += 1;
                            s.first_error.get_or_insert(e);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    let mut seen = Arc::try_unwrap(seen).ok().expect("load finished").into_inner().expect("load results");
    seen.hot.sort_by(f64::total_cmp);
    seen.cold.sort_by(f64::total_cmp);
    seen
}

/// Samples the app role's open connections every 10 ms until stopped: the peak.
fn sample_connections(port: u16, password: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let peak = AtomicI64::new(0);
        let Ok(mut conn) = common::superuser(port, &password, "postgres", "bench-watch").await else {
            return -1;
        };
        while !stop.load(Ordering::Relaxed) {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenantry_app' AND application_name = 'tenantry-app'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
            peak.fetch_max(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = conn.close().await;
        peak.load(Ordering::Relaxed)
    })
}

/// Takes the extra migration off every backend again.
async fn reset(cp: &tenantry_control_plane::ControlPlane, port: u16, password: &str) -> anyhow::Result<()> {
    for b in cp.migration_status().await? {
        let backend = cp.backend(b.backend_id).await?;
        let mut db = common::superuser(port, password, &backend.database, "bench-reset").await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP INDEX IF EXISTS bench_assets_created_idx; DELETE FROM tenantry_schema_migrations WHERE version > {}",
            TENANT.len()
        )))
        .execute(&mut db)
        .await?;
        let _ = db.close().await;
    }
    cp.registry().execute_unprepared(&format!("UPDATE backends SET schema_version = {}", TENANT.len())).await?;
    Ok(())
}

/// Gives the app role a SCRAM secret of `iterations` (connections already open
/// stay; new ones log in against it).
async fn set_app_scram(port: u16, password: &str, app_password: &str, iterations: u32) -> anyhow::Result<()> {
    let mut db = common::superuser(port, password, "postgres", "bench-scram").await?;
    let secret = tenantry_provisioner::scram::scram_secret(app_password, iterations);
    let sql = format!("ALTER ROLE {} PASSWORD '{secret}'", tenantry::dev::APP_ROLE);
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut db).await?;
    let _ = db.close().await;
    Ok(())
}

/// What a cold tenant pays: one connection start as the app role (SCRAM, a
/// backend started, one statement), 200 one after another over the fleet.
async fn connection_starts(
    cp: &tenantry_control_plane::ControlPlane,
    provisioned: &[(usize, uuid::Uuid, f64)],
    tc: &tenantry::testkit::TestCluster,
) -> anyhow::Result<Vec<f64>> {
    let mut starts = Vec::new();
    for i in 0..200 {
        let tenant = cp.tenant(&provisioned[(i * 7) % provisioned.len()].1.to_string()).await?;
        let backend = cp.backend(tenant.placement.expect("placed").backend_id).await?;
        let opts = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(tc.cluster.port())
            .database(&backend.database)
            .username(tenantry::dev::APP_ROLE)
            .password(&tc.secrets.app_password)
            .application_name("bench-start");
        let t0 = Instant::now();
        let mut conn = sqlx::postgres::PgConnection::connect_with(&opts).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        starts.push(ms(t0.elapsed()));
        let _ = conn.close().await;
    }
    starts.sort_by(f64::total_cmp);
    Ok(starts)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let tenants = env_or("BENCH_TENANTS", 1000) as usize;
    let workers = env_or("BENCH_WORKERS", 4) as usize;
    let fanout = env_or("BENCH_FANOUT", 8) as usize;
    let budget = env_or("BENCH_BUDGET", 64) as u32;
    let base = (env_or("BENCH_BASE", 48) as usize).min(tenants);
    let load = Load {
        clients: env_or("BENCH_CLIENTS", 64),
        rate: 0,
        secs: env_or("BENCH_SECS", 20),
        warmup: env_or("BENCH_WARMUP", 3),
    };
    tenantry::testkit::set_max_connections(env_or("BENCH_MAX_CONNECTIONS", 300) as u32);
    // Sized like a host for 1,000 databases (shared_buffers a quarter of
    // 8 GB) rather than the test clusters' 128 MB; BENCH_SHARED_BUFFERS=128MB
    // measures the small setting (it served the same latencies: a connection
    // start's cost is the backend's start and exit, docs/benchmarks.md).
    let shared_buffers = common::size_cluster("2GB");
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let password = tc.secrets.superuser_password.clone();
    let spawned = tenantry::testkit::spawn_stack(|s, _| {
        s.app.max_connections_total = budget;
        s.app.connections_per_pool = 1;
        s.app.connection_wait_ms = 5000;
        s.control_plane.operation_workers = workers;
        // The storage pass is measured below, not left to its timer.
        s.control_plane.usage.storage_interval_secs = 24 * 3600;
    })
    .await?;
    let stack = spawned.stack;
    let cp_arc = stack.control_plane();
    let cp = &*cp_arc;
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    let template = cp.config().template_database.clone();
    tokio::spawn(stack.run_until_stopped());
    let admin = LogicalProvisioner::connect(
        "127.0.0.1",
        tc.cluster.port(),
        tenantry::dev::SUPERUSER,
        &password.clone().into(),
        |o| tc.tls().apply(o),
    )
    .await?;

    // Raw template copies: the floor of a provision.
    let mut raw = Vec::new();
    for i in 0..10 {
        let name = format!("bench_raw_{i}_{}", std::process::id());
        let t0 = Instant::now();
        admin.create_database(&name, tenantry::dev::OWNER_ROLE, Some(&template)).await?;
        raw.push(ms(t0.elapsed()));
        admin.drop_database(&name).await?;
    }
    raw.sort_by(f64::total_cmp);

    // Every tenant provisioned through an operation, `workers` in flight.
    eprintln!("provisioning {tenants} dedicated tenants, {workers} at a time");
    let started = Instant::now();
    let mut provisioned: Vec<(usize, uuid::Uuid, f64)> = futures::stream::iter(0..tenants)
        .map(|i| async move {
            let t0 = Instant::now();
            let new = NewTenant {
                engine: None,
                slug: TenantSlug::parse(&format!("fleet-{i:04}"))?,
                name: format!("Fleet {i}"),
                tier: Tier::Dedicated,
                region: None,
            };
            let created = cp.create_tenant("bench", new).await?;
            let op = created.operation.expect("dedicated tenants are provisioned by an operation");
            let done = cp.wait_operation(op.id, Duration::from_secs(300)).await?;
            anyhow::ensure!(done.state == OperationState::Succeeded, "provision {i}: {:?}", done.error);
            if (i + 1) % 100 == 0 {
                eprintln!("  {} provisioned", i + 1);
            }
            Ok((i, created.tenant.id, ms(t0.elapsed())))
        })
        .buffer_unordered(workers)
        .try_collect()
        .await?;
    let provision_secs = started.elapsed().as_secs_f64();
    let mut provision_ms: Vec<f64> = provisioned.iter().map(|p| p.2).collect();
    provision_ms.sort_by(f64::total_cmp);
    provisioned.sort_by_key(|p| p.0);

    // A key and one asset per tenant, through the app.
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let targets: Vec<Target> = futures::stream::iter(provisioned.iter().map(|p| p.1))
        .map(|tenant| {
            let (http, app) = (http.clone(), app.clone());
            async move {
                let key = cp.create_api_key("bench", tenant, "bench").await?.key;
                let asset = common::first_asset(&http, &app, &key).await?;
                anyhow::Ok(Target { key, asset })
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let targets = Arc::new(targets);

    // Migrations over the whole fleet.
    eprintln!("migrating the fleet");
    let t0 = Instant::now();
    let noop = cp.migrate_fleet_to("bench", TENANT, fanout, |_, _| {}).await?;
    let noop_time = t0.elapsed();
    let t0 = Instant::now();
    let serial = cp.migrate_fleet_to("bench", &WITH_EXTRA, 1, |_, _| {}).await?;
    let serial_time = t0.elapsed();
    reset(cp, tc.cluster.port(), &password).await?;
    let t0 = Instant::now();
    let parallel = cp.migrate_fleet_to("bench", &WITH_EXTRA, fanout, |_, _| {}).await?;
    let fanout_time = t0.elapsed();
    // Back to the schema this build serves.
    reset(cp, tc.cluster.port(), &password).await?;

    // One storage measurement pass over every backend.
    eprintln!("measuring storage");
    let t0 = Instant::now();
    let measured = cp.measure_storage().await?;
    let storage_time = t0.elapsed();

    // Skewed load at each offered rate, beside a baseline that fits the budget.
    let hot = (tenants / 10).max(1);
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "2,4,6".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    // The app role's SCRAM iteration counts to compare: each count is set on
    // the role (as `tenantry scram-secret` would), then measured.
    let counts: Vec<u32> = std::env::var("BENCH_SCRAM")
        .unwrap_or_else(|_| format!("4096,{}", tenantry::dev::APP_SCRAM_ITERATIONS))
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let mut runs = Vec::new();
    for &iterations in &counts {
        for &rate in &rates {
            runs.push((iterations, rate, format!("baseline: {base} tenants (fit the budget)"), base, base));
            runs.push((
                iterations,
                rate,
                format!("skewed: {tenants} tenants, 80 % to the hottest {hot}"),
                tenants,
                hot,
            ));
        }
    }
    let mut starts = Vec::new();
    let mut rows = Vec::new();
    let mut current = None;
    for (run, (iterations, rate, label, over, hot)) in runs.into_iter().enumerate() {
        if current != Some(iterations) {
            current = Some(iterations);
            set_app_scram(tc.cluster.port(), &password, &tc.secrets.app_password, iterations).await?;
            starts.push((iterations, connection_starts(cp, &provisioned, tc).await?));
        }
        let load = Load { rate, ..load };
        eprintln!("load: {label} at {} req/s, SCRAM {iterations}", rate * load.clients);
        let subset: Arc<Vec<Target>> = Arc::new(
            targets.iter().take(over).map(|t| Target { key: t.key.clone(), asset: t.asset.clone() }).collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_connections(tc.cluster.port(), password.clone(), stop.clone());
        let seen = run_load(&http, &app, &subset, hot, &load, run).await;
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.await?;
        if let Some(e) = &seen.first_error {
            eprintln!("  first error: {e}");
        }
        rows.push((iterations, rate * load.clients, label, seen, peak));
    }
    set_app_scram(tc.cluster.port(), &password, &tc.secrets.app_password, tenantry::dev::APP_SCRAM_ITERATIONS).await?;

    println!(
        "## {tenants} dedicated databases on one cluster (max_connections 300, shared_buffers {shared_buffers})\n"
    );
    println!("| provisioning | figure |");
    println!("|---|---:|");
    println!(
        "| raw `CREATE DATABASE ... TEMPLATE` p50 / p95 ms (10 copies) | {:.0} / {:.0} |",
        pct(&raw, 0.5),
        pct(&raw, 0.95)
    );
    println!(
        "| provision through an operation p50 / p95 ms ({workers} at a time) | {:.0} / {:.0} |",
        pct(&provision_ms, 0.5),
        pct(&provision_ms, 0.95)
    );
    println!("| {tenants} provisions, wall time s | {provision_secs:.1} |");
    println!("| provisions per second | {:.1} |", tenants as f64 / provision_secs);
    println!("\n| fleet pass over {} backends | seconds | failed |", parallel.len());
    println!("|---|---:|---:|");
    println!("| no-op migration (all up to date) | {:.3} | {} |", noop_time.as_secs_f64(), failed(&noop));
    println!("| one migration, serial loop (concurrency 1) | {:.2} | {} |", serial_time.as_secs_f64(), failed(&serial));
    println!(
        "| one migration, fan-out (concurrency {fanout}) | {:.2} | {} |",
        fanout_time.as_secs_f64(),
        failed(&parallel)
    );
    println!("| storage measurement ({measured} tenants) | {:.2} | - |", storage_time.as_secs_f64());
    println!(
        "\n| one connection start as the app role (SCRAM, backend start, `SELECT 1`; 200 one after another) | p50 ms | p99 ms |"
    );
    println!("|---|---:|---:|");
    for (iterations, t) in &starts {
        println!("| {iterations} iterations | {:.2} | {:.2} |", pct(t, 0.5), pct(t, 0.99));
    }
    println!(
        "\n| load ({} clients, open loop, {} s each) | SCRAM iterations | offered req/s | served | req/s | hot p50 / p99 ms | cold p50 / p99 ms | errors | peak open app connections (budget {budget}) |",
        load.clients, load.secs
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (iterations, offered, label, s, peak) in rows {
        let n = s.hot.len() + s.cold.len();
        println!(
            "| {label} | {iterations} | {offered} | {n} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {peak} |",
            n as f64 / load.secs as f64,
            pct(&s.hot, 0.5),
            pct(&s.hot, 0.99),
            pct(&s.cold, 0.5),
            pct(&s.cold, 0.99),
            s.errors
        );
    }
    Ok(())
}
