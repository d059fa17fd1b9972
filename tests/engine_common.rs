//! Helpers for the engine tests: an engine over emulated drives in a temporary directory, and
//! whole-object put/get.

#![allow(dead_code)]

#[path = "common/pseudo_random.rs"]
mod pseudo_random;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use zns::{EmulatedZns, Geometry, ZonedDevice};
use zonestore::engine::commit::Condition;
use zonestore::engine::model::ObjectMeta;
use zonestore::engine::{DriveSpec, Engine, EngineConfig, EngineResult, Reconciliation};

/// A small drive: many small zones, 64 KiB appends.
pub fn small_geometry(zones: u32, zone_bytes: u64) -> Geometry {
    let mut g = Geometry::new(zones, zone_bytes);
    g.max_append_blocks = 16;
    g.max_open = Some(8);
    g.max_active = Some(8);
    g
}

/// Engine settings for tests that run GC themselves: no background GC, no rate limit.
pub fn gc_by_hand(c: &mut EngineConfig) {
    c.gc.enabled = false;
    c.gc.rate_bytes_per_sec = 0;
}

/// Opens (or creates) the emulated drive in `dir`. A drive this test dropped a moment ago may
/// still be held (its lock on the data file) by the last file tasks of the engine that used it:
/// they are waited for, a while.
pub fn open_drive(dir: &Path, geometry: Geometry) -> EmulatedZns {
    let mut tries = 0;
    loop {
        match EmulatedZns::open_or_create(dir, geometry) {
            Err(e) if tries < 500 && e.to_string().contains("in use") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened.expect("drive"),
        }
    }
}

/// Opens (or creates) `drives` emulated drives under `dir` and an engine over them.
pub async fn open_engine(
    dir: &Path,
    drives: usize,
    geometry: Geometry,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Engine, Vec<EmulatedZns>) {
    let (engine, _, emulated) = open_engine_reporting(dir, drives, geometry, tune).await;
    (engine, emulated)
}

/// [`open_engine`], also returning what the engine found reconciling the index with the
/// drives.
pub async fn open_engine_reporting(
    dir: &Path,
    drives: usize,
    geometry: Geometry,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Engine, Reconciliation, Vec<EmulatedZns>) {
    let mut specs = Vec::new();
    let mut emulated = Vec::new();
    for i in 0..drives {
        let d = open_drive(&dir.join(format!("drive{i}")), geometry);
        emulated.push(d.clone());
        specs.push(DriveSpec {
            name: format!("zns-file://drive{i}"),
            device: Arc::new(d) as Arc<dyn ZonedDevice>,
        });
    }
    let mut config = EngineConfig::new(dir.join("index"), drives);
    tune(&mut config);
    let (engine, reconciliation) = Engine::open(config, specs).await.expect("engine opens");
    (engine, reconciliation, emulated)
}

/// An engine (index under `dir`) over one drive, `device`, named `name`, with bucket `b`
/// (owned by alice) created.
pub async fn engine_on(
    dir: &Path,
    name: &str,
    device: Arc<dyn ZonedDevice>,
    tune: impl FnOnce(&mut EngineConfig),
) -> Engine {
    let specs = vec![DriveSpec {
        name: name.to_string(),
        device,
    }];
    let mut config = EngineConfig::new(dir.join("index"), 1);
    tune(&mut config);
    let (engine, _) = Engine::open(config, specs).await.expect("engine opens");
    engine.create_bucket("b", "alice").await.expect("bucket");
    engine
}

/// Specs of `count` new emulated drives under `dir` (`zns-file://drive{i}`), each behind an
/// interceptor that `tamper` sets up, given the drive's number and the drive behind it.
pub fn intercepted_specs(
    dir: &Path,
    count: usize,
    geometry: Geometry,
    mut tamper: impl FnMut(usize, &EmulatedZns, &mut zns::testing::Intercepted),
) -> Vec<DriveSpec> {
    (0..count)
        .map(|i| {
            let inner =
                EmulatedZns::create(&dir.join(format!("drive{i}")), geometry).expect("drive");
            let mut drive = zns::testing::Intercepted::new(Arc::new(inner.clone()));
            tamper(i, &inner, &mut drive);
            DriveSpec {
                name: format!("zns-file://drive{i}"),
                device: Arc::new(drive),
            }
        })
        .collect()
}

/// The drive specs for the drives under `dir` (for a rebuild).
pub fn drive_specs(emulated: &[EmulatedZns]) -> Vec<DriveSpec> {
    emulated
        .iter()
        .enumerate()
        .map(|(i, d)| DriveSpec {
            name: format!("zns-file://drive{i}"),
            device: Arc::new(d.clone()) as Arc<dyn ZonedDevice>,
        })
        .collect()
}

/// Deterministic content for a key and version.
pub fn content(key: &str, version: u64, len: usize) -> Vec<u8> {
    let seed = key.bytes().fold(version.wrapping_mul(1_000_003), |a, b| {
        a.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    pseudo_random::bytes(seed, len)
}

/// Writes an object in 100 KiB chunks.
pub async fn put(
    engine: &Engine,
    bucket: &str,
    key: &str,
    data: &[u8],
) -> EngineResult<ObjectMeta> {
    put_if(engine, bucket, key, data, Condition::None).await
}

/// Writes `count` objects of `size` bytes into `bucket` (keys `f0`, `f1`...) and deletes them:
/// zones full of garbage for GC.
pub async fn garbage(engine: &Engine, bucket: &str, count: usize, size: usize) {
    put_many(engine, bucket, count, &content("f", 1, size), 4, |k| {
        format!("f{k}")
    })
    .await;
    for k in 0..count {
        engine.delete(bucket, &format!("f{k}")).await.unwrap();
    }
}

/// Writes `keys` objects of `body` named by `name` into `bucket`, from `writers` tasks at once.
pub async fn put_many(
    engine: &Engine,
    bucket: &str,
    keys: usize,
    body: &[u8],
    writers: usize,
    name: fn(usize) -> String,
) {
    let body = Arc::new(body.to_vec());
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (engine, body, bucket) = (engine.clone(), body.clone(), bucket.to_string());
        tasks.push(tokio::spawn(async move {
            for k in (w..keys).step_by(writers) {
                put(&engine, &bucket, &name(k), &body).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

/// Writes an object under a condition.
pub async fn put_if(
    engine: &Engine,
    bucket: &str,
    key: &str,
    data: &[u8],
    condition: Condition,
) -> EngineResult<ObjectMeta> {
    let mut writer = engine.put(bucket, key)?;
    for chunk in data.chunks(100 << 10) {
        writer.write(Bytes::copy_from_slice(chunk)).await?;
    }
    let meta = ObjectMeta {
        etag: format!("{:x}", data.len()),
        owner: "tester".into(),
        ..ObjectMeta::default()
    };
    writer.finish_object(meta, condition).await
}

/// Reads a whole object (the version current when the read starts, even if it is overwritten
/// meanwhile).
pub async fn get(engine: &Engine, bucket: &str, key: &str) -> EngineResult<Vec<u8>> {
    let handle = engine.open_object(bucket, key)?;
    let mut stream = handle.read(0..handle.meta().size)?;
    let mut out = Vec::with_capacity(handle.meta().size as usize);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Reads a range of an object.
pub async fn read_range(
    engine: &Engine,
    bucket: &str,
    key: &str,
    start: u64,
    end: u64,
) -> EngineResult<Vec<u8>> {
    let mut stream = engine.open_object(bucket, key)?.read(start..end)?;
    let mut out = Vec::with_capacity((end - start) as usize);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Rebuilds an index from `drives` into `dir/name` and checks that it equals `engine`'s live
/// one, naming the first difference.
pub async fn assert_rebuild_equals_live(
    engine: &Engine,
    drives: &[EmulatedZns],
    dir: &Path,
    name: &str,
) {
    let revoked = engine.revoked_writes().unwrap();
    assert_rebuild_with_equals_live(engine, drives, dir, name, &revoked).await;
}

/// [`assert_rebuild_equals_live`] with the rebuild passing over what `revoked` names.
pub async fn assert_rebuild_with_equals_live(
    engine: &Engine,
    drives: &[EmulatedZns],
    dir: &Path,
    name: &str,
    revoked: &zonestore::engine::revoked::Revocations,
) {
    let live = engine.canonical_dump().unwrap();
    let rebuilt_dir = dir.join(name);
    zonestore::engine::recovery::rebuild(&rebuilt_dir, drive_specs(drives), revoked, |_| {})
        .await
        .unwrap();
    assert!(
        !rebuilt_dir.join("rebuild-scratch").exists(),
        "the scratch store is removed"
    );
    let rebuilt = zonestore::engine::recovery::canonical_dump(
        &zonestore::engine::index::Index::open(&rebuilt_dir).unwrap(),
    )
    .unwrap();
    if live != rebuilt {
        for (a, b) in live.iter().zip(rebuilt.iter()) {
            if a != b {
                panic!("first difference:\n live:    {a}\n rebuilt: {b}");
            }
        }
        panic!(
            "dumps differ in length: live {} rebuilt {}",
            live.len(),
            rebuilt.len()
        );
    }
}
