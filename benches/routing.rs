//! Routed `GET /v1/assets/{id}` (key -> tenant -> placement -> pool ->
//! BEGIN; tenantry_enter; query; COMMIT, under forced RLS) against a baseline
//! handler in the same binary that runs the same tenant-filtered query on one
//! static pool with no routing, no RLS and no transaction. Same process, same
//! run, alternating rounds so drift hits both sides alike. A third path is
//! the same routed request for a tenant on a second shared pool that the app
//! reaches through a real PgBouncer 1.18 in transaction mode (unnamed
//! statements, the read inside a transaction). A fifth is the routed request
//! for a tenant on a pool put back to tenant schema 5's gates, the forgeable
//! context the vouched gate replaced: before against after, same run. A
//! sixth is the first path's request signed in by a tenant user's bearer
//! token from a real OIDC provider on loopback (`tests/oidc_provider.py`),
//! cached after its first check, against the API key of the second path.
//!
//! cargo bench --bench routing            (BENCH_SECS, BENCH_ROUNDS, BENCH_CONCURRENCY, BENCH_ONLY)

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry::dev::{APP_ROLE, SUPERUSER};
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

/// A shared-tier tenant (on the emptiest shared pool).
async fn shared_tenant(
    cp: &tenantry_control_plane::ControlPlane,
    slug: &str,
    name: &str,
) -> anyhow::Result<tenantry_control_plane::tenants::Created> {
    let tenant = tenantry_control_plane::tenants::NewTenant {
        engine: None,
        slug: TenantSlug::parse(slug)?,
        name: name.into(),
        tier: Tier::Shared,
        region: None,
    };
    Ok(cp.create_tenant("bench", tenant).await?)
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
            isolated: Some(Credentials { user: APP_ROLE.into(), password: tc.secrets.app_password.clone().into() }),
        });
    })
    .await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let tenant = shared_tenant(&cp, "bench", "Bench").await?.tenant;
    // A neighbour on the same pool, so the tenant filter has something to skip.
    shared_tenant(&cp, "neighbour", "Neighbour").await?;
    let limits = serde_json::json!({"limits": {"requests_per_second": 10_000_000, "burst": 10_000_000, "max_concurrent_requests": 100_000}});
    // The pooled tenant lives on a second pool (the emptiest pool gets the
    // next tenant), which the app reaches through PgBouncer.
    let pool2 = tenantry::testkit::unique("pool");
    let pooled_backend = cp.register_backend("bench", &pool2, tenantry_core::BackendKind::SharedPool).await?;
    let pgbouncer = tokio::task::spawn_blocking(tenantry::testkit::pgbouncer).await?;
    cp.set_pooler(
        "bench",
        pooled_backend.id,
        Some(tenantry_control_plane::backends::Pooler {
            host: "127.0.0.1".into(),
            port: pgbouncer.port,
            mode: tenantry_control_plane::backends::PoolerMode::Transaction,
        }),
    )
    .await?;
    let pooled = shared_tenant(&cp, "bench-pooled", "Bench through PgBouncer").await?.tenant;
    anyhow::ensure!(
        pooled.placement.as_ref().map(|p| p.backend_id) == Some(pooled_backend.id),
        "the pooled tenant landed on the pooled pool"
    );
    // The same routed read on a pool put back to tenant schema 5's gates (a
    // context the app role could set itself): the cost of the vouched gate,
    // before against after, in the same run.
    let pool3 = tenantry::testkit::unique("pool");
    let before_backend = cp.register_backend("bench", &pool3, tenantry_core::BackendKind::SharedPool).await?;
    let before = shared_tenant(&cp, "bench-before", "Bench at schema 5").await?.tenant;
    anyhow::ensure!(
        before.placement.as_ref().map(|p| p.backend_id) == Some(before_backend.id),
        "the schema-5 tenant landed on the third pool"
    );
    {
        use sea_orm::ConnectionTrait;
        let superuser = |db: &str| {
            tenantry_core::db::lazy_pool(
                "127.0.0.1",
                tc.cluster.port(),
                db,
                &Credentials { user: SUPERUSER.into(), password: tc.secrets.superuser_password.clone().into() },
                "bench",
                tenantry_core::db::PoolSizing { tls: tc.tls(), ..Default::default() },
            )
        };
        superuser(&pool3).execute_unprepared(&tenantry::testkit::schema_5_gates_sql()).await?;
        superuser(&cp.config().registry_database)
            .execute_unprepared(&format!("UPDATE backends SET schema_version = 5 WHERE id = '{}'", before_backend.id))
            .await?;
    }
    let resolver = stack.resolver();
    let mut seeded = Vec::new();
    for (slug, id) in [("bench", tenant.id), ("bench-pooled", pooled.id), ("bench-before", before.id)] {
        let key = cp.create_api_key("bench", id, "bench").await?.key;
        // Measure the request path, not the tier's default rate limit.
        cp.update_settings("bench", slug, &limits).await?;
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
        seeded.push((key, ids));
    }
    let (key, ids) = seeded.remove(0);
    let (pooled_key, pooled_ids) = seeded.remove(0);
    let (before_key, before_ids) = seeded.remove(0);
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    tokio::spawn(stack.run_until_stopped());

    let routed: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("{app}/v1/assets/{id}")).collect());
    let schema_5: Arc<Vec<String>> = Arc::new(before_ids.iter().map(|id| format!("{app}/v1/assets/{id}")).collect());
    let through: Arc<Vec<String>> = Arc::new(pooled_ids.iter().map(|id| format!("{app}/v1/assets/{id}")).collect());
    let baseline: Arc<Vec<String>> =
        Arc::new(ids.iter().map(|id| format!("{app}/bench/baseline/assets/{id}?tenant={}", tenant.id)).collect());
    let epoch = tenant.placement.as_ref().map_or(1, |p| p.epoch);
    let isolated: Arc<Vec<String>> = Arc::new(
        ids.iter().map(|id| format!("{app}/bench/isolated/assets/{id}?tenant={}&epoch={epoch}", tenant.id)).collect(),
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency as usize).build()?;
    // A tenant user's token from the tenant's own identity provider.
    let idp = tenantry::testkit::oidc_provider();
    let provider: tenantry_core::identity::ProviderConfig =
        serde_json::from_value(serde_json::json!({"issuer": idp.issuer, "audience": "tenantry"}))?;
    cp.put_identity_provider("bench", tenant.id, "main", provider).await?;
    let now = chrono::Utc::now().timestamp();
    let token = idp.mint(serde_json::json!({"sub": "bench-user", "aud": "tenantry", "exp": now + 86_400}), None).await;
    type Path<'a> = (&'a str, Arc<Vec<String>>, Option<&'a str>);
    let paths: [Path; 6] = [
        ("baseline (static pool, no RLS, no txn)", baseline, None),
        ("routed (full request path), direct", routed.clone(), Some(&key)),
        ("routed, through PgBouncer (transaction mode)", through, Some(&pooled_key)),
        ("isolated baseline (static pool, the routed statement: gate + RLS)", isolated, None),
        ("routed, direct, tenant schema 5's forgeable gate (before)", schema_5, Some(&before_key)),
        ("routed, direct, a tenant user's bearer token (cached) instead of an API key", routed, Some(&token)),
    ];

    // Warm up caches and pools on every path.
    for (_, urls, key) in &paths {
        run_load(&client, urls.clone(), *key, concurrency, 1).await;
    }
    // BENCH_ONLY=<n> loads one path for BENCH_SECS, for a profiler to attach
    // to (0 baseline, 1 routed, 2 through PgBouncer, 3 isolated baseline, 4
    // routed at schema 5, 5 routed by token); see
    // docs/benchmarks.md.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let (name, urls, key) = &paths[only.parse::<usize>()?.min(paths.len() - 1)];
        // The throwaway cluster's superuser, for looking inside while it runs.
        eprintln!(
            "loading {name} for {secs} s; cluster: host=127.0.0.1 port={} user={SUPERUSER} password={}",
            tc.cluster.port(),
            tc.secrets.superuser_password
        );
        let s = run_load(&client, urls.clone(), *key, concurrency, secs).await;
        println!("{name}: {:.0} req/s, {} errors", s.latencies_us.len() as f64 / s.elapsed.as_secs_f64(), s.errors);
        return Ok(());
    }
    let mut totals: Vec<(Vec<u64>, Duration, u64)> = vec![(Vec::new(), Duration::ZERO, 0); paths.len()];
    for round in 0..rounds {
        // Rotate the order so drift hits every path alike.
        for k in 0..paths.len() {
            let i = (k + round as usize) % paths.len();
            let (name, urls, key) = &paths[i];
            let s = run_load(&client, urls.clone(), *key, concurrency, secs).await;
            let rps = s.latencies_us.len() as f64 / s.elapsed.as_secs_f64();
            eprintln!("round {round} {name}: {rps:.0} req/s");
            totals[i].0.extend(s.latencies_us);
            totals[i].1 += s.elapsed;
            totals[i].2 += s.errors;
        }
    }
    println!("| path | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    let mut rps = Vec::new();
    for ((name, _, _), (lat, time, errors)) in paths.iter().zip(totals.iter_mut()) {
        lat.sort_unstable();
        let r = lat.len() as f64 / time.as_secs_f64();
        rps.push(r);
        println!("| {name} | {r:.0} | {:.2} | {:.2} | {errors} |", pct(lat, 0.5), pct(lat, 0.99));
    }
    println!(
        "\nrouted/baseline throughput = {:.3} (schema 5's gate: {:.3}; the vouched gate costs {:.3}), through PgBouncer/direct = {:.3}  ({} rounds x {secs} s, concurrency {concurrency}, {rows} rows)",
        rps[1] / rps[0],
        rps[4] / rps[0],
        rps[4] / rps[0] - rps[1] / rps[0],
        rps[2] / rps[1],
        rounds,
    );
    // Where the gap is: PostgreSQL's isolation work (baseline -> isolated) and
    // the app's routing (isolated -> routed), each as a cost per request.
    let us = |r: f64| 1e6 / r;
    println!(
        "per request at saturation: baseline {:.0} us, + isolation in PostgreSQL {:+.0} us (isolated/baseline {:.3}), + routing in the app {:+.0} us (routed/isolated {:.3})",
        us(rps[0]),
        us(rps[3]) - us(rps[0]),
        rps[3] / rps[0],
        us(rps[1]) - us(rps[3]),
        rps[1] / rps[3],
    );
    println!(
        "a cached tenant user's token against an API key: token/key throughput = {:.3}, p50 {:+.0} us",
        rps[5] / rps[1],
        (pct(&totals[5].0, 0.5) - pct(&totals[1].0, 0.5)) * 1000.0,
    );
    Ok(())
}
