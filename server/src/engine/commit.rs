//! The committer: the only writer of the index. Changes arrive from concurrent requests and are
//! applied in groups: one flush per drive touched by the group makes its records durable, then
//! one synchronous RocksDB write batch makes its index changes durable, then every request in
//! the group is answered. Thousands of small PUTs per second thus share flushes and WAL syncs,
//! and the next group's flushes run while this one's index write does.
//!
//! Each change is checked against the index as it stands (including changes earlier in the same
//! group) and ordered by sequence number, exactly as a rebuild from the log would order it:
//! a version with a lower sequence number never replaces one with a higher.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rocksdb::WriteBatch;
use tokio::sync::{mpsc, oneshot};

use super::drives::Drives;
use super::error::{EngineError, EngineResult};
use super::group_flush;
use super::index::{self, Index, TombKind, cf};
use super::model::{
    BucketEntry, DriveId, Extent, Location, ObjectEntry, ObjectMeta, PartEntry, TombstoneEntry,
    UploadEntry, ZoneAccount, ZoneId, ZoneStamp,
};
use super::patience::Patience;
use super::placement::{Placement, ZoneHolds};
use super::record::Kind;
use super::revoked::{self, Revocation};
use super::settled;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// A new extent of a stream.
#[derive(Debug, Clone)]
pub struct NewExtent {
    /// Stream.
    pub stream_id: u64,
    /// Offset in the stream.
    pub offset: u64,
    /// The extent.
    pub extent: Extent,
}

/// A condition on a write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Condition {
    /// Unconditional.
    #[default]
    None,
    /// If-None-Match: * (only if the key does not exist).
    IfNoneMatchAny,
    /// If-Match: the current ETag must be this.
    IfMatch(String),
    /// If-Match: * (only if the key exists).
    IfExists,
}

/// Key in the meta column family of the drives being drained.
pub const DRAINING_KEY: &[u8] = b"draining";

/// Decodes a list of drive ids (big-endian u16s).
pub fn decode_drive_ids(bytes: &[u8]) -> Vec<DriveId> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn encode_drive_ids(ids: &[DriveId]) -> Vec<u8> {
    ids.iter().flat_map(|d| d.to_be_bytes()).collect()
}

/// A change to the copies of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaEdit {
    /// A new copy (repair): added if the entry still exists and does not hold it.
    Add(Location),
    /// A copy dropped (drain): removed if another copy remains.
    Remove(Location),
    /// A copy replaced by another (drain, scrub): if the entry still holds `from`.
    Replace(Location, Location),
}

/// A record moved by GC: the entry is updated only if it still points at `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relocation {
    /// A data record.
    Extent {
        /// Stream.
        stream_id: u64,
        /// Offset.
        offset: u64,
    },
    /// An object's commit record.
    Commit {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version.
        seq: u64,
    },
    /// A tombstone.
    Tombstone {
        /// What it hides.
        kind: TombKind,
        /// Name bytes (see the tombstones CF).
        name: Vec<u8>,
        /// Its sequence number.
        seq: u64,
    },
    /// A bucket record.
    Bucket {
        /// Name.
        name: String,
        /// Sequence number.
        seq: u64,
    },
    /// An upload record.
    Upload {
        /// Upload id.
        upload_id: u64,
    },
    /// A part record.
    Part {
        /// Upload id.
        upload_id: u64,
        /// Part number.
        part_number: u32,
        /// Sequence number.
        seq: u64,
    },
}

/// One index change.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new object version.
    PutObject {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Manifest.
        meta: ObjectMeta,
        /// Commit record copies.
        commit: Vec<Location>,
        /// Its data.
        extents: Vec<NewExtent>,
        /// Condition.
        condition: Condition,
        /// The creation (sequence number) of the bucket the write began in, if it must still
        /// be that one: a bucket deleted and created again while the body streamed in (by
        /// anyone) is another bucket, which the write must not land in.
        bucket_seq: Option<u64>,
    },
    /// A deletion (the tombstone record is written).
    DeleteObject {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Sequence number.
        seq: u64,
        /// Tombstone copies.
        tombstone: Vec<Location>,
    },
    /// A new bucket.
    CreateBucket {
        /// Name.
        name: String,
        /// Entry (with its record's locations).
        entry: BucketEntry,
    },
    /// A bucket deletion.
    DeleteBucket {
        /// Name.
        name: String,
        /// Sequence number.
        seq: u64,
        /// Tombstone copies.
        tombstone: Vec<Location>,
    },
    /// A new multipart upload.
    CreateUpload {
        /// Entry.
        entry: UploadEntry,
    },
    /// A part.
    PutPart {
        /// Upload.
        upload_id: u64,
        /// Entry.
        part: PartEntry,
        /// Its data.
        extents: Vec<NewExtent>,
    },
    /// CompleteMultipartUpload.
    CompleteUpload {
        /// Upload.
        upload_id: u64,
        /// Manifest of the object (streams are the parts').
        meta: ObjectMeta,
        /// Commit record copies.
        commit: Vec<Location>,
        /// Upload-end record copies.
        end: Vec<Location>,
        /// Part numbers used, in order, with the stream each must still have.
        parts: Vec<(u32, u64)>,
        /// Condition on the key.
        condition: Condition,
    },
    /// AbortMultipartUpload.
    AbortUpload {
        /// Upload.
        upload_id: u64,
        /// Sequence number.
        seq: u64,
        /// Upload-end record copies.
        end: Vec<Location>,
    },
    /// GC moved records.
    Relocate(Vec<(Relocation, Location, Location)>),
    /// Repair, drain or scrub changed records' copies.
    Replicas(Vec<(Relocation, ReplicaEdit)>),
    /// Copies GC, repair or scrub appended that no change makes part of the index (the append
    /// reported failure, yet may have landed; the work was given up before its commit), with
    /// the zones they may be in: whatever holds each record's name hides those zones.
    Orphans(Vec<(Relocation, Vec<ZoneId>)>),
    /// A zone was reset.
    ZoneReset(ZoneId),
    /// Tombstones (kind, name, sequence number) to drop if nothing older is left for them to
    /// hide (the zones they hid were reset since): their records then become garbage GC can
    /// reclaim, where otherwise they stay counted live until GC happens to move them.
    PruneTombstones(Vec<(TombKind, Vec<u8>, u64)>),
    /// A drive started (true) or stopped (false) being drained.
    SetDraining(DriveId, bool),
}

impl Change {
    /// Whether this is GC's or repair's: new copies of records already named (hidden by
    /// whatever holds the name when the change is refused or its index write fails).
    fn moves_copies(&self) -> bool {
        matches!(
            self,
            Change::Relocate(_) | Change::Replicas(_) | Change::Orphans(_)
        )
    }

    /// The sequence number of a client write's claiming record (what replay would apply it
    /// by), for any other change None.
    pub fn claim_seq(&self) -> Option<u64> {
        match self {
            Change::PutObject { meta, .. } | Change::CompleteUpload { meta, .. } => Some(meta.seq),
            Change::DeleteObject { seq, .. }
            | Change::DeleteBucket { seq, .. }
            | Change::AbortUpload { seq, .. } => Some(*seq),
            Change::CreateBucket { entry, .. } => Some(entry.seq),
            Change::CreateUpload { entry } => Some(entry.seq),
            Change::PutPart { part, .. } => Some(part.seq),
            Change::Relocate(_)
            | Change::Replicas(_)
            | Change::Orphans(_)
            | Change::ZoneReset(_)
            | Change::PruneTombstones(_)
            | Change::SetDraining(..) => None,
        }
    }

    /// Takes out of GC's or repair's change the items whose new copy is on one of `drives`,
    /// with every other item about the same record (a drained copy is removed counting on the
    /// new copy made with it), as a change of its own; None when there is none, or for other
    /// changes.
    fn split_off_copies_on(&mut self, drives: &BTreeSet<DriveId>) -> Option<Change> {
        match self {
            Change::Relocate(items) => {
                let (out, keep) = std::mem::take(items)
                    .into_iter()
                    .partition::<Vec<_>, _>(|(_, _, to)| drives.contains(&to.drive));
                *items = keep;
                (!out.is_empty()).then_some(Change::Relocate(out))
            }
            Change::Replicas(items) => {
                let doubtful: Vec<Relocation> = items
                    .iter()
                    .filter_map(|(what, edit)| match edit {
                        ReplicaEdit::Add(to) | ReplicaEdit::Replace(_, to)
                            if drives.contains(&to.drive) =>
                        {
                            Some(what.clone())
                        }
                        _ => None,
                    })
                    .collect();
                if doubtful.is_empty() {
                    return None;
                }
                let (out, keep) = std::mem::take(items)
                    .into_iter()
                    .partition::<Vec<_>, _>(|(what, _)| doubtful.contains(what));
                *items = keep;
                Some(Change::Replicas(out))
            }
            _ => None,
        }
    }

    /// Whether GC's or repair's change has no item left.
    fn has_no_moves(&self) -> bool {
        match self {
            Change::Relocate(items) => items.is_empty(),
            Change::Replicas(items) => items.is_empty(),
            _ => false,
        }
    }

    /// Removes the copies on `drives` from a client write's records, if every record keeps at
    /// least `quorum` copies, and returns the removed copies of the record that claims the
    /// name (commit, bucket, upload or part record: they may still be on their drives, and
    /// must be hidden like any orphan); None (nothing changed) otherwise, or for other changes
    /// (GC's, repair's: one copy each).
    fn drop_copies_keeping(
        &mut self,
        drives: &BTreeSet<DriveId>,
        quorum: usize,
    ) -> Option<Vec<Location>> {
        // The claiming record's copies first; then the others (data, tombstones, upload ends:
        // inert on their own).
        let mut no_claim: Vec<Location> = Vec::new();
        let mut lists: Vec<&mut Vec<Location>> = Vec::new();
        match self {
            Change::PutObject {
                commit, extents, ..
            } => {
                lists.push(commit);
                lists.extend(extents.iter_mut().map(|e| &mut e.extent.replicas));
            }
            Change::CreateBucket { entry, .. } => lists.push(&mut entry.location),
            Change::CreateUpload { entry } => lists.push(&mut entry.location),
            Change::PutPart { part, extents, .. } => {
                lists.push(&mut part.location);
                lists.extend(extents.iter_mut().map(|e| &mut e.extent.replicas));
            }
            Change::CompleteUpload { commit, end, .. } => {
                lists.push(commit);
                lists.push(end);
            }
            Change::DeleteObject { tombstone, .. } | Change::DeleteBucket { tombstone, .. } => {
                lists.push(&mut no_claim);
                lists.push(tombstone);
            }
            Change::AbortUpload { end, .. } => {
                lists.push(&mut no_claim);
                lists.push(end);
            }
            Change::Relocate(_)
            | Change::Replicas(_)
            | Change::Orphans(_)
            | Change::ZoneReset(_)
            | Change::PruneTombstones(_)
            | Change::SetDraining(..) => return None,
        }
        let kept = |ls: &Vec<Location>| ls.iter().filter(|l| !drives.contains(&l.drive)).count();
        if lists
            .iter()
            .any(|ls| !ls.is_empty() && kept(ls) < quorum.max(1))
        {
            return None;
        }
        let claims: Vec<Location> = lists[0]
            .iter()
            .filter(|l| drives.contains(&l.drive))
            .copied()
            .collect();
        for ls in lists {
            ls.retain(|l| !drives.contains(&l.drive));
        }
        Some(claims)
    }

    /// Whether the change may be applied without its copies on `drives`: a client write keeps a
    /// write quorum of copies of each record elsewhere (see [`Change::drop_copies_keeping`]).
    /// GC's and repair's changes wait for their drives: they load one drive (all of a victim's
    /// records go back to it; a returning drive takes every copy repair makes), whose flush is
    /// then slower than the others' without that drive being slow.
    fn can_do_without(&self, drives: &BTreeSet<DriveId>, quorum: usize) -> bool {
        let mut touches = false;
        self.for_each_location(|l| touches |= drives.contains(&l.drive));
        if !touches {
            return true;
        }
        if self.moves_copies() {
            return false;
        }
        let mut enough = true;
        self.for_each_record(|copies| {
            let kept = copies.iter().filter(|l| !drives.contains(&l.drive)).count();
            enough &= copies.is_empty() || kept >= quorum.max(1);
        });
        enough
    }

    /// Drives whose records this change makes part of the index (they must be flushed first).
    pub(crate) fn drives(&self) -> BTreeSet<DriveId> {
        let mut out = BTreeSet::new();
        self.for_each_location(|l| {
            out.insert(l.drive);
        });
        out
    }

    /// Calls `visit` with every copy of every record the change makes part of the index.
    fn for_each_location(&self, mut visit: impl FnMut(&Location)) {
        self.for_each_record(|copies| copies.iter().for_each(&mut visit));
    }

    /// Calls `visit` with the copies of each record the change makes part of the index.
    fn for_each_record(&self, mut add: impl FnMut(&[Location])) {
        match self {
            Change::PutObject {
                commit, extents, ..
            } => {
                add(commit);
                extents.iter().for_each(|e| add(&e.extent.replicas));
            }
            Change::DeleteObject { tombstone, .. } | Change::DeleteBucket { tombstone, .. } => {
                add(tombstone)
            }
            Change::CreateBucket { entry, .. } => add(&entry.location),
            Change::CreateUpload { entry } => add(&entry.location),
            Change::PutPart { part, extents, .. } => {
                add(&part.location);
                extents.iter().for_each(|e| add(&e.extent.replicas));
            }
            Change::CompleteUpload { commit, end, .. } => {
                add(commit);
                add(end);
            }
            Change::AbortUpload { end, .. } => add(end),
            Change::Relocate(items) => items
                .iter()
                .for_each(|(_, _, to)| add(std::slice::from_ref(to))),
            Change::Replicas(items) => {
                for (_, edit) in items {
                    match edit {
                        ReplicaEdit::Add(to) | ReplicaEdit::Replace(_, to) => {
                            add(std::slice::from_ref(to))
                        }
                        ReplicaEdit::Remove(_) => {}
                    }
                }
            }
            Change::Orphans(_)
            | Change::ZoneReset(_)
            | Change::PruneTombstones(_)
            | Change::SetDraining(..) => {}
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// A newer version was already there; the change had no effect.
    Superseded,
    /// There was nothing to delete.
    NotFound,
}

/// The in-memory copy of every zone's accounting, kept current by the committer.
#[derive(Debug, Default)]
pub struct ZoneAccounts {
    map: Mutex<HashMap<ZoneId, ZoneAccount>>,
}

impl ZoneAccounts {
    /// Accounts loaded from the index.
    pub fn new(map: HashMap<ZoneId, ZoneAccount>) -> Self {
        ZoneAccounts {
            map: Mutex::new(map),
        }
    }

    /// One zone's account.
    pub fn get(&self, zone: ZoneId) -> ZoneAccount {
        self.map.lock().get(&zone).copied().unwrap_or_default()
    }

    /// A copy of all accounts.
    pub fn snapshot(&self) -> HashMap<ZoneId, ZoneAccount> {
        self.map.lock().clone()
    }

    /// Generation of a zone.
    pub fn generation(&self, zone: ZoneId) -> u64 {
        self.get(zone).generation
    }

    fn publish(&self, changed: HashMap<ZoneId, ZoneAccount>) {
        self.map.lock().extend(changed);
    }
}

struct Request {
    change: Change,
    reply: oneshot::Sender<EngineResult<Outcome>>,
    /// Holds on the zones of the change's new records, released once the change is applied
    /// (or failed), whether or not the submitter is still waiting.
    holds: Vec<ZoneHolds>,
    /// The name lock the change was checked under, released likewise (see [`super::names`]).
    /// A client's write always has one; a change replay submits for a record found on the
    /// drives has none.
    lock: Option<Box<dyn Send>>,
}

/// Handle to the committer task.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
    /// Client writes applied with fewer copies than written (drives that failed before their
    /// flush): repair makes the others again.
    pub short_commits: Arc<AtomicU64>,
    /// Revocations of failed writes that the index did not take at once: the next index
    /// write carries them.
    pub pending_revocations: Arc<revoked::Pending>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// The most GC and repair changes whose copies wait for the index to hide them (see
/// `unrecorded_copies` in the committer).
const MAX_UNRECORDED_CHANGES: usize = 4096;

/// How many changes one group may hold.
const MAX_GROUP: usize = 1024;

impl Committer {
    /// Starts the committer; a client write may be applied with `quorum` copies when the
    /// others' drives fail (or reconnect) before their flush, or flush too slowly for
    /// `patience` (see [`group_flush`]).
    pub fn start(
        index: Arc<Index>,
        drives: Arc<Drives>,
        accounts: Arc<ZoneAccounts>,
        placement: Arc<Placement>,
        quorum: usize,
        patience: Patience,
    ) -> Committer {
        let (tx, rx) = mpsc::channel(4096);
        let short_commits = Arc::new(AtomicU64::new(0));
        let pending_revocations = Arc::new(revoked::Pending::default());
        let task = tokio::spawn(run(
            rx,
            Shared {
                index,
                drives,
                accounts,
                placement,
                pending_revocations: pending_revocations.clone(),
            },
            quorum,
            patience,
            short_commits.clone(),
        ));
        Committer {
            tx,
            short_commits,
            pending_revocations,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// The committer task, to wait for after the last handle is dropped.
    pub fn take_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.task.lock().take()
    }

    /// Applies a change durably; returns once its records and index entries are durable.
    pub async fn submit(&self, change: Change) -> EngineResult<Outcome> {
        self.submit_holding(change, Vec::new()).await
    }

    /// [`Committer::submit`] for a change naming records just appended: `holds` keep GC off
    /// their zones until the change is applied. The committer releases them, so a submitter
    /// that stops waiting (a client gone) cannot release them before the index names the
    /// records.
    pub(crate) async fn submit_holding(
        &self,
        change: Change,
        holds: Vec<ZoneHolds>,
    ) -> EngineResult<Outcome> {
        self.submit_request(change, holds, None).await
    }

    /// [`Committer::submit_holding`] for a change checked under a name lock: the committer
    /// keeps `lock` until the change is applied, so a submitter that stops waiting cannot let
    /// the next writer check its conditions against an index the change has not reached yet.
    pub(crate) async fn submit_locked(
        &self,
        change: Change,
        holds: Vec<ZoneHolds>,
        lock: impl Send + 'static,
    ) -> EngineResult<Outcome> {
        self.submit_request(change, holds, Some(Box::new(lock)))
            .await
    }

    async fn submit_request(
        &self,
        change: Change,
        holds: Vec<ZoneHolds>,
        lock: Option<Box<dyn Send>>,
    ) -> EngineResult<Outcome> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Request {
                change,
                reply,
                holds,
                lock,
            })
            .await
            .map_err(|_| EngineError::Unavailable("the engine is shutting down".into()))?;
        wait.await.map_err(|_| {
            EngineError::Unavailable("the engine stopped before the write was applied".into())
        })?
    }
}

/// What the committer task works with.
struct Shared {
    index: Arc<Index>,
    drives: Arc<Drives>,
    accounts: Arc<ZoneAccounts>,
    placement: Arc<Placement>,
    pending_revocations: Arc<revoked::Pending>,
}

/// A group whose records were flushed, waiting for its index changes, with the drives whose
/// flush failed (and why).
struct Flushed {
    group: Vec<Request>,
    failed: HashMap<DriveId, String>,
}

/// Why a group's index write failed.
#[derive(Debug, thiserror::Error)]
enum IndexWriteFailed {
    /// The index refused it (a full disk, say: the error says which, for the client's answer).
    #[error(transparent)]
    Index(index::IndexError),
    /// The task writing it failed.
    #[error("{0}")]
    Task(String),
}

impl IndexWriteFailed {
    /// The error each write of the group gets.
    fn to_engine_error(&self) -> EngineError {
        match self {
            IndexWriteFailed::Index(e) => EngineError::Index(e.clone()),
            IndexWriteFailed::Task(why) => EngineError::Internal(why.clone()),
        }
    }
}

/// The committer task: two stages, overlapped. One flushes the drives a group touched while the
/// other writes the previous group's index changes, so a group costs the longer of the two
/// waits, not their sum. Groups reach the index in the order they formed; each change is checked
/// against the index as the groups before it left it.
async fn run(
    rx: mpsc::Receiver<Request>,
    shared: Shared,
    quorum: usize,
    patience: Patience,
    short_commits: Arc<AtomicU64>,
) {
    // One group flushed and waiting while another is written: no more, so groups stay large
    // when the index is the slower stage.
    let (flushed_tx, flushed_rx) = mpsc::channel(1);
    let drives = shared.drives.clone();
    tokio::join!(
        flush_groups(rx, drives, flushed_tx, quorum, patience),
        apply_groups(flushed_rx, shared, quorum, short_commits)
    );
}

/// The first stage: forms groups of the requests waiting and makes their records durable, one
/// flush per drive touched.
async fn flush_groups(
    mut rx: mpsc::Receiver<Request>,
    drives: Arc<Drives>,
    flushed: mpsc::Sender<Flushed>,
    quorum: usize,
    patience: Patience,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let touched: BTreeSet<DriveId> = group.iter().flat_map(|r| r.change.drives()).collect();
        // (The changes and holds alone are looked at while the flushes run: a request's name
        // lock is not for sharing.) A drive reconnected since a change's appends counts as one
        // its copies are left out on (see `sessions_changed`).
        let changes: Vec<(&Change, &[ZoneHolds])> =
            group.iter().map(|r| (&r.change, &r.holds[..])).collect();
        let failed = group_flush::flush_drives(&drives, &touched, patience, |unflushed| {
            changes.iter().all(|(change, holds)| {
                let mut without = unflushed.clone();
                without.extend(sessions_changed(&drives, holds).into_iter().map(|(d, _)| d));
                change.can_do_without(&without, quorum)
            })
        })
        .await;
        drop(changes);
        if flushed.send(Flushed { group, failed }).await.is_err() {
            return;
        }
    }
}

/// The second stage: applies each flushed group's changes in order in one durable index
/// write, then answers its requests; at the end, records how far zones are settled.
async fn apply_groups(
    mut flushed: mpsc::Receiver<Flushed>,
    shared: Shared,
    quorum: usize,
    short_commits: Arc<AtomicU64>,
) {
    let Shared {
        index,
        drives,
        accounts,
        placement,
        pending_revocations,
    } = shared;
    // GC's and repair's changes of groups whose index write failed: their new copies are
    // hidden by the next index write that lands (see `carried` below), as those of a refused
    // change are by its own group's.
    let mut unrecorded_copies: Vec<(Change, Vec<ZoneId>)> = Vec::new();
    while let Some(Flushed { mut group, failed }) = flushed.recv().await {
        // Apply the changes in order into one batch.
        let base = accounts.snapshot();
        let mut txn = Txn::new(&index, &drives, &base);
        let mut results = Vec::with_capacity(group.len());
        for request in &mut group {
            // Copies whose appends reported failure, yet may have landed: a successful write
            // leaves them out, and whatever holds the name hides their zones.
            let strays: Vec<ZoneId> = request
                .holds
                .iter()
                .flat_map(|h| h.strays().iter().copied())
                .collect();
            // Copies that may not be durable: their drive's flush failed, or the drive was
            // reconnected since they were appended (the target may have restarted and lost
            // them).
            let mut doubtful: BTreeMap<DriveId, String> = request
                .change
                .drives()
                .into_iter()
                .filter_map(|d| {
                    failed
                        .get(&d)
                        .map(|why| (d, format!("flush failed on {why}")))
                })
                .collect();
            for (d, name) in sessions_changed(&drives, &request.holds) {
                doubtful.entry(d).or_insert_with(|| {
                    format!("{name} was reconnected between the write and its flush (the target may have restarted and lost it)")
                });
            }
            if !doubtful.is_empty() {
                // A client write still counts with a write quorum of copies left (repair
                // makes the others again); anything else fails.
                let drop: BTreeSet<DriveId> = doubtful.keys().copied().collect();
                // GC's or repair's new copies on those drives are left out (hidden as orphans)
                // and the rest applied: one flaky drive does not keep out the copies that
                // landed on the others. (The request keeps the whole change, for hiding should
                // the index write fail.)
                let mut kept = request.change.clone();
                if let Some(refused) = kept.split_off_copies_on(&drop) {
                    if let Err(e) = txn.shadow_moved_copies(&refused, true, &strays) {
                        tracing::warn!("hiding the copies of a refused relocation failed: {e}");
                    }
                    if kept.has_no_moves() {
                        let why = doubtful.into_values().next().unwrap_or_default();
                        results.push(Err(EngineError::Unavailable(why)));
                    } else {
                        results.push(txn.apply_or_hide(&kept, &[], &strays));
                    }
                    continue;
                }
                let Some(orphans) = request.change.drop_copies_keeping(&drop, quorum) else {
                    // GC's or repair's copies the refused change leaves out are orphans, hidden
                    // like any (a client write's are revoked below).
                    if let Err(e) = txn.shadow_moved_copies(&request.change, true, &strays) {
                        tracing::warn!("hiding the copies of a refused relocation failed: {e}");
                    }
                    let why = doubtful.into_values().next().unwrap_or_default();
                    results.push(Err(EngineError::Unavailable(why)));
                    continue;
                };
                tracing::debug!(drives = ?drop, "a write is kept with fewer copies (its other drives failed before their flush); repair will make them again");
                short_commits.fetch_add(1, Ordering::Relaxed);
                results.push(txn.apply_or_hide(&request.change, &orphans, &strays));
                continue;
            }
            results.push(txn.apply_or_hide(&request.change, &[], &strays));
        }
        // A client write that failed here left its claiming record on the drives: revoked in
        // this batch, before the client hears of the failure (see [`revoked`]).
        for (request, result) in group.iter().zip(&results) {
            if result.is_err()
                && let Some((seq, revocation)) = revocation(request, &drives, &base)
            {
                txn.revoke(seq, revocation);
            }
        }
        // How far zones are settled, as of the groups before this one (this one's records
        // are settled once its batch is durable: the next group records them).
        let settled_reports = placement.settled_reports();
        for &(zone, prefix) in &settled_reports {
            txn.record_settled(zone, prefix);
        }
        // Revocations the index did not take earlier, taken after the settled prefixes: a
        // failed write's records are let go (and settled) only once their revocation is
        // waiting, so a prefix past them is recorded with it.
        let carried = pending_revocations.take();
        let carried_copies = std::mem::take(&mut unrecorded_copies);
        txn.carry(&carried, &carried_copies);
        // Make the index changes durable (not if an earlier revocation a revocation adds to
        // did not read: the group then fails as a write the index refused, whose revocations
        // are recorded on their own or carried).
        let unread = txn.unread.take();
        let (batch, changed) = txn.finish();
        let written = match unread {
            Some(why) => Err(IndexWriteFailed::Task(why)),
            None => {
                let index = index.clone();
                match tokio::task::spawn_blocking(move || index.write(batch, true)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(IndexWriteFailed::Index(e)),
                    Err(e) => Err(IndexWriteFailed::Task(format!(
                        "index writer task failed: {e}"
                    ))),
                }
            }
        };
        match written {
            Ok(()) => {
                accounts.publish(changed);
                for (request, result) in group.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(failure) => {
                tracing::error!("index write failed: {failure}");
                // The settled prefixes were not recorded: the next write records them.
                placement.unreport(&settled_reports);
                // Every write of the group failed: their records are revoked, with those
                // carried, if the index takes even that; if not, the next index write carries
                // them all (the requests, and so their holds, go only after that is arranged).
                let mut failed: Vec<(u64, Revocation)> = group
                    .iter()
                    .filter_map(|r| revocation(r, &drives, &base))
                    .collect();
                failed.extend(carried);
                let to_write = failed.clone();
                let index_for_revocations = index.clone();
                let written = tokio::task::spawn_blocking(move || {
                    revoked::record_all(&index_for_revocations, to_write)
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::warn!(
                        count = failed.len(),
                        "the index did not take the failed writes' revocations either: the next index write carries them"
                    );
                    for (seq, revocation) in failed {
                        pending_revocations.add(seq, revocation);
                    }
                }
                // GC's and repair's copies the index did not take are hidden by the next
                // write that lands (kept before their holds go, with the request).
                unrecorded_copies.extend(carried_copies);
                if unrecorded_copies.len() > MAX_UNRECORDED_CHANGES {
                    // An index down for long while GC and repair keep trying: memory is
                    // bounded, and what is let go is said (a rebuild may take those copies).
                    let dropped = unrecorded_copies.len() - MAX_UNRECORDED_CHANGES;
                    unrecorded_copies.drain(..dropped);
                    tracing::error!(
                        dropped,
                        "too many relocations wait for the index to hide their copies: the oldest are let go"
                    );
                }
                for request in group {
                    if request.lock.is_none() && request.change.moves_copies() {
                        let strays = request
                            .holds
                            .iter()
                            .flat_map(|h| h.strays().iter().copied())
                            .collect();
                        unrecorded_copies.push((request.change.clone(), strays));
                    }
                    let _ = request.reply.send(Err(failure.to_engine_error()));
                }
            }
        }
    }
    // The engine is shutting down: how far every zone is settled now, so that the next start
    // has nothing to replay.
    let reports = placement.settled_reports();
    let carried = pending_revocations.take();
    if !reports.is_empty() || !carried.is_empty() || !unrecorded_copies.is_empty() {
        let base = accounts.snapshot();
        let mut txn = Txn::new(&index, &drives, &base);
        for (zone, prefix) in reports {
            txn.record_settled(zone, prefix);
        }
        let revocations = carried.len();
        txn.carry(&carried, &unrecorded_copies);
        let unread = txn.unread.take();
        let (batch, _) = txn.finish();
        let written = match unread {
            Some(why) => {
                tracing::error!("{why}");
                None
            }
            None => Some(tokio::task::spawn_blocking(move || index.write(batch, true)).await),
        };
        if !matches!(written, Some(Ok(Ok(())))) {
            tracing::error!(
                revocations,
                "recording how far zones are settled, and the revocations of failed writes the index did not take, failed at shutdown: a replay at the next start may apply those writes"
            );
        }
    }
}

/// The zones of a change's records (those it names, and those held for it), stamped with their
/// generations in `accounts`.
fn record_zones(
    change: &Change,
    holds: &[ZoneHolds],
    drives: &Drives,
    accounts: &HashMap<ZoneId, ZoneAccount>,
) -> Vec<ZoneStamp> {
    let mut zones: Vec<ZoneId> = holds.iter().flat_map(|h| h.zones()).collect();
    // A change replay submitted has no holds: its records are where it names them.
    change.for_each_location(|l| zones.extend(drives.zone_of(l)));
    revoked::stamps(zones, |zone| {
        accounts.get(&zone).map_or(0, |a| a.generation)
    })
}

/// The revocation of a failed client write's records (see [`revoked`]), by sequence number,
/// or None for a change that is not a client write.
fn revocation(
    request: &Request,
    drives: &Drives,
    accounts: &HashMap<ZoneId, ZoneAccount>,
) -> Option<(u64, Revocation)> {
    // A change replay submitted that is refused is a record passed over, which replay hides
    // or revokes by its kind: its number may be another live record's too (a completion's
    // upload-end record shares its commit record's), which a revocation of the whole number
    // would kill.
    request.lock.as_ref()?;
    let seq = request.change.claim_seq()?;
    let zones = record_zones(&request.change, &request.holds, drives, accounts);
    Some((seq, Revocation::whole(zones)))
}

/// Drives (with their names) whose session changed since one of the held records was appended
/// to them (checked after the group's flush): their flush may have gone to a target that
/// restarted after the append, without it.
fn sessions_changed(drives: &Drives, holds: &[ZoneHolds]) -> Vec<(DriveId, String)> {
    holds
        .iter()
        .flat_map(|h| h.sessions())
        .filter_map(|&(d, session)| {
            let drive = drives.get(d)?;
            (drive.device.session() != session).then(|| (d, drive.name.clone()))
        })
        .collect()
}

/// One group's changes being applied: reads see the index plus the group's earlier changes.
/// A key of the index: column family and key bytes.
type OverlayKey = (&'static str, Vec<u8>);

struct Txn<'a> {
    index: &'a Index,
    drives: &'a Drives,
    base: &'a HashMap<ZoneId, ZoneAccount>,
    /// Every key the group changed, with its final value (None: deleted): the batch is made
    /// from it at the end.
    overlay: HashMap<OverlayKey, Option<Vec<u8>>>,
    /// Every key the overlay has held in the column families read by prefix ([`ORDERED_CFS`]),
    /// in order: a stream's extents, an upload's parts, a bucket's objects in the overlay are
    /// a range of it, not a walk of the whole overlay (which a change deleting thousands of
    /// streams, an upload of 10,000 parts aborted, made quadratic on the committer).
    overlay_ordered: HashMap<&'static str, BTreeSet<Vec<u8>>>,
    zones: HashMap<ZoneId, ZoneAccount>,
    /// How to take back the change being applied, should it fail halfway: earlier overlay
    /// entries (None: the key was not in the overlay) and zone accounts, in the order they
    /// were replaced.
    undo_overlay: Vec<(OverlayKey, Option<Option<Vec<u8>>>)>,
    undo_zones: Vec<(ZoneId, Option<ZoneAccount>)>,
    now: u64,
    /// Why an earlier revocation a revocation adds to could not be read: the batch must not
    /// be written then (it would put the new one in the earlier one's place).
    unread: Option<String>,
}

type Applied = EngineResult<Outcome>;

/// Column families whose overlay keys a group also keeps in order, for reads by prefix.
const ORDERED_CFS: [&str; 4] = [cf::EXTENTS, cf::PARTS, cf::OBJECTS, cf::UPLOAD_KEYS];

impl<'a> Txn<'a> {
    fn new(index: &'a Index, drives: &'a Drives, base: &'a HashMap<ZoneId, ZoneAccount>) -> Self {
        Txn {
            index,
            drives,
            base,
            overlay: HashMap::new(),
            overlay_ordered: HashMap::new(),
            zones: HashMap::new(),
            undo_overlay: Vec::new(),
            undo_zones: Vec::new(),
            now: now_ms(),
            unread: None,
        }
    }

    /// Adds the revocation of the records of sequence number `seq` that `revocation` names
    /// to the batch (to an earlier one of the number, of one record's kind, if any).
    fn revoke(&mut self, seq: u64, revocation: Revocation) {
        let key = revoked::key(seq);
        let earlier = match self.get(cf::META, &key) {
            Ok(earlier) => earlier,
            Err(e) => {
                self.unread.get_or_insert_with(|| {
                    format!("reading the earlier revocation of write {seq} failed: {e}")
                });
                return;
            }
        };
        if let Some(value) = revoked::merged(earlier, revocation) {
            self.put(cf::META, key, value);
        }
    }

    /// Adds what earlier index writes that failed left to do: the `revocations` of failed
    /// writes, and hiding the new copies of GC's and repair's changes (with their strays).
    fn carry(&mut self, revocations: &revoked::Revocations, copies: &[(Change, Vec<ZoneId>)]) {
        for (seq, revocation) in revocations {
            self.revoke(*seq, revocation.clone());
        }
        for (change, strays) in copies {
            if let Err(e) = self.hide_unrecorded(change, strays) {
                tracing::warn!(
                    "hiding the copies of a relocation the index did not take failed: {e}"
                );
            }
        }
    }

    /// Hides the new copies of GC's or repair's `change` (copies in the zones `strays` too),
    /// whose index write failed: an Orphans change (hiding copies) is applied as it is.
    fn hide_unrecorded(&mut self, change: &Change, strays: &[ZoneId]) -> EngineResult<()> {
        match change {
            Change::Orphans(_) => self.apply_or_hide(change, &[], &[]).map(|_| ()),
            _ => self.shadow_moved_copies(change, true, strays),
        }
    }

    /// Applies `change` whole or not at all: one that fails halfway (a read error, a corrupt
    /// entry) leaves nothing of itself in the group's batch or accounts. A client write's
    /// claiming record may also have copies left out of it that may still be on their drives:
    /// `orphans` (their drive failed before its flush) and copies in the zones `strays` (their
    /// appends reported failure, yet may have landed). Whatever holds the name afterwards hides
    /// their zones, as for any orphan: a rebuild or replay would otherwise take such a copy for
    /// the name's current version once the name is deleted and the zones of its other copies
    /// are reset.
    /// [`Self::apply_whole`]; when it fails, the copies a GC, repair or scrub change made are
    /// orphans, hidden like those of a change refused for a failed flush (else a later group
    /// settles their zones, and no replay ever sees them).
    fn apply_or_hide(
        &mut self,
        change: &Change,
        orphans: &[Location],
        strays: &[ZoneId],
    ) -> Applied {
        let result = self.apply_whole(change, orphans, strays);
        if result.is_err()
            && let Err(e) = self.shadow_moved_copies(change, true, strays)
        {
            tracing::warn!("hiding the copies of a relocation that failed failed: {e}");
        }
        result
    }

    fn apply_whole(&mut self, change: &Change, orphans: &[Location], strays: &[ZoneId]) -> Applied {
        self.undo_overlay.clear();
        self.undo_zones.clear();
        let result = (|| {
            let claim = if orphans.is_empty() && strays.is_empty() {
                None
            } else {
                self.claim_of(change)?
            };
            let outcome = self.apply(change)?;
            if let Some(claim) = claim {
                let mut stamps = self.stamps(orphans);
                stamps.extend(self.zone_stamps(strays));
                self.shadow_orphans(&claim, stamps)?;
            } else if !strays.is_empty() {
                // GC's or repair's copies: each record they moved hides the strays' zones.
                self.shadow_moved_copies(change, false, strays)?;
            }
            Ok(outcome)
        })();
        if result.is_err() {
            for (key, previous) in std::mem::take(&mut self.undo_overlay).into_iter().rev() {
                match previous {
                    Some(value) => self.overlay.insert(key, value),
                    None => self.overlay.remove(&key),
                };
            }
            for (zone, previous) in std::mem::take(&mut self.undo_zones).into_iter().rev() {
                match previous {
                    Some(account) => self.zones.insert(zone, account),
                    None => self.zones.remove(&zone),
                };
            }
        }
        result
    }

    /// Records how far `zone` is settled (see [`settled`]), unless the group reset it: the
    /// prefix was measured before the reset.
    fn record_settled(&mut self, zone: ZoneId, prefix: u64) {
        let before = self.base.get(&zone).map_or(0, |a| a.generation);
        let now = self.zones.get(&zone).map_or(before, |a| a.generation);
        if now == before {
            self.put(cf::META, settled::key(zone), settled::encode(now, prefix));
        }
    }

    fn finish(self) -> (WriteBatch, HashMap<ZoneId, ZoneAccount>) {
        let mut batch = WriteBatch::default();
        for ((cf_name, key), value) in &self.overlay {
            let cf = self.index.cf(cf_name);
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        let cf = self.index.cf(cf::ZONES);
        for (zone, account) in &self.zones {
            batch.put_cf(cf, index::zone_key(*zone), account.encode());
        }
        (batch, self.zones)
    }

    fn note_ordered(&mut self, cf_name: &'static str, key: &[u8]) {
        if ORDERED_CFS.contains(&cf_name) {
            self.overlay_ordered
                .entry(cf_name)
                .or_default()
                .insert(key.to_vec());
        }
    }

    /// The overlay's entries of `cf_name` (one of [`ORDERED_CFS`]) whose keys start with
    /// `prefix`, in key order: `Some(value)` written, `None` deleted. (A key taken back by an
    /// undo is in the ordered set but not the overlay: left out.)
    fn overlay_with_prefix<'s>(
        &'s self,
        cf_name: &'static str,
        prefix: &'s [u8],
    ) -> impl Iterator<Item = (&'s Vec<u8>, Option<&'s Vec<u8>>)> + 's {
        self.overlay_ordered
            .get(cf_name)
            .into_iter()
            .flat_map(move |keys| {
                keys.range(prefix.to_vec()..)
                    .take_while(move |key| key.starts_with(prefix))
            })
            .filter_map(move |key| {
                self.overlay
                    .get(&(cf_name, key.clone()))
                    .map(|value| (key, value.as_ref()))
            })
    }

    fn get(&self, cf_name: &'static str, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(&(cf_name, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.index.get_raw(cf_name, key)?)
    }

    fn put(&mut self, cf_name: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.note_ordered(cf_name, &key);
        let previous = self.overlay.insert((cf_name, key.clone()), Some(value));
        self.undo_overlay.push(((cf_name, key), previous));
    }

    fn del(&mut self, cf_name: &'static str, key: Vec<u8>) {
        self.note_ordered(cf_name, &key);
        let previous = self.overlay.insert((cf_name, key.clone()), None);
        self.undo_overlay.push(((cf_name, key), previous));
    }

    fn decode<T>(
        &self,
        cf_name: &'static str,
        key: &[u8],
        decode: fn(&[u8]) -> Result<T, super::codec::DecodeError>,
    ) -> EngineResult<Option<T>> {
        self.get(cf_name, key)?
            .map(|v| {
                decode(&v).map_err(|e| {
                    EngineError::Index(index::IndexError::Corrupt {
                        cf: cf_name,
                        detail: e.0,
                    })
                })
            })
            .transpose()
    }

    fn account(&mut self, zone: ZoneId) -> &mut ZoneAccount {
        let base = self.base;
        self.undo_zones.push((zone, self.zones.get(&zone).copied()));
        self.zones
            .entry(zone)
            .or_insert_with(|| base.get(&zone).copied().unwrap_or_default())
    }

    fn add_valid(&mut self, locations: &[Location]) {
        let now = self.now;
        for l in locations {
            let (Some(zone), bytes) = (self.drives.zone_of(l), self.drives.bytes_of(l)) else {
                continue;
            };
            let a = self.account(zone);
            a.valid_bytes += bytes;
            a.max_indexed_end = a.max_indexed_end.max(l.lba + u64::from(l.blocks));
            a.last_write_ms = now;
        }
    }

    fn sub_valid(&mut self, locations: &[Location]) {
        for l in locations {
            let (Some(zone), bytes) = (self.drives.zone_of(l), self.drives.bytes_of(l)) else {
                continue;
            };
            let a = self.account(zone);
            if a.valid_bytes < bytes {
                tracing::error!(
                    ?zone,
                    "valid-byte accounting would go negative; clamping to zero"
                );
            }
            a.valid_bytes = a.valid_bytes.saturating_sub(bytes);
        }
    }

    fn generation(&mut self, zone: ZoneId) -> u64 {
        self.account(zone).generation
    }

    /// Stamps of `zones`, as they are now.
    fn zone_stamps(&mut self, zones: &[ZoneId]) -> Vec<ZoneStamp> {
        zones
            .iter()
            .map(|&zone| ZoneStamp {
                zone,
                generation: self.generation(zone),
            })
            .collect()
    }

    /// For a GC, repair or scrub change (`Relocate`, `Replicas`): the name of each record it
    /// moves hides the zones `strays` (where copies of its appends that reported failure may
    /// be) and, with `copies`, the zone of the record's new copy (the change is refused: that
    /// copy is an orphan).
    fn shadow_moved_copies(
        &mut self,
        change: &Change,
        copies: bool,
        strays: &[ZoneId],
    ) -> EngineResult<()> {
        let moved: Vec<(&Relocation, Option<Location>)> = match change {
            Change::Relocate(items) => items
                .iter()
                .map(|(what, _, to)| (what, Some(*to)))
                .collect(),
            Change::Replicas(items) => items
                .iter()
                .map(|(what, edit)| match edit {
                    ReplicaEdit::Add(to) | ReplicaEdit::Replace(_, to) => (what, Some(*to)),
                    ReplicaEdit::Remove(_) => (what, None),
                })
                .collect(),
            _ => return Ok(()),
        };
        // Every item is hidden that can be: one whose entry cannot be read does not leave the
        // others' copies unhidden (the first failure is reported).
        let mut first_failure = Ok(());
        for (what, to) in moved {
            let mut stamps = if copies {
                self.stamps(to.as_slice())
            } else {
                Vec::new()
            };
            stamps.extend(self.zone_stamps(strays));
            if let Err(e) = self.shadow_orphans(what, stamps) {
                first_failure = first_failure.and(Err(e));
            }
        }
        first_failure
    }

    /// Stamps of the zones holding these locations, as they are now.
    fn stamps(&mut self, locations: &[Location]) -> Vec<ZoneStamp> {
        let zones: Vec<ZoneId> = locations
            .iter()
            .filter_map(|l| self.drives.zone_of(l))
            .collect();
        zones
            .into_iter()
            .map(|zone| ZoneStamp {
                zone,
                generation: self.generation(zone),
            })
            .collect()
    }

    /// Adds `stamps` to the zones an entry hides (`shadowed`), keeping only those still
    /// meaningful.
    fn hide(&mut self, shadowed: &mut Vec<ZoneStamp>, stamps: Vec<ZoneStamp>) {
        shadowed.extend(stamps);
        *shadowed = self.prune(std::mem::take(shadowed));
    }

    /// Stamps still meaningful (their zone has not been reset since), without duplicates.
    fn prune(&mut self, stamps: Vec<ZoneStamp>) -> Vec<ZoneStamp> {
        let mut kept: Vec<ZoneStamp> = stamps
            .into_iter()
            .filter(|s| self.generation(s.zone) == s.generation)
            .collect();
        kept.sort();
        kept.dedup();
        kept
    }

    /// Every extent of a stream, in the index or added earlier in this group.
    fn stream_extents(&self, stream_id: u64) -> EngineResult<Vec<(Vec<u8>, Extent)>> {
        let mut out: HashMap<Vec<u8>, Extent> = self
            .index
            .stream_extents(stream_id)?
            .into_iter()
            .map(|(offset, e)| (index::extent_key(stream_id, offset).to_vec(), e))
            .collect();
        let prefix = stream_id.to_be_bytes();
        for (key, value) in self.overlay_with_prefix(cf::EXTENTS, &prefix) {
            match value {
                Some(v) => {
                    if let Ok(e) = Extent::decode(v) {
                        out.insert(key.clone(), e);
                    }
                }
                None => {
                    out.remove(key);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn remove_stream(&mut self, stream_id: u64) -> EngineResult<()> {
        for (key, extent) in self.stream_extents(stream_id)? {
            self.sub_valid(&extent.replicas);
            self.del(cf::EXTENTS, key);
        }
        Ok(())
    }

    fn add_extents(&mut self, extents: &[NewExtent]) {
        for e in extents {
            self.add_valid(&e.extent.replicas);
            self.put(
                cf::EXTENTS,
                index::extent_key(e.stream_id, e.offset).to_vec(),
                e.extent.encode(),
            );
        }
    }

    fn bucket(&self, name: &str) -> EngineResult<Option<BucketEntry>> {
        self.decode(cf::BUCKETS, name.as_bytes(), BucketEntry::decode)
    }

    /// Whether bucket `name` exists and can hold a version of sequence number `seq`: one
    /// older than the bucket's creation was written into a bucket of that name deleted since
    /// (everything put in a bucket comes after it is created), as a replayed record may be.
    fn holds_version_of(&self, name: &str, seq: u64) -> EngineResult<bool> {
        Ok(self.bucket(name)?.is_some_and(|b| b.seq < seq))
    }

    fn bucket_is_empty(&self, name: &str) -> EngineResult<bool> {
        let prefix = index::object_key(name, "");
        for cf_name in [cf::OBJECTS, cf::UPLOAD_KEYS] {
            let added = self
                .overlay_with_prefix(cf_name, &prefix)
                .any(|(_, value)| value.is_some());
            if added {
                return Ok(false);
            }
            let deleted_here =
                |key: &[u8]| matches!(self.overlay.get(&(cf_name, key.to_vec())), Some(None));
            if self
                .index
                .any_key_with_prefix(cf_name, &prefix, deleted_here)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn apply(&mut self, change: &Change) -> Applied {
        match change {
            Change::PutObject {
                bucket,
                key,
                meta,
                commit,
                extents,
                condition,
                bucket_seq,
            } => {
                if let Some(seq) = bucket_seq
                    && !is_bucket_of(self.bucket(bucket)?.as_ref(), *seq)
                {
                    return Err(EngineError::NoSuchBucket(bucket.to_string()));
                }
                self.put_object(bucket, key, meta, commit, condition, |txn| {
                    txn.add_extents(extents);
                    Ok(())
                })
            }
            Change::DeleteObject {
                bucket,
                key,
                seq,
                tombstone,
            } => self.delete_object(bucket, key, *seq, tombstone),
            Change::CreateBucket { name, entry } => self.create_bucket(name, entry),
            Change::DeleteBucket {
                name,
                seq,
                tombstone,
            } => self.delete_bucket(name, *seq, tombstone),
            Change::CreateUpload { entry } => {
                if !self.holds_version_of(&entry.bucket, entry.seq)? {
                    return Err(EngineError::NoSuchBucket(entry.bucket.clone()));
                }
                self.add_valid(&entry.location);
                self.put(
                    cf::UPLOADS,
                    entry.upload_id.to_be_bytes().to_vec(),
                    entry.encode(),
                );
                self.put(
                    cf::UPLOAD_KEYS,
                    index::upload_listing_key(&entry.bucket, &entry.key, entry.upload_id),
                    Vec::new(),
                );
                Ok(Outcome::Done)
            }
            Change::PutPart {
                upload_id,
                part,
                extents,
            } => self.put_part(*upload_id, part, extents),
            Change::CompleteUpload {
                upload_id,
                meta,
                commit,
                end,
                parts,
                condition,
            } => self.complete_upload(*upload_id, meta, commit, end, parts, condition),
            Change::AbortUpload {
                upload_id,
                seq,
                end,
            } => {
                let upload = self.load_upload(*upload_id)?;
                self.end_upload(&upload, *seq, end, &HashSet::new())?;
                Ok(Outcome::Done)
            }
            Change::Relocate(items) => {
                for (what, from, to) in items {
                    self.relocate(what, ReplicaEdit::Replace(*from, *to))?;
                }
                Ok(Outcome::Done)
            }
            Change::Replicas(items) => {
                // A record one of whose edits was refused keeps the copies it has: a removal
                // planned on a copy made for it (repair dropping a draining drive's copy once
                // another is made) would leave it short.
                let mut refused: Vec<&Relocation> = Vec::new();
                for (what, edit) in items {
                    if matches!(edit, ReplicaEdit::Remove(_)) && refused.contains(&what) {
                        continue;
                    }
                    if !self.relocate(what, *edit)? {
                        refused.push(what);
                    }
                }
                Ok(Outcome::Done)
            }
            Change::Orphans(items) => {
                for (what, zones) in items {
                    let stamps = self.zone_stamps(zones);
                    self.shadow_orphans(what, stamps)?;
                }
                Ok(Outcome::Done)
            }
            Change::ZoneReset(zone) => {
                let a = self.account(*zone);
                if a.valid_bytes != 0 {
                    tracing::error!(
                        ?zone,
                        valid = a.valid_bytes,
                        "zone reset while the index still counts live bytes in it"
                    );
                }
                a.valid_bytes = 0;
                a.generation += 1;
                a.max_indexed_end = 0;
                self.del(cf::META, settled::key(*zone));
                Ok(Outcome::Done)
            }
            Change::PruneTombstones(items) => {
                for (kind, name, seq) in items {
                    let tkey = index::tombstone_key(*kind, name);
                    if let Some(mut t) =
                        self.decode(cf::TOMBSTONES, &tkey, TombstoneEntry::decode)?
                        && t.seq == *seq
                    {
                        let shadowed = self.prune(std::mem::take(&mut t.shadowed));
                        if shadowed.is_empty() {
                            self.sub_valid(&t.location);
                            self.del(cf::TOMBSTONES, tkey);
                        }
                    }
                }
                Ok(Outcome::Done)
            }
            Change::SetDraining(drive, on) => {
                let mut ids =
                    decode_drive_ids(&self.get(cf::META, DRAINING_KEY)?.unwrap_or_default());
                ids.retain(|d| d != drive);
                if *on {
                    ids.push(*drive);
                }
                self.put(cf::META, DRAINING_KEY.to_vec(), encode_drive_ids(&ids));
                Ok(Outcome::Done)
            }
        }
    }

    /// The object part of PutObject and CompleteMultipartUpload: checks, then replaces.
    fn put_object(
        &mut self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        commit: &[Location],
        condition: &Condition,
        add_data: impl FnOnce(&mut Self) -> EngineResult<()>,
    ) -> Applied {
        if !self.holds_version_of(bucket, meta.seq)? {
            return Err(EngineError::NoSuchBucket(bucket.to_string()));
        }
        let okey = index::object_key(bucket, key);
        let current = self.decode(cf::OBJECTS, &okey, ObjectEntry::decode)?;
        let tkey = index::tombstone_key(TombKind::Object, &okey);
        let tomb = self.decode(cf::TOMBSTONES, &tkey, TombstoneEntry::decode)?;
        let newest = current
            .as_ref()
            .map(|c| c.meta.seq)
            .max(tomb.as_ref().map(|t| t.seq));
        check_condition(bucket, key, current.as_ref().map(|c| &c.meta), condition)?;
        if newest.is_some_and(|n| n > meta.seq) {
            return Ok(Outcome::Superseded);
        }
        let mut shadowed = Vec::new();
        if let Some(cur) = &current {
            shadowed.extend(cur.shadowed.iter().copied());
            shadowed.extend(self.stamps(&cur.commit));
            for s in &cur.meta.streams {
                // A stream the new version uses too is kept (never expected: a completion
                // retried on an upload whose parts the current version already holds).
                if !meta.streams.iter().any(|n| n.stream_id == s.stream_id) {
                    self.remove_stream(s.stream_id)?;
                }
            }
            self.sub_valid(&cur.commit);
        }
        if let Some(t) = &tomb {
            shadowed.extend(t.shadowed.iter().copied());
            self.sub_valid(&t.location);
            self.del(cf::TOMBSTONES, tkey);
        }
        let shadowed = self.prune(shadowed);
        add_data(self)?;
        self.add_valid(commit);
        let entry = ObjectEntry {
            meta: meta.clone(),
            commit: commit.to_vec(),
            shadowed,
        };
        self.put(cf::OBJECTS, okey, entry.encode());
        Ok(Outcome::Done)
    }

    fn delete_object(
        &mut self,
        bucket: &str,
        key: &str,
        seq: u64,
        tombstone: &[Location],
    ) -> Applied {
        let okey = index::object_key(bucket, key);
        let Some(cur) = self.decode(cf::OBJECTS, &okey, ObjectEntry::decode)? else {
            return Ok(Outcome::NotFound);
        };
        if cur.meta.seq > seq {
            return Ok(Outcome::Superseded);
        }
        let mut shadowed = cur.shadowed.clone();
        shadowed.extend(self.stamps(&cur.commit));
        let shadowed = self.prune(shadowed);
        for s in &cur.meta.streams {
            self.remove_stream(s.stream_id)?;
        }
        self.sub_valid(&cur.commit);
        self.del(cf::OBJECTS, okey.clone());
        self.add_valid(tombstone);
        let t = TombstoneEntry {
            seq,
            location: tombstone.to_vec(),
            shadowed,
        };
        self.put(
            cf::TOMBSTONES,
            index::tombstone_key(TombKind::Object, &okey),
            t.encode(),
        );
        Ok(Outcome::Done)
    }

    fn create_bucket(&mut self, name: &str, entry: &BucketEntry) -> Applied {
        if let Some(cur) = self.decode(cf::BUCKETS, name.as_bytes(), BucketEntry::decode)? {
            return Err(if cur.owner == entry.owner {
                EngineError::BucketAlreadyOwnedByYou(name.to_string())
            } else {
                EngineError::BucketAlreadyExists(name.to_string())
            });
        }
        let tkey = index::tombstone_key(TombKind::Bucket, name.as_bytes());
        let mut entry = entry.clone();
        if let Some(t) = self.decode(cf::TOMBSTONES, &tkey, TombstoneEntry::decode)? {
            let shadowed = self.prune(t.shadowed.clone());
            entry.shadowed = shadowed;
            self.sub_valid(&t.location);
            self.del(cf::TOMBSTONES, tkey);
        }
        self.add_valid(&entry.location);
        self.put(cf::BUCKETS, name.as_bytes().to_vec(), entry.encode());
        Ok(Outcome::Done)
    }

    fn delete_bucket(&mut self, name: &str, seq: u64, tombstone: &[Location]) -> Applied {
        let Some(cur) = self.decode(cf::BUCKETS, name.as_bytes(), BucketEntry::decode)? else {
            return Err(EngineError::NoSuchBucket(name.to_string()));
        };
        if !self.bucket_is_empty(name)? {
            return Err(EngineError::BucketNotEmpty(name.to_string()));
        }
        let mut shadowed = cur.shadowed.clone();
        shadowed.extend(self.stamps(&cur.location));
        let shadowed = self.prune(shadowed);
        self.sub_valid(&cur.location);
        self.del(cf::BUCKETS, name.as_bytes().to_vec());
        self.add_valid(tombstone);
        let t = TombstoneEntry {
            seq,
            location: tombstone.to_vec(),
            shadowed,
        };
        self.put(
            cf::TOMBSTONES,
            index::tombstone_key(TombKind::Bucket, name.as_bytes()),
            t.encode(),
        );
        Ok(Outcome::Done)
    }

    fn load_upload(&self, upload_id: u64) -> EngineResult<UploadEntry> {
        self.decode(cf::UPLOADS, &upload_id.to_be_bytes(), UploadEntry::decode)?
            .ok_or_else(|| EngineError::NoSuchUpload(format!("{upload_id:016x}")))
    }

    fn upload_parts(&self, upload_id: u64) -> EngineResult<Vec<PartEntry>> {
        let mut parts: HashMap<u32, PartEntry> = self
            .index
            .parts(upload_id, 0, usize::MAX)?
            .into_iter()
            .map(|p| (p.part_number, p))
            .collect();
        let prefix = upload_id.to_be_bytes();
        for (key, value) in self.overlay_with_prefix(cf::PARTS, &prefix) {
            let Some(number) = key
                .get(8..12)
                .filter(|_| key.len() == 12)
                .and_then(|n| n.try_into().ok())
                .map(u32::from_be_bytes)
            else {
                continue;
            };
            match value {
                Some(v) => {
                    if let Ok(p) = PartEntry::decode(v) {
                        parts.insert(number, p);
                    }
                }
                None => {
                    parts.remove(&number);
                }
            }
        }
        let mut parts: Vec<PartEntry> = parts.into_values().collect();
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    fn put_part(&mut self, upload_id: u64, part: &PartEntry, extents: &[NewExtent]) -> Applied {
        let mut upload = self.load_upload(upload_id)?;
        let pkey = index::part_key(upload_id, part.part_number).to_vec();
        if let Some(old) = self.decode(cf::PARTS, &pkey, PartEntry::decode)? {
            if old.seq > part.seq {
                return Ok(Outcome::Superseded);
            }
            self.remove_stream(old.stream_id)?;
            self.sub_valid(&old.location);
            let mut shadowed = std::mem::take(&mut upload.shadowed);
            shadowed.extend(self.stamps(&old.location));
            upload.shadowed = self.prune(shadowed);
            self.put(
                cf::UPLOADS,
                upload_id.to_be_bytes().to_vec(),
                upload.encode(),
            );
        }
        self.add_extents(extents);
        self.add_valid(&part.location);
        self.put(cf::PARTS, pkey, part.encode());
        Ok(Outcome::Done)
    }

    fn complete_upload(
        &mut self,
        upload_id: u64,
        meta: &ObjectMeta,
        commit: &[Location],
        end: &[Location],
        used: &[(u32, u64)],
        condition: &Condition,
    ) -> Applied {
        let upload = self.load_upload(upload_id)?;
        let parts = self.upload_parts(upload_id)?;
        let streams: HashMap<u32, u64> =
            parts.iter().map(|p| (p.part_number, p.stream_id)).collect();
        for &(number, stream) in used {
            if streams.get(&number) != Some(&stream) {
                return Err(EngineError::InvalidPart(format!(
                    "part {number} changed or vanished"
                )));
            }
        }
        let bucket = upload.bucket.clone();
        let key = upload.key.clone();
        let kept: HashSet<u32> = used.iter().map(|&(n, _)| n).collect();
        // (A bucket with uploads cannot be deleted: it is the one the upload began in.)
        let outcome = self.put_object(&bucket, &key, meta, commit, condition, |_| Ok(()))?;
        // Used parts' data now belongs to the object, unless a newer version won: then it is
        // garbage like the rest.
        let kept = if outcome == Outcome::Done {
            kept
        } else {
            HashSet::new()
        };
        self.end_upload(&upload, meta.seq, end, &kept)?;
        Ok(outcome)
    }

    /// Ends an upload: parts not in `kept` lose their data; the upload is replaced by a
    /// tombstone that hides its records.
    fn end_upload(
        &mut self,
        upload: &UploadEntry,
        seq: u64,
        end: &[Location],
        kept: &HashSet<u32>,
    ) -> EngineResult<()> {
        let mut shadowed = upload.shadowed.clone();
        shadowed.extend(self.stamps(&upload.location));
        for part in self.upload_parts(upload.upload_id)? {
            shadowed.extend(self.stamps(&part.location));
            if !kept.contains(&part.part_number) {
                self.remove_stream(part.stream_id)?;
            }
            self.sub_valid(&part.location);
            self.del(
                cf::PARTS,
                index::part_key(upload.upload_id, part.part_number).to_vec(),
            );
        }
        let shadowed = self.prune(shadowed);
        self.sub_valid(&upload.location);
        self.del(cf::UPLOADS, upload.upload_id.to_be_bytes().to_vec());
        self.del(
            cf::UPLOAD_KEYS,
            index::upload_listing_key(&upload.bucket, &upload.key, upload.upload_id),
        );
        self.add_valid(end);
        let t = TombstoneEntry {
            seq,
            location: end.to_vec(),
            shadowed,
        };
        self.put(
            cf::TOMBSTONES,
            index::tombstone_key(TombKind::Upload, &upload.upload_id.to_be_bytes()),
            t.encode(),
        );
        Ok(())
    }

    /// Applies `edit` to the copies of the entry `what` names, if the entry is still the one
    /// the edit was made for; keeps zone accounting exact.
    fn relocate(&mut self, what: &Relocation, edit: ReplicaEdit) -> EngineResult<bool> {
        let (from, to) = match edit {
            ReplicaEdit::Add(to) => (None, Some(to)),
            ReplicaEdit::Remove(from) => (Some(from), None),
            ReplicaEdit::Replace(from, to) => (Some(from), Some(to)),
        };
        // A named record's old copy stays on its drive until its zone is reset (which may
        // not happen soon: GC can keep a zone): the entry hides that zone meanwhile.
        let from_stamps = from.map(|f| self.stamps(&[f])).unwrap_or_default();
        let moved = match what {
            Relocation::Extent { stream_id, offset } => {
                let key = index::extent_key(*stream_id, *offset).to_vec();
                if let Some(mut e) = self.decode(cf::EXTENTS, &key, Extent::decode)?
                    && edit_copies(&mut e.replicas, edit)
                {
                    self.put(cf::EXTENTS, key, e.encode());
                    true
                } else {
                    false
                }
            }
            Relocation::Commit { bucket, key, seq } => {
                let okey = index::object_key(bucket, key);
                if let Some(mut o) = self.decode(cf::OBJECTS, &okey, ObjectEntry::decode)?
                    && o.meta.seq == *seq
                    && edit_copies(&mut o.commit, edit)
                {
                    self.hide(&mut o.shadowed, from_stamps);
                    self.put(cf::OBJECTS, okey, o.encode());
                    true
                } else {
                    false
                }
            }
            Relocation::Tombstone { kind, name, seq } => {
                let tkey = index::tombstone_key(*kind, name);
                if let Some(mut t) = self.decode(cf::TOMBSTONES, &tkey, TombstoneEntry::decode)?
                    && t.seq == *seq
                    && from.is_none_or(|f| t.location.contains(&f))
                {
                    let shadowed = self.prune(std::mem::take(&mut t.shadowed));
                    if shadowed.is_empty() {
                        // Nothing older is left for it to hide: drop it.
                        self.sub_valid(&t.location);
                        self.del(cf::TOMBSTONES, tkey);
                        return Ok(true);
                    }
                    t.shadowed = shadowed;
                    let changed = edit_copies(&mut t.location, edit);
                    if changed {
                        self.hide(&mut t.shadowed, from_stamps);
                    }
                    self.put(cf::TOMBSTONES, tkey, t.encode());
                    changed
                } else {
                    false
                }
            }
            Relocation::Bucket { name, seq } => {
                if let Some(mut b) =
                    self.decode(cf::BUCKETS, name.as_bytes(), BucketEntry::decode)?
                    && b.seq == *seq
                    && edit_copies(&mut b.location, edit)
                {
                    self.hide(&mut b.shadowed, from_stamps);
                    self.put(cf::BUCKETS, name.as_bytes().to_vec(), b.encode());
                    true
                } else {
                    false
                }
            }
            Relocation::Upload { upload_id } => {
                if let Some(mut u) =
                    self.decode(cf::UPLOADS, &upload_id.to_be_bytes(), UploadEntry::decode)?
                    && edit_copies(&mut u.location, edit)
                {
                    self.hide(&mut u.shadowed, from_stamps);
                    self.put(cf::UPLOADS, upload_id.to_be_bytes().to_vec(), u.encode());
                    true
                } else {
                    false
                }
            }
            Relocation::Part {
                upload_id,
                part_number,
                seq,
            } => {
                let key = index::part_key(*upload_id, *part_number).to_vec();
                if let Some(mut p) = self.decode(cf::PARTS, &key, PartEntry::decode)?
                    && p.seq == *seq
                    && edit_copies(&mut p.location, edit)
                {
                    self.put(cf::PARTS, key, p.encode());
                    // Parts hide nothing themselves: their upload does.
                    let ukey = upload_id.to_be_bytes().to_vec();
                    if let Some(mut u) = self.decode(cf::UPLOADS, &ukey, UploadEntry::decode)? {
                        self.hide(&mut u.shadowed, from_stamps);
                        self.put(cf::UPLOADS, ukey, u.encode());
                    }
                    true
                } else {
                    false
                }
            }
        };
        if moved {
            if let Some(from) = from {
                self.sub_valid(&[from]);
            }
            if let Some(to) = to {
                self.add_valid(&[to]);
            }
        } else if let Some(to) = to {
            let stamps = self.stamps(&[to]);
            self.shadow_orphans(what, stamps)?;
        }
        Ok(moved)
    }

    /// The record a client write makes its claim to a name with (None for other changes).
    fn claim_of(&mut self, change: &Change) -> EngineResult<Option<Relocation>> {
        Ok(match change {
            Change::PutObject {
                bucket, key, meta, ..
            } => Some(Relocation::Commit {
                bucket: bucket.clone(),
                key: key.clone(),
                seq: meta.seq,
            }),
            Change::CreateBucket { name, entry } => Some(Relocation::Bucket {
                name: name.clone(),
                seq: entry.seq,
            }),
            Change::CreateUpload { entry } => Some(Relocation::Upload {
                upload_id: entry.upload_id,
            }),
            Change::PutPart {
                upload_id, part, ..
            } => Some(Relocation::Part {
                upload_id: *upload_id,
                part_number: part.part_number,
                seq: part.seq,
            }),
            // The object the upload becomes (asked before the change: its upload names it).
            Change::CompleteUpload {
                upload_id, meta, ..
            } => self
                .decode(cf::UPLOADS, &upload_id.to_be_bytes(), UploadEntry::decode)?
                .map(|u| Relocation::Commit {
                    bucket: u.bucket,
                    key: u.key,
                    seq: meta.seq,
                }),
            _ => None,
        })
    }

    /// A copy written for a relocation or repair that lost its race (the entry changed
    /// meanwhile) is an orphan: garbage to GC, yet a claim a rebuild would believe (an old
    /// version, a deleted bucket) once whatever hides its name is gone. The entry that now
    /// holds the name, or its tombstone, keeps the orphan's zone (one of `stamps`) among the
    /// zones it hides.
    fn shadow_orphans(&mut self, what: &Relocation, stamps: Vec<ZoneStamp>) -> EngineResult<()> {
        if stamps.is_empty() {
            return Ok(());
        }
        let (entry_cf, entry_key, tomb_kind) = match what {
            Relocation::Extent { .. } | Relocation::Tombstone { .. } => return Ok(()),
            Relocation::Commit { bucket, key, .. } => {
                let okey = index::object_key(bucket, key);
                if let Some(mut o) = self.decode(cf::OBJECTS, &okey, ObjectEntry::decode)? {
                    self.hide(&mut o.shadowed, stamps);
                    self.put(cf::OBJECTS, okey, o.encode());
                    return Ok(());
                }
                (cf::OBJECTS, okey, TombKind::Object)
            }
            Relocation::Bucket { name, .. } => {
                if let Some(mut b) =
                    self.decode(cf::BUCKETS, name.as_bytes(), BucketEntry::decode)?
                {
                    self.hide(&mut b.shadowed, stamps);
                    self.put(cf::BUCKETS, name.as_bytes().to_vec(), b.encode());
                    return Ok(());
                }
                (cf::BUCKETS, name.as_bytes().to_vec(), TombKind::Bucket)
            }
            Relocation::Upload { upload_id } | Relocation::Part { upload_id, .. } => {
                let ukey = upload_id.to_be_bytes().to_vec();
                if let Some(mut u) = self.decode(cf::UPLOADS, &ukey, UploadEntry::decode)? {
                    self.hide(&mut u.shadowed, stamps);
                    self.put(cf::UPLOADS, ukey, u.encode());
                    return Ok(());
                }
                (cf::UPLOADS, ukey, TombKind::Upload)
            }
        };
        let tkey = index::tombstone_key(tomb_kind, &entry_key);
        if let Some(mut t) = self.decode(cf::TOMBSTONES, &tkey, TombstoneEntry::decode)? {
            self.hide(&mut t.shadowed, stamps);
            self.put(cf::TOMBSTONES, tkey, t.encode());
        } else {
            // Nothing holds the name any more (deleted, and its tombstone let go since): the
            // orphan's version is dead everywhere, and is revoked, or a rebuild or replay would
            // take it for the name's current version. Its kind only: a completion's commit
            // record shares its number with the upload's end record, which stays live.
            let (seq, kind) = match what {
                Relocation::Commit { seq, .. } => (*seq, Kind::Commit),
                Relocation::Bucket { seq, .. } => (*seq, Kind::Bucket),
                Relocation::Part { seq, .. } => (*seq, Kind::Part),
                // An upload's records carry its id as their sequence number.
                Relocation::Upload { upload_id } => (*upload_id, Kind::Upload),
                Relocation::Extent { .. } | Relocation::Tombstone { .. } => return Ok(()),
            };
            tracing::debug!(
                cf = entry_cf,
                seq,
                "a copy left out of its entry has nothing to hide its name: its version is revoked"
            );
            let key = super::revoked::key(seq);
            let earlier = self.get(cf::META, &key)?;
            if let Some(value) = revoked::merged(earlier, Revocation::of_kind(kind, stamps)) {
                self.put(cf::META, key, value);
            }
        }
        Ok(())
    }
}

/// Applies `edit` to a record's copies; false if it no longer applies (the copy it replaces or
/// removes is gone, the new copy is already there), or would put two copies of the record on
/// one drive (repair and GC's fallback racing to the same drive): copies on one drive are lost
/// together, so the record would count more copies than it has.
fn edit_copies(locations: &mut Vec<Location>, edit: ReplicaEdit) -> bool {
    let on_a_copys_drive = |to: &Location| locations.iter().any(|l| l.drive == to.drive);
    match edit {
        // (A move within one drive never changes how many copies a drive holds.)
        ReplicaEdit::Replace(from, to) => match locations.iter().position(|l| *l == from) {
            Some(i)
                if !locations.contains(&to)
                    && (to.drive == from.drive || !on_a_copys_drive(&to)) =>
            {
                locations[i] = to;
                true
            }
            _ => false,
        },
        ReplicaEdit::Add(to) => {
            if locations.is_empty() || on_a_copys_drive(&to) {
                return false;
            }
            locations.push(to);
            true
        }
        ReplicaEdit::Remove(from) => match locations.iter().position(|l| *l == from) {
            Some(i) if locations.len() > 1 => {
                locations.remove(i);
                true
            }
            _ => false,
        },
    }
}

/// Whether `bucket` (the entry of a bucket name, if any) is the bucket created with sequence
/// number `seq`, not one created under its name since.
pub(crate) fn is_bucket_of(bucket: Option<&BucketEntry>, seq: u64) -> bool {
    bucket.is_some_and(|b| b.seq == seq)
}

/// Whether `condition` holds for `key` of `bucket` whose current version is `current`.
pub(crate) fn check_condition(
    bucket: &str,
    key: &str,
    current: Option<&ObjectMeta>,
    condition: &Condition,
) -> EngineResult<()> {
    match condition {
        Condition::IfNoneMatchAny if current.is_some() => {
            Err(EngineError::PreconditionFailed("If-None-Match"))
        }
        Condition::IfMatch(_) | Condition::IfExists if current.is_none() => {
            Err(EngineError::NoSuchKey {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })
        }
        Condition::IfMatch(etag) if current.is_some_and(|c| &c.etag != etag) => {
            Err(EngineError::PreconditionFailed("If-Match"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::drives::Drive;

    fn at(lba: u64) -> Location {
        Location {
            drive: 0,
            lba,
            blocks: 1,
        }
    }

    /// Repair's or GC's copies on a drive whose flush failed are split off with everything
    /// else about their records (a drained copy's removal counts on the new copy); the other
    /// records' edits stay to be applied.
    #[test]
    fn copies_on_a_doubtful_drive_are_split_off_with_their_records_other_edits() {
        let on = |drive: DriveId, lba: u64| Location {
            drive,
            lba,
            blocks: 1,
        };
        let record = |stream_id| Relocation::Extent {
            stream_id,
            offset: 0,
        };
        let mut change = Change::Replicas(vec![
            (record(1), ReplicaEdit::Add(on(1, 5))),
            (record(1), ReplicaEdit::Remove(on(3, 5))),
            (record(2), ReplicaEdit::Add(on(2, 7))),
            (record(3), ReplicaEdit::Replace(on(0, 1), on(1, 9))),
        ]);
        let doubtful = BTreeSet::from([1]);
        let Some(Change::Replicas(out)) = change.split_off_copies_on(&doubtful) else {
            panic!("nothing split off");
        };
        let streams = |items: &[(Relocation, ReplicaEdit)]| {
            items
                .iter()
                .map(|(what, _)| match what {
                    Relocation::Extent { stream_id, .. } => *stream_id,
                    _ => unreachable!(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(streams(&out), [1, 1, 3]);
        let Change::Replicas(kept) = &change else {
            unreachable!()
        };
        assert_eq!(streams(kept), [2]);
        assert!(!change.has_no_moves());
        assert!(change.split_off_copies_on(&doubtful).is_none());
        let mut moved = Change::Relocate(vec![(record(4), on(1, 1), on(1, 80))]);
        assert!(moved.split_off_copies_on(&doubtful).is_some());
        assert!(moved.has_no_moves());
    }

    /// A group goes on without a slow drive only when each client change keeps a write quorum
    /// of copies of every record without it, and no GC or repair change moves copies to it.
    #[test]
    fn a_change_does_without_a_drive_only_with_a_quorum_of_copies_left() {
        let on = |drive: DriveId| Location {
            drive,
            lba: 8,
            blocks: 1,
        };
        let delete = |copies: Vec<Location>| Change::DeleteObject {
            bucket: "b".into(),
            key: "k".into(),
            seq: 7,
            tombstone: copies,
        };
        let three = delete(vec![on(0), on(1), on(2)]);
        assert!(three.can_do_without(&BTreeSet::from([2]), 2));
        assert!(!three.can_do_without(&BTreeSet::from([1, 2]), 2));
        assert!(!three.can_do_without(&BTreeSet::from([2]), 3));
        // Not one of its drives: nothing to do without.
        assert!(delete(vec![on(0)]).can_do_without(&BTreeSet::from([2]), 2));
        let relocation = Relocation::Extent {
            stream_id: 1,
            offset: 0,
        };
        // GC's moves wait for their drive.
        let moved = Change::Relocate(vec![(relocation, on(2), Location { lba: 90, ..on(2) })]);
        assert!(!moved.can_do_without(&BTreeSet::from([2]), 1));
        assert!(moved.can_do_without(&BTreeSet::from([0]), 1));
    }

    #[test]
    fn an_edit_never_puts_two_copies_of_a_record_on_one_drive() {
        let on = |drive: DriveId, lba: u64| Location {
            drive,
            lba,
            blocks: 1,
        };
        let mut copies = vec![on(0, 10), on(1, 10)];
        assert!(!edit_copies(&mut copies, ReplicaEdit::Add(on(1, 99))));
        assert!(!edit_copies(
            &mut copies,
            ReplicaEdit::Replace(on(0, 10), on(1, 99))
        ));
        assert_eq!(copies, vec![on(0, 10), on(1, 10)]);
        // A move within the drive (GC), to another drive (drain), a new copy (repair).
        assert!(edit_copies(
            &mut copies,
            ReplicaEdit::Replace(on(0, 10), on(0, 50))
        ));
        assert!(edit_copies(
            &mut copies,
            ReplicaEdit::Replace(on(0, 50), on(2, 50))
        ));
        assert!(edit_copies(&mut copies, ReplicaEdit::Add(on(0, 60))));
        assert_eq!(copies, vec![on(2, 50), on(1, 10), on(0, 60)]);
        assert!(edit_copies(&mut copies, ReplicaEdit::Remove(on(1, 10))));
        assert!(!edit_copies(&mut copies, ReplicaEdit::Remove(on(1, 10))));
    }

    /// One emulated drive (4 zones of 1 MiB) and an index, under `dir`.
    fn one_drive(dir: &std::path::Path) -> (Drives, Index) {
        let drive =
            zns::EmulatedZns::create(&dir.join("d"), zns::Geometry::new(4, 1 << 20)).unwrap();
        let drives = Drives::new(vec![Arc::new(Drive::new(0, "d".into(), Arc::new(drive)))]);
        (drives, Index::open(&dir.join("index")).unwrap())
    }

    /// A record whose new copy is refused (its drive took another copy of it meanwhile, as
    /// scrub may) keeps the copy repair meant to drop once the new one was made: the removal
    /// planned on it is not applied alone.
    #[test]
    fn a_removal_planned_on_a_refused_copy_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let drives = Drives::new(
            (0..5u16)
                .map(|i| {
                    let drive = zns::EmulatedZns::create(
                        &dir.path().join(format!("d{i}")),
                        zns::Geometry::new(4, 1 << 20),
                    )
                    .unwrap();
                    Arc::new(Drive::new(i, format!("d{i}"), Arc::new(drive)))
                })
                .collect(),
        );
        let index = Index::open(&dir.path().join("index")).unwrap();
        let on = |drive: DriveId| Location {
            drive,
            lba: 8,
            blocks: 1,
        };
        // Copies on drives 0, 4 (scrub's, made meanwhile), 2 and 3 (drained).
        let copies = vec![on(0), on(4), on(2), on(3)];
        let key = index::extent_key(1, 0).to_vec();
        let mut batch = WriteBatch::default();
        let extent = Extent {
            length: 100,
            replicas: copies.clone(),
        };
        batch.put_cf(index.cf(cf::EXTENTS), &key, extent.encode());
        index.write(batch, false).unwrap();
        let base = HashMap::new();
        let mut txn = Txn::new(&index, &drives, &base);
        let record = Relocation::Extent {
            stream_id: 1,
            offset: 0,
        };
        let repair = Change::Replicas(vec![
            (
                record.clone(),
                ReplicaEdit::Replace(on(2), Location { lba: 40, ..on(4) }),
            ),
            (record, ReplicaEdit::Remove(on(3))),
        ]);
        txn.apply_whole(&repair, &[], &[]).unwrap();
        let now = txn
            .decode(cf::EXTENTS, &key, Extent::decode)
            .unwrap()
            .unwrap();
        assert_eq!(now.replicas, copies);
    }

    /// A repair copy made for a name that nothing holds any more (deleted meanwhile, and its
    /// tombstone let go) is revoked: its version would otherwise come back in a rebuild.
    #[test]
    fn a_copy_of_a_version_nothing_holds_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (drives, index) = one_drive(dir.path());
        let base = HashMap::new();
        let mut txn = Txn::new(&index, &drives, &base);
        let copy = Change::Replicas(vec![(
            Relocation::Commit {
                bucket: "b".into(),
                key: "gone".into(),
                seq: 42,
            },
            ReplicaEdit::Add(at(7)),
        )]);
        txn.apply_whole(&copy, &[], &[]).unwrap();
        let revoked = txn
            .overlay
            .get(&(cf::META, super::super::revoked::key(42)))
            .cloned()
            .flatten()
            .expect("the version is revoked");
        let revocation = Revocation::decode(&revoked).unwrap();
        assert_eq!(revocation.zones.len(), 1);
        assert_eq!(revocation.zones[0].zone, drives.zone_of(&at(7)).unwrap());
        // The commit record only: an upload's end record that shares the number stays live.
        assert_eq!(revocation.kinds, Some(vec![Kind::Commit]));
    }

    /// A GC change that fails to apply (here an undecodable entry among its moves) leaves its
    /// new copies orphans, and they are hidden as a refused change's are: the version of one
    /// whose name nothing holds is revoked.
    #[test]
    fn the_copies_of_a_relocation_that_fails_to_apply_are_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let (drives, index) = one_drive(dir.path());
        let mut batch = WriteBatch::default();
        batch.put_cf(
            index.cf(cf::EXTENTS),
            index::extent_key(2, 0),
            b"not an extent",
        );
        index.write(batch, false).unwrap();
        let base = HashMap::new();
        let mut txn = Txn::new(&index, &drives, &base);
        let relocate = Change::Relocate(vec![
            (
                Relocation::Commit {
                    bucket: "b".into(),
                    key: "gone".into(),
                    seq: 42,
                },
                at(0),
                at(7),
            ),
            (
                Relocation::Extent {
                    stream_id: 2,
                    offset: 0,
                },
                at(1),
                at(257),
            ),
        ]);
        assert!(txn.apply_or_hide(&relocate, &[], &[]).is_err());
        let revoked = txn
            .overlay
            .get(&(cf::META, super::super::revoked::key(42)))
            .cloned()
            .flatten()
            .expect("the moved version is revoked");
        let revocation = Revocation::decode(&revoked).unwrap();
        assert_eq!(revocation.zones[0].zone, drives.zone_of(&at(7)).unwrap());
    }

    /// A version older than its bucket (a replayed record of a bucket of that name deleted
    /// since, the name created again) does not land in the bucket there is now.
    #[test]
    fn a_version_older_than_its_bucket_is_not_put_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let (drives, index) = one_drive(dir.path());
        let bucket = BucketEntry {
            seq: 100,
            owner: "bob".into(),
            created_ms: 0,
            location: vec![at(1)],
            shadowed: Vec::new(),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(index.cf(cf::BUCKETS), b"b", bucket.encode());
        index.write(batch, false).unwrap();
        let base = HashMap::new();
        let mut txn = Txn::new(&index, &drives, &base);
        let put = |seq: u64| Change::PutObject {
            bucket: "b".into(),
            key: "k".into(),
            meta: ObjectMeta {
                seq,
                ..ObjectMeta::default()
            },
            commit: vec![at(seq)],
            extents: Vec::new(),
            condition: Condition::None,
            bucket_seq: None,
        };
        let older = txn.apply_whole(&put(50), &[], &[]);
        assert!(
            matches!(older, Err(EngineError::NoSuchBucket(_))),
            "{older:?}"
        );
        txn.apply_whole(&put(150), &[], &[]).unwrap();
        let upload = |seq: u64| Change::CreateUpload {
            entry: UploadEntry {
                upload_id: seq,
                seq,
                bucket: "b".into(),
                key: "u".into(),
                template: ObjectMeta::default(),
                location: vec![at(seq)],
                shadowed: Vec::new(),
            },
        };
        let older = txn.apply_whole(&upload(60), &[], &[]);
        assert!(
            matches!(older, Err(EngineError::NoSuchBucket(_))),
            "{older:?}"
        );
        txn.apply_whole(&upload(160), &[], &[]).unwrap();
    }

    /// A change that fails halfway (here a relocation whose second entry is unreadable)
    /// leaves nothing of itself in the group: neither the first entry's new location nor its
    /// zone accounting.
    #[test]
    fn a_change_that_fails_halfway_leaves_nothing_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (drives, index) = one_drive(dir.path());
        let mut batch = WriteBatch::default();
        let whole = Extent {
            length: 4096,
            replicas: vec![at(0)],
        };
        batch.put_cf(
            index.cf(cf::EXTENTS),
            index::extent_key(1, 0),
            whole.encode(),
        );
        batch.put_cf(
            index.cf(cf::EXTENTS),
            index::extent_key(2, 0),
            b"not an extent",
        );
        index.write(batch, false).unwrap();
        let base = HashMap::new();
        let mut txn = Txn::new(&index, &drives, &base);
        let relocate = Change::Relocate(vec![
            (
                Relocation::Extent {
                    stream_id: 1,
                    offset: 0,
                },
                at(0),
                at(256),
            ),
            (
                Relocation::Extent {
                    stream_id: 2,
                    offset: 0,
                },
                at(1),
                at(257),
            ),
        ]);
        assert!(txn.apply_whole(&relocate, &[], &[]).is_err());
        assert!(txn.overlay.is_empty(), "{:?}", txn.overlay);
        assert!(
            txn.zones.values().all(|a| a.valid_bytes == 0),
            "{:?}",
            txn.zones
        );
        // The same first relocation alone applies.
        let alone = Change::Relocate(vec![(
            Relocation::Extent {
                stream_id: 1,
                offset: 0,
            },
            at(0),
            at(256),
        )]);
        txn.apply_whole(&alone, &[], &[]).unwrap();
        assert_eq!(txn.overlay.len(), 1);
    }
}
