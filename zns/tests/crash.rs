//! Crash consistency: a child process appends and flushes until it is killed with SIGKILL; on
//! reopening, every flushed byte is there, and every zone's write pointer covers only data that
//! was written. Every other round the child writes with direct writes on.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use zns::testing::pattern;
use zns::{EmulatedZns, Geometry, ReportFilter, ZoneState, ZonedDevice};

const CHILD_ENV: &str = "ZNS_CRASH_CHILD_DIR";
/// "1" when the child writes with direct writes on (every other round).
const DIRECT_ENV: &str = "ZNS_CRASH_CHILD_DIRECT";

fn geometry() -> Geometry {
    // Large enough that the child never fills the drive between kills.
    Geometry::new(32, 8 << 20)
}

/// The child: appends batches to random zones, prints each completed append, flushes, prints the
/// flush. Runs until killed. It reports on stderr, which the test harness leaves alone.
async fn child(dir: &str) {
    let g = geometry();
    let drive = EmulatedZns::open_or_create(std::path::Path::new(dir), g).expect("open drive");
    drive.set_direct_writes(std::env::var(DIRECT_ENV).as_deref() == Ok("1"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    loop {
        let mut batch = Vec::new();
        for _ in 0..8 {
            let zone = rng.random_range(0..g.zone_count);
            let blocks = rng.random_range(1..=8u64);
            let seed: u8 = rng.random();
            let drive = drive.clone();
            batch.push(tokio::spawn(async move {
                let data = Bytes::from(pattern(&g, 0, blocks, seed));
                drive
                    .append(g.zone_start(zone), data)
                    .await
                    .ok()
                    .map(|lba| (lba, blocks, seed))
            }));
        }
        let mut any = false;
        for task in batch {
            if let Some((lba, blocks, seed)) = task.await.expect("append task") {
                eprintln!("A {lba} {blocks} {seed}");
                any = true;
            }
        }
        drive.flush().await.expect("flush");
        eprintln!("F");
        if !any {
            // Every zone is full: nothing more to do but wait for the kill.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

#[test]
fn flushed_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(child(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = geometry();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Appends seen by the parent: lba -> (blocks, seed); and those known flushed.
    let mut seen: HashMap<u64, (u64, u8)> = HashMap::new();
    let mut flushed: Vec<u64> = Vec::new();
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "flushed_appends_survive_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(DIRECT_ENV, (round % 2).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let report = child.stderr.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(report).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        // Killed after a random number of flushes, a random moment later: however slow the
        // machine is to start the child.
        let wanted = rng.random_range(1..6usize);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        let mut flushes = 0;
        while flushes < wanted {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) => {
                    flushes += usize::from(line == "F");
                    lines.push(line);
                }
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(line_rx.try_iter());
        let mut pending = Vec::new();
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["A", lba, blocks, seed] => {
                    let lba: u64 = lba.parse().unwrap();
                    seen.insert(lba, (blocks.parse().unwrap(), seed.parse().unwrap()));
                    pending.push(lba);
                }
                ["F"] => flushed.append(&mut pending),
                _ => {}
            }
        }
        assert!(
            lines.iter().any(|l| l == "F"),
            "child made progress in round {round}"
        );

        let drive = EmulatedZns::open(dir.path()).expect("reopen after SIGKILL");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let report = drive.report_zones(0, ReportFilter::All, 64).await.unwrap();
            for zone in &report.zones {
                assert!(
                    !zone.state.is_open(),
                    "no zone is open after a restart: {zone:?}"
                );
            }
            // Every flushed append is intact.
            for lba in &flushed {
                let (blocks, seed) = seen[lba];
                let data = drive.read(*lba, blocks as u32).await.unwrap();
                assert_eq!(
                    &data[..],
                    &pattern(&g, 0, blocks, seed)[..],
                    "flushed append at {lba}"
                );
            }
            // Every block below each write pointer belongs to an append the child completed.
            for zone in &report.zones {
                let end = match zone.state {
                    ZoneState::Full => zone.zslba + zone.zcap,
                    _ => zone.wp,
                };
                let mut at = zone.zslba;
                while at < end {
                    let (blocks, _) = *seen.get(&at).unwrap_or_else(|| {
                        panic!(
                            "LBA {at} below the write pointer {end} was never appended: {zone:?}"
                        )
                    });
                    at += blocks;
                }
                assert_eq!(
                    at, end,
                    "write pointer of zone {} ends on an append",
                    zone.zslba
                );
            }
        });
    }
    assert!(
        flushed.len() > 20,
        "enough appends were flushed to mean something: {}",
        flushed.len()
    );
}
