//! A disaggregated deployment on one machine: three `zonestore target` processes (storage
//! nodes) and `zonestore serve --target ...` pointed at them by NQN and through a discovery
//! controller; and local `zns-file://` drives attached without the fabric.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::s3::{S3Server, same_file, write_random_file};
use common::{Process, address_in, zonestore_fails};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5a1e0000-0000-4000-8000-00000000e2e0";

/// Starts a storage node exporting one drive, allowing only our gateway's host NQN; node 1
/// writes with `--direct-writes`.
pub fn start_target(dir: &std::path::Path, index: usize) -> (Process, String, String) {
    let data = dir.join(format!("node{index}"));
    let nqn = format!("nqn.2026-01.io.zonestore:node{index}");
    let mut args = vec![
        "target",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--zones",
        "32",
        "--zone-size",
        "32M",
        "--nqn",
        &nqn,
        "--allow-host",
        HOST_NQN,
    ];
    if index == 1 {
        // One node bypasses the page cache; the gateway must not notice.
        args.push("--direct-writes");
    }
    let process = Process::start(&args);
    let address = address_in(&process.wait_for_line("serving", Duration::from_secs(30)));
    (process, address, nqn)
}

/// A target that any host can reach and none is named for says so: anyone connecting may reset
/// its zones.
#[test]
fn a_target_open_to_every_host_warns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("open");
    let process = Process::start(&[
        "target",
        "--listen",
        "0.0.0.0:0",
        "--data",
        data.to_str().unwrap(),
        "--zones",
        "4",
        "--zone-size",
        "1M",
    ]);
    let warning = process.wait_for_line("warning:", Duration::from_secs(30));
    assert!(warning.contains("--allow-host"), "{warning}");
}

#[test]
fn serve_uses_three_target_processes() {
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<_> = (0..3).map(|i| start_target(dir.path(), i)).collect();
    let urls: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, (_, address, nqn))| {
            if i == 2 {
                // Ask the node's discovery controller what it serves.
                format!("nvme-tcp://{address}")
            } else {
                format!("nvme-tcp://{address}/{nqn}")
            }
        })
        .collect();
    let data = dir.path().join("gateway");
    let mut args = vec!["--host-nqn", HOST_NQN];
    for url in &urls {
        args.push("--target");
        args.push(url);
    }
    let mut server = S3Server::start(&data, &args);
    let file = dir.path().join("f.bin");
    write_random_file(&file, 30 << 20, 3);
    server.aws_ok(&["s3", "mb", "s3://remote"]);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        file.to_str().unwrap(),
        "s3://remote/f.bin",
    ]);
    let back = dir.path().join("back.bin");
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        "s3://remote/f.bin",
        back.to_str().unwrap(),
    ]);
    assert!(same_file(&file, &back));
    let table = server.admin_cli(&["targets"]);
    assert_eq!(table.matches("connected").count(), 3, "{table}");
    for (_, _, nqn) in &targets {
        assert!(table.contains(nqn.as_str()), "{table}");
    }
    // Every node holds a copy (R = 3 over 3 targets): the zones table shows written zones.
    let zones = server.admin_cli(&["zones"]);
    for (_, _, nqn) in &targets {
        assert!(
            zones
                .lines()
                .any(|l| l.contains(nqn.as_str()) && !l.contains(" empty ")),
            "{nqn} holds data:\n{zones}"
        );
    }
    server.process.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(60)).success());

    // A gateway whose host NQN the nodes do not allow is refused, with the reason.
    let refused = std::process::Command::new(common::zonestore_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            "a",
            "--secret-key",
            "b",
        ])
        .args(["--data", dir.path().join("other").to_str().unwrap()])
        .args(["--target", &urls[0]])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&targets[0].2) && stderr.to_lowercase().contains("host"),
        "{stderr}"
    );

    for (mut process, _, _) in targets {
        process.signal(libc::SIGTERM);
        let status = process.child.wait().unwrap();
        assert!(status.success());
    }
}

#[test]
fn zns_file_targets_skip_the_fabric() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = format!("zns-file://{}", dir.path().join("d0").display());
    let d1 = format!("zns-file://{}", dir.path().join("d1").display());
    let server = S3Server::start(
        &dir.path().join("data"),
        &[
            "--target",
            &d0,
            "--target",
            &d1,
            "--zones",
            "16",
            "--zone-size",
            "16M",
            "--direct-writes",
        ],
    );
    server.aws_ok(&["s3", "mb", "s3://local"]);
    let file = dir.path().join("f.bin");
    write_random_file(&file, 3 << 20, 9);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        file.to_str().unwrap(),
        "s3://local/f.bin",
    ]);
    let back = dir.path().join("back.bin");
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        "s3://local/f.bin",
        back.to_str().unwrap(),
    ]);
    assert!(same_file(&file, &back));
    let table = server.admin_cli(&["targets"]);
    assert_eq!(table.matches(" local").count(), 2, "{table}");
    assert!(
        !server
            .metrics()
            .contains("zonestore_nvme_host_commands_total{"),
        "no fabric in the path"
    );
    drop(server);

    // The same drive named twice is refused: it would be one copy whatever R says.
    let data = dir.path().join("data");
    let serve = |targets: &[&str]| {
        let mut args = vec![
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        for t in targets {
            args.extend(["--target", t]);
        }
        zonestore_fails(&args)
    };
    let twice = serve(&[&d0, &d0]);
    assert!(twice.contains("attached already"), "{twice}");
    // A drive the index knows is never created anew when it is missing (its disk not mounted).
    std::fs::rename(dir.path().join("d1"), dir.path().join("d1-away")).unwrap();
    let missing = serve(&[&d0, &d1]);
    assert!(missing.contains("mounted"), "{missing}");
    let rebuild = zonestore_fails(&[
        "recover",
        "--rebuild-index",
        "--data",
        data.to_str().unwrap(),
        "--target",
        &d0,
        "--target",
        &d1,
    ]);
    assert!(rebuild.contains("mounted"), "{rebuild}");
    assert!(
        !dir.path().join("d1").exists(),
        "no empty drive was made in its place"
    );
}

/// Local drives named by relative paths (one with a trailing slash) keep their names across
/// restarts: the first start, which creates them, registers them as every later start finds
/// them.
#[test]
fn relative_zns_file_paths_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "serve",
        "--data",
        "data",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "zns-file://drives/d0",
        "--target",
        "zns-file://drives/d1/",
        "--zones",
        "16",
        "--zone-size",
        "16M",
        "--access-key",
        common::s3::ACCESS_KEY,
        "--secret-key",
        common::s3::SECRET_KEY,
    ];
    let file = dir.path().join("f.bin");
    write_random_file(&file, 100_000, 5);
    for round in 0..2 {
        let server = S3Server::from_process(
            &dir.path().join("data"),
            Process::start_in(Some(dir.path()), &args, &[]),
        );
        if round == 0 {
            server.aws_ok(&["s3", "mb", "s3://rel"]);
            server.aws_ok(&["s3", "cp", "--quiet", file.to_str().unwrap(), "s3://rel/f"]);
        }
        let back = dir.path().join(format!("back{round}"));
        server.aws_ok(&["s3", "cp", "--quiet", "s3://rel/f", back.to_str().unwrap()]);
        assert!(same_file(&file, &back), "round {round}");
    }
}
