//! The log-structured object engine: objects are appended into zones as records (see
//! [`record`]), RocksDB maps names to where the bytes are ([`index`]), a single committer makes
//! changes durable in groups ([`commit`]), and the host, not the drive, reclaims space ([`gc`]).
//! It works the same on local emulated drives and on remote drives through the NVMe/TCP host:
//! both are [`ZonedDevice`]s.

pub mod codec;
pub mod commit;
pub mod drives;
pub mod error;
pub mod gate;
pub mod gc;
pub mod group_flush;
pub mod index;
pub mod located;
pub mod model;
pub mod names;
pub mod patience;
pub mod placement;
pub mod reader;
pub mod record;
pub mod recovery;
mod registry;
pub mod repair;
pub mod replay;
pub mod revoked;
pub mod seq;
pub mod settled;
mod stale_uploads;
pub mod stats;
mod survey;
pub mod writer;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use md5::{Digest, Md5};
use zns::{ZoneAction, ZoneSelect, ZonedDevice};

use commit::{Change, Committer, Condition, Outcome, ZoneAccounts, now_ms};
use drives::Drives;
pub use error::{EngineError, EngineResult};
use gate::ReadGate;
use index::{Index, Listing, UploadListing, cf};
use model::{BucketEntry, Checksum, ObjectEntry, ObjectMeta, PartEntry, UploadEntry, ZoneId};
use placement::{Placement, ZoneUse};
pub use reader::BodyStream;
use record::{Header, Kind};
pub use registry::{
    KnownDrive, carry_over, drives_holding_records, known_drives, lowest_write_quorum,
    registered_drives, replacement_floor,
};

/// The sequence numbers of failed writes revoked in the index in `index_dir` (see
/// [`revoked`]), for a rebuild to pass over their records (none where there is no index).
pub fn revoked_writes(index_dir: &std::path::Path) -> EngineResult<revoked::Revocations> {
    if !index_dir.join("CURRENT").exists() {
        return Ok(revoked::Revocations::default());
    }
    Ok(revoked::load(&index::Index::open(index_dir)?)?)
}
use seq::SeqAllocator;
use stats::EngineStats;
pub use writer::PutWriter;
use writer::{Appended, Purpose};

/// Smallest size of a multipart part other than the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Largest object, as S3 has it: a completion whose parts add up to more is refused (deleting
/// an object costs the committer memory in proportion to its extents).
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory of the RocksDB index.
    pub index_dir: PathBuf,
    /// Copies of every record (R).
    pub replicas: usize,
    /// Copies that must be durable before a write is acknowledged (W).
    pub write_quorum: usize,
    /// Garbage collection.
    pub gc: gc::GcConfig,
    /// Repair and scrub.
    pub repair: repair::RepairConfig,
    /// Most buckets one user may own (S3's default quota): also what bounds the memory of a
    /// ListBuckets, which reads them all.
    pub max_buckets_per_owner: usize,
    /// How long a copy is waited for before reads and writes turn to the others.
    pub patience: patience::Patience,
    /// Age at which a multipart upload still unfinished is aborted (`None`: never; see
    /// [`stale_uploads`]).
    pub abort_uploads_after: Option<std::time::Duration>,
}

/// Age at which an unfinished multipart upload is aborted unless configured otherwise: a week.
pub const ABORT_UPLOADS_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Most buckets one user may own unless configured otherwise (S3's default).
pub const MAX_BUCKETS_PER_OWNER: usize = 10_000;

/// The replication factor and write quorum for `drive_count` drives when none is configured:
/// R = 3 with at least 3 drives (else the number of drives), W = a majority of R.
pub fn default_replication(drive_count: usize) -> (usize, usize) {
    let replicas = drive_count.clamp(1, 3);
    (replicas, majority(replicas))
}

/// A majority of `replicas` copies.
pub fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
}

impl EngineConfig {
    /// Defaults for `index_dir` and `drive_count` drives: R = 3 with at least 3 drives, else
    /// the number of drives; W = a majority of R.
    pub fn new(index_dir: PathBuf, drive_count: usize) -> Self {
        let (replicas, write_quorum) = default_replication(drive_count);
        EngineConfig {
            index_dir,
            replicas,
            write_quorum,
            gc: gc::GcConfig::default(),
            repair: repair::RepairConfig::default(),
            max_buckets_per_owner: MAX_BUCKETS_PER_OWNER,
            patience: patience::Patience::default(),
            abort_uploads_after: Some(ABORT_UPLOADS_AFTER),
        }
    }
}

/// The shared state of an engine.
pub struct EngineInner {
    config: EngineConfig,
    pub(crate) index: Arc<Index>,
    pub(crate) drives: Arc<Drives>,
    pub(crate) placement: Arc<Placement>,
    pub(crate) committer: Committer,
    pub(crate) accounts: Arc<ZoneAccounts>,
    pub(crate) seq: SeqAllocator,
    pub(crate) gate: ReadGate,
    /// Locks that keep a refused change from being logged (see [`names`]).
    pub(crate) names: names::NameLocks,
    /// Held by a bucket's creation from counting its owner's buckets to the index write: two
    /// at once cannot both find room under the quota (creations are rare; one at a time).
    bucket_creation: tokio::sync::Mutex<()>,
    /// Counters.
    pub stats: EngineStats,
    pub(crate) gc: gc::GcControl,
    pub(crate) repair: repair::RepairControl,
    /// Largest record (bytes) every drive accepts in one Zone Append.
    pub(crate) record_limit: u64,
    /// Record bytes uploads may hold in memory, in [`writer::BUDGET_UNIT`]s.
    pub(crate) write_budget: Arc<tokio::sync::Semaphore>,
    /// Record bytes reads may hold in memory, in [`writer::BUDGET_UNIT`]s.
    pub(crate) read_budget: Arc<tokio::sync::Semaphore>,
    /// Block size used for record padding (the largest of the drives').
    pub(crate) block_size: u64,
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("drives", &self.drives.len())
            .finish()
    }
}

impl EngineInner {
    /// GC control (as [`Engine::gc`], for holders of the shared state).
    pub fn gc(&self) -> &gc::GcControl {
        &self.gc
    }

    /// Whether `drive` holds records the index names, or appends awaiting their index entry.
    pub(crate) fn holds_or_awaits_records(&self, drive: &drives::Drive) -> bool {
        // (Appends first: one that ends adds its record to the live bytes before it lets go.)
        self.placement.unindexed_appends(drive.id) > 0 || self.live_bytes_on(drive) > 0
    }

    /// Live bytes (records the index uses) on `drive`.
    pub(crate) fn live_bytes_on(&self, drive: &drives::Drive) -> u64 {
        (0..drive.geometry.zone_count)
            .map(|zone| {
                self.accounts
                    .get(ZoneId {
                        drive: drive.id,
                        zone,
                    })
                    .valid_bytes
            })
            .sum()
    }

    pub(crate) fn replicas(&self) -> usize {
        self.config.replicas.min(self.drives.len()).max(1)
    }

    pub(crate) fn quorum(&self) -> usize {
        self.config.write_quorum.clamp(1, self.replicas())
    }

    /// Whether a new version of `key` may be committed under `condition` now (and, with
    /// `bucket_seq`, into the bucket of that creation, not one created since under its name):
    /// the checks the committer makes, made before the version's commit record is appended
    /// (with the object locked, see [`names`]), so that a refused version leaves no record
    /// behind.
    pub(crate) fn check_object_change(
        &self,
        bucket: &str,
        key: &str,
        condition: &Condition,
        bucket_seq: Option<u64>,
    ) -> EngineResult<()> {
        let current = self.index.bucket(bucket)?;
        let same = match bucket_seq {
            Some(seq) => commit::is_bucket_of(current.as_ref(), seq),
            None => current.is_some(),
        };
        if !same {
            return Err(EngineError::NoSuchBucket(bucket.into()));
        }
        let current = self.index.object(bucket, key)?;
        commit::check_condition(bucket, key, current.as_ref().map(|c| &c.meta), condition)
    }
}

/// Runs `work` to its end even if the caller stops waiting (a client gone): an operation that
/// appended records goes on to commit them (or fails), rather than leaving records a rebuild
/// would believe and the index never took.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl Future<Output = EngineResult<T>> + Send + 'static,
) -> EngineResult<T> {
    use tracing::Instrument;
    tokio::spawn(work.in_current_span())
        .await
        .map_err(|e| EngineError::Internal(format!("engine task: {e}")))?
}

/// The engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

/// A drive to attach: its identity (stable across restarts) and the device.
pub struct DriveSpec {
    /// Identity, e.g. `nvme-tcp://127.0.0.1:4420/nqn...` or `zns-file:///data/d0`.
    pub name: String,
    /// The device.
    pub device: Arc<dyn ZonedDevice>,
}

/// What the start-up reconciliation of index and drives found.
#[derive(Debug, Default, Clone)]
pub struct Reconciliation {
    /// Bytes written on drives that no index entry uses (garbage, e.g. from interrupted PUTs).
    pub unindexed_bytes: u64,
    /// Zones where the index points past the write pointer (a bug; data may be missing).
    pub broken_zones: Vec<ZoneId>,
    /// Zones found reset whose reset had not been recorded.
    pub resets_recorded: usize,
    /// Records read past the zones' settled prefixes (see [`settled`]), and the changes they
    /// made: what a crash left on the drives without its index change.
    pub replayed: replay::ReplayReport,
}

/// The longest an engine's shutdown waits for its drives' last flush.
const SHUTDOWN_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Engine {
    /// Opens the engine over `drives`: the index, the drive registry, reconciliation of the
    /// index with the zones' write pointers, placement, the committer and GC.
    pub async fn open(
        config: EngineConfig,
        drives: Vec<DriveSpec>,
    ) -> EngineResult<(Engine, Reconciliation)> {
        if drives.is_empty() {
            return Err(EngineError::InvalidArgument(
                "the engine needs at least one drive".into(),
            ));
        }
        std::fs::create_dir_all(&config.index_dir).map_err(|e| {
            EngineError::Internal(format!("creating {}: {e}", config.index_dir.display()))
        })?;
        let index = Arc::new(Index::open(&config.index_dir)?);
        let drives = Arc::new(registry::register_drives(&index, drives)?);
        for id in commit::decode_drive_ids(
            &index
                .get_raw(cf::META, commit::DRAINING_KEY)?
                .unwrap_or_default(),
        ) {
            if let Some(d) = drives.get(id) {
                d.draining.store(true, Ordering::SeqCst);
                tracing::info!(drive = %d.name, "drive is being drained");
            }
        }
        let block_size = drives
            .all()
            .iter()
            .filter(|d| !d.removed)
            .map(|d| d.block_size())
            .max()
            .unwrap_or(4096);
        // Records are padded to whole blocks and parsed by the block size of the drive they
        // are on: a copy moved between drives of different block sizes would not parse.
        if let Some(odd) = drives
            .all()
            .iter()
            .find(|d| !d.removed && d.block_size() != block_size)
        {
            return Err(EngineError::InvalidArgument(format!(
                "drive {} has {}-byte blocks where another has {block_size}: every drive must have the same logical block size",
                odd.name,
                odd.block_size()
            )));
        }
        // A record is one append, and fits in one zone (whose capacity may be below the
        // append limit).
        let (record_limit, smallest) = drives
            .all()
            .iter()
            .filter(|d| !d.removed)
            .map(|d| {
                let capacity = d.geometry.zone_capacity * u64::from(d.geometry.block_size);
                (d.geometry.max_append_bytes().min(capacity), d.name.as_str())
            })
            .min()
            .unwrap_or((1 << 20, ""));
        if record_limit < 2 * block_size || record_limit < 8192 {
            return Err(EngineError::InvalidArgument(format!(
                "drive {smallest}: its zone capacity or zone append limit ({record_limit} bytes) is too small for records (at least {} bytes)",
                (2 * block_size).max(8192)
            )));
        }
        let accounts = Arc::new(ZoneAccounts::new(index.zones()?));
        // What the drives hold, zone by zone.
        let mut snapshots = Vec::new();
        let mut reconciliation = Reconciliation::default();
        let mut resets = Vec::new();
        for drive in drives.all() {
            if drive.removed {
                drive.attached.store(false, Ordering::SeqCst);
                snapshots.push(None);
            } else {
                let surveyed = if drive.device.is_available() {
                    survey::survey(drive, &index, &accounts, &mut reconciliation, &mut resets).await
                } else {
                    Err(EngineError::Unavailable("not connected".into()))
                };
                match surveyed {
                    Ok(zones) => snapshots.push(Some(zones)),
                    // Known from an earlier start but unreachable now: the others serve (reads
                    // fail over, writes need W of them) and this one is attached when it
                    // answers.
                    Err(e) if e.is_unavailable() => {
                        tracing::warn!(drive = %drive.name, "drive unreachable ({e}): starting without it");
                        drive.attached.store(false, Ordering::SeqCst);
                        snapshots.push(None);
                    }
                    // Another drive under its name, or one that answers wrongly (an I/O error, a
                    // write pointer outside its zone): that drive's fault, not the store's.
                    Err(e) if e.is_foreign_drive() || e.is_drive_fault() => {
                        tracing::error!(drive = %drive.name, "{e}: starting without the drive");
                        drive.attached.store(false, Ordering::SeqCst);
                        snapshots.push(None);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // A drive not read now is left out of the roll-forward below (see
        // [`replay::left_out_key`]): when it answers, it is replayed for copies only.
        replay::mark_left_out(
            &index,
            drives
                .all()
                .iter()
                .filter(|d| !d.removed && !d.attached.load(Ordering::SeqCst))
                .map(|d| d.id),
        )?;
        let (placement, to_finish) = Placement::new(&drives, snapshots);
        let placement = Arc::new(placement);
        let seq = SeqAllocator::open(index.clone(), 1)?;
        let quorum = config
            .write_quorum
            .clamp(1, config.replicas.min(drives.len()).max(1));
        let committer = Committer::start(
            index.clone(),
            drives.clone(),
            accounts.clone(),
            placement.clone(),
            quorum,
            config.patience,
        );
        for zone in &resets {
            committer.submit(Change::ZoneReset(*zone)).await?;
        }
        reconciliation.resets_recorded = resets.len();
        let inner = Arc::new(EngineInner {
            gc: gc::GcControl::new(config.gc.clone()),
            repair: repair::RepairControl::new(config.repair.clone()),
            config,
            index,
            drives,
            placement,
            committer,
            accounts,
            seq,
            gate: ReadGate::default(),
            names: names::NameLocks::default(),
            bucket_creation: tokio::sync::Mutex::new(()),
            stats: EngineStats::default(),
            record_limit,
            write_budget: Arc::new(tokio::sync::Semaphore::new(
                writer::WRITE_BUDGET / writer::BUDGET_UNIT,
            )),
            read_budget: Arc::new(tokio::sync::Semaphore::new(
                reader::READ_BUDGET / writer::BUDGET_UNIT,
            )),
            block_size,
        });
        // What a crash left on the drives without its index change (before open zones are
        // finished: their write pointers say where the records end).
        // A drive left out of an earlier roll-forward is replayed for copies only (see
        // [`replay::left_out_key`]); the others roll forward.
        let mut attached = Vec::new();
        let mut left_out = Vec::new();
        for d in inner.drives.all() {
            if !d.attached.load(Ordering::SeqCst) || d.removed {
                continue;
            }
            if replay::left_out(&inner.index, d.id)? {
                left_out.push(d.id);
            } else {
                attached.push(d.id);
            }
        }
        reconciliation.replayed = inner
            .replay_tail(&attached, replay::Replay::RollForward)
            .await?;
        for drive in left_out {
            let copies = inner.replay_copies_of(drive).await?;
            reconciliation.replayed.records += copies.records;
            reconciliation.replayed.applied += copies.applied;
            reconciliation.replayed.damaged += copies.damaged;
        }
        // Failed writes whose zones have all been reset since: their records are gone.
        match revoked::prune(&inner.index, |zone| inner.accounts.generation(zone)) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "dropped revocations of records GC has reclaimed"),
            Err(e) => tracing::warn!("pruning revocations failed: {e}"),
        }
        inner.finish_zones(to_finish);
        for drive in inner.drives.all() {
            if !drive.attached.load(Ordering::SeqCst) && !drive.removed {
                tokio::spawn(survey::attach_when_reachable(
                    Arc::downgrade(&inner),
                    drive.id,
                ));
            }
        }
        registry::note_write_quorum(&inner.index, inner.quorum())?;
        gc::spawn(Arc::downgrade(&inner));
        repair::spawn(Arc::downgrade(&inner));
        if let Some(expiry) = inner.config.abort_uploads_after {
            stale_uploads::spawn(Arc::downgrade(&inner), expiry);
        }
        if !reconciliation.broken_zones.is_empty() {
            tracing::error!(zones = ?reconciliation.broken_zones, "index and drives disagree; run `zonestore recover --rebuild-index`");
            // Copies the index names there are lost: a scrub pass now finds them and makes
            // them again from whole copies on other drives (instead of at the next scheduled
            // pass, days away), and counts those it cannot.
            inner.repair.scrub();
        }
        tracing::info!(
            drives = inner.drives.len(),
            replicas = inner.replicas(),
            quorum = inner.quorum(),
            unindexed_mib = reconciliation.unindexed_bytes >> 20,
            "engine open"
        );
        Ok((Engine { inner }, reconciliation))
    }

    /// Stops GC, flushes the drives and releases them and the index (once every other handle
    /// to the engine is gone). Everything acknowledged is durable before and after.
    pub async fn shutdown(self) {
        if let Err(e) = self.shutdown_flushed().await {
            tracing::warn!("{e}");
        }
    }

    /// [`Engine::shutdown`], saying whether the last flush of the drives failed (what was
    /// acknowledged is durable either way: only what was not may be lost).
    pub async fn shutdown_flushed(self) -> EngineResult<()> {
        futures::future::join(self.inner.gc.shut_down(), self.inner.repair.shut_down()).await;
        // Bounded: what was acknowledged is durable already, and a drive that answers nothing
        // must not keep the process from ending (a service manager would kill it anyway).
        let flushed = match tokio::time::timeout(SHUTDOWN_FLUSH_LIMIT, self.flush_all()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Unavailable(format!(
                "flush on shutdown failed: {e}"
            ))),
            Err(_) => Err(EngineError::Unavailable(format!(
                "flush on shutdown gave up after {SHUTDOWN_FLUSH_LIMIT:?}: a drive answers nothing"
            ))),
        };
        let committer = self.inner.committer.take_task();
        drop(self);
        if let Some(task) = committer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
        flushed
    }

    /// Shared state (for GC, metrics and admin).
    pub fn inner(&self) -> &Arc<EngineInner> {
        &self.inner
    }

    fn meta_header(
        &self,
        kind: Kind,
        seq: u64,
        id: u64,
        offset: u64,
        bucket: &str,
        key: &str,
    ) -> Header {
        Header {
            kind,
            seq,
            write_seq: seq,
            id,
            offset,
            bucket: bucket.to_string(),
            key: key.to_string(),
            replaces: None,
        }
    }

    // ---- buckets ----

    /// Creates a bucket owned by `owner`.
    pub async fn create_bucket(&self, name: &str, owner: &str) -> EngineResult<()> {
        let (engine, name, owner) = (self.clone(), name.to_string(), owner.to_string());
        detached(async move { engine.create_bucket_here(&name, &owner).await }).await
    }

    async fn create_bucket_here(&self, name: &str, owner: &str) -> EngineResult<()> {
        let lock = self.inner.names.bucket(name).await;
        if let Some(b) = self.inner.index.bucket(name)? {
            return Err(if b.owner == owner {
                EngineError::BucketAlreadyOwnedByYou(name.into())
            } else {
                EngineError::BucketAlreadyExists(name.into())
            });
        }
        let _one_at_a_time = self.inner.bucket_creation.lock().await;
        let limit = self.inner.config.max_buckets_per_owner;
        let owned = self
            .inner
            .index
            .buckets()?
            .iter()
            .filter(|(_, b)| b.owner == owner)
            .count();
        if owned >= limit {
            return Err(EngineError::TooManyBuckets(limit));
        }
        let seq = self.inner.seq.next()?;
        let mut entry = BucketEntry {
            seq,
            owner: owner.to_string(),
            created_ms: now_ms(),
            location: Vec::new(),
            shadowed: Vec::new(),
        };
        let header = self.meta_header(Kind::Bucket, seq, seq, 0, name, "");
        let Appended { locations, holds } =
            self.inner.append_small(&header, &entry.payload()).await?;
        entry.location = locations;
        self.inner
            .committer
            .submit_locked(
                Change::CreateBucket {
                    name: name.to_string(),
                    entry,
                },
                vec![holds],
                lock,
            )
            .await
            .map(|_| ())
    }

    /// Deletes an empty bucket.
    pub async fn delete_bucket(&self, name: &str) -> EngineResult<()> {
        let (engine, name) = (self.clone(), name.to_string());
        detached(async move { engine.delete_bucket_here(&name, None).await }).await
    }

    /// Deletes an empty bucket if `owner` owns it ([`EngineError::NotOwner`] otherwise),
    /// checked under the bucket's lock with the deletion itself: a bucket deleted and made
    /// again by someone else since the caller looked it up is not deleted.
    pub async fn delete_bucket_of(&self, name: &str, owner: &str) -> EngineResult<()> {
        let (engine, name, owner) = (self.clone(), name.to_string(), owner.to_string());
        detached(async move { engine.delete_bucket_here(&name, Some(&owner)).await }).await
    }

    async fn delete_bucket_here(&self, name: &str, owner: Option<&str>) -> EngineResult<()> {
        let not_owned = |entry: &BucketEntry| owner.is_some_and(|o| entry.owner != o);
        let found = self.inner.index.bucket(name)?;
        if found.as_ref().is_some_and(not_owned) {
            return Err(EngineError::NotOwner(name.into()));
        }
        // Multipart uploads in progress do not keep a bucket from being deleted (as in S3):
        // they are aborted first, each under its own key's lock (taken before the bucket's
        // own, which excludes them). One begun meanwhile makes the deletion below refused.
        if let Some(checked) = found
            && !self.inner.index.bucket_has_objects(name)?
        {
            let mut aborted = std::collections::HashSet::new();
            loop {
                let uploads = self
                    .inner
                    .index
                    .uploads(name, "", None, None, 1000)?
                    .uploads;
                if uploads.is_empty() {
                    break;
                }
                for upload in uploads {
                    // Only the uploads of the bucket whose owner was checked: one deleted and
                    // made again meanwhile (by another user, perhaps) keeps its uploads.
                    match self.inner.index.bucket(name)? {
                        Some(now) if now.seq == checked.seq => {}
                        Some(now) if not_owned(&now) => {
                            return Err(EngineError::NotOwner(name.into()));
                        }
                        Some(_) => return Err(EngineError::BucketNotEmpty(name.into())),
                        None => return Err(EngineError::NoSuchBucket(name.into())),
                    }
                    // An object written meanwhile keeps the bucket: its uploads stay too.
                    if self.inner.index.bucket_has_objects(name)? {
                        return Err(EngineError::BucketNotEmpty(name.into()));
                    }
                    if !aborted.insert(upload.upload_id) {
                        // Aborted, yet still there: not for this deletion to go round again.
                        return Err(EngineError::BucketNotEmpty(name.into()));
                    }
                    match self.abort_upload_here(upload.upload_id).await {
                        Ok(()) | Err(EngineError::NoSuchUpload(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let lock = self.inner.names.bucket(name).await;
        match self.inner.index.bucket(name)? {
            None => return Err(EngineError::NoSuchBucket(name.into())),
            Some(entry) if not_owned(&entry) => return Err(EngineError::NotOwner(name.into())),
            Some(_) => {}
        }
        if !self.inner.index.bucket_is_empty(name)? {
            return Err(EngineError::BucketNotEmpty(name.into()));
        }
        let seq = self.inner.seq.next()?;
        let header = self.meta_header(Kind::BucketDelete, seq, seq, 0, name, "");
        let Appended {
            locations: tombstone,
            holds,
        } = self.inner.append_small(&header, &[]).await?;
        self.inner
            .committer
            .submit_locked(
                Change::DeleteBucket {
                    name: name.to_string(),
                    seq,
                    tombstone,
                },
                vec![holds],
                lock,
            )
            .await
            .map(|_| ())
    }

    /// A bucket.
    pub fn bucket(&self, name: &str) -> EngineResult<BucketEntry> {
        self.inner
            .index
            .bucket(name)?
            .ok_or_else(|| EngineError::NoSuchBucket(name.into()))
    }

    /// Every bucket in name order.
    pub fn buckets(&self) -> EngineResult<Vec<(String, BucketEntry)>> {
        Ok(self.inner.index.buckets()?)
    }

    // ---- objects ----

    /// Starts writing an object body; finish with [`PutWriter::finish_object`].
    pub fn put(&self, bucket: &str, key: &str) -> EngineResult<PutWriter> {
        let bucket_seq = self.bucket(bucket)?.seq;
        PutWriter::new(
            self.inner.clone(),
            bucket,
            key,
            Purpose::Object { bucket_seq },
        )
    }

    /// An object's manifest.
    pub fn head(&self, bucket: &str, key: &str) -> EngineResult<ObjectMeta> {
        match self.inner.index.object(bucket, key)? {
            Some(entry) => Ok(entry.meta),
            None => {
                self.bucket(bucket)?;
                Err(EngineError::NoSuchKey {
                    bucket: bucket.into(),
                    key: key.into(),
                })
            }
        }
    }

    /// Opens an object for reading: its manifest and where its bytes are, as of one moment, so
    /// that reads return that version whole even if it is overwritten or deleted meanwhile, for
    /// as long as GC waits for reads (`read_wait`, 30 s by default; 2 s once a drive is down to
    /// its reserve): a read of a version GC reclaimed after that fails (Unavailable), and never
    /// returns other bytes.
    pub fn open_object(&self, bucket: &str, key: &str) -> EngineResult<ObjectHandle> {
        // The ticket comes first: GC then keeps every zone the snapshot's locations are in
        // until the handle and its reads are dropped (or a stalled client runs out its grace).
        let ticket = Arc::new(self.inner.gate.enter());
        let snapshot = self.inner.index.snapshot();
        match snapshot.object(bucket, key)? {
            Some(entry) => Ok(ObjectHandle {
                engine: self.inner.clone(),
                meta: entry.meta,
                snapshot: Arc::new(snapshot),
                ticket,
            }),
            None => {
                self.bucket(bucket)?;
                Err(EngineError::NoSuchKey {
                    bucket: bucket.into(),
                    key: key.into(),
                })
            }
        }
    }

    /// Deletes an object (nothing happens if it does not exist).
    pub async fn delete(&self, bucket: &str, key: &str) -> EngineResult<()> {
        self.delete_if(bucket, key, Condition::None).await
    }

    /// Deletes an object if `condition` holds for it (checked under the key's lock, so no
    /// other write to it comes in between): with a condition, one that does not exist is
    /// NoSuchKey; without, nothing happens.
    pub async fn delete_if(
        &self,
        bucket: &str,
        key: &str,
        condition: Condition,
    ) -> EngineResult<()> {
        let (engine, bucket, key) = (self.clone(), bucket.to_string(), key.to_string());
        detached(async move { engine.delete_here(&bucket, None, &key, &condition).await }).await
    }

    /// [`Engine::delete_if`] in the bucket created at `created_ms`: one of the same name
    /// created at another time (deleted and made again since the caller checked who owns it)
    /// is another bucket, and NoSuchBucket.
    pub async fn delete_in(
        &self,
        bucket: &str,
        created_ms: u64,
        key: &str,
        condition: Condition,
    ) -> EngineResult<()> {
        let (engine, bucket, key) = (self.clone(), bucket.to_string(), key.to_string());
        detached(async move {
            engine
                .delete_here(&bucket, Some(created_ms), &key, &condition)
                .await
        })
        .await
    }

    async fn delete_here(
        &self,
        bucket: &str,
        created_ms: Option<u64>,
        key: &str,
        condition: &Condition,
    ) -> EngineResult<()> {
        // (The object's lock holds the bucket's shared: it cannot be deleted meanwhile.)
        let lock = self.inner.names.object(bucket, key).await;
        let found = self.bucket(bucket)?;
        if created_ms.is_some_and(|created| created != found.created_ms) {
            return Err(EngineError::NoSuchBucket(bucket.into()));
        }
        let current = self.inner.index.object(bucket, key)?;
        commit::check_condition(bucket, key, current.as_ref().map(|c| &c.meta), condition)?;
        if current.is_none() {
            return Ok(());
        }
        let seq = self.inner.seq.next()?;
        let header = self.meta_header(Kind::Tombstone, seq, seq, 0, bucket, key);
        let Appended {
            locations: tombstone,
            holds,
        } = self.inner.append_small(&header, &[]).await?;
        self.inner
            .committer
            .submit_locked(
                Change::DeleteObject {
                    bucket: bucket.into(),
                    key: key.into(),
                    seq,
                    tombstone,
                },
                vec![holds],
                lock,
            )
            .await
            .map(|_| ())
    }

    /// Lists objects (see [`Index::list`]).
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> EngineResult<Listing> {
        self.bucket(bucket)?;
        Ok(self
            .inner
            .index
            .list(bucket, prefix, start_after, delimiter, max)?)
    }

    // ---- multipart ----

    /// Creates a multipart upload; the object will get `template`'s metadata.
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        template: ObjectMeta,
    ) -> EngineResult<u64> {
        let (engine, bucket, key) = (self.clone(), bucket.to_string(), key.to_string());
        detached(async move { engine.create_upload_here(&bucket, &key, template).await }).await
    }

    async fn create_upload_here(
        &self,
        bucket: &str,
        key: &str,
        mut template: ObjectMeta,
    ) -> EngineResult<u64> {
        let lock = self.inner.names.bucket_shared(bucket).await;
        self.bucket(bucket)?;
        let upload_id = self.inner.seq.next()?;
        template.seq = upload_id;
        template.last_modified_ms = now_ms();
        template.streams.clear();
        let mut entry = UploadEntry {
            upload_id,
            seq: upload_id,
            bucket: bucket.into(),
            key: key.into(),
            template,
            location: Vec::new(),
            shadowed: Vec::new(),
        };
        let header = self.meta_header(Kind::Upload, upload_id, upload_id, 0, bucket, key);
        let Appended { locations, holds } =
            self.inner.append_small(&header, &entry.payload()).await?;
        entry.location = locations;
        self.inner
            .committer
            .submit_locked(Change::CreateUpload { entry }, vec![holds], lock)
            .await?;
        Ok(upload_id)
    }

    /// An upload.
    pub fn upload(&self, upload_id: u64) -> EngineResult<UploadEntry> {
        self.inner
            .index
            .upload(upload_id)?
            .ok_or_else(|| EngineError::NoSuchUpload(format!("{upload_id:016x}")))
    }

    /// Starts writing part `part_number` of an upload; finish with [`PutWriter::finish_part`].
    pub fn put_part(&self, upload_id: u64, part_number: u32) -> EngineResult<PutWriter> {
        let upload = self.upload(upload_id)?;
        PutWriter::new(
            self.inner.clone(),
            &upload.bucket,
            &upload.key,
            Purpose::Part {
                upload_id,
                part_number,
            },
        )
    }

    /// Parts of an upload after `after`, in order, at most `limit`.
    pub fn parts(&self, upload_id: u64, after: u32, limit: usize) -> EngineResult<Vec<PartEntry>> {
        self.upload(upload_id)?;
        Ok(self.inner.index.parts(upload_id, after, limit)?)
    }

    /// One page of the uploads in progress of a bucket (see [`index::Index::uploads`]).
    pub fn uploads(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<(&str, u64)>,
        max: usize,
    ) -> EngineResult<UploadListing> {
        self.bucket(bucket)?;
        Ok(self
            .inner
            .index
            .uploads(bucket, prefix, delimiter, after, max)?)
    }

    /// Completes an upload from `parts` (number and ETag, ascending). The object's extents are
    /// the parts' extents: nothing is copied. `checksum` is the object's composite or
    /// full-object checksum, if the client used one.
    pub async fn complete_upload(
        &self,
        upload_id: u64,
        parts: &[(u32, String)],
        checksum: Option<(Checksum, String)>,
        condition: Condition,
    ) -> EngineResult<ObjectMeta> {
        let (engine, parts) = (self.clone(), parts.to_vec());
        detached(async move {
            engine
                .complete_upload_here(upload_id, &parts, checksum, condition)
                .await
        })
        .await
    }

    async fn complete_upload_here(
        &self,
        upload_id: u64,
        parts: &[(u32, String)],
        checksum: Option<(Checksum, String)>,
        condition: Condition,
    ) -> EngineResult<ObjectMeta> {
        let upload = self.upload(upload_id)?;
        let lock = self.inner.names.object(&upload.bucket, &upload.key).await;
        // Checked again with the object locked: the upload may have ended meanwhile.
        let upload = self.upload(upload_id)?;
        self.inner
            .check_object_change(&upload.bucket, &upload.key, &condition, None)?;
        if parts.is_empty() {
            return Err(EngineError::InvalidPart(
                "at least one part is required".into(),
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(EngineError::InvalidPartOrder);
        }
        let stored = self.inner.index.parts(upload_id, 0, usize::MAX)?;
        let mut used = Vec::with_capacity(parts.len());
        let mut md5s = Vec::with_capacity(parts.len() * 16);
        for (i, (number, etag)) in parts.iter().enumerate() {
            let wanted = etag.trim_matches('"');
            // (Parts come in part-number order: 10,000 of them are found by halving.)
            let part = stored
                .binary_search_by_key(number, |p| p.part_number)
                .ok()
                .map(|at| &stored[at])
                .ok_or_else(|| {
                    EngineError::InvalidPart(format!("part {number} was not uploaded"))
                })?;
            if part.etag != wanted {
                return Err(EngineError::InvalidPart(format!(
                    "part {number} has ETag {}, not {wanted}",
                    part.etag
                )));
            }
            if i + 1 < parts.len() && part.size < MIN_PART_SIZE {
                return Err(EngineError::EntityTooSmall {
                    part: *number,
                    size: part.size,
                });
            }
            md5s.extend(hex_decode(&part.etag).ok_or_else(|| {
                EngineError::InvalidPart(format!("part {number} ETag is not hex"))
            })?);
            used.push(part.clone());
        }
        let size = used.iter().map(|p| p.size).sum();
        if size > MAX_OBJECT_SIZE {
            return Err(EngineError::EntityTooLarge {
                size,
                max: MAX_OBJECT_SIZE,
            });
        }
        let mut meta = upload.template.clone();
        meta.seq = self.inner.seq.next()?;
        meta.size = size;
        meta.etag = format!("{}-{}", hex_encode(&Md5::digest(&md5s)), used.len());
        meta.streams = used
            .iter()
            .map(|p| model::StreamRef {
                stream_id: p.stream_id,
                length: p.size,
            })
            .collect();
        meta.part_sizes = used.iter().map(|p| p.size).collect();
        // As in S3, a multipart object was last modified when its upload began (the
        // template's time): not when it was completed.
        if let Some((sum, kind)) = checksum {
            meta.checksums = vec![sum];
            meta.checksum_type = Some(kind);
        }
        let header = self.meta_header(
            Kind::Commit,
            meta.seq,
            meta.seq,
            0,
            &upload.bucket,
            &upload.key,
        );
        let end_header = self.meta_header(
            Kind::UploadEnd,
            meta.seq,
            upload_id,
            0,
            &upload.bucket,
            &upload.key,
        );
        let block_size = self.inner.block_size as usize;
        let commit_record = record::encode(&header, &meta.encode(), block_size);
        let end_record = record::encode(&end_header, &[], block_size);
        let (commit, end, holds) = if (commit_record.len() + end_record.len()) as u64
            <= self.inner.record_limit
        {
            // Both records in one append per copy: the end record is then durable on a drive
            // only with the commit record before it. Apart, a flush of only the end record's
            // drives (another write's) followed by a crash left an end without its commit,
            // which a replay or rebuild takes for an abort, and the parts were lost.
            let commit_blocks = (commit_record.len() / block_size) as u32;
            let end_blocks = (end_record.len() / block_size) as u32;
            let mut pair = bytes::BytesMut::with_capacity(commit_record.len() + end_record.len());
            pair.extend_from_slice(&commit_record);
            pair.extend_from_slice(&end_record);
            // (Claimed as the commit it is: like any write that adds an object, it does not
            // dip into the reserve that tombstones and upload ends may use.)
            let Appended { locations, holds } = self
                .inner
                .append_claiming(pair.freeze(), Kind::Commit, meta.seq)
                .await?;
            let commit = locations
                .iter()
                .map(|l| model::Location {
                    blocks: commit_blocks,
                    ..*l
                })
                .collect();
            let end = locations
                .iter()
                .map(|l| model::Location {
                    drive: l.drive,
                    lba: l.lba + u64::from(commit_blocks),
                    blocks: end_blocks,
                })
                .collect();
            (commit, end, vec![holds])
        } else {
            // A commit record too large to pair (thousands of parts): the two go apart, the
            // commit made durable first, so that no drive can hold the end without it.
            let Appended {
                locations: commit,
                holds: commit_holds,
            } = self
                .inner
                .append_claiming(commit_record, Kind::Commit, meta.seq)
                .await?;
            if let Err(e) = self.inner.flush_quorum_of(&commit, &commit_holds).await {
                let zones: Vec<ZoneId> = commit_holds.zones().collect();
                self.inner.revoke(meta.seq, &zones).await;
                return Err(e);
            }
            let Appended {
                locations: end,
                holds: end_holds,
            } = match self
                .inner
                .append_claiming(end_record, Kind::UploadEnd, meta.seq)
                .await
            {
                Ok(appended) => appended,
                Err(e) => {
                    // The commit record is on the drives already: it shares the end record's
                    // sequence number, and is revoked with it, in its own zones too.
                    let zones: Vec<ZoneId> = commit_holds.zones().collect();
                    self.inner.revoke(meta.seq, &zones).await;
                    return Err(e);
                }
            };
            (commit, end, vec![commit_holds, end_holds])
        };
        let change = Change::CompleteUpload {
            upload_id,
            meta: meta.clone(),
            commit,
            end,
            parts: used.iter().map(|p| (p.part_number, p.stream_id)).collect(),
            condition,
        };
        match self
            .inner
            .committer
            .submit_locked(change, holds, lock)
            .await?
        {
            Outcome::Done | Outcome::Superseded | Outcome::NotFound => Ok(meta),
        }
    }

    /// Whether upload `upload_id` was completed into the version of `bucket`/`key` there is now:
    /// the upload's end is recorded with that version's sequence number (an abort's end has a
    /// number of its own, which no version has). A Complete sent again after its first answer
    /// was lost is answered as the first was only then, never for an aborted upload, or
    /// another's, that named the same parts. `None` once the end's record is gone (its
    /// tombstone pruned when GC reset every zone holding the upload's records, or not made
    /// again by an index rebuild): how the upload ended is then unknown.
    pub fn completed_into_current(
        &self,
        upload_id: u64,
        bucket: &str,
        key: &str,
    ) -> EngineResult<Option<bool>> {
        let Some(end) = self
            .inner
            .index
            .tombstone(index::TombKind::Upload, &upload_id.to_be_bytes())?
        else {
            return Ok(None);
        };
        match self.head(bucket, key) {
            Ok(meta) => Ok(Some(meta.seq == end.seq)),
            Err(EngineError::NoSuchKey { .. }) => Ok(Some(false)),
            Err(e) => Err(e),
        }
    }

    /// Aborts an upload; its parts' data becomes garbage.
    pub async fn abort_upload(&self, upload_id: u64) -> EngineResult<()> {
        let engine = self.clone();
        detached(async move { engine.abort_upload_here(upload_id).await }).await
    }

    async fn abort_upload_here(&self, upload_id: u64) -> EngineResult<()> {
        let upload = self.upload(upload_id)?;
        let lock = self.inner.names.object(&upload.bucket, &upload.key).await;
        let upload = self.upload(upload_id)?;
        let seq = self.inner.seq.next()?;
        let header = self.meta_header(
            Kind::UploadEnd,
            seq,
            upload_id,
            0,
            &upload.bucket,
            &upload.key,
        );
        let Appended {
            locations: end,
            holds,
        } = self.inner.append_small(&header, &[]).await?;
        self.inner
            .committer
            .submit_locked(
                Change::AbortUpload {
                    upload_id,
                    seq,
                    end,
                },
                vec![holds],
                lock,
            )
            .await
            .map(|_| ())
    }

    /// Aborts every multipart upload initiated at `cutoff_ms` (milliseconds since the epoch) or
    /// before, as [`EngineConfig::abort_uploads_after`] has the engine do by itself; returns
    /// how many it aborted.
    pub async fn abort_uploads_initiated_by(&self, cutoff_ms: u64) -> EngineResult<usize> {
        stale_uploads::abort_initiated_by(self, cutoff_ms).await
    }

    // ---- introspection ----

    /// Every object entry (for comparisons with a rebuilt index).
    pub fn object_entries(&self) -> EngineResult<Vec<(Vec<u8>, ObjectEntry)>> {
        Ok(self.inner.index.all_objects()?)
    }

    /// A canonical dump of what the index says (objects with their extents and locations,
    /// buckets, uploads, parts), for comparing a rebuilt index with a live one.
    pub fn canonical_dump(&self) -> EngineResult<Vec<String>> {
        recovery::canonical_dump(&self.inner.index)
    }

    /// The sequence numbers of failed writes whose records are revoked (see [`revoked`]).
    pub fn revoked_writes(&self) -> EngineResult<revoked::Revocations> {
        Ok(revoked::load(&self.inner.index)?)
    }

    /// Zones of every drive: usage, blocks written, live bytes.
    pub fn zone_table(&self) -> Vec<ZoneRow> {
        let mut rows = Vec::new();
        for drive in self.inner.drives.all() {
            for (i, (usage, written)) in
                self.inner.placement.usage(drive.id).into_iter().enumerate()
            {
                let zone = ZoneId {
                    drive: drive.id,
                    zone: i as u32,
                };
                let account = self.inner.accounts.get(zone);
                rows.push(ZoneRow {
                    drive: drive.name.clone(),
                    zone: i as u32,
                    usage,
                    written_bytes: written * drive.block_size(),
                    valid_bytes: account.valid_bytes,
                    capacity_bytes: drive.geometry.zone_capacity_bytes(),
                    generation: account.generation,
                });
            }
        }
        rows
    }

    /// Free zones per drive.
    pub fn free_zones(&self) -> Vec<(String, usize, usize)> {
        self.inner
            .drives
            .all()
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    self.inner.placement.free_zones(d.id),
                    self.inner.placement.zone_count(d.id),
                )
            })
            .collect()
    }

    /// Flushes every drive (used on shutdown).
    pub async fn flush_all(&self) -> EngineResult<()> {
        // All at once, and every drive gets its flush even if another's fails: one stuck
        // drive (a target that answers nothing) holds the others up no longer than itself.
        let flushes = self
            .inner
            .drives
            .all()
            .iter()
            .filter(|d| !d.removed)
            .map(|drive| async move { drive.device.flush().await.map_err(|e| drive.error(e)) });
        futures::future::join_all(flushes)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Resets every zone of every drive that the engine does not use (for tests).
    pub async fn reset_free_zones(&self) -> EngineResult<()> {
        for drive in self.inner.drives.all() {
            for (i, (usage, _)) in self.inner.placement.usage(drive.id).into_iter().enumerate() {
                if usage == ZoneUse::Free {
                    let zslba = drive.geometry.zone_start(i as u32);
                    let _ = drive
                        .device
                        .manage_zones(ZoneAction::Reset, ZoneSelect::Zone(zslba))
                        .await;
                }
            }
        }
        Ok(())
    }

    /// GC control.
    pub fn gc(&self) -> &gc::GcControl {
        &self.inner.gc
    }

    /// Repair and scrub.
    pub fn repair(&self) -> &repair::RepairControl {
        &self.inner.repair
    }

    /// The drive named `name` (its whole name, or the NQN after `nqn:`).
    fn drive_named(&self, name: &str) -> EngineResult<Arc<drives::Drive>> {
        let all = self.inner.drives.all();
        if let Some(exact) = all.iter().find(|d| d.name == name) {
            return Ok(exact.clone());
        }
        // The end of a name (an NQN without `nqn:`, or its last part), when only one has it.
        let suffix = format!(":{name}");
        let matching: Vec<&Arc<drives::Drive>> =
            all.iter().filter(|d| d.name.ends_with(&suffix)).collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::InvalidArgument(format!(
                "no drive named {name:?}"
            ))),
            several => Err(EngineError::InvalidArgument(format!(
                "{name:?} could be any of {}: give the whole name",
                several
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Starts draining the drive named `name`: no new writes go to it and every record on it
    /// is moved to other drives.
    pub async fn drain(&self, name: &str) -> EngineResult<()> {
        // Detached: a caller that goes away (an admin client's Ctrl-C) does not leave the
        // drive's flag and the index saying different things.
        let (engine, name) = (self.clone(), name.to_string());
        detached(async move { engine.drain_here(&name).await }).await
    }

    async fn drain_here(&self, name: &str) -> EngineResult<()> {
        let drive = self.drive_named(name)?.id;
        let _one_at_a_time = self.inner.repair.drains.lock().await;
        // Every record must find its R copies on the other drives, or the drain never ends
        // (and writes stop if fewer than W are left).
        let others = self
            .inner
            .drives
            .all()
            .iter()
            .filter(|d| d.id != drive && d.is_writable())
            .count();
        let copies = self.inner.replicas();
        if others < copies {
            return Err(EngineError::InvalidArgument(format!(
                "draining {name} leaves {others} drives taking writes for {copies} copies of every record (lower the replication factor, or add a target, first)"
            )));
        }
        self.inner.drain(drive).await
    }

    /// Stops draining the drive named `name`: it takes new writes again, and what was not
    /// moved off it yet stays.
    pub async fn undrain(&self, name: &str) -> EngineResult<()> {
        // Detached, as [`Engine::drain`].
        let (engine, name) = (self.clone(), name.to_string());
        detached(async move { engine.undrain_here(&name).await }).await
    }

    async fn undrain_here(&self, name: &str) -> EngineResult<()> {
        let drive = self.drive_named(name)?;
        let _one_at_a_time = self.inner.repair.drains.lock().await;
        self.inner
            .committer
            .submit(commit::Change::SetDraining(drive.id, false))
            .await?;
        drive.draining.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether `drive` is drained: draining, no append on it awaits its index entry, the index
    /// names no record there, and a repair pass begun since the drain began (one that met every
    /// record placed before) has ended. It can then be taken away without a copy lost.
    pub fn drained(&self, drive: &drives::Drive) -> bool {
        if !drive.draining.load(Ordering::SeqCst) {
            return false;
        }
        let began_after = drive.drain_began_after_pass.load(Ordering::SeqCst);
        self.inner.repair.status().last_completed > began_after
            && !self.inner.holds_or_awaits_records(drive)
    }

    /// Live bytes (records the index uses) on each drive.
    pub fn live_bytes(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.inner.drives.len()];
        for drive in self.inner.drives.all() {
            out[usize::from(drive.id)] = self.inner.live_bytes_on(drive);
        }
        out
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// Drives.
    pub fn drives(&self) -> &Arc<Drives> {
        &self.inner.drives
    }

    /// The index (for tests: see [`Index::refuse_writes`]).
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// Failed writes whose revocations wait for the index to take them (see
    /// [`revoked::Pending`]).
    pub fn revocations_waiting(&self) -> usize {
        self.inner.committer.pending_revocations.len()
    }

    /// Object bytes users wrote.
    pub fn user_bytes(&self) -> u64 {
        self.inner.stats.user_bytes.load(Ordering::Relaxed)
    }
}

/// An object opened for reading (see [`Engine::open_object`]).
pub struct ObjectHandle {
    engine: Arc<EngineInner>,
    meta: ObjectMeta,
    /// The index as of the open: where this version's bytes are.
    snapshot: Arc<index::IndexSnapshot>,
    ticket: Arc<gate::Ticket>,
}

impl std::fmt::Debug for ObjectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectHandle")
            .field("size", &self.meta.size)
            .finish_non_exhaustive()
    }
}

impl ObjectHandle {
    /// The object's manifest.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// Streams `range` of the object.
    pub fn read(&self, range: Range<u64>) -> EngineResult<BodyStream> {
        if range.start > range.end || range.end > self.meta.size {
            return Err(EngineError::InvalidArgument(format!(
                "range {range:?} of a {}-byte object",
                self.meta.size
            )));
        }
        let pieces = reader::plan(self.meta.clone(), range, self.snapshot.clone());
        Ok(self.engine.read_stream(pieces, self.ticket.clone()))
    }
}

/// One row of the zone table.
#[derive(Debug, Clone)]
pub struct ZoneRow {
    /// Drive name.
    pub drive: String,
    /// Zone index.
    pub zone: u32,
    /// What the engine does with it.
    pub usage: ZoneUse,
    /// Bytes written.
    pub written_bytes: u64,
    /// Live bytes.
    pub valid_bytes: u64,
    /// Capacity.
    pub capacity_bytes: u64,
    /// Resets so far.
    pub generation: u64,
}

/// Bytes in lower-case hex.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How long a background task (GC, repair, scrub) told to stop is waited for at shutdown: one
/// stuck on a drive that answers nothing must not hold the stop up past what a service manager
/// allows (the flush that follows is bounded too).
const TASK_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits for a background task told to stop, aborting it after [`TASK_STOP_LIMIT`] (like a
/// crash, which loses nothing acknowledged).
pub(crate) async fn stop_task(what: &str, mut task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(TASK_STOP_LIMIT, &mut task)
        .await
        .is_err()
    {
        tracing::warn!("{what} did not stop within {TASK_STOP_LIMIT:?}; abandoning it");
        task.abort();
    }
}
