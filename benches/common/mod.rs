//! Shared by the load benchmarks: an open-loop load generator and percentiles.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenantry_control_plane::ControlPlane;
use tenantry_control_plane::tenants::NewTenant;
use tenantry_core::{TenantSlug, Tier};
use uuid::Uuid;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Shared-tier tenants, each with one API key: (id, key) in the order given.
pub async fn shared_tenants(cp: &ControlPlane, slugs: &[&str]) -> anyhow::Result<Vec<(Uuid, String)>> {
    let mut out = Vec::new();
    for slug in slugs {
        let new = NewTenant {
            engine: None,
            slug: TenantSlug::parse(slug)?,
            name: (*slug).into(),
            tier: Tier::Shared,
            region: None,
        };
        let t = cp.create_tenant("bench", new).await?.tenant;
        out.push((t.id, cp.create_api_key("bench", t.id, "bench").await?.key));
    }
    Ok(out)
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one load stream saw.
#[derive(Default)]
pub struct Seen {
    pub latencies_ms: Vec<f64>,
    pub ok: u64,
    pub errors: u64,
    /// 429 answers (a tenant limit), counted apart from errors.
    pub limited: u64,
}

/// Open-loop load: `rate` requests per second, each in its own task, until
/// `stop` is set. Writes create assets; `read_every` > 0 makes every
/// `read_every`-th request a list instead.
pub fn load(
    client: reqwest::Client,
    app: String,
    key: String,
    rate: u64,
    read_every: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            i += 1;
            let (client, app, key, seen) = (client.clone(), app.clone(), key.clone(), seen.clone());
            let read = read_every > 0 && i.is_multiple_of(read_every);
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let resp = if read {
                    client.get(format!("{app}/v1/assets?limit=20")).bearer_auth(&key).send().await
                } else {
                    client
                        .post(format!("{app}/v1/assets"))
                        .bearer_auth(&key)
                        .json(&serde_json::json!({"name": "load", "tag": Uuid::new_v4().simple().to_string()}))
                        .send()
                        .await
                };
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let status = resp.as_ref().ok().map(|r| r.status());
                let mut s = seen.lock().unwrap();
                match status {
                    Some(st) if st.is_success() => {
                        s.latencies_ms.push(ms);
                        if !read {
                            s.ok += 1;
                        }
                    }
                    Some(reqwest::StatusCode::TOO_MANY_REQUESTS) => s.limited += 1,
                    _ => {
                        s.latencies_ms.push(ms);
                        s.errors += 1;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(seen).ok().expect("all load tasks finished").into_inner().unwrap()
    })
}

/// A session on `db` of the benchmark's cluster as its superuser.
pub async fn superuser(
    port: u16,
    password: &str,
    db: &str,
    application: &str,
) -> anyhow::Result<sea_orm::sqlx::postgres::PgConnection> {
    use sea_orm::sqlx::Connection;
    let opts = sea_orm::sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .database(db)
        .username(tenantry::dev::SUPERUSER)
        .password(password)
        .application_name(application);
    Ok(sea_orm::sqlx::postgres::PgConnection::connect_with(&opts).await?)
}

/// Creates one asset for the tenant of `key` through the app: its id.
pub async fn first_asset(http: &reqwest::Client, app: &str, key: &str) -> anyhow::Result<String> {
    let asset: serde_json::Value = http
        .post(format!("{app}/v1/assets"))
        .bearer_auth(key)
        .json(&serde_json::json!({"name": "Pump", "tag": "P-1"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(asset["id"].as_str().unwrap_or_default().to_string())
}

/// Registry rows only: shared tenants `{prefix}-NNNNNN` numbered `from..to`,
/// active and placed on `pool` at epoch 1 (benchmarks that need a large
/// registry fast; residency on the pool is theirs to add when requests follow).
pub async fn seed_tenants(
    registry: &sea_orm::DatabaseConnection,
    pool: Uuid,
    prefix: &str,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    registry
        .execute_unprepared(&format!(
            "WITH t AS (INSERT INTO tenants (id, slug, name, tier, status, region) \
               SELECT gen_random_uuid(), '{prefix}-' || lpad(i::text, 6, '0'), '{prefix} tenant ' || i, 'shared', 'active', 'local' \
               FROM generate_series({from}, {to} - 1) i RETURNING id) \
             INSERT INTO placements (tenant_id, backend_id, epoch) SELECT id, '{pool}', 1 FROM t; \
             ANALYZE tenants; ANALYZE placements"
        ))
        .await?;
    Ok(())
}

/// The first `n` tenants `{prefix}-...` by slug: their ids.
pub async fn first_tenants(registry: &sea_orm::DatabaseConnection, prefix: &str, n: u64) -> anyhow::Result<Vec<Uuid>> {
    use sea_orm::ConnectionTrait;
    Ok(registry
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT id FROM tenants WHERE slug LIKE '{prefix}-%' ORDER BY slug LIMIT {n}"),
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<Uuid>("", "id"))
        .collect::<Result<_, _>>()?)
}

/// Starts the process's cluster with `shared_buffers` (`BENCH_SHARED_BUFFERS`,
/// else `default`) and any `BENCH_PG_SETTINGS` ("name=value,..."; e.g.
/// "log_min_duration_statement=20,log_checkpoints=on"); call before the
/// cluster is first used. Returns the `shared_buffers` chosen.
pub fn size_cluster(default: &str) -> String {
    let shared_buffers = std::env::var("BENCH_SHARED_BUFFERS").unwrap_or_else(|_| default.into());
    tenantry::testkit::set_cluster_setting("shared_buffers", &shared_buffers);
    for setting in std::env::var("BENCH_PG_SETTINGS").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        let (name, value) = setting.split_once('=').unwrap_or((setting, ""));
        tenantry::testkit::set_cluster_setting(name, value);
    }
    shared_buffers
}
