//! Rebuilding the whole index from the zones alone: every record is read and its CRC checked;
//! for each bucket, key, upload and part the record with the highest sequence number wins
//! (tombstones included), and data records are matched to the streams the winners use. Also the
//! canonical dump used to compare a rebuilt index with a live one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use rocksdb::WriteBatch;
use zns::ZoneState;

use super::DriveSpec;
use super::drives::Drives;
use super::error::{EngineError, EngineResult};
use super::index::{self, Index, TombKind, cf};
use super::model::{
    BucketEntry, Extent, Location, ObjectEntry, ObjectMeta, PartEntry, TombstoneEntry, UploadEntry,
    ZoneAccount, ZoneId, ZoneStamp,
};
use super::record::{self, Kind, RecordError, Replaced};
use super::registry::register_drives;

mod scratch;

use scratch::{Group, Scratch, Space};

/// Where, inside the index being built, the scan keeps what it found.
const SCRATCH_DIR: &str = "rebuild-scratch";

/// What a rebuild found.
#[derive(Debug, Default, Clone)]
pub struct RebuildReport {
    /// Records read and verified.
    pub records: u64,
    /// Records whose CRC did not match (skipped).
    pub damaged: u64,
    /// Buckets in the rebuilt index.
    pub buckets: u64,
    /// Objects in the rebuilt index.
    pub objects: u64,
    /// Objects skipped because some of their data is missing or damaged.
    pub incomplete_objects: u64,
    /// Multipart uploads in progress.
    pub uploads: u64,
    /// Drives left out because they could not be reached (see
    /// [`rebuild_keeping_ids`]).
    pub left_out: Vec<String>,
    /// Records of failed writes passed over (see [`super::revoked`]).
    pub revoked: u64,
}

/// How far ahead of every sequence number the scan saw the rebuilt index starts when drives
/// were left out: their records may carry later numbers, and no new write may ever look
/// older than them (a later rebuild that sees those records again must still let the new
/// writes win).
const LEFT_OUT_SEQ_MARGIN: u64 = 1 << 40;

/// One physical record found in a zone.
#[derive(Debug, Clone)]
pub(super) struct Found {
    /// Its header.
    pub(super) header: record::Header,
    /// Where it is.
    pub(super) location: Location,
    /// Its payload (empty for data records: only their length matters here).
    pub(super) payload: Vec<u8>,
    /// Payload length.
    pub(super) length: u32,
}

/// One version of a logical record: its copies, the payload of one copy, its kind.
type Version = (Vec<Location>, Vec<u8>, Kind);

/// The best copy of a data record on one drive: write_seq, location, payload length.
type DataCopy = (u64, Location, u32);

/// The copies of one logical record (same kind, identity and sequence number).
#[derive(Debug, Clone, Default)]
struct Versions {
    by_seq: BTreeMap<u64, Version>,
    /// The write_seq of the copy kept per version and drive: a record GC relocated on its
    /// drive is there twice until the old zone is reset, and only the newer copy is the one
    /// the index names.
    write_seqs: HashMap<(u64, u16), u64>,
    /// The older copies so passed over: not named, but hidden (their zones are among those a
    /// restored entry or tombstone hides, as a live relocation leaves them).
    displaced: Vec<Location>,
    /// Copies made in place of another drive's (see the record's `replaces`): version, the
    /// drive replaced, and when (a copy there written before is the one replaced).
    replacements: Vec<(u64, Replaced)>,
}

/// Versions of a name whose payloads a rebuild keeps: the newest may lack its data (a version
/// that was never acknowledged, whose data GC already took), and then an older one is restored.
const PAYLOADS_KEPT: usize = 16;

impl Versions {
    /// Adds a copy of version `seq`, made in place of drive `replaces`' copy if it says so.
    /// Copies come in ascending `seq` order; only the newest [`PAYLOADS_KEPT`] versions'
    /// payloads are kept. [`Versions::drop_replaced`] once all are added.
    fn add(
        &mut self,
        seq: u64,
        location: Location,
        write_seq: u64,
        replaces: Option<Replaced>,
        payload: &[u8],
        kind: Kind,
    ) {
        if let Some(replaced) = replaces {
            self.replacements.push((seq, replaced));
        }
        if !self.by_seq.contains_key(&seq)
            && let Some((_, version)) = self.by_seq.iter_mut().rev().nth(PAYLOADS_KEPT - 1)
        {
            version.1 = Vec::new();
        }
        let entry = self
            .by_seq
            .entry(seq)
            .or_insert_with(|| (Vec::new(), payload.to_vec(), kind));
        match self.write_seqs.get(&(seq, location.drive)) {
            Some(&kept) if kept >= write_seq => {
                if !entry.0.contains(&location) {
                    self.displaced.push(location);
                }
            }
            Some(_) => {
                self.displaced
                    .extend(entry.0.iter().filter(|l| l.drive == location.drive));
                entry.0.retain(|l| l.drive != location.drive);
                entry.0.push(location);
                self.write_seqs.insert((seq, location.drive), write_seq);
            }
            None => {
                entry.0.push(location);
                self.write_seqs.insert((seq, location.drive), write_seq);
            }
        }
    }

    /// Drops each copy that a copy made on another drive replaced (it is passed over, as the
    /// live index left it when the replacement was made).
    fn drop_replaced(&mut self) {
        for (seq, Replaced { drive, at }) in std::mem::take(&mut self.replacements) {
            if self.write_seqs.get(&(seq, drive)).is_some_and(|&w| w < at)
                && let Some(version) = self.by_seq.get_mut(&seq)
            {
                self.displaced
                    .extend(version.0.iter().filter(|l| l.drive == drive));
                version.0.retain(|l| l.drive != drive);
                self.write_seqs.remove(&(seq, drive));
            }
        }
    }

    fn newest(&self) -> Option<(u64, &Version)> {
        self.newest_first().next()
    }

    /// Versions from the newest.
    fn newest_first(&self) -> impl Iterator<Item = (u64, &Version)> {
        self.by_seq.iter().rev().map(|(s, v)| (*s, v))
    }

    /// Stamps (generation 0: a fresh index) of every copy older than `seq`.
    fn older_stamps(&self, seq: u64, drives: &Drives) -> Vec<ZoneStamp> {
        self.stamps_where(drives, |s| s < seq)
    }

    /// Stamps of every copy of a version other than `seq` (older ones, and newer ones that are
    /// not restored).
    fn other_stamps(&self, seq: u64, drives: &Drives) -> Vec<ZoneStamp> {
        self.stamps_where(drives, |s| s != seq)
    }

    /// Stamps of the copies of the versions `wanted` picks, and of every copy passed over for
    /// a newer one on its drive.
    fn stamps_where(&self, drives: &Drives, wanted: impl Fn(u64) -> bool) -> Vec<ZoneStamp> {
        let mut stamps: Vec<ZoneStamp> = self
            .by_seq
            .iter()
            .filter(|(s, _)| wanted(**s))
            .flat_map(|(_, (ls, _, _))| ls.iter())
            .chain(self.displaced.iter())
            .filter_map(|l| drives.zone_of(l))
            .map(|zone| ZoneStamp {
                zone,
                generation: 0,
            })
            .collect();
        stamps.sort();
        stamps.dedup();
        stamps
    }
}

/// Rebuilds an index in `index_dir` (which must not hold one) from the drives. Drive ids are
/// assigned in the order given, which must be the registry order of the index being replaced.
///
/// `revoked` are the sequence numbers of records whose writes failed (see
/// [`super::revoked`]), from the index being replaced if it can still be read: their records
/// are dead, as they are to the live index, and the rebuilt index keeps revoking them.
pub async fn rebuild(
    index_dir: &Path,
    specs: Vec<DriveSpec>,
    revoked: &super::revoked::Revocations,
    progress: impl Fn(&str),
) -> EngineResult<RebuildReport> {
    rebuild_keeping_ids(index_dir, &[], 0, &[], specs, revoked, false, progress).await
}

/// [`rebuild`] of an index that registered the drives `registered` (in id order): each keeps
/// its id, also one removed from the configuration since (the old index's list of failed
/// writes, `revoked`, names drives by those ids), and what records written from
/// `replacement_floor` on say they replaced is trusted (see [`super::registry`]'s
/// `replacement_floor`). Without `registered`, drives are numbered anew, and nothing written
/// before is trusted so. With `leave_out_unreachable`, drives that
/// cannot be reached are left out of the scan (they stay registered), as are the drives named
/// in `left_out` (configured, but not attached: their node down, their directory missing):
/// objects get the copies found on the others, and a left-out drive, when it returns, is
/// replayed for copies only. Safe while fewer drives are left out than the write quorum
/// writes had, since every acknowledged write then has a copy on a drive that was scanned.
#[allow(clippy::too_many_arguments)] // each is a separate decision of the caller's
pub async fn rebuild_keeping_ids(
    index_dir: &Path,
    registered: &[String],
    replacement_floor: u64,
    left_out: &[String],
    specs: Vec<DriveSpec>,
    revoked: &super::revoked::Revocations,
    leave_out_unreachable: bool,
    progress: impl Fn(&str),
) -> EngineResult<RebuildReport> {
    if index_dir.join("CURRENT").exists() {
        return Err(EngineError::InvalidArgument(format!(
            "{} already holds an index",
            index_dir.display()
        )));
    }
    std::fs::create_dir_all(index_dir)
        .map_err(|e| EngineError::Internal(format!("creating {}: {e}", index_dir.display())))?;
    let index = Arc::new(Index::open(index_dir)?);
    if !registered.is_empty() {
        super::registry::seed_registry(&index, registered)?;
    }
    super::registry::vouch_for(&index, left_out)?;
    let drives = register_drives(&index, specs)?;
    // The new index knows each drive by its identity, as the old one did. What every drive
    // given to a rebuild holds is the new index's, also on one unreachable now (replayed for
    // copies when it answers).
    for drive in drives.all() {
        super::registry::accept_first_use(&index, drive)?;
        if drive.device.is_available() {
            super::registry::confirm_identity(&index, drive, true)?;
        }
    }
    let mut report = RebuildReport::default();
    let mut settled_keys = Vec::new();
    // No new write may take the number of a revoked one (its records are passed over), even
    // where nothing of it reached a drive.
    let mut max_seq = revoked.keys().next_back().copied().unwrap_or(0);

    // 1. Read every record of every zone into the scratch store.
    let mut scratch = Scratch::create(&index_dir.join(SCRATCH_DIR))?;
    scratch.trust_replacements_from(if registered.is_empty() {
        u64::MAX
    } else {
        replacement_floor
    });
    let mut left_out_ids = Vec::new();
    for drive in drives.all() {
        if left_out.contains(&drive.name) {
            progress(&format!("leaving out {}: it is not attached", drive.name));
            report.left_out.push(drive.name.clone());
            left_out_ids.push(drive.id);
            continue;
        }
        if drive.removed {
            // Drained and removed: it held nothing live.
            continue;
        }
        if leave_out_unreachable && !drive.device.is_available() {
            progress(&format!("leaving out {}: it cannot be reached", drive.name));
            report.left_out.push(drive.name.clone());
            left_out_ids.push(drive.id);
            continue;
        }
        // What the drive reports must be durable before the index names it: a remote target
        // keeps (and reports) what a killed server appended but never flushed, and would lose
        // it at its own restart.
        drive.device.flush().await.map_err(|e| {
            EngineError::Unavailable(format!(
                "flushing {} before reading it failed: {e}",
                drive.name
            ))
        })?;
        let zones = drive.report_all_zones().await?;
        for (i, z) in zones.zones.iter().enumerate() {
            if matches!(z.state, ZoneState::Empty | ZoneState::Offline) {
                continue;
            }
            let end_blocks = drive.written_blocks(i as u32, z)?;
            progress(&format!(
                "scanning {} zone {i} ({} KiB)",
                drive.name,
                end_blocks * drive.block_size() / 1024
            ));
            // Every record of the zone is in the new index or dead: nothing to replay at start.
            settled_keys.push((
                ZoneId {
                    drive: drive.id,
                    zone: i as u32,
                },
                end_blocks,
            ));
            for f in scan_zone(
                drive,
                drive.geometry.zone_start(i as u32),
                end_blocks,
                &mut report,
            )
            .await?
            {
                max_seq = max_seq
                    .max(f.header.seq)
                    .max(f.header.write_seq)
                    .max(f.header.id);
                if super::revoked::covers(revoked, f.header.seq, f.header.kind) {
                    report.revoked += 1;
                    continue;
                }
                scratch.add(&f)?;
            }
        }
    }
    scratch.flush()?;
    super::registry::set_replacement_floor(
        &index,
        if registered.is_empty() {
            max_seq.saturating_add(1)
        } else {
            replacement_floor
        },
    )?;

    // 2. Resolve the winners into index entries, one name at a time.
    progress("resolving the newest version of every name");
    let resolved = resolve(&index, &drives, &scratch, &mut report);
    drop(scratch);
    let accounts = resolved?;
    let mut batch = WriteBatch::default();
    for (zone, account) in &accounts {
        batch.put_cf(
            index.cf(cf::ZONES),
            index::zone_key(*zone),
            account.encode(),
        );
    }
    // Kept revoking what the old index revoked, in zones of this index's generations.
    for (&seq, revocation) in revoked {
        let zones = super::revoked::stamps(revocation.zones.iter().map(|z| z.zone), |zone| {
            accounts.get(&zone).map_or(0, |a| a.generation)
        });
        let revocation = super::revoked::Revocation {
            zones,
            kinds: revocation.kinds.clone(),
        };
        batch.put_cf(
            index.cf(cf::META),
            super::revoked::key(seq),
            revocation.encode(),
        );
    }
    for (zone, blocks) in settled_keys {
        let generation = accounts.get(&zone).map_or(0, |a| a.generation);
        batch.put_cf(
            index.cf(cf::META),
            super::settled::key(zone),
            super::settled::encode(generation, blocks),
        );
    }
    // A left-out drive's records are older than this index: when it returns, it is replayed
    // for copies only.
    for &drive in &left_out_ids {
        batch.put_cf(index.cf(cf::META), super::replay::left_out_key(drive), []);
    }
    index.write(batch, true)?;
    let margin = if report.left_out.is_empty() {
        0
    } else {
        LEFT_OUT_SEQ_MARGIN
    };
    super::seq::SeqAllocator::open(index.clone(), max_seq.saturating_add(1 + margin))?;
    progress(&format!(
        "rebuilt: {} records ({} damaged), {} buckets, {} objects ({} incomplete), {} uploads",
        report.records,
        report.damaged,
        report.buckets,
        report.objects,
        report.incomplete_objects,
        report.uploads
    ));
    Ok(report)
}

/// Entries gathered before a write to the rebuilt index.
const OUTPUT_BATCH: usize = 4096;

/// Turns the scratch store's groups into index entries, written in batches, and keeps the
/// per-zone accounting of what they reference.
struct Resolver<'a> {
    index: &'a Index,
    drives: &'a Drives,
    scratch: &'a Scratch,
    batch: WriteBatch,
    accounts: HashMap<ZoneId, ZoneAccount>,
    /// Buckets by name, with the sequence number of their newest deletion, or of their current
    /// creation: an object or upload older than that was gone before it (a bucket is deleted
    /// only when empty, and everything put in a bucket comes after it is created).
    deleted_buckets: HashMap<String, u64>,
}

/// Resolves every bucket, object and upload the scan found; returns the zone accounting.
fn resolve(
    index: &Index,
    drives: &Drives,
    scratch: &Scratch,
    report: &mut RebuildReport,
) -> EngineResult<HashMap<ZoneId, ZoneAccount>> {
    let mut r = Resolver {
        index,
        drives,
        scratch,
        batch: WriteBatch::default(),
        accounts: HashMap::new(),
        deleted_buckets: HashMap::new(),
    };
    scratch.for_each_group(Space::Bucket, |g| r.bucket(g, report))?;
    scratch.for_each_group(Space::Object, |g| r.object(g, report))?;
    // The objects are written before the uploads are resolved: an upload is looked up in them.
    index.write(std::mem::take(&mut r.batch), false)?;
    scratch.for_each_group(Space::Upload, |g| r.upload(g, report))?;
    index.write(std::mem::take(&mut r.batch), false)?;
    Ok(r.accounts)
}

impl Resolver<'_> {
    /// Whether the object restored under the upload's name uses one of the upload's parts: a
    /// completion appends the object's commit record, then the upload's end record, and a
    /// crash between the two leaves the upload looking open although its parts are the
    /// object's (restoring both would give two owners to the same data).
    fn completed_into_object(&self, upload_id: u64, g: &Group) -> EngineResult<bool> {
        let Some(object) = self.index.object(&g.bucket, &g.key)? else {
            return Ok(false);
        };
        let used: HashSet<u64> = object.meta.streams.iter().map(|s| s.stream_id).collect();
        let mut completed = false;
        self.scratch.for_each_part(upload_id, |part| {
            if let Some((pseq, (_, payload, _))) = part.versions.newest()
                && let Ok(entry) = PartEntry::from_payload(pseq, payload)
            {
                completed |= used.contains(&entry.stream_id);
            }
            Ok(())
        })?;
        Ok(completed)
    }

    fn count(&mut self, ls: &[Location]) {
        for l in ls {
            if let Some(zone) = self.drives.zone_of(l) {
                let a = self.accounts.entry(zone).or_default();
                a.valid_bytes += self.drives.bytes_of(l);
                a.max_indexed_end = a.max_indexed_end.max(l.lba + u64::from(l.blocks));
                a.last_write_ms = super::commit::now_ms();
            }
        }
    }

    fn put(&mut self, cf_name: &str, key: &[u8], value: &[u8]) -> EngineResult<()> {
        self.batch.put_cf(self.index.cf(cf_name), key, value);
        if self.batch.len() >= OUTPUT_BATCH {
            self.index.write(std::mem::take(&mut self.batch), false)?;
        }
        Ok(())
    }

    /// A deletion that still hides older records on the drives keeps its tombstone.
    fn put_tombstone(
        &mut self,
        kind: TombKind,
        name: &[u8],
        seq: u64,
        locations: &[Location],
        shadowed: Vec<ZoneStamp>,
    ) -> EngineResult<()> {
        let t = TombstoneEntry {
            seq,
            location: sorted(locations),
            shadowed,
        };
        self.count(&t.location);
        self.put(
            cf::TOMBSTONES,
            &index::tombstone_key(kind, name),
            &t.encode(),
        )
    }

    /// Writes the extents of a stream of `length` bytes, which [`Resolver::stream_complete`]
    /// found whole, and counts their copies.
    fn put_stream(&mut self, stream_id: u64, length: u64) -> EngineResult<()> {
        let scratch = self.scratch;
        walk_stream(scratch, stream_id, length, |offset, extent| {
            self.count(&extent.replicas);
            self.put(
                cf::EXTENTS,
                &index::extent_key(stream_id, offset),
                &extent.encode(),
            )
        })
        .map(|_| ())
    }

    /// Whether every piece of a stream of `length` bytes was found.
    fn stream_complete(&self, stream_id: u64, length: u64) -> EngineResult<bool> {
        walk_stream(self.scratch, stream_id, length, |_, _| Ok(()))
    }

    fn bucket(&mut self, g: Group, report: &mut RebuildReport) -> EngineResult<()> {
        if let Some((deleted, _)) = g
            .versions
            .newest_first()
            .find(|(_, v)| v.2 == Kind::BucketDelete)
        {
            self.deleted_buckets
                .insert(String::from_utf8_lossy(&g.name).into_owned(), deleted);
        }
        let Some((seq, (locations, payload, kind))) = g.versions.newest() else {
            return Ok(());
        };
        let shadowed = g.versions.older_stamps(seq, self.drives);
        match kind {
            Kind::Bucket => {
                // What is older than this bucket was in one of its name deleted before.
                self.deleted_buckets
                    .insert(String::from_utf8_lossy(&g.name).into_owned(), seq);
                let Some(mut entry) = readable(BucketEntry::from_payload(seq, payload), &g, report)
                else {
                    return Ok(());
                };
                entry.location = sorted(locations);
                entry.shadowed = shadowed;
                self.count(&entry.location);
                self.put(cf::BUCKETS, &g.name, &entry.encode())?;
                report.buckets += 1;
            }
            _ if !shadowed.is_empty() => {
                self.put_tombstone(TombKind::Bucket, &g.name, seq, locations, shadowed)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn object(&mut self, g: Group, report: &mut RebuildReport) -> EngineResult<()> {
        // The newest version whose data is all there: a newer one without it was never
        // acknowledged (its commit record landed, then the server died or the client went
        // away before the index took it, and GC has since taken its data).
        let mut missing_newer = 0;
        let chosen = g.versions.newest_first().find_map(|(seq, version)| {
            if version.2 != Kind::Commit {
                return Some(Ok((seq, version, None)));
            }
            if version.1.is_empty() {
                // Older than the payloads kept.
                return Some(Ok((seq, version, None)));
            }
            let Ok(meta) = ObjectMeta::decode(&version.1) else {
                missing_newer += 1;
                return None;
            };
            let complete = meta.streams.iter().try_fold(true, |all, s| {
                Ok::<_, EngineError>(all && self.stream_complete(s.stream_id, s.length)?)
            });
            match complete {
                Ok(true) => Some(Ok((seq, version, Some(meta)))),
                Ok(false) => {
                    missing_newer += 1;
                    None
                }
                Err(e) => Some(Err(e)),
            }
        });
        let Some((seq, (locations, payload, kind), meta)) = chosen.transpose()? else {
            tracing::error!(
                bucket = g.bucket,
                key = g.key,
                "object data missing or damaged in every version; not restored"
            );
            report.incomplete_objects += 1;
            return Ok(());
        };
        if missing_newer > 0 {
            tracing::warn!(
                bucket = g.bucket,
                key = g.key,
                seq,
                skipped = missing_newer,
                "newer versions lack their data (never acknowledged); restoring the newest whole one"
            );
        }
        let shadowed = g.versions.other_stamps(seq, self.drives);
        match kind {
            Kind::Commit if self.older_than_bucket_deletion(&g.bucket, seq) => {
                // Its deletion's record is gone, but its bucket's deletion says it was deleted.
                tracing::warn!(
                    bucket = g.bucket,
                    key = g.key,
                    seq,
                    "an object version older than its bucket (deleted, or deleted and created again, since) is not restored"
                );
            }
            Kind::Commit => {
                let Some(meta) = meta.or_else(|| readable(ObjectMeta::decode(payload), &g, report))
                else {
                    report.incomplete_objects += 1;
                    return Ok(());
                };
                for s in &meta.streams {
                    self.put_stream(s.stream_id, s.length)?;
                }
                let entry = ObjectEntry {
                    meta,
                    commit: sorted(locations),
                    shadowed,
                };
                self.count(&entry.commit);
                self.put(cf::OBJECTS, &g.name, &entry.encode())?;
                report.objects += 1;
            }
            _ if !shadowed.is_empty() => {
                self.put_tombstone(TombKind::Object, &g.name, seq, locations, shadowed)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether a record of `bucket` with sequence number `seq` predates the bucket's newest
    /// deletion or its current creation (and so was dead by then).
    fn older_than_bucket_deletion(&self, bucket: &str, seq: u64) -> bool {
        self.deleted_buckets
            .get(bucket)
            .is_some_and(|&deleted| seq < deleted)
    }

    fn upload(&mut self, g: Group, report: &mut RebuildReport) -> EngineResult<()> {
        let Some((seq, (locations, payload, kind))) = g.versions.newest() else {
            return Ok(());
        };
        let upload_id = g
            .name
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| EngineError::Internal("rebuild: an upload name is not an id".into()))?;
        let scratch = self.scratch;
        if *kind != Kind::Upload {
            // Completed or aborted: only a tombstone, if older records still need hiding.
            let mut shadowed = g.versions.older_stamps(seq, self.drives);
            scratch.for_each_part(upload_id, |part| {
                shadowed.extend(part.versions.older_stamps(u64::MAX, self.drives));
                Ok(())
            })?;
            shadowed.sort();
            shadowed.dedup();
            if !shadowed.is_empty() {
                self.put_tombstone(
                    TombKind::Upload,
                    &upload_id.to_be_bytes(),
                    seq,
                    locations,
                    shadowed,
                )?;
            }
            return Ok(());
        }
        let Some(template) = readable(ObjectMeta::decode(payload), &g, report) else {
            return Ok(());
        };
        if self.older_than_bucket_deletion(&g.bucket, seq) {
            tracing::warn!(
                upload_id,
                bucket = g.bucket,
                key = g.key,
                "an upload older than its bucket (deleted, or deleted and created again, since) is not restored"
            );
            return Ok(());
        }
        if self.completed_into_object(upload_id, &g)? {
            tracing::warn!(
                upload_id,
                bucket = g.bucket,
                key = g.key,
                "the upload's completion lacks its end record (the server stopped between the two); the object uses its parts, so the upload is not restored"
            );
            return Ok(());
        }
        let mut shadowed = Vec::new();
        scratch.for_each_part(upload_id, |part| {
            // The part number as the records name it (the last 4 bytes of the part's name).
            let number = part
                .name
                .get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| EngineError::Internal("rebuild: a part name is malformed".into()))?;
            // The newest version whose data is all there, as for objects: a newer one without
            // it was never acknowledged (the part uploaded again, the server stopped before
            // the index took it, and GC has since taken its data).
            let mut chosen = None;
            for (pseq, (plocs, ppayload, _)) in part.versions.newest_first() {
                if ppayload.is_empty() {
                    // Older than the payloads kept.
                    break;
                }
                let Some(entry) = readable(PartEntry::from_payload(pseq, ppayload), &part, report)
                else {
                    continue;
                };
                if self.stream_complete(entry.stream_id, entry.size)? {
                    chosen = Some((pseq, plocs, entry));
                    break;
                }
                tracing::warn!(
                    upload_id,
                    part = number,
                    seq = pseq,
                    "a version of the part lacks its data (never acknowledged); trying an older one"
                );
            }
            let Some((pseq, plocs, mut entry)) = chosen else {
                tracing::error!(upload_id, part = number, "part data missing; not restored");
                return Ok(());
            };
            shadowed.extend(part.versions.other_stamps(pseq, self.drives));
            entry.location = sorted(plocs);
            self.put_stream(entry.stream_id, entry.size)?;
            self.count(&entry.location);
            self.put(
                cf::PARTS,
                &index::part_key(upload_id, number),
                &entry.encode(),
            )
        })?;
        shadowed.sort();
        shadowed.dedup();
        let entry = UploadEntry {
            upload_id,
            seq,
            bucket: g.bucket.clone(),
            key: g.key.clone(),
            template,
            location: sorted(locations),
            shadowed,
        };
        self.count(&entry.location);
        self.put(cf::UPLOADS, &upload_id.to_be_bytes(), &entry.encode())?;
        self.put(
            cf::UPLOAD_KEYS,
            &index::upload_listing_key(&g.bucket, &g.key, upload_id),
            &[],
        )?;
        report.uploads += 1;
        Ok(())
    }
}

/// The decoded payload of a group's newest record; a payload that passed its CRC yet does not
/// decode is reported and skipped (that name is not restored) rather than failing the rebuild.
fn readable<T, E: std::fmt::Display>(
    decoded: Result<T, E>,
    group: &Group,
    report: &mut RebuildReport,
) -> Option<T> {
    match decoded {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!(
                bucket = group.bucket,
                key = group.key,
                "record payload unreadable ({e}); not restored"
            );
            report.damaged += 1;
            None
        }
    }
}

/// Walks the records of a stream of `length` bytes from offset 0, each record leading to the
/// next by its length, calling `emit` with each as an extent (all its copies). False if the
/// chain breaks (a piece missing or empty) or overshoots `length`.
fn walk_stream(
    scratch: &Scratch,
    stream_id: u64,
    length: u64,
    mut emit: impl FnMut(u64, Extent) -> EngineResult<()>,
) -> EngineResult<bool> {
    let mut next = 0u64;
    let mut broken = false;
    scratch.for_each_offset(stream_id, |offset, copies| {
        if next >= length || offset > next {
            // Done, or a gap: nothing further can continue the chain.
            broken = offset > next && next < length;
            return Ok(false);
        }
        if offset < next {
            // A record off the chain (never referenced by this stream's extents).
            return Ok(true);
        }
        let Some(first) = copies.values().next() else {
            return Ok(true);
        };
        if first.2 == 0 {
            broken = true;
            return Ok(false);
        }
        let mut replicas: Vec<Location> = copies.values().map(|c| c.1).collect();
        replicas.sort();
        emit(
            offset,
            Extent {
                length: first.2,
                replicas,
            },
        )?;
        next = next.saturating_add(u64::from(first.2));
        Ok(true)
    })?;
    Ok(!broken && next == length)
}

fn sorted(locations: &[Location]) -> Vec<Location> {
    let mut v = locations.to_vec();
    v.sort();
    v
}

/// Reads every record in the `end_blocks` blocks from `zslba` (a zone's start, or where a
/// record starts in it), verifying each.
pub(super) async fn scan_zone(
    drive: &super::drives::Drive,
    zslba: u64,
    end_blocks: u64,
    report: &mut RebuildReport,
) -> EngineResult<Vec<Found>> {
    let bs = drive.block_size();
    let chunk = ((1u64 << 20) / bs).max(1);
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let mut buf_lba = zslba;
    let mut read_to = 0u64;
    loop {
        loop {
            match record::parse(&buf, bs as usize) {
                Ok(p) => {
                    let blocks = p.padded as u64 / bs;
                    out.push(Found {
                        location: Location {
                            drive: drive.id,
                            lba: buf_lba,
                            blocks: blocks as u32,
                        },
                        payload: if p.header.kind == Kind::Data {
                            Vec::new()
                        } else {
                            buf[p.payload.clone()].to_vec()
                        },
                        length: p.payload.len() as u32,
                        header: p.header,
                    });
                    report.records += 1;
                    let _ = buf.split_to(p.padded);
                    buf_lba += blocks;
                }
                Err(RecordError::Checksum { padded, .. }) if padded <= buf.len() => {
                    tracing::error!(drive = %drive.name, lba = buf_lba, "damaged record skipped");
                    report.damaged += 1;
                    let _ = buf.split_to(padded);
                    buf_lba += padded as u64 / bs;
                }
                // Where no record starts, the zone's records end: zeros are space never
                // written (or lost with a crash); anything else is damage (a record whose magic
                // bytes rotted), and what follows it cannot be found by skipping.
                Err(RecordError::NotARecord) if buf.len() >= bs as usize => {
                    if buf[..bs as usize].iter().any(|&b| b != 0) {
                        tracing::error!(drive = %drive.name, lba = buf_lba, "no record where one should start, rest of zone skipped");
                        report.damaged += 1;
                    }
                    return Ok(out);
                }
                // Where a record with a damaged header ends is unknown: skipping by its length
                // could land inside a payload and take client bytes for records.
                Err(e @ (RecordError::Malformed(_) | RecordError::HeaderChecksum { .. })) => {
                    tracing::error!(drive = %drive.name, lba = buf_lba, "unparseable data, rest of zone skipped: {e}");
                    report.damaged += 1;
                    return Ok(out);
                }
                Err(_) => break,
            }
        }
        if read_to >= end_blocks {
            return Ok(out);
        }
        let n = chunk.min(end_blocks - read_to);
        let bytes = drive
            .device
            .read(zslba + read_to, n as u32)
            .await
            .map_err(|e| drive.error(e))?;
        read_to += n;
        buf.extend_from_slice(&bytes);
    }
}

/// A canonical, sorted text form of what an index says about buckets, objects (with their
/// extents and copies), uploads and parts. Two indexes describing the same store give the same
/// dump, whatever their internal bookkeeping (tombstones, zone accounting).
pub fn canonical_dump(index: &Index) -> EngineResult<Vec<String>> {
    let mut lines = Vec::new();
    for (name, b) in index.buckets()? {
        lines.push(format!(
            "bucket {name} owner={} created={} at={:?}",
            b.owner,
            b.created_ms,
            sorted(&b.location)
        ));
    }
    for (key, o) in index.all_objects()? {
        let key = String::from_utf8_lossy(&key).replace('\0', "/");
        lines.push(format!(
            "object {key} {:?} commit={:?}",
            o.meta,
            sorted(&o.commit)
        ));
        for s in &o.meta.streams {
            for (offset, e) in index.stream_extents(s.stream_id)? {
                lines.push(format!(
                    "  extent {}+{offset} len={} at={:?}",
                    s.stream_id,
                    e.length,
                    sorted(&e.replicas)
                ));
            }
        }
    }
    for (k, v) in index.dump(cf::UPLOADS)? {
        let u = UploadEntry::decode(&v).map_err(|e| EngineError::Corrupt(e.0))?;
        lines.push(format!(
            "upload {:?} {}/{} {:?} at={:?}",
            k,
            u.bucket,
            u.key,
            u.template,
            sorted(&u.location)
        ));
        for p in index.parts(u.upload_id, 0, usize::MAX)? {
            lines.push(format!(
                "  part {} etag={} size={} stream={} at={:?}",
                p.part_number,
                p.etag,
                p.size,
                p.stream_id,
                sorted(&p.location)
            ));
            for (offset, e) in index.stream_extents(p.stream_id)? {
                lines.push(format!(
                    "    extent {}+{offset} len={} at={:?}",
                    p.stream_id,
                    e.length,
                    sorted(&e.replicas)
                ));
            }
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::Header;

    /// A data record of stream 9 at `offset` of `length` bytes on drive 0.
    fn piece(offset: u64, length: u32, lba: u64) -> Found {
        Found {
            header: Header {
                kind: Kind::Data,
                seq: 1,
                write_seq: 1,
                id: 9,
                offset,
                bucket: String::new(),
                key: String::new(),
                replaces: None,
            },
            location: Location {
                drive: 0,
                lba,
                blocks: 1,
            },
            payload: Vec::new(),
            length,
        }
    }

    fn walk(pieces: &[(u64, u32)], length: u64) -> (bool, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = Scratch::create(&dir.path().join("s")).unwrap();
        for (i, &(offset, len)) in pieces.iter().enumerate() {
            scratch.add(&piece(offset, len, i as u64)).unwrap();
        }
        scratch.flush().unwrap();
        let mut emitted = Vec::new();
        let complete = walk_stream(&scratch, 9, length, |offset, _| {
            emitted.push(offset);
            Ok(())
        })
        .unwrap();
        (complete, emitted)
    }

    /// A commit record of `key` in bucket `b` at `seq` for stream `stream` of 100 bytes.
    fn commit(seq: u64, stream: u64, lba: u64) -> Found {
        let meta = ObjectMeta {
            seq,
            size: 100,
            streams: vec![super::super::model::StreamRef {
                stream_id: stream,
                length: 100,
            }],
            ..ObjectMeta::default()
        };
        Found {
            header: Header {
                kind: Kind::Commit,
                seq,
                write_seq: seq,
                id: seq,
                offset: 0,
                bucket: "b".into(),
                key: "k".into(),
                replaces: None,
            },
            location: Location {
                drive: 0,
                lba,
                blocks: 1,
            },
            payload: meta.encode(),
            length: 0,
        }
    }

    #[test]
    fn a_newest_version_without_its_data_gives_way_to_the_newest_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let drive = zns::EmulatedZns::create(&dir.path().join("d"), zns::Geometry::new(4, 1 << 20))
            .unwrap();
        let drives = Drives::new(vec![Arc::new(super::super::drives::Drive::new(
            0,
            "d".into(),
            Arc::new(drive),
        ))]);
        let index = Index::open(&dir.path().join("index")).unwrap();
        let mut scratch = Scratch::create(&dir.path().join("s")).unwrap();
        let mut bucket = commit(1, 0, 0);
        bucket.header.kind = Kind::Bucket;
        bucket.header.key = String::new();
        bucket.payload = BucketEntry {
            seq: 1,
            owner: "alice".into(),
            created_ms: 0,
            location: Vec::new(),
            shadowed: Vec::new(),
        }
        .payload();
        scratch.add(&bucket).unwrap();
        // Version 5 is whole (stream 9); version 8's stream 77 is gone: it was never
        // acknowledged, and GC took its data.
        scratch.add(&piece(0, 100, 3)).unwrap();
        scratch.add(&commit(5, 9, 4)).unwrap();
        scratch.add(&commit(8, 77, 5)).unwrap();
        scratch.flush().unwrap();
        let mut report = RebuildReport::default();
        resolve(&index, &drives, &scratch, &mut report).unwrap();
        let restored = index
            .object("b", "k")
            .unwrap()
            .expect("an object is restored");
        assert_eq!(restored.meta.seq, 5);
        assert_eq!((report.objects, report.incomplete_objects), (1, 0));
        // With no whole version at all, nothing is restored.
        let index = Index::open(&dir.path().join("index2")).unwrap();
        let mut scratch = Scratch::create(&dir.path().join("s2")).unwrap();
        scratch.add(&bucket).unwrap();
        scratch.add(&commit(8, 77, 5)).unwrap();
        scratch.flush().unwrap();
        let mut report = RebuildReport::default();
        resolve(&index, &drives, &scratch, &mut report).unwrap();
        assert!(index.object("b", "k").unwrap().is_none());
        assert_eq!(report.incomplete_objects, 1);
    }

    #[test]
    fn a_stream_is_complete_only_when_its_records_chain_to_its_length() {
        assert_eq!(walk(&[(0, 10), (10, 5)], 15), (true, vec![0, 10]));
        assert!(!walk(&[(0, 10), (12, 3)], 15).0, "a gap");
        assert!(!walk(&[(0, 10)], 15).0, "the end is missing");
        assert!(!walk(&[(0, 10), (10, 10)], 15).0, "overshoots the length");
        assert_eq!(
            walk(&[(0, 0)], 5),
            (false, vec![]),
            "an empty record cannot advance"
        );
        assert_eq!(walk(&[], 0), (true, vec![]), "an empty stream");
        assert_eq!(
            walk(&[(0, 8), (4, 4), (8, 2)], 10),
            (true, vec![0, 8]),
            "a record off the chain is ignored"
        );
    }
}
