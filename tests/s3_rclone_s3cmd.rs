//! The real rclone (Debian's) and s3cmd (from the project's venv) against a real `zonestore
//! serve`: copies both ways, multipart uploads and multipart server-side copies, checks by
//! MD5, ranged reads, sync with deletions, and ACLs as S3 has them with ACLs disabled (the
//! owner's full control can be read and set; anything else is refused, by these clients and
//! by aws-cli).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::s3::{S3Server, same_file, venv_bin, write_random_file};
use md5::Digest;

/// Debian's rclone, which `scripts/install-deps.sh` installs.
fn rclone_bin() -> PathBuf {
    let path = PathBuf::from("/usr/bin/rclone");
    assert!(
        path.exists(),
        "rclone is missing: run scripts/install-deps.sh (it installs Debian's rclone)"
    );
    path
}

/// Runs rclone with a remote `zs:` pointing at the server (configured by environment only).
fn rclone(server: &S3Server, args: &[&str]) -> Output {
    Command::new(rclone_bin())
        .args(args)
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_ZS_TYPE", "s3")
        .env("RCLONE_CONFIG_ZS_PROVIDER", "Other")
        .env("RCLONE_CONFIG_ZS_ACCESS_KEY_ID", &server.access_key)
        .env("RCLONE_CONFIG_ZS_SECRET_ACCESS_KEY", &server.secret_key)
        .env("RCLONE_CONFIG_ZS_ENDPOINT", &server.endpoint)
        .env("RCLONE_CONFIG_ZS_REGION", "us-east-1")
        // rclone's S3 client rejects a CA bundle for its own transport.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("run rclone")
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(what: &str, out: Output, code: &str) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{what} should have failed: {all}");
    assert!(all.contains(code), "{what} failed without {code}: {all}");
}

fn rclone_ok(server: &S3Server, args: &[&str]) -> String {
    ok(&format!("rclone {args:?}"), rclone(server, args))
}

/// A small tree: a file under rclone's and s3cmd's multipart thresholds (set to 5 MiB below),
/// one over them, an empty one and one in a nested directory.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    write_random_file(&root.join("small.bin"), 100_000, 11);
    write_random_file(&root.join("a/big.bin"), 13 << 20, 12);
    write_random_file(&root.join("a/b/note.txt"), 3, 13);
    std::fs::write(root.join("empty"), b"").unwrap();
}

#[test]
fn rclone_copies_checks_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("data"), &[]);
    let src = dir.path().join("src");
    make_tree(&src);
    let src_arg = src.to_str().unwrap();
    let multipart = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"];

    rclone_ok(&server, &["mkdir", "zs:rclone-b"]);
    let mut copy = vec!["copy", src_arg, "zs:rclone-b/tree"];
    copy.extend_from_slice(&multipart);
    rclone_ok(&server, &copy);
    let listing = rclone_ok(&server, &["ls", "zs:rclone-b"]);
    for line in [
        "100000 tree/small.bin",
        "13631488 tree/a/big.bin",
        "3 tree/a/b/note.txt",
        "0 tree/empty",
    ] {
        assert!(listing.contains(line), "{line} in {listing}");
    }
    let head = server.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "rclone-b",
        "--key",
        "tree/a/big.bin",
    ]);
    assert!(
        head.contains("-3\\\""),
        "13 MiB in 5 MiB chunks is a 3-part upload: {head}"
    );
    // Sizes and MD5s (of the multipart object too, from the metadata rclone stores) agree.
    rclone_ok(&server, &["check", src_arg, "zs:rclone-b/tree"]);
    let sums = rclone_ok(&server, &["md5sum", "zs:rclone-b/tree"]);
    assert!(
        sums.contains("d41d8cd98f00b204e9800998ecf8427e  empty"),
        "{sums}"
    );

    // Down again, whole and by range.
    let back = dir.path().join("back");
    rclone_ok(
        &server,
        &["copy", "zs:rclone-b/tree", back.to_str().unwrap()],
    );
    for name in ["small.bin", "a/big.bin", "a/b/note.txt", "empty"] {
        assert!(same_file(&src.join(name), &back.join(name)), "{name}");
    }
    let slice = rclone(
        &server,
        &[
            "cat",
            "zs:rclone-b/tree/a/big.bin",
            "--offset",
            "6000000",
            "--count",
            "100",
        ],
    );
    assert!(slice.status.success(), "rclone cat: {slice:?}");
    let whole = std::fs::read(src.join("a/big.bin")).unwrap();
    assert_eq!(slice.stdout, whole[6_000_000..6_000_100]);

    // A server-side copy, multipart (UploadPartCopy) past the lowered copy cutoff.
    rclone_ok(
        &server,
        &[
            "copyto",
            "zs:rclone-b/tree/a/big.bin",
            "zs:rclone-b/copied/big.bin",
            "--s3-copy-cutoff",
            "5M",
        ],
    );
    let copied = dir.path().join("copied.bin");
    rclone_ok(
        &server,
        &[
            "copyto",
            "zs:rclone-b/copied/big.bin",
            copied.to_str().unwrap(),
        ],
    );
    assert!(same_file(&src.join("a/big.bin"), &copied));

    // Sync deletes what the source no longer has.
    std::fs::remove_file(src.join("a/b/note.txt")).unwrap();
    write_random_file(&src.join("new.bin"), 5000, 14);
    rclone_ok(&server, &["sync", src_arg, "zs:rclone-b/tree"]);
    let listing = rclone_ok(&server, &["ls", "zs:rclone-b/tree"]);
    assert!(!listing.contains("note.txt"), "{listing}");
    assert!(listing.contains("5000 new.bin"), "{listing}");
    rclone_ok(&server, &["check", src_arg, "zs:rclone-b/tree"]);

    // Purge removes every object, then the bucket.
    rclone_ok(&server, &["purge", "zs:rclone-b"]);
    let buckets = server.aws_ok(&["s3", "ls"]);
    assert!(!buckets.contains("rclone-b"), "{buckets}");
}

#[test]
fn s3cmd_puts_gets_syncs_and_sets_only_private_acls() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("data"), &[]);
    let src = dir.path().join("src");
    make_tree(&src);
    let host = server.endpoint.trim_start_matches("http://");
    let config = dir.path().join("s3cfg");
    std::fs::write(
        &config,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {host}\nhost_bucket = {host}\n\
             use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n",
            server.access_key, server.secret_key
        ),
    )
    .unwrap();
    let s3cmd = |args: &[&str]| {
        Command::new(venv_bin("s3cmd"))
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .expect("run s3cmd")
    };
    let s3cmd_ok = |args: &[&str]| ok(&format!("s3cmd {args:?}"), s3cmd(args));
    let path = |p: &Path| p.to_str().unwrap().to_string();

    s3cmd_ok(&["mb", "s3://s3cmd-b"]);
    s3cmd_ok(&[
        "put",
        &path(&src.join("small.bin")),
        "s3://s3cmd-b/x/small.bin",
    ]);
    s3cmd_ok(&[
        "put",
        "--multipart-chunk-size-mb=5",
        &path(&src.join("a/big.bin")),
        "s3://s3cmd-b/x/big.bin",
    ]);
    let listing = s3cmd_ok(&["ls", "-r", "s3://s3cmd-b"]);
    assert!(
        listing.contains("13631488  s3://s3cmd-b/x/big.bin"),
        "{listing}"
    );
    let got = dir.path().join("got.bin");
    s3cmd_ok(&["get", "--force", "s3://s3cmd-b/x/big.bin", &path(&got)]);
    assert!(same_file(&src.join("a/big.bin"), &got));
    let info = s3cmd_ok(&["info", "s3://s3cmd-b/x/small.bin"]);
    let md5 = s3api::checksum::hex(&md5::Md5::digest(
        std::fs::read(src.join("small.bin")).unwrap(),
    ));
    assert!(info.contains(&md5), "MD5 {md5} in {info}");

    // Sync a tree up, copy server-side, delete.
    s3cmd_ok(&["sync", &format!("{}/", path(&src)), "s3://s3cmd-b/sync/"]);
    let du = s3cmd_ok(&["du", "s3://s3cmd-b/sync/"]);
    assert!(du.contains("13731491") && du.contains("4 objects"), "{du}");
    s3cmd_ok(&["cp", "s3://s3cmd-b/x/small.bin", "s3://s3cmd-b/y/copy.bin"]);
    let got = dir.path().join("copy.bin");
    s3cmd_ok(&["get", "--force", "s3://s3cmd-b/y/copy.bin", &path(&got)]);
    assert!(same_file(&src.join("small.bin"), &got));

    // ACLs: private is what everything already is; public is refused, not ignored.
    s3cmd_ok(&["setacl", "--acl-private", "s3://s3cmd-b/x/small.bin"]);
    fails_with(
        "s3cmd setacl --acl-public",
        s3cmd(&["setacl", "--acl-public", "s3://s3cmd-b/x/small.bin"]),
        "AccessControlListNotSupported",
    );
    fails_with(
        "s3cmd put --acl-public",
        s3cmd(&[
            "put",
            "--acl-public",
            &path(&src.join("small.bin")),
            "s3://s3cmd-b/pub.bin",
        ]),
        "AccessControlListNotSupported",
    );
    let listing = s3cmd_ok(&["ls", "s3://s3cmd-b/"]);
    assert!(
        !listing.contains("pub.bin"),
        "a refused PUT stores nothing: {listing}"
    );
    let acl = server.aws_ok(&[
        "s3api",
        "get-object-acl",
        "--bucket",
        "s3cmd-b",
        "--key",
        "x/small.bin",
        "--output",
        "text",
    ]);
    assert!(
        acl.contains("FULL_CONTROL") && acl.contains(&server.access_key),
        "{acl}"
    );
    assert_eq!(acl.matches("GRANTS").count(), 1, "{acl}");
    server.aws_fails_with(
        &[
            "s3",
            "cp",
            &path(&src.join("small.bin")),
            "s3://s3cmd-b/pub.bin",
            "--acl",
            "public-read",
        ],
        "AccessControlListNotSupported",
    );
    server.aws_ok(&[
        "s3api",
        "put-bucket-acl",
        "--bucket",
        "s3cmd-b",
        "--acl",
        "private",
    ]);
    server.aws_fails_with(
        &[
            "s3api",
            "put-bucket-acl",
            "--bucket",
            "s3cmd-b",
            "--acl",
            "public-read",
        ],
        "AccessControlListNotSupported",
    );
    server.aws_fails_with(
        &[
            "s3api",
            "create-bucket",
            "--bucket",
            "open",
            "--acl",
            "public-read",
        ],
        "InvalidBucketAclWithObjectOwnership",
    );
    let ownership = server.aws_ok(&[
        "s3api",
        "get-bucket-ownership-controls",
        "--bucket",
        "s3cmd-b",
    ]);
    assert!(ownership.contains("BucketOwnerEnforced"), "{ownership}");
    server.aws_fails_with(
        &[
            "s3api",
            "get-object-acl",
            "--bucket",
            "s3cmd-b",
            "--key",
            "missing",
        ],
        "NoSuchKey",
    );

    // Removal: the bucket must be emptied first.
    fails_with("s3cmd rb", s3cmd(&["rb", "s3://s3cmd-b"]), "BucketNotEmpty");
    s3cmd_ok(&["del", "--recursive", "--force", "s3://s3cmd-b/"]);
    s3cmd_ok(&["rb", "s3://s3cmd-b"]);
    let buckets = server.aws_ok(&["s3", "ls"]);
    assert!(!buckets.contains("s3cmd-b"), "{buckets}");
}
