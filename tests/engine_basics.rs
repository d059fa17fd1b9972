//! The engine over emulated drives: objects, buckets, listing, multipart, ranges, conditions,
//! restart, and a rebuilt index equal to the live one.

#[path = "engine_common.rs"]
mod common;

use common::*;
use zonestore::engine::EngineError;
use zonestore::engine::commit::Condition;
use zonestore::engine::model::ObjectMeta;
use zonestore::engine::revoked::Revocation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_across_extents_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    {
        let (engine, _) = open_engine(dir.path(), 1, g, |_| {}).await;
        engine.create_bucket("b", "alice").await.unwrap();
        for (key, len) in [
            ("empty", 0usize),
            ("small", 10),
            ("block", 4096),
            ("multi", 300_000),
            ("big", 6_000_000),
        ] {
            put(&engine, "b", key, &content(key, 1, len)).await.unwrap();
        }
        for (key, len) in [
            ("empty", 0usize),
            ("small", 10),
            ("block", 4096),
            ("multi", 300_000),
            ("big", 6_000_000),
        ] {
            assert_eq!(
                get(&engine, "b", key).await.unwrap(),
                content(key, 1, len),
                "{key}"
            );
        }
        // Ranges that start and end inside extents.
        let whole = content("big", 1, 6_000_000);
        for (a, b) in [
            (0u64, 1u64),
            (65_000, 200_000),
            (1_999_999, 6_000_000),
            (123_456, 1_234_567),
            // Across the windows in which extents are looked up (64 records of 64 KiB each).
            (5_999_999, 6_000_000),
            (4_000_000, 5_999_999),
            (100, 5_900_000),
        ] {
            assert_eq!(
                read_range(&engine, "b", "big", a, b).await.unwrap(),
                &whole[a as usize..b as usize]
            );
        }
        engine.shutdown().await;
    }
    // Everything acknowledged is there after a restart.
    let (engine, _) = open_engine(dir.path(), 1, g, |_| {}).await;
    assert_eq!(
        get(&engine, "b", "big").await.unwrap(),
        content("big", 1, 6_000_000)
    );
    assert_eq!(get(&engine, "b", "empty").await.unwrap(), Vec::<u8>::new());
}

/// A user owns at most the configured number of buckets (TooManyBuckets past it); others
/// are not held to that user's count, and deleting one makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_owns_at_most_the_configured_number_of_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open_engine(dir.path(), 1, small_geometry(16, 1 << 20), |c| {
        c.max_buckets_per_owner = 2;
    })
    .await;
    engine.create_bucket("a1", "alice").await.unwrap();
    engine.create_bucket("a2", "alice").await.unwrap();
    assert!(matches!(
        engine.create_bucket("a3", "alice").await,
        Err(EngineError::TooManyBuckets(2))
    ));
    engine.create_bucket("b1", "bob").await.unwrap();
    engine.delete_bucket("a1").await.unwrap();
    engine.create_bucket("a3", "alice").await.unwrap();
    // Created at once, carol's buckets do not all find room under the quota.
    let creates = (0..8).map(|i| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.create_bucket(&format!("c{i}"), "carol").await })
    });
    let created = futures::future::join_all(creates)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(created, 2);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_delete_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open_engine(dir.path(), 1, small_geometry(64, 1 << 20), |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    assert!(matches!(
        engine.create_bucket("b", "alice").await,
        Err(EngineError::BucketAlreadyOwnedByYou(_))
    ));
    assert!(matches!(
        engine.create_bucket("b", "bob").await,
        Err(EngineError::BucketAlreadyExists(_))
    ));
    for key in ["a/1", "a/2", "b/1", "c"] {
        put(&engine, "b", key, &content(key, 1, 5000))
            .await
            .unwrap();
    }
    put(&engine, "b", "a/1", &content("a/1", 2, 7000))
        .await
        .unwrap();
    assert_eq!(
        get(&engine, "b", "a/1").await.unwrap(),
        content("a/1", 2, 7000)
    );
    engine.delete("b", "a/2").await.unwrap();
    assert!(matches!(
        engine.head("b", "a/2"),
        Err(EngineError::NoSuchKey { .. })
    ));
    let l = engine.list("b", "", "", Some("/"), 100).unwrap();
    assert_eq!(l.prefixes, vec!["a/", "b/"]);
    assert_eq!(
        l.objects
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        vec!["c"]
    );
    assert!(matches!(
        engine.delete_bucket("b").await,
        Err(EngineError::BucketNotEmpty(_))
    ));
    for key in ["a/1", "b/1", "c"] {
        engine.delete("b", key).await.unwrap();
    }
    engine.delete_bucket("b").await.unwrap();
    assert!(matches!(
        engine.head("b", "c"),
        Err(EngineError::NoSuchBucket(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives) = open_engine(dir.path(), 1, small_geometry(64, 1 << 20), |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put_if(&engine, "b", "k", b"one", Condition::IfNoneMatchAny)
        .await
        .unwrap();
    let again = put_if(&engine, "b", "k", b"two", Condition::IfNoneMatchAny).await;
    assert!(matches!(
        again,
        Err(EngineError::PreconditionFailed("If-None-Match"))
    ));
    let etag = engine.head("b", "k").unwrap().etag;
    assert!(matches!(
        put_if(&engine, "b", "k", b"x", Condition::IfMatch("nope".into())).await,
        Err(EngineError::PreconditionFailed("If-Match"))
    ));
    put_if(&engine, "b", "k", b"three", Condition::IfMatch(etag))
        .await
        .unwrap();
    assert_eq!(get(&engine, "b", "k").await.unwrap(), b"three");
    // A refused version leaves no record a rebuild would take for the newest.
    assert!(matches!(
        put_if(&engine, "b", "k", b"four", Condition::IfNoneMatchAny).await,
        Err(EngineError::PreconditionFailed("If-None-Match"))
    ));
    assert!(matches!(
        put_if(&engine, "gone", "k", b"five", Condition::None).await,
        Err(EngineError::NoSuchBucket(_))
    ));
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
}

/// Once a completed object is deleted and its tombstone let go, a leftover copy of its commit
/// record is revoked, by kind: the upload's end record shares the commit's number, and a
/// rebuild still takes it, so the upload does not come back as one in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_completions_commit_record_leaves_its_upload_ended() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives) = open_engine(dir.path(), 1, small_geometry(64, 1 << 20), |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let id = engine
        .create_upload("b", "k", ObjectMeta::default())
        .await
        .unwrap();
    let mut w = engine.put_part(id, 1).unwrap();
    w.write(bytes::Bytes::from(content("k", 1, 10_000)))
        .await
        .unwrap();
    let etag = format!("{:032x}", 1);
    w.finish_part(etag.clone(), vec![]).await.unwrap();
    let meta = engine
        .complete_upload(id, &[(1, etag)], None, Condition::None)
        .await
        .unwrap();
    engine.delete("b", "k").await.unwrap();
    let mut revoked = engine.revoked_writes().unwrap();
    revoked.insert(
        meta.seq,
        Revocation::of_kind(zonestore::engine::record::Kind::Commit, vec![]),
    );
    assert_rebuild_with_equals_live(&engine, &drives, dir.path(), "rebuilt", &revoked).await;
    engine.shutdown().await;
}

/// A completion's end record that replay reads again (the zone's settled prefix lost) once the
/// upload's tombstone has been let go is taken for an abort of an upload that is gone, which
/// changes nothing: the number it shares with the live object's commit record is not revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replay_of_a_completions_end_record_leaves_the_object_alone() {
    use zonestore::engine::index::{Index, TombKind, cf, tombstone_key};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let (engine, _) = open_engine(dir.path(), 1, g, no_gc).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let id = engine
        .create_upload("b", "k", ObjectMeta::default())
        .await
        .unwrap();
    let mut w = engine.put_part(id, 1).unwrap();
    let body = content("k", 1, 10_000);
    w.write(bytes::Bytes::from(body.clone())).await.unwrap();
    let etag = format!("{:032x}", 1);
    w.finish_part(etag.clone(), vec![]).await.unwrap();
    let meta = engine
        .complete_upload(id, &[(1, etag)], None, Condition::None)
        .await
        .unwrap();
    engine.shutdown().await;
    {
        let index = Index::open(&dir.path().join("index")).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        for (key, _) in index.dump_prefix(cf::META, b"settled:").unwrap() {
            batch.delete_cf(index.cf(cf::META), key);
        }
        batch.delete_cf(
            index.cf(cf::TOMBSTONES),
            tombstone_key(TombKind::Upload, &id.to_be_bytes()),
        );
        index.write(batch, true).unwrap();
    }
    let (engine, drives) = open_engine(dir.path(), 1, g, no_gc).await;
    assert!(
        !zonestore::engine::revoked::covers(
            &engine.revoked_writes().unwrap(),
            meta.seq,
            zonestore::engine::record::Kind::Commit
        ),
        "the object's commit record is revoked"
    );
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_completes_without_copying_and_checks_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open_engine(dir.path(), 1, small_geometry(128, 1 << 20), |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let template = ObjectMeta {
        content_type: Some("video/mp4".into()),
        owner: "alice".into(),
        ..ObjectMeta::default()
    };
    let id = engine.create_upload("b", "movie", template).await.unwrap();
    let sizes = [5 << 20, 5 << 20, 1234];
    let mut etags = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let mut w = engine.put_part(id, i as u32 + 1).unwrap();
        w.write(bytes::Bytes::from(content("movie", i as u64, *size)))
            .await
            .unwrap();
        let etag = format!("{:032x}", i + 1);
        w.finish_part(etag.clone(), vec![]).await.unwrap();
        etags.push((i as u32 + 1, etag));
    }
    assert_eq!(engine.parts(id, 0, usize::MAX).unwrap().len(), 3);
    let written_before = engine
        .stats()
        .user_written
        .load(std::sync::atomic::Ordering::Relaxed);
    // Wrong order and a wrong ETag are refused.
    let mut reversed = etags.clone();
    reversed.reverse();
    assert!(matches!(
        engine
            .complete_upload(id, &reversed, None, Condition::None)
            .await,
        Err(EngineError::InvalidPartOrder)
    ));
    let mut bad = etags.clone();
    bad[1].1 = "00".repeat(16);
    assert!(matches!(
        engine
            .complete_upload(id, &bad, None, Condition::None)
            .await,
        Err(EngineError::InvalidPart(_))
    ));
    let meta = engine
        .complete_upload(id, &etags, None, Condition::None)
        .await
        .unwrap();
    assert!(meta.etag.ends_with("-3"));
    assert_eq!(meta.content_type.as_deref(), Some("video/mp4"));
    let written_after = engine
        .stats()
        .user_written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        written_after - written_before < 64 << 10,
        "completion wrote only metadata, not the parts again"
    );
    let mut expected = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        expected.extend(content("movie", i as u64, *size));
    }
    assert_eq!(get(&engine, "b", "movie").await.unwrap(), expected);
    assert!(matches!(
        engine.upload(id),
        Err(EngineError::NoSuchUpload(_))
    ));
    // Small non-final parts are refused.
    let id = engine
        .create_upload("b", "tiny", ObjectMeta::default())
        .await
        .unwrap();
    for n in 1..=2u32 {
        let mut w = engine.put_part(id, n).unwrap();
        w.write(bytes::Bytes::from_static(b"abc")).await.unwrap();
        w.finish_part(format!("{n:032x}"), vec![]).await.unwrap();
    }
    let parts = vec![(1, format!("{:032x}", 1)), (2, format!("{:032x}", 2))];
    assert!(matches!(
        engine
            .complete_upload(id, &parts, None, Condition::None)
            .await,
        Err(EngineError::EntityTooSmall { part: 1, .. })
    ));
    engine.abort_upload(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_index_equals_the_live_one_after_overwrites_deletes_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(48, 512 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, |c| {
        c.gc.low_watermark = 0.5;
        c.gc.high_watermark = 0.6;
        c.gc.rate_bytes_per_sec = 0;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    engine.create_bucket("gone", "alice").await.unwrap();
    engine.delete_bucket("gone").await.unwrap();
    // Uploads that end before the workload: completed, and aborted.
    for (key, complete) in [("assembled", true), ("dropped", false)] {
        let upload = engine
            .create_upload("b", key, ObjectMeta::default())
            .await
            .unwrap();
        let mut w = engine.put_part(upload, 1).unwrap();
        w.write(bytes::Bytes::from(content(key, 0, 90_000)))
            .await
            .unwrap();
        let etag = format!("{:032x}", 1);
        w.finish_part(etag.clone(), vec![]).await.unwrap();
        if complete {
            engine
                .complete_upload(upload, &[(1, etag)], None, Condition::None)
                .await
                .unwrap();
        } else {
            engine.abort_upload(upload).await.unwrap();
        }
    }
    let mut x = 7u64;
    for round in 0..400u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = format!("k{}", (x >> 33) % 40);
        match (x >> 20) % 5 {
            0 => engine.delete("b", &key).await.unwrap(),
            _ => {
                let len = ((x >> 40) % 150_000) as usize;
                put(&engine, "b", &key, &content(&key, round, len))
                    .await
                    .unwrap();
            }
        }
    }
    let upload = engine
        .create_upload("b", "pending", ObjectMeta::default())
        .await
        .unwrap();
    let mut w = engine.put_part(upload, 3).unwrap();
    w.write(bytes::Bytes::from(content("p", 0, 70_000)))
        .await
        .unwrap();
    w.finish_part(format!("{:032x}", 3), vec![]).await.unwrap();
    assert!(
        engine.gc().status().zones_collected > 0,
        "GC ran during the workload"
    );
    engine.gc().stop();
    while engine.gc().status().busy {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        engine
            .canonical_dump()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("upload"))
    );
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
}

/// A small range of a large record is read from the record's header and the chunks the range
/// covers: damage in a chunk it covers makes it fail over to the other copy (a CRC error),
/// damage in another chunk of the same record is not even read (scrub is what finds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ranges_read_and_check_only_their_chunks() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let (engine, _) = open_engine(dir.path(), 2, g, |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let whole = content("obj", 1, 1_000_000);
    put(&engine, "b", "obj", &whole).await.unwrap();

    // Each drive's copy of object byte 300_010 in turn: damage it (reads prefer one copy, so
    // one of the two rounds reads the damaged chunk), and find its record's layout.
    let crc_errors = || engine.stats().crc_errors.load(Ordering::Relaxed);
    let chunk = zonestore::engine::record::CHUNK;
    for drive in 0..2 {
        let path = dir.path().join(format!("drive{drive}/zns.data"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let disk = std::fs::read(&path).unwrap();
        let at = disk
            .windows(64)
            .position(|w| w == &whole[300_000..300_064])
            .expect("the drive holds a copy")
            + 10;
        let record = disk[..at]
            .windows(4)
            .rposition(|w| w == b"ZSR1")
            .expect("the record's header");
        let header_len = u16::from_le_bytes([disk[record + 8], disk[record + 9]]) as usize;
        let payload_at = at - record - header_len;
        let record_object_start = 300_010 - payload_at;
        file.write_all_at(&[disk[at] ^ 0xFF], at as u64).unwrap();

        // Another chunk of the same record: read without complaint.
        let errors_before = crc_errors();
        let other_chunk = if payload_at / chunk == 0 { chunk } else { 0 };
        let a = (record_object_start + other_chunk + 100) as u64;
        for _ in 0..20 {
            assert_eq!(
                read_range(&engine, "b", "obj", a, a + 100).await.unwrap(),
                &whole[a as usize..a as usize + 100]
            );
        }
        assert_eq!(
            crc_errors(),
            errors_before,
            "the damaged chunk was not read"
        );
        // The damaged chunk: the right bytes still, from the other copy if need be.
        for _ in 0..20 {
            assert_eq!(
                read_range(&engine, "b", "obj", 300_000, 300_100)
                    .await
                    .unwrap(),
                &whole[300_000..300_100]
            );
        }
        file.write_all_at(&[disk[at]], at as u64).unwrap();
    }
    assert!(crc_errors() > 0, "the preferred copy was tried and refused");
    assert_eq!(get(&engine, "b", "obj").await.unwrap(), whole);
    engine.shutdown().await;
}

/// GC must not take a zone that holds appended but not yet indexed records: the extents of an
/// upload still streaming in count as nothing in the index's accounting, so such a sealed zone
/// looks like pure garbage, but the upload is about to point at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_leaves_zones_with_records_not_yet_indexed_alone() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(24, 256 << 10);
    let (engine, _drives) = open_engine(dir.path(), 1, g, |c| {
        c.gc.low_watermark = 0.01;
        c.gc.high_watermark = 0.02;
        c.gc.rate_bytes_per_sec = 0;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = content("big", 1, 3 << 20);
    let mut writer = engine.put("b", "big").unwrap();
    for chunk in body.chunks(100 << 10) {
        writer
            .write(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    // The upload has filled and sealed zones; collect whatever GC would take now.
    for _ in 0..8 {
        engine.inner().collect_now().await.unwrap();
    }
    let meta = ObjectMeta {
        etag: "e".into(),
        owner: "alice".into(),
        ..ObjectMeta::default()
    };
    writer.finish_object(meta, Condition::None).await.unwrap();
    assert!(
        get(&engine, "b", "big").await.unwrap() == body,
        "the object reads back exactly"
    );

    // An upload given up releases its zones: they are garbage, and GC takes them.
    let mut abandoned = engine.put("b", "abandoned").unwrap();
    for chunk in body[..3 << 19].chunks(100 << 10) {
        abandoned
            .write(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    drop(abandoned);
    let before = engine.gc().status().zones_collected;
    // (A zone is collected once the Finish sent to it when it filled has landed.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while engine.gc().status().zones_collected == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned upload's zones were not collected"
        );
        engine.inner().collect_now().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        get(&engine, "b", "big").await.unwrap() == body,
        "the object is intact"
    );
}

/// An operation whose client goes away while its record's append is in flight runs to its
/// end: GC leaves the zone of the append alone meanwhile, and once the append lands the
/// operation commits (the bucket exists) and its zone serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_abandoned_mid_append_runs_to_its_end() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    // A drive whose appends stall, once told to, until released; `stalled` gets the zone
    // start LBA of the append that stalled.
    let stall = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let stalled = Arc::new(tokio::sync::watch::channel(None).0);
    let inner = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner));
    drive.before_append = Box::new({
        let (stall, stalled, release) = (stall.clone(), stalled.clone(), release.clone());
        move |zslba, _, _| {
            let stalling = stall.load(Ordering::SeqCst);
            if stalling {
                stalled.send_replace(Some(zslba));
            }
            let release = release.clone();
            Box::pin(async move {
                if stalling {
                    release.notified().await;
                }
            })
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        |_| {},
    )
    .await;
    let mut stalled = stalled.subscribe();
    stall.store(true, Ordering::SeqCst);
    let request = tokio::spawn({
        let engine = engine.clone();
        async move { engine.create_bucket("c", "alice").await }
    });
    let zslba = *stalled.wait_for(|z| z.is_some()).await.unwrap();
    let zone = (zslba.unwrap() / g.zone_size) as u32;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    stall.store(false, Ordering::SeqCst);
    // The append is still in flight: GC leaves its zone alone.
    engine.inner().collect_now().await.unwrap();
    assert_eq!(
        zone_row(&engine, zone).generation,
        0,
        "zone {zone} was reset under an append in flight"
    );
    // A permit, not a wake-up: the stalled append may not have begun to wait yet.
    release.notify_one();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.bucket("c").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned creation never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    engine.create_bucket("d", "alice").await.unwrap();
}

/// An append can land although it reports failure (its completion lost on the way back).
/// Placement then counts fewer blocks in the zone than the drive holds, and records appended
/// after the lost one sit past that count: GC must still find and move them, and reset the
/// zone, rather than stop short and keep the zone forever. No zone placement hands out as free
/// may hold data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_moves_records_that_follow_an_append_reported_failed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use zonestore::engine::placement::ZoneUse;
    let dir = tempfile::tempdir().unwrap();
    let mut g = small_geometry(16, 256 << 10);
    // One user zone open at a time, so that appends in flight together share it.
    g.max_open = Some(3);
    g.max_active = Some(3);
    let inner = drive0(dir.path(), g);
    let lose_next = Arc::new(AtomicBool::new(false));
    let landed = Arc::new(tokio::sync::watch::channel(None::<u64>).0);
    let release = Arc::new(tokio::sync::Notify::new());
    let appended_to = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.after_append = Box::new({
        let (lose_next, landed, release, appended_to) = (
            lose_next.clone(),
            landed.clone(),
            release.clone(),
            appended_to.clone(),
        );
        move |zslba, result| {
            appended_to.lock().unwrap().push(zslba);
            let lose = lose_next.swap(false, Ordering::SeqCst);
            let (landed, release) = (landed.clone(), release.clone());
            Box::pin(async move {
                if !lose {
                    return result;
                }
                landed.send_replace(Some(result.expect("the lost append landed")));
                release.notified().await;
                Err(zns::ZoneError::MediaError("completion lost".into()))
            })
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        |_| {},
    )
    .await;
    let body = |k: &str| content(k, 1, 8 << 10);
    for i in 0..12 {
        let key = format!("garbage-{i}");
        put(&engine, "b", &key, &body(&key)).await.unwrap();
    }

    // The lost append lands, and while its writer waits for the completion, another lands
    // after it in the same zone and is acknowledged.
    let mut landed_at = landed.subscribe();
    lose_next.store(true, Ordering::SeqCst);
    let lost = tokio::spawn({
        let engine = engine.clone();
        async move { put(&engine, "b", "lost", &body("lost")).await }
    });
    let lost_lba = landed_at.wait_for(|l| l.is_some()).await.unwrap().unwrap();
    let zone = (lost_lba / g.zone_size) as u32;
    put(&engine, "b", "after", &body("after")).await.unwrap();
    assert_eq!(
        appended_to.lock().unwrap().last(),
        Some(&(u64::from(zone) * g.zone_size)),
        "the test needs both appends in one zone"
    );
    release.notify_one();
    assert!(lost.await.unwrap().is_err(), "the lost append's PUT fails");

    for i in 0..12 {
        engine.delete("b", &format!("garbage-{i}")).await.unwrap();
    }
    for _ in 0..4 {
        engine.inner().collect_now().await.unwrap();
    }
    let row = zone_row(&engine, zone);
    assert!(
        row.generation > 0,
        "GC reset the zone with the lost append: {row:?}"
    );
    assert_eq!(get(&engine, "b", "after").await.unwrap(), body("after"));
    assert!(
        get(&engine, "b", "lost").await.is_err(),
        "nothing of the failed PUT is visible"
    );
    for row in engine.zone_table() {
        if row.usage == ZoneUse::Free {
            let report = zns::ZonedDevice::report_zones(
                inner.as_ref(),
                u64::from(row.zone) * g.zone_size,
                zns::ReportFilter::All,
                1,
            )
            .await
            .unwrap();
            assert_eq!(
                report.zones[0].state,
                zns::ZoneState::Empty,
                "zone {} is free for placement but not empty on the drive",
                row.zone
            );
        }
    }
    engine.shutdown().await;
}

/// Once the drive counts as up again after a transport failure, deletes `keys` (making `zone`
/// garbage) and has GC collect: `zone`'s row after.
async fn zone_after_deleting_and_collecting(
    engine: &zonestore::engine::Engine,
    keys: &[String],
    zone: u32,
) -> zonestore::engine::ZoneRow {
    tokio::time::sleep(
        zonestore::engine::drives::RETRY_AFTER + std::time::Duration::from_millis(100),
    )
    .await;
    for key in keys {
        engine.delete("b", key).await.unwrap();
    }
    for _ in 0..4 {
        // With the drive's open zones held by Finishes in doubt, GC may find no zone to move
        // records into and answer "try again" (collecting nothing, the zone included).
        match engine.inner().collect_now().await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("GC failed: {e}"),
        }
    }
    zone_row(engine, zone)
}

/// A download GC went on without (it outlasted GC's wait for it) takes what it reads only if
/// the index still names the copy: once the zone is reset and written again, bytes there that
/// pass a record's own checks may be anything (a client may store bytes that look like one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_gc_went_on_without_does_not_take_a_record_planted_where_its_copy_was() {
    use zns::ZonedDevice;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, |c| {
        c.gc.enabled = false;
        c.gc.read_wait = std::time::Duration::from_millis(50);
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    // Objects in each zone writes go to, the victim after them, then more until its zone is
    // full (and can be collected).
    let mut keys = Vec::new();
    for i in 0..4 {
        let key = format!("before{i}");
        put(&engine, "b", &key, &content(&key, 1, 10_000))
            .await
            .unwrap();
        keys.push(key);
    }
    let body = content("victim", 1, 20_000);
    put(&engine, "b", "victim", &body).await.unwrap();
    keys.push("victim".to_string());
    let drive = &drives[0];
    let block = g.block_size as usize;
    let (zone, lba, original) = {
        let report = drive
            .report_zones(0, zns::ReportFilter::All, 64)
            .await
            .unwrap();
        let mut found = None;
        for (i, z) in report
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.wp > z.zslba)
        {
            let bytes = drive.read(z.zslba, (z.wp - z.zslba) as u32).await.unwrap();
            let mut at = 0;
            while let Ok(p) = zonestore::engine::record::parse(&bytes[at..], block) {
                if p.header.key == "victim"
                    && p.header.kind == zonestore::engine::record::Kind::Data
                {
                    found = Some((i as u32, z.zslba + (at / block) as u64, p.header));
                }
                at += p.padded;
            }
        }
        found.expect("the victim's data record")
    };
    let zone_state = || async {
        drive
            .report_zones(g.zone_start(zone), zns::ReportFilter::All, 1)
            .await
            .unwrap()
            .zones[0]
            .state
    };
    for i in 0.. {
        if zone_state().await == zns::ZoneState::Full {
            break;
        }
        assert!(i < 200, "the zone never filled");
        let key = format!("filler{i}");
        put(&engine, "b", &key, &content(&key, 1, 30_000))
            .await
            .unwrap();
        keys.push(key);
    }
    assert!(
        lba > g.zone_start(zone),
        "something lies before it in its zone"
    );
    let handle = engine.open_object("b", "victim").unwrap();

    // Deleted and its zone collected: GC waits 50 ms for the open download, then resets.
    for key in &keys {
        engine.delete("b", key).await.unwrap();
    }
    // (Collected until it is reset: a later collection may write what it moves into it.)
    for i in 0.. {
        assert!(i < 8, "the zone was never reset");
        engine.inner().collect_now().await.unwrap();
        if zone_state().await == zns::ZoneState::Empty {
            break;
        }
    }

    // Written again: a record with the victim's identity and other bytes where its copy was.
    let planted_body = vec![b'X'; body.len()];
    let planted = zonestore::engine::record::encode(&original, &planted_body, block);
    let filler = (lba - g.zone_start(zone)) as usize * block;
    drive
        .write(g.zone_start(zone), bytes::Bytes::from(vec![0u8; filler]))
        .await
        .unwrap();
    drive.write(lba, planted).await.unwrap();

    let mut stream = handle.read(0..handle.meta().size).unwrap();
    let mut read = Vec::new();
    let mut failed = None;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(c) => read.extend_from_slice(&c),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(
        !read.windows(64).any(|w| w.iter().all(|&b| b == b'X')),
        "the planted bytes were served"
    );
    assert!(
        matches!(failed, Some(EngineError::Unavailable(_))),
        "the read is told to begin again: {failed:?}"
    );
    drop((stream, handle));
    engine.shutdown().await;
}

/// An append the host gave up on (the connection lost or timed out: Unavailable, where a drive
/// that failed it would report its own error) may still run on the target: GC leaves its zone
/// alone for a while rather than reset it, since after a reset the append would land in the
/// zone's next life, where the failed write's revocation no longer reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_leaves_the_zone_of_an_append_in_doubt_alone() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let mut g = small_geometry(16, 256 << 10);
    g.max_open = Some(3);
    g.max_active = Some(3);
    let inner = drive0(dir.path(), g);
    let lose_next = Arc::new(AtomicBool::new(false));
    let landed_at = Arc::new(AtomicU64::new(u64::MAX));
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.after_append = Box::new({
        let (lose_next, landed_at) = (lose_next.clone(), landed_at.clone());
        move |_, result| {
            let lose = lose_next.swap(false, Ordering::SeqCst);
            if lose && let Ok(lba) = &result {
                landed_at.store(*lba, Ordering::SeqCst);
            }
            Box::pin(async move {
                if lose {
                    Err(zns::ZoneError::Unavailable("timed out".into()))
                } else {
                    result
                }
            })
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        |_| {},
    )
    .await;
    let body = |k: &str| content(k, 1, 8 << 10);
    for i in 0..12 {
        let key = format!("garbage-{i}");
        put(&engine, "b", &key, &body(&key)).await.unwrap();
    }
    lose_next.store(true, Ordering::SeqCst);
    assert!(put(&engine, "b", "doubt", &body("doubt")).await.is_err());
    let lba = landed_at.load(Ordering::SeqCst);
    assert_ne!(lba, u64::MAX, "the test lost no append");
    let zone = (lba / g.zone_size) as u32;
    let garbage: Vec<String> = (0..12).map(|i| format!("garbage-{i}")).collect();
    let row = zone_after_deleting_and_collecting(&engine, &garbage, zone).await;
    assert_eq!(
        row.generation, 0,
        "GC reset the zone of an append that may still land: {row:?}"
    );
    assert!(get(&engine, "b", "doubt").await.is_err());
    engine.shutdown().await;
}

/// A tombstone whose deleted records' zones were all reset since hides nothing: GC collecting
/// its zone drops it rather than copying it (a wasted write, and dead space in a GC zone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_drops_tombstones_with_nothing_left_to_hide_instead_of_moving_them() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    // One user zone at a time: records go into zones in the order they are written.
    let mut g = small_geometry(16, 256 << 10);
    g.max_open = Some(3);
    g.max_active = Some(3);
    let (engine, _drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = |k: &str| content(k, 1, 8000);
    let zone_of_writes = |engine: &zonestore::engine::Engine| {
        engine
            .zone_table()
            .into_iter()
            .find(|r| {
                r.usage
                    == zonestore::engine::placement::ZoneUse::Active(
                        zonestore::engine::model::Class::User,
                    )
            })
            .map(|r| r.zone)
    };
    // The first zone fills with objects, which are then deleted: their tombstones go to the
    // next zone, which overwrites of one key then fill (garbage to collect it for).
    let first = zone_of_writes(&engine);
    let mut early = Vec::new();
    for i in 0.. {
        let key = format!("a{i}");
        put(&engine, "b", &key, &body(&key)).await.unwrap();
        if zone_of_writes(&engine) != first {
            break;
        }
        early.push(key);
    }
    for key in &early {
        engine.delete("b", key).await.unwrap();
    }
    let second = zone_of_writes(&engine);
    for v in 0.. {
        put(&engine, "b", "x", &content("x", v, 8000))
            .await
            .unwrap();
        if zone_of_writes(&engine) != second {
            break;
        }
    }
    let relocated = || engine.stats().records_relocated.load(Ordering::SeqCst);
    // The first zone is garbage but for the bucket's record and the start of the object that
    // went on into the second zone: they move, the zone is reset.
    let reset = |engine: &zonestore::engine::Engine, zone: Option<u32>| {
        engine
            .zone_table()
            .into_iter()
            .any(|r| Some(r.zone) == zone && r.generation > 0)
    };
    engine.inner().collect_now().await.unwrap();
    assert!(reset(&engine, first), "the first zone was collected first");
    let before = relocated();
    let tombstones = early.len() as u64;
    // The second holds the tombstones (hiding only what was in the first), a few live records
    // and garbage: what it holds live is moved, the tombstones are not.
    engine.inner().collect_now().await.unwrap();
    assert!(reset(&engine, second), "the second zone was collected next");
    let moved = relocated() - before;
    assert!(
        moved < tombstones,
        "{moved} records moved with {tombstones} tombstones that hide nothing"
    );
    for key in &early {
        assert!(get(&engine, "b", key).await.is_err(), "{key} came back");
    }
    engine.shutdown().await;
}

/// A reset the host gave up on (timed out: the target may still carry it out) leaves its zone
/// alone for a while: reset again and written meanwhile, the late reset would wipe what was
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_leaves_the_zone_of_a_reset_in_doubt_alone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let inner = drive0(dir.path(), g);
    let lose_next_reset = Arc::new(AtomicBool::new(false));
    let lost: Arc<Mutex<Option<zns::ZoneSelect>>> = Arc::default();
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.instead_of_manage = Box::new({
        let (lose, lost) = (lose_next_reset.clone(), lost.clone());
        move |action, select| {
            if action != zns::ZoneAction::Reset || !lose.swap(false, Ordering::SeqCst) {
                return None;
            }
            *lost.lock().unwrap() = Some(select);
            Some(Err(zns::ZoneError::Unavailable("timed out".into())))
        }
    });
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), gc_by_hand).await;
    let body = |k: &str| content(k, 1, 8 << 10);
    let keys: Vec<String> = (0..60).map(|i| format!("garbage-{i}")).collect();
    for key in &keys {
        put(&engine, "b", key, &body(key)).await.unwrap();
    }
    tokio::time::sleep(
        zonestore::engine::drives::RETRY_AFTER + std::time::Duration::from_millis(100),
    )
    .await;
    for key in &keys {
        engine.delete("b", key).await.unwrap();
    }
    lose_next_reset.store(true, Ordering::SeqCst);
    assert!(
        engine.inner().collect_now().await.is_err(),
        "the reset was lost"
    );
    let Some(zns::ZoneSelect::Zone(zslba)) = *lost.lock().unwrap() else {
        panic!("no reset of one zone was lost");
    };
    let zone = (zslba / g.zone_size) as u32;
    // Collected again at once (as `gc run` does): other zones are reset, not that one.
    for _ in 0..6 {
        let _ = engine.inner().collect_now().await;
    }
    let others_reset = engine
        .zone_table()
        .into_iter()
        .filter(|r| r.zone != zone && r.generation > 0)
        .count();
    assert!(others_reset > 0, "GC reset nothing");
    assert_eq!(
        zone_row(&engine, zone).generation,
        0,
        "the zone whose reset may still land was reset again"
    );
    engine.shutdown().await;
}

/// An append refused for its zone's state (here Zone Is Full: the zone was not as placement
/// counted on) retires that zone, and the record goes to another zone of the same drive: a
/// store on one drive still takes the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_refused_for_its_zones_state_goes_to_another_zone_of_the_drive() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let inner = drive0(dir.path(), g);
    let refuse_next = Arc::new(AtomicBool::new(false));
    let mut drive = zns::testing::Intercepted::new(inner);
    drive.after_append = Box::new({
        let refuse = refuse_next.clone();
        move |zslba, result| {
            let refused = refuse.swap(false, Ordering::SeqCst);
            Box::pin(async move {
                if refused {
                    Err(zns::ZoneError::ZoneIsFull { zslba })
                } else {
                    result
                }
            })
        }
    });
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), gc_by_hand).await;
    refuse_next.store(true, Ordering::SeqCst);
    let body = content("k", 1, 20_000);
    put(&engine, "b", "k", &body).await.unwrap();
    assert!(!refuse_next.load(Ordering::SeqCst), "no append was refused");
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    engine.shutdown().await;
}

/// A zone found holding less than the index names in it (a target that lost a flushed tail)
/// has the lost copies made again from whole ones on other drives at once: the engine asks for
/// a scrub pass as it opens, not at the next one days away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_past_a_write_pointer_are_made_again_at_once() {
    use zns::ZonedDevice;
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives, body, holders) = one_object_in_two_copies(dir.path(), "k").await;
    engine.shutdown().await;
    let g = drives[0].geometry();
    let (drive, offset) = holders[0];
    let zone = (offset as u64 / u64::from(g.block_size) / g.zone_size) as u32;
    // The zone holds one block of something else now: its write pointer is short of what the
    // index names there.
    drives[drive]
        .manage_zones(
            zns::ZoneAction::Reset,
            zns::ZoneSelect::Zone(g.zone_start(zone)),
        )
        .await
        .unwrap();
    drives[drive]
        .append(
            g.zone_start(zone),
            bytes::Bytes::from(vec![0x5A; g.block_size as usize]),
        )
        .await
        .unwrap();
    drives[drive].flush().await.unwrap();
    drop(drives);
    let (engine, reconciliation, _drives) = open_engine_reporting(dir.path(), 3, g, |c| {
        c.replicas = 2;
        c.write_quorum = 2;
        c.gc.enabled = false;
    })
    .await;
    assert!(
        reconciliation
            .broken_zones
            .iter()
            .any(|z| z.zone == zone && usize::from(z.drive) == drive),
        "{:?}",
        reconciliation.broken_zones
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while engine.repair().status().scrub_repaired == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lost copies were not made again: {:?}",
            engine.repair().status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    engine.shutdown().await;
}

/// A zone found empty that the index counts live data in (its reset lost, or the drive's) is
/// reported and takes no writes until the index is rebuilt: records written there would be
/// counted with the lost ones, and GC would never find it free of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_found_empty_with_live_data_counted_in_it_takes_no_writes() {
    use zns::ZonedDevice;
    use zonestore::engine::placement::ZoneUse;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "lost", &content("lost", 1, 20_000))
        .await
        .unwrap();
    let zone = engine
        .object_entries()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name.ends_with(b"lost"))
        .map(|(_, entry)| (entry.commit[0].lba / g.zone_size) as u32)
        .unwrap();
    engine.shutdown().await;
    drives[0]
        .manage_zones(
            zns::ZoneAction::Reset,
            zns::ZoneSelect::Zone(g.zone_start(zone)),
        )
        .await
        .unwrap();
    drop(drives);

    let (engine, reconciliation, _drives) =
        open_engine_reporting(dir.path(), 1, g, gc_by_hand).await;
    assert!(
        reconciliation.broken_zones.iter().any(|z| z.zone == zone),
        "{:?}",
        reconciliation.broken_zones
    );
    assert_eq!(zone_row(&engine, zone).usage, ZoneUse::Bad);
    for i in 0..40 {
        let key = format!("after-{i}");
        put(&engine, "b", &key, &content(&key, 1, 20_000))
            .await
            .unwrap();
    }
    for (name, entry) in engine.object_entries().unwrap() {
        if name.ends_with(b"lost") {
            continue;
        }
        for copy in &entry.commit {
            assert_ne!(
                (copy.lba / g.zone_size) as u32,
                zone,
                "a write landed there"
            );
        }
    }
    engine.shutdown().await;
}

/// A zone placement stops using is finished on the drive (its active-zone slot freed), and a
/// Finish that fails for a moment is tried again rather than leaving the zone holding a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_that_fails_for_a_moment_is_tried_again() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let inner = drive0(dir.path(), g);
    // Every Finish sent: its zone, and whether the drive was "away" for it.
    let finishes: Arc<Mutex<Vec<(zns::ZoneSelect, bool)>>> = Arc::default();
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.instead_of_manage = Box::new({
        let finishes = finishes.clone();
        move |action, select| {
            if action != zns::ZoneAction::Finish {
                return None;
            }
            let mut finishes = finishes.lock().unwrap();
            // The first two Finishes find the drive away.
            let away = finishes.len() < 2;
            finishes.push((select, away));
            away.then(|| Err(zns::ZoneError::Unavailable("away for a moment".into())))
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        gc_by_hand,
    )
    .await;
    // Objects that do not fill a zone exactly: the one that does not fit retires it, unfull
    // (enough for every open zone to meet one).
    for i in 0..24 {
        let key = format!("k{i}");
        put(&engine, "b", &key, &content(&key, 1, 100_000))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sent = finishes.lock().unwrap().clone();
        let failed: Vec<_> = sent
            .iter()
            .filter(|(_, away)| *away)
            .map(|(z, _)| *z)
            .collect();
        let retried = failed.len() == 2
            && failed
                .iter()
                .all(|z| sent.iter().any(|(again, away)| again == z && !away));
        if retried {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a zone whose Finish failed was not finished later: {sent:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A Finish the host gave up on (Unavailable) may still run on the target: GC leaves its zone
/// alone for a while, as for an append in doubt, or the Finish could land after the reset and
/// make the zone's next life Full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_leaves_the_zone_of_a_finish_in_doubt_alone() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let inner = drive0(dir.path(), g);
    let finished: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.instead_of_manage = Box::new({
        let finished = finished.clone();
        move |action, select| {
            if action != zns::ZoneAction::Finish {
                return None;
            }
            if let zns::ZoneSelect::Zone(zslba) = select {
                finished.lock().unwrap().push(zslba);
            }
            Some(Err(zns::ZoneError::Unavailable("timed out".into())))
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        gc_by_hand,
    )
    .await;
    // Objects that do not fill a zone exactly: the one that does not fit retires it, unfull.
    let mut keys = Vec::new();
    while finished.lock().unwrap().is_empty() {
        let key = format!("k{}", keys.len());
        assert!(keys.len() < 24, "no zone was retired");
        put(&engine, "b", &key, &content(&key, 1, 100_000))
            .await
            .unwrap();
        keys.push(key);
    }
    let zone = (finished.lock().unwrap()[0] / g.zone_size) as u32;
    let row = zone_after_deleting_and_collecting(&engine, &keys, zone).await;
    assert_eq!(
        row.generation, 0,
        "GC reset the zone of a Finish that may still land: {row:?}"
    );
    engine.shutdown().await;
}

/// A drive that cannot make writes (a write fault on every append: its media, or the file
/// behind it, failing) is skipped by new writes for a moment, not tried for every record; its
/// records still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_failing_its_writes_is_skipped_for_a_while() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (failing, attempts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let specs = intercepted_specs(dir.path(), 2, g, |i, _, drive| {
        if i == 0 {
            let (failing, attempts) = (failing.clone(), attempts.clone());
            drive.after_append = Box::new(move |_, result| {
                let fail = failing.load(Ordering::SeqCst);
                if fail {
                    attempts.fetch_add(1, Ordering::SeqCst);
                }
                Box::pin(async move {
                    if fail {
                        Err(zns::ZoneError::MediaError("write fault".into()))
                    } else {
                        result
                    }
                })
            });
        }
    });
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 2);
    config.replicas = 1;
    config.write_quorum = 1;
    gc_by_hand(&mut config);
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "before", &content("before", 1, 5000))
        .await
        .unwrap();
    failing.store(true, Ordering::SeqCst);
    for i in 0..10 {
        let key = format!("k{i}");
        put(&engine, "b", &key, &content(&key, 1, 5000))
            .await
            .unwrap();
    }
    let tried = attempts.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&tried),
        "the failing drive was tried {tried} times for 20 records"
    );
    assert_eq!(
        get(&engine, "b", "before").await.unwrap(),
        content("before", 1, 5000)
    );
    engine.shutdown().await;
}

/// Reads ahead go on while the client is slow to take what comes before them: one that had
/// to wait (for a queue slot, say) when the client stopped reading is not left until the
/// client reads again (its timeout would then count the client's slowness against the drive).
#[tokio::test]
async fn reads_ahead_go_on_while_the_client_takes_nothing() {
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let inner = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner));
    let (started, landed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (release, released) = tokio::sync::watch::channel(false);
    {
        let started = started.clone();
        drive.before_read = Box::new(move |_, _| {
            // The first read (the piece the stream waits for) goes at once; the rest wait.
            let first = started.fetch_add(1, Ordering::SeqCst) == 0;
            let mut released = released.clone();
            Box::pin(async move {
                if !first {
                    let _ = released.wait_for(|&r| r).await;
                }
            })
        });
        let landed = landed.clone();
        drive.after_read = Box::new(move |_, _, result| {
            landed.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::ready(result))
        });
    }
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), gc_by_hand).await;
    let body = content("big", 1, 512 << 10);
    put(&engine, "b", "big", &body).await.unwrap();
    let handle = engine.open_object("b", "big").unwrap();
    let mut stream = handle.read(0..body.len() as u64).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], &body[..first.len()]);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        started.load(Ordering::SeqCst) > 1,
        "reads ahead started while the client took nothing"
    );
    assert_eq!(landed.load(Ordering::SeqCst), 1);
    // The client takes nothing more for now; what held the reads ahead up goes away.
    release.send(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while landed.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no read ahead went on while the stream was not polled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut rest = first.to_vec();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(rest == body, "the object reads back whole");
    drop(stream);
    drop(handle);
    engine.shutdown().await;
}

/// GC works on every drive at once: a drive whose reads hang (a target that stopped answering
/// but has not timed out yet) holds up reclaiming its own zones, not the other drives'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_goes_on_with_other_drives_while_one_is_stuck() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    // Few open zones, so that a few objects fill (and seal) zones GC may then take.
    let mut g = small_geometry(16, 256 << 10);
    g.max_open = Some(3);
    g.max_active = Some(3);
    let stuck = Arc::new(AtomicBool::new(false));
    let mut emulated = Vec::new();
    let specs = intercepted_specs(dir.path(), 2, g, |i, inner, drive| {
        emulated.push(inner.clone());
        if i == 0 {
            let stuck = stuck.clone();
            drive.before_read = Box::new(move |_, _| {
                let hang = stuck.load(Ordering::SeqCst);
                Box::pin(async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                })
            });
        }
    });
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 2);
    config.gc.enabled = false;
    config.gc.rate_bytes_per_sec = 0;
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    // Both drives hold every record (R = 2); most of it becomes garbage.
    let body = content("x", 1, 120 << 10);
    put_many(&engine, "b", 14, &body, 4, |k| format!("k{k}")).await;
    for k in 0..12 {
        engine.delete("b", &format!("k{k}")).await.unwrap();
    }
    let free = |drive: usize| {
        let name = format!("zns-file://drive{drive}");
        engine
            .zone_table()
            .iter()
            .filter(|r| r.drive == name && r.usage == zonestore::engine::placement::ZoneUse::Free)
            .count()
    };
    let (free0, free1) = (free(0), free(1));

    stuck.store(true, Ordering::SeqCst);
    engine.gc().set_watermarks(0.9, 0.95);
    engine.gc().start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while free(1) <= free1 {
        assert!(
            std::time::Instant::now() < deadline,
            "GC reclaimed nothing on drive 1 while drive 0 hung ({free1} free zones)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(free(0), free0, "drive 0's collection is the one that hangs");
    assert!(engine.gc().status().busy);
    // Drive 1's pass ends (nothing more worth collecting); drive 0's does not. New garbage on
    // drive 1 is collected by its next pass: the stuck one holds up no other drive's next.
    let mut settled = free(1);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let now = free(1);
        if now == settled {
            break;
        }
        settled = now;
    }
    put_many(&engine, "b", 4, &body, 2, |k| format!("again{k}")).await;
    for k in 0..3 {
        engine.delete("b", &format!("again{k}")).await.unwrap();
    }
    let dirty = free(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while free(1) <= dirty {
        assert!(
            std::time::Instant::now() < deadline,
            "drive 1's new garbage was not collected while drive 0 hung ({dirty} free zones)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // New reads of drive 0 go through again (the stuck GC read stays stuck).
    stuck.store(false, Ordering::SeqCst);
    for k in 12..14 {
        let key = format!("k{k}");
        assert_eq!(get(&engine, "b", &key).await.unwrap(), body, "{key}");
    }
    drop(emulated);
}

/// GC copies a live commit record to a GC zone, and before the relocation is committed the
/// object is deleted: the copy is an orphan, garbage to GC but an old version a rebuild would
/// believe once the tombstone is gone. The tombstone keeps the orphan's zone among the zones it
/// hides, so it lives as long as the orphan may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_gc_made_of_a_version_deleted_meanwhile_stays_hidden() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(32, 256 << 10);
    let inner = drive0(dir.path(), g);
    let armed = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(tokio::sync::watch::channel(None::<u64>).0);
    let release = Arc::new(tokio::sync::Notify::new());
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.before_append = Box::new({
        let (armed, stalled, release) = (armed.clone(), stalled.clone(), release.clone());
        move |zslba, _, data| {
            // The first append carrying the victim's commit record once armed: GC's copy of
            // it (its data record, copied in another group, needs no hiding).
            let stall =
                carries_commit_of(data, b"the-victim") && armed.swap(false, Ordering::SeqCst);
            let (stalled, release) = (stalled.clone(), release.clone());
            Box::pin(async move {
                if stall {
                    stalled.send_replace(Some(zslba));
                    release.notified().await;
                }
            })
        }
    });
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), |c| {
        c.gc.enabled = false;
    })
    .await;
    put(&engine, "b", "the-victim", &content("v", 1, 8 << 10))
        .await
        .unwrap();
    // Fill and seal zones around it, then make them garbage.
    garbage(&engine, "b", 40, 32 << 10).await;

    armed.store(true, Ordering::SeqCst);
    let gc = tokio::spawn({
        let (engine, armed) = (engine.clone(), armed.clone());
        async move {
            // Until the collection that copied the victim is done (later ones could collect
            // the orphan's zone too, and then nothing needs hiding).
            for _ in 0..12 {
                engine.inner().collect_now().await.unwrap();
                if !armed.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    });
    let mut stalled = stalled.subscribe();
    let copy_zslba = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stalled.wait_for(|z| z.is_some()),
    )
    .await
    .expect("GC copied the victim")
    .unwrap()
    .unwrap();
    engine.delete("b", "the-victim").await.unwrap();
    release.notify_one();
    gc.await.unwrap();
    engine.shutdown().await;

    let index = zonestore::engine::index::Index::open(&dir.path().join("index")).unwrap();
    let tomb = index
        .tombstone(
            zonestore::engine::index::TombKind::Object,
            &zonestore::engine::index::object_key("b", "the-victim"),
        )
        .unwrap()
        .expect("the deletion keeps its tombstone");
    let copy_zone = (copy_zslba / g.zone_size) as u32;
    assert!(
        tomb.shadowed.iter().any(|s| s.zone.zone == copy_zone),
        "the tombstone hides zone {copy_zone} of the orphan copy: {:?}",
        tomb.shadowed
    );
}

/// Whether `data` (one or more records) holds a commit record naming `key`: a record header
/// starts with "ZSR1", a version byte and its kind (2: commit), and names its key soon after.
fn carries_commit_of(data: &[u8], key: &[u8]) -> bool {
    data.windows(key.len())
        .enumerate()
        .filter(|(_, w)| *w == key)
        .any(|(at, _)| {
            let head = &data[at.saturating_sub(512)..at];
            head.windows(4)
                .rposition(|w| w == b"ZSR1")
                .is_some_and(|m| head.get(m + 5) == Some(&2))
        })
}

/// Records are padded to the block size and parsed by the block size of the drive holding
/// them, so every drive must have the same one: a mix is refused at start, naming the drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_of_different_block_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for (i, block_size) in [4096u32, 512].into_iter().enumerate() {
        let mut g = small_geometry(16, 256 << 10);
        g.block_size = block_size;
        g.max_append_blocks = (64 << 10) / block_size;
        let drive = zns::EmulatedZns::create(&dir.path().join(format!("d{i}")), g).unwrap();
        specs.push(zonestore::engine::DriveSpec {
            name: format!("zns-file://d{i}"),
            device: std::sync::Arc::new(drive),
        });
    }
    let config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 2);
    let Err(err) = zonestore::engine::Engine::open(config, specs).await else {
        panic!("a mix of block sizes is refused");
    };
    let message = err.to_string();
    assert!(
        message.contains("zns-file://d1") && message.contains("512-byte blocks"),
        "{message}"
    );
}

/// A zone GC has to keep (a live record in it is damaged on its only copy, so it cannot be
/// moved) is not taken again and again in the same pass: the pass ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_gc_must_keep_does_not_hold_its_pass_for_ever() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let victim = content("victim", 1, 20_000);
    put(&engine, "b", "victim", &victim).await.unwrap();
    garbage(&engine, "b", 30, 30 << 10).await;
    // Damage the victim's only copy on the drive.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(drives[0].data_path())
        .unwrap();
    let all = std::fs::read(drives[0].data_path()).unwrap();
    let at = all
        .windows(64)
        .position(|w| w == &victim[1000..1064])
        .expect("the victim's bytes are on the drive");
    file.write_all_at(&[0xFF; 64], at as u64).unwrap();
    drop(file);

    engine.gc().set_watermarks(0.9, 0.95);
    engine.gc().start();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Passes end (GC then sleeps until the next one): it is not busy all the time.
    let mut idle_seen = false;
    while std::time::Instant::now() < deadline && !idle_seen {
        idle_seen = !engine.gc().status().busy;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(idle_seen, "GC stayed busy on a zone it must keep");
    engine.gc().stop();
}

/// A zone holding nothing live whose scan stops at a damaged record header (bit rot, a torn
/// append) is still reset: GC need not read past it to know nothing there is to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_of_garbage_with_a_damaged_header_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives, victim) = a_sealed_zone_of_garbage(dir.path(), g).await;
    // The header of the zone's first record is damaged (its magic intact).
    let start = u64::from(victim.zone) * g.zone_size * u64::from(g.block_size);
    damage_record_header(&drives, start);
    assert!(
        collected_until_reset(&engine, &victim).await,
        "the zone of garbage was never reset: {:?}",
        zone_row(&engine, victim.zone)
    );
}

/// A zone of garbage the drive holds empty already (a reset that landed though the index did not
/// take the record of it) is reset again and recorded, its blocks not read as damaged records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_of_garbage_the_drive_reset_already_is_recorded_without_damage_found() {
    use zns::ZonedDevice;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives, victim) = a_sealed_zone_of_garbage(dir.path(), g).await;
    drives[0]
        .manage_zones(
            zns::ZoneAction::Reset,
            zns::ZoneSelect::Zone(g.zone_start(victim.zone)),
        )
        .await
        .unwrap();
    let crc_errors = || {
        engine
            .stats()
            .crc_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = crc_errors();
    assert!(
        collected_until_reset(&engine, &victim).await,
        "the zone was never recorded reset: {:?}",
        zone_row(&engine, victim.zone)
    );
    assert_eq!(crc_errors(), before, "its zeros were taken for damage");
}

/// A one-drive engine in `dir` (GC by hand) whose zones were filled with objects of bucket
/// `b`, then the objects deleted; with its drives and the row of a sealed zone of garbage.
async fn a_sealed_zone_of_garbage(
    dir: &std::path::Path,
    g: zns::Geometry,
) -> (
    zonestore::engine::Engine,
    Vec<zns::EmulatedZns>,
    zonestore::engine::ZoneRow,
) {
    use zonestore::engine::placement::ZoneUse;
    let (engine, drives) = open_engine(dir, 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    garbage(&engine, "b", 40, 30 << 10).await;
    let victim = engine
        .zone_table()
        .into_iter()
        .find(|r| r.usage == ZoneUse::Sealed && r.valid_bytes == 0 && r.written_bytes > 0)
        .expect("a sealed zone of garbage");
    (engine, drives, victim)
}

/// Damages the header of the record at byte `start` of the first drive (its magic intact).
fn damage_record_header(drives: &[zns::EmulatedZns], start: u64) {
    write_at(drives, (0, start as usize + 16), &[0x5A; 8]);
}

/// Runs GC by hand until the zone of `row` (of the first drive) is reset, at most 16 times;
/// whether it was.
async fn collected_until_reset(
    engine: &zonestore::engine::Engine,
    row: &zonestore::engine::ZoneRow,
) -> bool {
    for _ in 0..16 {
        engine.inner().collect_now().await.unwrap();
        if zone_row(engine, row.zone).generation > row.generation {
            return true;
        }
    }
    false
}

/// Live records after a damaged record header in a zone are still found and moved (the scan
/// resynchronises past the damage, taking for a record only what the index names there, and
/// stepping over nothing a client's bytes claim), so the zone is reset rather than kept for
/// ever; every live object reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_records_after_a_damaged_header_are_moved_and_the_zone_reset() {
    // The header damaged, its magic intact.
    live_records_after_damage_are_moved(damage_record_header).await;
}

/// The same when the damage hits a record's magic: a block below the write pointer that is
/// neither a record nor unwritten (zeros) is damage to look past, not the end of the zone's
/// records (which would leave the live records after it unmoved, and the zone kept for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_records_after_a_damaged_magic_are_moved_and_the_zone_reset() {
    live_records_after_damage_are_moved(|drives, start| {
        write_at(drives, (0, start as usize), &[0x5A; 4])
    })
    .await;
}

/// A dead record in a zone with live records after it is damaged by `damage` (given the
/// drives and the byte where the record starts); GC still empties and resets the zone.
async fn live_records_after_damage_are_moved(damage: impl Fn(&[zns::EmulatedZns], u64)) {
    use zonestore::engine::record::{self, Header, Kind};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    // The dead object's body holds, at a block boundary, the first block of a record of a
    // client's making (its header sound, its length covering the live records after it), as
    // any payload may. Where a payload starts in its block (the header's length) is learnt
    // from a first version of the same key and size.
    let probe = content("probe", 1, 30_000);
    put(&engine, "b", "dead", &probe).await.unwrap();
    let bs = g.block_size as usize;
    let header_len = std::fs::read(drives[0].data_path())
        .unwrap()
        .windows(64)
        .position(|w| w == &probe[..64])
        .unwrap()
        % bs;
    let forged = record::encode(
        &Header {
            kind: Kind::Data,
            seq: 1 << 40,
            write_seq: 1 << 40,
            id: 7,
            offset: 0,
            bucket: "b".into(),
            key: "forged".into(),
            replaces: None,
        },
        &[0x42; 100_000],
        bs,
    );
    let mut dead = content("dead", 1, 30_000);
    let o = bs - header_len;
    dead[o..o + bs].copy_from_slice(&forged[..bs]);
    put(&engine, "b", "dead", &dead).await.unwrap();
    let kept: Vec<Vec<u8>> = (0..4).map(|k| content("kept", k, 30_000)).collect();
    for (k, body) in kept.iter().enumerate() {
        put(&engine, "b", &format!("kept{k}"), body).await.unwrap();
    }
    let data = std::fs::read(drives[0].data_path()).unwrap();
    let at = |body: &[u8]| {
        data.windows(64)
            .position(|w| w == &body[..64])
            .expect("the body on the drive") as u64
    };
    let dead_at = at(&dead);
    let zone = (dead_at / g.zone_bytes()) as u32;
    let after: Vec<usize> = (0..kept.len())
        .filter(|&k| at(&kept[k]) > dead_at && (at(&kept[k]) / g.zone_bytes()) as u32 == zone)
        .collect();
    assert!(
        !after.is_empty(),
        "no live record after the dead one in its zone"
    );
    drop(data);
    engine.delete("b", "dead").await.unwrap();
    // Garbage after them, so that their zone is sealed and worth collecting.
    garbage(&engine, "b", 40, 30_000).await;
    // The dead record is damaged, at the start of its block.
    let block = u64::from(g.block_size);
    damage(&drives, dead_at / block * block);
    let before = zone_row(&engine, zone);
    assert!(before.valid_bytes > 0);
    assert!(
        collected_until_reset(&engine, &before).await,
        "the zone with live records after a damaged record was never reset: {:?}",
        zone_row(&engine, zone)
    );
    for (k, body) in kept.iter().enumerate() {
        assert_eq!(&get(&engine, "b", &format!("kept{k}")).await.unwrap(), body);
    }
    engine.shutdown().await;
}

/// A new emulated drive of geometry `g` in `dir/drive0`.
fn drive0(dir: &std::path::Path, g: zns::Geometry) -> std::sync::Arc<zns::EmulatedZns> {
    std::sync::Arc::new(zns::EmulatedZns::create(&dir.join("drive0"), g).unwrap())
}

/// The zone table's row for zone `zone` (of the first drive).
fn zone_row(engine: &zonestore::engine::Engine, zone: u32) -> zonestore::engine::ZoneRow {
    engine
        .zone_table()
        .into_iter()
        .find(|r| r.zone == zone)
        .expect("a row for the zone")
}

/// A zone the drive made read-only cannot be reset: GC leaves it out (its records were moved)
/// and goes on with the drive's other zones instead of taking it again every pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_that_cannot_be_reset_does_not_stop_gc_on_its_drive() {
    use zns::testing::Backdoor;
    use zonestore::engine::placement::ZoneUse;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, |c| {
        gc_by_hand(c);
        c.gc.policy = zonestore::engine::gc::Policy::Greedy;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    // Filler, the object kept, then the filler deleted: its zones are all garbage.
    put_many(&engine, "b", 60, &content("f", 1, 30 << 10), 4, |k| {
        format!("f{k}")
    })
    .await;
    let kept = content("kept", 2, 10_000);
    put(&engine, "b", "kept", &kept).await.unwrap();
    for k in 0..60 {
        engine.delete("b", &format!("f{k}")).await.unwrap();
    }
    let dead: Vec<u32> = engine
        .zone_table()
        .into_iter()
        .filter(|r| r.usage == ZoneUse::Sealed && r.valid_bytes == 0)
        .map(|r| r.zone)
        .collect();
    assert!(dead.len() >= 3, "dead zones to collect: {dead:?}");
    // Greedy takes the last of equally dead zones first: that one cannot be reset.
    let stuck = *dead.last().unwrap();
    drives[0].make_read_only(g.zone_start(stuck)).await.unwrap();

    engine.gc().set_watermarks(0.9, 0.95);
    engine.gc().start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let collected = |engine: &zonestore::engine::Engine| {
        dead[..dead.len() - 1]
            .iter()
            .all(|&z| zone_row(engine, z).usage != ZoneUse::Sealed)
    };
    while std::time::Instant::now() < deadline && !collected(&engine) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    engine.gc().stop();
    assert!(collected(&engine), "the other dead zones were collected");
    assert_eq!(zone_row(&engine, stuck).usage, ZoneUse::Bad);
    assert!(engine.gc().status().last_error.is_some());
    assert_eq!(get(&engine, "b", "kept").await.unwrap(), kept);
}

/// A copy scrub cannot read now (its drive's connection lost or timed out) is not a bad copy:
/// scrub leaves it to its next pass rather than count it bad and move it to another drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_does_not_count_a_copy_it_cannot_read_now_as_bad() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use zonestore::engine::{DriveSpec, Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let away = Arc::new(AtomicBool::new(false));
    let mut specs = Vec::new();
    for i in 0..3 {
        let inner =
            Arc::new(zns::EmulatedZns::create(&dir.path().join(format!("drive{i}")), g).unwrap());
        let mut drive = zns::testing::Intercepted::new(inner);
        if i == 0 {
            let away = away.clone();
            drive.after_read = Box::new(move |_, _, result| {
                let away = away.load(Ordering::SeqCst);
                Box::pin(async move {
                    if away {
                        Err(zns::ZoneError::Unavailable("timed out".into()))
                    } else {
                        result
                    }
                })
            });
        }
        specs.push(DriveSpec {
            name: format!("zns-file://drive{i}"),
            device: Arc::new(drive),
        });
    }
    let mut config = EngineConfig::new(dir.path().join("index"), 3);
    config.replicas = 2;
    config.write_quorum = 2;
    config.gc.enabled = false;
    let (engine, _) = Engine::open(config, specs).await.unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    for i in 0..6 {
        let key = format!("k{i}");
        put(&engine, "b", &key, &content(&key, 1, 30_000))
            .await
            .unwrap();
    }
    away.store(true, Ordering::SeqCst);
    let before = engine.repair().status();
    engine.repair().scrub();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while engine.repair().status().scrub_passes == before.scrub_passes {
        assert!(std::time::Instant::now() < deadline, "no scrub pass ended");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = engine.repair().status();
    assert!(
        after.scrub_checked > before.scrub_checked,
        "scrub read nothing"
    );
    assert_eq!(after.scrub_bad, 0, "{after:?}");
    assert_eq!(after.copies_made, before.copies_made, "{after:?}");
    away.store(false, Ordering::SeqCst);
    engine.shutdown().await;
}

/// When the last scrub pass ended is kept in the index: the scrub interval counts from it
/// across restarts, so a server restarted more often than the interval still scrubs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_last_scrub_pass_ended_is_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "k", &content("k", 1, 30_000))
        .await
        .unwrap();
    engine.repair().scrub();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while engine.repair().status().scrub_passes == 0 {
        assert!(std::time::Instant::now() < deadline, "no scrub pass ended");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ended = engine.repair().status().scrub_last_end_ms;
    assert!(ended.is_some(), "the pass's end is known");
    engine.shutdown().await;
    drop(drives);
    let (engine, _drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.repair().status().scrub_last_end_ms.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the last pass's end was not read back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = engine.repair().status();
    assert_eq!(status.scrub_last_end_ms, ended);
    assert_eq!(
        status.scrub_passes, 0,
        "no pass is due a moment after the last"
    );
    engine.shutdown().await;
}

/// A scrub pass a restart stops goes on from where it stood when the store opens again (not
/// from the start, and not only at the next interval): a store restarted more often than a pass
/// lasts still checks every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_pass_a_restart_stops_goes_on_from_where_it_stood() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(32, 1 << 20);
    // About four 30 KB copies a second: the pass outlasts the first engine.
    let (engine, drives) = open_engine(dir.path(), 1, g, |c| {
        gc_by_hand(c);
        c.repair.scrub_rate_bytes_per_sec = 120_000;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    for i in 0..16 {
        let key = format!("k{i:02}");
        put(&engine, "b", &key, &content(&key, i, 30_000))
            .await
            .unwrap();
    }
    engine.repair().scrub();
    until_repair(&engine, "the scrub checked too little", 30, |s| {
        s.scrub_checked >= 6
    })
    .await;
    let first = engine.repair().status();
    assert_eq!(first.scrub_passes, 0, "the pass ended before the restart");
    engine.shutdown().await;
    drop(drives);

    // No pass is due (never scrubbed: the interval counts from now) and none is asked for: only
    // the unfinished one runs, unpaced now.
    let (engine, _drives) = open_engine(dir.path(), 1, g, |c| {
        gc_by_hand(c);
        c.repair.scrub_rate_bytes_per_sec = 0;
    })
    .await;
    until_repair(&engine, "the stopped pass did not go on", 30, |s| {
        s.scrub_passes > 0
    })
    .await;
    let resumed = engine.repair().status();
    assert!(resumed.scrub_last_end_ms.is_some(), "{resumed:?}");
    // A whole pass, for comparison.
    engine.repair().scrub();
    until_repair(&engine, "no whole pass ended", 30, |s| s.scrub_passes >= 2).await;
    let whole = engine.repair().status().scrub_checked - resumed.scrub_checked;
    assert!(
        resumed.scrub_checked > 0 && resumed.scrub_checked < whole,
        "the resumed pass checked {} copies, a whole pass {whole}",
        resumed.scrub_checked
    );
    assert!(
        resumed.scrub_checked + first.scrub_checked >= whole,
        "copies were skipped: {} + {} < {whole}",
        first.scrub_checked,
        resumed.scrub_checked
    );
    engine.shutdown().await;
}

/// Three drives (R = 2, GC off) holding bucket `b` and one 30 KB object `key`: the engine, the
/// drives, the object's body, and where its two copies hold the 64 bytes at 5000 of it (drive,
/// offset in the drive's data file).
async fn one_object_in_two_copies(
    dir: &std::path::Path,
    key: &str,
) -> (
    zonestore::engine::Engine,
    Vec<zns::EmulatedZns>,
    Vec<u8>,
    Vec<(usize, usize)>,
) {
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir, 3, g, |c| {
        c.replicas = 2;
        c.write_quorum = 2;
        c.gc.enabled = false;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = content(key, 7, 30_000);
    put(&engine, "b", key, &body).await.unwrap();
    let holders = copies_in_files(&drives, &body);
    assert_eq!(holders.len(), 2, "two copies: {holders:?}");
    (engine, drives, body, holders)
}

/// Where `body` (at least 5064 bytes) has a copy in each of `drives`' data files: (drive, byte
/// offset of its bytes 5000..5064), found by those 64 bytes.
fn copies_in_files(drives: &[zns::EmulatedZns], body: &[u8]) -> Vec<(usize, usize)> {
    let probe = &body[5000..5064];
    drives
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let all = std::fs::read(d.data_path()).unwrap();
            all.windows(64).position(|w| w == probe).map(|at| (i, at))
        })
        .collect()
}

/// One object `k` of 30 KB (of `version`) written in three copies on three drives, the engine
/// shut down, then the copies on the drives in `damaged` damaged; then the engine opened again
/// with `replicas` copies standing for R (and a write quorum of 1). Returns it and the body.
async fn surplus_copies_damaged(
    dir: &std::path::Path,
    version: u64,
    damaged: &[usize],
    replicas: usize,
) -> (zonestore::engine::Engine, Vec<u8>) {
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir, 3, g, three_copies_gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = content("k", version, 30_000);
    put(&engine, "b", "k", &body).await.unwrap();
    engine.shutdown().await;
    let holders = copies_in_files(&drives, &body);
    assert_eq!(holders.len(), 3, "three copies: {holders:?}");
    for &copy in holders.iter().filter(|(d, _)| damaged.contains(d)) {
        write_at(&drives, copy, &[0xFF; 64]);
    }
    drop(drives);
    let (engine, _drives) = open_engine(dir, 3, g, |c| {
        c.replicas = replicas;
        c.write_quorum = 1;
        gc_by_hand(c);
    })
    .await;
    (engine, body)
}

/// What an intercepted flush does (see `Intercepted::before_flush`): fails, the drive refusing
/// it, when `fail`.
fn flush_refused_if(
    fail: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = zns::ZoneResult<()>> + Send>> {
    Box::pin(async move {
        if fail {
            Err(zns::ZoneError::Unavailable(
                "flush refused by the test".into(),
            ))
        } else {
            Ok(())
        }
    })
}

/// Nudges repair until its status satisfies `done`, failing with `what` (and the status) after
/// `seconds`.
async fn until_repair(
    engine: &zonestore::engine::Engine,
    what: &str,
    seconds: u64,
    done: impl Fn(&zonestore::engine::repair::RepairStatus) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let s = engine.repair().status();
        if done(&s) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s:?}");
        engine.repair().nudge();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Writes `bytes` into drive `copy.0`'s data file at offset `copy.1`, behind the engine's back.
fn write_at(drives: &[zns::EmulatedZns], copy: (usize, usize), bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(drives[copy.0].data_path())
        .unwrap();
    file.write_all_at(bytes, copy.1 as u64).unwrap();
}

/// A GET whose only readable copy is damaged while another is on a drive that is down fails as
/// an outage to wait out (503: the other copy may be whole), not as damage (500); once the
/// drive is back, the GET is served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_beside_one_on_a_drive_that_is_down_is_an_outage() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let mut down = None;
    let mut inner = Vec::new();
    let specs = intercepted_specs(dir.path(), 2, g, |i, drive, intercepted| {
        inner.push(drive.clone());
        if i == 1 {
            down = Some(intercepted.unavailable.clone());
        }
    });
    let down = down.unwrap();
    let engine = copies_over(dir.path(), specs, 2, 2).await;
    let body = content("k", 1, 30_000);
    put(&engine, "b", "k", &body).await.unwrap();
    let probe = &body[5000..5064];
    let on_first = std::fs::read(inner[0].data_path())
        .unwrap()
        .windows(64)
        .position(|w| w == probe)
        .expect("a copy on the first drive");
    write_at(&inner, (0, on_first), &[0xFF; 64]);
    down.store(true, Ordering::SeqCst);
    let e = get(&engine, "b", "k").await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match get(&engine, "b", "k").await {
            Ok(read) => {
                assert_eq!(read, body);
                break;
            }
            Err(e) => {
                assert!(
                    e.is_unavailable() && std::time::Instant::now() < deadline,
                    "{e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    engine.shutdown().await;
}

/// A damaged copy whose new copy cannot be made when it is met (here the index refuses
/// writes for a while) is not forgotten until the next scrub: it is tried again, and made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_that_could_not_be_made_again_is_tried_again() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives, body, holders) = one_object_in_two_copies(dir.path(), "read").await;
    let write = |copy, bytes: &[u8]| write_at(&drives, copy, bytes);
    let probe = &body[5000..5064];
    engine.index().refuse_writes(true);
    let mut met = false;
    let crc_errors = || engine.stats().crc_errors.load(Ordering::Relaxed);
    for &copy in &holders {
        write(copy, &[0xFF; 64]);
        let before = crc_errors();
        assert_eq!(get(&engine, "b", "read").await.unwrap(), body);
        if crc_errors() > before {
            met = true;
            break;
        }
        write(copy, probe);
    }
    assert!(met, "no GET met the damaged copy");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while engine.repair().status().scrub_bad == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "repair never looked at the copy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // (Its new copy is not recorded while the index takes no writes.)
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(engine.repair().status().scrub_repaired, 0);
    engine.index().refuse_writes(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while engine.repair().status().scrub_repaired == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged copy was not made again: {:?}",
            engine.repair().status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(engine.repair().status().scrub_bad, 1, "counted once");
    let before = crc_errors();
    for _ in 0..5 {
        assert_eq!(get(&engine, "b", "read").await.unwrap(), body);
    }
    assert_eq!(crc_errors(), before, "reads no longer meet damage");
    engine.shutdown().await;
}

/// A drain that drops a copy because enough others remain (R lowered since the record was
/// written) first reads that another is whole: with the others damaged, the draining drive's
/// copy is kept, the others are made again from it, and only then is it dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_drop_the_last_whole_copy() {
    let dir = tempfile::tempdir().unwrap();
    // Two copies now stand for R; those on drives 0 and 1 are damaged, drive 2's is whole.
    let (engine, body) = surplus_copies_damaged(dir.path(), 3, &[0, 1], 2).await;
    engine.drain("zns-file://drive2").await.unwrap();
    until_repair(&engine, "the drain did not finish", 60, |s| {
        s.draining_bytes == 0 && s.copies_dropped > 0 && s.blocked.is_none()
    })
    .await;
    assert!(
        engine.repair().status().scrub_repaired >= 1,
        "{:?}",
        engine.repair().status()
    );
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    engine.shutdown().await;
}

/// Two drains at once that each drop a surplus copy do not take each other's copy for the
/// whole one that stays: the copy that stays (damaged here) is read, made again from a
/// draining one, and only then are both dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drains_do_not_vouch_for_each_others_copies() {
    let dir = tempfile::tempdir().unwrap();
    // One copy now stands for R; drive 0's, the one that stays, is damaged.
    let (engine, body) = surplus_copies_damaged(dir.path(), 4, &[0], 1).await;
    engine.drain("zns-file://drive1").await.unwrap();
    engine.drain("zns-file://drive2").await.unwrap();
    until_repair(&engine, "the drains did not finish", 60, |s| {
        s.draining_bytes == 0 && s.copies_dropped > 0 && s.blocked.is_none()
    })
    .await;
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    engine.shutdown().await;
}

/// A GET that meets a damaged copy (it fails over to a good one) hands the copy to repair,
/// which makes it again from a good copy at once, not at the next weekly scrub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_a_read_meets_is_made_again() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives, body, holders) = one_object_in_two_copies(dir.path(), "read").await;
    let write = |copy, bytes: &[u8]| write_at(&drives, copy, bytes);
    let probe = &body[5000..5064];
    // Damage the copy reads prefer: whichever one a GET then meets (the other is left whole).
    let mut damaged = None;
    let crc_errors = || engine.stats().crc_errors.load(Ordering::Relaxed);
    for &copy in &holders {
        write(copy, &[0xFF; 64]);
        let before = crc_errors();
        assert_eq!(get(&engine, "b", "read").await.unwrap(), body);
        if crc_errors() > before {
            damaged = Some((copy, before));
            break;
        }
        write(copy, probe);
    }
    let (_, before) = damaged.expect("no GET met the damaged copy");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while engine.repair().status().scrub_repaired == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged copy was not made again: {:?}",
            engine.repair().status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One damaged copy, counted once: not again when repair read it to be sure.
    assert_eq!(crc_errors(), before + 1);
    // Its new copy counts as repair's writing, not GC's (GC is off here).
    let written = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    assert!(written(&engine.stats().repair_written) > 0);
    assert_eq!(written(&engine.stats().gc_written), 0);
    // Reads no longer meet damage.
    let before = engine.stats().crc_errors.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(get(&engine, "b", "read").await.unwrap(), body);
    }
    assert_eq!(engine.stats().crc_errors.load(Ordering::Relaxed), before);
}

/// The same for a copy whose damage is not a CRC mismatch: its header's magic is gone (as
/// zeros or another record would read), so it is not a record at all. A read fails over and
/// hands it to repair too, rather than leave it for the weekly scrub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_a_read_finds_no_record_in_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives, body, holders) = one_object_in_two_copies(dir.path(), "magic").await;
    // The data record's first block holds its header and the body's first bytes: the probe,
    // 5000 bytes into the body, lies in its second block.
    let record_start = |at: usize| (at - 5000) / 4096 * 4096;
    let mut repaired = false;
    for &(drive, at) in &holders {
        let start = (drive, record_start(at));
        let original = {
            let all = std::fs::read(drives[drive].data_path()).unwrap();
            all[start.1..start.1 + 8].to_vec()
        };
        write_at(&drives, start, &[0u8; 8]);
        assert_eq!(get(&engine, "b", "magic").await.unwrap(), body);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline && engine.repair().status().scrub_repaired == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if engine.repair().status().scrub_repaired > 0 {
            repaired = true;
            break;
        }
        // Not the copy reads went to: put it back, damage the other.
        write_at(&drives, start, &original);
    }
    assert!(
        repaired,
        "the copy a read found no record in was not made again: {:?}",
        engine.repair().status()
    );
    for _ in 0..3 {
        assert_eq!(get(&engine, "b", "magic").await.unwrap(), body);
    }
}

/// Draining a drive moves a record off it even when the record's other copy is damaged: the
/// copy on the draining drive, still readable, is the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_copies_from_the_drive_it_empties_when_that_copy_is_the_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives, body, holders) = one_object_in_two_copies(dir.path(), "only").await;
    let probe = &body[5000..5064];
    let damaged = holders[0].0;
    let drained = holders[1].0;
    write_at(&drives, holders[0], &[0xFF; 64]);

    let passes_before = engine.repair().status().passes;
    engine
        .drain(&format!("zns-file://drive{drained}"))
        .await
        .unwrap();
    // A pass since the drain copied what was on the drive, and nothing is left there.
    until_repair(&engine, "the drain did not finish", 30, |s| {
        s.passes > passes_before
            && s.copies_made >= 1
            && s.draining_bytes == 0
            && s.blocked.is_none()
    })
    .await;
    let third = 3 - damaged - drained;
    let copied = std::fs::read(drives[third].data_path()).unwrap();
    assert!(
        copied.windows(64).any(|w| w == probe),
        "the record now has a copy on the third drive"
    );
    // The damaged copy the drain met first is made again from a good one (before any read
    // meets it), not left counted as a copy until a scrub.
    until_repair(&engine, "the damaged copy was not made again", 30, |s| {
        s.scrub_bad >= 1 && s.scrub_repaired >= 1
    })
    .await;
    let remade = std::fs::read(drives[damaged].data_path()).unwrap();
    assert!(
        remade.windows(64).any(|w| w == probe),
        "a good copy is back on the drive of the damaged one"
    );
    assert_eq!(get(&engine, "b", "only").await.unwrap(), body);
}

/// A scrub pass (days long on a big store) does not hold repair up: a drain finishes while one
/// runs, and the engine still shuts down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_while_a_scrub_pass_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _drives) = open_engine(dir.path(), 3, small_geometry(16, 1 << 20), |c| {
        c.replicas = 2;
        c.write_quorum = 2;
        c.gc.enabled = false;
        // A byte a second: the pass outlasts the test.
        c.repair.scrub_rate_bytes_per_sec = 1;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    // Enough objects that the drained drive holds copies of some.
    let bodies: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let key = format!("k{i}");
            let body = content(&key, i, 30_000);
            (key, body)
        })
        .collect();
    for (key, body) in &bodies {
        put(&engine, "b", key, body).await.unwrap();
    }
    // The pass every engine makes as it opens is over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.repair().status().passes == 0 {
        assert!(std::time::Instant::now() < deadline, "no first repair pass");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    engine.repair().scrub();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !engine.repair().status().scrub_running {
        assert!(std::time::Instant::now() < deadline, "no scrub pass began");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let passes_before = engine.repair().status().passes;
    engine.drain("zns-file://drive0").await.unwrap();
    until_repair(
        &engine,
        "the drain did not finish while the scrub ran",
        30,
        |s| {
            s.passes > passes_before
                && s.copies_made > 0
                && s.draining_bytes == 0
                && s.blocked.is_none()
        },
    )
    .await;
    assert!(
        engine.repair().status().scrub_running,
        "the scrub pass ended"
    );
    for (key, body) in &bodies {
        assert_eq!(&get(&engine, "b", key).await.unwrap(), body);
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), engine.shutdown())
        .await
        .expect("a scrub pass waiting on its rate does not hold the shutdown up");
}

/// A bucket is deleted for its owner only, as checked with the deletion: one deleted and made
/// again by someone else since the caller looked it up is theirs, and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_is_deleted_only_for_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _drives) = open_engine(dir.path(), 1, small_geometry(16, 1 << 20), |_| {}).await;
    engine.create_bucket("x", "bob").await.unwrap();
    assert!(matches!(
        engine.delete_bucket_of("x", "alice").await,
        Err(EngineError::NotOwner(_))
    ));
    assert_eq!(engine.bucket("x").unwrap().owner, "bob");
    engine.delete_bucket_of("x", "bob").await.unwrap();
    assert!(engine.bucket("x").is_err());
}

/// Zones whose capacity is below the drive's append limit take records no larger than a zone
/// holds: a large object is stored and read back, not refused as out of space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_fit_zones_smaller_than_the_append_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = small_geometry(16, 1 << 20);
    g.max_append_blocks = 64;
    g.zone_capacity = 32;
    let (engine, _drives) = open_engine(dir.path(), 1, g, |c| c.gc.enabled = false).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = content("big", 3, 1 << 20);
    put(&engine, "b", "big", &body).await.unwrap();
    assert_eq!(get(&engine, "b", "big").await.unwrap(), body);
}

/// A drive is drained only once nothing is on its way to it either: a large upload that put
/// records there before the drain began, not yet committed, keeps it draining through repair
/// passes that find nothing left there, until the upload ends and its records are moved off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_is_not_drained_while_an_upload_placed_before_the_drain_is_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives) = open_engine(dir.path(), 2, small_geometry(16, 1 << 20), |c| {
        c.replicas = 1;
        c.write_quorum = 1;
        c.gc.enabled = false;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = content("big", 7, 1 << 20);
    let mut writer = engine.put("b", "big").unwrap();
    for chunk in body.chunks(100 << 10) {
        writer
            .write(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    // The drive that took some of its records (striped over both).
    let probes: Vec<&[u8]> = (0..16)
        .map(|i| &body[i * 65_000..i * 65_000 + 64])
        .collect();
    let holds = |d: &zns::EmulatedZns| {
        let file = std::fs::read(d.data_path()).unwrap();
        probes.iter().any(|p| file.windows(64).any(|w| w == *p))
    };
    let target = (0..2).find(|&i| holds(&drives[i])).expect("records landed");
    let name = format!("zns-file://drive{target}");
    let drive = engine
        .drives()
        .all()
        .iter()
        .find(|d| d.name == name)
        .unwrap()
        .clone();
    engine.drain(&name).await.unwrap();
    // A repair pass begun since the drain finds nothing to move: the index names nothing there.
    let began_after = drive
        .drain_began_after_pass
        .load(std::sync::atomic::Ordering::SeqCst);
    until_repair(&engine, "no pass since the drain", 30, |s| {
        s.passes > began_after && s.draining_bytes == 0
    })
    .await;
    assert_eq!(engine.live_bytes()[target], 0);
    assert!(
        !engine.drained(&drive),
        "drained while the upload's records there are not in the index"
    );
    let meta = ObjectMeta {
        etag: "big".into(),
        owner: "tester".into(),
        ..ObjectMeta::default()
    };
    writer.finish_object(meta, Condition::None).await.unwrap();
    assert!(
        !engine.drained(&drive),
        "drained holding the object's records"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !engine.drained(&drive) {
        assert!(
            std::time::Instant::now() < deadline,
            "never drained: {:?} {:?}",
            engine.repair().status(),
            engine.live_bytes()
        );
        engine.repair().nudge();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(engine.live_bytes()[target], 0);
    assert_eq!(get(&engine, "b", "big").await.unwrap(), body);
}

/// A rebuild makes what it reads durable before the index names it: a target keeps (and
/// reports) what a killed server appended but never flushed, and would lose it at its own
/// restart, leaving the rebuilt index pointing past the write pointer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_flushes_what_it_reads() {
    use zns::ZonedDevice;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let drive = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let mut intercepted = zns::testing::Intercepted::new(std::sync::Arc::new(drive.clone()));
    intercepted.lost_flushes = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(intercepted),
        gc_by_hand,
    )
    .await;
    put(&engine, "b", "k", &content("k", 1, 30_000))
        .await
        .unwrap();
    engine.shutdown().await;
    let write_pointers =
        |report: zns::ZoneReport| -> Vec<u64> { report.zones.iter().map(|z| z.wp).collect() };
    let before = write_pointers(
        drive
            .report_zones(0, zns::ReportFilter::All, 16)
            .await
            .unwrap(),
    );
    zonestore::engine::recovery::rebuild(
        &dir.path().join("rebuilt"),
        drive_specs(std::slice::from_ref(&drive)),
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap();
    drive.simulate_power_loss().await;
    let after = write_pointers(
        drive
            .report_zones(0, zns::ReportFilter::All, 16)
            .await
            .unwrap(),
    );
    assert_eq!(
        after, before,
        "what the rebuild read was lost at the target's restart"
    );
}

/// A completion's end record goes in the same append as its commit record, on every drive:
/// an end record durable on a drive where its commit record is not (a flush of another write's
/// drives, then a crash) would be taken by a replay or rebuild for an abort, and the upload's
/// parts lost with a completion the client never heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completions_end_record_follows_its_commit_record_on_every_drive() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives) = open_engine(dir.path(), 4, small_geometry(32, 1 << 20), |c| {
        c.gc.enabled = false;
        c.replicas = 3;
        c.write_quorum = 3;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    for round in 0..4u64 {
        let key = format!("big{round}");
        let id = engine
            .create_upload("b", &key, ObjectMeta::default())
            .await
            .unwrap();
        let mut w = engine.put_part(id, 1).unwrap();
        w.write(bytes::Bytes::from(content(&key, round, 3000)))
            .await
            .unwrap();
        let etag = format!("{:032x}", round + 1);
        w.finish_part(etag.clone(), vec![]).await.unwrap();
        engine
            .complete_upload(id, &[(1, etag)], None, Condition::None)
            .await
            .unwrap();
    }
    engine.shutdown().await;
    let mut ends = 0;
    for drive in &drives {
        let all = std::fs::read(drive.data_path()).unwrap();
        let headers: Vec<(usize, u8)> = (0..all.len().saturating_sub(8))
            .step_by(4096)
            .filter(|&at| &all[at..at + 4] == b"ZSR1")
            .map(|at| (at, all[at + 5]))
            .collect();
        for (i, &(at, kind)) in headers.iter().enumerate() {
            if kind == 7 {
                ends += 1;
                assert!(
                    i > 0 && headers[i - 1].1 == 2,
                    "the end record at {at} of {} does not follow a commit record",
                    drive.data_path().display()
                );
            }
        }
    }
    assert_eq!(ends, 4 * 3, "every end record, on each of its 3 drives");
}

/// A completion appends the object's commit record, then the upload's end record: if the
/// server stops between the two, the rebuild restores the completed object alone, not also an
/// open upload owning the same parts (a retried completion or an abort would then take the
/// object's data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_without_its_end_record_rebuilds_as_the_object_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives) = open_engine(dir.path(), 1, small_geometry(64, 1 << 20), |c| {
        c.gc.enabled = false;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    let id = engine
        .create_upload("b", "big", ObjectMeta::default())
        .await
        .unwrap();
    let mut etags = Vec::new();
    for (i, size) in [5usize << 20, 777].into_iter().enumerate() {
        let mut w = engine.put_part(id, i as u32 + 1).unwrap();
        w.write(bytes::Bytes::from(content("big", i as u64, size)))
            .await
            .unwrap();
        let etag = format!("{:032x}", i + 1);
        w.finish_part(etag.clone(), vec![]).await.unwrap();
        etags.push((i as u32 + 1, etag));
    }
    engine
        .complete_upload(id, &etags, None, Condition::None)
        .await
        .unwrap();
    // Unmake the end record: as if it had never reached the drive.
    let path = drives[0].data_path();
    unmake_the_upload_end_record(&path);
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
}

/// Zeroes the start of the one upload end record in the drive file at `path` (4 KiB blocks),
/// as if it had never reached the drive.
fn unmake_the_upload_end_record(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let all = std::fs::read(path).unwrap();
    let ends: Vec<usize> = (0..all.len().saturating_sub(8))
        .step_by(4096)
        .filter(|&at| &all[at..at + 4] == b"ZSR1" && all[at + 5] == 7)
        .collect();
    assert_eq!(ends.len(), 1, "one upload end record");
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[0u8; 8], ends[0] as u64).unwrap();
}

/// A completion whose commit record landed but whose end record did not (the two go apart
/// when the commit record is large), cut short before its index change: never acknowledged,
/// it is rolled back at the next start (the upload stays open, the key's earlier version
/// stays), and a rebuild agrees, before and after the key changes (it restored the upload
/// beside a completed object's data, or took the rolled-back completion for the newest
/// version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_cut_short_between_its_records_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let (engine, _) = open_engine(dir.path(), 1, g, no_gc).await;
    engine.create_bucket("b", "alice").await.unwrap();
    // A version before the upload's: it holds the name the whole time.
    put(&engine, "b", "big", b"first").await.unwrap();
    // Metadata enough that the commit record and the end record do not fit one append.
    let meta = ObjectMeta {
        user_meta: vec![("big".into(), "x".repeat(62 << 10))],
        ..ObjectMeta::default()
    };
    let id = engine.create_upload("b", "big", meta).await.unwrap();
    let mut w = engine.put_part(id, 1).unwrap();
    w.write(bytes::Bytes::from(content("big", 1, 777)))
        .await
        .unwrap();
    let etag = format!("{:032x}", 1);
    w.finish_part(etag.clone(), vec![]).await.unwrap();
    engine.shutdown().await;
    let index = dir.path().join("index");
    let before = dir.path().join("index-before");
    copy_dir(&index, &before);

    let (engine, drives) = open_engine(dir.path(), 1, g, no_gc).await;
    engine
        .complete_upload(id, &[(1, etag)], None, Condition::None)
        .await
        .unwrap();
    engine.shutdown().await;
    // The end record never reached the drive, nor the change the index.
    let path = drives[0].data_path();
    drop(drives);
    unmake_the_upload_end_record(&path);
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::rename(&before, &index).unwrap();

    let (engine, drives) = open_engine(dir.path(), 1, g, no_gc).await;
    assert_eq!(get(&engine, "b", "big").await.unwrap(), b"first");
    assert!(engine.upload(id).is_ok(), "the upload is still open");
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
    engine.delete("b", "big").await.unwrap();
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt-after").await;
}

/// A writer whose client goes away while its change waits in the committer keeps the name's
/// lock until the change is applied: the next conditional writer then sees it, and is refused
/// before appending a record a rebuild would take for the newest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_keeps_its_name_locked_until_its_change_is_applied() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(32, 1 << 20);
    let inner = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let flushing = Arc::new(tokio::sync::Notify::new());
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner.clone()));
    drive.before_flush = Box::new({
        let (slow, flushing) = (slow.clone(), flushing.clone());
        move || {
            let slow = slow.load(Ordering::SeqCst);
            if slow {
                flushing.notify_one();
            }
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Ok(())
            })
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        |_| {},
    )
    .await;

    slow.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { put_if(&engine, "b", "k", b"first", Condition::IfNoneMatchAny).await }
    });
    // The first writer's change is in the committer (its flush began): its client goes.
    flushing.notified().await;
    first.abort();
    let second = put_if(&engine, "b", "k", b"second", Condition::IfNoneMatchAny).await;
    slow.store(false, Ordering::SeqCst);
    assert!(
        matches!(
            second,
            Err(EngineError::PreconditionFailed("If-None-Match"))
        ),
        "{second:?}"
    );
    assert_eq!(get(&engine, "b", "k").await.unwrap(), b"first");
    assert_rebuild_equals_live(&engine, &[inner], dir.path(), "rebuilt").await;
}

/// A PUT whose drive was reconnected between its appends and their flush (the target may have
/// restarted and lost them; the flush then went to the new incarnation) is not acknowledged;
/// the next one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_target_reconnected_before_its_flush_is_not_acknowledged() {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use zns::ZonedDevice;
    const NQN: &str = "nqn.2026-01.io.zonestore:restarting";
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let drive = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let target = fabric::target::Target::new(fabric::target::TargetConfig::default());
    target
        .add_subsystem(NQN, Arc::new(drive.clone()), vec![])
        .unwrap();
    let listening = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr: SocketAddr = listening.local_addr();
    let listening = Arc::new(parking_lot::Mutex::new(Some(listening)));
    let host = fabric::host::NvmeTcpHost::connect(fabric::host::HostConfig::new(addr, NQN))
        .await
        .unwrap();
    // Armed, the next flush first restarts the target and waits for the host to reconnect.
    let restart = Arc::new(AtomicBool::new(false));
    let mut wrapped = zns::testing::Intercepted::new(Arc::new(host.clone()));
    wrapped.before_flush = Box::new({
        let (restart, host, target, listening) = (
            restart.clone(),
            host.clone(),
            target.clone(),
            listening.clone(),
        );
        move || {
            let armed = restart.swap(false, Ordering::SeqCst);
            let (host, target, listening) = (host.clone(), target.clone(), listening.clone());
            Box::pin(async move {
                if !armed {
                    return Ok(());
                }
                let before = host.session();
                if let Some(old) = listening.lock().take() {
                    old.shutdown();
                }
                let again = loop {
                    match target.listen(addr).await {
                        Ok(handle) => break handle,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                    }
                };
                *listening.lock() = Some(again);
                while host.session() == before || !host.is_available() {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Ok(())
            })
        }
    });
    let engine = engine_on(
        dir.path(),
        &format!("nqn:{NQN}"),
        std::sync::Arc::new(wrapped),
        |_| {},
    )
    .await;

    restart.store(true, Ordering::SeqCst);
    let lost = put(&engine, "b", "k", b"maybe lost").await;
    assert!(matches!(lost, Err(EngineError::Unavailable(_))), "{lost:?}");
    assert!(engine.head("b", "k").is_err(), "not visible");
    put(&engine, "b", "k", b"again").await.unwrap();
    assert_eq!(get(&engine, "b", "k").await.unwrap(), b"again");
}

/// A part uploaded again whose newer data is gone (never acknowledged: the server stopped
/// before the index took it, and GC took the data) rebuilds as its older, whole version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_newer_version_lacks_its_data_rebuilds_as_the_older_one() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (engine, drives) = open_engine(dir.path(), 1, small_geometry(64, 1 << 20), |c| {
        c.gc.enabled = false;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    let id = engine
        .create_upload("b", "parts", ObjectMeta::default())
        .await
        .unwrap();
    let newer = content("newer", 2, 50_000);
    for (body, etag) in [
        (content("older", 1, 50_000), "aa".repeat(16)),
        (newer.clone(), "bb".repeat(16)),
    ] {
        let mut w = engine.put_part(id, 1).unwrap();
        w.write(bytes::Bytes::from(body)).await.unwrap();
        w.finish_part(etag, vec![]).await.unwrap();
    }
    // The newer version's data is damaged on the drive.
    let path = drives[0].data_path();
    let all = std::fs::read(&path).unwrap();
    let at = all
        .windows(64)
        .position(|w| w == &newer[20_000..20_064])
        .expect("the newer data is on the drive");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xEE; 64], at as u64).unwrap();
    drop(file);

    let rebuilt_dir = dir.path().join("rebuilt");
    zonestore::engine::recovery::rebuild(
        &rebuilt_dir,
        drive_specs(&drives),
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap();
    let dump = zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(&rebuilt_dir).unwrap(),
    )
    .unwrap();
    let parts: Vec<&String> = dump.iter().filter(|l| l.contains("aaaa")).collect();
    assert_eq!(parts.len(), 1, "the older part is restored: {dump:#?}");
    assert!(!dump.iter().any(|l| l.contains("bbbb")), "{dump:#?}");
}

/// A record GC moved off a zone it then could not reset (the drive made it read-only) is on
/// its drive twice: a rebuild takes the newer copy, which the index names, and the rebuilt
/// index equals the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_takes_the_moved_copy_of_a_record_left_twice_on_its_drive() {
    use zns::testing::Backdoor;
    use zonestore::engine::placement::ZoneUse;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(32, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let keep = content("keep", 3, 10_000);
    put(&engine, "b", "keep", &keep).await.unwrap();
    let commit_of = |engine: &zonestore::engine::Engine| {
        engine
            .object_entries()
            .unwrap()
            .into_iter()
            .find(|(_, e)| e.meta.size == 10_000)
            .map(|(_, e)| e.commit)
            .unwrap()
    };
    let before = commit_of(&engine);
    let keep_zone = (before[0].lba / g.zone_size) as u32;
    // Filler until the record's zone is full, then deleted: the zone is mostly garbage.
    let filler = content("f", 1, 30 << 10);
    let mut n = 0;
    while zone_row(&engine, keep_zone).usage != ZoneUse::Sealed {
        put(&engine, "b", &format!("f{n}"), &filler).await.unwrap();
        n += 1;
        assert!(n < 200, "the zone never filled");
    }
    for k in 0..n {
        engine.delete("b", &format!("f{k}")).await.unwrap();
    }
    drives[0]
        .make_read_only(g.zone_start(keep_zone))
        .await
        .unwrap();
    engine.gc().set_watermarks(0.9, 0.95);
    engine.gc().start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while commit_of(&engine) == before || zone_row(&engine, keep_zone).usage != ZoneUse::Bad {
        assert!(
            std::time::Instant::now() < deadline,
            "GC never moved the record off the zone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    engine.gc().stop();
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
    assert_eq!(get(&engine, "b", "keep").await.unwrap(), keep);
}

/// A zone that turns read-only under an append (the drive's doing) costs that append only: the
/// record is appended again to another zone of the same drive, for a client's write and for
/// GC's move alike, even where that drive is the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_to_a_zone_gone_read_only_is_made_again_in_another_zone() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use zns::testing::Backdoor;
    use zonestore::engine::placement::ZoneUse;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let inner = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let spoil_next = Arc::new(AtomicBool::new(false));
    let spoiled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner.clone()));
    drive.before_append = Box::new({
        let (inner, spoil_next, spoiled) = (inner.clone(), spoil_next.clone(), spoiled.clone());
        move |zslba, _, _| {
            let spoil = spoil_next.swap(false, Ordering::SeqCst);
            let (inner, spoiled) = (inner.clone(), spoiled.clone());
            Box::pin(async move {
                if spoil {
                    inner.make_read_only(zslba).await.unwrap();
                    spoiled.lock().unwrap().push((zslba / g.zone_size) as u32);
                }
            })
        }
    });
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), gc_by_hand).await;

    // A client's write.
    let kept = content("kept", 1, 20_000);
    spoil_next.store(true, Ordering::SeqCst);
    put(&engine, "b", "kept", &kept).await.unwrap();
    let first = spoiled.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "the test spoiled a zone under the write");
    assert_eq!(zone_row(&engine, first[0]).usage, ZoneUse::Bad);
    assert_eq!(get(&engine, "b", "kept").await.unwrap(), kept);

    // GC's move: filler fills the kept object's zone, then goes.
    let zone_of_kept = |engine: &zonestore::engine::Engine| {
        engine
            .object_entries()
            .unwrap()
            .into_iter()
            .find(|(_, e)| e.meta.size == 20_000)
            .map(|(_, e)| (e.commit[0].lba / g.zone_size) as u32)
            .unwrap()
    };
    let victim = zone_of_kept(&engine);
    let filler = content("f", 1, 30 << 10);
    let mut n = 0;
    while zone_row(&engine, victim).usage != ZoneUse::Sealed {
        put(&engine, "b", &format!("f{n}"), &filler).await.unwrap();
        n += 1;
        assert!(n < 200, "the zone never filled");
    }
    for k in 0..n {
        engine.delete("b", &format!("f{k}")).await.unwrap();
    }
    spoil_next.store(true, Ordering::SeqCst);
    let mut rounds = 0;
    while zone_row(&engine, victim).usage == ZoneUse::Sealed {
        engine.inner().collect_now().await.unwrap();
        rounds += 1;
        assert!(rounds < 20, "GC never collected the kept object's zone");
    }
    assert_eq!(
        spoiled.lock().unwrap().len(),
        2,
        "the test spoiled a zone under GC"
    );
    assert_ne!(zone_of_kept(&engine), victim, "GC moved the object");
    assert_eq!(get(&engine, "b", "kept").await.unwrap(), kept);
    engine.shutdown().await;
}

/// A drive is named in full, or by the end of its name when no other drive shares it: an
/// ambiguous name is refused, never taken for the first drive it fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_drive_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(8, 1 << 20);
    let specs: Vec<zonestore::engine::DriveSpec> = ["nqn.2026-01.a:disk", "nqn.2026-01.b:disk"]
        .iter()
        .enumerate()
        .map(|(i, nqn)| zonestore::engine::DriveSpec {
            name: format!("nqn:{nqn}"),
            device: std::sync::Arc::new(
                zns::EmulatedZns::create(&dir.path().join(format!("d{i}")), g).unwrap(),
            ),
        })
        .collect();
    let config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 2);
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    let ambiguous = engine.undrain("disk").await;
    assert!(
        matches!(&ambiguous, Err(EngineError::InvalidArgument(m)) if m.contains("could be any")),
        "{ambiguous:?}"
    );
    engine.undrain("nqn.2026-01.a:disk").await.unwrap();
    engine.undrain("nqn:nqn.2026-01.b:disk").await.unwrap();
}

/// An engine (index under `dir`) over the three drives `specs`, R = 3 and W = 2, with bucket `b`
/// (owned by alice) created.
async fn three_copies_over(
    dir: &std::path::Path,
    specs: Vec<zonestore::engine::DriveSpec>,
) -> zonestore::engine::Engine {
    copies_over(dir, specs, 3, 2).await
}

/// An engine (index under `dir`) over the drives `specs`, with `replicas` copies of every record
/// and a write quorum of `write_quorum`, with bucket `b` (owned by alice) created.
async fn copies_over(
    dir: &std::path::Path,
    specs: Vec<zonestore::engine::DriveSpec>,
    replicas: usize,
    write_quorum: usize,
) -> zonestore::engine::Engine {
    let mut config = zonestore::engine::EngineConfig::new(dir.join("index"), specs.len());
    config.replicas = replicas;
    config.write_quorum = write_quorum;
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    engine
}

/// Copies a repair pass made but could not record (the drive they went to failed its flush)
/// end neither the pass nor repair: the pass goes on and says why it is not done, and the next
/// one makes them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_pass_whose_copies_cannot_be_recorded_goes_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    // Flushes drive 2 still fails (usize::MAX: all of them).
    let failures = Arc::new(AtomicUsize::new(usize::MAX));
    let specs = intercepted_specs(dir.path(), 3, g, |i, _, drive| {
        if i == 2 {
            let failures = failures.clone();
            drive.before_flush = Box::new(move || {
                let fail = failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                flush_refused_if(fail)
            });
        }
    });
    let engine = three_copies_over(dir.path(), specs).await;
    // Written with two copies each (drive 2 cannot make its copies durable).
    let bodies: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("k{i}"), content(&format!("k{i}"), i, 20_000)))
        .collect();
    for (key, body) in &bodies {
        put(&engine, "b", key, body).await.unwrap();
    }
    // Drive 2 flushes again, but for one more failure: the first recording of repair's copies.
    let passes = engine.repair().status().passes;
    failures.store(1, Ordering::SeqCst);
    until_repair(
        &engine,
        "no pass ended with its copies unrecorded",
        30,
        |s| {
            s.passes > passes
                && s.blocked
                    .as_deref()
                    .is_some_and(|b| b.contains("recording"))
        },
    )
    .await;
    until_repair(&engine, "the copies were not made again", 60, |s| {
        s.under_replicated_records == 0 && s.blocked.is_none()
    })
    .await;
    for (key, body) in &bodies {
        assert_eq!(&get(&engine, "b", key).await.unwrap(), body);
    }
}

/// With R = 3 and W = 2, a PUT whose copy on one drive cannot be flushed is acknowledged with
/// the two copies that were (repair makes the third); with two such drives it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_acknowledged_when_a_write_quorum_of_its_copies_is_flushed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let mut failing = Vec::new();
    let specs = intercepted_specs(dir.path(), 3, g, |_, _, drive| {
        let fail = Arc::new(AtomicBool::new(false));
        drive.before_flush = Box::new({
            let fail = fail.clone();
            move || {
                let fail = fail.load(Ordering::SeqCst);
                flush_refused_if(fail)
            }
        });
        failing.push(fail);
    });
    let engine = three_copies_over(dir.path(), specs).await;
    let copies = |engine: &zonestore::engine::Engine, key: &str| {
        engine
            .object_entries()
            .unwrap()
            .into_iter()
            .find(|(name, _)| name.ends_with(key.as_bytes()))
            .map(|(_, e)| e.commit.len())
    };

    failing[2].store(true, Ordering::SeqCst);
    let body = content("two", 1, 100_000);
    put(&engine, "b", "two", &body).await.unwrap();
    assert_eq!(copies(&engine, "two"), Some(2));
    assert_eq!(get(&engine, "b", "two").await.unwrap(), body);
    // The commit record left out may still be on the third drive: the entry hides its zone
    // (or a rebuild, once the name is deleted and its zones reset, would restore it).
    let entry = object_entry(&engine, "two");
    assert!(
        entry.shadowed.iter().any(|s| s.zone.drive == 2),
        "{:?}",
        entry.shadowed
    );

    failing[1].store(true, Ordering::SeqCst);
    let refused = put(&engine, "b", "one", b"x").await;
    assert!(
        matches!(refused, Err(EngineError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(copies(&engine, "one"), None);
}

/// With R = 3 and W = 2, a PUT whose append to one drive reports failure although it landed
/// (its completion lost on the way back) is acknowledged with the two copies it knows of, and
/// its entry hides the zone the third may be in: once the name is deleted and the zones of its
/// known copies are reset, a replay or rebuild would otherwise take that copy for the current
/// version and bring the object back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_append_reported_failure_is_hidden_by_its_entry() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let lose_next = Arc::new(AtomicBool::new(false));
    let specs = intercepted_specs(dir.path(), 3, g, |i, _, drive| {
        if i == 2 {
            // The commit record's append (kind byte 2) is the one that is lost: a copy of the
            // record that claims the name.
            let losing = Arc::new(AtomicBool::new(false));
            drive.before_append = Box::new({
                let (lose_next, losing) = (lose_next.clone(), losing.clone());
                move |_, _, data| {
                    if data.get(5) == Some(&2) && lose_next.swap(false, Ordering::SeqCst) {
                        losing.store(true, Ordering::SeqCst);
                    }
                    Box::pin(std::future::ready(()))
                }
            });
            drive.after_append = Box::new({
                let losing = losing.clone();
                move |_, result| {
                    let lose = losing.swap(false, Ordering::SeqCst);
                    Box::pin(async move {
                        if lose && result.is_ok() {
                            Err(zns::ZoneError::Unavailable("completion lost".into()))
                        } else {
                            result
                        }
                    })
                }
            });
        }
    });
    let engine = three_copies_over(dir.path(), specs).await;
    lose_next.store(true, Ordering::SeqCst);
    let body = content("stray", 1, 100_000);
    put(&engine, "b", "stray", &body).await.unwrap();
    assert!(!lose_next.load(Ordering::SeqCst), "the test lost no append");
    let entry = object_entry(&engine, "stray");
    assert!(
        entry.commit.len() == 2 && entry.commit.iter().all(|l| l.drive != 2),
        "{:?}",
        entry.commit
    );
    assert!(
        entry.shadowed.iter().any(|s| s.zone.drive == 2),
        "the zone the lost copy landed in is not hidden: {:?}",
        entry.shadowed
    );
    assert_eq!(get(&engine, "b", "stray").await.unwrap(), body);
    engine.shutdown().await;
}

/// GC's copy of an object's records whose append reports failure although it landed (its
/// completion lost on the way back) is an orphan: the object's entry hides the zone it landed
/// in. Once the object is deleted and the zones of its known copies are reset, a replay or
/// rebuild would otherwise take that copy for the current version and bring the object back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_copy_whose_append_reported_failure_is_hidden_by_its_entry() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let mut g = small_geometry(16, 256 << 10);
    // Few zones open at a time, so that the garbage fills the zone `kept` is in.
    g.max_open = Some(3);
    g.max_active = Some(3);
    let inner = drive0(dir.path(), g);
    let lose_next = Arc::new(AtomicBool::new(false));
    let lost_in = Arc::new(std::sync::Mutex::new(None::<u32>));
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    drive.after_append = Box::new({
        let (lose_next, lost_in) = (lose_next.clone(), lost_in.clone());
        move |_, result| {
            let lose = result.is_ok() && lose_next.swap(false, Ordering::SeqCst);
            if let (true, Ok(lba)) = (lose, &result) {
                *lost_in.lock().unwrap() = Some((lba / g.zone_size) as u32);
            }
            Box::pin(async move {
                if lose {
                    Err(zns::ZoneError::MediaError("completion lost".into()))
                } else {
                    result
                }
            })
        }
    });
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), gc_by_hand).await;
    let body = |k: &str| content(k, 1, 8 << 10);
    put(&engine, "b", "kept", &body("kept")).await.unwrap();
    for i in 0..80 {
        let key = format!("garbage-{i}");
        put(&engine, "b", &key, &body(&key)).await.unwrap();
    }
    for i in 0..80 {
        engine.delete("b", &format!("garbage-{i}")).await.unwrap();
    }

    // GC's first append (the group with `kept`'s records, all that is live in its zone) is
    // lost.
    lose_next.store(true, Ordering::SeqCst);
    // (Zones of garbage alone go first: nothing to copy.)
    for _ in 0..8 {
        let _ = engine.inner().collect_now().await;
        if lost_in.lock().unwrap().is_some() {
            break;
        }
    }
    let zone = lost_in.lock().unwrap().expect("GC appended a copy");
    let entry = object_entry(&engine, "kept");
    assert!(
        entry.shadowed.iter().any(|s| s.zone.zone == zone),
        "the zone GC's lost copy landed in ({zone}) is not hidden: {:?}",
        entry.shadowed
    );
    assert_eq!(get(&engine, "b", "kept").await.unwrap(), body("kept"));
    engine.shutdown().await;
}

/// A drive that reconnected (its target may have restarted and lost unflushed appends, the
/// write pointer of a zone gone back below what the index may record as settled) takes nothing
/// more in the zones its earlier appends went to: a record landing there could straddle that
/// prefix, and a replay would start reading inside it. Later records go to other zones, and
/// the old ones are retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_nothing_more_lands_in_zones_written_before() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use zonestore::engine::placement::ZoneUse;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let inner = drive0(dir.path(), g);
    let drive = zns::testing::Intercepted::new(inner);
    let session = drive.session_offset.clone();
    let engine = engine_on(dir.path(), "zns-file://drive0", Arc::new(drive), gc_by_hand).await;
    for i in 0..6 {
        let key = format!("before-{i}");
        put(&engine, "b", &key, &content(&key, 1, 20_000))
            .await
            .unwrap();
    }
    let written_before: Vec<u32> = engine
        .zone_table()
        .into_iter()
        .filter(|r| matches!(r.usage, ZoneUse::Active(_)) && r.written_bytes > 0)
        .map(|r| r.zone)
        .collect();
    assert!(!written_before.is_empty());

    session.fetch_add(1, Ordering::SeqCst);
    for i in 0..6 {
        let key = format!("after-{i}");
        put(&engine, "b", &key, &content(&key, 1, 20_000))
            .await
            .unwrap();
    }
    for (name, entry) in engine.object_entries().unwrap() {
        if !name.windows(6).any(|w| w == b"after-") {
            continue;
        }
        for copy in &entry.commit {
            let zone = (copy.lba / g.zone_size) as u32;
            assert!(
                !written_before.contains(&zone),
                "a record after the reconnect landed in zone {zone}, written before it"
            );
        }
    }
    for row in engine.zone_table() {
        if written_before.contains(&row.zone) {
            assert!(
                !matches!(row.usage, ZoneUse::Active(_)),
                "zone {} still takes writes: {row:?}",
                row.zone
            );
        }
    }
    for i in 0..6 {
        for key in [format!("before-{i}"), format!("after-{i}")] {
            assert_eq!(
                get(&engine, "b", &key).await.unwrap(),
                content(&key, 1, 20_000)
            );
        }
    }
    engine.shutdown().await;
}

/// Replay applies a change naming records it read from a drive only if the drive kept its
/// session until the change's flush: a target that restarted in between may have lost what was
/// past its durable point. The change is left for the next replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_does_not_count_records_read_before_their_drive_reconnected() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use zonestore::engine::{DriveSpec, Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let inner = drive0(dir.path(), g);
    let open = |device: Arc<dyn zns::ZonedDevice>| {
        let mut config = EngineConfig::new(dir.path().join("index"), 1);
        gc_by_hand(&mut config);
        let specs = vec![DriveSpec {
            name: "zns-file://drive0".into(),
            device,
        }];
        async move { Engine::open(config, specs).await.unwrap() }
    };
    let (engine, _) = open(inner.clone()).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "kept", b"kept").await.unwrap();
    engine.shutdown().await;
    let (index, before) = (dir.path().join("index"), dir.path().join("index-before"));
    copy_dir(&index, &before);
    let (engine, _) = open(inner.clone()).await;
    put(&engine, "b", "replayed", b"replayed").await.unwrap();
    engine.shutdown().await;
    // The index change of the second write is lost.
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::rename(&before, &index).unwrap();

    // The drive reconnects at every flush while the engine opens.
    let mut drive = zns::testing::Intercepted::new(inner.clone());
    let (session, restarting) = (
        drive.session_offset.clone(),
        Arc::new(AtomicBool::new(true)),
    );
    let bump = restarting.clone();
    drive.before_flush = Box::new(move || {
        if bump.load(Ordering::SeqCst) {
            session.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(std::future::ready(Ok(())))
    });
    let (engine, reconciliation) = open(Arc::new(drive)).await;
    restarting.store(false, Ordering::SeqCst);
    assert!(
        reconciliation.replayed.records > 0,
        "the zone was read again"
    );
    assert!(
        !reconciliation.replayed.settled,
        "{:?}",
        reconciliation.replayed
    );
    assert!(
        matches!(
            get(&engine, "b", "replayed").await,
            Err(EngineError::NoSuchKey { .. })
        ),
        "a change read before the drive reconnected was applied"
    );
    assert_eq!(get(&engine, "b", "kept").await.unwrap(), b"kept");
    engine.shutdown().await;

    // Here the records were not lost after all: the next replay applies them.
    let (engine, _) = open(inner).await;
    assert_eq!(get(&engine, "b", "replayed").await.unwrap(), b"replayed");
    engine.shutdown().await;
}

/// Downloads whose clients stop reading hold read budget (the chunk being sent, and what was
/// read ahead), but never all of it: read-ahead takes budget only while half of it stays free.
/// Here 300 downloads of one object are left after their first chunk; every one of them got
/// it, and another GET still goes through at once (rather than waiting for budget, then
/// failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_do_not_starve_other_reads() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    // Records of at most 64 KiB: a stalled download without the rule would hold four.
    let g = small_geometry(16, 1 << 20);
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap()),
        gc_by_hand,
    )
    .await;
    let body = content("big", 1, 600_000);
    put(&engine, "b", "big", &body).await.unwrap();
    let mut stalled = Vec::new();
    for i in 0..300 {
        let handle = engine.open_object("b", "big").unwrap();
        let mut stream = handle.read(0..body.len() as u64).unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .unwrap_or_else(|_| panic!("download {i} waited for read budget the stalled ones hold"))
            .expect("a chunk")
            .expect("read");
        stalled.push((stream, first));
    }
    let fresh = tokio::time::timeout(std::time::Duration::from_secs(5), get(&engine, "b", "big"))
        .await
        .expect("a GET beside stalled downloads goes through")
        .unwrap();
    assert_eq!(fresh, body);
    drop(stalled);
    engine.shutdown().await;
}

/// Uploads whose clients pause (a byte now and then) let go of the write budget a whole
/// record would hold: the record being filled is sent on when the body pauses, and the rest
/// goes in records of one budget unit. Here 60 uploads of 1 MiB records pause after a byte,
/// more than the budget could hold a record each of, and another PUT still goes through at
/// once (rather than waiting for budget, then failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_uploads_do_not_starve_other_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = small_geometry(32, 4 << 20);
    g.max_append_blocks = 256;
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap()),
        gc_by_hand,
    )
    .await;
    let mut paused = Vec::new();
    for i in 0..60 {
        let mut w = engine.put("b", &format!("slow-{i}")).unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            w.write(bytes::Bytes::from_static(b"x")),
        )
        .await
        .unwrap_or_else(|_| panic!("upload {i} waited for write budget the paused ones hold"))
        .unwrap();
        w.idle().await.unwrap();
        paused.push(w);
    }
    let body = content("fresh", 1, 2 << 20);
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        put(&engine, "b", "fresh", &body),
    )
    .await
    .expect("a PUT beside paused uploads goes through")
    .unwrap();
    assert_eq!(get(&engine, "b", "fresh").await.unwrap(), body);
    // A paused upload goes on and completes whole.
    let mut w = paused.pop().unwrap();
    w.write(bytes::Bytes::from(vec![b'y'; 300_000]))
        .await
        .unwrap();
    w.finish_object(ObjectMeta::default(), Condition::None)
        .await
        .unwrap();
    let mut expected = b"x".to_vec();
    expected.extend(vec![b'y'; 300_000]);
    assert_eq!(get(&engine, "b", "slow-59").await.unwrap(), expected);
    drop(paused);
    engine.shutdown().await;
}

/// A client that sends a byte and pauses, over and over, does not get a record (padded to a
/// block, with its header) written per byte: once the upload holds the least budget a record
/// takes, a pause keeps the record being filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upload_is_not_written_a_record_per_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _drives) =
        open_engine(dir.path(), 1, small_geometry(16, 1 << 20), gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let written = || {
        engine
            .stats()
            .user_written
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = written();
    let mut w = engine.put("b", "trickled").unwrap();
    for _ in 0..200 {
        w.write(bytes::Bytes::from_static(b"t")).await.unwrap();
        w.idle().await.unwrap();
    }
    w.finish_object(ObjectMeta::default(), Condition::None)
        .await
        .unwrap();
    assert_eq!(
        get(&engine, "b", "trickled").await.unwrap(),
        vec![b't'; 200]
    );
    let appended = written() - before;
    assert!(
        appended <= 4 * 4096,
        "200 bytes sent with pauses took {appended} bytes on the drive"
    );
    engine.shutdown().await;
}

/// A bucket deleted and created again (here by another owner) while a PUT's body streams in
/// is another bucket: the PUT fails with NoSuchBucket rather than land in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_does_not_land_in_a_bucket_created_again_while_it_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open_engine(dir.path(), 1, small_geometry(16, 1 << 20), |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let mut writer = engine.put("b", "k").unwrap();
    writer
        .write(bytes::Bytes::from(content("k", 1, 300_000)))
        .await
        .unwrap();
    engine.delete_bucket("b").await.unwrap();
    engine.create_bucket("b", "bob").await.unwrap();
    let finished = writer
        .finish_object(ObjectMeta::default(), Condition::None)
        .await;
    assert!(
        matches!(finished, Err(EngineError::NoSuchBucket(_))),
        "{finished:?}"
    );
    assert!(
        engine.head("b", "k").is_err(),
        "nothing landed in bob's bucket"
    );
    // A PUT begun in the new bucket lands.
    put(&engine, "b", "k", b"bob's").await.unwrap();
    assert_eq!(get(&engine, "b", "k").await.unwrap(), b"bob's");
}

/// A PUT whose client goes away while its commit record is being appended still completes:
/// the record is committed, not left on the drive for a rebuild to believe while the index
/// never took it. A body of several records is appended before its commit record; a small one
/// goes with it, in one append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_abandoned_while_its_commit_record_is_written_still_commits() {
    // The commit record alone: one block.
    abandoned_while_committing(150_000, |record| record.len() <= 4096).await;
    // The body's record and the commit record, together: the one append.
    abandoned_while_committing(20_000, |_| true).await;
    // A body of one record too large to go with the commit record (the drive appends at most
    // 64 KiB): the commit record alone, after it.
    abandoned_while_committing(63_000, |record| record.len() <= 4096).await;
}

/// Puts a `length`-byte object, its client gone while the first append `stalls_on` picks (once
/// the PUT has begun) is in flight; checks the object committed all the same.
async fn abandoned_while_committing(length: usize, stalls_on: fn(&bytes::Bytes) -> bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(32, 1 << 20);
    let inner = zns::EmulatedZns::create(&dir.path().join("drive0"), g).unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let appending = Arc::new(tokio::sync::Notify::new());
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner.clone()));
    drive.before_append = Box::new({
        let (slow, appending) = (slow.clone(), appending.clone());
        move |_, _, record| {
            let stall = slow.load(Ordering::SeqCst) && stalls_on(record);
            if stall {
                appending.notify_one();
            }
            Box::pin(async move {
                if stall {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
            })
        }
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(drive),
        |_| {},
    )
    .await;
    slow.store(true, Ordering::SeqCst);
    let body = content("gone", 1, length);
    let request = tokio::spawn({
        let (engine, body) = (engine.clone(), body.clone());
        async move { put(&engine, "b", "k", &body).await }
    });
    appending.notified().await;
    request.abort();
    slow.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.head("b", "k").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the PUT of {length} bytes never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    assert_rebuild_equals_live(&engine, &[inner], dir.path(), "rebuilt").await;
}

/// Three drives (write quorum 2) holding bucket `b` and its object `before`, the engine that
/// wrote them shut down: the start of the tests of drives that come back wrong.
async fn three_drives_holding_one_object(
    dir: &std::path::Path,
) -> (zns::Geometry, Vec<zns::EmulatedZns>) {
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir, 3, g, |c| c.write_quorum = 2).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "before", &content("before", 1, 200_000))
        .await
        .unwrap();
    engine.shutdown().await;
    (g, drives)
}

/// A drive answering under a registered name with another identity (a storage node started on
/// an empty data directory, its disk not mounted) is left out rather than taken for the drive
/// holding the data; the others serve; the right drive is attached again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_drive_under_a_registered_name_is_left_out_until_the_right_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (g, drives) = three_drives_holding_one_object(dir.path()).await;
    drop(drives);

    // The third drive's directory is "unmounted": an empty drive appears in its place.
    let real = dir.path().join("drive2");
    let aside = dir.path().join("drive2-aside");
    std::fs::rename(&real, &aside).unwrap();
    {
        let (engine, drives) = open_engine(dir.path(), 3, g, |c| c.write_quorum = 2).await;
        let third = &engine.drives().all()[2];
        assert!(third.foreign.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!third.attached.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!third.is_up());
        // It answers, yet its copies are out of reach: the time counts toward the repair
        // grace, after which they are made again elsewhere (not waited for for ever).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            third.down_for() >= std::time::Duration::from_millis(50),
            "{:?}",
            third.down_for()
        );
        served_without_the_impostor(engine, &drives[2]).await;
    }

    // The right drive is back.
    std::fs::remove_dir_all(&real).unwrap();
    std::fs::rename(&aside, &real).unwrap();
    let (engine, _drives) = open_engine(dir.path(), 3, g, |c| c.write_quorum = 2).await;
    served_by_the_right_third_drive(engine).await;
}

/// With the third drive found to be another (foreign, not attached), the others serve: what
/// was stored before reads back, a new object ("during") is stored, and nothing is written to
/// `impostor`. The engine is shut down.
async fn served_without_the_impostor(
    engine: zonestore::engine::Engine,
    impostor: &zns::EmulatedZns,
) {
    let third = &engine.drives().all()[2];
    assert!(third.foreign.load(std::sync::atomic::Ordering::SeqCst));
    assert!(!third.attached.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        get(&engine, "b", "before").await.unwrap(),
        content("before", 1, 200_000)
    );
    put(&engine, "b", "during", &content("during", 1, 200_000))
        .await
        .unwrap();
    let zones = zns::ZonedDevice::geometry(impostor).zone_count as usize;
    let report = zns::ZonedDevice::report_zones(impostor, 0, zns::ReportFilter::All, zones)
        .await
        .unwrap();
    let written: u64 = report.zones.iter().map(|z| z.wp - z.zslba).sum();
    assert_eq!(written, 0, "nothing was written to the impostor");
    engine.shutdown().await;
}

/// With the right third drive back, it is used again and every object reads back. The engine
/// is shut down.
async fn served_by_the_right_third_drive(engine: zonestore::engine::Engine) {
    let third = &engine.drives().all()[2];
    assert!(!third.foreign.load(std::sync::atomic::Ordering::SeqCst));
    assert!(third.is_up());
    for key in ["before", "during"] {
        assert_eq!(
            get(&engine, "b", key).await.unwrap(),
            content(key, 1, 200_000)
        );
    }
    engine.shutdown().await;
}

/// Specs of `drives` as the engine tests name them, the third reporting no identity (a target
/// whose namespace has no NGUID).
fn third_anonymous(drives: &[zns::EmulatedZns]) -> Vec<zonestore::engine::DriveSpec> {
    let mut specs = drive_specs(drives);
    let mut anonymous = zns::testing::Intercepted::new(std::sync::Arc::new(drives[2].clone()));
    anonymous.anonymous = true;
    specs[2].device = std::sync::Arc::new(anonymous);
    specs
}

/// A drive without an identity answering under a registered name with another geometry (an
/// NVMe/TCP target exporting another disk under the same NQN after a reboot) is left out, not
/// taken for the drive holding the data (whose index locations would mean other places on
/// it); the recorded geometry stays, so the right drive is attached again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_of_another_geometry_under_a_registered_name_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (g, drives) = three_drives_holding_one_object(dir.path()).await;
    drop(drives);
    let open = async |drives: &[zns::EmulatedZns]| {
        let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 3);
        config.write_quorum = 2;
        zonestore::engine::Engine::open(config, third_anonymous(drives))
            .await
            .expect("engine opens")
            .0
    };

    let real = dir.path().join("drive2");
    let aside = dir.path().join("drive2-aside");
    std::fs::rename(&real, &aside).unwrap();
    // Zones twice as large: every location the index holds on the drive would mean another
    // zone and offset on it.
    let mut other = g;
    other.zone_size *= 2;
    {
        let drives: Vec<_> = (0..3)
            .map(|i| {
                open_drive(
                    &dir.path().join(format!("drive{i}")),
                    if i == 2 { other } else { g },
                )
            })
            .collect();
        served_without_the_impostor(open(&drives).await, &drives[2]).await;
    }

    std::fs::remove_dir_all(&real).unwrap();
    std::fs::rename(&aside, &real).unwrap();
    let drives: Vec<_> = (0..3)
        .map(|i| open_drive(&dir.path().join(format!("drive{i}")), g))
        .collect();
    served_by_the_right_third_drive(open(&drives).await).await;
}

/// Drives holding data that an index never wrote (another gateway's drives, or those of an
/// index that was lost) are left out by an engine opening that index, not taken for its own:
/// nothing is written to them, and the index that wrote them still finds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_holding_another_indexs_data_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (g, drives) = three_drives_holding_one_object(dir.path()).await;
    let written = async |drives: &[zns::EmulatedZns]| {
        let mut blocks = Vec::new();
        for d in drives {
            let report = zns::ZonedDevice::report_zones(d, 0, zns::ReportFilter::All, 16)
                .await
                .unwrap();
            blocks.push(report.zones.iter().map(|z| z.wp - z.zslba).sum::<u64>());
        }
        blocks
    };
    let before = written(&drives).await;
    {
        let mut config = zonestore::engine::EngineConfig::new(dir.path().join("other-index"), 3);
        config.write_quorum = 2;
        let (engine, _) = zonestore::engine::Engine::open(config, drive_specs(&drives))
            .await
            .expect("engine opens");
        for drive in engine.drives().all() {
            assert!(drive.foreign.load(std::sync::atomic::Ordering::SeqCst));
            assert!(!drive.attached.load(std::sync::atomic::Ordering::SeqCst));
        }
        assert!(engine.create_bucket("c", "bob").await.is_err());
        engine.shutdown().await;
    }
    assert_eq!(
        written(&drives).await,
        before,
        "nothing was written to the drives"
    );
    drop(drives);
    let (engine, _drives) = open_engine(dir.path(), 3, g, |c| c.write_quorum = 2).await;
    assert_eq!(
        get(&engine, "b", "before").await.unwrap(),
        content("before", 1, 200_000)
    );
    engine.shutdown().await;
}

/// A rebuilt index keeps the drive ids the old one gave, also when a drive before others was
/// drained and removed from the configuration: what names drives by id (the list of failed
/// writes the old index hands over) stays right, and the rebuilt index says what the old one
/// said, copy for copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_drive_ids_when_a_drive_was_removed() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 3, g, |c| {
        c.replicas = 2;
        c.write_quorum = 2;
    })
    .await;
    // Drained before it holds anything, the middle drive can go at once.
    engine.drain("zns-file://drive1").await.unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    for i in 0..6 {
        let key = format!("k{i}");
        put(&engine, "b", &key, &content(&key, 1, 50_000))
            .await
            .unwrap();
    }
    engine.shutdown().await;
    let old_index = dir.path().join("index");
    let names = zonestore::engine::registered_drives(&old_index).unwrap();
    assert_eq!(names.len(), 3);
    let old = zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(&old_index).unwrap(),
    )
    .unwrap();

    let kept: Vec<zonestore::engine::DriveSpec> = drive_specs(&drives)
        .into_iter()
        .filter(|s| s.name != "zns-file://drive1")
        .collect();
    let rebuilt_dir = dir.path().join("rebuilt");
    zonestore::engine::recovery::rebuild_keeping_ids(
        &rebuilt_dir,
        &names,
        0,
        &[],
        kept,
        &Default::default(),
        false,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        zonestore::engine::registered_drives(&rebuilt_dir).unwrap(),
        names
    );
    let rebuilt = zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(&rebuilt_dir).unwrap(),
    )
    .unwrap();
    assert_eq!(rebuilt, old, "the rebuilt index names the same copies");
}

/// An index rebuilt without a drive that was down, then the drive back: its records are older
/// than what the rebuild made of the others (a deletion it missed, whose tombstone the rebuild
/// had no reason to keep once the deleted version's zones were reset on the others), so it is
/// replayed for copies only and nothing deleted comes back from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_a_rebuild_left_out_brings_nothing_deleted_back() {
    left_out_drive_comes_back(true).await;
}

/// The same with the drive not even given to the rebuild (its node's address unknown, its
/// directory missing): named as left out, it is not taken for a drive removed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_a_rebuild_was_not_given_brings_nothing_deleted_back() {
    left_out_drive_comes_back(false).await;
}

/// R = 3, W = 2, GC run by hand: the engine of the tests of a third drive that is away.
fn three_copies_gc_by_hand(c: &mut zonestore::engine::EngineConfig) {
    c.replicas = 3;
    c.write_quorum = 2;
    gc_by_hand(c);
}

/// Copies the committer leaves out of a repair's change without failing it (here: one of the
/// two new drives reconnected between a copy's append and its flush, as a restarted target
/// would, while the copies on the other are recorded) are not counted made: the status does
/// not say every record has its copies until they are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_copies_the_committer_left_out_are_not_counted_made() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 4, g, three_copies_gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    for i in 0..8 {
        let key = format!("k{i}");
        put(&engine, "b", &key, &content(&key, i, 100_000))
            .await
            .unwrap();
    }
    let total: u64 = engine.zone_table().iter().map(|r| r.valid_bytes).sum();
    engine.shutdown().await;

    // Drive 3 is lost; two new drives take its copies, the second reconnecting after its
    // first append.
    let mut specs = drive_specs(&drives[..3]);
    specs.push(absent("zns-file://drive3", g));
    let fifth = zns::EmulatedZns::create(&dir.path().join("drive4"), g).unwrap();
    specs.push(zonestore::engine::DriveSpec {
        name: "zns-file://drive4".into(),
        device: Arc::new(fifth),
    });
    let sixth = zns::EmulatedZns::create(&dir.path().join("drive5"), g).unwrap();
    let mut intercepted = zns::testing::Intercepted::new(Arc::new(sixth));
    let reconnect = Arc::new(AtomicBool::new(true));
    let session = intercepted.session_offset.clone();
    intercepted.after_append = Box::new({
        let reconnect = reconnect.clone();
        move |_, result| {
            if reconnect.swap(false, Ordering::SeqCst) {
                session.fetch_add(1, Ordering::SeqCst);
            }
            Box::pin(async move { result })
        }
    });
    specs.push(zonestore::engine::DriveSpec {
        name: "zns-file://drive5".into(),
        device: Arc::new(intercepted),
    });
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 6);
    three_copies_gc_by_hand(&mut config);
    config.repair.grace = std::time::Duration::ZERO;
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    let valid_on = |drive: &str| -> u64 {
        engine
            .zone_table()
            .iter()
            .filter(|r| r.drive == drive)
            .map(|r| r.valid_bytes)
            .sum()
    };
    assert!(valid_on("zns-file://drive3") > 0);
    until_repair(&engine, "the status never said repair was done", 60, |s| {
        s.passes > 0 && s.under_replicated_records == 0 && s.blocked.is_none()
    })
    .await;
    assert!(
        !reconnect.load(Ordering::SeqCst),
        "the new drive took no copy"
    );
    assert_eq!(
        valid_on("zns-file://drive3"),
        0,
        "repair said it was done with copies of the lost drive not made again: {:?}",
        engine.repair().status()
    );
    assert_eq!(
        engine
            .zone_table()
            .iter()
            .map(|r| r.valid_bytes)
            .sum::<u64>(),
        total
    );
    engine.shutdown().await;
}

/// The first two of `drives`, and the third as a drive whose node is down.
fn third_drive_down(
    drives: &[zns::EmulatedZns],
    g: zns::Geometry,
) -> Vec<zonestore::engine::DriveSpec> {
    let mut specs = drive_specs(&drives[..2]);
    specs.push(absent("zns-file://drive2", g));
    specs
}

/// A drive registered as `name` whose node is down.
fn absent(name: &str, g: zns::Geometry) -> zonestore::engine::DriveSpec {
    zonestore::engine::DriveSpec {
        name: name.into(),
        device: std::sync::Arc::new(zns::AbsentDrive {
            geometry: g,
            why: "the node is down (test)",
        }),
    }
}

/// The canonical dump of an index rebuilt in `dir` from `specs`, with drive ids `names` (none:
/// given anew) and what records made from `floor` on say they replaced trusted.
async fn rebuilt_dump(
    dir: &std::path::Path,
    names: &[String],
    floor: u64,
    specs: Vec<zonestore::engine::DriveSpec>,
) -> Vec<String> {
    zonestore::engine::recovery::rebuild_keeping_ids(
        dir,
        names,
        floor,
        &[],
        specs,
        &Default::default(),
        false,
        |_| {},
    )
    .await
    .unwrap();
    zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(dir).unwrap(),
    )
    .unwrap()
}

/// A drive away past the repair grace has its copies made again on another drive, each in
/// the lost copy's place: when the drive comes back, no record has more than R copies, what
/// the drive held is garbage there for GC to take (not live bytes holding its zones for good),
/// and an index rebuilt from all the drives says so too (the copies made say what they
/// replaced), also once a copy is made again on a drive whose old one was replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_made_for_a_lost_drive_take_the_lost_copies_places() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 3, g, three_copies_gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let bodies: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("k{i}"), content(&format!("k{i}"), i, 100_000)))
        .collect();
    for (key, body) in &bodies {
        put(&engine, "b", key, body).await.unwrap();
    }
    engine.shutdown().await;
    let valid_on = |engine: &zonestore::engine::Engine, drive: &str| -> u64 {
        engine
            .zone_table()
            .iter()
            .filter(|r| r.drive == drive)
            .map(|r| r.valid_bytes)
            .sum()
    };

    // Drive 2's node is down for longer than the grace (none here); a fourth drive is added.
    let fourth = zns::EmulatedZns::create(&dir.path().join("drive3"), g).unwrap();
    let fourth_spec = || zonestore::engine::DriveSpec {
        name: "zns-file://drive3".into(),
        device: Arc::new(fourth.clone()),
    };
    let open = |specs: Vec<zonestore::engine::DriveSpec>, grace: std::time::Duration| {
        let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 4);
        three_copies_gc_by_hand(&mut config);
        config.repair.grace = grace;
        zonestore::engine::Engine::open(config, specs)
    };
    let mut specs = third_drive_down(&drives, g);
    specs.push(fourth_spec());
    let (engine, _) = open(specs, std::time::Duration::ZERO).await.unwrap();
    let held = valid_on(&engine, "zns-file://drive2");
    assert!(held > 0);
    until_repair(&engine, "drive 2's copies were not made again", 60, |s| {
        s.copies_made > 0 && s.under_replicated_records == 0 && s.blocked.is_none()
    })
    .await;
    assert_eq!(
        valid_on(&engine, "zns-file://drive2"),
        0,
        "the copies made elsewhere replaced the lost ones"
    );
    assert_eq!(valid_on(&engine, "zns-file://drive3"), held);
    engine.shutdown().await;

    // Drive 2 is back: its copies are garbage, and every record has three copies.
    let mut specs = drive_specs(&drives);
    specs.push(fourth_spec());
    let (engine, _) = open(specs, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(valid_on(&engine, "zns-file://drive2"), 0);
    let total: u64 = (0..4)
        .map(|i| valid_on(&engine, &format!("zns-file://drive{i}")))
        .sum();
    assert_eq!(total, 3 * held, "three copies of each record, no more");
    for (key, body) in &bodies {
        assert_eq!(&get(&engine, "b", key).await.unwrap(), body);
    }
    engine.shutdown().await;

    // Then drive 1 is lost: its copies are made again on drive 2, beside drive 2's old ones
    // (written before the copies that replaced them, these new ones after).
    let mut specs = drive_specs(&drives);
    specs[1] = absent("zns-file://drive1", g);
    specs.push(fourth_spec());
    let (engine, _) = open(specs, std::time::Duration::ZERO).await.unwrap();
    let made = engine.repair().status().copies_made;
    until_repair(&engine, "drive 1's copies were not made again", 60, |s| {
        s.copies_made > made && s.under_replicated_records == 0 && s.blocked.is_none()
    })
    .await;
    assert_eq!(valid_on(&engine, "zns-file://drive1"), 0);
    assert_eq!(valid_on(&engine, "zns-file://drive2"), held);
    engine.shutdown().await;
    let mut specs = drive_specs(&drives);
    specs.push(fourth_spec());
    let (engine, _) = open(specs, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    for (key, body) in &bodies {
        assert_eq!(&get(&engine, "b", key).await.unwrap(), body);
    }
    engine.shutdown().await;

    let old_index = dir.path().join("index");
    let names = zonestore::engine::registered_drives(&old_index).unwrap();
    let old = zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(&old_index).unwrap(),
    )
    .unwrap();
    let all = || {
        let mut specs = drive_specs(&drives);
        specs.push(fourth_spec());
        specs
    };
    let rebuilt = rebuilt_dump(&dir.path().join("rebuilt"), &names, 0, all()).await;
    assert_eq!(rebuilt, old, "the rebuilt index names the same copies");

    // Rebuilt without the old registry (drive ids given anew), what records say they replaced
    // is not trusted: the old copies count again (one too many, nothing lost); and a later
    // rebuild from that index, which has a registry, still does not trust them.
    let renumbered = dir.path().join("renumbered");
    let first = rebuilt_dump(&renumbered, &[], 0, all()).await;
    assert_ne!(first, old, "the old copies count again");
    let names = zonestore::engine::registered_drives(&renumbered).unwrap();
    let floor = zonestore::engine::replacement_floor(&renumbered).unwrap();
    assert!(floor > 0);
    let second = rebuilt_dump(&dir.path().join("again"), &names, floor, all()).await;
    assert_eq!(
        second, first,
        "a later rebuild trusts no record made before the renumbering"
    );
}

/// The records of `key` on `drive` (whole, padded), read zone by zone.
async fn records_of(drive: &zns::EmulatedZns, key: &str) -> Vec<bytes::Bytes> {
    use zns::ZonedDevice;
    let block = drive.geometry().block_size as usize;
    let report = drive
        .report_zones(0, zns::ReportFilter::All, 1 << 10)
        .await
        .unwrap();
    let mut out = Vec::new();
    for z in report
        .zones
        .iter()
        .filter(|z| z.wp > z.zslba && z.wp != u64::MAX)
    {
        let bytes = drive.read(z.zslba, (z.wp - z.zslba) as u32).await.unwrap();
        let mut at = 0;
        while let Ok(p) = zonestore::engine::record::parse(&bytes[at..], block) {
            if p.header.key == key {
                out.push(bytes.slice(at..at + p.padded));
            }
            at += p.padded;
        }
    }
    out
}

/// GC copied a version's records to a new zone, the object was deleted, and the server died
/// before GC's change was committed: the copies, older than the deletion, are passed over at
/// the next start, and must stay hidden by the deletion's tombstone. Else, once GC reclaims the
/// zones the version was first in (and lets the tombstone go, which hid only those), a rebuilt
/// index takes the copies for the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_copy_of_a_version_deleted_before_a_crash_is_hidden_by_the_deletion() {
    use zns::ZonedDevice;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "ghost", &content("ghost", 1, 100_000))
        .await
        .unwrap();
    put(&engine, "b", "keep", &content("keep", 1, 700_000))
        .await
        .unwrap();
    engine.shutdown().await;
    let ghost = records_of(&drives[0], "ghost").await;
    let keep = records_of(&drives[0], "keep").await;
    assert!(ghost.len() >= 2 && keep.len() >= 2);
    drop(drives);

    // Deleted; then the copies GC made before (of `keep` too, so that their zone holds live
    // data and is not the first GC takes) are found in a zone the index never heard of.
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.delete("b", "ghost").await.unwrap();
    engine.shutdown().await;
    let report = drives[0]
        .report_zones(0, zns::ReportFilter::Empty, 1)
        .await
        .unwrap();
    let zslba = report.zones[0].zslba;
    for record in ghost.iter().chain(&keep) {
        let mut copy = bytes::BytesMut::new();
        let write_seq = zonestore::engine::record::parse(record, 4096)
            .unwrap()
            .header
            .write_seq;
        zonestore::engine::record::append_rewritten(record, write_seq + 1, &mut copy);
        drives[0].append(zslba, copy.freeze()).await.unwrap();
    }
    drives[0].flush().await.unwrap();
    drop(drives);
    let copies_zone = zonestore::engine::model::ZoneId {
        drive: 0,
        zone: (zslba / g.zone_size) as u32,
    };

    // The start replays the zone: `keep`'s copies are recorded as GC's move; `ghost`'s, older
    // than its deletion, are passed over, and the tombstone hides their zone (so GC keeps the
    // tombstone until the zone is reset: it outranks them in any rebuild meanwhile).
    let (engine, _drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    assert!(engine.head("b", "ghost").is_err());
    assert_eq!(
        get(&engine, "b", "keep").await.unwrap(),
        content("keep", 1, 700_000)
    );
    engine.shutdown().await;
    let index = zonestore::engine::index::Index::open(&dir.path().join("index")).unwrap();
    let tombstone = index
        .tombstone(
            zonestore::engine::index::TombKind::Object,
            &zonestore::engine::index::object_key("b", "ghost"),
        )
        .unwrap()
        .expect("the tombstone");
    assert!(
        tombstone.shadowed.iter().any(|s| s.zone == copies_zone),
        "the copies' zone is not hidden: {:?}",
        tombstone.shadowed
    );
}

/// A zone that held only records the index never named (settled there, hidden) and was reset
/// by GC just before a crash, the reset unrecorded, is found empty at the next start and its
/// reset recorded: its generation moves on, so what hid its old records can be let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_reset_of_a_zone_of_orphans_is_recorded_at_start() {
    use zns::ZonedDevice;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "ghost", &content("ghost", 1, 100_000))
        .await
        .unwrap();
    engine.delete("b", "ghost").await.unwrap();
    engine.shutdown().await;
    // Copies of the deleted version in a zone the index never heard of.
    let ghost = records_of(&drives[0], "ghost").await;
    let zslba = drives[0]
        .report_zones(0, zns::ReportFilter::Empty, 1)
        .await
        .unwrap()
        .zones[0]
        .zslba;
    for record in &ghost {
        drives[0].append(zslba, record.clone()).await.unwrap();
    }
    drives[0].flush().await.unwrap();
    drop(drives);
    let zone = (zslba / g.zone_size) as u32;
    // Replayed at the next start: settled there, named by nothing.
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    assert_eq!(zone_row(&engine, zone).generation, 0);
    engine.shutdown().await;
    // GC's reset lands; the server dies before recording it.
    drives[0]
        .manage_zones(zns::ZoneAction::Reset, zns::ZoneSelect::Zone(zslba))
        .await
        .unwrap();
    drop(drives);
    let (engine, _drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    assert_eq!(
        zone_row(&engine, zone).generation,
        1,
        "the reset of the zone was not recorded"
    );
    engine.shutdown().await;
}

/// Deletes `ghost` and has GC reclaim its zones (and let its tombstone go).
async fn delete_ghost_and_reclaim(engine: &zonestore::engine::Engine) {
    engine.delete("b", "ghost").await.unwrap();
    garbage(engine, "b", 40, 100_000).await;
    for _ in 0..12 {
        engine.inner().collect_now().await.unwrap();
    }
}

/// With every drive back (the ones under `dir`), `ghost` stays deleted, at the next start and
/// the one after.
async fn ghost_stays_deleted(dir: &std::path::Path, g: zns::Geometry, why: &str) {
    for _ in 0..2 {
        let (engine, _) = open_engine(dir, 3, g, three_copies_gc_by_hand).await;
        assert!(engine.head("b", "ghost").is_err(), "{why}");
        engine.shutdown().await;
    }
}

/// An object deleted while the third drive is down, the index rebuilt without that drive
/// (`given`: handed to the rebuild, unreachable; or only named as left out), the drive back.
async fn left_out_drive_comes_back(given: bool) {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let tune = three_copies_gc_by_hand;
    let (engine, drives) = open_engine(dir.path(), 3, g, tune).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "ghost", &content("ghost", 1, 100_000))
        .await
        .unwrap();
    engine.shutdown().await;

    // The third drive is down while the object is deleted and its zones are reclaimed on the
    // other two.
    let down = |drives: &[zns::EmulatedZns]| third_drive_down(drives, g);
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 3);
    tune(&mut config);
    let (engine, _) = zonestore::engine::Engine::open(config, down(&drives))
        .await
        .unwrap();
    delete_ghost_and_reclaim(&engine).await;
    engine.shutdown().await;

    // The index is lost and rebuilt while the drive is still down.
    let old_index = dir.path().join("index");
    let names = zonestore::engine::registered_drives(&old_index).unwrap();
    let rebuilt = dir.path().join("rebuilt");
    let third = "zns-file://drive2".to_string();
    let (left_out, specs) = if given {
        (Vec::new(), down(&drives))
    } else {
        (vec![third.clone()], drive_specs(&drives[..2]))
    };
    let report = zonestore::engine::recovery::rebuild_keeping_ids(
        &rebuilt,
        &names,
        0,
        &left_out,
        specs,
        &Default::default(),
        true,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.left_out, vec![third]);
    std::fs::rename(&old_index, dir.path().join("index-lost")).unwrap();
    std::fs::rename(&rebuilt, &old_index).unwrap();

    // The drive is back when the server starts (and at the next: replayed once, it is read
    // like the others).
    drop(drives);
    ghost_stays_deleted(
        dir.path(),
        g,
        "a deleted object came back from the drive the rebuild left out",
    )
    .await;
}

/// A version on every drive but not in the index (the server died between the drives' flush
/// and the index write) is rolled forward at a start without the third drive, from the other
/// two; the object is deleted and GC reclaims its zones there, tombstone and all. The third
/// drive, back at the next start, still holds the version past its settled prefix: it must be
/// replayed for copies only, or the deleted object comes back from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_missing_at_a_roll_forward_brings_nothing_deleted_back() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let tune = three_copies_gc_by_hand;
    let (engine, _) = open_engine(dir.path(), 3, g, tune).await;
    engine.create_bucket("b", "alice").await.unwrap();
    engine.shutdown().await;
    let index = dir.path().join("index");
    let before = dir.path().join("index-before");
    copy_dir(&index, &before);
    let (engine, drives) = open_engine(dir.path(), 3, g, tune).await;
    put(&engine, "b", "ghost", &content("ghost", 1, 100_000))
        .await
        .unwrap();
    engine.shutdown().await;
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&before, &index);

    let mut config = zonestore::engine::EngineConfig::new(index.clone(), 3);
    tune(&mut config);
    let (engine, _) = zonestore::engine::Engine::open(config, third_drive_down(&drives, g))
        .await
        .unwrap();
    assert_eq!(
        get(&engine, "b", "ghost").await.unwrap(),
        content("ghost", 1, 100_000),
        "rolled forward from the two drives present"
    );
    delete_ghost_and_reclaim(&engine).await;
    engine.shutdown().await;

    drop(drives);
    ghost_stays_deleted(
        dir.path(),
        g,
        "a deleted object came back from the drive that missed the roll-forward",
    )
    .await;
}

/// An index put back from a copy has lost the record of the sequence numbers handed out
/// since: the replay of what the drives hold after it raises the numbers past all it reads, so
/// a deletion after the start orders after the version it deletes, and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_the_log_holds_are_not_handed_out_again_after_an_index_is_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (index, before) = index_copied_after_a_bucket(dir.path(), g).await;
    let (engine, _) = open_engine(dir.path(), 1, g, no_gc).await;
    put(&engine, "b", "k", &content("k", 1, 50_000))
        .await
        .unwrap();
    engine.shutdown().await;
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&before, &index);

    let (engine, _) = open_engine(dir.path(), 1, g, no_gc).await;
    assert_eq!(
        get(&engine, "b", "k").await.unwrap(),
        content("k", 1, 50_000)
    );
    engine.delete("b", "k").await.unwrap();
    assert!(engine.head("b", "k").is_err(), "the deletion took effect");
    engine.shutdown().await;
    let (engine, _) = open_engine(dir.path(), 1, g, no_gc).await;
    assert!(engine.head("b", "k").is_err(), "the deletion stayed");
    engine.shutdown().await;
}

/// The index remembers the lowest write quorum the engine ran with: a rebuild without some
/// drives must go by it (writes acknowledged with one copy then may have it on the missing
/// drive), not by whatever the configuration says now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowest_write_quorum_ever_used_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let index = dir.path().join("index");
    assert_eq!(
        zonestore::engine::lowest_write_quorum(&index).unwrap(),
        None
    );
    for (w, lowest) in [(2, 2), (1, 1), (2, 1)] {
        let (engine, _drives) = open_engine(dir.path(), 3, g, |c| {
            c.replicas = 3;
            c.write_quorum = w;
        })
        .await;
        engine.shutdown().await;
        assert_eq!(
            zonestore::engine::lowest_write_quorum(&index).unwrap(),
            Some(lowest),
            "after running with W = {w}"
        );
    }
}

/// Turns GC off (these tests put the index back as it was, and look at what the drives hold).
fn no_gc(c: &mut zonestore::engine::EngineConfig) {
    c.gc.enabled = false;
}

/// A one-drive engine in `dir` (GC off) made to hold bucket `b` of alice and shut down, its
/// index then copied aside: returns the index's directory and the copy's.
async fn index_copied_after_a_bucket(
    dir: &std::path::Path,
    g: zns::Geometry,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (engine, _drives) = open_engine(dir, 1, g, no_gc).await;
    engine.create_bucket("b", "alice").await.unwrap();
    engine.shutdown().await;
    let index = dir.join("index");
    let before = dir.join("index-before");
    copy_dir(&index, &before);
    (index, before)
}

/// Copies an index directory (the engine shut down).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Every index change after a point is lost (the index is put back as it was then), as if the
/// server had died before any of them became durable while their records reached the drives.
/// At the next start the engine replays the records past each zone's settled prefix, and ends
/// up holding what a rebuild from the zones gives: every change whose records are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_index_changes_were_lost_are_replayed_as_a_rebuild_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(96, 1 << 20);
    {
        let (engine, _drives) = open_engine(dir.path(), 2, g, no_gc).await;
        engine.create_bucket("b", "alice").await.unwrap();
        for key in ["kept", "overwritten", "deleted"] {
            put(&engine, "b", key, &content(key, 1, 90_000))
                .await
                .unwrap();
        }
        engine.shutdown().await;
    }
    let index = dir.path().join("index");
    let before = dir.path().join("index-before");
    copy_dir(&index, &before);

    // The changes whose index writes are lost.
    let (uploads, pending) = {
        let (engine, _drives) = open_engine(dir.path(), 2, g, no_gc).await;
        engine.create_bucket("b2", "bob").await.unwrap();
        put(&engine, "b2", "x", &content("x", 2, 300_000))
            .await
            .unwrap();
        put(
            &engine,
            "b",
            "overwritten",
            &content("overwritten", 2, 150_000),
        )
        .await
        .unwrap();
        engine.delete("b", "deleted").await.unwrap();
        put(&engine, "b", "brief", &content("brief", 2, 20_000))
            .await
            .unwrap();
        engine.delete("b", "brief").await.unwrap();
        let completed = engine
            .create_upload("b", "multi", ObjectMeta::default())
            .await
            .unwrap();
        let mut parts = Vec::new();
        for (n, size) in [(1u32, 5 << 20), (2, 70_000)] {
            let mut w = engine.put_part(completed, n).unwrap();
            w.write(bytes::Bytes::from(content("multi", u64::from(n), size)))
                .await
                .unwrap();
            let etag = format!("{n:032x}");
            w.finish_part(etag.clone(), vec![]).await.unwrap();
            parts.push((n, etag));
        }
        engine
            .complete_upload(completed, &parts, None, Condition::None)
            .await
            .unwrap();
        let pending = engine
            .create_upload("b", "pending", ObjectMeta::default())
            .await
            .unwrap();
        let mut w = engine.put_part(pending, 4).unwrap();
        w.write(bytes::Bytes::from(content("pending", 4, 10_000)))
            .await
            .unwrap();
        w.finish_part(format!("{:032x}", 4), vec![]).await.unwrap();
        let aborted = engine
            .create_upload("b", "aborted", ObjectMeta::default())
            .await
            .unwrap();
        engine.abort_upload(aborted).await.unwrap();
        engine.shutdown().await;
        ((completed, aborted), pending)
    };
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::rename(&before, &index).unwrap();

    let (engine, reconciliation, drives) = open_engine_reporting(dir.path(), 2, g, no_gc).await;
    assert!(
        reconciliation.replayed.applied >= 8,
        "{:?}",
        reconciliation.replayed
    );
    assert_eq!(
        get(&engine, "b2", "x").await.unwrap(),
        content("x", 2, 300_000)
    );
    assert_eq!(
        get(&engine, "b", "overwritten").await.unwrap(),
        content("overwritten", 2, 150_000)
    );
    assert_eq!(
        get(&engine, "b", "kept").await.unwrap(),
        content("kept", 1, 90_000)
    );
    for gone in ["deleted", "brief"] {
        assert!(matches!(
            get(&engine, "b", gone).await,
            Err(EngineError::NoSuchKey { .. })
        ));
    }
    let mut multi = content("multi", 1, 5 << 20);
    multi.extend(content("multi", 2, 70_000));
    assert_eq!(get(&engine, "b", "multi").await.unwrap(), multi);
    assert!(
        engine.parts(uploads.0, 0, usize::MAX).is_err(),
        "the completed upload is gone"
    );
    assert!(
        engine.parts(uploads.1, 0, usize::MAX).is_err(),
        "the aborted upload is gone"
    );
    let parts = engine.parts(pending, 0, usize::MAX).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].part_number, 4);
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
    engine.shutdown().await;
    drop(drives);

    // Replayed, then shut down cleanly: every zone is settled, nothing is read again.
    let (engine, reconciliation, _drives) = open_engine_reporting(dir.path(), 2, g, no_gc).await;
    assert_eq!(
        reconciliation.replayed.records, 0,
        "{:?}",
        reconciliation.replayed
    );
    engine.shutdown().await;
}

/// A damaged record in the tail a start replays (written after the index last settled its zone)
/// is counted with the CRC errors and in the replay's report, not only logged; the version it
/// belonged to is not made visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_replayed_tail_is_counted() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (index, before) = index_copied_after_a_bucket(dir.path(), g).await;
    let body = content("late", 1, 40_000);
    let data_path = {
        let (engine, drives) = open_engine(dir.path(), 1, g, no_gc).await;
        put(&engine, "b", "late", &body).await.unwrap();
        engine.shutdown().await;
        drives[0].data_path()
    };
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::rename(&before, &index).unwrap();
    let all = std::fs::read(&data_path).unwrap();
    let at = all
        .windows(64)
        .position(|w| w == &body[20_000..20_064])
        .expect("the object's bytes are on the drive");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&data_path)
        .unwrap();
    file.write_all_at(&[0xFF; 64], at as u64).unwrap();
    drop(file);

    let (engine, reconciliation, _drives) = open_engine_reporting(dir.path(), 1, g, no_gc).await;
    assert!(
        reconciliation.replayed.damaged >= 1,
        "{:?}",
        reconciliation.replayed
    );
    assert!(
        engine
            .stats()
            .crc_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(matches!(
        get(&engine, "b", "late").await,
        Err(EngineError::NoSuchKey { .. })
    ));
    engine.shutdown().await;
}

/// A drive whose identity the index has not recorded yet (an index from before identities) is
/// given one only once it is found holding what the index expects: a blank drive met first
/// would otherwise become the drive's identity and shut the real one out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_is_recorded_only_from_a_drive_holding_what_the_index_expects() {
    use zonestore::engine::index::{Index, cf};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let key = b"identity:zns-file://drive1".to_vec();
    let forget_identity = |dir: &std::path::Path| {
        let index = Index::open(&dir.join("index")).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(index.cf(cf::META), &key);
        index.write(batch, true).unwrap();
    };
    let recorded = |dir: &std::path::Path| {
        Index::open(&dir.join("index"))
            .unwrap()
            .get_raw(cf::META, &key)
            .unwrap()
    };
    {
        let (engine, _drives) = open_engine(dir.path(), 2, g, |c| c.write_quorum = 1).await;
        engine.create_bucket("b", "alice").await.unwrap();
        put(&engine, "b", "k", &content("k", 1, 100_000))
            .await
            .unwrap();
        engine.shutdown().await;
    }
    assert!(recorded(dir.path()).is_some());
    forget_identity(dir.path());
    let real = dir.path().join("drive1");
    let aside = dir.path().join("drive1-aside");
    std::fs::rename(&real, &aside).unwrap();
    {
        // A blank drive answers in its place: its zones lack what the index counts there.
        let (engine, _drives) = open_engine(dir.path(), 2, g, |c| c.write_quorum = 1).await;
        engine.shutdown().await;
    }
    assert!(
        recorded(dir.path()).is_none(),
        "the blank drive is not recorded"
    );
    std::fs::remove_dir_all(&real).unwrap();
    std::fs::rename(&aside, &real).unwrap();
    let (engine, drives) = open_engine(dir.path(), 2, g, |c| c.write_quorum = 1).await;
    assert!(
        !engine.drives().all()[1]
            .foreign
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    engine.shutdown().await;
    assert_eq!(
        recorded(dir.path()),
        zns::ZonedDevice::identity(&drives[1]).map(|i| i.to_vec())
    );
}

/// A drive that answers its zone report wrongly when the engine opens (a write pointer outside
/// its zone, or an error status) is left out, as an unreachable one is: the others serve every
/// object and take new writes, rather than the whole store refusing to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_that_answers_its_survey_wrongly_is_left_out_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (_, drives) = three_drives_holding_one_object(dir.path()).await;

    type Fault = fn(zns::ZoneResult<zns::ZoneReport>) -> zns::ZoneResult<zns::ZoneReport>;
    let faults: [(&str, Fault); 2] = [
        ("a write pointer outside its zone", |report| {
            let mut report = report?;
            for z in report.zones.iter_mut() {
                if z.state != zns::ZoneState::Empty && z.state != zns::ZoneState::Full {
                    z.wp = z.zslba + 100 * (1 << 20);
                }
            }
            Ok(report)
        }),
        ("an error status", |_| {
            Err(zns::ZoneError::MediaError("report failed".into()))
        }),
    ];
    for (what, fault) in faults {
        let mut specs = drive_specs(&drives);
        let mut faulty = zns::testing::Intercepted::new(specs[2].device.clone());
        faulty.after_report = Box::new(fault);
        specs[2].device = std::sync::Arc::new(faulty);
        let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 3);
        config.write_quorum = 2;
        let (engine, _) = zonestore::engine::Engine::open(config, specs)
            .await
            .unwrap_or_else(|e| panic!("the engine opens despite {what}: {e}"));
        let third = &engine.drives().all()[2];
        assert!(
            !third.attached.load(std::sync::atomic::Ordering::SeqCst),
            "{what}"
        );
        assert_eq!(
            get(&engine, "b", "before").await.unwrap(),
            content("before", 1, 200_000),
            "{what}"
        );
        put(&engine, "b", what, &content(what, 1, 100_000))
            .await
            .unwrap();
        engine.shutdown().await;
    }
}

/// A client write that fails after its claiming record reached the drive (here its flush
/// fails: the client gets an error) leaves that record there, dead. The client, told the key
/// was never written, deletes it (absent: nothing to delete). After a crash before the zone's
/// settled prefix was recorded past the record, replay must not apply it, nor may a rebuild
/// take it: the revocation written before the failure was answered says it is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_failed_after_its_commit_record_landed_stays_dead() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use zonestore::engine::index::{Index, cf};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let drive = open_drive(&dir.path().join("drive0"), g);
    let failing = std::sync::Arc::new(AtomicBool::new(false));
    let mut device = zns::testing::Intercepted::new(std::sync::Arc::new(drive.clone()));
    let fail = failing.clone();
    device.before_flush = Box::new(move || {
        let failed = fail.load(Ordering::SeqCst);
        Box::pin(async move {
            if failed {
                Err(zns::ZoneError::MediaError("flush failed".into()))
            } else {
                Ok(())
            }
        })
    });
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        std::sync::Arc::new(device),
        no_gc,
    )
    .await;
    put(&engine, "b", "kept", &content("kept", 1, 50_000))
        .await
        .unwrap();
    failing.store(true, Ordering::SeqCst);
    assert!(
        put(&engine, "b", "failed", &content("failed", 1, 50_000))
            .await
            .is_err()
    );
    failing.store(false, Ordering::SeqCst);
    engine.delete("b", "failed").await.unwrap();
    assert_eq!(engine.revoked_writes().unwrap().len(), 1);
    assert_rebuild_equals_live(&engine, std::slice::from_ref(&drive), dir.path(), "rebuilt").await;
    engine.shutdown().await;
    drop(drive);

    // The crash came before the zone's settled prefix was recorded past the failed write.
    {
        let index = Index::open(&dir.path().join("index")).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        for (key, _) in index.dump_prefix(cf::META, b"settled:").unwrap() {
            batch.delete_cf(index.cf(cf::META), key);
        }
        index.write(batch, true).unwrap();
    }
    let (engine, reconciliation, drives) = open_engine_reporting(dir.path(), 1, g, no_gc).await;
    assert!(
        reconciliation.replayed.records > 0,
        "the zone was read again"
    );
    assert!(
        matches!(
            get(&engine, "b", "failed").await,
            Err(EngineError::NoSuchKey { .. })
        ),
        "the failed write did not come back"
    );
    assert_eq!(
        get(&engine, "b", "kept").await.unwrap(),
        content("kept", 1, 50_000)
    );
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt-after-replay").await;
    engine.shutdown().await;

    // A revoked number nothing on the drives carries (every append of that write failed) is
    // still never handed to a new write by a rebuilt index.
    let far = 1u64 << 50;
    let revoked = std::collections::BTreeMap::from([(far, Revocation::default())]);
    let floor_dir = dir.path().join("rebuilt-floor");
    zonestore::engine::recovery::rebuild(&floor_dir, drive_specs(&drives), &revoked, |_| {})
        .await
        .unwrap();
    let lease = Index::open(&floor_dir)
        .unwrap()
        .get_raw(cf::META, b"seq_lease")
        .unwrap()
        .unwrap();
    assert!(u64::from_le_bytes(lease.try_into().unwrap()) > far);
}

/// A record whose magic bytes rotted is where a rebuild's scan of its zone ends: it says so
/// (a damaged record), not a clean rebuild that quietly missed the rest of the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_cannot_find_a_record_where_one_starts_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    for i in 0..4 {
        let key = format!("k{i}");
        put(&engine, "b", &key, &content(&key, i, 30_000))
            .await
            .unwrap();
    }
    engine.shutdown().await;
    let clean = zonestore::engine::recovery::rebuild(
        &dir.path().join("clean"),
        drive_specs(&drives),
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(clean.damaged, 0, "{clean:?}");
    // The magic of the last object's record ("ZSR1" where its data starts) is lost.
    let path = drives[0].data_path();
    let all = std::fs::read(&path).unwrap();
    let body = content("k3", 3, 30_000);
    let data = all
        .windows(64)
        .position(|w| w == &body[..64])
        .expect("the object is on the drive");
    let magic = all[..data]
        .windows(4)
        .rposition(|w| w == b"ZSR1")
        .expect("its record's header");
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(b"ZSRX", magic as u64)
        .unwrap();
    let report = zonestore::engine::recovery::rebuild(
        &dir.path().join("rebuilt"),
        drive_specs(&drives),
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.damaged, 1, "{report:?}");
}

/// An object deleted before its bucket was deleted stays deleted in a rebuild even if its
/// tombstone is damaged on every copy: a bucket is deleted only when empty, so a version
/// older than its bucket's deletion was dead by then (and must not come back, nor show up if
/// someone creates a bucket of that name again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_older_than_their_buckets_deletion_do_not_come_back_in_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("gone", "alice").await.unwrap();
    put(&engine, "gone", "vanished-key", &content("v", 1, 30_000))
        .await
        .unwrap();
    engine.delete("gone", "vanished-key").await.unwrap();
    engine.delete_bucket("gone").await.unwrap();
    engine.create_bucket("gone", "bob").await.unwrap();
    engine.shutdown().await;

    // The tombstone's header is damaged: "ZSR1", a version byte, kind 3, and the key soon
    // after; a flipped bit in its sequence number breaks its CRC.
    let path = drives[0].data_path();
    let mut all = std::fs::read(&path).unwrap();
    let key = b"vanished-key";
    let at = all
        .windows(4)
        .enumerate()
        .filter(|(m, w)| *w == b"ZSR1" && all.get(m + 5) == Some(&3))
        .map(|(m, _)| m)
        .find(|&m| all[m..m + 512].windows(key.len()).any(|w| w == key))
        .expect("the tombstone is on the drive");
    all[at + 16] ^= 1;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&all[at..at + 4096], at as u64)
        .unwrap();

    let rebuilt_dir = dir.path().join("rebuilt");
    let report = zonestore::engine::recovery::rebuild(
        &rebuilt_dir,
        drive_specs(&drives),
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.damaged, 1, "{report:?}");
    let dump = zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(&rebuilt_dir).unwrap(),
    )
    .unwrap();
    assert!(
        dump.iter().all(|line| !line.contains("vanished-key")),
        "{dump:#?}"
    );
    assert!(
        dump.iter()
            .any(|line| line.starts_with("bucket gone owner=bob")),
        "{dump:#?}"
    );
}

/// A live record whose copy in a GC victim is damaged does not keep that zone for ever: GC
/// makes the copy again from the good one (as scrub would), moves the rest, and the zone is
/// reset; the object reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_makes_a_damaged_live_copy_again_and_frees_its_zone() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(24, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 2, g, |c| {
        c.replicas = 2;
        c.write_quorum = 2;
        gc_by_hand(c);
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    let body = content("keep", 3, 30_000);
    put(&engine, "b", "keep", &body).await.unwrap();
    // Garbage after it, so that its zone is sealed and worth collecting.
    garbage(&engine, "b", 60, 30_000).await;
    let probe = &body[9000..9064];
    let data = std::fs::read(drives[0].data_path()).unwrap();
    let at = data
        .windows(64)
        .position(|w| w == probe)
        .expect("a copy on drive 0");
    let zone = (at as u64 / g.zone_bytes()) as u32;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(drives[0].data_path())
        .unwrap();
    file.write_all_at(&[0xAB; 64], at as u64).unwrap();
    drop(file);

    let written = |engine: &zonestore::engine::Engine| {
        engine
            .zone_table()
            .into_iter()
            .find(|r| r.drive == "zns-file://drive0" && r.zone == zone)
            .map(|r| r.written_bytes)
            .unwrap()
    };
    assert!(written(&engine) > 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while written(&engine) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "zone {zone} of drive 0 was never reset"
        );
        engine.inner().collect_now().await.unwrap();
    }
    assert_eq!(get(&engine, "b", "keep").await.unwrap(), body);
    let data = std::fs::read(drives[0].data_path()).unwrap();
    assert!(
        data.windows(64).any(|w| w == probe),
        "drive 0 holds a good copy again"
    );
    engine.shutdown().await;
}

/// A commit record larger than the drives take in one append (metadata too large for a drive
/// with a small append limit) is refused as such, before any zone is tried: no zone is retired
/// for it, and the store goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_append_limit_is_refused_before_any_zone_is_tried() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = small_geometry(16, 1 << 20);
    g.max_append_blocks = 2;
    let (engine, _drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let zones_in_use = |engine: &zonestore::engine::Engine| {
        engine
            .zone_table()
            .iter()
            .filter(|r| r.written_bytes > 0)
            .count()
    };
    let before = zones_in_use(&engine);
    let mut writer = engine.put("b", "heavy").unwrap();
    writer
        .write(bytes::Bytes::from_static(b"small body"))
        .await
        .unwrap();
    let meta = ObjectMeta {
        etag: "e".into(),
        owner: "alice".into(),
        content_disposition: Some("x".repeat(10_000)),
        ..ObjectMeta::default()
    };
    let refused = writer.finish_object(meta, Condition::None).await;
    assert!(
        matches!(refused, Err(EngineError::InvalidArgument(_))),
        "{refused:?}"
    );
    assert!(
        zones_in_use(&engine) <= before + 1,
        "no zone retired for it"
    );
    put(&engine, "b", "light", &content("light", 1, 20_000))
        .await
        .unwrap();
    assert!(matches!(
        get(&engine, "b", "heavy").await,
        Err(EngineError::NoSuchKey { .. })
    ));
    engine.shutdown().await;
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None` where this
    /// process may not mount (not root, or no mount command).
    fn new(dir: &std::path::Path, size: &str) -> Option<TmpfsMount> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TmpfsMount(dir.to_path_buf()))
    }

    /// Gives the file system `size` in all.
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remounting {} failed", self.0.display());
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// When the index's disk fills, a PUT fails as out of space (S3's 507, as with full drives),
/// not as an internal error; what is stored stays readable; and PUTs succeed again once the
/// disk has room. The index gets a small tmpfs of its own: skipped, saying so, where this
/// process may not mount one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_index_disk_fails_puts_as_out_of_space_and_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_index_disk(dir.path()) else {
        return;
    };
    let (engine, drives) =
        open_engine(dir.path(), 1, small_geometry(64, 1 << 20), gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let kept = content("kept", 1, 3000);
    put(&engine, "b", "kept", &kept).await.unwrap();
    let (stored, failure) = fill_index(&engine).await;
    let answer = zonestore::s3::to_s3(failure);
    assert_eq!(
        (answer.status.as_u16(), answer.code),
        (507, "InsufficientStorage"),
        "{}",
        answer.message
    );
    assert_eq!(
        get(&engine, "b", "kept").await.unwrap(),
        kept,
        "reads go on"
    );
    room_again(&engine, &mount).await;
    assert_eq!(get(&engine, "b", "after").await.unwrap(), b"room again");
    assert_eq!(get(&engine, "b", "kept").await.unwrap(), kept);
    // The PUT that failed left its commit record on the drive, and the index could not take
    // its revocation when it failed either: the next index write carried it, so a rebuild does
    // not bring back the object its client was told was not stored.
    let failed = format!("m{stored}");
    assert!(
        get(&engine, "b", &failed).await.is_err(),
        "the failed PUT is not stored"
    );
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
    engine.shutdown().await;
}

/// A shutdown does not wait out GC's rate limit: a collection pacing itself at 256 bytes a
/// second stops at once (its copies hidden), so the drives are flushed before a supervisor's
/// stop timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_a_slow_collection_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _drives) = open_engine(dir.path(), 1, small_geometry(16, 1 << 20), |c| {
        c.gc.enabled = false;
        c.gc.rate_bytes_per_sec = 256;
        c.gc.low_watermark = 0.95;
        c.gc.high_watermark = 0.99;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    half_deleted(&engine, 30).await;
    // Sealed zones about half live: at 256 bytes a second, 16 s for a 4 KiB record alone, were
    // it waited for.
    engine.gc().start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !engine.gc().status().busy {
        assert!(std::time::Instant::now() < deadline, "GC never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(10), engine.shutdown())
        .await
        .expect("the shutdown waited for GC's rate limit");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// `count` objects `g0`.. of 200 KB in bucket `b`, the even ones deleted: zones about half
/// garbage.
async fn half_deleted(engine: &zonestore::engine::Engine, count: usize) {
    for i in 0..count {
        let key = format!("g{i}");
        put(engine, "b", &key, &content(&key, 1, 200_000))
            .await
            .unwrap();
    }
    for i in (0..count).step_by(2) {
        engine.delete("b", &format!("g{i}")).await.unwrap();
    }
}

/// A tmpfs of 8 MiB mounted as the index directory under `dir`; None (saying the test is
/// skipped) where this process may not mount one.
fn small_index_disk(dir: &std::path::Path) -> Option<TmpfsMount> {
    let index_dir = dir.join("index");
    std::fs::create_dir(&index_dir).unwrap();
    let mount = TmpfsMount::new(&index_dir, "8m");
    if mount.is_none() {
        assert!(
            std::env::var("ZONESTORE_REQUIRE_ALL_TESTS").as_deref() != Ok("1"),
            "cannot mount a tmpfs for the index here (needs root), and ZONESTORE_REQUIRE_ALL_TESTS (set by scripts/test.sh) says every test must run"
        );
        eprintln!("skipped: cannot mount a tmpfs for the index here (needs root)");
    }
    mount
}

/// Gives the index's disk room again and waits until a PUT (of `after` in bucket `b`) works:
/// RocksDB finds the room and takes writes again by itself, within seconds.
async fn room_again(engine: &zonestore::engine::Engine, mount: &TmpfsMount) {
    mount.resize("256m");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = put(engine, "b", "after", b"room again").await {
        assert!(
            std::time::Instant::now() < deadline,
            "PUTs never worked again: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// PUTs of objects whose index entries are large (2 KB of metadata that does not compress)
/// into bucket `b` until one fails (the index's disk full): how many were stored, and the
/// failure.
async fn fill_index(engine: &zonestore::engine::Engine) -> (u64, EngineError) {
    let mut stored = 0u64;
    loop {
        let mut writer = engine.put("b", &format!("m{stored}")).unwrap();
        writer.write(bytes::Bytes::from_static(b"x")).await.unwrap();
        let noise = content("meta", stored, 1500);
        let meta = ObjectMeta {
            etag: "e".into(),
            owner: "alice".into(),
            user_meta: vec![("noise".into(), hex(&noise))],
            ..ObjectMeta::default()
        };
        match writer.finish_object(meta, Condition::None).await {
            Ok(_) => stored += 1,
            Err(e) => return (stored, e),
        }
        assert!(stored < 50_000, "the index's disk never filled");
    }
}

/// GC relocating while the index's disk is full: the copies it made are named nowhere, and
/// the next index write that lands hides them, so a rebuild does not take them for the
/// records the index names. Skipped, saying so, where this process may not mount a tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_gc_made_while_the_index_was_full_are_hidden_once_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_index_disk(dir.path()) else {
        return;
    };
    let (engine, drives) =
        open_engine(dir.path(), 1, small_geometry(64, 1 << 20), gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    // Zones half garbage, for GC to collect.
    half_deleted(&engine, 12).await;
    let (_, failure) = fill_index(&engine).await;
    assert!(
        matches!(&failure, EngineError::Index(e) if e.is_out_of_space()),
        "{failure}"
    );
    // GC copies the live records, then cannot record that it did.
    let collected = engine.inner().collect_now().await;
    assert!(
        collected.is_err(),
        "GC recorded a relocation on a full index: {collected:?}"
    );
    room_again(&engine, &mount).await;
    for i in (1..12).step_by(2) {
        let key = format!("g{i}");
        assert_eq!(
            get(&engine, "b", &key).await.unwrap(),
            content(&key, 1, 200_000)
        );
    }
    // Every copy of a commit record GC made that the index does not name (a rebuild takes
    // the newer copy of a record: the same version, for now) is hidden by its name's entry:
    // once the name moves on and its zones are reset, nothing would keep a rebuild from
    // taking that copy for the name's current version.
    let revoked = engine.revoked_writes().unwrap();
    let rebuilt_dir = dir.path().join("rebuilt");
    zonestore::engine::recovery::rebuild(&rebuilt_dir, drive_specs(&drives), &revoked, |_| {})
        .await
        .unwrap();
    let rebuilt = zonestore::engine::index::Index::open(&rebuilt_dir).unwrap();
    let zone_blocks = small_geometry(64, 1 << 20).zone_size;
    let mut moved = 0;
    for (name, entry) in engine.object_entries().unwrap() {
        let key = String::from_utf8_lossy(&name)
            .rsplit('\0')
            .next()
            .unwrap()
            .to_string();
        let copy = rebuilt.object("b", &key).unwrap().expect("rebuilt").commit;
        if copy == entry.commit {
            continue;
        }
        moved += 1;
        for at in copy {
            assert!(
                entry
                    .shadowed
                    .iter()
                    .any(|s| s.zone.drive == at.drive
                        && u64::from(s.zone.zone) == at.lba / zone_blocks),
                "{key}: GC's copy at {at:?} is not hidden: {:?}",
                entry.shadowed
            );
        }
    }
    assert!(moved > 0, "GC moved no commit record");
    engine.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A drive whose reads hang (its target stopped, not yet told from a slow one) holds a GET up
/// for a moment, not for the read timeout: a second copy is read once the first is slow, and
/// the first good answer is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_a_hung_drive_is_hedged_with_another_copy() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    // The drive whose reads hang (none while it is 2).
    let hung = Arc::new(AtomicUsize::new(2));
    let specs = intercepted_specs(dir.path(), 2, g, |i, _, drive| {
        let hung = hung.clone();
        drive.before_read = Box::new(move |_, _| {
            let hang = hung.load(Ordering::SeqCst) == i;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
            })
        });
    });
    let engine = copies_over(dir.path(), specs, 2, 2).await;
    // One record: one piece to read.
    let body = content("hedged", 3, 40 << 10);
    put(&engine, "b", "k", &body).await.unwrap();
    let hedges = || engine.stats().read_hedges.load(Ordering::Relaxed);
    // Each drive hangs in turn: the one holding the copy reads go to first is one of them.
    for drive in 0..2 {
        hung.store(drive, Ordering::SeqCst);
        let before = hedges();
        // Once a hedge found the drive slow, the next reads go to the other copy first.
        for _ in 0..3 {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), get(&engine, "b", "k"))
                    .await
                    .unwrap_or_else(|_| panic!("the GET waited for hung drive {drive}"));
            assert!(read.unwrap() == body, "the object reads back whole");
        }
        assert!(
            hedges() - before <= 1,
            "reads kept going to hung drive {drive} first"
        );
    }
    assert!(hedges() > 0);
    hung.store(2, Ordering::SeqCst);
}

/// A drive whose connection is lost between a write's appends and its flush is not flushed
/// (the flush would wait for the connection to come back, the whole committer with it, and
/// could not vouch for what was appended before anyway): the write is committed with the
/// copies on the other drives, a write quorum, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_lost_before_its_flush_holds_no_commit_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let lose = Arc::new(AtomicBool::new(false));
    let specs = intercepted_specs(dir.path(), 3, g, |i, _, drive| {
        if i != 2 {
            return;
        }
        let (lose, unavailable) = (lose.clone(), drive.unavailable.clone());
        drive.after_append = Box::new(move |_, result| {
            if lose.load(Ordering::SeqCst) {
                unavailable.store(true, Ordering::SeqCst);
            }
            Box::pin(std::future::ready(result))
        });
        // A flush of a drive not connected waits for it to come back (here: for ever).
        let unavailable = drive.unavailable.clone();
        drive.before_flush = Box::new(move || {
            let lost = unavailable.load(Ordering::SeqCst);
            Box::pin(async move {
                if lost {
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        });
    });
    let engine = three_copies_over(dir.path(), specs).await;
    lose.store(true, Ordering::SeqCst);
    let body = content("lost", 5, 100 << 10);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        put(&engine, "b", "k", &body),
    )
    .await
    .expect("the commit did not wait for the lost drive")
    .unwrap();
    assert!(get(&engine, "b", "k").await.unwrap() == body);
}

/// Drives whose flushes take `delay` once `slow` is set: those of `slow_ones` among three.
fn slow_flushing_specs(
    dir: &std::path::Path,
    slow_ones: &'static [usize],
    slow: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay: std::time::Duration,
) -> Vec<zonestore::engine::DriveSpec> {
    use std::sync::atomic::Ordering;
    let g = small_geometry(16, 1 << 20);
    intercepted_specs(dir, 3, g, |i, _, drive| {
        if !slow_ones.contains(&i) {
            return;
        }
        let slow = slow.clone();
        drive.before_flush = Box::new(move || {
            let slow = slow.load(Ordering::SeqCst);
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(delay).await;
                }
                Ok(())
            })
        });
    })
}

/// The copies of the object `key` of bucket `b` that its commit record has.
fn commit_copies(engine: &zonestore::engine::Engine, key: &str) -> Vec<u16> {
    object_entry(engine, key)
        .commit
        .iter()
        .map(|l| l.drive)
        .collect()
}

/// The index entry of the object whose key ends with `key`.
fn object_entry(
    engine: &zonestore::engine::Engine,
    key: &str,
) -> zonestore::engine::model::ObjectEntry {
    engine
        .object_entries()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name.ends_with(key.as_bytes()))
        .unwrap()
        .1
}

/// A drive that answers but flushes too slowly (a disk failing slow behind a live target) holds
/// no write up for long: once the other copies are flushed, the write is acknowledged with
/// them, and new writes skip the slow drive for a while rather than each wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_too_slow_to_flush_holds_no_write_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let specs = slow_flushing_specs(dir.path(), &[2], &slow, std::time::Duration::from_secs(60));
    let engine = three_copies_over(dir.path(), specs).await;
    put(&engine, "b", "before", b"all three").await.unwrap();
    assert_eq!(commit_copies(&engine, "before").len(), 3);
    slow.store(true, Ordering::SeqCst);
    let slow_writes = || {
        engine.drives().all()[2]
            .slow_writes_total
            .load(Ordering::SeqCst)
    };
    for (i, key) in ["first", "second"].into_iter().enumerate() {
        let body = content(key, 1, 100 << 10);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            put(&engine, "b", key, &body),
        )
        .await
        .unwrap_or_else(|_| panic!("write {i} waited for the slow drive's flush"))
        .unwrap();
        let copies = commit_copies(&engine, key);
        assert!(
            copies.len() == 2 && !copies.contains(&2),
            "write {i}: {copies:?}"
        );
        assert!(get(&engine, "b", key).await.unwrap() == body);
        // The first write's flush was given up on; the second skipped the drive at once.
        assert_eq!(slow_writes(), 1, "write {i}");
    }
}

/// A slow flush that the write quorum needs is waited for: two of three drives slow, writes
/// are slow too, yet stored with all their copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_flush_the_write_quorum_needs_is_waited_for() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let delay = std::time::Duration::from_millis(1500);
    let specs = slow_flushing_specs(dir.path(), &[1, 2], &slow, delay);
    let engine = three_copies_over(dir.path(), specs).await;
    slow.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let body = content("waited", 1, 100 << 10);
    put(&engine, "b", "waited", &body).await.unwrap();
    assert!(started.elapsed() >= delay);
    assert_eq!(commit_copies(&engine, "waited").len(), 3);
    assert!(get(&engine, "b", "waited").await.unwrap() == body);
    for drive in engine.drives().all() {
        assert_eq!(drive.slow_writes_total.load(Ordering::SeqCst), 0);
    }
}

/// A drive that answers but appends too slowly holds no write up either: once a write quorum
/// of copies is stored, the write goes on without the slow copy (the zone it may land in
/// hidden by the name), and new writes skip the drive for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_too_slow_to_append_holds_no_write_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let g = small_geometry(16, 1 << 20);
    let specs = intercepted_specs(dir.path(), 3, g, |i, _, drive| {
        if i != 2 {
            return;
        }
        let slow = slow.clone();
        drive.before_append = Box::new(move |_, _, _| {
            let slow = slow.load(Ordering::SeqCst);
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                }
            })
        });
    });
    let engine = three_copies_over(dir.path(), specs).await;
    slow.store(true, Ordering::SeqCst);
    let slow_writes = || {
        engine.drives().all()[2]
            .slow_writes_total
            .load(Ordering::SeqCst)
    };
    let mut first_given_up = 0;
    for (i, key) in ["first", "second"].into_iter().enumerate() {
        let body = content(key, 1, 100 << 10);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            put(&engine, "b", key, &body),
        )
        .await
        .unwrap_or_else(|_| panic!("write {i} waited for the slow drive's append"))
        .unwrap();
        let entry = object_entry(&engine, key);
        assert!(
            entry.commit.len() == 2 && entry.commit.iter().all(|l| l.drive != 2),
            "write {i}: {:?}",
            entry.commit
        );
        assert!(get(&engine, "b", key).await.unwrap() == body);
        // The first write gave up on the slow appends (of its extents, appended together);
        // the second skipped the drive at once.
        let given_up = slow_writes();
        assert!(given_up >= 1, "write {i}");
        if i == 1 {
            assert_eq!(given_up, first_given_up);
        }
        first_given_up = given_up;
        if i == 0 {
            assert!(
                entry.shadowed.iter().any(|s| s.zone.drive == 2),
                "the zone the slow copy may land in is not hidden: {:?}",
                entry.shadowed
            );
        }
    }
}

/// A disk failing slow behind a live NVMe/TCP target (the target answers keep-alives, its
/// drive takes a minute per append and flush) holds no write up, over real connections: each
/// write is acknowledged with the copies on the other targets, the slow target keeps its
/// session, and once its disk is well again repair makes the missing copies there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_behind_a_live_target_holds_no_write_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let slow = Arc::new(AtomicBool::new(false));
    let mut specs = Vec::new();
    let mut hosts = Vec::new();
    let mut listening = Vec::new();
    for i in 0..3 {
        let nqn = format!("nqn.2026-01.io.zonestore:slow-disk-{i}");
        let inner = zns::EmulatedZns::create(&dir.path().join(format!("drive{i}")), g).unwrap();
        let mut drive = zns::testing::Intercepted::new(Arc::new(inner));
        if i == 2 {
            let minute = std::time::Duration::from_secs(60);
            let slow_append = slow.clone();
            drive.before_append = Box::new(move |_, _, _| {
                let slow = slow_append.load(Ordering::SeqCst);
                Box::pin(async move {
                    if slow {
                        tokio::time::sleep(minute).await;
                    }
                })
            });
            let slow_flush = slow.clone();
            drive.before_flush = Box::new(move || {
                let slow = slow_flush.load(Ordering::SeqCst);
                Box::pin(async move {
                    if slow {
                        tokio::time::sleep(minute).await;
                    }
                    Ok(())
                })
            });
        }
        let target = fabric::target::Target::new(fabric::target::TargetConfig::default());
        target.add_subsystem(&nqn, Arc::new(drive), vec![]).unwrap();
        let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = handle.local_addr();
        listening.push(handle);
        let host = fabric::host::NvmeTcpHost::connect(fabric::host::HostConfig::new(addr, &nqn))
            .await
            .unwrap();
        hosts.push(host.clone());
        specs.push(zonestore::engine::DriveSpec {
            name: format!("nvme-tcp://{addr}/{nqn}"),
            device: Arc::new(host),
        });
    }
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 3);
    config.replicas = 3;
    config.write_quorum = 2;
    config.repair.grace = std::time::Duration::ZERO;
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    slow.store(true, Ordering::SeqCst);
    let mut bodies = Vec::new();
    for i in 0..4 {
        let key = format!("slow{i}");
        let body = content(&key, 1, 200 << 10);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            put(&engine, "b", &key, &body),
        )
        .await
        .unwrap_or_else(|_| panic!("write {i} waited for the slow disk"))
        .unwrap();
        assert!(get(&engine, "b", &key).await.unwrap() == body);
        bodies.push((key, body));
    }
    assert!(
        engine.drives().all()[2]
            .slow_writes_total
            .load(Ordering::SeqCst)
            >= 1
    );
    assert!(
        hosts[2].is_connected(),
        "the slow target's session was kept"
    );
    // Well again: repair makes the copies the slow disk missed.
    slow.store(false, Ordering::SeqCst);
    until_repair(
        &engine,
        "the copies the slow disk missed were not made again",
        60,
        |s| s.copies_made > 0 && s.under_replicated_records == 0,
    )
    .await;
    for (key, body) in &bodies {
        assert_eq!(commit_copies(&engine, key).len(), 3, "{key}");
        assert!(get(&engine, "b", key).await.unwrap() == *body);
    }
    drop(listening);
}

/// The grace a slow copy gets is the one configured: a write waits that long for a drive too
/// slow to flush before it goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_copy_gets_the_grace_configured() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let grace = std::time::Duration::from_secs(3);
    let specs = slow_flushing_specs(dir.path(), &[2], &slow, std::time::Duration::from_secs(60));
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 3);
    config.replicas = 3;
    config.write_quorum = 2;
    config.patience.slow_write_grace = grace;
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    slow.store(true, Ordering::SeqCst);
    let began = std::time::Instant::now();
    put(&engine, "b", "k", b"patient").await.unwrap();
    assert!(
        began.elapsed() >= grace,
        "the slow flush was given up on after {:?}",
        began.elapsed()
    );
    assert_eq!(commit_copies(&engine, "k").len(), 2);
}

/// The first copy an object's index entry names is the one written to be read (the others are
/// written as rarely read, out of the page cache), also when it is the last to land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_reads_prefer_comes_first_however_late_it_lands() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let armed = Arc::new(AtomicBool::new(false));
    // The hint of each drive's last append.
    let hints: Arc<parking_lot::Mutex<Vec<Option<zns::WriteHint>>>> =
        Arc::new(parking_lot::Mutex::new(vec![None; 3]));
    let specs = intercepted_specs(dir.path(), 3, g, |i, _, drive| {
        let (armed, hints) = (armed.clone(), hints.clone());
        drive.before_append = Box::new(move |_, hint, _| {
            hints.lock()[i] = Some(hint);
            let late = armed.load(Ordering::SeqCst) && hint == zns::WriteHint::None;
            Box::pin(async move {
                if late {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            })
        });
    });
    let engine = three_copies_over(dir.path(), specs).await;
    armed.store(true, Ordering::SeqCst);
    for key in ["one", "two", "three"] {
        put(&engine, "b", key, b"small").await.unwrap();
        let copies = commit_copies(&engine, key);
        assert_eq!(copies.len(), 3);
        let first = usize::from(copies[0]);
        assert_eq!(
            hints.lock()[first],
            Some(zns::WriteHint::None),
            "{key}: the first copy named ({copies:?}) was written as rarely read"
        );
    }
}

/// When the copy written to be read fails, the copy made in its place on another drive is
/// written to be read, and named first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_meant_for_reads_is_made_again_for_reads() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let fail_next = Arc::new(AtomicBool::new(false));
    // The hint of each drive's last append.
    let hints: Arc<parking_lot::Mutex<Vec<Option<zns::WriteHint>>>> =
        Arc::new(parking_lot::Mutex::new(vec![None; 4]));
    let specs = intercepted_specs(dir.path(), 4, g, |i, _, drive| {
        let (fail_next, hints, hints_then) = (fail_next.clone(), hints.clone(), hints.clone());
        drive.before_append = Box::new(move |_, hint, _| {
            hints.lock()[i] = Some(hint);
            Box::pin(std::future::ready(()))
        });
        drive.after_append = Box::new(move |_, result| {
            // The first append written to be read fails (its copy a stray).
            let meant_for_reads = hints_then.lock()[i] == Some(zns::WriteHint::None);
            let fail = meant_for_reads && fail_next.swap(false, Ordering::SeqCst);
            Box::pin(std::future::ready(if fail {
                Err(zns::ZoneError::MediaError("injected".into()))
            } else {
                result
            }))
        });
    });
    let engine = copies_over(dir.path(), specs, 3, 2).await;
    fail_next.store(true, Ordering::SeqCst);
    put(&engine, "b", "k", b"small").await.unwrap();
    assert!(!fail_next.load(Ordering::SeqCst), "no append failed");
    let copies = commit_copies(&engine, "k");
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert_eq!(
        hints.lock()[usize::from(copies[0])],
        Some(zns::WriteHint::None),
        "the first copy named ({copies:?}) was written as rarely read"
    );
}

/// While the index takes no writes (a full disk), failed writes' revocations wait for it only
/// up to a bound: past it, client writes are refused before anything is appended (memory and
/// the work of every later index write stay bounded), the waiting revocations tried on their
/// own each time; once the index takes writes again, they land and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_failing_on_an_index_that_takes_none_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let (engine, drives) = open_engine(dir.path(), 1, g, gc_by_hand).await;
    engine.create_bucket("b", "alice").await.unwrap();
    put(&engine, "b", "before", &content("before", 1, 100))
        .await
        .unwrap();
    let written = async || {
        let report = zns::ZonedDevice::report_zones(&drives[0], 0, zns::ReportFilter::All, 64)
            .await
            .unwrap();
        // (A full zone's write pointer reads as all ones.)
        report
            .zones
            .iter()
            .map(|z| z.wp.saturating_sub(z.zslba).min(z.zcap))
            .sum::<u64>()
    };
    engine.index().refuse_writes(true);
    let mut failed = 0;
    while engine.revocations_waiting() < 1024 {
        let key = format!("failed-{failed}");
        assert!(
            put(&engine, "b", &key, &content(&key, 1, 100))
                .await
                .is_err()
        );
        failed += 1;
        assert!(failed <= 1024, "each failed write waits to be revoked");
    }
    let before = written().await;
    for i in 0..10 {
        let key = format!("refused-{i}");
        assert!(
            put(&engine, "b", &key, &content(&key, 1, 100))
                .await
                .is_err()
        );
    }
    assert_eq!(written().await, before, "refused writes append nothing");
    assert_eq!(engine.revocations_waiting(), 1024);

    engine.index().refuse_writes(false);
    put(&engine, "b", "after", &content("after", 1, 100))
        .await
        .unwrap();
    assert_eq!(engine.revocations_waiting(), 0);
    for key in ["before", "after"] {
        assert_eq!(get(&engine, "b", key).await.unwrap(), content(key, 1, 100));
    }
    assert!(get(&engine, "b", "failed-0").await.is_err());
    engine.shutdown().await;
}

/// After its drive reconnects (a target restarted), a write is not failed for the zones the
/// drive kept open before, written on its older session: each is retired as the write finds
/// it, however many there are while too few zones are free to open new ones, and the write
/// lands in a new zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_left_stale_by_a_reconnect_do_not_use_up_a_writes_rounds() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    // 4 user zones open, 6 free: no more are opened while the reserve and the open ones
    // would not be left.
    let g = small_geometry(10, 1 << 20);
    let mut session = None;
    let mut specs = intercepted_specs(dir.path(), 1, g, |_, _, drive| {
        session = Some(drive.session_offset.clone())
    });
    let session = session.unwrap();
    let engine = engine_on(
        dir.path(),
        "zns-file://drive0",
        specs.remove(0).device,
        gc_by_hand,
    )
    .await;
    for i in 0..8 {
        let key = format!("before-{i}");
        put(&engine, "b", &key, &content(&key, 1, 5000))
            .await
            .unwrap();
    }
    session.fetch_add(1, Ordering::SeqCst);
    put(&engine, "b", "after", &content("after", 1, 5000))
        .await
        .expect("the write lands in a zone opened on the drive's new session");
    for key in (0..8)
        .map(|i| format!("before-{i}"))
        .chain(["after".to_string()])
    {
        assert_eq!(
            get(&engine, "b", &key).await.unwrap(),
            content(&key, 1, 5000)
        );
    }
    engine.shutdown().await;
}

/// A write's copies are on as many drives as there are copies, whatever failed on the way: a
/// drive that took one copy never takes a second of the same record in a later round (one disk
/// lost would then lose two copies, and repair, counting copies, would never make them again).
/// Rounds after the first follow a drive that is down, a drive whose zone was written on an
/// older session (its target restarted), and a drive refusing an append for its zone's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_copies_of_a_write_share_a_drive() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 1 << 20);
    let refuse_for_state = Arc::new(AtomicBool::new(false));
    let mut down = None;
    let mut session: Option<Arc<AtomicU64>> = None;
    let specs = intercepted_specs(dir.path(), 3, g, |i, _, drive| {
        if i == 2 {
            down = Some(drive.unavailable.clone());
            session = Some(drive.session_offset.clone());
            let refuse = refuse_for_state.clone();
            drive.after_append = Box::new(move |zslba, result| {
                let refuse = refuse.load(Ordering::SeqCst);
                Box::pin(async move {
                    if refuse {
                        Err(zns::ZoneError::ZoneIsFull { zslba })
                    } else {
                        result
                    }
                })
            });
        }
    });
    let (down, session) = (down.unwrap(), session.unwrap());
    let engine = three_copies_over(dir.path(), specs).await;
    let distinct = |engine: &zonestore::engine::Engine, key: &str| {
        let drives = commit_copies(engine, key);
        let mut unique = drives.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            drives.len(),
            "{key}: copies on drives {drives:?}"
        );
        drives.len()
    };
    put(&engine, "b", "all-up", &content("all-up", 1, 5000))
        .await
        .unwrap();
    assert_eq!(distinct(&engine, "all-up"), 3);

    session.fetch_add(1, Ordering::SeqCst);
    put(
        &engine,
        "b",
        "reconnected",
        &content("reconnected", 1, 5000),
    )
    .await
    .unwrap();
    assert_eq!(distinct(&engine, "reconnected"), 3);

    refuse_for_state.store(true, Ordering::SeqCst);
    for i in 0..4 {
        let key = format!("refused-{i}");
        put(&engine, "b", &key, &content(&key, 1, 5000))
            .await
            .unwrap();
        assert_eq!(distinct(&engine, &key), 2);
    }
    refuse_for_state.store(false, Ordering::SeqCst);

    down.store(true, Ordering::SeqCst);
    for i in 0..4 {
        let key = format!("one-down-{i}");
        put(&engine, "b", &key, &content(&key, 1, 5000))
            .await
            .unwrap();
        assert_eq!(distinct(&engine, &key), 2);
    }
    down.store(false, Ordering::SeqCst);
    engine.shutdown().await;
}

/// An upload of `size` bytes in one part, begun for `key` in bucket `b` (owned by alice).
async fn upload_with_a_part(engine: &zonestore::engine::Engine, key: &str, size: usize) -> u64 {
    let template = ObjectMeta {
        owner: "alice".into(),
        ..ObjectMeta::default()
    };
    let id = engine.create_upload("b", key, template).await.unwrap();
    let mut w = engine.put_part(id, 1).unwrap();
    w.write(bytes::Bytes::from(content(key, 1, size)))
        .await
        .unwrap();
    w.finish_part(format!("{:032x}", 1), vec![]).await.unwrap();
    id
}

/// Uploads left unfinished are aborted by when they began: those begun by the cutoff are
/// gone for good (across a restart), their parts with them; one begun after it is left to
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_left_unfinished_are_aborted_by_when_they_began() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let never = |c: &mut zonestore::engine::EngineConfig| c.abort_uploads_after = None;
    let (engine, _) = open_engine(dir.path(), 1, g, never).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let old = upload_with_a_part(&engine, "old", 300_000).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let young = upload_with_a_part(&engine, "young", 1000).await;
    let began = engine.upload(young).unwrap().template.last_modified_ms;
    assert_eq!(
        engine.abort_uploads_initiated_by(began - 1).await.unwrap(),
        1
    );
    assert!(matches!(
        engine.upload(old),
        Err(EngineError::NoSuchUpload(_))
    ));
    assert!(matches!(
        engine.parts(old, 0, usize::MAX),
        Err(EngineError::NoSuchUpload(_))
    ));
    let expired = engine
        .stats()
        .uploads_expired
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(expired, 1);
    engine.shutdown().await;

    let (engine, _) = open_engine(dir.path(), 1, g, never).await;
    assert!(matches!(
        engine.upload(old),
        Err(EngineError::NoSuchUpload(_))
    ));
    let parts = [(1, format!("{:032x}", 1))];
    engine
        .complete_upload(young, &parts, None, Condition::None)
        .await
        .unwrap();
    assert_eq!(
        get(&engine, "b", "young").await.unwrap(),
        content("young", 1, 1000)
    );
    engine.shutdown().await;
}

/// The engine aborts an upload left unfinished past `abort_uploads_after` by itself, and not
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_aborts_uploads_left_unfinished_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let expiry = std::time::Duration::from_secs(2);
    let (engine, _) = open_engine(dir.path(), 1, g, |c| c.abort_uploads_after = Some(expiry)).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let began = std::time::Instant::now();
    let id = upload_with_a_part(&engine, "abandoned", 1000).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(engine.upload(id).is_ok(), "aborted before its time");
    while engine.upload(id).is_ok() {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "an upload left unfinished was never aborted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        began.elapsed() >= expiry,
        "aborted after {:?}",
        began.elapsed()
    );
    engine.shutdown().await;
}

/// A delete pinned to the bucket as it was checked (its creation time) deletes nothing from a
/// bucket of the same name deleted and created again since, by another user: that one is
/// another bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_pinned_to_a_bucket_leaves_one_made_again_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open_engine(dir.path(), 1, small_geometry(32, 1 << 20), |_| {}).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let checked = engine.bucket("b").unwrap().created_ms;
    engine.delete_bucket("b").await.unwrap();
    while zonestore::engine::commit::now_ms() <= checked {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    engine.create_bucket("b", "bob").await.unwrap();
    put(&engine, "b", "k", &content("k", 1, 3000))
        .await
        .unwrap();
    assert!(matches!(
        engine.delete_in("b", checked, "k", Condition::None).await,
        Err(EngineError::NoSuchBucket(_))
    ));
    assert_eq!(get(&engine, "b", "k").await.unwrap(), content("k", 1, 3000));
    let now = engine.bucket("b").unwrap().created_ms;
    engine
        .delete_in("b", now, "k", Condition::None)
        .await
        .unwrap();
    assert!(get(&engine, "b", "k").await.is_err());
    engine.shutdown().await;
}

/// A completion whose commit record is too large to share one append with its upload's end
/// record (thousands of parts; here a template with metadata filling most of an append) makes the commit durable
/// before the end record is appended: a drive that kept only the end (a crash after another
/// write's flush) would have the completion replayed as an abort, its acknowledged parts lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_too_large_to_pair_makes_its_commit_durable_before_its_end() {
    use std::sync::Arc;
    use zonestore::engine::record::{self, Kind};
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 1 << 20);
    let events: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let specs = intercepted_specs(dir.path(), 1, g, |_, _, drive| {
        let seen = events.clone();
        drive.before_append = Box::new(move |_, _, data| {
            if let Ok(parsed) = record::parse(data, 4096) {
                let kind = parsed.header.kind;
                if matches!(kind, Kind::Commit | Kind::UploadEnd) {
                    seen.lock().unwrap().push(format!("{kind:?}"));
                }
            }
            Box::pin(async {})
        });
        let seen = events.clone();
        drive.before_flush = Box::new(move || {
            seen.lock().unwrap().push("flush".into());
            Box::pin(async { Ok(()) })
        });
    });
    let config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 1);
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    engine.create_bucket("b", "alice").await.unwrap();
    let template = ObjectMeta {
        owner: "alice".into(),
        user_meta: vec![("large".into(), "m".repeat(62_500))],
        ..ObjectMeta::default()
    };
    let id = engine.create_upload("b", "k", template).await.unwrap();
    let mut w = engine.put_part(id, 1).unwrap();
    let body = content("k", 1, 10_000);
    w.write(bytes::Bytes::from(body.clone())).await.unwrap();
    let etag = format!("{:032x}", 1);
    w.finish_part(etag.clone(), vec![]).await.unwrap();
    events.lock().unwrap().clear();
    engine
        .complete_upload(id, &[(1, etag)], None, Condition::None)
        .await
        .unwrap();
    let events = events.lock().unwrap().clone();
    let commit = events.iter().position(|e| e == "Commit");
    let end = events.iter().position(|e| e == "UploadEnd");
    let (Some(commit), Some(end)) = (commit, end) else {
        panic!("the commit and end records were not appended apart: {events:?}");
    };
    assert!(
        events[commit..end].iter().any(|e| e == "flush"),
        "the end record was appended before the commit was flushed: {events:?}"
    );
    assert_eq!(get(&engine, "b", "k").await.unwrap(), body);
    engine.shutdown().await;
}
