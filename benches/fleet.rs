//! Provisioning and migration fan-out, measured in one run:
//! - provision N dedicated logical tenants one after another (create -> operation
//!   succeeded -> registered and placed): p50 / p95, beside the raw
//!   `CREATE DATABASE ... TEMPLATE` copy of the same template;
//! - apply one extra migration to M backends: a serial loop (concurrency 1)
//!   against the fan-out (BENCH_FANOUT, default 8) over the same backends, and a
//!   no-op run over all of them.
//!
//! cargo bench --bench fleet            (BENCH_PROVISIONS=50, BENCH_BACKENDS=100, BENCH_FANOUT=8)

use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use tenantry::dev::SUPERUSER;
use tenantry_control_plane::migrate::{Migration, TENANT};
use tenantry_control_plane::tenants::NewTenant;
use tenantry_core::{BackendKind, TenantSlug, Tier};
use tenantry_provisioner::LogicalProvisioner;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let provisions = env_or("BENCH_PROVISIONS", 50);
    let backends = env_or("BENCH_BACKENDS", 100);
    let fanout = env_or("BENCH_FANOUT", 8);
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let spawned = tenantry::testkit::spawn_stack(|_, _| {}).await?;
    let cp = spawned.stack.control_plane();
    let template = cp.config().template_database.clone();
    let admin = LogicalProvisioner::connect(
        "127.0.0.1",
        tc.cluster.port(),
        SUPERUSER,
        &tc.secrets.superuser_password.clone().into(),
    )
    .await?;

    // Raw template copies (the floor of a provision).
    let mut raw = Vec::new();
    for i in 0..10 {
        let name = format!("bench_raw_{i}_{}", std::process::id());
        let t0 = Instant::now();
        admin.create_database(&name, tenantry::dev::OWNER_ROLE, Some(&template)).await?;
        raw.push(t0.elapsed());
        admin.drop_database(&name).await?;
    }
    raw.sort();

    // Full provisions through the operation runner.
    let mut times = Vec::new();
    for i in 0..provisions {
        let t0 = Instant::now();
        let created = cp
            .create_tenant(
                "bench",
                NewTenant {
                    engine: None,
                    slug: TenantSlug::parse(&format!("bench-{i}"))?,
                    name: format!("Bench {i}"),
                    tier: Tier::Dedicated,
                    region: None,
                },
            )
            .await?;
        let op = created.operation.expect("dedicated tenants are provisioned by an operation");
        let done = cp.wait_operation(op.id, Duration::from_secs(60)).await?;
        anyhow::ensure!(
            done.state == tenantry_control_plane::operation::OperationState::Succeeded,
            "provision {i}: {:?}",
            done.error
        );
        times.push(t0.elapsed());
    }
    times.sort();

    // Top the fleet up to `backends` with more dedicated backends.
    let have = cp.migration_status().await?.len();
    for i in have..backends {
        cp.register_backend("bench", &format!("bench_backend_{i}_{}", std::process::id()), BackendKind::Dedicated)
            .await?;
    }
    let fleet = cp.migration_status().await?.len();

    let reset = async || -> anyhow::Result<()> {
        for b in cp.migration_status().await? {
            let backend = cp.backend(b.backend_id).await?;
            let db = tenantry_core::db::lazy_pool(
                &backend.host,
                backend.port as u16,
                &backend.database,
                &tenantry_core::db::Credentials {
                    user: SUPERUSER.into(),
                    password: tc.secrets.superuser_password.clone().into(),
                },
                "bench-reset",
                Default::default(),
            );
            db.execute_unprepared(
                &format!(
                    "DROP INDEX IF EXISTS bench_assets_created_idx; DELETE FROM tenantry_schema_migrations WHERE version > {}",
                    TENANT.len()
                ),
            )
            .await?;
            db.close().await?;
        }
        cp.registry().execute_unprepared(&format!("UPDATE backends SET schema_version = {}", TENANT.len())).await?;
        Ok(())
    };

    let t0 = Instant::now();
    let serial = cp.migrate_fleet_to("bench", &WITH_EXTRA, 1, |_, _| {}).await?;
    let serial_time = t0.elapsed();
    reset().await?;
    let t0 = Instant::now();
    let parallel = cp.migrate_fleet_to("bench", &WITH_EXTRA, fanout, |_, _| {}).await?;
    let fanout_time = t0.elapsed();
    let t0 = Instant::now();
    let noop = cp.migrate_fleet_to("bench", &WITH_EXTRA, fanout, |_, _| {}).await?;
    let noop_time = t0.elapsed();
    let failed = |runs: &[tenantry_control_plane::fleet::BackendRun]| {
        runs.iter().filter(|r| matches!(r.outcome, tenantry_control_plane::fleet::Outcome::Failed { .. })).count()
    };

    println!("## Provisioning ({provisions} dedicated logical tenants, one after another)\n");
    println!("| measure | p50 ms | p95 ms |");
    println!("|---|---:|---:|");
    println!("| raw `CREATE DATABASE ... TEMPLATE` (10 copies) | {:.0} | {:.0} |", pct(&raw, 0.5), pct(&raw, 0.95));
    println!("| provision: create -> operation succeeded | {:.0} | {:.0} |", pct(&times, 0.5), pct(&times, 0.95));
    println!("\n## One migration over {fleet} backends\n");
    println!("| run | seconds | failed |");
    println!("|---|---:|---:|");
    println!("| serial loop (concurrency 1) | {:.2} | {} |", serial_time.as_secs_f64(), failed(&serial));
    println!("| fan-out (concurrency {fanout}) | {:.2} | {} |", fanout_time.as_secs_f64(), failed(&parallel));
    println!("| no-op run (nothing to apply) | {:.2} | {} |", noop_time.as_secs_f64(), failed(&noop));
    println!("\nfan-out speed-up = {:.1}x", serial_time.as_secs_f64() / fanout_time.as_secs_f64());
    Ok(())
}
