//! Noisy neighbour: one tenant on a shared pool sends 10x its rate limit while
//! another tenant on the same pool goes about its business. The quiet tenant's
//! latency is measured alone, beside the noisy one with its limit enforced, and
//! beside it with no limit (what the pool would suffer without limits), all in
//! one run. A fourth phase floods the app with made-up API keys (a new one
//! per request, well formed, so no cache answers and each is looked up) from
//! many tasks beside the quiet tenant: its latency and errors then, and what
//! the flood was answered.
//!
//! cargo bench --bench noisy     (NOISY_LIMIT=100 QUIET_RATE=50 PHASE_SECS=8 FLOOD_RATE=2000)

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[path = "common/mod.rs"]
mod common;
use common::{Seen, env_or, load, pct, shared_tenants};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let limit = env_or("NOISY_LIMIT", 100);
    let quiet_rate = env_or("QUIET_RATE", 50);
    let secs = env_or("PHASE_SECS", 8);
    let flood_rate = env_or("FLOOD_RATE", 2000);

    let spawned = tenantry::testkit::spawn_stack(|_, _| {}).await?;
    let stack = spawned.stack;
    let cp = stack.control_plane();
    let keys: Vec<String> = shared_tenants(&cp, &["noisy", "quiet"]).await?.into_iter().map(|(_, k)| k).collect();
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    tokio::spawn(stack.run_until_stopped());
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(30)).build()?;

    // Warm-up: pools and caches.
    let stop = Arc::new(AtomicBool::new(false));
    let warm = load(client.clone(), app.clone(), keys[1].clone(), quiet_rate, 2, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    warm.await?;

    let phase = async |noisy_rate: Option<u64>| -> anyhow::Result<(Seen, Seen)> {
        let stop = Arc::new(AtomicBool::new(false));
        let quiet = load(client.clone(), app.clone(), keys[1].clone(), quiet_rate, 2, stop.clone());
        let noisy = noisy_rate.map(|r| load(client.clone(), app.clone(), keys[0].clone(), r, 2, stop.clone()));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut q = quiet.await?;
        let n = match noisy {
            Some(n) => n.await?,
            None => Seen::default(),
        };
        q.latencies_ms.sort_by(f64::total_cmp);
        Ok((q, n))
    };
    let set_limit = async |rps: u64| -> anyhow::Result<()> {
        cp.update_settings(
            "bench",
            "noisy",
            &serde_json::json!({"limits": {"requests_per_second": rps, "burst": rps, "max_concurrent_requests": 100_000}}),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await; // NOTIFY reaches the app
        Ok(())
    };

    // Warm the noisy tenant's path too (connections, caches, pool), unmeasured.
    set_limit(10_000_000).await?;
    phase(Some(limit * 10)).await?;
    // Two rounds, each phase kind once per round in a different order; merged.
    let merge = |a: &mut Seen, b: Seen| {
        a.latencies_ms.extend(b.latencies_ms);
        a.ok += b.ok;
        a.errors += b.errors;
        a.limited += b.limited;
    };
    let (mut alone, mut limited, mut unlimited) = (Seen::default(), Seen::default(), Seen::default());
    let (mut n_limited, mut n_unlimited) = (Seen::default(), Seen::default());
    for round in 0..2 {
        let order: [u8; 3] = if round == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for kind in order {
            match kind {
                0 => merge(&mut alone, phase(None).await?.0),
                1 => {
                    set_limit(limit).await?;
                    let (q, n) = phase(Some(limit * 10)).await?;
                    merge(&mut limited, q);
                    merge(&mut n_limited, n);
                }
                _ => {
                    set_limit(10_000_000).await?;
                    let (q, n) = phase(Some(limit * 10)).await?;
                    merge(&mut unlimited, q);
                    merge(&mut n_unlimited, n);
                }
            }
        }
    }
    // The key flood, twice (after each round's quiet-alone phase would be
    // no fairer: the quiet tenant's alone figures cover both rounds).
    let (mut flooded, mut answers) = (Seen::default(), Flood::default());
    for _ in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let quiet = load(client.clone(), app.clone(), keys[1].clone(), quiet_rate, 2, stop.clone());
        let forged = flood(client.clone(), app.clone(), flood_rate, stop.clone());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        merge(&mut flooded, quiet.await?);
        let f = forged.await?;
        answers.unauthorized += f.unauthorized;
        answers.busy += f.busy;
        answers.other += f.other;
    }
    for s in [&mut alone, &mut limited, &mut unlimited, &mut flooded] {
        s.latencies_ms.sort_by(f64::total_cmp);
    }

    let row = |name: &str, q: &Seen, n: &Seen| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            pct(&q.latencies_ms, 0.5),
            pct(&q.latencies_ms, 0.99),
            pct(&q.latencies_ms, 0.99) / pct(&alone.latencies_ms, 0.99),
            q.errors + q.limited,
            n.latencies_ms.len() as u64 - n.errors,
            n.limited,
            n.errors,
        );
    };
    println!(
        "| phase | quiet p50 ms | quiet p99 ms | quiet p99 / alone | quiet errors | noisy served | noisy 429 | noisy errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    row("quiet alone", &alone, &Seen::default());
    row(&format!("noisy at {}/s, limited to {limit}/s", limit * 10), &limited, &n_limited);
    row(&format!("noisy at {}/s, no limit (baseline)", limit * 10), &unlimited, &n_unlimited);
    row(&format!("forged keys at {flood_rate}/s, each new"), &flooded, &Seen::default());
    println!(
        "\nthe forged keys were answered: {} x 401, {} x 503 busy (unknown keys being checked), {} other",
        answers.unauthorized, answers.busy, answers.other
    );
    println!(
        "\n2 rounds x {secs} s per phase (order flipped in the second), after an unmeasured warm-up; quiet tenant \
         {quiet_rate} req/s, noisy {}/s, both half reads, half writes; same shared pool",
        limit * 10
    );
    Ok(())
}

/// How a flood of forged keys was answered.
#[derive(Default)]
struct Flood {
    unauthorized: u64,
    busy: u64,
    other: u64,
}

/// Open-loop requests at `rate` per second, each with a new well-formed key
/// no tenant has, until `stop` is set.
fn flood(client: reqwest::Client, app: String, rate: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Flood> {
    use rand::RngCore;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let mut bytes = [0u8; 20];
            rand::rng().fill_bytes(&mut bytes);
            let req = client
                .get(format!("{app}/v1/assets"))
                .bearer_auth(format!("tnry_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()));
            tasks.push(tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }));
        }
        let mut f = Flood::default();
        for t in tasks {
            match t.await.unwrap_or(0) {
                401 => f.unauthorized += 1,
                503 => f.busy += 1,
                _ => f.other += 1,
            }
        }
        f
    })
}
