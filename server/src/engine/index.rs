//! The index in RocksDB: one column family per kind of entry, keys laid out so that the scans S3
//! needs are range scans in key order. Only the committer writes; everyone reads.
//!
//! ```text
//! CF            key                                         value
//! meta          name                                        engine metadata (seq lease, drives)
//! buckets       bucket                                      BucketEntry
//! objects       bucket 0x00 key                             ObjectEntry
//! extents       stream_id u64 BE, offset u64 BE             Extent
//! tombstones    kind byte, then bucket 0x00 key | bucket | upload_id BE    TombstoneEntry
//! uploads       upload_id u64 BE                            UploadEntry
//! upload_keys   bucket 0x00 key 0x00 upload_id u64 BE       (empty): uploads in listing order
//! parts         upload_id u64 BE, part_number u32 BE        PartEntry
//! zones         drive u16 BE, zone u32 BE                   ZoneAccount
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    SnapshotWithThreadMode, WriteBatch, WriteOptions,
};

use super::model::{
    BucketEntry, Extent, ObjectEntry, ObjectMeta, PartEntry, TombstoneEntry, UploadEntry,
    ZoneAccount, ZoneId,
};

/// Column family names.
pub mod cf {
    /// Engine metadata.
    pub const META: &str = "meta";
    /// Buckets.
    pub const BUCKETS: &str = "buckets";
    /// Objects.
    pub const OBJECTS: &str = "objects";
    /// Stream extents.
    pub const EXTENTS: &str = "extents";
    /// Tombstones still needed.
    pub const TOMBSTONES: &str = "tombstones";
    /// Multipart uploads.
    pub const UPLOADS: &str = "uploads";
    /// Multipart uploads by bucket and key.
    pub const UPLOAD_KEYS: &str = "upload_keys";
    /// Parts of multipart uploads.
    pub const PARTS: &str = "parts";
    /// Per-zone accounting.
    pub const ZONES: &str = "zones";
    /// All of them.
    pub const ALL: [&str; 9] = [
        META,
        BUCKETS,
        OBJECTS,
        EXTENTS,
        TOMBSTONES,
        UPLOADS,
        UPLOAD_KEYS,
        PARTS,
        ZONES,
    ];
}

/// What a tombstone hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TombKind {
    /// An object key.
    Object = b'O',
    /// A bucket.
    Bucket = b'B',
    /// A multipart upload.
    Upload = b'U',
}

/// Errors of the index.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IndexError {
    /// RocksDB failed.
    #[error("index (RocksDB) error: {0}")]
    Db(#[from] rocksdb::Error),
    /// The index was made to refuse writes (see [`Index::refuse_writes`]).
    #[error("index refused the write (writes are refused on purpose, for a test)")]
    Refused,
    /// A stored value is corrupt.
    #[error("corrupt index entry in {cf}: {detail}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl IndexError {
    /// Whether the index's disk is full (RocksDB takes writes again once there is room).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, IndexError::Db(e)
            if e.kind() == rocksdb::ErrorKind::IOError
                && e.to_string().contains("No space left on device"))
    }

    /// Whether the failure passes by itself (busy, timed out, try again): the same request
    /// may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, IndexError::Db(e) if matches!(
            e.kind(),
            rocksdb::ErrorKind::Busy
                | rocksdb::ErrorKind::TryAgain
                | rocksdb::ErrorKind::TimedOut
                | rocksdb::ErrorKind::Incomplete
        ))
    }
}

/// A consistent view of the index at one moment, kept by an open object so that it reads the
/// version it opened even if the object is overwritten or deleted meanwhile.
pub struct IndexSnapshot {
    // Declared first so that it is dropped before the index it borrows.
    snapshot: SnapshotWithThreadMode<'static, DB>,
    index: Arc<Index>,
}

impl std::fmt::Debug for IndexSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSnapshot").finish_non_exhaustive()
    }
}

impl IndexSnapshot {
    /// An object, as of the snapshot.
    pub fn object(&self, bucket: &str, key: &str) -> IndexResult<Option<ObjectEntry>> {
        let cf = self.index.cf(cf::OBJECTS);
        self.snapshot
            .get_cf(cf, object_key(bucket, key))?
            .map(|v| ObjectEntry::decode(&v).map_err(corrupt(cf::OBJECTS)))
            .transpose()
    }

    /// Up to `max` extents of a stream that hold bytes at or after `from`, in order, as of the
    /// snapshot: (offset in the stream, extent).
    pub fn stream_extents(
        &self,
        stream_id: u64,
        from: u64,
        max: usize,
    ) -> IndexResult<Vec<(u64, Extent)>> {
        self.index
            .stream_extents_from(stream_id, from, max, Some(&self.snapshot))
    }
}

/// Result of index operations.
pub type IndexResult<T> = Result<T, IndexError>;

/// Key of an object.
pub fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Key of an extent.
pub fn extent_key(stream_id: u64, offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&stream_id.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Key of a zone account.
pub fn zone_key(zone: ZoneId) -> [u8; 6] {
    let mut k = [0u8; 6];
    k[..2].copy_from_slice(&zone.drive.to_be_bytes());
    k[2..].copy_from_slice(&zone.zone.to_be_bytes());
    k
}

/// Key of a tombstone.
pub fn tombstone_key(kind: TombKind, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(kind as u8);
    k.extend_from_slice(name);
    k
}

/// Key of a part.
pub fn part_key(upload_id: u64, part_number: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&upload_id.to_be_bytes());
    k[8..].copy_from_slice(&part_number.to_be_bytes());
    k
}

/// Key of an upload in listing order.
pub fn upload_listing_key(bucket: &str, key: &str, upload_id: u64) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(&upload_id.to_be_bytes());
    k
}

/// The upload id at the end of an upload listing key (see [`upload_listing_key`]).
fn upload_id_of(listing_key: &[u8]) -> IndexResult<u64> {
    listing_key
        .len()
        .checked_sub(8)
        .and_then(|at| listing_key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| IndexError::Corrupt {
            cf: cf::UPLOAD_KEYS,
            detail: "an upload listing key without its upload id".into(),
        })
}

/// Whether `key` is a common prefix of a listing under `prefix` folded by `delimiter`: its
/// first delimiter after the prefix ends exactly where the key ends (with a delimiter of
/// several characters, a key merely ending with it may not be one).
pub fn is_common_prefix(key: &str, prefix: &str, delimiter: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| {
            rest.find(delimiter)
                .map(|at| at + delimiter.len() == rest.len())
        })
        .unwrap_or(false)
}

/// The smallest key greater than every key starting with `prefix` (None if there is none).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects: key and what a listing shows of it (its metadata, without the streams and
    /// part sizes that an object of many parts holds).
    pub objects: Vec<(String, ObjectMeta)>,
    /// Common prefixes (with a delimiter).
    pub prefixes: Vec<String>,
    /// Whether more entries follow.
    pub truncated: bool,
    /// The last key or prefix returned (where the next page starts after).
    pub last: Option<String>,
}

/// One page of a bucket's uploads in progress (see [`Index::uploads`]).
#[derive(Debug, Default)]
pub struct UploadListing {
    /// Uploads, in (key, upload id) order.
    pub uploads: Vec<UploadEntry>,
    /// Common prefixes (with a delimiter).
    pub prefixes: Vec<String>,
    /// Whether more entries follow.
    pub truncated: bool,
}

/// What [`Index::fold_scan`] found: entries, common prefixes, whether more follow, and the
/// name or prefix the next page starts after.
struct Folded<T> {
    entries: Vec<T>,
    prefixes: Vec<String>,
    truncated: bool,
    last: Option<String>,
}

/// The RocksDB index.
pub struct Index {
    db: DB,
    /// While set, every write fails as on a full disk (see [`Index::refuse_writes`]).
    refusing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.db.path())
            .finish()
    }
}

fn corrupt(cf: &'static str) -> impl Fn(super::codec::DecodeError) -> IndexError {
    move |e| IndexError::Corrupt { cf, detail: e.0 }
}

/// Bytes of index blocks (data, index and filter blocks) kept in memory, shared by every
/// column family.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Bloom filter bits per key (about 1% false positives).
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// A table file with at least this many deletions among any this-many consecutive entries
/// ([`DELETION_WINDOW`]), or this share of deletions overall, is compacted soon: a listing
/// must otherwise step over every deleted key of a bucket emptied by DeleteObjects until
/// compaction happens to reach it, which may be never once writes stop.
const DELETION_WINDOW: usize = 128;
const DELETIONS_IN_WINDOW: usize = 64;
const DELETION_RATIO: f64 = 0.5;

impl Index {
    /// Opens (or creates) the index at `path`.
    pub fn open(path: &Path) -> IndexResult<Index> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        options.set_max_background_jobs(2);
        options.set_write_buffer_size(32 << 20);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Table files kept open, within the process's share of descriptors for the index.
        options.set_max_open_files(crate::fd_limit::index_open_files());
        // One block cache for every column family, and a Bloom filter per table file: a point
        // lookup (HEAD, GET, a conditional PUT) then reads only the files that may hold its key,
        // however many levels millions of keys have spread over.
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = cf::ALL.iter().map(|name| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks stay with their open table files rather than in the
            // sharded cache: one table's index block can outgrow a cache shard, and is then read
            // again for every lookup (a thousand lookups a second instead of a hundred thousand).
            table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
            let mut o = Options::default();
            o.set_write_buffer_size(16 << 20);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_block_based_table_factory(&table);
            o.add_compact_on_deletion_collector_factory(
                DELETION_WINDOW,
                DELETIONS_IN_WINDOW,
                DELETION_RATIO,
            );
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&options, path, cfs)?;
        Ok(Index {
            db,
            refusing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes every later write fail (`on`) as on a full disk, or take writes again: for tests
    /// of what the engine does while its index takes no writes.
    pub fn refuse_writes(&self, on: bool) {
        self.refusing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The handle of a column family (all are created at open).
    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created when the index opens")
    }

    /// Raw point read.
    pub fn get_raw(&self, cf_name: &str, key: &[u8]) -> IndexResult<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf_name), key)?)
    }

    /// Writes a batch; with `sync`, durable when it returns.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> IndexResult<()> {
        if self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(IndexError::Refused);
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// A bucket.
    pub fn bucket(&self, name: &str) -> IndexResult<Option<BucketEntry>> {
        self.get_raw(cf::BUCKETS, name.as_bytes())?
            .map(|v| BucketEntry::decode(&v).map_err(corrupt(cf::BUCKETS)))
            .transpose()
    }

    /// Every bucket, in name order.
    pub fn buckets(&self) -> IndexResult<Vec<(String, BucketEntry)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::BUCKETS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k).into_owned();
            out.push((name, BucketEntry::decode(&v).map_err(corrupt(cf::BUCKETS))?));
        }
        Ok(out)
    }

    /// An object.
    pub fn object(&self, bucket: &str, key: &str) -> IndexResult<Option<ObjectEntry>> {
        self.get_raw(cf::OBJECTS, &object_key(bucket, key))?
            .map(|v| ObjectEntry::decode(&v).map_err(corrupt(cf::OBJECTS)))
            .transpose()
    }

    /// An extent.
    pub fn extent(&self, stream_id: u64, offset: u64) -> IndexResult<Option<Extent>> {
        self.get_raw(cf::EXTENTS, &extent_key(stream_id, offset))?
            .map(|v| Extent::decode(&v).map_err(corrupt(cf::EXTENTS)))
            .transpose()
    }

    /// The extents of a stream, in order: (offset, extent).
    pub fn stream_extents(&self, stream_id: u64) -> IndexResult<Vec<(u64, Extent)>> {
        self.stream_extents_from(stream_id, 0, usize::MAX, None)
    }

    /// A consistent view of the index as of now, which an open object keeps for as long as it
    /// is read (see [`IndexSnapshot`]).
    pub fn snapshot(self: &Arc<Self>) -> IndexSnapshot {
        let snapshot = self.db.snapshot();
        // SAFETY: the snapshot borrows `self.db`. The `IndexSnapshot` also holds an `Arc` of
        // this index, so the DB outlives the snapshot (an `Arc`'s contents never move), and
        // its fields drop in declaration order: the snapshot is released first.
        let snapshot = unsafe {
            std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(
                snapshot,
            )
        };
        IndexSnapshot {
            snapshot,
            index: self.clone(),
        }
    }

    /// Up to `max` extents of a stream that hold bytes at or after `from`, in order (as of
    /// `snapshot` if given).
    fn stream_extents_from(
        &self,
        stream_id: u64,
        from: u64,
        max: usize,
        snapshot: Option<&SnapshotWithThreadMode<'_, DB>>,
    ) -> IndexResult<Vec<(u64, Extent)>> {
        let options = || {
            let mut o = ReadOptions::default();
            if let Some(s) = snapshot {
                o.set_snapshot(s);
            }
            o
        };
        let cf = self.cf(cf::EXTENTS);
        let offset_of = |k: &[u8]| {
            k.get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| IndexError::Corrupt {
                    cf: cf::EXTENTS,
                    detail: format!("an extent key of {} bytes", k.len()),
                })
        };
        // The extent holding `from` starts at or before it: find it with a reverse seek.
        let mut start = extent_key(stream_id, 0);
        if from > 0 {
            let target = extent_key(stream_id, from);
            // Bounded below by the stream's first key: were none of its extents visible at or
            // before `from`, the seek would not walk back over other streams' deleted keys.
            let mut backward = options();
            backward.set_iterate_lower_bound(extent_key(stream_id, 0).to_vec());
            let mut back = self.db.iterator_cf_opt(
                cf,
                backward,
                IteratorMode::From(&target, Direction::Reverse),
            );
            if let Some(item) = back.next() {
                let (k, _) = item?;
                if k.get(..8) == Some(&stream_id.to_be_bytes()[..]) {
                    start = extent_key(stream_id, offset_of(&k)?);
                }
            }
        }
        let mut forward = options();
        forward.set_iterate_upper_bound(extent_key(stream_id.saturating_add(1), 0).to_vec());
        let mut out = Vec::new();
        for item in
            self.db
                .iterator_cf_opt(cf, forward, IteratorMode::From(&start, Direction::Forward))
        {
            if out.len() >= max {
                break;
            }
            let (k, v) = item?;
            let offset = offset_of(&k)?;
            let extent = Extent::decode(&v).map_err(corrupt(cf::EXTENTS))?;
            if offset + u64::from(extent.length) > from {
                out.push((offset, extent));
            }
        }
        Ok(out)
    }

    /// A tombstone.
    pub fn tombstone(&self, kind: TombKind, name: &[u8]) -> IndexResult<Option<TombstoneEntry>> {
        self.get_raw(cf::TOMBSTONES, &tombstone_key(kind, name))?
            .map(|v| TombstoneEntry::decode(&v).map_err(corrupt(cf::TOMBSTONES)))
            .transpose()
    }

    /// A multipart upload.
    pub fn upload(&self, upload_id: u64) -> IndexResult<Option<UploadEntry>> {
        self.get_raw(cf::UPLOADS, &upload_id.to_be_bytes())?
            .map(|v| UploadEntry::decode(&v).map_err(corrupt(cf::UPLOADS)))
            .transpose()
    }

    /// A part.
    pub fn part(&self, upload_id: u64, part_number: u32) -> IndexResult<Option<PartEntry>> {
        self.get_raw(cf::PARTS, &part_key(upload_id, part_number))?
            .map(|v| PartEntry::decode(&v).map_err(corrupt(cf::PARTS)))
            .transpose()
    }

    /// The parts of an upload in part-number order, from `after` (exclusive), at most `limit`.
    pub fn parts(&self, upload_id: u64, after: u32, limit: usize) -> IndexResult<Vec<PartEntry>> {
        let cf = self.cf(cf::PARTS);
        let start = part_key(upload_id, after.saturating_add(1));
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(part_key(upload_id.saturating_add(1), 0).to_vec());
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf_opt(cf, options, IteratorMode::From(&start, Direction::Forward))
            .take(limit)
        {
            let (_, v) = item?;
            out.push(PartEntry::decode(&v).map_err(corrupt(cf::PARTS))?);
        }
        Ok(out)
    }

    /// Uploads in progress in upload-id order, after `after` (exclusive; `None`: from the
    /// first), at most `limit`.
    pub fn uploads_by_id(&self, after: Option<u64>, limit: usize) -> IndexResult<Vec<UploadEntry>> {
        let start = match after {
            None => 0,
            Some(id) => match id.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(
                self.cf(cf::UPLOADS),
                IteratorMode::From(&start.to_be_bytes(), Direction::Forward),
            )
            .take(limit)
        {
            let (_, v) = item?;
            out.push(UploadEntry::decode(&v).map_err(corrupt(cf::UPLOADS))?);
        }
        Ok(out)
    }

    /// Every upload in progress of exactly `bucket`/`key`, oldest first.
    pub fn uploads_of(&self, bucket: &str, key: &str) -> IndexResult<Vec<UploadEntry>> {
        let mut base = object_key(bucket, key);
        base.push(0);
        let mut options = ReadOptions::default();
        if let Some(end) = prefix_successor(&base) {
            options.set_iterate_upper_bound(end);
        }
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(cf::UPLOAD_KEYS),
            options,
            IteratorMode::From(&base, Direction::Forward),
        ) {
            let (k, _) = item?;
            if let Some(upload) = self.upload(upload_id_of(&k)?)? {
                out.push(upload);
            }
        }
        Ok(out)
    }

    /// Lists the uploads in progress of a bucket in (key, upload id) order: keys starting with
    /// `prefix`, after the marker (a key and an upload id; a key that is a common prefix
    /// continues after everything under it), folding keys that contain `delimiter` after the
    /// prefix into common prefixes; at most `max` entries (uploads plus prefixes). Skips over
    /// a whole common prefix with one seek, as [`Index::list`] does.
    pub fn uploads(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<(&str, u64)>,
        max: usize,
    ) -> IndexResult<UploadListing> {
        let mut listing = UploadListing::default();
        // No key holds NUL, and a prefix ending in one would match the listing key's
        // separator: the uploads of the key before it.
        if prefix.contains('\0') || max == 0 {
            return Ok(listing);
        }
        let base = object_key(bucket, prefix);
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let start = match after {
            Some((key, _)) if delimiter.is_some_and(|d| is_common_prefix(key, prefix, d)) => {
                match prefix_successor(&object_key(bucket, key)) {
                    Some(s) => s,
                    None => return Ok(listing),
                }
            }
            Some((key, id)) => {
                let mut k = upload_listing_key(bucket, key, id);
                k.push(0);
                k
            }
            None => base.clone(),
        };
        let folded = self.fold_scan(
            cf::UPLOAD_KEYS,
            (bucket, prefix),
            start.max(base),
            delimiter,
            max,
            // The name ends before the NUL and upload id that end the listing key.
            |k| k.len().saturating_sub(9),
            |_, k, _| self.upload(upload_id_of(k)?),
        )?;
        listing.uploads = folded.entries;
        listing.prefixes = folded.prefixes;
        listing.truncated = folded.truncated;
        Ok(listing)
    }

    /// Every zone account.
    pub fn zones(&self) -> IndexResult<HashMap<ZoneId, ZoneAccount>> {
        let mut out = HashMap::new();
        for item in self.db.iterator_cf(self.cf(cf::ZONES), IteratorMode::Start) {
            let (k, v) = item?;
            if k.len() != 6 {
                continue;
            }
            let zone = ZoneId {
                drive: u16::from_be_bytes([k[0], k[1]]),
                zone: u32::from_be_bytes(k[2..6].try_into().expect("4 bytes")),
            };
            out.insert(zone, ZoneAccount::decode(&v).map_err(corrupt(cf::ZONES))?);
        }
        Ok(out)
    }

    /// Whether a bucket holds no objects and no uploads.
    pub fn bucket_is_empty(&self, bucket: &str) -> IndexResult<bool> {
        Ok(!self.bucket_has_objects(bucket)? && !self.bucket_holds(cf::UPLOAD_KEYS, bucket)?)
    }

    /// Whether `bucket` holds an object (multipart uploads in progress aside).
    pub fn bucket_has_objects(&self, bucket: &str) -> IndexResult<bool> {
        self.bucket_holds(cf::OBJECTS, bucket)
    }

    /// Whether a column family keyed by bucket and key has a key of `bucket`. (Bounded to the
    /// bucket's keys: after millions of deletions, the seek does not step over the deletion
    /// markers of the buckets after it.)
    fn bucket_holds(&self, cf_name: &str, bucket: &str) -> IndexResult<bool> {
        let prefix = object_key(bucket, "");
        let mut options = ReadOptions::default();
        if let Some(end) = prefix_successor(&prefix) {
            options.set_iterate_upper_bound(end);
        }
        let mut it = self.db.iterator_cf_opt(
            self.cf(cf_name),
            options,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        match it.next() {
            Some(item) => Ok(item?.0.starts_with(&prefix)),
            None => Ok(false),
        }
    }

    /// Lists a bucket in key order: keys starting with `prefix`, after `start_after`, folding
    /// keys that contain `delimiter` after the prefix into common prefixes; at most `max`
    /// entries (objects plus prefixes). Skips over a whole common prefix with one seek, so
    /// listings stay fast with millions of keys.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> IndexResult<Listing> {
        let full_prefix = object_key(bucket, prefix);
        let delimiter = delimiter.filter(|d| !d.is_empty());
        // Where to start: after start_after (past its whole common prefix if it is one).
        let mut seek = full_prefix.clone();
        if !start_after.is_empty() && start_after.as_bytes() >= prefix.as_bytes() {
            let is_common_prefix =
                delimiter.is_some_and(|d| is_common_prefix(start_after, prefix, d));
            let after = object_key(bucket, start_after);
            seek = if is_common_prefix {
                match prefix_successor(&after) {
                    Some(s) => s,
                    None => return Ok(Listing::default()),
                }
            } else {
                let mut s = after;
                s.push(0);
                s
            };
        }
        let folded = self.fold_scan(
            cf::OBJECTS,
            (bucket, prefix),
            seek,
            delimiter,
            max,
            <[u8]>::len,
            |name, _, value| {
                let meta = ObjectEntry::decode_listed(value).map_err(corrupt(cf::OBJECTS))?;
                Ok(Some((name.to_string(), meta)))
            },
        )?;
        Ok(Listing {
            objects: folded.entries,
            prefixes: folded.prefixes,
            truncated: folded.truncated,
            last: folded.last,
        })
    }

    /// Walks `cf` from `seek` through the rows named under `prefix` in `bucket`, in order: a
    /// row's name is its key from after the bucket's to `name_end` of it. Names holding
    /// `delimiter` after the prefix fold into one common prefix each, skipped with one seek;
    /// `entry` makes an entry of any other row (None: passed over). Stops once `max` entries
    /// and prefixes are found, truncated only if another follows. Bounded at the prefix's end:
    /// past it, the iterator would step over every deleted row's tombstone on its way to the
    /// next live one.
    #[allow(clippy::too_many_arguments)]
    fn fold_scan<T>(
        &self,
        cf_name: &str,
        (bucket, prefix): (&str, &str),
        seek: Vec<u8>,
        delimiter: Option<&str>,
        max: usize,
        name_end: impl Fn(&[u8]) -> usize,
        mut entry: impl FnMut(&str, &[u8], &[u8]) -> IndexResult<Option<T>>,
    ) -> IndexResult<Folded<T>> {
        let bucket_prefix = object_key(bucket, "");
        let full_prefix = object_key(bucket, prefix);
        let mut folded = Folded {
            entries: Vec::new(),
            prefixes: Vec::new(),
            truncated: false,
            last: None,
        };
        let mut options = ReadOptions::default();
        if let Some(end) = prefix_successor(&full_prefix) {
            options.set_iterate_upper_bound(end);
        }
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(cf_name), options);
        iter.seek(&seek);
        while iter.valid() {
            let Some(k) = iter.key() else { break };
            if !k.starts_with(&full_prefix) {
                break;
            }
            let end = name_end(k).max(bucket_prefix.len());
            let name = String::from_utf8_lossy(&k[bucket_prefix.len()..end]).into_owned();
            let found = folded.entries.len() + folded.prefixes.len();
            if let Some(d) = delimiter
                && let Some(pos) = name[prefix.len()..].find(d)
            {
                if found == max {
                    folded.truncated = true;
                    break;
                }
                let common = name[..prefix.len() + pos + d.len()].to_string();
                let next = prefix_successor(&object_key(bucket, &common));
                folded.last = Some(common.clone());
                folded.prefixes.push(common);
                match next {
                    Some(n) => iter.seek(&n),
                    None => break,
                }
                continue;
            }
            if let Some(e) = entry(&name, k, iter.value().unwrap_or_default())? {
                if found == max {
                    folded.truncated = true;
                    break;
                }
                folded.last = Some(name);
                folded.entries.push(e);
            }
            iter.next();
        }
        iter.status()?;
        Ok(folded)
    }

    /// Every object of every bucket, in key order (for comparisons and rebuild checks).
    pub fn all_objects(&self) -> IndexResult<Vec<(Vec<u8>, ObjectEntry)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::OBJECTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((
                k.to_vec(),
                ObjectEntry::decode(&v).map_err(corrupt(cf::OBJECTS))?,
            ));
        }
        Ok(out)
    }

    /// Whether some key starting with `prefix` exists that `skip` does not exclude.
    pub fn any_key_with_prefix(
        &self,
        cf_name: &str,
        prefix: &[u8],
        skip: impl Fn(&[u8]) -> bool,
    ) -> IndexResult<bool> {
        let mut options = ReadOptions::default();
        if let Some(end) = prefix_successor(prefix) {
            options.set_iterate_upper_bound(end);
        }
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(cf_name), options);
        iter.seek(prefix);
        while iter.valid() {
            let Some(k) = iter.key() else { break };
            if !k.starts_with(prefix) {
                break;
            }
            if !skip(k) {
                return Ok(true);
            }
            iter.next();
        }
        iter.status()?;
        Ok(false)
    }

    /// Entries of a column family whose keys start with `prefix`, raw.
    pub fn dump_prefix(
        &self,
        cf_name: &str,
        prefix: &[u8],
    ) -> IndexResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        // Bounded, so that deleted keys past the prefix are not stepped over.
        let mut options = ReadOptions::default();
        if let Some(end) = prefix_successor(prefix) {
            options.set_iterate_upper_bound(end);
        }
        for item in self.db.iterator_cf_opt(
            self.cf(cf_name),
            options,
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Calls `visit` with the entries of a column family in key order from `start` (inclusive),
    /// until it returns false.
    pub fn for_each_from(
        &self,
        cf_name: &str,
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> IndexResult<()> {
        for item in self.db.iterator_cf(
            self.cf(cf_name),
            IteratorMode::From(start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Every entry of a column family, raw.
    pub fn dump(&self, cf_name: &str) -> IndexResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf_name), IteratorMode::Start) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ObjectMeta;

    fn put_object(index: &Index, bucket: &str, key: &str) {
        let mut batch = WriteBatch::default();
        let entry = ObjectEntry {
            meta: ObjectMeta {
                etag: key.into(),
                ..ObjectMeta::default()
            },
            commit: vec![],
            shadowed: vec![],
        };
        batch.put_cf(
            index.cf(cf::OBJECTS),
            object_key(bucket, key),
            entry.encode(),
        );
        index.write(batch, false).unwrap();
    }

    #[test]
    fn listing_with_delimiter_folds_and_skips_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        for key in [
            "a.txt",
            "photos/1.jpg",
            "photos/2.jpg",
            "photos/x/3.jpg",
            "zeta",
            "pics",
        ] {
            put_object(&index, "b", key);
        }
        put_object(&index, "c", "other");
        let l = index.list("b", "", "", Some("/"), 100).unwrap();
        let keys: Vec<&str> = l.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["a.txt", "pics", "zeta"]);
        assert_eq!(l.prefixes, vec!["photos/"]);
        let l = index.list("b", "photos/", "", Some("/"), 100).unwrap();
        assert_eq!(l.objects.len(), 2);
        assert_eq!(l.prefixes, vec!["photos/x/"]);
        // Paging: two at a time, continuing after a common prefix.
        let p1 = index.list("b", "", "", Some("/"), 2).unwrap();
        assert!(p1.truncated);
        assert_eq!(p1.last.as_deref(), Some("photos/"));
        let p2 = index.list("b", "", "photos/", Some("/"), 2).unwrap();
        let keys: Vec<&str> = p2.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["pics", "zeta"]);
        assert!(!p2.truncated);
    }

    /// With a delimiter of several characters, a key that merely ends with it is not a common
    /// prefix: continuing after it skips nothing.
    #[test]
    fn continuing_after_a_key_ending_with_a_long_delimiter_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        for key in ["a-x", "a-xy", "a-z"] {
            put_object(&index, "b", key);
        }
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = index.list("b", "a-", &after, Some("-x"), 1).unwrap();
            seen.extend(page.objects.iter().map(|(k, _)| k.clone()));
            seen.extend(page.prefixes.iter().cloned());
            match page.last {
                Some(last) if page.truncated => after = last,
                _ => break,
            }
        }
        assert_eq!(seen, vec!["a-x", "a-xy", "a-z"]);
        assert!(!is_common_prefix("a-x", "a-", "-x"));
        assert!(!is_common_prefix("a/b/", "", "/"));
        assert!(is_common_prefix("a/", "", "/"));
        assert!(is_common_prefix("p/q-x", "p/", "-x"));
    }

    #[test]
    fn stream_extents_are_the_streams_own_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        for (stream, off) in [(1u64, 200u64), (1, 0), (1, 100), (2, 0), (0, 0)] {
            let e = Extent {
                length: 100,
                replicas: vec![],
            };
            batch.put_cf(index.cf(cf::EXTENTS), extent_key(stream, off), e.encode());
        }
        index.write(batch, false).unwrap();
        let offs: Vec<u64> = index
            .stream_extents(1)
            .unwrap()
            .iter()
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(offs, vec![0, 100, 200]);
        assert_eq!(index.stream_extents(2).unwrap().len(), 1);
        assert!(index.stream_extents(3).unwrap().is_empty());
    }

    /// Deleted keys do not stay in the table files for ever: a file of deletions is compacted
    /// away without waiting for more files to come (a listing would walk every one).
    #[test]
    fn deletions_are_compacted_away_without_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let keys: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
        for k in &keys {
            put_object(&index, "b", k);
        }
        index.db.flush_cf(index.cf(cf::OBJECTS)).unwrap();
        let mut batch = WriteBatch::default();
        for k in &keys {
            batch.delete_cf(index.cf(cf::OBJECTS), object_key("b", k));
        }
        index.write(batch, false).unwrap();
        index.db.flush_cf(index.cf(cf::OBJECTS)).unwrap();
        let live = || {
            index
                .db
                .property_int_value_cf(index.cf(cf::OBJECTS), "rocksdb.total-sst-files-size")
                .unwrap()
                .unwrap_or(0)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while live() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} bytes of table files are left of a deleted bucket",
                live()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            !index
                .any_key_with_prefix(cf::OBJECTS, b"b\0", |_| false)
                .unwrap()
        );
    }

    #[test]
    fn successor_of_prefixes() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[b'a', 0xFF]), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(&[0xFF]), None);
    }
}
