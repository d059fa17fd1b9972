//! Sequential append bandwidth of the emulated ZNS drive (128 KiB Zone Appends, several zones
//! with several appends in flight) against the baseline of raw buffered file writes of the same
//! bytes, measured in the same run. Criterion prints each case's time and throughput; the ratio
//! baseline_time / append_time is what to compare (the README gives it).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zns::{EmulatedZns, Geometry, ZoneAction, ZoneSelect, ZonedDevice};

const CHUNK: usize = 128 << 10;
const TOTAL: usize = 64 << 20;
const ZONES_IN_FLIGHT: u32 = 4;
const DEPTH_PER_ZONE: usize = 4;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = Bytes::from((0..CHUNK).map(|i| (i * 7) as u8).collect::<Vec<u8>>());

    let mut group = c.benchmark_group("zns_sequential_write_64MiB");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));

    let raw_path = dir.path().join("raw.bin");
    group.bench_function("baseline_raw_buffered_file_write", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut file = std::fs::File::create(&raw_path).expect("create");
                let start = Instant::now();
                for _ in 0..TOTAL / CHUNK {
                    file.write_all(&chunk).expect("write");
                }
                total += start.elapsed();
            }
            total
        })
    });

    let geometry = Geometry::new(8, 32 << 20);
    let drive = Arc::new(EmulatedZns::create(&dir.path().join("zns"), geometry).expect("drive"));
    group.bench_function("zns_append_128KiB_4zones_qd16", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(drive.manage_zones(ZoneAction::Reset, ZoneSelect::All))
                    .expect("reset");
                let start = Instant::now();
                rt.block_on(async {
                    let per_stream = TOTAL / CHUNK / (ZONES_IN_FLIGHT as usize * DEPTH_PER_ZONE);
                    let mut streams = Vec::new();
                    for zone in 0..ZONES_IN_FLIGHT {
                        for _ in 0..DEPTH_PER_ZONE {
                            let drive = drive.clone();
                            let chunk = chunk.clone();
                            streams.push(tokio::spawn(async move {
                                for _ in 0..per_stream {
                                    drive
                                        .append(geometry.zone_start(zone), chunk.clone())
                                        .await
                                        .expect("append");
                                }
                            }));
                        }
                    }
                    for s in streams {
                        s.await.expect("stream");
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
