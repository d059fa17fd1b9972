//! The real aws-cli against a real `zonestore serve` (embedded drives behind NVMe/TCP targets):
//! buckets, small and multipart copies both ways, sync of a tree, listing with prefixes,
//! presigned URLs fetched with a plain HTTP GET, removal, and the errors aws-cli users meet.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use common::s3::{S3Server, http_get, same_file, split_url, write_random_file};

fn tree(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    files.sort();
    files
}

#[test]
fn aws_cli_round_trips_objects() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("data"), &[]);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let p = |name: &str| work.join(name).to_str().unwrap().to_string();

    // Buckets.
    server.aws_ok(&["s3", "mb", "s3://photos"]);
    server.aws_fails_with(&["s3", "mb", "s3://photos"], "BucketAlreadyOwnedByYou");
    server.aws_fails_with(&["s3", "mb", "s3://Bad_Name"], "InvalidBucketName");
    assert!(server.aws_ok(&["s3", "ls"]).contains("photos"));

    // A small file and a large one (multipart: aws-cli splits at 8 MiB).
    write_random_file(&work.join("small.bin"), 100_000, 1);
    write_random_file(&work.join("large.bin"), 40 << 20, 2);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        &p("small.bin"),
        "s3://photos/small.bin",
    ]);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        &p("large.bin"),
        "s3://photos/big/large.bin",
    ]);
    let head = server.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "photos",
        "--key",
        "big/large.bin",
    ]);
    assert!(
        head.contains("-5\\\""),
        "a 40 MiB upload is multipart with 5 parts: {head}"
    );
    assert!(head.contains("41943040"), "size: {head}");
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        "s3://photos/small.bin",
        &p("small.out"),
    ]);
    server.aws_ok(&[
        "s3",
        "cp",
        "--quiet",
        "s3://photos/big/large.bin",
        &p("large.out"),
    ]);
    assert!(same_file(&work.join("small.bin"), &work.join("small.out")));
    assert!(same_file(&work.join("large.bin"), &work.join("large.out")));

    // Ranged get through s3api.
    server.aws_ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "big/large.bin",
        "--range",
        "bytes=8388600-8388700",
        &p("range.out"),
    ]);
    let whole = std::fs::read(work.join("large.bin")).unwrap();
    assert_eq!(
        std::fs::read(work.join("range.out")).unwrap(),
        &whole[8_388_600..=8_388_700]
    );

    // Sync a tree up, list it by prefix, sync it down, change one file and sync again.
    let src = work.join("tree");
    for (i, name) in [
        "a.txt",
        "sub/b.txt",
        "sub/c.bin",
        "sub/deeper/d.txt",
        "e/f.txt",
    ]
    .iter()
    .enumerate()
    {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_random_file(&path, 1000 * (i + 1), 10 + i as u64);
    }
    server.aws_ok(&["s3", "sync", "--quiet", &p("tree"), "s3://photos/tree"]);
    let listing = server.aws_ok(&["s3", "ls", "s3://photos/tree/"]);
    assert!(
        listing.contains("PRE sub/") && listing.contains("PRE e/") && listing.contains("a.txt"),
        "{listing}"
    );
    assert!(
        !listing.contains("b.txt"),
        "a delimited listing stops at sub/: {listing}"
    );
    let recursive = server.aws_ok(&["s3", "ls", "--recursive", "s3://photos/tree/sub/"]);
    assert_eq!(recursive.lines().count(), 3, "{recursive}");
    server.aws_ok(&["s3", "sync", "--quiet", "s3://photos/tree", &p("tree.down")]);
    assert_eq!(tree(&src), tree(&work.join("tree.down")));
    for name in tree(&src) {
        assert!(
            same_file(&src.join(&name), &work.join("tree.down").join(&name)),
            "{name}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_random_file(&src.join("sub/b.txt"), 5000, 99);
    let again = server.aws_ok(&["s3", "sync", &p("tree"), "s3://photos/tree"]);
    let uploads: Vec<&str> = again.lines().filter(|l| l.contains("upload:")).collect();
    assert_eq!(
        uploads.len(),
        1,
        "only the changed file is uploaded again: {again}"
    );
    assert!(uploads[0].contains("sub/b.txt"));

    // A presigned URL works with a plain HTTP GET and nothing else.
    let url = server.aws_ok(&[
        "s3",
        "presign",
        "s3://photos/small.bin",
        "--expires-in",
        "300",
    ]);
    let (address, path) = split_url(url.trim());
    let (status, body) = http_get(&address, &path);
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(work.join("small.bin")).unwrap());
    // Tampering with it fails.
    let (status, body) = http_get(&address, &path.replace("small.bin", "big/large.bin"));
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("SignatureDoesNotMatch"));
    // Without any signature: AccessDenied.
    let (status, body) = http_get(&address, "/photos/small.bin");
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("AccessDenied"));

    // Errors aws-cli users meet.
    server.aws_fails_with(&["s3", "cp", "s3://photos/missing", &p("x")], "404");
    server.aws_fails_with(&["s3", "ls", "s3://nosuchbucket"], "NoSuchBucket");
    server.aws_fails_with(&["s3", "rb", "s3://photos"], "BucketNotEmpty");

    // Removal.
    server.aws_ok(&["s3", "rm", "--quiet", "s3://photos/small.bin"]);
    server.aws_fails_with(
        &[
            "s3api",
            "head-object",
            "--bucket",
            "photos",
            "--key",
            "small.bin",
        ],
        "404",
    );
    server.aws_ok(&["s3", "rm", "--quiet", "--recursive", "s3://photos/"]);
    assert_eq!(
        server
            .aws_ok(&["s3", "ls", "--recursive", "s3://photos/"])
            .trim(),
        ""
    );
    server.aws_ok(&["s3", "rb", "s3://photos"]);
    assert!(!server.aws_ok(&["s3", "ls"]).contains("photos"));
}
