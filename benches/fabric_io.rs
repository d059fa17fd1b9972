//! NVMe/TCP over loopback against the local emulated drive, the same work in the same run:
//! 4 KiB random reads at queue depth 32 (IOPS) and 128 KiB sequential Zone Appends, 4 zones with
//! 4 in flight each (bandwidth). Criterion prints each case; compare fabric/local as ratios: for reads local_time/fabric_time
//! of the same number of reads, for appends likewise. A second baseline is the transport alone:
//! the same exchanges (a 72-byte command capsule out and 4 KiB back; 128 KiB out and a 16-byte
//! completion back) pipelined over raw loopback TCP connections, as many as the host has I/O
//! queues, with the same number in flight and no drive behind them.
//!
//! The allocator is jemalloc, as in the `zonestore` binary that runs host and target: with
//! glibc's malloc, buffers allocated on one worker thread and freed on another cost the fabric
//! about half its CPU time per 4 KiB read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fabric::host::{HostConfig, NvmeTcpHost};
use fabric::target::{Target, TargetConfig};
use raw_tcp::RawTcp;
use zns::{EmulatedZns, Geometry, ZoneAction, ZoneSelect, ZonedDevice};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NQN: &str = "nqn.2026-01.io.zonestore:bench";
const READS: usize = 20_000;
const DEPTH: usize = 32;
const CHUNK: usize = 128 << 10;
const TOTAL: usize = 64 << 20;

async fn random_reads(device: Arc<dyn ZonedDevice>, blocks_written: u64) {
    let mut tasks = Vec::new();
    for worker in 0..DEPTH {
        let device = device.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = worker as u64 * 7919 + 1;
            for _ in 0..READS / DEPTH {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let lba = (x >> 20) % blocks_written;
                device.read(lba, 1).await.expect("read");
            }
        }));
    }
    for t in tasks {
        t.await.expect("reader");
    }
}

async fn appends(device: Arc<dyn ZonedDevice>, geometry: Geometry, chunk: Bytes) {
    let per_stream = TOTAL / CHUNK / 16;
    let mut tasks = Vec::new();
    for zone in 0..4u32 {
        for _ in 0..4 {
            let device = device.clone();
            let chunk = chunk.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_stream {
                    device
                        .append(geometry.zone_start(zone), chunk.clone())
                        .await
                        .expect("append");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("appender");
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let geometry = Geometry::new(8, 32 << 20);
    let drive = EmulatedZns::create(&dir.path().join("zns"), geometry).expect("drive");
    let (host, _handle) = rt.block_on(async {
        let target = Target::new(TargetConfig::default());
        target
            .add_subsystem(NQN, Arc::new(drive.clone()), vec![])
            .expect("subsystem");
        let handle = target
            .listen("127.0.0.1:0".parse().unwrap())
            .await
            .expect("listen");
        let host = NvmeTcpHost::connect(HostConfig::new(handle.local_addr(), NQN))
            .await
            .expect("host");
        (host, handle)
    });
    let local: Arc<dyn ZonedDevice> = Arc::new(drive.clone());
    let remote: Arc<dyn ZonedDevice> = Arc::new(host.clone());
    let chunk = Bytes::from((0..CHUNK).map(|i| (i * 13) as u8).collect::<Vec<u8>>());

    // Reads: fill zone 7 (32 MiB) once, then read random 4 KiB blocks of it.
    let read_zone = geometry.zone_start(7);
    rt.block_on(async {
        for _ in 0..(32 << 20) / CHUNK {
            drive.append(read_zone, chunk.clone()).await.expect("fill");
        }
        drive.flush().await.expect("flush");
    });
    let written = geometry.zone_size;
    let mut group = c.benchmark_group("read_4KiB_qd32");
    group.throughput(Throughput::Elements(READS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (name, device) in [
        ("local_drive", local.clone()),
        ("nvme_tcp_loopback", remote.clone()),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let device = device.clone();
                    // Reads of zone 7 only: random LBAs are offset into it.
                    let mut shifted = zns::testing::Intercepted::new(device);
                    shifted.read_base = read_zone;
                    let shifted = Arc::new(shifted);
                    rt.block_on(random_reads(shifted, written));
                }
                start.elapsed()
            })
        });
    }
    let raw = rt.block_on(RawTcp::start(2));
    group.bench_function("raw_tcp_loopback", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(raw.exchanges(READS, DEPTH, 72, 4096 + 24));
            }
            start.elapsed()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("append_128KiB_4zones_qd16");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, device) in [("local_drive", local), ("nvme_tcp_loopback", remote)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rt.block_on(async {
                        for zone in 0..4 {
                            drive
                                .manage_zones(
                                    ZoneAction::Reset,
                                    ZoneSelect::Zone(geometry.zone_start(zone)),
                                )
                                .await
                                .expect("reset");
                        }
                    });
                    let start = Instant::now();
                    rt.block_on(appends(device.clone(), geometry, chunk.clone()));
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.bench_function("raw_tcp_loopback", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(raw.exchanges(TOTAL / CHUNK, 16, 72 + CHUNK, 16));
            }
            start.elapsed()
        })
    });
    group.finish();
    rt.block_on(host.close());
}

/// The transport baseline: request/response exchanges of given sizes, pipelined over raw
/// loopback TCP connections (responses come back in order on each connection).
mod raw_tcp {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Mutex, oneshot};

    type Waiters = VecDeque<oneshot::Sender<()>>;

    /// Connections to an in-process server that answers each request with as many bytes as
    /// the request asks for.
    pub struct RawTcp {
        connections: Vec<Arc<Mutex<OwnedWriteHalf>>>,
        waiters: Vec<Arc<std::sync::Mutex<Waiters>>>,
    }

    impl RawTcp {
        /// Starts the server and opens `count` connections to it.
        pub async fn start(count: usize) -> RawTcp {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    socket.set_nodelay(true).expect("nodelay");
                    tokio::spawn(serve(socket));
                }
            });
            let mut connections = Vec::new();
            let mut waiters = Vec::new();
            for _ in 0..count {
                let socket = TcpStream::connect(address).await.expect("connect");
                socket.set_nodelay(true).expect("nodelay");
                let (mut read, write) = socket.into_split();
                let queue = Arc::new(std::sync::Mutex::new(Waiters::new()));
                let pending = queue.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 << 10];
                    loop {
                        let mut header = [0u8; 4];
                        if read.read_exact(&mut header).await.is_err() {
                            return;
                        }
                        let len = u32::from_le_bytes(header) as usize;
                        read.read_exact(&mut buf[..len]).await.expect("response");
                        let waiter = pending.lock().expect("waiters").pop_front();
                        if let Some(w) = waiter {
                            let _ = w.send(());
                        }
                    }
                });
                connections.push(Arc::new(Mutex::new(write)));
                waiters.push(queue);
            }
            RawTcp {
                connections,
                waiters,
            }
        }

        /// `total` exchanges, `depth` in flight, each sending `request` bytes and receiving
        /// `response` bytes.
        pub async fn exchanges(&self, total: usize, depth: usize, request: usize, response: usize) {
            let mut tasks = Vec::new();
            for worker in 0..depth {
                let connection = self.connections[worker % self.connections.len()].clone();
                let waiters = self.waiters[worker % self.waiters.len()].clone();
                let mut message = vec![0u8; request.max(8)];
                message[..4].copy_from_slice(&((request.max(8) - 8) as u32).to_le_bytes());
                message[4..8].copy_from_slice(&(response as u32).to_le_bytes());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..total / depth {
                        let (tx, rx) = oneshot::channel();
                        {
                            let mut c = connection.lock().await;
                            waiters.lock().expect("waiters").push_back(tx);
                            c.write_all(&message).await.expect("request");
                        }
                        rx.await.expect("response");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("worker");
            }
        }
    }

    /// Answers requests (8-byte header: body length, response length; then the body) in order.
    async fn serve(socket: TcpStream) {
        let (mut read, mut write) = socket.into_split();
        let mut body = vec![0u8; 256 << 10];
        let reply = vec![0u8; 256 << 10];
        loop {
            let mut header = [0u8; 8];
            if read.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let answer = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
            if read.read_exact(&mut body[..len]).await.is_err() {
                return;
            }
            let mut out = Vec::with_capacity(4 + answer);
            out.extend_from_slice(&(answer as u32).to_le_bytes());
            out.extend_from_slice(&reply[..answer]);
            if write.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
