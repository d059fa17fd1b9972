//! boto3, botocore and s3fs (with their current defaults, flexible checksums included) against
//! a real `zonestore serve`: metadata, 2,000-key paginated listings with and without a
//! delimiter, ranges, conditionals, delete_objects, copies, multipart with UploadPartCopy,
//! checksums, every authentication failure, two users' isolation, NotImplemented, and
//! s3fs/fsspec reading and writing files. The checks live in `tests/clients/boto3_suite.py`. Also
//! the training-pipeline example, `examples/dataset.py`.

#[path = "common/mod.rs"]
mod common;

use common::s3::{S3Server, metric_sum};

#[test]
fn boto3_and_s3fs_suite() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zonestore.toml");
    std::fs::write(
        &config,
        "[[users]]\naccess_key = \"AKIASECONDUSER000002\"\nsecret_key = \"second-user-secret\"\n",
    )
    .unwrap();
    let server = S3Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let out = server.python_with_env(
        "boto3_suite.py",
        &[],
        &[
            ("SECOND_ACCESS_KEY", "AKIASECONDUSER000002"),
            ("SECOND_SECRET_KEY", "second-user-secret"),
        ],
    );
    assert!(out.contains(" 0 failed"), "{out}");
    // The connections refused for one client's share (the suite's connection_share check)
    // never reach the S3 service: the metrics count them apart.
    let refused = metric_sum(
        &server.metrics(),
        "zonestore_s3_connections_refused_total",
        &[],
    );
    assert!(refused > 0.0, "{refused}");
}

/// The training-pipeline example (`examples/dataset.py`) against a real server, through boto3
/// and through fsspec: it writes a small sharded dataset, checks a range read back against the
/// shard it came from, reads every byte back with a pool of workers and prints its figures.
#[test]
fn the_dataset_example_writes_and_reads_a_sharded_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("data"), &[]);
    for extra in [&[][..], &["--fsspec"][..]] {
        let mut args = vec![
            "--endpoint",
            server.endpoint.as_str(),
            "--shards",
            "2",
            "--shard-mib",
            "8",
            "--range-mib",
            "2",
            "--workers",
            "4",
        ];
        args.extend(extra);
        let out = server.python_with_env("../../examples/dataset.py", &args, &[]);
        assert!(out.contains("samples/s") && out.contains("ratio:"), "{out}");
    }
}

/// Copies answered the way long ones are (at once, 200, whitespace until the result or an Error
/// document follows): the server here answers every copy so, and boto3 reads the results, the
/// UploadPartCopy parts and the errors that come after the 200.
#[test]
fn copies_answered_before_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zonestore.toml");
    std::fs::write(&config, "copy_keep_alive_secs = 0\n").unwrap();
    let server = S3Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let out = server.python_with_env(
        "boto3_suite.py",
        &["copy", "copy_write_conditions", "multipart"],
        &[],
    );
    assert!(out.contains(" 0 failed"), "{out}");
}

/// HTTPS, where the SDKs stream bodies in aws-chunked encoding with checksum trailers by
/// default (STREAMING-UNSIGNED-PAYLOAD-TRAILER): boto3, s3fs and aws-cli over rustls.
#[test]
fn clients_over_https_with_checksum_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let openssl = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/install-deps.sh installs it)");
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    // A private key every user may read is refused, naming it.
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    set_mode(0o644);
    let mut refused = std::process::Command::new(common::zonestore_bin())
        .arg("serve")
        .arg("--data")
        .arg(dir.path().join("refused"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // (A server that took the key would serve on: it is stopped, and the test fails.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while refused.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            panic!("a world-readable TLS key was taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("key.pem") && stderr.contains("chmod"),
        "{stderr}"
    );
    set_mode(0o600);
    let server = S3Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.endpoint.starts_with("https://"),
        "{}",
        server.endpoint
    );
    let out = server.python_with_env(
        "boto3_suite.py",
        &[
            "buckets",
            "metadata",
            "multipart",
            "checksums",
            "auth_errors",
            "s3fs",
        ],
        &[("CA_BUNDLE", cert.to_str().unwrap())],
    );
    assert!(out.contains(" 0 failed"), "{out}");

    // aws-cli over HTTPS: a multipart upload and a download.
    let file = dir.path().join("f.bin");
    common::s3::write_random_file(&file, 12 << 20, 5);
    let ca = cert.to_str().unwrap();
    server.aws_ok(&["--ca-bundle", ca, "s3", "mb", "s3://tls"]);
    server.aws_ok(&[
        "--ca-bundle",
        ca,
        "s3",
        "cp",
        "--quiet",
        file.to_str().unwrap(),
        "s3://tls/f.bin",
    ]);
    let back = dir.path().join("back.bin");
    server.aws_ok(&[
        "--ca-bundle",
        ca,
        "s3",
        "cp",
        "--quiet",
        "s3://tls/f.bin",
        back.to_str().unwrap(),
    ]);
    assert!(common::s3::same_file(&file, &back));
    // The aws-chunked trailer path was really used.
    let metrics = server.metrics();
    let streamed = common::s3::metric_sum(
        &metrics,
        "zonestore_s3_request_payloads_total",
        &["streaming-unsigned-trailer"],
    );
    assert!(
        streamed >= 5.0,
        "uploads over HTTPS use aws-chunked trailers: {streamed}"
    );
}
