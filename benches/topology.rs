//! Production topology, measured with real `tenantry serve` processes on one
//! registry (the release binary):
//!
//! 1. routed throughput (`GET /v1/assets/{id}`) through one `--role app`
//!    process against two, same run, alternating;
//! 2. the write stall a client sees when the process holding a move dies
//!    right after the fence and right after the seal (the crash-safe cutover;
//!    before it, about 30 s: until the lease lapsed);
//! 3. the time from SIGKILL (and from SIGTERM) of the control plane holding a
//!    move to another one resuming it (lease 10 s, the default).
//!
//! cargo bench --bench topology     (BENCH_SECS=5 BENCH_ROUNDS=2 BENCH_CONCURRENCY=16 BENCH_ROWS=20000)

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tenantry::testkit::procs::{Fleet, Proc, child_config, pid_of, ready, supervise, write_anywhere};
use tenantry_control_plane::ControlPlane;
use tenantry_control_plane::tenants::NewTenant;
use tenantry_core::{TenantSlug, Tier};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// Reads for `secs` at `concurrency`, spread over `apps`; (req/s, p50 ms, p99 ms, errors).
async fn read_load(apps: &[String], key: &str, ids: &[String], concurrency: u64, secs: u64) -> (f64, f64, f64, u64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency as usize {
        let (client, apps, key, ids) = (client.clone(), apps.to_vec(), key.to_string(), ids.to_vec());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, w * 7919);
            while Instant::now() < deadline {
                i += 1;
                let url = format!("{}/v1/assets/{}", apps[i % apps.len()], ids[i % ids.len()]);
                let t0 = Instant::now();
                match client.get(&url).bearer_auth(&key).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("a load task");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    (lat.len() as f64 / start.elapsed().as_secs_f64(), pct(&lat, 0.5), pct(&lat, 0.99), errors)
}

async fn lease_owner(registry: &sea_orm::DatabaseConnection, op: uuid::Uuid) -> Option<u32> {
    let row = registry
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT lease_owner FROM operations WHERE id = '{op}' AND state = 'running'"),
        ))
        .await
        .ok()??;
    row.try_get::<Option<String>>("", "lease_owner").ok()?.as_deref().and_then(pid_of)
}

async fn step_of(cp: &ControlPlane, op: uuid::Uuid) -> String {
    cp.operation(op).await.map(|o| o.step.to_string()).unwrap_or_default()
}

async fn move_to(cp: &ControlPlane, tenant: &str, backend: uuid::Uuid) -> anyhow::Result<uuid::Uuid> {
    Ok(cp.move_tenant("bench", tenant, backend).await?.id)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 5);
    let rounds = env_or("BENCH_ROUNDS", 2);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let rows = env_or("BENCH_ROWS", 20_000);
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    // The in-process stack sets the registry up and runs no operation worker.
    let spawned = tenantry::testkit::spawn_stack(|s, _| s.control_plane.operation_workers = 0).await?;
    let cp = spawned.stack.control_plane();
    let pool1 = cp.backends().await?.into_iter().find(|b| b.name == spawned.pool_name).expect("the pool").id;
    let pool2 = cp
        .register_backend("bench", &tenantry::testkit::unique("pool"), tenantry_core::BackendKind::SharedPool)
        .await?
        .id;
    let tenant = cp
        .create_tenant(
            "bench",
            NewTenant {
                engine: None,
                slug: TenantSlug::parse("topology")?,
                name: "Topology".into(),
                tier: Tier::Shared,
                region: None,
            },
        )
        .await?
        .tenant;
    let t = tenant.id.to_string();
    let key = cp.create_api_key("bench", tenant.id, "bench").await?.key;
    cp.update_settings(
        "bench",
        &t,
        &serde_json::json!({"limits": {"requests_per_second": 10_000_000, "burst": 10_000_000, "max_concurrent_requests": 100_000}}),
    )
    .await?;
    // Rows straight into the pool (as the superuser), so moves have a copy to do.
    let pool_db = tenantry::testkit::connect_as_superuser(&spawned.pool_name);
    pool_db
        .execute_unprepared(&format!(
            "INSERT INTO assets (tenant_id, id, name, tag, status) \
             SELECT '{t}', gen_random_uuid(), 'Asset ' || i, 'B-' || i, 'active' FROM generate_series(1, {rows}) i"
        ))
        .await?;
    let ids: Vec<String> = pool_db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT id::text FROM assets WHERE tenant_id = '{t}' LIMIT 1000"),
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<String>("", "id").unwrap_or_default())
        .collect();
    let registry = tenantry::testkit::connect_as_superuser(&spawned.registry_db);
    let bin = Path::new(env!("CARGO_BIN_EXE_tenantry"));
    let dir = std::env::temp_dir().join(tenantry::testkit::unique("bench-topology"));
    std::fs::create_dir_all(&dir)?;
    let config = child_config(&spawned.registry_db, &cp.config().template_database, "");
    let hooks = ["move.cutover.fenced", "move.cutover.sealed"];
    let failpoints = hooks.iter().map(|h| format!("{h}@{}", dir.join(h).display())).collect::<Vec<_>>().join(",");
    let fp = vec![("TENANTRY_FAILPOINTS".to_string(), failpoints)];
    // A hook whose marker exists is disarmed: each move below arms only its own.
    for h in hooks {
        std::fs::write(dir.join(h), "")?;
    }
    let procs = Arc::new(Mutex::new(vec![
        Proc::start(bin, "app", &config, vec![], dir.join("app-1.log")),
        Proc::start(bin, "app", &config, vec![], dir.join("app-2.log")),
        Proc::start(bin, "control-plane", &config, fp.clone(), dir.join("cp-1.log")),
        Proc::start(bin, "control-plane", &config, fp, dir.join("cp-2.log")),
    ]));
    let _fleet = Fleet(procs.clone());
    let http = reqwest::Client::new();
    let urls: Vec<(String, std::path::PathBuf)> =
        procs.lock().unwrap().iter().map(|p| (p.url(), p.log.clone())).collect();
    for (url, log) in &urls {
        ready(&http, url, log).await;
    }
    let one = vec![urls[0].0.clone()];
    let two = vec![urls[0].0.clone(), urls[1].0.clone()];
    eprintln!("logs in {}", dir.display());

    // 1. One app process against two.
    read_load(&two, &key, &ids, concurrency, 1).await;
    // Per side (one app process, two): mean req/s, (p50, p99) per round, errors.
    type Side = (f64, Vec<(f64, f64)>, u64);
    let mut results: [Side; 2] = [(0.0, Vec::new(), 0), (0.0, Vec::new(), 0)];
    for round in 0..rounds {
        for k in 0..2 {
            let i = (k + round as usize) % 2;
            let apps = if i == 0 { &one } else { &two };
            let (rps, p50, p99, errors) = read_load(apps, &key, &ids, concurrency, secs).await;
            eprintln!("round {round}: {} app process(es): {rps:.0} req/s", i + 1);
            results[i].0 += rps / rounds as f64;
            results[i].1.push((p50, p99));
            results[i].2 += errors;
        }
    }
    println!("## Routed reads: one app process against two\n");
    println!("| app processes | req/s | p50 ms | p99 ms | errors |");
    println!("|---:|---:|---:|---:|---:|");
    for (i, (rps, lat, errors)) in results.iter().enumerate() {
        let n = lat.len() as f64;
        let p50 = lat.iter().map(|l| l.0).sum::<f64>() / n;
        let p99 = lat.iter().map(|l| l.1).sum::<f64>() / n;
        println!("| {} | {rps:.0} | {p50:.2} | {p99:.2} | {errors} |", i + 1);
    }

    // A supervisor restarts what exits, as systemd or Kubernetes would.
    let on = Arc::new(AtomicBool::new(true));
    let supervisor = supervise(procs.clone(), on.clone());
    // A client writes through both apps throughout.
    let (stop, worst, n_ok) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (stop, worst, n_ok, apps, key, http) =
            (stop.clone(), worst.clone(), n_ok.clone(), two.clone(), key.clone(), http.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match write_anywhere(&http, &apps, &key, &format!("w-{n}"), n).await {
                    Ok(ms) => {
                        worst.fetch_max(ms, Ordering::Relaxed);
                        n_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => failures += 1,
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };

    // 2. The holder dies right after the fence, then right after the seal.
    println!("\n## Write stall when the process holding a move dies\n");
    println!("| killed right after | longest write ms | move took s |");
    println!("|---|---:|---:|");
    let mut home = pool1;
    for hook in hooks {
        let target = if home == pool1 { pool2 } else { pool1 };
        worst.store(0, Ordering::Relaxed);
        std::fs::remove_file(dir.join(hook))?;
        let started = Instant::now();
        let op = move_to(&cp, &t, target).await?;
        let done = cp.wait_operation(op, Duration::from_secs(180)).await?;
        anyhow::ensure!(dir.join(hook).exists(), "the crash hook {hook} fired");
        anyhow::ensure!(done.state.to_string() == "succeeded", "{:?}", done.error);
        println!("| {hook} | {} | {:.1} |", worst.load(Ordering::Relaxed), started.elapsed().as_secs_f64());
        home = target;
    }

    // 3. SIGKILL, then SIGTERM, of the control plane holding a move (in its copy).
    println!("\n## From the holder's death to another process resuming its move (lease 10 s)\n");
    println!("| signal | resumed after s | move took s |");
    println!("|---|---:|---:|");
    on.store(false, Ordering::Relaxed);
    let _ = supervisor.await;
    for signal in ["KILL", "TERM"] {
        let target = if home == pool1 { pool2 } else { pool1 };
        let started = Instant::now();
        let op = move_to(&cp, &t, target).await?;
        let holder = loop {
            if let Some(pid) = lease_owner(&registry, op).await
                && matches!(step_of(&cp, op).await.as_str(), "copy" | "catch_up")
            {
                break pid;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the move never reached its copy");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let victim = procs.lock().unwrap().iter().position(|p| p.pid() == holder).expect("the holder is ours");
        let signalled = Instant::now();
        procs.lock().unwrap()[victim].signal(signal);
        let resumed = loop {
            if lease_owner(&registry, op).await.is_some_and(|p| p != holder)
                || cp.operation(op).await.is_ok_and(|o| o.state.to_string() == "succeeded")
            {
                break signalled.elapsed();
            }
            anyhow::ensure!(signalled.elapsed() < Duration::from_secs(60), "nobody resumed the move");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let done = cp.wait_operation(op, Duration::from_secs(180)).await?;
        anyhow::ensure!(done.state.to_string() == "succeeded", "{:?}", done.error);
        println!("| SIG{signal} | {:.2} | {:.1} |", resumed.as_secs_f64(), started.elapsed().as_secs_f64());
        // Bring the victim back for the next round.
        let mut procs = procs.lock().unwrap();
        let _ = procs[victim].child.wait();
        procs[victim].supervise();
        home = target;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await?;
    println!("\nwrites: {} acknowledged, {failures} failed; {rows} rows moved each time", n_ok.load(Ordering::Relaxed));
    let _ = tc;
    Ok(())
}
