//! The control plane's metering passes at fleet size, each timed and its
//! peak heap growth measured (a counting allocator wraps the system one in
//! this process, which hosts the control plane): a usage rollup of one flush
//! interval's samples (6 per active tenant), a storage measurement pass over
//! the shared pool, and the heavy-tenant computation behind the
//! recommendations. First with 100 tenants (the baseline), then with
//! BENCH_TENANTS (default 100,000) in the same registry and pool, of which
//! BENCH_ACTIVE (default 10,000) hold BENCH_ROWS asset rows (default
//! 1,000,000; skewed: tenant i of the active ones holds about 1/(i+1) of them)
//! and send samples.
//!
//! cargo bench --bench usage     (BENCH_TENANTS=100000 BENCH_ACTIVE=10000 BENCH_ROWS=1000000)

use sea_orm::ConnectionTrait;
use sea_orm::sqlx;

#[path = "common/mod.rs"]
mod common;
#[path = "common/heap.rs"]
mod heap;
use common::env_or;

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// Asset rows for the first `active` tenants (by slug), `rows` in all, skewed.
async fn add_rows(
    pool: &mut sqlx::postgres::PgConnection,
    registry: &sea_orm::DatabaseConnection,
    active: u64,
    rows: u64,
) -> anyhow::Result<()> {
    let ids = common::first_tenants(registry, "usage", active).await?;
    // Harmonic weights: tenant i holds rows / (H * (i + 1)), at least one.
    let h: f64 = (1..=ids.len()).map(|i| 1.0 / i as f64).sum();
    let counts: Vec<i64> = (0..ids.len()).map(|i| ((rows as f64 / (h * (i + 1) as f64)) as i64).max(1)).collect();
    sqlx::query(
        "INSERT INTO assets (tenant_id, id, name, tag, status) \
         SELECT t.id, gen_random_uuid(), 'Asset ' || g, 'T-' || g, 'active' \
         FROM unnest($1::uuid[], $2::int8[]) AS t(id, n), generate_series(1, t.n) g",
    )
    .bind(&ids)
    .bind(&counts)
    .execute(&mut *pool)
    .await?;
    sqlx::query("ANALYZE assets").execute(&mut *pool).await?;
    Ok(())
}

/// One flush interval's samples: 6 per active tenant.
async fn add_samples(registry: &sea_orm::DatabaseConnection, active: u64) -> anyhow::Result<u64> {
    registry
        .execute_unprepared(&format!(
            "INSERT INTO usage_samples (tenant_id, at, requests, client_errors, server_errors, db_time_us) \
             SELECT t.id, now() - make_interval(secs => k * 10), 1 + (random() * 50)::int, 0, 0, (random() * 1e5)::int \
             FROM (SELECT id FROM tenants WHERE slug LIKE 'usage-%' ORDER BY slug LIMIT {active}) t, generate_series(1, 6) k"
        ))
        .await?;
    Ok(active * 6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_or("BENCH_TENANTS", 100_000);
    let active = env_or("BENCH_ACTIVE", 10_000).min(total);
    let rows = env_or("BENCH_ROWS", 1_000_000);
    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let spawned = tenantry::testkit::spawn_stack(|s, _| {
        // The passes are run below, not by their timers.
        s.control_plane.usage.rollup_interval_ms = 24 * 3600 * 1000;
        s.control_plane.usage.storage_interval_secs = 24 * 3600;
    })
    .await?;
    let cp = spawned.stack.control_plane();
    let registry = cp.registry();
    let pool_id = cp.backends().await?.into_iter().find(|b| b.name == spawned.pool_name).expect("the shared pool").id;
    let mut pool =
        common::superuser(tc.cluster.port(), &tc.secrets.superuser_password, &spawned.pool_name, "bench-usage").await?;

    let mut results = Vec::new();
    for (n, a, r) in [(100, 10, rows / 1000), (total, active, rows)] {
        let have: i64 = registry
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM tenants",
            ))
            .await?
            .map(|row| row.try_get("", "n"))
            .transpose()?
            .unwrap_or(0);
        eprintln!("seeding {n} tenants, {a} active, {r} rows");
        common::seed_tenants(registry, pool_id, "usage", have as u64, n).await?;
        sqlx::query("TRUNCATE assets CASCADE").execute(&mut pool).await?;
        add_rows(&mut pool, registry, a, r).await?;
        // A day of hourly rollups per tenant, as a registry in use has them; the
        // first fold after it builds the recommendations' window from them (timed apart).
        registry
            .execute_unprepared(&format!(
                "INSERT INTO usage_rollups (tenant_id, granularity, period_start, requests, client_errors, server_errors, db_time_us) \
                 SELECT t.id, 'hour', date_trunc('hour', now(), 'UTC') - make_interval(hours => h), 10, 0, 0, (random() * 1e6)::int \
                 FROM tenants t, generate_series(1, 23) h WHERE t.slug >= 'usage-{have:06}' AND t.slug LIKE 'usage-%'; \
                 DELETE FROM usage_window_state; ANALYZE usage_rollups"
            ))
            .await?;
        let (_, rebuild_s, _) = heap::measured(async || Ok(cp.rollup_usage().await?)).await?;
        let samples = add_samples(registry, a).await?;
        let (folded, rollup_s, rollup_mb) = heap::measured(async || Ok(cp.rollup_usage().await?)).await?;
        anyhow::ensure!(folded == samples, "folded {folded} of {samples} samples");
        let (measured_n, storage_s, storage_mb) = heap::measured(async || Ok(cp.measure_storage().await?)).await?;
        let (heavy, heavy_s, heavy_mb) = heap::measured(async || Ok(cp.heavy_tenants().await?)).await?;
        // The same shares summed from the window's rollups (no kept window).
        registry.execute_unprepared("DELETE FROM usage_window_state").await?;
        let (_, summed_s, _) = heap::measured(async || Ok(cp.heavy_tenants().await?)).await?;
        eprintln!("window built from the rollups in {rebuild_s:.2} s; shares summed from the rollups {summed_s:.2} s");
        cp.rollup_usage().await?;
        results.push((
            n,
            a,
            r,
            samples,
            rollup_s,
            rollup_mb,
            measured_n,
            storage_s,
            storage_mb,
            heavy.1.len(),
            heavy_s,
            heavy_mb,
            summed_s,
        ));
    }
    println!(
        "| tenants (active, rows) | rollup: samples, s, peak heap MiB | storage pass: tenants, s, peak heap MiB | heavy shares (kept window): found, s, peak heap MiB | heavy shares summed from rollups: s |"
    );
    println!("|---|---|---|---|---:|");
    for (n, a, r, samples, rs, rm, mn, ss, sm, hn, hs, hm, sum_s) in results {
        println!(
            "| {n} ({a}, {r}) | {samples}, {rs:.2}, {rm:.1} | {mn}, {ss:.2}, {sm:.1} | {hn}, {hs:.2}, {hm:.1} | {sum_s:.2} |"
        );
    }
    Ok(())
}
