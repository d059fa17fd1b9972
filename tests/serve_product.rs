//! `zonestore serve` as a product: the embedded default with no flags at all (through the
//! fabric, which the metrics prove), the admin CLI and its token, a bad configuration named, SIGTERM and
//! SIGKILL during uploads losing nothing acknowledged, and `recover --rebuild-index`.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::s3::{S3Server, http_get, metric_sum, same_file, write_random_file};
use common::{Process, zonestore_bin, zonestore_fails};

#[test]
fn serve_with_no_flags_goes_through_the_fabric() {
    for port in [9000, 9001] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: `zonestore serve` with no flags listens on 9000 (S3) and 9001 (admin)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start_in(Some(dir.path()), &["serve"], &[]);
    let data = dir.path().join("zonestore-data");
    let server = S3Server::from_process(&data, process);
    assert_eq!(server.endpoint, "http://127.0.0.1:9000");
    assert_eq!(server.admin, "127.0.0.1:9001");
    assert!(
        data.join("drives/drive0/zns.data").exists(),
        "embedded drives live in ./zonestore-data"
    );
    assert!(data.join("credentials.toml").exists());

    let file = dir.path().join("100m.bin");
    write_random_file(&file, 100 << 20, 42);
    let back = dir.path().join("back.bin");
    server.aws_ok(&["s3", "mb", "s3://first"]);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        file.to_str().unwrap(),
        "s3://first/100m.bin",
    ]);
    let listing = server.aws_ok(&["s3", "ls", "s3://first/"]);
    assert!(listing.contains("104857600 100m.bin"), "{listing}");
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        "s3://first/100m.bin",
        back.to_str().unwrap(),
    ]);
    assert!(same_file(&file, &back));

    // The bytes went through the NVMe/TCP targets: every embedded target moved at least a
    // copy of the object (R = 3 over 3 drives), and the hosts completed commands.
    let metrics = server.metrics();
    for drive in 0..3 {
        let label = format!("embedded-drive{drive}\"");
        let moved = metric_sum(&metrics, "zonestore_nvme_target_bytes_total", &[&label]);
        assert!(
            moved >= (100 << 20) as f64,
            "target {drive} moved {moved} bytes:\n{metrics}"
        );
        let commands = metric_sum(&metrics, "zonestore_nvme_host_commands_total", &[&label]);
        assert!(commands > 0.0, "host commands to drive {drive}");
    }
    assert!(
        metric_sum(&metrics, "zonestore_s3_requests_total", &["PutObject"]) >= 1.0
            || metric_sum(&metrics, "zonestore_s3_requests_total", &["UploadPart"]) >= 1.0
    );
    assert!(metric_sum(&metrics, "zonestore_s3_received_bytes_total", &[]) >= (100 << 20) as f64);
    // Every zone state of every drive is exported, 0 included (a state zones leave reads 0).
    for state in ["free", "open", "sealed", "collecting", "bad"] {
        let rows = metrics
            .lines()
            .filter(|l| {
                l.starts_with("zonestore_zones{") && l.contains(&format!("state=\"{state}\""))
            })
            .count();
        assert_eq!(rows, 3, "zone state {state}:\n{metrics}");
    }

    // Health, readiness, the admin CLI.
    assert_eq!(common::s3::http_get(&server.admin, "/health").0, 200);
    assert_eq!(common::s3::http_get(&server.admin, "/ready").0, 200);
    let zones = server.admin_cli(&["zones"]);
    assert_eq!(
        zones.lines().count(),
        1 + 3 * 256,
        "a header and every zone of the 3 drives:\n{zones}"
    );
    assert!(
        zones.contains("imp-open") || zones.contains("full"),
        "{zones}"
    );
    // A reader that goes away (`| head`) ends the table quietly: no panic, exit 0.
    let mut piped = Command::new(zonestore_bin())
        .arg("admin")
        .arg("--server")
        .arg(&server.admin)
        .arg("--data")
        .arg(&server.data)
        .arg("zones")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let out = piped.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let targets = server.admin_cli(&["targets"]);
    assert_eq!(targets.matches("connected").count(), 3, "{targets}");
    let stats = server.admin_cli(&["stats"]);
    assert!(stats.contains("write amplification"), "{stats}");

    // /admin/... needs the token kept in the data directory (owner-only); /metrics, /health and
    // /ready do not. Run from the directory `serve` ran in, `zonestore admin` finds it alone.
    let token = data.join("admin-token");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "admin-token is readable by its owner only"
        );
        // So is everything the server made: the data directory, the index, the drives' data.
        for dir in [
            data.clone(),
            data.join("index"),
            data.join("drives").join("drive0"),
        ] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is open to others", dir.display());
        }
        let drive_file = std::fs::read_dir(data.join("drives").join("drive0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "data"))
            .expect("the drive's data file");
        let mode = std::fs::metadata(&drive_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is open to others",
            drive_file.display()
        );
    }
    let (status, body) = common::s3::http_get(&server.admin, "/admin/stats");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("admin-token"));
    let admin = |args: &[&str]| {
        Command::new(zonestore_bin())
            .current_dir(dir.path())
            .args(["admin", "--server", &server.admin])
            .args(args)
            .env_remove("ZONESTORE_ADMIN_TOKEN")
            .env_remove("ZONESTORE_DATA")
            .output()
            .unwrap()
    };
    let found = admin(&["stats"]);
    assert!(found.status.success(), "{found:?}");
    assert!(String::from_utf8_lossy(&found.stdout).contains("write amplification"));
    let wrong = admin(&["--token", "not-the-token-at-all", "stats"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{wrong:?}"
    );
    assert!(String::from_utf8_lossy(&wrong.stdout).contains("wrong admin token"));
    let elsewhere = admin(&["--data", "/nonexistent", "targets"]);
    assert!(!elsewhere.status.success());
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr).contains("401"),
        "{elsewhere:?}"
    );

    server.aws_ok(&["s3", "rm", "--quiet", "s3://first/100m.bin"]);
    server.aws_ok(&["s3", "rb", "s3://first"]);
    assert!(!server.aws_ok(&["s3", "ls"]).contains("first"));
    let gc = server.admin_cli(&["gc", "run", "--zones", "2"]);
    assert!(gc.contains("run             finished"), "{gc}");
    assert!(
        server
            .admin_cli(&["gc", "stop"])
            .contains("enabled         false")
    );
    assert!(
        server
            .admin_cli(&["gc", "start"])
            .contains("enabled         true")
    );
}

#[test]
fn bad_configuration_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "lisen = \"127.0.0.1:9000\"\n").unwrap();
    let err = zonestore_fails(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data,
    ]);
    assert!(err.contains("lisen"), "{err}");
    std::fs::write(&config, "[gc]\nlow_watermark = 3.0\n").unwrap();
    let err = zonestore_fails(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data,
    ]);
    assert!(err.contains("gc.low_watermark"), "{err}");
    let err = zonestore_fails(&["serve", "--data", data, "--target", "ftp://somewhere"]);
    assert!(
        err.contains("targets[0]") && err.contains("not a target URL"),
        "{err}"
    );
    let err = zonestore_fails(&["serve", "--data", data, "--access-key", "only-half"]);
    assert!(err.contains("--secret-key"), "{err}");
    let err = zonestore_fails(&[
        "serve",
        "--data",
        data,
        "--listen",
        "nowhere",
        "--access-key",
        "a",
        "--secret-key",
        "b",
    ]);
    assert!(err.contains("listen"), "{err}");
    let err = zonestore_fails(&[
        "serve",
        "--data",
        data,
        "--listen",
        "127.0.0.1:0",
        "--replicas",
        "5",
        "--access-key",
        "a",
        "--secret-key",
        "b",
    ]);
    assert!(err.contains("replication_factor"), "{err}");
    // A bad user in the file is named by its place in the file, also when the command line
    // adds a user of its own; a bad user on the command line is named by its flags.
    let with_users = dir.path().join("users.toml");
    std::fs::write(
        &with_users,
        "[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"\n[[users]]\naccess_key = \"team/x\"\nsecret_key = \"c\"\n",
    )
    .unwrap();
    let with_users = with_users.to_str().unwrap();
    let with_flag_user = |access_key: &str| {
        zonestore_fails(&[
            "serve",
            "--data",
            data,
            "--config",
            with_users,
            "--access-key",
            access_key,
            "--secret-key",
            "y",
        ])
    };
    let err = with_flag_user("z");
    assert!(
        err.contains("users[1]") && !err.contains("--access-key"),
        "{err}"
    );
    let err = with_flag_user("team/x");
    assert!(
        err.contains("users[1]") && err.contains("--access-key"),
        "{err}"
    );
    let err = zonestore_fails(&["target", "--data", data, "--zone-size", "3M"]);
    assert!(err.contains("power of two"), "{err}");
    // What cannot be exported is refused before a drive is made of it: the retry with the
    // mistake mended starts, rather than meet a drive of the refused geometry.
    let node_dir = dir.path().join("node");
    let node = node_dir.to_str().unwrap();
    let err = zonestore_fails(&["target", "--data", node, "--zone-size", "4K"]);
    assert!(err.contains("8 KiB"), "{err}");
    let err = zonestore_fails(&["target", "--data", node, "--max-open", "1"]);
    assert!(err.contains("--max-open 1"), "{err}");
    let err = zonestore_fails(&["target", "--data", node, "--nqn", "not an nqn"]);
    assert!(err.contains("NQN") || err.contains("nqn"), "{err}");
    assert!(
        !node_dir.join("zns.meta").exists(),
        "a refused target made its drive"
    );
    let err = zonestore_fails(&["recover", "--data", data]);
    assert!(err.contains("--rebuild-index"), "{err}");
    // A rebuild reads the drives that hold the data: none where it is pointed (a mistyped
    // --data) is an error naming them, not new empty drives and an empty index.
    let mistyped = dir.path().join("mistyped");
    let err = zonestore_fails(&[
        "recover",
        "--rebuild-index",
        "--data",
        mistyped.to_str().unwrap(),
    ]);
    assert!(
        err.contains("no data directory") && err.contains("mistyped"),
        "{err}"
    );
    assert!(!mistyped.exists(), "recover created the data directory");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = zonestore_fails(&[
        "recover",
        "--rebuild-index",
        "--data",
        empty.to_str().unwrap(),
    ]);
    assert!(err.contains("drive0") && err.contains("zns.meta"), "{err}");
    assert!(
        !empty.join("drives/drive0/zns.meta").exists(),
        "recover created a drive"
    );
    let err = zonestore_fails(&["admin", "--server", "127.0.0.1:1", "stats"]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    // A token that would end its header line (and add others) is refused before it is sent.
    let err = zonestore_fails(&[
        "admin",
        "--server",
        "127.0.0.1:1",
        "--token",
        "t\r\nX-Injected: 1",
        "stats",
    ]);
    assert!(err.contains("admin token"), "{err}");
    // An admin token an operator wrote must not be guessable in a few tries.
    let short = dir.path().join("short-token");
    std::fs::create_dir_all(&short).unwrap();
    let token = short.join("admin-token");
    std::fs::write(&token, "a-long-enough-token-but-world-readable\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let serve_short = |data: &std::path::Path| {
        zonestore_fails(&[
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            "a",
            "--secret-key",
            "b",
        ])
    };
    let err = serve_short(&short);
    assert!(
        err.contains("admin-token") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::write(&token, "secret\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = serve_short(&short);
    assert!(
        err.contains("admin-token") && err.contains("at least 16"),
        "{err}"
    );
    // Nor may the secret key of the data directory's user be open to others.
    let shared = dir.path().join("shared-credentials");
    std::fs::create_dir_all(&shared).unwrap();
    let credentials = shared.join("credentials.toml");
    std::fs::write(&credentials, "access_key = \"a\"\nsecret_key = \"b\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let err = zonestore_fails(&[
        "serve",
        "--data",
        shared.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("credentials.toml") && err.contains("chmod 600"),
        "{err}"
    );
    // An address in use is named at once, before any drive is made or attached.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let fresh = dir.path().join("fresh");
    let err = zonestore_fails(&[
        "serve",
        "--data",
        fresh.to_str().unwrap(),
        "--listen",
        &taken_addr,
        "--access-key",
        "a",
        "--secret-key",
        "b",
    ]);
    assert!(
        err.contains(&taken_addr) && err.contains("(listen)"),
        "{err}"
    );
    assert!(!fresh.join("drives").exists(), "no drive was made");
}

/// Loads the server from 8 threads, stops it with `signal` mid-run, restarts it and checks
/// every acknowledged object.
fn uploads_survive(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = S3Server::start(&data, &[]);
    server.aws_ok(&["s3", "mb", "s3://load"]);
    let acked = dir.path().join("acked.txt");
    let mut load = server.python_spawn(
        "load_until_stopped.py",
        &[acked.to_str().unwrap(), "load", "8"],
    );
    // Stopped mid-run once enough uploads were acknowledged, however slow the machine is to
    // start the clients, and a moment later (more land meanwhile, others are in flight).
    let acked_so_far = || std::fs::read_to_string(&acked).map_or(0, |text| text.lines().count());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acked_so_far() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the clients acknowledged only {} uploads in two minutes",
            acked_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    server.process.signal(signal);
    let status = server.wait_exit(Duration::from_secs(60));
    if signal == libc::SIGTERM {
        assert!(
            status.success(),
            "a SIGTERM drains and exits cleanly: {status:?}"
        );
    }
    let load_status = load.wait().unwrap();
    assert!(load_status.success());
    let count = std::fs::read_to_string(&acked).unwrap().lines().count();
    assert!(
        count >= 20,
        "only {count} uploads were acknowledged before the signal"
    );

    let server = S3Server::start(&data, &[]);
    let out = server.python("verify_objects.py", &[acked.to_str().unwrap(), "load"]);
    assert!(out.contains(&format!("verified {count} ")), "{out}");
}

#[test]
fn sigterm_during_uploads_loses_nothing_acknowledged() {
    uploads_survive(libc::SIGTERM);
}

#[test]
fn sigkill_during_uploads_loses_nothing_acknowledged() {
    uploads_survive(libc::SIGKILL);
}

#[test]
fn recover_rebuilds_the_index_from_the_zones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = S3Server::start(&data, &[]);
    let tree = dir.path().join("tree");
    for i in 0..30 {
        let path = tree.join(format!("d{}/f{i:02}.bin", i % 4));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_random_file(&path, 1000 + i * 3000, i as u64);
    }
    write_random_file(&tree.join("large.bin"), 20 << 20, 77);
    server.aws_ok(&["s3", "mb", "s3://keep"]);
    server.aws_ok(&["s3", "mb", "s3://gone"]);
    server.aws_ok(&["s3", "rb", "s3://gone"]);
    server.aws_ok(&[
        "s3",
        "sync",
        "--quiet",
        tree.to_str().unwrap(),
        "s3://keep/t",
    ]);
    for i in 0..5 {
        server.aws_ok(&[
            "s3",
            "rm",
            "--quiet",
            &format!("s3://keep/t/d{}/f{i:02}.bin", i % 4),
        ]);
        std::fs::remove_file(tree.join(format!("d{}/f{i:02}.bin", i % 4))).unwrap();
    }
    // An overwrite: the newest version must win in the rebuilt index.
    write_random_file(&tree.join("d1/f09.bin"), 4321, 999);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        tree.join("d1/f09.bin").to_str().unwrap(),
        "s3://keep/t/d1/f09.bin",
    ]);
    let before = server.aws_ok(&["s3", "ls", "--recursive", "s3://keep/"]);
    // Not while the server runs: the rebuild would replace the index under it.
    let rebuild = || {
        Command::new(zonestore_bin())
            .args([
                "recover",
                "--rebuild-index",
                "--data",
                data.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let busy = rebuild();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && stderr.contains("in use"),
        "{stderr}"
    );
    // An idle server stops at once: nothing waits out a timeout (the engine's committer
    // once waited 10 s for a handle the admin state still held).
    server.process.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(8)).success());

    let out = rebuild();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rebuilt index")
            && stderr.contains("0 damaged")
            && stderr.contains("1 buckets"),
        "{stderr}"
    );
    assert!(stderr.contains("old index kept in"), "{stderr}");

    let mut server = S3Server::start(&data, &[]);
    let after = server.aws_ok(&["s3", "ls", "--recursive", "s3://keep/"]);
    let names = |s: &str| {
        s.lines()
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&before), names(&after));
    assert!(
        !server.aws_ok(&["s3", "ls"]).contains("gone"),
        "a deleted bucket stays deleted"
    );
    let down = dir.path().join("down");
    server.aws_ok(&[
        "s3",
        "sync",
        "--quiet",
        "s3://keep/t",
        down.to_str().unwrap(),
    ]);
    let mut compared = 0;
    for entry in std::fs::read_dir(&tree).unwrap() {
        let path = entry.unwrap().path();
        let files: Vec<_> = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        } else {
            vec![path]
        };
        for f in files {
            let rel = f.strip_prefix(&tree).unwrap();
            assert!(same_file(&f, &down.join(rel)), "{}", rel.display());
            compared += 1;
        }
    }
    assert_eq!(compared, 26);

    // An embedded drive the index knows that is not there (its disk not mounted, say) is not
    // made again empty: the server refuses to start, naming it.
    server.process.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(8)).success());
    let drive = data.join("drives/drive1");
    let away = dir.path().join("drive1-away");
    std::fs::rename(&drive, &away).unwrap();
    let err = serve_fails(&["serve", "--data", data.to_str().unwrap()]);
    assert!(
        err.contains("embedded drive 1") && err.contains("index knows it"),
        "{err}"
    );
    assert!(!drive.exists(), "an empty drive was made in its place");
    // A rebuild goes on without it only when told to (its copies are on the other two).
    let refused = rebuild();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("embedded drive 1")
            && stderr.contains("--allow-missing-drives"),
        "{stderr}"
    );
    let out = Command::new(zonestore_bin())
        .args([
            "recover",
            "--rebuild-index",
            "--allow-missing-drives",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("rebuilding without 1 of 3 drives"),
        "{stderr}"
    );
    assert!(!drive.exists(), "an empty drive was made in its place");
    // The rebuilt index still knows the drive it could not read: not made again empty either.
    let err = serve_fails(&["serve", "--data", data.to_str().unwrap()]);
    assert!(
        err.contains("embedded drive 1") && err.contains("index knows it"),
        "{err}"
    );
    assert!(!drive.exists(), "an empty drive was made in its place");
    std::fs::rename(&away, &drive).unwrap();
    // Drives the index knows keep the geometry they were made with: another one configured
    // is named, not ignored.
    let err = serve_fails(&["serve", "--data", data.to_str().unwrap(), "--zones", "300"]);
    assert!(
        err.contains("embedded drive 0") && err.contains("embedded.zones"),
        "{err}"
    );
    let server = S3Server::start(&data, &[]);
    assert_eq!(
        names(&server.aws_ok(&["s3", "ls", "--recursive", "s3://keep/"])),
        names(&before)
    );
}

/// Runs `zonestore args`, which must fail within 60 s; its standard error.
fn serve_fails(args: &[&str]) -> String {
    let mut child = Command::new(zonestore_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("zonestore {args:?} did not fail: it is running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "zonestore {args:?} should fail: {err}");
    err
}

/// On SIGTERM `/ready` turns 503 at once while S3 is still served for `--unready-seconds` (time
/// for a load balancer to stop sending), then the server drains and exits cleanly.
#[test]
fn sigterm_says_not_ready_before_the_s3_port_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(&dir.path().join("data"), &["--unready-seconds", "10"]);
    assert_eq!(http_get(&server.admin, "/ready").0, 200);
    sigterm_until_unready(&server, Duration::from_secs(3));
    // S3 still answers (an unsigned request is refused, by a live server).
    let s3 = server.endpoint.trim_start_matches("http://").to_string();
    assert_eq!(http_get(&s3, "/").0, 403);
    assert!(server.wait_exit(Duration::from_secs(60)).success());
}

/// `sigv2 = false` refuses requests signed with Signature Version 2, header or presigned,
/// before their signature is looked at; Signature Version 4 goes on working.
#[test]
fn sigv2_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zonestore.toml");
    std::fs::write(&config, "sigv2 = false\n").unwrap();
    let server = S3Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let s3 = server.endpoint.trim_start_matches("http://").to_string();
    let (status, body) = http_get(
        &s3,
        "/?AWSAccessKeyId=AKIANOBODY&Signature=abc&Expires=4102444800",
    );
    let body = String::from_utf8_lossy(&body);
    assert!(
        status == 403 && body.contains("Signature Version 2 is turned off"),
        "{status} {body}"
    );
    server.aws_ok(&["s3", "mb", "s3://still-v4"]);
}

/// Sends `server` SIGTERM and waits (at most `within`) until its `/ready` says 503.
fn sigterm_until_unready(server: &S3Server, within: Duration) {
    server.process.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + within;
    while http_get(&server.admin, "/ready").0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/ready never said 503 after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second signal while the server stops exits at once, with the status that says which
/// signal stopped it (128 + its number), not that of a clean stop or of a failure.
#[test]
fn a_second_signal_exits_at_once_saying_which() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(&dir.path().join("data"), &["--unready-seconds", "60"]);
    sigterm_until_unready(&server, Duration::from_secs(5));
    server.process.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
}

/// A request its client gives up on before the answer (here a PUT whose connection closes
/// halfway through its body) is still counted in the metrics, as unanswered (499), not lost
/// from them with the slowest requests.
#[test]
fn a_request_its_client_abandons_is_counted() {
    use common::s3::SECRET_KEY;
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("data"), &[]);
    server.aws_ok(&["s3", "mb", "s3://gone"]);
    let unanswered = |server: &S3Server| {
        metric_sum(
            &server.metrics(),
            "zonestore_s3_requests_total",
            &["status=\"499\""],
        )
    };
    let before = unanswered(&server);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let key =
        s3api::auth::sigv4::signing_key(SECRET_KEY, std::time::SystemTime::now(), "us-east-1");
    let mut socket = std::net::TcpStream::connect(&host).unwrap();
    let mut head = "PUT /gone/half HTTP/1.1\r\ncontent-length: 1000000\r\n".to_string();
    for (name, value) in common::s3::unsigned_payload_headers("PUT", "/gone/half", &host, &key) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).unwrap();
    socket.write_all(&[7u8; 1_000_000]).unwrap();
    let _ = socket.shutdown(std::net::Shutdown::Both);
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unanswered(&server) < before + 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned PUT was never counted:\n{}",
            server.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
