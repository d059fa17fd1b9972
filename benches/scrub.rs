//! How fast a scrub pass checks copies: three emulated drives, each behind an in-process
//! NVMe/TCP target on loopback as in `zonestore serve`'s embedded default, hold objects of one
//! size with R = 3, and a scrub pass with no rate limit reads and checks every copy. Reports the
//! bytes checked per second for 4 KiB and 256 KiB objects, each as a ratio to a baseline
//! measured in the same run: reading the drives' data files (the same number of bytes, all in
//! the page cache after the scrub read them: the second of two reads is timed) sequentially in
//! 1 MiB reads.
//!
//! Run: `cargo bench -p zonestore --bench scrub`.

#[path = "../tests/engine_common.rs"]
mod engine_common;

use std::io::Read;
use std::time::{Duration, Instant};

use std::sync::Arc;

use engine_common::put_many;
use fabric::host::{HostConfig, NvmeTcpHost};
use fabric::target::{Target, TargetConfig, TargetHandle};
use zns::{EmulatedZns, Geometry, ZonedDevice};
use zonestore::engine::{DriveSpec, Engine, EngineConfig};

/// Bytes of objects written (each stored three times).
const DATA: u64 = 64 << 20;

async fn scrub(dir: &std::path::Path, object: usize) -> (u64, Duration) {
    let geometry = Geometry::new(32, 16 << 20);
    let mut specs = Vec::new();
    let mut targets: Vec<TargetHandle> = Vec::new();
    for i in 0..3 {
        let drive = EmulatedZns::create(&dir.join(format!("drive{i}")), geometry).expect("drive");
        let nqn = format!("nqn.2026-01.io.zonestore:scrub{i}");
        let target = Target::new(TargetConfig::default());
        target
            .add_subsystem(&nqn, Arc::new(drive), vec![])
            .expect("subsystem");
        let handle = target
            .listen("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("listen");
        let host = NvmeTcpHost::connect(HostConfig::new(handle.local_addr(), &nqn))
            .await
            .expect("host");
        specs.push(DriveSpec {
            name: format!("nvme-tcp://{}/{nqn}", handle.local_addr()),
            device: Arc::new(host) as Arc<dyn ZonedDevice>,
        });
        targets.push(handle);
    }
    let mut config = EngineConfig::new(dir.join("index"), 3);
    config.repair.scrub_interval = None;
    config.repair.scrub_rate_bytes_per_sec = 0;
    let (engine, _) = Engine::open(config, specs).await.expect("engine");
    engine.create_bucket("b", "bench").await.expect("bucket");
    let keys = (DATA / object as u64) as usize;
    let body = vec![0x3Cu8; object];
    put_many(&engine, "b", keys, &body, 16, |k| format!("k{k:08}")).await;
    let before = engine.repair().status();
    let start = Instant::now();
    engine.repair().scrub();
    while engine.repair().status().scrub_passes == before.scrub_passes {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let after = engine.repair().status();
    assert_eq!(after.scrub_bad, 0, "no copy is bad");
    engine.shutdown().await;
    (after.scrub_bytes - before.scrub_bytes, elapsed)
}

/// Time to read `bytes` of the drives' data files under `dir`, 1 MiB at a time.
fn raw_read(dir: &std::path::Path, bytes: u64) -> Duration {
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut left = bytes;
    'files: for i in 0..3 {
        let drive = dir.join(format!("drive{i}"));
        let Some(data) = std::fs::read_dir(&drive)
            .expect("drive dir")
            .filter_map(Result::ok)
            .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        else {
            continue;
        };
        let mut file = std::fs::File::open(data.path()).expect("data file");
        while left > 0 {
            let n = file.read(&mut buf).expect("read");
            if n == 0 {
                continue 'files;
            }
            left = left.saturating_sub(n as u64);
        }
    }
    start.elapsed()
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let base = std::env::var("ZONESTORE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    println!("scrub pass without a rate limit, 3 drives, R = 3; ratio to reading the data files");
    for object in [4usize << 10, 256 << 10] {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let (checked, elapsed) = rt.block_on(scrub(dir.path(), object));
        raw_read(dir.path(), checked);
        let raw = raw_read(dir.path(), checked);
        let rate = mib_per_s(checked, elapsed);
        println!(
            "{:>4} KiB objects: checked {:>6.1} MiB at {rate:>7.1} MiB/s; raw {:>7.1} MiB/s; ratio {:.2}",
            object >> 10,
            checked as f64 / (1 << 20) as f64,
            mib_per_s(checked, raw),
            rate / mib_per_s(checked, raw)
        );
    }
}
