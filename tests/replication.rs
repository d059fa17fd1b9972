//! Replication across three `zonestore target` processes (R = 3, W = 2): a target killed with
//! SIGKILL under continuous mixed load costs no GET and stops no PUT; when it returns, repair
//! gives every record its three copies again; with two targets gone PUTs fail with 503 while
//! GETs still succeed. And scrub: bytes flipped in a target's zone file never reach a client
//! (reads fail over on the CRC mismatch), and scrub replaces the bad copies.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::s3::{S3Server, metric_sum, same_file, write_random_file};
use common::{Process, address_in};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5a1e0000-0000-4000-8000-0000000e2e03";

/// A storage node that can be killed and started again on the same port and data.
struct Node {
    data: PathBuf,
    port: u16,
    nqn: String,
    process: Option<Process>,
}

impl Node {
    fn new(dir: &Path, index: usize) -> Node {
        // The target picks its port (one found free and let go first could be taken by
        // another test before the target binds it); later starts reuse it.
        let mut node = Node {
            data: dir.join(format!("node{index}")),
            port: 0,
            nqn: format!("nqn.2026-01.io.zonestore:repl{index}"),
            process: None,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let process = Process::start(&[
            "target",
            "--listen",
            &listen,
            "--data",
            self.data.to_str().unwrap(),
            "--zones",
            "32",
            "--zone-size",
            "16M",
            "--nqn",
            &self.nqn,
            "--allow-host",
            HOST_NQN,
        ]);
        let line = process.wait_for_line("serving", Duration::from_secs(30));
        let bound = address_in(&line);
        if self.port == 0 {
            self.port = bound
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("the target says its port");
        } else {
            assert_eq!(bound, listen);
        }
        self.process = Some(process);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Stops the node's process (SIGSTOP) without closing its connections, or lets it go on
    /// (SIGCONT): a node that hangs, or a network that drops everything, then recovers.
    fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        if let Some(p) = &self.process {
            p.signal(signal);
        }
    }

    fn url(&self) -> String {
        format!("nvme-tcp://127.0.0.1:{}/{}", self.port, self.nqn)
    }

    /// The node's discovery controller, which lists its subsystem.
    fn discovery_url(&self) -> String {
        format!("nvme-tcp://127.0.0.1:{}", self.port)
    }
}

fn gateway(dir: &Path, nodes: &[Node]) -> S3Server {
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    gateway_for(dir, &urls)
}

/// The gateway for targets given by URL.
fn gateway_for(dir: &Path, urls: &[String]) -> S3Server {
    let args = gateway_args(dir, urls);
    S3Server::start(
        &dir.join("gateway"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// Runs the gateway expecting it to refuse to start; returns what it printed on stderr.
fn gateway_fails(dir: &Path, nodes: &[&Node]) -> String {
    let mut args = vec![
        "serve".to_string(),
        "--data".into(),
        dir.join("gateway").to_str().unwrap().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    args.extend(gateway_args(dir, &urls));
    let out = std::process::Command::new(common::zonestore_bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the gateway should refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The gateway's flags for targets `urls`: R = 3, W = 2, unthrottled repair after a 600 s
/// grace, no periodic scrub.
fn gateway_args(dir: &Path, urls: &[String]) -> Vec<String> {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[replication]\nrepair_grace_secs = 600\nrepair_rate_mib_per_sec = 0\nscrub_interval_hours = 0\n",
    )
    .unwrap();
    let mut args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--host-nqn",
        HOST_NQN,
        "--replicas",
        "3",
        "--write-quorum",
        "2",
    ]
    .map(String::from)
    .to_vec();
    for url in urls {
        args.push("--target".into());
        args.push(url.clone());
    }
    args
}

/// Waits until `admin targets` satisfies `done`, returning its output.
fn wait_for_targets(server: &S3Server, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let table = server.admin_cli(&["targets"]);
        if done(&table) {
            return table;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn survives_target_failures_and_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    let server = gateway(dir.path(), &nodes);
    server.aws_ok(&["s3", "mb", "s3://hatest"]);
    let acked = dir.path().join("acked.txt");
    let stop = dir.path().join("stop");
    let load = server.python_spawn_piped(
        "mixed_load.py",
        &[acked.to_str().unwrap(), "hatest", stop.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_secs(3));

    // One target dies mid-run: GETs fail over, PUTs go on with two copies.
    nodes[1].kill();
    std::thread::sleep(Duration::from_secs(5));
    let down = server.admin_cli(&["targets"]);
    assert!(
        down.lines()
            .any(|l| l.contains(&nodes[1].nqn) && l.contains("down")),
        "{down}"
    );
    nodes[1].start();
    // It returns: repair makes the third copy of everything written meanwhile.
    let repaired = wait_for_targets(&server, "repair after the restart", |t| {
        t.matches("connected").count() == 3 && t.contains("under-replicated: 0B in 0 records")
    });
    std::fs::write(&stop, "").unwrap();
    let out = load.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{summary}\n{repaired}");
    assert!(summary.contains("puts_failed=0 "), "{summary}");
    assert!(summary.contains("gets_failed=0"), "{summary}");
    let copies: u64 = repaired
        .lines()
        .find(|l| l.starts_with("repair:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        copies > 0,
        "repair copied records written while the target was down:\n{repaired}"
    );
    let metrics = server.metrics();
    assert_eq!(
        metric_sum(&metrics, "zonestore_under_replicated_bytes", &[]),
        0.0
    );

    // Two targets gone: W = 2 cannot be met, so PUTs fail with 503 and store nothing; every
    // acknowledged object still reads back from the one copy left.
    nodes[1].kill();
    nodes[2].kill();
    std::thread::sleep(Duration::from_secs(1));
    let file = dir.path().join("late.bin");
    write_random_file(&file, 100_000, 5);
    server.aws_fails_with(
        &["s3", "cp", file.to_str().unwrap(), "s3://hatest/late.bin"],
        "ServiceUnavailable",
    );
    server.aws_fails_with(
        &[
            "s3api",
            "head-object",
            "--bucket",
            "hatest",
            "--key",
            "late.bin",
        ],
        "404",
    );
    let verified = server.python("verify_objects.py", &[acked.to_str().unwrap(), "hatest"]);
    assert!(verified.contains("verified"), "{verified}");

    // Every copy out of reach: a GET is answered 503 (SDKs back off and retry), not 200 and a
    // body cut short.
    nodes[0].kill();
    std::thread::sleep(Duration::from_secs(1));
    let listed = std::fs::read_to_string(&acked).unwrap();
    let key = listed.split_whitespace().next().unwrap().to_string();
    let out = dir.path().join("unreadable.bin");
    server.aws_fails_with(
        &[
            "s3api",
            "get-object",
            "--bucket",
            "hatest",
            "--key",
            &key,
            out.to_str().unwrap(),
        ],
        "ServiceUnavailable",
    );
}

/// A target that hangs (its process stopped: connections open, nothing answered) under
/// continuous mixed load fails no request: the gateway's host tells it from a slow one by a
/// probe in moments (see `fabric::host::probe`), GETs go to the other copies and PUTs go on with
/// two. Appends it had taken when it stopped land when it goes on, after the gateway gave up on
/// them: they are garbage, never data. Once it answers again the host reconnects and repair
/// gives everything written meanwhile its third copy.
#[test]
fn a_frozen_target_fails_no_request_and_is_repaired_when_it_thaws() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    let server = gateway(dir.path(), &nodes);
    server.aws_ok(&["s3", "mb", "s3://frozen"]);
    let acked = dir.path().join("acked.txt");
    let stop = dir.path().join("stop");
    let load = server.python_spawn_piped(
        "mixed_load.py",
        &[acked.to_str().unwrap(), "frozen", stop.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_secs(3));
    nodes[2].freeze(true);
    std::thread::sleep(Duration::from_secs(8));
    let during = server.admin_cli(&["targets"]);
    nodes[2].freeze(false);
    assert!(
        during
            .lines()
            .any(|l| l.contains(&nodes[2].nqn) && !l.contains(" connected")),
        "the frozen target was given up on:\n{during}"
    );
    let repaired = wait_for_targets(&server, "repair after the thaw", |t| {
        t.matches("connected").count() == 3 && t.contains("under-replicated: 0B in 0 records")
    });
    std::fs::write(&stop, "").unwrap();
    let out = load.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{summary}\n{during}\n{repaired}");
    assert!(summary.contains("puts_failed=0 "), "{summary}");
    assert!(summary.contains("gets_failed=0 "), "{summary}");
    let verified = server.python("verify_objects.py", &[acked.to_str().unwrap(), "frozen"]);
    assert!(verified.contains("verified"), "{verified}");
    // Every acknowledged object reads back from the thawed target alone too: its copies of
    // what it took before it stopped are whole, and repair made the rest.
    let mut nodes = nodes;
    let thawed = nodes.pop();
    drop(nodes);
    std::thread::sleep(Duration::from_secs(1));
    let verified = server.python("verify_objects.py", &[acked.to_str().unwrap(), "frozen"]);
    assert!(verified.contains("verified"), "{verified}");
    drop(thawed);
}

/// A storage node restarted on an empty data directory (its disk not mounted) exports a fresh
/// drive under the same address and NQN: the gateway must not take it for the drive that holds
/// the data. It is shown as foreign and left out (the others serve); once the node is back on
/// its real data, it is used again and repair fills in what it missed.
#[test]
fn a_node_restarted_on_an_empty_data_directory_is_not_taken_for_its_drive() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    let mut server = gateway(dir.path(), &nodes);
    server.aws_ok(&["s3", "mb", "s3://swap"]);
    let before = dir.path().join("before.bin");
    write_random_file(&before, 1_000_000, 31);
    server.aws_ok(&["s3", "cp", before.to_str().unwrap(), "s3://swap/before"]);

    nodes[2].kill();
    let real = nodes[2].data.clone();
    let aside = dir.path().join("node2-aside");
    std::fs::rename(&real, &aside).unwrap();
    nodes[2].start();
    let foreign = wait_for_targets(&server, "the fresh drive refused", |t| {
        t.lines()
            .any(|l| l.contains(&nodes[2].nqn) && l.contains("foreign"))
    });
    assert_eq!(
        metric_sum(&server.metrics(), "zonestore_drive_foreign", &[]),
        1.0,
        "the metrics say so too"
    );
    let back = dir.path().join("back.bin");
    server.aws_ok(&["s3", "cp", "s3://swap/before", back.to_str().unwrap()]);
    assert!(same_file(&before, &back), "{foreign}");
    let during = dir.path().join("during.bin");
    write_random_file(&during, 1_000_000, 32);
    server.aws_ok(&["s3", "cp", during.to_str().unwrap(), "s3://swap/during"]);

    // A gateway that starts meanwhile refuses the fresh drive from its first connection.
    drop(server);
    server = gateway(dir.path(), &nodes);
    wait_for_targets(&server, "the fresh drive refused after a restart", |t| {
        t.lines()
            .any(|l| l.contains(&nodes[2].nqn) && l.contains("foreign"))
    });
    server.aws_ok(&["s3", "cp", "s3://swap/during", back.to_str().unwrap()]);
    assert!(same_file(&during, &back));

    // Nor does a rebuild of the index take it for the drive it replaces.
    drop(server);
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let refused = recover(dir.path(), &urls, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("a different drive answers"), "{stderr}");
    server = gateway(dir.path(), &nodes);

    // The node is back on its real data: used again, and repaired.
    nodes[2].kill();
    std::fs::remove_dir_all(&real).unwrap();
    std::fs::rename(&aside, &real).unwrap();
    nodes[2].start();
    let repaired = wait_for_targets(&server, "the real drive back and repaired", |t| {
        t.matches("connected").count() == 3 && t.contains("under-replicated: 0B in 0 records")
    });
    assert!(!repaired.contains("foreign"), "{repaired}");
    assert_eq!(
        metric_sum(&server.metrics(), "zonestore_drive_foreign", &[]),
        0.0
    );
    nodes[0].kill();
    nodes[1].kill();
    reads_back(
        &server,
        "swap",
        &[("before", &before), ("during", &during)],
        &back,
    );
}

/// Checks that every `(key, original)` object of `bucket` reads back whole (through `back`),
/// once the other targets are gone.
fn reads_back(server: &S3Server, bucket: &str, objects: &[(&str, &Path)], back: &Path) {
    std::thread::sleep(Duration::from_secs(1));
    for (key, original) in objects {
        server.aws_ok(&[
            "s3",
            "cp",
            &format!("s3://{bucket}/{key}"),
            back.to_str().unwrap(),
        ]);
        assert!(same_file(original, back), "{key} from the one target left");
    }
}

/// Offsets in `file` where `needle` occurs.
fn find_all(file: &Path, needle: &[u8]) -> Vec<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).unwrap();
    let mut found = Vec::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = Vec::new();
    let mut base = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return found;
        }
        let mut window = std::mem::take(&mut carry);
        let window_start = base - window.len() as u64;
        window.extend_from_slice(&buf[..n]);
        for (i, w) in window.windows(needle.len()).enumerate() {
            if w == needle {
                found.push(window_start + i as u64);
            }
        }
        carry = window[window.len().saturating_sub(needle.len() - 1)..].to_vec();
        base += n as u64;
    }
}

#[test]
fn scrub_repairs_flipped_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    let server = gateway(dir.path(), &nodes);
    server.aws_ok(&["s3", "mb", "s3://scrub"]);
    let objects = 12;
    for i in 0..objects {
        let file = dir.path().join(format!("o{i}"));
        write_random_file(&file, 300_000, 100 + i);
        server.aws_ok(&[
            "s3",
            "cp",
            "--only-show-errors",
            file.to_str().unwrap(),
            &format!("s3://scrub/o{i}"),
        ]);
    }
    // Flip bytes inside every object's copy on node 0 (what a failing flash page does).
    let zone_file = nodes[0].data.join("zns.data");
    for i in 0..objects {
        let original = std::fs::read(dir.path().join(format!("o{i}"))).unwrap();
        let needle = &original[150_000..150_064];
        let at = find_all(&zone_file, needle);
        assert_eq!(at.len(), 1, "object {i} has one copy on node 0");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&zone_file)
            .unwrap();
        use std::io::{Seek, SeekFrom, Write};
        f.seek(SeekFrom::Start(at[0] + 10)).unwrap();
        f.write_all(&[0xA5; 16]).unwrap();
        f.sync_all().unwrap();
    }
    // Clients never see the damage: reads fail over on the CRC mismatch.
    let listing = dir.path().join("objects.txt");
    let mut lines = String::new();
    for i in 0..objects {
        let body = std::fs::read(dir.path().join(format!("o{i}"))).unwrap();
        lines.push_str(&format!("o{i} {} {}\n", md5_hex(&body), body.len()));
    }
    std::fs::write(&listing, lines).unwrap();
    for _ in 0..4 {
        server.python("verify_objects.py", &[listing.to_str().unwrap(), "scrub"]);
    }
    let metrics = server.metrics();
    assert!(
        metric_sum(&metrics, "zonestore_crc_errors_total", &[]) > 0.0,
        "some reads met the bad copies"
    );

    // Scrub finds and replaces the bad copies.
    let report = server.admin_cli(&["scrub"]);
    let bad: u64 = report
        .lines()
        .find(|l| l.starts_with("scrub:"))
        .and_then(|l| l.split(',').nth(2))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(bad, objects, "{report}");
    assert!(report.contains(&format!("{objects} repaired")), "{report}");

    // Node 0's copies are good again: with the other two nodes gone, it serves every object.
    nodes[1].kill();
    nodes[2].kill();
    std::thread::sleep(Duration::from_secs(1));
    server.python("verify_objects.py", &[listing.to_str().unwrap(), "scrub"]);
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn drain_moves_everything_off_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..4).map(|i| Node::new(dir.path(), i)).collect();
    let server = gateway(dir.path(), &nodes);
    server.aws_ok(&["s3", "mb", "s3://drain"]);
    let listing = dir.path().join("objects.txt");
    let mut lines = String::new();
    for i in 0..10 {
        let file = dir.path().join(format!("o{i}"));
        write_random_file(&file, 700_000, 300 + i);
        server.aws_ok(&[
            "s3",
            "cp",
            "--only-show-errors",
            file.to_str().unwrap(),
            &format!("s3://drain/o{i}"),
        ]);
        let body = std::fs::read(&file).unwrap();
        lines.push_str(&format!("o{i} {} {}\n", md5_hex(&body), body.len()));
    }
    std::fs::write(&listing, lines).unwrap();
    let before = server.admin_cli(&["targets"]);
    assert!(
        before
            .lines()
            .any(|l| l.contains(&nodes[3].nqn) && !l.contains(" 0B ")),
        "{before}"
    );

    let done = server.admin_cli(&["drain", &nodes[3].nqn]);
    let row = done
        .lines()
        .find(|l| l.contains(&nodes[3].nqn))
        .unwrap()
        .to_string();
    assert!(
        row.contains("drained") && row.split_whitespace().nth(3) == Some("0B"),
        "{done}"
    );
    assert!(
        done.contains("under-replicated: 0B in 0 records"),
        "three copies remain without it:\n{done}"
    );
    // The drained node can go: everything reads back from the other three.
    nodes[3].kill();
    server.python("verify_objects.py", &[listing.to_str().unwrap(), "drain"]);
    // New writes avoid it.
    let file = dir.path().join("late");
    write_random_file(&file, 10_000, 9);
    server.aws_ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        file.to_str().unwrap(),
        "s3://drain/late",
    ]);
    drop(server);

    // Left out of the configuration, a target that still holds data stops the gateway with a
    // message naming it; the drained one may go.
    let refused = gateway_fails(dir.path(), &[&nodes[0], &nodes[1], &nodes[3]]);
    assert!(
        refused.contains(&nodes[2].nqn) && refused.contains("but is not configured"),
        "{refused}"
    );
    // So does an index rebuild (which would otherwise drop the records only it holds), unless
    // told to go without it; the drained one is no reason to refuse.
    let refused = recover(dir.path(), &[nodes[0].url(), nodes[1].url()], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&nodes[2].nqn)
            && !stderr.contains(&nodes[3].nqn)
            && stderr.contains("--allow-missing-drives"),
        "{stderr}"
    );
    let server = gateway(dir.path(), &nodes[..3]);
    let table = server.admin_cli(&["targets"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&nodes[3].nqn) && l.contains("removed")),
        "{table}"
    );
    assert!(
        table.contains("under-replicated: 0B in 0 records"),
        "{table}"
    );
    server.python("verify_objects.py", &[listing.to_str().unwrap(), "drain"]);
    let back = dir.path().join("late.back");
    server.aws_ok(&["s3", "cp", "s3://drain/late", back.to_str().unwrap()]);
    assert!(same_file(&file, &back));
}

#[test]
fn starts_with_a_target_down_and_attaches_it_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    let before = dir.path().join("before.bin");
    write_random_file(&before, 3_000_000, 21);
    // The third node is named by its discovery controller, which is down too at the restart,
    // and by host name (resolved at each attempt, not once).
    let named = format!("nvme-tcp://localhost:{}", nodes[2].port);
    let urls = [nodes[0].url(), nodes[1].url(), named];
    {
        let server = gateway_for(dir.path(), &urls);
        server.aws_ok(&["s3", "mb", "s3://restart"]);
        server.aws_ok(&["s3", "cp", before.to_str().unwrap(), "s3://restart/before"]);
    } // the gateway is killed (SIGKILL) here

    // The gateway restarts while a target is down: it serves from the other two.
    nodes[2].kill();
    let server = gateway_for(dir.path(), &urls);
    let table = server.admin_cli(&["targets"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&nodes[2].nqn) && l.contains("down")),
        "{table}"
    );
    let back = dir.path().join("back.bin");
    server.aws_ok(&["s3", "cp", "s3://restart/before", back.to_str().unwrap()]);
    assert!(same_file(&before, &back), "the object reads back whole");
    let during = dir.path().join("during.bin");
    write_random_file(&during, 2_000_000, 22);
    server.aws_ok(&["s3", "cp", during.to_str().unwrap(), "s3://restart/during"]);

    // The target returns: it is attached, and repair gives what was written meanwhile its
    // third copy.
    nodes[2].start();
    let repaired = wait_for_targets(&server, "the late target attached and repaired", |t| {
        t.matches("connected").count() == 3 && t.contains("under-replicated: 0B in 0 records")
    });
    assert!(
        repaired
            .lines()
            .filter(|l| l.contains("io.zonestore:repl"))
            .all(|l| l.contains(" up ")),
        "{repaired}"
    );
    // Every object now reads back from the late target alone.
    nodes[0].kill();
    nodes[1].kill();
    reads_back(
        &server,
        "restart",
        &[("before", &before), ("during", &during)],
        &back,
    );
}

/// Runs `zonestore recover --rebuild-index` for the gateway of `urls` with `extra` flags.
fn recover(dir: &Path, urls: &[String], extra: &[&str]) -> std::process::Output {
    std::process::Command::new(common::zonestore_bin())
        .args(["recover", "--rebuild-index", "--data"])
        .arg(dir.join("gateway"))
        .args(gateway_args(dir, urls))
        .args(extra)
        .output()
        .unwrap()
}

/// The index is lost while a target is down. `recover --rebuild-index` will not go without it
/// unless told to; told, it rebuilds from the other two, since every acknowledged write (W = 2
/// of 3) has a copy there, and refuses when two are down. When the target returns, its stale
/// records are garbage, repair gives every object its third copy, and the objects read back
/// from that target alone.
#[test]
fn rebuilds_the_index_with_a_target_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let (kept, replaced, newer) = (
        dir.path().join("kept.bin"),
        dir.path().join("replaced.bin"),
        dir.path().join("newer.bin"),
    );
    write_random_file(&kept, 3_000_000, 31);
    write_random_file(&replaced, 200_000, 32);
    write_random_file(&newer, 150_000, 33);
    {
        let server = gateway_for(dir.path(), &urls);
        server.aws_ok(&["s3", "mb", "s3://lost"]);
        for (file, key) in [
            (&kept, "kept"),
            (&replaced, "over"),
            (&newer, "over"),
            (&replaced, "gone"),
        ] {
            let to = format!("s3://lost/{key}");
            server.aws_ok(&["s3", "cp", file.to_str().unwrap(), &to]);
        }
        server.aws_ok(&["s3", "rm", "s3://lost/gone"]);
    } // the gateway is killed (SIGKILL) here

    nodes[2].kill();
    let index = dir.path().join("gateway").join("index");
    assert!(index.join("CURRENT").exists(), "{}", index.display());
    std::fs::remove_dir_all(&index).unwrap();

    let refused = recover(dir.path(), &urls, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&nodes[2].url()) && stderr.contains("--allow-missing-drives"),
        "{stderr}"
    );
    nodes[1].kill();
    let refused = recover(dir.path(), &urls, &["--allow-missing-drives"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 of 3 drives cannot be reached") && stderr.contains("write quorum 2"),
        "{stderr}"
    );
    nodes[1].start();
    // Named through its discovery controller, a target that is down and never listed its
    // subsystems to this gateway cannot be counted (it may hold several drives): refused.
    let mut via_discovery = urls.clone();
    via_discovery[2] = nodes[2].discovery_url();
    let refused = recover(dir.path(), &via_discovery, &["--allow-missing-drives"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("never listed its subsystems"), "{stderr}");
    let rebuilt = recover(dir.path(), &urls, &["--allow-missing-drives"]);
    let stderr = String::from_utf8_lossy(&rebuilt.stderr);
    assert!(rebuilt.status.success(), "{stderr}");
    assert!(
        stderr.contains("rebuilding without 1 of 3 drives") && stderr.contains("0 damaged"),
        "{stderr}"
    );

    // The target returns: what it holds is garbage to the rebuilt index, and repair gives
    // every object its third copy on it.
    nodes[2].start();
    let server = gateway_for(dir.path(), &urls);
    wait_for_targets(&server, "repair onto the returned target", |t| {
        t.matches("connected").count() == 3 && t.contains("under-replicated: 0B in 0 records")
    });
    let listed = server.aws_ok(&["s3", "ls", "s3://lost/"]);
    assert!(!listed.contains("gone"), "the delete survives: {listed}");
    nodes[0].kill();
    nodes[1].kill();
    std::thread::sleep(Duration::from_secs(1));
    let back = dir.path().join("back.bin");
    for (key, original) in [("kept", &kept), ("over", &newer)] {
        let from = format!("s3://lost/{key}");
        server.aws_ok(&["s3", "cp", &from, back.to_str().unwrap()]);
        assert!(same_file(original, &back), "{key} from the returned target");
    }
}
