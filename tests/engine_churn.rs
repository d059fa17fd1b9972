//! The engine under concurrent PUT, overwrite, DELETE and GET while GC runs continuously on a
//! small drive: every read returns exactly the version the test expects, space runs out
//! cleanly (PUTs fail, GETs and DELETEs keep working, deleting makes room again), and the index
//! rebuilt from the zones equals the live one.

#[path = "engine_common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::sync::RwLock;
use zonestore::engine::EngineError;

/// What a key holds: its version and length, or nothing (deleted).
type KeySlot = RwLock<Option<(u64, usize)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_churn_with_gc_reads_exactly_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(64, 512 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, |c| {
        c.gc.low_watermark = 0.25;
        c.gc.high_watermark = 0.35;
        c.gc.rate_bytes_per_sec = 0;
        // Slow enough that GC moves copies between a batch being read and its copies being
        // checked.
        c.repair.scrub_rate_bytes_per_sec = 4 << 20;
    })
    .await;
    engine.create_bucket("b", "alice").await.unwrap();
    // Scrub passes run all along: copies GC moves meanwhile must not be reported bad.
    let scrubbing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scrubber = tokio::spawn({
        let (engine, scrubbing) = (engine.clone(), scrubbing.clone());
        async move {
            while scrubbing.load(std::sync::atomic::Ordering::Relaxed) {
                engine.repair().scrub();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // key -> Some((version, len)) or None (deleted); one lock per key orders reads and writes.
    let keys: Arc<Vec<KeySlot>> = Arc::new((0..48).map(|_| RwLock::new(None)).collect());
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let engine = engine.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = w * 7919 + 13;
            for op in 0..150u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let k = ((x >> 33) % 12 + w * 12) as usize;
                let key = format!("key{k}");
                let mut slot = keys[k].write().await;
                if (x >> 17) % 6 == 0 {
                    engine.delete("b", &key).await.unwrap();
                    *slot = None;
                } else {
                    let len = ((x >> 40) % 180_000) as usize;
                    let version = w * 1000 + op;
                    put(&engine, "b", &key, &content(&key, version, len))
                        .await
                        .unwrap();
                    *slot = Some((version, len));
                }
            }
        }));
    }
    for r in 0..3u64 {
        let engine = engine.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = r + 99;
            for _ in 0..400 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let k = ((x >> 33) % 48) as usize;
                let key = format!("key{k}");
                let slot = keys[k].read().await;
                match (*slot, get(&engine, "b", &key).await) {
                    (Some((version, len)), Ok(data)) => assert!(
                        data == content(&key, version, len),
                        "{key} v{version} read back wrong"
                    ),
                    (None, Err(EngineError::NoSuchKey { .. })) => {}
                    (want, got) => {
                        panic!("{key}: expected {want:?}, got {:?}", got.map(|d| d.len()))
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    scrubbing.store(false, std::sync::atomic::Ordering::Relaxed);
    scrubber.await.unwrap();
    let repair = engine.repair().status();
    assert!(repair.scrub_passes > 0, "scrub ran during the churn");
    println!(
        "scrub: {} passes, {} copies checked",
        repair.scrub_passes, repair.scrub_checked
    );
    assert_eq!(
        repair.scrub_bad, 0,
        "no copy was reported bad (scrub checked {} copies in {} passes)",
        repair.scrub_checked, repair.scrub_passes
    );
    let status = engine.gc().status();
    assert!(
        status.zones_collected >= 10,
        "GC reclaimed zones during the run: {status:?}"
    );
    // Everything still reads back exactly.
    for (k, slot) in keys.iter().enumerate() {
        let key = format!("key{k}");
        match *slot.read().await {
            Some((version, len)) => assert_eq!(
                get(&engine, "b", &key).await.unwrap(),
                content(&key, version, len)
            ),
            None => assert!(engine.head("b", &key).is_err()),
        }
    }
    let wa = engine.stats().write_amplification();
    println!(
        "write amplification {wa:.2}, zones reset {}",
        status.zones_collected
    );
    engine.gc().stop();
    while engine.gc().status().busy {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_rebuild_equals_live(&engine, &drives, dir.path(), "rebuilt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drive_refuses_puts_but_serves_gets_and_deletes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, _) = open_engine(dir.path(), 1, g, |c| c.gc.rate_bytes_per_sec = 0).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let stored = fill(&engine, "fill", 60_000, 200).await;
    assert!(stored.len() > 10);
    // Reads and deletes still work.
    for key in &stored {
        assert_eq!(
            get(&engine, "b", key).await.unwrap(),
            content(key, 0, 60_000)
        );
    }

    for key in stored.iter().step_by(2) {
        engine.delete("b", key).await.unwrap();
    }
    // GC reclaims the deleted data and the next PUT fits.
    put_once_gc_makes_room(&engine, "after", &content("after", 0, 60_000)).await;
    assert_eq!(
        get(&engine, "b", "after").await.unwrap(),
        content("after", 0, 60_000)
    );
    for key in stored.iter().skip(1).step_by(2) {
        assert_eq!(
            get(&engine, "b", key).await.unwrap(),
            content(key, 0, 60_000),
            "survivors intact after GC"
        );
    }
}

/// On a drive of few zones (8) filled to its reserve, with every zone sealed by a restart, a
/// DELETE still finds a zone for its tombstone (deleting is how space comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drive_of_few_zones_still_takes_deletes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(8, 256 << 10);
    let (engine, _) = open_engine(dir.path(), 1, g, |c| c.gc.rate_bytes_per_sec = 0).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let stored = fill(&engine, "fill", 60_000, 200).await;
    assert!(stored.len() > 3, "{} stored", stored.len());
    engine.shutdown().await;
    let (engine, _) = open_engine(dir.path(), 1, g, |c| c.gc.rate_bytes_per_sec = 0).await;
    for key in stored.iter().step_by(2) {
        engine.delete("b", key).await.unwrap();
    }
    put_once_gc_makes_room(&engine, "after", &content("after", 0, 60_000)).await;
    assert_eq!(
        get(&engine, "b", &stored[1]).await.unwrap(),
        content(&stored[1], 0, 60_000)
    );
}

/// A drive full of small objects, deleted in an order that spreads the garbage thin (one
/// object from each zone in turn): the deletes go on working (their tombstones need room too)
/// and room comes back for PUTs, though no zone reaches the garbage GC normally waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drive_of_small_objects_deleted_thinly_keeps_taking_deletes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, _) = open_engine(dir.path(), 1, g, |c| c.gc.rate_bytes_per_sec = 0).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let stored = fill(&engine, "k", 3000, 2000).await;
    assert!(stored.len() > 100, "{} stored", stored.len());
    // Objects went into zones in order, about 32 to a zone: one from each zone in turn.
    let mut order: Vec<usize> = (0..stored.len()).collect();
    order.sort_by_key(|&i| (i % 32, i));
    let deleted = stored.len() * 6 / 10;
    for &i in &order[..deleted] {
        let mut tries = 0;
        loop {
            match engine.delete("b", &stored[i]).await {
                Ok(_) => break,
                Err(e) if tries < 100 => {
                    tries += 1;
                    engine.gc().nudge();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if tries == 100 {
                        for zone in engine.zone_table() {
                            eprintln!("{zone:?}");
                        }
                        panic!(
                            "deleting {} failed for good: {e}; GC {:?}",
                            stored[i],
                            engine.gc().status()
                        );
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    put_once_gc_makes_room(&engine, "after", &content("after", 0, 3000)).await;
    for &i in &order[deleted..] {
        assert_eq!(
            get(&engine, "b", &stored[i]).await.unwrap(),
            content(&stored[i], 0, 3000)
        );
    }
}

/// PUTs objects of `size` bytes into bucket `b` (keys `{prefix}0000`, `{prefix}0001`...) until
/// the drive is full, at most `most`; returns the keys stored. The drive must fill up with a
/// clear error (out of space), and nothing else may fail.
async fn fill(
    engine: &zonestore::engine::Engine,
    prefix: &str,
    size: usize,
    most: usize,
) -> Vec<String> {
    let mut stored = Vec::new();
    for i in 0..most {
        let key = format!("{prefix}{i:04}");
        match put(engine, "b", &key, &content(&key, 0, size)).await {
            Ok(_) => stored.push(key),
            Err(EngineError::NoSpace(_)) => return stored,
            Err(e) => panic!("the drive filled up with another error than out of space: {e}"),
        }
    }
    panic!("{most} objects of {size} bytes did not fill the drive");
}

/// PUTs `body` as `key` in bucket `b` once GC has made room for it (within 5 s).
async fn put_once_gc_makes_room(engine: &zonestore::engine::Engine, key: &str, body: &[u8]) {
    for _ in 0..100 {
        engine.gc().nudge();
        if put(engine, "b", key, body).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deleting made no room for the next PUT");
}

/// A store full but for a zone GC cannot empty (a record in it damaged on its only copy) is
/// full: once GC has had to keep that zone twice in a row, a PUT is refused as out of space
/// (507), not told, after a wait, that GC is busy (503), for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_gc_cannot_empty_does_not_keep_a_full_store_busy() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let g = small_geometry(16, 256 << 10);
    let (engine, drives) = open_engine(dir.path(), 1, g, |c| c.gc.rate_bytes_per_sec = 0).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let stored = fill(&engine, "fill", 60_000, 200).await;
    // The zone holding most objects: all but one are deleted, whose commit record is damaged.
    let mut by_zone: std::collections::BTreeMap<u64, Vec<(String, u64)>> = Default::default();
    for (name, entry) in engine.object_entries().unwrap() {
        let key = stored
            .iter()
            .find(|k| name.ends_with(k.as_bytes()))
            .unwrap()
            .clone();
        let lba = entry.commit[0].lba;
        by_zone
            .entry(lba / g.zone_size)
            .or_default()
            .push((key, lba));
    }
    let (_, mut in_zone) = by_zone.into_iter().max_by_key(|(_, v)| v.len()).unwrap();
    assert!(in_zone.len() >= 3, "{in_zone:?}");
    let (kept, kept_lba) = in_zone.pop().unwrap();
    for (key, _) in &in_zone {
        engine.delete("b", key).await.unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(drives[0].data_path())
        .unwrap()
        .write_all_at(&[0xFF; 64], kept_lba * u64::from(g.block_size))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        engine.gc().nudge();
        match put(&engine, "b", "more", &content("more", 0, 60_000)).await {
            Err(EngineError::NoSpace(_)) => break,
            Err(e) if e.is_unavailable() => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still told to try again: {e}"
                )
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing else broke: the other objects read back whole.
    for key in stored
        .iter()
        .filter(|k| **k != kept && !in_zone.iter().any(|(d, _)| d == *k))
    {
        assert_eq!(
            get(&engine, "b", key).await.unwrap(),
            content(key, 0, 60_000)
        );
    }
    engine.shutdown().await;
}

/// A shutdown that comes while GC collects a zone at a drive's reserve lets the collection
/// end (the zone it opened may have been the drive's last free one, which only the victim's
/// reset gives back): after the restart GC still has room to work, and deletes and PUTs go on,
/// rather than the drive being left with no free zone for GC, writes or deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_collection_at_the_reserve_does_not_wedge_the_drive() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    // (Zones of 2 MiB full of small objects: a victim holds more records than GC commits at
    // once, so some of its moves are in the index when the shutdown comes.)
    let g = small_geometry(16, 2 << 20);
    let unpaced = |c: &mut zonestore::engine::EngineConfig| c.gc.rate_bytes_per_sec = 0;
    let (engine, _) = open_engine(dir.path(), 1, g, unpaced).await;
    engine.create_bucket("b", "alice").await.unwrap();
    let stored = fill_small(&engine, 100, 5000).await;
    // (Restarted: every zone is sealed, and the deletes' tombstones take a reserve zone.)
    engine.shutdown().await;

    // GC's 24th append (past its first commit of moves) waits until the shutdown has begun.
    let inner = open_drive(&dir.path().join("drive0"), g);
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner));
    let hold = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    drive.before_append = Box::new({
        let (hold, held, release) = (hold.clone(), held.clone(), release.clone());
        move |_, _, _| {
            let wait = hold.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                == Ok(1);
            let (held, release) = (held.clone(), release.clone());
            Box::pin(async move {
                if wait {
                    held.store(true, Ordering::SeqCst);
                    let _ = release.acquire().await;
                }
            })
        }
    });
    let mut config = zonestore::engine::EngineConfig::new(dir.path().join("index"), 1);
    unpaced(&mut config);
    config.gc.enabled = false;
    let specs = vec![zonestore::engine::DriveSpec {
        name: "zns-file://drive0".into(),
        device: Arc::new(drive),
    }];
    let (engine, _) = zonestore::engine::Engine::open(config, specs)
        .await
        .unwrap();
    // One object of each zone deleted: every zone keeps several live records (a collection
    // moves them one group at a time) and none is left empty (reset without moving anything).
    let mut by_zone: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (name, entry) in engine.object_entries().unwrap() {
        let key = stored
            .iter()
            .find(|k| name.ends_with(k.as_bytes()))
            .unwrap()
            .clone();
        by_zone
            .entry(entry.commit[0].lba / g.zone_size)
            .or_default()
            .push(key);
    }
    let mut deleted = Vec::new();
    for keys in by_zone.values().filter(|keys| keys.len() >= 3) {
        engine.delete("b", &keys[0]).await.unwrap();
        deleted.push(keys[0].clone());
    }
    assert!(deleted.len() >= 4, "{by_zone:?}");
    hold.store(24, Ordering::SeqCst);
    engine.gc().start();
    engine.gc().nudge();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !held.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "GC never appended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shared = engine.inner().clone();
    let stopping = tokio::spawn(engine.shutdown());
    while !shared.gc().is_shut_down() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // (The shutdown waits for GC, held: it gets no further until the append goes on.)
    drop(shared);
    release.add_permits(1);
    stopping.await.unwrap();

    let (engine, _) = open_engine(dir.path(), 1, g, unpaced).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let live: Vec<&String> = stored.iter().filter(|k| !deleted.contains(k)).collect();
    for key in live.iter().step_by(2) {
        loop {
            engine.gc().nudge();
            match engine.delete("b", key).await {
                Ok(()) => break,
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "deletes no longer go through: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    put_once_gc_makes_room(&engine, "after", &content("after", 0, 60_000)).await;
    for key in live.iter().skip(1).step_by(2) {
        assert_eq!(get(&engine, "b", key).await.unwrap(), content(key, 0, 100));
    }
    engine.shutdown().await;
}

/// [`fill`] for many small objects, PUT 16 at a time.
async fn fill_small(engine: &zonestore::engine::Engine, size: usize, most: usize) -> Vec<String> {
    let mut stored = Vec::new();
    for batch in (0..most).collect::<Vec<_>>().chunks(16) {
        let puts = batch.iter().map(|i| {
            let key = format!("small{i:05}");
            async move {
                let result = put(engine, "b", &key, &content(&key, 0, size)).await;
                (key, result)
            }
        });
        let mut full = false;
        for (key, result) in futures::future::join_all(puts).await {
            match result {
                Ok(_) => stored.push(key),
                Err(EngineError::NoSpace(_)) => full = true,
                Err(e) => panic!("the drive filled up with another error than out of space: {e}"),
            }
        }
        if full {
            return stored;
        }
    }
    panic!("{most} objects of {size} bytes did not fill the drive");
}
