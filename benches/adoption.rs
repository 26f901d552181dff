//! Adopting legacy schemas. (1) A legacy schema of N assets (and N/10
//! maintenance schedules, integer ids, no tenant_id) is adopted onto the
//! shared pool while a legacy writer inserts into it at a fixed rate until
//! the fence refuses it; repeated on fresh copies of the schema. Reported:
//! the adoption's copy throughput against a raw `COPY ... TO STDOUT | COPY
//! ... FROM STDIN` of the same legacy rows in the same run, the verification
//! pass, the legacy write pause (fence to placement) p50/p99, and rows lost
//! (acknowledged legacy writes missing in Tenantry). (2) Adopt-all of M small
//! schemas at concurrency 1 (one at a time) against concurrency C.
//!
//! cargo bench --bench adoption   (ADOPT_ROWS=1000000 ADOPTIONS=5 WRITE_RATE=200 SCHEMAS=200 CONCURRENCY=8)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use tenantry::dev::SUPERUSER;
use tenantry_control_plane::estates::request::{AdoptAllRequest, AdoptRequest, ReleaseRequest};
use tenantry_control_plane::estates::{Layout, NewEstate};
use tenantry_control_plane::operation::OperationState;
use tenantry_core::Tier;
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;
use common::{env_or, pct};

async fn superuser(port: u16, password: &str, db: &str) -> anyhow::Result<PgConnection> {
    common::superuser(port, password, db, "bench-adoption").await
}

/// A legacy database with `schemas` schemas named `<prefix>_NNN`, each with
/// `rows` assets and `rows / 10` schedules.
async fn legacy(c: &mut PgConnection, prefix: &str, schemas: u64, rows: u64) -> anyhow::Result<()> {
    for i in 0..schemas {
        let s = format!("{prefix}_{i:03}");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.assets (id serial PRIMARY KEY, name text NOT NULL, tag text NOT NULL,
                 status text NOT NULL DEFAULT 'active', color text);
             CREATE TABLE {s}.maintenance_schedules (id serial PRIMARY KEY, asset_id integer NOT NULL,
                 title text NOT NULL, interval_days integer NOT NULL, next_due_at timestamptz NOT NULL);
             INSERT INTO {s}.assets (name, tag, color)
                 SELECT 'Asset ' || g, 'T-' || g, 'c' || (g % 9) FROM generate_series(1, {rows}) g;
             INSERT INTO {s}.maintenance_schedules (asset_id, title, interval_days, next_due_at)
                 SELECT g * 10, 'Inspect', 30, '2027-01-01' FROM generate_series(1, {rows} / 10) g;
             ANALYZE {s}.assets, {s}.maintenance_schedules;"
        )))
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows = env_or("ADOPT_ROWS", 1_000_000);
    let adoptions = env_or("ADOPTIONS", 5);
    let rate = env_or("WRITE_RATE", 200);
    let schemas = env_or("SCHEMAS", 200);
    let concurrency = env_or("CONCURRENCY", 8);

    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let pw = tc.secrets.superuser_password.clone();
    let port = tc.cluster.port();
    let workers = concurrency as usize;
    let spawned = tenantry::testkit::spawn_stack(|s, _| s.control_plane.operation_workers = workers).await?;
    let stack = spawned.stack;
    let pool_db = spawned.pool_name.clone();
    let cp = stack.control_plane();
    tokio::spawn(stack.run_until_stopped());
    let estate = async |db: &str, pattern: &str| -> anyhow::Result<Uuid> {
        let new = NewEstate {
            name: db.to_string(),
            host: "127.0.0.1".into(),
            port,
            database: db.to_string(),
            user: SUPERUSER.into(),
            password: pw.clone().into(),
            layout: Layout::SchemaPerTenant,
            pattern: pattern.into(),
            mapping: None,
        };
        Ok(cp.add_estate("bench", new).await?.id)
    };

    // (1) One big schema per adoption, all built up front.
    let db = tenantry::testkit::unique("legacy_big");
    let mut admin = superuser(port, &pw, "postgres").await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut admin).await?;
    let mut c = superuser(port, &pw, &db).await?;
    eprintln!("building {adoptions} legacy schemas of {rows} assets ...");
    legacy(&mut c, "big", adoptions, rows).await?;
    let big = estate(&db, "big\\_%").await?;

    // Raw COPY of the same legacy rows into empty tables beside the target's.
    let mut dst = superuser(port, &pw, &pool_db).await?;
    // Two baselines: into plain tables, and into tables with the legacy
    // tables' own keys (the primary key, and a unique tag like the target's).
    let mut raw_rates = Vec::new();
    for indexed in [false, true] {
        let keys = if indexed { ", PRIMARY KEY (id)" } else { "" };
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS raw_assets, raw_maintenance_schedules;
             CREATE TABLE raw_assets (id integer, name text, tag text, status text, color text{keys});
             CREATE TABLE raw_maintenance_schedules (id integer, asset_id integer, title text, interval_days integer,
                 next_due_at timestamptz{keys});"
        )))
        .execute(&mut dst)
        .await?;
        if indexed {
            sqlx::raw_sql("CREATE UNIQUE INDEX ON raw_assets (tag)").execute(&mut dst).await?;
        }
        let t0 = Instant::now();
        let mut raw_rows = 0u64;
        for t in ["assets", "maintenance_schedules"] {
            let mut out = c.copy_out_raw(&format!("COPY big_000.{t} TO STDOUT")).await?;
            let mut sink = dst.copy_in_raw(&format!("COPY raw_{t} FROM STDIN")).await?;
            while let Some(chunk) = out.next().await {
                sink.send(chunk?).await?;
            }
            drop(out);
            raw_rows += sink.finish().await?;
        }
        raw_rates.push(raw_rows as f64 / t0.elapsed().as_secs_f64());
    }
    sqlx::raw_sql("DROP TABLE raw_assets, raw_maintenance_schedules").execute(&mut dst).await?;
    let (raw_rate, raw_indexed) = (raw_rates[0], raw_rates[1]);

    println!(
        "| legacy rows | adoption | total s | copy rows/s | raw COPY rows/s | copy/raw | raw COPY, keyed, rows/s | copy/keyed | verify pass s | pause ms | legacy writes acknowledged | lost |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut pauses = Vec::new();
    for k in 0..adoptions {
        let source = format!("big_{k:03}");
        // The legacy application writes at `rate` until the fence refuses it.
        let acked = Arc::new(AtomicU64::new(0));
        let writer = {
            let (acked, mut w, source) = (acked.clone(), superuser(port, &pw, &db).await?, source.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
                for i in 0u64.. {
                    tick.tick().await;
                    let sql = format!("INSERT INTO {source}.assets (name, tag) VALUES ('late', 'L-{i}')");
                    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut w).await {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("TA001") => return,
                        Err(e) => panic!("legacy write: {e}"),
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = Instant::now();
        let req = AdoptRequest {
            source: source.clone(),
            slug: format!("big-{k}"),
            name: None,
            tier: Tier::Shared,
            target_backend_id: None,
            engine: None,
            region: None,
        };
        let op = cp.adopt("bench", big, req).await?;
        let done = cp.wait_operation(op.id, Duration::from_secs(7200)).await?;
        anyhow::ensure!(done.state == OperationState::Succeeded, "adoption {k}: {:?}", done.error);
        let total = t0.elapsed().as_secs_f64();
        writer.await?;
        let p = &done.progress;
        let copied = p["rows_copied"].as_f64().unwrap_or(f64::NAN);
        let copy_rate = copied / (p["step_ms"]["copy"].as_f64().unwrap_or(f64::NAN) / 1000.0);
        let pause = p["pause_ms"].as_f64().unwrap_or(f64::NAN);
        pauses.push(pause);
        let tenant = done.tenant_id.expect("a tenant");
        let have: i64 = sqlx::query_scalar("SELECT count(*) FROM assets WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut dst)
            .await?;
        let acked = acked.load(Ordering::Relaxed);
        let lost = rows as i64 + acked as i64 - have;
        println!(
            "| {} | {k} | {total:.1} | {copy_rate:.0} | {raw_rate:.0} | {:.2} | {raw_indexed:.0} | {:.2} | {:.1} | {pause:.0} | {acked} | {lost} |",
            rows + rows / 10,
            copy_rate / raw_rate,
            copy_rate / raw_indexed,
            p["step_ms"]["cutover"].as_f64().unwrap_or(f64::NAN) / 1000.0 - pause / 1000.0,
        );
        eprintln!("adoption {k}: steps {} counts {} verified {}", p["step_ms"], p["counts"], p["verified"]);
        // Make room: the legacy copy goes, the adopted tenant is erased.
        cp.release_source("bench", big, ReleaseRequest { source: source.clone(), drop: true }).await?;
        let erase = cp.erase_tenant("bench", &tenant.to_string()).await?;
        cp.wait_operation(erase.id, Duration::from_secs(3600)).await?;
    }
    pauses.sort_by(f64::total_cmp);
    println!();
    println!(
        "legacy write pause over {} adoptions of {} rows under {rate} legacy writes/s: p50 {:.0} ms, p99 {:.0} ms",
        pauses.len(),
        rows + rows / 10,
        pct(&pauses, 0.5),
        pct(&pauses, 0.99)
    );

    // (2) Adopt-all: one at a time against `concurrency` at once.
    println!();
    println!("| schemas (20 assets each) | concurrency | wall s | adopted | failed |");
    println!("|---:|---:|---:|---:|---:|");
    for (run, at_once) in [(0, 1), (1, concurrency)] {
        let db = tenantry::testkit::unique("legacy_many");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut admin).await?;
        let mut c = superuser(port, &pw, &db).await?;
        legacy(&mut c, &format!("s{run}"), schemas, 20).await?;
        c.close().await?;
        // `s_\_%`: the slug keeps the run's digit (`s1_007` -> `1-007`).
        let id = estate(&db, "s_\\_%").await?;
        let t0 = Instant::now();
        let all =
            cp.adopt_all("bench", id, AdoptAllRequest { tier: Tier::Shared, concurrency: at_once as i32 }).await?;
        let (mut ok, mut failed) = (0, 0);
        for q in &all.queued {
            match &q.operation {
                Some(op) => match cp.wait_operation(op.id, Duration::from_secs(7200)).await?.state {
                    OperationState::Succeeded => ok += 1,
                    _ => failed += 1,
                },
                None => {
                    failed += 1;
                    eprintln!("{} not queued: {:?}", q.source, q.error);
                }
            }
        }
        println!("| {schemas} | {at_once} | {:.1} | {ok} | {failed} |", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
