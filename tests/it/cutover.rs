//! The crash-safe cutover: the process holding a move is killed at each
//! instant of its cutover (after the fence, after the sentinel is seen, after
//! the target is active, after the seal, after the registry flip) while a
//! client writes. No control plane runs until the client has written on: the
//! backend alone bounds the stall (`moves.fence_timeout_ms`), never a lease.
//! Then another worker resumes the move, and every acknowledged write is
//! there exactly once.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app_with;
use crate::moves::{asset_count, leftovers, rows_in, second_pool, seed_many, start, start_writer};

const FENCE_MS: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_any_instant_of_the_cutover_holds_writes_no_longer_than_the_fence_bound() {
    let app = spawn_app_with(|s| {
        s.control_plane.operation_workers = 0;
        s.control_plane.lease_secs = 1;
        s.control_plane.moves.fence_timeout_ms = FENCE_MS;
    })
    .await;
    let a = app.create_tenant("cutover-crash", "shared").await;
    let pool1 = app.cp.tenant(&a.id).await.unwrap().placement.unwrap().backend_id.to_string();
    let (pool2, pool2_name) = second_pool(&app).await;
    seed_many(&app, &a.key, "S", 3).await;
    let config = app.config_file(&format!("lease_secs = 1\n[control_plane.moves]\nfence_timeout_ms = {FENCE_MS}"));
    let names = [app.pool_name.clone(), pool2_name.clone()];
    let instants = ["fenced", "sentinel_seen", "target_active", "sealed", "flipped"];
    let mut acknowledged = 0;
    let mut report = Vec::new();
    for (i, instant) in instants.iter().enumerate() {
        let (target, target_name, source_name) =
            if i % 2 == 0 { (&pool2, &names[1], &names[0]) } else { (&pool1, &names[0], &names[1]) };
        let writer = start_writer(&app, &a.key, &format!("C{i}"));
        writer.wrote(5).await;
        let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": target})).await;
        let point = format!("move.cutover.{instant}");
        let (cfg, fp) = (config.clone(), point.clone());
        let out = tokio::task::spawn_blocking(move || crate::helpers::run_child(&cfg, &fp)).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&format!("failpoint {point}")), "{point}: {stderr}");

        // Nobody runs the move now. The client writes on regardless.
        let crashed_at = writer.ok.load(Ordering::Relaxed);
        let source_at_crash = rows_in(source_name, &a.id).await;
        writer.wrote(crashed_at + 20).await;
        let stall = writer.worst_ms.load(Ordering::Relaxed);
        let sealed = matches!(*instant, "sealed" | "flipped");
        if sealed {
            assert_eq!(
                rows_in(source_name, &a.id).await,
                source_at_crash,
                "crash after {instant}: a stale writer lands no row on the sealed source"
            );
        }

        // Another worker resumes the move.
        let worker = tokio::spawn(app.cp.clone().run_worker(tokio_util::sync::CancellationToken::new()));
        let done = app.wait_operation(&op).await;
        worker.abort();
        let (ok, errors, worst) = writer.finish().await;
        acknowledged += ok;
        report.push(format!("{instant}: longest write {worst} ms (before resume {stall} ms), {ok} acknowledged"));
        assert_eq!(done["state"], "succeeded", "crash after {instant}: {done}");
        assert_eq!(errors, 0, "crash after {instant}: every write acknowledged ({ok} ok)");
        assert!(
            stall < FENCE_MS + 1000,
            "crash after {instant}: the longest write ({stall} ms) is within the fence bound plus 1 s"
        );
        assert_eq!(rows_in(source_name, &a.id).await, 0, "crash after {instant}: source purged");
        assert_eq!(leftovers(&[&names[0], &names[1]]).await, 0, "crash after {instant}: nothing left behind");
        assert_eq!(
            asset_count(&app, &a.key).await as u64,
            3 + acknowledged,
            "crash after {instant}: every acknowledged write, once"
        );
        assert!(rows_in(target_name, &a.id).await > 0);
        assert_eq!(app.get(&a.key, "/v1/assets").await.0, StatusCode::OK);
    }
    eprintln!("crash-safe cutover:\n  {}", report.join("\n  "));
}

/// The app reaches both pools through a real PgBouncer in transaction mode
/// while the move itself (replication, fence, seal, purge) goes straight to
/// PostgreSQL: the tenant keeps writing through the pooler, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_moves_under_writes_through_pgbouncer() {
    let app = crate::helpers::spawn_app().await;
    let a = app.create_tenant("pooled-mover", "shared").await;
    let (pool2, pool2_name) = second_pool(&app).await;
    seed_many(&app, &a.key, "P", 5).await;
    app.through_pgbouncer().await;
    let carried = app.pgbouncer_transactions().await;

    let writer = start_writer(&app, &a.key, "PW");
    writer.wrote(20).await;
    let op = start(&app, &format!("/v1/tenants/{}/move", a.id), json!({"target_backend_id": pool2})).await;
    let done = app.wait_operation(&op).await;
    writer.wrote(writer.ok.load(Ordering::Relaxed) + 20).await;
    let (ok, errors, worst) = writer.finish().await;
    eprintln!("through pgbouncer: {ok} writes, longest {worst} ms, pause {}", done["progress"]["pause_ms"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(errors, 0, "every write through the pooler acknowledged");
    assert_eq!(asset_count(&app, &a.key).await as u64, 5 + ok);
    assert_eq!(rows_in(&app.pool_name, &a.id).await, 0, "source purged");
    assert!(rows_in(&pool2_name, &a.id).await > 0);
    let through = app.pgbouncer_transactions().await - carried;
    assert!(through as u64 >= ok, "the writes went through PgBouncer ({through} transactions for {ok} writes)");
}
