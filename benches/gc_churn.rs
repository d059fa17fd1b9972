//! Host-controlled GC under churn: a drive filled to 80% with 256 KiB objects, then overwritten
//! at random (uniform, and a hot/cold mix where 80% of writes go to 20% of the keys) for three
//! times the live data, with greedy and with cost-benefit victim selection. Reports write
//! amplification of the churn phase ((user + GC appends) / user appends), and foreground p99
//! GET latency with GC running (background GC, rate-limited, no other writes) as a ratio to the
//! same reads with GC idle, measured in the same run. Also the p99 during churn (writes and GC
//! together) for reference.
//!
//! Run: `cargo bench -p zonestore --bench gc_churn`.

#[path = "../tests/engine_common.rs"]
mod engine_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engine_common::{get, open_engine, put, put_many};
use zns::Geometry;
use zonestore::engine::Engine;
use zonestore::engine::gc::Policy;

const OBJECT: usize = 256 << 10;
const ZONES: u32 = 96;
const ZONE_BYTES: u64 = 16 << 20;
const READERS: usize = 8;

fn user_and_gc(engine: &Engine) -> (u64, u64) {
    let s = engine.stats();
    (
        s.user_written.load(Ordering::Relaxed),
        s.gc_written.load(Ordering::Relaxed),
    )
}

/// Random GETs from `READERS` tasks until `stop`; returns the latencies.
async fn read_load(engine: Engine, keys: usize, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let (engine, stop) = (engine.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = r as u64 * 7919 + 17;
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = format!("k{}", (x >> 33) as usize % keys);
                let t = Instant::now();
                let body = get(&engine, "b", &key).await.expect("GET");
                assert_eq!(body.len(), OBJECT);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn reads_for(engine: &Engine, keys: usize, seconds: u64) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_load(engine.clone(), keys, stop.clone()));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    p99(reader.await.unwrap())
}

struct Outcome {
    wa: f64,
    p99_idle: Duration,
    p99_gc: Duration,
    p99_churn: Duration,
    zones_collected: u64,
}

async fn run(policy: Policy, hot_cold: bool) -> Outcome {
    let dir = tempfile::tempdir_in(
        std::env::var("ZONESTORE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()),
    )
    .unwrap();
    let geometry = Geometry::new(ZONES, ZONE_BYTES);
    let (engine, _drives) = open_engine(dir.path(), 1, geometry, |c| {
        c.gc.policy = policy;
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        if let Some(low) = env("ZONESTORE_GC_LOW") {
            c.gc.low_watermark = low;
        }
        if let Some(high) = env("ZONESTORE_GC_HIGH") {
            c.gc.high_watermark = high;
        }
    })
    .await;
    engine.create_bucket("b", "bench").await.unwrap();
    let capacity = u64::from(ZONES) * ZONE_BYTES;
    // A 256 KiB object takes its data record and a commit record: 264 KiB on the drive.
    let keys = (capacity * 8 / 10 / (OBJECT as u64 + 8192)) as usize;
    let body = vec![0x5Au8; OBJECT];
    // Fill to 80%, 8 writers.
    put_many(&engine, "b", keys, &body, 8, |k| format!("k{k}")).await;
    // Idle: reads alone.
    let p99_idle = reads_for(&engine, keys, 4).await;

    // Churn: overwrite 3x the live set, with readers running.
    let (user0, gc0) = user_and_gc(&engine);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_load(engine.clone(), keys, stop.clone()));
    let writes = keys * 3;
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (engine, body) = (engine.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = w * 104_729 + 7;
            for _ in 0..writes / 8 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) as usize;
                let k = if hot_cold {
                    let hot = keys / 5;
                    if r % 10 < 8 { r / 10 % hot } else { hot + r / 10 % (keys - hot) }
                } else {
                    r % keys
                };
                if let Err(e) = put(&engine, "b", &format!("k{k}"), &body).await {
                    let rows = engine.zone_table();
                    let mut summary = std::collections::BTreeMap::new();
                    for r in &rows {
                        let e = summary.entry(format!("{:?}", r.usage)).or_insert((0, 0u64));
                        e.0 += 1;
                        e.1 += r.capacity_bytes - r.valid_bytes.min(r.capacity_bytes);
                    }
                    let best = rows
                        .iter()
                        .filter(|r| format!("{:?}", r.usage) == "Sealed")
                        .map(|r| r.capacity_bytes - r.valid_bytes)
                        .max();
                    let drive = engine.drives().all()[0].device.clone();
                    let report = drive.report_zones(0, zns::ReportFilter::All, 1000).await.unwrap();
                    let mut states = std::collections::BTreeMap::new();
                    for (i, z) in report.zones.iter().enumerate() {
                        let usage = format!("{:?}", rows[i].usage);
                        *states.entry((z.state.name(), usage)).or_insert(0) += 1;
                    }
                    panic!(
                        "churn: {e}; zones (count, garbage) by use: {summary:?}; best sealed garbage {best:?}; gc {:?}; drive state x use: {states:?}",
                        engine.gc().status()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let p99_churn = p99(reader.await.unwrap());
    let (user1, gc1) = user_and_gc(&engine);
    let wa = ((user1 - user0) + (gc1 - gc0)) as f64 / (user1 - user0) as f64;

    // GC running alone (background GC with its rate limit), reads alongside.
    let before = engine.gc().status().zones_collected;
    engine.gc().set_watermarks(0.95, 0.99);
    engine.gc().nudge();
    let p99_gc = reads_for(&engine, keys, 4).await;
    engine.gc().set_watermarks(0.10, 0.20);
    let zones_collected = engine.gc().status().zones_collected - before;
    engine.shutdown().await;
    Outcome {
        wa,
        p99_idle,
        p99_gc,
        p99_churn,
        zones_collected,
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "drive: {ZONES} zones x {} MiB, filled to 80% with {} KiB objects, churned 3x; {READERS} readers",
        ZONE_BYTES >> 20,
        OBJECT >> 10
    );
    // ZONESTORE_GC_CHURN_ONLY=uniform-greedy (or hot/cold-costbenefit, ...) runs one case.
    let only = std::env::var("ZONESTORE_GC_CHURN_ONLY").ok();
    for hot_cold in [false, true] {
        for policy in [Policy::Greedy, Policy::CostBenefit] {
            let case = format!(
                "{}-{}",
                if hot_cold { "hot/cold" } else { "uniform" },
                format!("{policy:?}").to_lowercase()
            );
            if only.as_ref().is_some_and(|o| *o != case) {
                continue;
            }
            let o = runtime.block_on(run(policy, hot_cold));
            println!(
                "{:<8} {:<12} WA {:.3}   p99 GET idle {:>6.2} ms, GC running {:>6.2} ms (ratio {:.2}, {} zones collected meanwhile), churn {:>6.2} ms",
                if hot_cold { "hot/cold" } else { "uniform" },
                format!("{policy:?}"),
                o.wa,
                o.p99_idle.as_secs_f64() * 1e3,
                o.p99_gc.as_secs_f64() * 1e3,
                o.p99_gc.as_secs_f64() / o.p99_idle.as_secs_f64(),
                o.zones_collected,
                o.p99_churn.as_secs_f64() * 1e3,
            );
        }
    }
}
