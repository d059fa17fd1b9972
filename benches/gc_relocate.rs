//! How fast GC moves live data: a drive is filled with objects of one size, every other object
//! is deleted (each sealed zone is then about half live), and GC collects those zones at full
//! speed (no rate limit, no foreground load). Reports the live bytes relocated per second, for
//! 4 KiB and 256 KiB objects, with buffered and with direct (`--direct-writes`) drive writes,
//! each as a ratio to a baseline measured in the same run: the same number of bytes written
//! sequentially to a file in the same directory in 1 MiB `write`s, then `fdatasync`.
//!
//! Run: `cargo bench -p zonestore --bench gc_relocate`.

#[path = "../tests/engine_common.rs"]
mod engine_common;

use std::io::Write;
use std::time::{Duration, Instant};

use engine_common::{open_engine, put_many};
use zns::Geometry;

const ZONES: u32 = 24;
const ZONE_BYTES: u64 = 16 << 20;
/// Zones' worth of objects written before the deletes.
const FILLED_ZONES: u64 = 16;
/// Zones collected per measurement.
const COLLECTED: usize = 12;

struct Outcome {
    relocated: u64,
    elapsed: Duration,
}

async fn relocate(dir: &std::path::Path, object: usize, direct: bool) -> Outcome {
    let geometry = Geometry::new(ZONES, ZONE_BYTES);
    let (engine, drives) = open_engine(dir, 1, geometry, |c| {
        // Only the collections below run.
        c.gc.low_watermark = 0.999;
        c.gc.high_watermark = 0.9999;
    })
    .await;
    engine.gc().stop();
    drives[0].set_direct_writes(direct);
    engine.create_bucket("b", "bench").await.expect("bucket");
    let keys = (FILLED_ZONES * ZONE_BYTES / (object as u64 + 8192)) as usize;
    let body = vec![0xA5u8; object];
    put_many(&engine, "b", keys, &body, 16, |k| format!("k{k:08}")).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for k in (2 * w..keys).step_by(32) {
                engine
                    .delete("b", &format!("k{k:08}"))
                    .await
                    .expect("delete");
            }
        }));
    }
    for t in tasks {
        t.await.expect("deleter");
    }
    let before = engine.gc().status().bytes_relocated;
    let start = Instant::now();
    for _ in 0..COLLECTED {
        engine.inner().collect_now().await.expect("collect");
    }
    let elapsed = start.elapsed();
    let relocated = engine.gc().status().bytes_relocated - before;
    engine.shutdown().await;
    Outcome { relocated, elapsed }
}

/// Seconds to write `bytes` sequentially to a new file under `dir` and make them durable.
fn raw_write(dir: &std::path::Path, bytes: u64) -> Duration {
    let chunk = vec![0x5Au8; 1 << 20];
    let path = dir.join("raw");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path).expect("raw file");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).expect("raw write");
        left -= n as u64;
    }
    file.sync_data().expect("raw sync");
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(path);
    elapsed
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let base = std::env::var("ZONESTORE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    println!(
        "GC relocation at full speed, {COLLECTED} half-live zones of 16 MiB; ratio to raw sequential writes of the same bytes"
    );
    for object in [4usize << 10, 256 << 10] {
        for direct in [false, true] {
            let dir = tempfile::tempdir_in(&base).expect("tempdir");
            let outcome = rt.block_on(relocate(dir.path(), object, direct));
            let raw = raw_write(dir.path(), outcome.relocated);
            let gc = mib_per_s(outcome.relocated, outcome.elapsed);
            let baseline = mib_per_s(outcome.relocated, raw);
            println!(
                "{:>4} KiB objects, {:<8} writes: relocated {:>6.1} MiB at {gc:>7.1} MiB/s; raw {baseline:>7.1} MiB/s; ratio {:.2}",
                object >> 10,
                if direct { "direct" } else { "buffered" },
                outcome.relocated as f64 / (1 << 20) as f64,
                gc / baseline
            );
        }
    }
}
