//! Crash consistency of the engine: a child process writes, overwrites and deletes objects
//! (with GC running on a small drive) and is killed with SIGKILL at random moments, round after
//! round on the same data directory. After every kill the engine reopens and every key holds
//! exactly its last acknowledged content, or the content of the one operation that was in
//! flight on it: nothing acknowledged is lost and nothing is torn. And the index equals what a
//! rebuild from the zones gives: what a kill left on the drives without its index change was
//! replayed at the restart.

#[path = "engine_common.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::{RngExt, SeedableRng};
use zonestore::engine::EngineError;

const CHILD_ENV: &str = "ENGINE_CRASH_CHILD_DIR";
const KEYS_PER_WORKER: u64 = 8;
const WORKERS: u64 = 3;

/// A key's state: version and length, or deleted.
type State = Option<(u64, usize)>;

fn geometry() -> zns::Geometry {
    small_geometry(32, 512 << 10)
}

/// Where the child learns how many drives (and copies) the engine has.
const DRIVES_ENV: &str = "ENGINE_CRASH_DRIVES";

async fn child(dir: &str, drives: usize) {
    let (engine, _) = open_engine(std::path::Path::new(dir), drives, geometry(), |c| {
        c.gc.rate_bytes_per_sec = 0
    })
    .await;
    let _ = engine.create_bucket("b", "alice").await;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64 * 31 + w);
            loop {
                let key = format!("w{w}k{}", rng.random_range(0..KEYS_PER_WORKER));
                if rng.random_range(0..5) == 0 {
                    eprintln!("@@ S DEL {key}");
                    engine.delete("b", &key).await.expect("delete");
                    eprintln!("@@ A DEL {key}");
                } else {
                    let version: u64 = rng.random();
                    let len = rng.random_range(0..150_000usize);
                    eprintln!("@@ S PUT {key} {version} {len}");
                    put(&engine, "b", &key, &content(&key, version, len))
                        .await
                        .expect("put");
                    eprintln!("@@ A PUT {key} {version} {len}");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[test]
fn acknowledged_objects_survive_sigkill_and_nothing_is_torn() {
    crash_rounds(
        "acknowledged_objects_survive_sigkill_and_nothing_is_torn",
        1,
        16,
    );
}

/// The same with three drives and three copies of everything (two needed for a write): a kill
/// leaves copies landed on some drives and not others, and GC moves on each drive.
#[test]
fn with_three_copies_acknowledged_objects_survive_sigkill() {
    crash_rounds(
        "with_three_copies_acknowledged_objects_survive_sigkill",
        3,
        8,
    );
}

/// Runs `rounds` rounds of a child (this test, `name`, re-run as a child process) writing to an
/// engine over `drives` drives, killed at a random moment; after each, checks every key and
/// that the index equals a rebuild.
fn crash_rounds(name: &str, drives: usize, rounds: usize) {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let drives = std::env::var(DRIVES_ENV)
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(drives);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(&dir, drives));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut acked: HashMap<String, State> = HashMap::new();
    let mut verified_ops = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(DRIVES_ENV, drives.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stderr = child.stderr.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = line_tx.send(line.clone());
            }
        });
        // Killed once it has acknowledged a random number of operations, a random moment
        // later: however slow the machine is to start it (a fixed delay from the spawn could
        // end before a loaded machine had it write anything).
        let wanted = rng.random_range(3..40usize);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut lines = Vec::new();
        let mut acks = 0;
        while acks < wanted {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) => {
                    acks += usize::from(line.starts_with("@@ A "));
                    lines.push(line);
                }
                // The child ended or stalled: what it printed is checked as it is.
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(line_rx.try_iter());
        // Replay the child's log: acknowledged states, and the operation in flight per key.
        let mut pending: HashMap<String, State> = HashMap::new();
        for line in lines.iter().filter_map(|l| l.strip_prefix("@@ ")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let state = match f.as_slice() {
                [_, "PUT", _, v, n] => Some((v.parse().unwrap(), n.parse().unwrap())),
                [_, "DEL", _] => None,
                _ => continue,
            };
            let key = f[2].to_string();
            match f[0] {
                "S" => {
                    pending.insert(key, state);
                }
                "A" => {
                    pending.remove(&key);
                    acked.insert(key, state);
                    verified_ops += 1;
                }
                _ => {}
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (engine, emulated) =
                open_engine(dir.path(), drives, geometry(), |c| c.gc.enabled = false).await;
            // Nothing may change the index while it is compared with a rebuild (repair would
            // copy what the killed child left under-replicated).
            engine.repair().shut_down().await;
            assert_rebuild_equals_live(&engine, &emulated, dir.path(), &format!("rebuilt{round}")).await;
            let keys: Vec<String> = acked.keys().chain(pending.keys()).cloned().collect();
            for key in keys {
                let allowed: Vec<State> = [acked.get(&key).copied().unwrap_or(None)]
                    .into_iter()
                    .chain(pending.get(&key).copied())
                    .collect();
                let actual: State = match get(&engine, "b", &key).await {
                    Ok(data) => {
                        let matching = allowed.iter().flatten().find(|(v, n)| *n == data.len() && content(&key, *v, *n) == data);
                        match matching {
                            Some(state) => Some(*state),
                            None => panic!("round {round}: {key} holds {} bytes matching no allowed version {allowed:?} (torn or lost)", data.len()),
                        }
                    }
                    Err(EngineError::NoSuchKey { .. }) => None,
                    Err(e) => panic!("round {round}: reading {key}: {e}"),
                };
                assert!(allowed.contains(&actual), "round {round}: {key} is {actual:?}, allowed {allowed:?}");
                // What is there now is the truth the next round builds on.
                acked.insert(key, actual);
            }
            engine.shutdown().await;
        });
    }
    assert!(
        verified_ops > 100,
        "the child acknowledged enough operations to mean something: {verified_ops}"
    );
}
