//! Memory stays bounded: 8 aws-cli clients upload and 8 download large objects at the same
//! time (each aws-cli runs 10 part transfers in parallel: 160 concurrent streams), and the
//! server's peak RSS (VmHWM) stays under 300 MiB. Object size comes from
//! `ZONESTORE_MEMORY_OBJECT_MIB` (default 128; the README's figure uses 1024): the bound must not
//! depend on it.

#[path = "common/mod.rs"]
mod common;

use common::s3::{S3Server, same_file, write_random_file};

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn rss_stays_bounded_with_16_large_transfers_at_once() {
    let mib: usize = std::env::var("ZONESTORE_MEMORY_OBJECT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let dir = tempfile::tempdir().unwrap();
    // `ZONESTORE_MEMORY_REPLICAS` lowers the copies kept, for runs on small disks.
    let replicas = std::env::var("ZONESTORE_MEMORY_REPLICAS").unwrap_or_else(|_| "3".into());
    let server = S3Server::start(&dir.path().join("data"), &["--replicas", &replicas]);
    let file = dir.path().join("object.bin");
    write_random_file(&file, mib << 20, 1);
    let f = file.to_str().unwrap();
    server.aws_ok(&["s3", "mb", "s3://mem"]);
    // Objects to download while others upload.
    for i in 0..8 {
        server.aws_ok(&[
            "s3",
            "cp",
            "--only-show-errors",
            f,
            &format!("s3://mem/old{i}"),
        ]);
    }
    let before = peak_rss_kib(server.process.child.id());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for i in 0..8 {
            let up = format!("s3://mem/new{i}");
            let server = &server;
            jobs.push(s.spawn(move || server.aws_ok(&["s3", "cp", "--only-show-errors", f, &up])));
            let down = dir.path().join(format!("down{i}"));
            jobs.push(s.spawn(move || {
                server.aws_ok(&[
                    "s3",
                    "cp",
                    "--only-show-errors",
                    &format!("s3://mem/old{i}"),
                    down.to_str().unwrap(),
                ])
            }));
        }
        for job in jobs {
            job.join().unwrap();
        }
    });
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(server.process.child.id());
    println!(
        "memory: 8 uploads + 8 downloads of {mib} MiB in {elapsed:?}; peak RSS {} MiB (before the transfers: {} MiB)",
        peak / 1024,
        before / 1024
    );
    for i in 0..8 {
        assert!(same_file(&file, &dir.path().join(format!("down{i}"))));
    }
    let head = server.aws_ok(&["s3api", "head-object", "--bucket", "mem", "--key", "new7"]);
    assert!(head.contains(&format!("{}", mib << 20)), "{head}");
    assert!(
        peak < 300 * 1024,
        "peak RSS {} MiB exceeds 300 MiB",
        peak / 1024
    );
}
