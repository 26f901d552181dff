//! Online moves under load. A tenant of N assets (plus N/10 maintenance
//! schedules and N/10 issues) moves back and forth between two shared pools
//! while a load generator writes to it through the app API at a fixed rate
//! (open loop) and two neighbours on the same pool read and write (the raw
//! COPY below runs under the same load). Per size:
//! total move time, the initial copy's throughput against a raw
//! `COPY (SELECT ... WHERE tenant_id = ...) TO STDOUT | COPY ... FROM STDIN`
//! of the same rows in the same run, the write pause (fence to flip, measured
//! by the control plane) p50/p99, the worst client-observed write latency,
//! client errors, and rows lost (acknowledged writes missing afterwards).
//!
//! Then the same rows promoted to a fresh dedicated database (loaded without its secondary
//! indexes, built after), beside the move's copy, the raw COPY, and `pgcopydb clone` of the
//! promoted database (schema, data and indexes) into an empty one.
//!
//! scripts/bench moves     (MOVE_SIZES=10000,100000,1000000  MOVES=5  WRITE_RATE=200)

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use tenantry::dev::SUPERUSER;
use tenantry_core::BackendKind;
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;
use common::{env_or, load, pct, shared_tenants};

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').filter_map(|v| v.trim().parse().ok()).collect()
}

async fn superuser(port: u16, password: &str, db: &str) -> anyhow::Result<PgConnection> {
    common::superuser(port, password, db, "bench-moves").await
}

/// `pgcopydb clone` (Debian's pgcopydb, default jobs) of `source` into a
/// fresh database, schema, data and indexes: seconds, checked by the assets
/// that arrived (the source takes no writes meanwhile). None when pgcopydb is not installed (`scripts/bench`
/// installs it).
async fn pgcopydb_clone(port: u16, password: &str, source: &str) -> anyhow::Result<Option<f64>> {
    if std::process::Command::new("pgcopydb").arg("--version").output().is_err() {
        eprintln!("pgcopydb is not installed: run the benchmark through scripts/bench");
        return Ok(None);
    }
    let mut c = superuser(port, password, source).await?;
    let assets: i64 = sqlx::query_scalar("SELECT count(*) FROM assets").fetch_one(&mut c).await?;
    c.close().await?;
    let target = tenantry::testkit::unique("pgcopydb");
    let admin = tenantry_provisioner::LogicalProvisioner::connect(
        "127.0.0.1",
        port,
        SUPERUSER,
        &password.to_string().into(),
        |o| tenantry::testkit::cluster().tls().apply(o),
    )
    .await?;
    admin.create_database(&target, SUPERUSER, Some("template0")).await?;
    let dir = std::env::temp_dir().join(&target);
    let uri = |db: &str| format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{db}");
    let t0 = Instant::now();
    let out = tokio::process::Command::new("pgcopydb")
        .args(["clone", "--source", &uri(source), "--target", &uri(&target), "--no-owner", "--no-acl", "--dir"])
        .arg(&dir)
        .env("PGPASSWORD", password)
        .output()
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "pgcopydb clone failed: {}", &stderr[stderr.len().saturating_sub(2000)..]);
    let mut c = superuser(port, password, &target).await?;
    let arrived: i64 = sqlx::query_scalar("SELECT count(*) FROM assets").fetch_one(&mut c).await?;
    c.close().await?;
    anyhow::ensure!(arrived == assets, "pgcopydb copied {arrived} of {assets} assets");
    admin.drop_database(&target).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(secs))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let sizes = env_list("MOVE_SIZES", "10000,100000,1000000");
    let moves = env_or("MOVES", 5);
    let rate = env_or("WRITE_RATE", 200);

    let tc = tokio::task::spawn_blocking(tenantry::testkit::cluster).await?;
    let pw = tc.secrets.superuser_password.clone();
    let port = tc.cluster.port();
    let spawned = tenantry::testkit::spawn_stack(|_, _| {}).await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let tenants = shared_tenants(&cp, &["mover", "other-1", "other-2"]).await?;
    let keys: Vec<String> = tenants.iter().map(|(_, k)| k.clone()).collect();
    let mover = tenants[0].0;
    let pool2 = cp.register_backend("bench", &tenantry::testkit::unique("pool"), BackendKind::SharedPool).await?;
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    tokio::spawn(stack.run_until_stopped());
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).timeout(Duration::from_secs(30)).build()?;
    let home = async || -> anyhow::Result<(Uuid, String)> {
        let t = cp.tenant(&mover.to_string()).await?;
        let b = cp.backend(t.placement.expect("placed").backend_id).await?;
        Ok((b.id, b.database))
    };

    println!(
        "| assets | rows moved | moves | total s (p50) | copy rows/s (p50) | raw COPY rows/s | copy/raw | pause p50 ms | pause p99 ms | worst write ms | write p99 ms | writes ok | client errors | neighbour errors | neighbour p99 ms | lost rows |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut pauses_all = Vec::new();
    let pools = [home().await?.0, pool2.id];
    let mut promotes = Vec::new();
    for &size in &sizes {
        // The mover holds exactly `size` assets (+10% schedules, +10% issues).
        let (_, db) = home().await?;
        let mut c = superuser(port, &pw, &db).await?;
        for t in ["asset_issues", "maintenance_schedules", "assets"] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {t} WHERE tenant_id = $1")))
                .bind(mover)
                .execute(&mut c)
                .await?;
        }
        sqlx::query(
            "INSERT INTO assets (tenant_id, id, name, tag, category, location, status, attributes) \
             SELECT $1, gen_random_uuid(), 'Asset ' || g, 'S-' || g, 'cat-' || (g % 10), 'site ' || (g % 7), 'active', \
                    jsonb_build_object('serial', g) FROM generate_series(1, $2::int) g",
        )
        .bind(mover)
        .bind(size as i32)
        .execute(&mut c)
        .await?;
        sqlx::query(
            "INSERT INTO maintenance_schedules (tenant_id, id, asset_id, title, interval_days, next_due_at) \
             SELECT tenant_id, gen_random_uuid(), id, 'Inspect', 30, now() FROM assets \
             WHERE tenant_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(mover)
        .bind((size / 10) as i64)
        .execute(&mut c)
        .await?;
        sqlx::query(
            "INSERT INTO asset_issues (tenant_id, id, asset_id, title, status, priority) \
             SELECT tenant_id, gen_random_uuid(), id, 'Noise', 'open', 'low' FROM assets \
             WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(mover)
        .bind((size / 10) as i64)
        .execute(&mut c)
        .await?;
        sqlx::raw_sql("VACUUM ANALYZE assets, maintenance_schedules, asset_issues").execute(&mut c).await?;

        // Load on: the raw COPY and the moves both run under it.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = load(client.clone(), app.clone(), keys[0].clone(), rate, 0, stop.clone());
        let n1 = load(client.clone(), app.clone(), keys[1].clone(), 50, 2, stop.clone());
        let n2 = load(client.clone(), app.clone(), keys[2].clone(), 50, 2, stop.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Raw COPY of the same rows into an empty copy of the schema.
        let scratch = tenantry::testkit::unique("raw");
        let admin =
            tenantry_provisioner::LogicalProvisioner::connect("127.0.0.1", port, SUPERUSER, &pw.clone().into(), |o| {
                tenantry::testkit::cluster().tls().apply(o)
            })
            .await?;
        admin.create_database(&scratch, SUPERUSER, Some(&cp.config().template_database)).await?;
        let mut dst = superuser(port, &pw, &scratch).await?;
        let t0 = Instant::now();
        let mut raw_rows = 0u64;
        for t in ["assets", "maintenance_schedules", "asset_issues"] {
            let mut out =
                c.copy_out_raw(&format!("COPY (SELECT * FROM {t} WHERE tenant_id = '{mover}') TO STDOUT")).await?;
            let mut sink = dst.copy_in_raw(&format!("COPY {t} FROM STDIN")).await?;
            while let Some(chunk) = out.next().await {
                sink.send(chunk?).await?;
            }
            drop(out);
            raw_rows += sink.finish().await?;
        }
        let raw_secs = t0.elapsed().as_secs_f64();
        dst.close().await?;
        c.close().await?;
        admin.drop_database(&scratch).await?;
        let raw_rate = raw_rows as f64 / raw_secs;

        let (mut totals, mut copy_rates, mut pauses) = (Vec::new(), Vec::new(), Vec::new());
        let mut moved_rows = 0;
        for m in 0..moves {
            let here = home().await?.0;
            let target = if here == pools[0] { pools[1] } else { pools[0] };
            let t0 = Instant::now();
            let op = cp.move_tenant("bench", &mover.to_string(), target).await?;
            let done = cp.wait_operation(op.id, Duration::from_secs(3600)).await?;
            anyhow::ensure!(
                done.state == tenantry_control_plane::operation::OperationState::Succeeded,
                "move {m} of {size}: {:?}",
                done.error
            );
            totals.push(t0.elapsed().as_secs_f64());
            let p = &done.progress;
            let rows = p["rows_total"].as_f64().unwrap_or(0.0);
            moved_rows = rows as i64;
            copy_rates.push(rows / (p["copy_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0));
            pauses.push(p["pause_ms"].as_f64().unwrap_or(f64::NAN));
            eprintln!(
                "size {size} move {m}: {:.1} s, copy {} ms for {rows} rows, pause {} ms {} queued {} ms, steps {}",
                t0.elapsed().as_secs_f64(),
                p["copy_ms"],
                p["pause_ms"],
                p["cutover_phases_ms"],
                p["queued_ms"],
                p["step_ms"]
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut w, mut n1, n2) = (w.await?, n1.await?, n2.await?);
        n1.latencies_ms.extend(n2.latencies_ms);
        n1.errors += n2.errors;
        n1.limited += n2.limited;
        w.latencies_ms.sort_by(f64::total_cmp);
        n1.latencies_ms.sort_by(f64::total_cmp);
        // Every acknowledged write is on the tenant's home now.
        let (_, db) = home().await?;
        let mut c = superuser(port, &pw, &db).await?;
        let have: i64 = sqlx::query_scalar("SELECT count(*) FROM assets WHERE tenant_id = $1")
            .bind(mover)
            .fetch_one(&mut c)
            .await?;
        c.close().await?;
        let lost = size as i64 + w.ok as i64 - have;
        totals.sort_by(f64::total_cmp);
        copy_rates.sort_by(f64::total_cmp);
        pauses.sort_by(f64::total_cmp);
        pauses_all.extend(pauses.iter().copied());
        let copy_p50 = pct(&copy_rates, 0.5);
        println!(
            "| {size} | {moved_rows} | {moves} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {lost} |",
            pct(&totals, 0.5),
            copy_p50,
            raw_rate,
            copy_p50 / raw_rate,
            pct(&pauses, 0.5),
            pct(&pauses, 0.99),
            w.latencies_ms.last().copied().unwrap_or(f64::NAN),
            pct(&w.latencies_ms, 0.99),
            w.ok,
            w.errors + w.limited,
            n1.errors + n1.limited,
            pct(&n1.latencies_ms, 0.99),
        );
        // The same rows promoted to a fresh dedicated database (no load): it is
        // loaded without its secondary indexes and builds them after, and the
        // copy time includes the builds. Then demoted back for the next size.
        let op = cp.promote_tenant("bench", &mover.to_string(), None, None).await?;
        let done = cp.wait_operation(op.id, Duration::from_secs(3600)).await?;
        anyhow::ensure!(done.state == tenantry_control_plane::operation::OperationState::Succeeded, "{:?}", done.error);
        let p = &done.progress;
        let rows = p["rows_total"].as_f64().unwrap_or(f64::NAN);
        let promote_rate = rows / (p["copy_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0);
        // The promoted database cloned by pgcopydb, in the same run.
        let clone_rate = pgcopydb_clone(port, &pw, &home().await?.1).await?.map(|secs| rows / secs);
        let clone = clone_rate.map_or("-".into(), |r| format!("{r:.0}"));
        let vs_clone = clone_rate.map_or("-".into(), |r| format!("{:.2}", promote_rate / r));
        promotes.push(format!(
            "| {size} | {rows} | {copy_p50:.0} | {promote_rate:.0} | {} | {raw_rate:.0} | {:.2} | {clone} | {vs_clone} |",
            p["index_build_ms"],
            promote_rate / raw_rate
        ));
        let op = cp.demote_tenant("bench", &mover.to_string(), Some(pools[0])).await?;
        let done = cp.wait_operation(op.id, Duration::from_secs(3600)).await?;
        anyhow::ensure!(done.state == tenantry_control_plane::operation::OperationState::Succeeded, "{:?}", done.error);
    }
    println!();
    println!(
        "| assets | rows | move copy rows/s (indexes in place, p50) | promote copy rows/s (indexes built after) | index build ms | raw COPY rows/s | promote/raw | pgcopydb clone rows/s (whole database) | promote/pgcopydb |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for line in &promotes {
        println!("{line}");
    }
    pauses_all.sort_by(f64::total_cmp);
    println!(
        "\nall moves: pause p50 {:.0} ms, p99 {:.0} ms over {} moves; write rate {rate}/s; neighbours 2 x 50 req/s (half reads)",
        pct(&pauses_all, 0.5),
        pct(&pauses_all, 0.99),
        pauses_all.len()
    );
    Ok(())
}
