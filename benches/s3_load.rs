//! The whole stack under load over loopback: a real `zonestore serve` process (release build)
//! and a SigV4-signing HTTP load generator in this process. Reports, each against a baseline
//! measured in the same run on the same disk (raw file I/O of the same bytes):
//!
//! - PUT and GET throughput of 64 MiB objects from 4 clients;
//! - ops/s and p99 latency of 4 KiB PUTs and GETs at concurrency 64;
//! - ops/s and p99 latency of 4 KiB range GETs at random offsets of the 64 MiB objects (`pread`
//!   of the same files for the baseline) at concurrency 64;
//!
//! for four set-ups: the embedded default (3 drives behind NVMe/TCP, R = 3), the same with
//! R = 1 (the cost of replication), 3 `zns-file://` drives with R = 3 (the cost of the fabric),
//! and the embedded default with `--direct-writes` (drives that bypass the page cache). Run:
//! `cargo bench -p zonestore --bench s3_load [-- SETUP...]` with SETUP among `embedded`,
//! `embedded-r1`, `zns-file`, `embedded-direct`; `ZONESTORE_BENCH_SECONDS` sets the small-object phase
//! length (default 8).

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use s3api::auth::sigv4;

use common::s3::{S3Server, SECRET_KEY, metric_sum};

const BIG: usize = 64 << 20;
const BIG_CLIENTS: usize = 4;
const BIG_PER_CLIENT: usize = 4;
const SMALL: usize = 4096;
const CONCURRENCY: usize = 64;

type Body = BoxBody<Bytes, Infallible>;

/// A signed S3 client on one HTTP/1.1 connection.
struct Client {
    sender: SendRequest<Body>,
    host: String,
    key: Arc<Vec<u8>>,
}

impl Client {
    async fn connect(address: SocketAddr, key: Arc<Vec<u8>>) -> Client {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client {
            sender,
            host: address.to_string(),
            key,
        }
    }

    /// Sends a request signed with UNSIGNED-PAYLOAD; returns the status and body length.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Body,
        length: usize,
        range: Option<&str>,
    ) -> (u16, usize) {
        let mut request = Request::builder().method(method.clone()).uri(path);
        for (name, value) in
            common::s3::unsigned_payload_headers(method.as_str(), path, &self.host, &self.key)
        {
            request = request.header(name, value);
        }
        let request = request.header("content-length", length);
        let request = match range {
            Some(r) => request.header("range", r),
            None => request,
        }
        .body(body)
        .unwrap();
        let response = self.sender.send_request(request).await.expect("request");
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body").into_data() {
                n += data.len();
            }
        }
        (status, n)
    }
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

/// A body of `length` bytes streamed in 1 MiB chunks of `chunk`.
fn streamed(chunk: Bytes, length: usize) -> Body {
    let chunks = length.div_ceil(chunk.len());
    let stream = futures::stream::iter((0..chunks).map(move |i| {
        let n = (length - i * chunk.len()).min(chunk.len());
        Ok::<_, Infallible>(Frame::data(chunk.slice(..n)))
    }));
    StreamBody::new(stream).boxed()
}

fn random_bytes(n: usize, seed: u64) -> Bytes {
    common::pseudo_random::bytes(seed, n).into()
}

/// Latency figures of a phase.
struct Ops {
    ops: usize,
    /// The fewest operations one worker did (its objects 0..this exist after a PUT phase).
    min_per_worker: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Ops {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn summarize(per_worker: Vec<Vec<Duration>>, elapsed: Duration) -> Ops {
    let min_per_worker = per_worker.iter().map(Vec::len).min().unwrap_or(0);
    let mut latencies: Vec<Duration> = per_worker.into_iter().flatten().collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ops {
        ops: latencies.len(),
        min_per_worker,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// MiB/s of `bytes` in `elapsed`.
fn mibs(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

struct Figures {
    put_mibs: f64,
    get_mibs: f64,
    small_put: Ops,
    small_get: Ops,
    range_get: Ops,
}

async fn run_s3(address: SocketAddr, seconds: u64) -> Figures {
    let key = Arc::new(sigv4::signing_key(
        SECRET_KEY,
        SystemTime::now(),
        "us-east-1",
    ));
    let mut c = Client::connect(address, key.clone()).await;
    assert_eq!(
        c.send(Method::PUT, "/bench", full(Bytes::new()), 0, None)
            .await
            .0,
        200
    );

    // 64 MiB objects, 4 clients.
    let put_mibs = big_phase(address, &key, Some(random_bytes(1 << 20, 7))).await;
    let get_mibs = big_phase(address, &key, None).await;

    // 4 KiB objects at concurrency 64.
    let body = random_bytes(SMALL, 11);
    // Told as it begins, for a profiler to be pointed at one phase.
    eprintln!("phase: 4 KiB PUT");
    let small_put = small_phase(address, &key, seconds, move |worker, i| {
        (
            Method::PUT,
            format!("/bench/small/{worker}/{i}"),
            body.clone(),
            None,
        )
    })
    .await;
    let written = small_put.min_per_worker;
    let small_get = small_phase(address, &key, seconds, move |worker, i| {
        let j = (i * 7919 + worker) % written.max(1);
        (
            Method::GET,
            format!("/bench/small/{worker}/{j}"),
            Bytes::new(),
            None,
        )
    })
    .await;
    let range_get = small_phase(address, &key, seconds, move |worker, i| {
        let (object, offset) = random_range(worker, i);
        let (client, n) = (object / BIG_PER_CLIENT, object % BIG_PER_CLIENT);
        (
            Method::GET,
            format!("/bench/big-{client}-{n}"),
            Bytes::new(),
            Some(format!("bytes={offset}-{}", offset + SMALL - 1)),
        )
    })
    .await;
    Figures {
        put_mibs,
        get_mibs,
        small_put,
        small_get,
        range_get,
    }
}

/// Which 64 MiB object and which 4 KiB-aligned offset in it the `i`th range GET of `worker`
/// reads.
fn random_range(worker: usize, i: usize) -> (usize, usize) {
    let x = (worker as u64 + 1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i as u64)
        .wrapping_mul(6364136223846793005)
        .rotate_left(29);
    let object = (x % (BIG_CLIENTS * BIG_PER_CLIENT) as u64) as usize;
    let offset = ((x >> 20) % (BIG / SMALL) as u64) as usize * SMALL;
    (object, offset)
}

/// Every client PUTs (with `chunk`, repeated to 64 MiB) or GETs (`None`) its 64 MiB objects;
/// returns MiB/s.
async fn big_phase(address: SocketAddr, key: &Arc<Vec<u8>>, chunk: Option<Bytes>) -> f64 {
    let verb = if chunk.is_some() { "PUT" } else { "GET" };
    eprintln!("phase: 64 MiB {verb}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..BIG_CLIENTS {
        let (key, chunk) = (key.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(address, key).await;
            for i in 0..BIG_PER_CLIENT {
                let path = format!("/bench/big-{client}-{i}");
                match &chunk {
                    Some(chunk) => {
                        let body = streamed(chunk.clone(), BIG);
                        let (status, _) = c.send(Method::PUT, &path, body, BIG, None).await;
                        assert_eq!(status, 200, "PUT {path}");
                    }
                    None => {
                        let body = full(Bytes::new());
                        let answer = c.send(Method::GET, &path, body, 0, None).await;
                        assert_eq!(answer, (200, BIG), "GET {path}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    mibs(BIG * BIG_CLIENTS * BIG_PER_CLIENT, started.elapsed())
}

async fn small_phase(
    address: SocketAddr,
    key: &Arc<Vec<u8>>,
    seconds: u64,
    op: impl Fn(usize, usize) -> (Method, String, Bytes, Option<String>) + Send + Sync + Clone + 'static,
) -> Ops {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let (key, op) = (key.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(address, key).await;
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let (method, path, body, range) = op(worker, i);
                let len = body.len();
                let t = Instant::now();
                let (status, n) = c
                    .send(method.clone(), &path, full(body), len, range.as_deref())
                    .await;
                match range {
                    Some(_) => assert_eq!((status, n), (206, SMALL), "{method} {path} {range:?}"),
                    None => assert_eq!(status, 200, "{method} {path}"),
                }
                latencies.push(t.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    summarize(all, started.elapsed())
}

/// The same bytes through plain files on the same disk: 64 MiB files written by 4 threads
/// (fsync at the end of each, as a PUT is durable when acknowledged) and read back; 4 KiB
/// files created, written and fdatasync'ed by 64 threads, then read.
fn run_baseline(dir: &Path, seconds: u64) -> Figures {
    std::fs::create_dir_all(dir).unwrap();
    let chunk = random_bytes(1 << 20, 7);
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..BIG_CLIENTS {
            let chunk = chunk.clone();
            s.spawn(move || {
                for i in 0..BIG_PER_CLIENT {
                    let mut f =
                        std::fs::File::create(dir.join(format!("big-{client}-{i}"))).unwrap();
                    for _ in 0..BIG / chunk.len() {
                        f.write_all(&chunk).unwrap();
                    }
                    f.sync_all().unwrap();
                }
            });
        }
    });
    let put_mibs = mibs(BIG * BIG_CLIENTS * BIG_PER_CLIENT, started.elapsed());
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..BIG_CLIENTS {
            s.spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                for i in 0..BIG_PER_CLIENT {
                    let mut f = std::fs::File::open(dir.join(format!("big-{client}-{i}"))).unwrap();
                    while f.read(&mut buf).unwrap() > 0 {}
                }
            });
        }
    });
    let get_mibs = mibs(BIG * BIG_CLIENTS * BIG_PER_CLIENT, started.elapsed());
    let small = random_bytes(SMALL, 11);
    let small_put = timed_threads(seconds, |worker, i, _| {
        let mut f = std::fs::File::create(dir.join(format!("s-{worker}-{i}"))).unwrap();
        f.write_all(&small).unwrap();
        f.sync_data().unwrap();
    });
    let written = small_put.min_per_worker;
    let small_get = timed_threads(seconds, |worker, i, buf| {
        let j = (i * 7919 + worker) % written.max(1);
        let mut f = std::fs::File::open(dir.join(format!("s-{worker}-{j}"))).unwrap();
        f.read_exact(buf).unwrap();
    });
    let files: Vec<std::fs::File> = (0..BIG_CLIENTS * BIG_PER_CLIENT)
        .map(|o| {
            let (client, i) = (o / BIG_PER_CLIENT, o % BIG_PER_CLIENT);
            std::fs::File::open(dir.join(format!("big-{client}-{i}"))).unwrap()
        })
        .collect();
    let range_get = timed_threads(seconds, |worker, i, buf| {
        use std::os::unix::fs::FileExt;
        let (object, offset) = random_range(worker, i);
        files[object].read_exact_at(buf, offset as u64).unwrap();
    });
    Figures {
        put_mibs,
        get_mibs,
        small_put,
        small_get,
        range_get,
    }
}

/// Calls `op(worker, i, buffer)` from `CONCURRENCY` threads for `seconds`, timing each call
/// (`buffer` is a worker's own `SMALL`-byte buffer).
fn timed_threads(seconds: u64, op: impl Fn(usize, usize, &mut [u8]) + Sync) -> Ops {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let all: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENCY)
            .map(|worker| {
                let op = &op;
                s.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut buf = vec![0u8; SMALL];
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        op(worker, i, &mut buf);
                        latencies.push(t.elapsed());
                        i += 1;
                    }
                    latencies
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    summarize(all, started.elapsed())
}

fn report(name: &str, z: &Figures, b: &Figures) {
    println!("\n== {name} (ratio = Zonestore / raw files, same run) ==");
    println!(
        "64 MiB PUT  {:>8.1} MiB/s   baseline {:>8.1} MiB/s   ratio {:.2}",
        z.put_mibs,
        b.put_mibs,
        z.put_mibs / b.put_mibs
    );
    println!(
        "64 MiB GET  {:>8.1} MiB/s   baseline {:>8.1} MiB/s   ratio {:.2}",
        z.get_mibs,
        b.get_mibs,
        z.get_mibs / b.get_mibs
    );
    for (what, zo, bo) in [
        ("4 KiB PUT", &z.small_put, &b.small_put),
        ("4 KiB GET", &z.small_get, &b.small_get),
        ("4 KiB range GET", &z.range_get, &b.range_get),
    ] {
        println!(
            "{what}   {:>8.0} ops/s p50 {:>6.2} ms p99 {:>6.2} ms   baseline {:>8.0} ops/s p99 {:>6.2} ms   ratio ops {:.2} p99 {:.2}",
            zo.rate(),
            zo.p50.as_secs_f64() * 1e3,
            zo.p99.as_secs_f64() * 1e3,
            bo.rate(),
            bo.p99.as_secs_f64() * 1e3,
            zo.rate() / bo.rate(),
            zo.p99.as_secs_f64() / bo.p99.as_secs_f64()
        );
    }
}

/// Prints each figure of `a` as a ratio to the same figure of `b`.
fn compare(label: &str, a: &Figures, b: &Figures) {
    println!(
        "{label}: 64 MiB PUT {:.2}, GET {:.2}, 4 KiB PUT ops {:.2}, GET ops {:.2}, range GET ops {:.2}",
        a.put_mibs / b.put_mibs,
        a.get_mibs / b.get_mibs,
        a.small_put.rate() / b.small_put.rate(),
        a.small_get.rate() / b.small_get.rate(),
        a.range_get.rate() / b.range_get.rate()
    );
}

fn main() {
    let seconds: u64 = std::env::var("ZONESTORE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let setups = ["embedded", "embedded-r1", "zns-file", "embedded-direct"];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for setup in setups {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == setup) {
            continue;
        }
        let dir = tempfile::tempdir_in(
            std::env::var("ZONESTORE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()),
        )
        .unwrap();
        let baseline = run_baseline(&dir.path().join("baseline"), seconds);
        let _ = std::fs::remove_dir_all(dir.path().join("baseline"));
        let drives: Vec<String> = (0..3)
            .map(|i| format!("zns-file://{}", dir.path().join(format!("d{i}")).display()))
            .collect();
        let mut extra: Vec<&str> = Vec::new();
        match setup {
            "embedded-r1" => extra.extend(["--replicas", "1"]),
            "embedded-direct" => extra.push("--direct-writes"),
            "zns-file" => {
                for d in &drives {
                    extra.extend(["--target", d.as_str()]);
                }
                extra.extend(["--zones", "256"]);
            }
            _ => {}
        }
        let server = S3Server::start(&dir.path().join("data"), &extra);
        let address: SocketAddr = server
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let figures = runtime.block_on(run_s3(address, seconds));
        report(setup, &figures, &baseline);
        // What the server did besides serving: a hedge, failover, session lost, write kept
        // short or drive found too slow under load alone would be a false alarm of its own.
        let metrics = server.metrics();
        let counters: Vec<String> = [
            "zonestore_read_hedges_total",
            "zonestore_read_failovers_total",
            "zonestore_nvme_host_reconnects_total",
            "zonestore_under_replicated_bytes",
            "zonestore_slow_writes_total",
        ]
        .iter()
        .map(|name| format!("{name}={}", metric_sum(&metrics, name, &[])))
        .collect();
        println!("  server: {}", counters.join(" "));
        results.push((setup, figures));
        drop(server);
    }
    let get = |name: &str| results.iter().find(|(n, _)| *n == name).map(|(_, f)| f);
    if let (Some(r3), Some(r1)) = (get("embedded"), get("embedded-r1")) {
        println!(
            "\nreplication: 64 MiB PUT R=3/R=1 {:.2}, 4 KiB PUT ops R=3/R=1 {:.2}",
            r3.put_mibs / r1.put_mibs,
            r3.small_put.rate() / r1.small_put.rate()
        );
    }
    if let (Some(fabric), Some(local)) = (get("embedded"), get("zns-file")) {
        compare(
            "fabric: embedded (NVMe/TCP) / zns-file (no fabric)",
            fabric,
            local,
        );
    }
    if let (Some(direct), Some(buffered)) = (get("embedded-direct"), get("embedded")) {
        compare(
            "direct writes: embedded --direct-writes / embedded",
            direct,
            buffered,
        );
    }
}
