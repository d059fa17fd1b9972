//! The Linux kernel's NVMe/TCP host against a `zonestore target` process: discovery, connect,
//! the namespace as a host-managed zoned block device with our geometry, `blkzone report` and
//! `reset`, fio `--zonemode=zbd` with `--verify`, and Zone Append, in a QEMU VM
//! (`tests/vm/`). Skipped, saying why, only where QEMU cannot run.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{Process, address_in, repo_root};

fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn linux_kernel_host_uses_our_target_as_a_zoned_disk() {
    if !qemu_available() {
        eprintln!(
            "SKIPPED: qemu-system-x86_64 is not installed (scripts/install-deps.sh installs it)"
        );
        return;
    }
    let root = repo_root();
    let build = Command::new(root.join("tests/vm/build.sh"))
        .output()
        .expect("run tests/vm/build.sh");
    assert!(
        build.status.success(),
        "building the VM image failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let data = tempfile::tempdir().unwrap();
    let nqn = "nqn.2026-01.io.zonestore:kernel-interop";
    let (zones, zone_bytes, cap_bytes) = (16u64, 16u64 << 20, 12u64 << 20);
    let target = Process::start(&[
        "target",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
        "--zones",
        &zones.to_string(),
        "--zone-size",
        &zone_bytes.to_string(),
        "--zone-capacity",
        &cap_bytes.to_string(),
        "--nqn",
        nqn,
    ]);
    let line = target.wait_for_line("serving", Duration::from_secs(20));
    let port = address_in(&line).rsplit(':').next().unwrap().to_string();

    let script = tempfile::NamedTempFile::new().unwrap();
    let guest = std::fs::read_to_string(root.join("tests/vm/guest/interop.sh")).unwrap();
    std::fs::write(
        script.path(),
        format!(
            "NQN={nqn} ZONES={zones} ZONE_BYTES={zone_bytes} CAP_BYTES={cap_bytes} FIO_BYTES=4m\n{guest}"
        ),
    )
    .unwrap();
    let run = Command::new(root.join("tests/vm/run.sh"))
        .arg(script.path())
        .env("VM_ZNS", "0")
        .env("VM_GUESTFWD", format!("4420:{port}"))
        .env("VM_TIMEOUT", "300")
        .output()
        .expect("run the VM");
    let console = String::from_utf8_lossy(&run.stdout);
    println!("{console}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        run.status.success() && console.contains("INTEROP PASS"),
        "the kernel host did not accept the target (see the console above)"
    );
}
