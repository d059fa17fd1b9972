//! `recover --rebuild-index` at scale: fills one emulated drive with many small objects (1M by
//! default, `ZONESTORE_REBUILD_OBJECTS` to change), rebuilds the index from the zones, and
//! reports the rebuild's rate and how much its peak memory grew, per object. The rebuild keeps
//! what the scan finds in a scratch RocksDB, so the growth should not depend on the object
//! count (before it held every record in memory: about 1.8 KB per object).
//!
//! Run: `cargo bench -p zonestore --bench rebuild_index`.

#[path = "../tests/engine_common.rs"]
mod engine_common;

use std::time::Instant;

use engine_common::{drive_specs, open_engine, put};
use zns::Geometry;
use zonestore::engine::recovery;

/// A memory figure of this process from `/proc/self/status`, in KiB (0 where it cannot be
/// read): `VmRSS` (resident now) or `VmHWM` (the peak since [`reset_peak_rss`] or the start).
fn status_kib(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Makes the peak resident memory start again from what is resident now (so that the fill's
/// peak does not hide the rebuild's).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let objects: usize = std::env::var("ZONESTORE_REBUILD_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir_in(
            std::env::var("ZONESTORE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()),
        )
        .unwrap();
        let (engine, drives) = open_engine(dir.path(), 1, Geometry::new(256, 64 << 20), |_| {}).await;
        engine.create_bucket("b", "bench").await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..64 {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                for k in (w..objects).step_by(64) {
                    let key = format!("dataset/shard-{:04}/sample-{k:010}.jpg", k % 1000);
                    put(&engine, "b", &key, &[7u8; 100]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        engine.shutdown().await;
        reset_peak_rss();
        let before = status_kib("VmRSS");
        let start = Instant::now();
        let rebuilt = dir.path().join("rebuilt");
        let report = recovery::rebuild(&rebuilt, drive_specs(&drives), &Default::default(), |_| {})
            .await
            .unwrap();
        let seconds = start.elapsed().as_secs_f64();
        let growth = (status_kib("VmHWM") - before).max(0) as f64 * 1024.0;
        println!(
            "rebuilt {} objects ({} records) in {seconds:.1} s ({:.0} objects/s); peak memory grew {:.0} MiB ({:.0} bytes per object)",
            report.objects,
            report.records,
            report.objects as f64 / seconds,
            growth / f64::from(1 << 20),
            growth / report.objects as f64
        );
    });
}
