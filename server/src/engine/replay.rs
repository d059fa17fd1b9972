//! Replaying the tail of the log at start. A crash can leave records on the drives whose index
//! change never became durable: a PUT's commit record flushed just before the server died, a
//! deletion's tombstone, a GC move or a repair copy not yet recorded. A rebuild from the zones
//! would take them (the newest version of a name wins), so the index takes them too, exactly
//! as the rebuild would: the index and a rebuild then agree, and nothing half-written becomes
//! visible (a version whose data is not all there is passed over, as the rebuild passes it
//! over). Only the part of each zone past its settled prefix is read (see [`super::settled`]):
//! below it every record was in the index or known dead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use zns::ZoneState;

use super::EngineInner;
use super::commit::{Change, NewExtent, Relocation, ReplicaEdit};
use super::error::{EngineError, EngineResult};
use super::index::{self, TombKind};
use super::located::{current_copies, is_record_of, relocation_of};
use super::model::{
    BucketEntry, DriveId, Extent, Location, ObjectMeta, PartEntry, UploadEntry, ZoneId,
};
use super::placement::ZoneHolds;
use super::record::{self, Header, Kind, Replaced};
use super::recovery::{self, Found};
use super::survey::settled_prefix;

/// A zone tail at least this long is announced in the log before it is read.
const LONG_SCAN: u64 = 64 << 20;

/// What a replay did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayReport {
    /// Records read past the zones' settled prefixes.
    pub records: u64,
    /// Changes applied.
    pub applied: u64,
    /// Whether every zone read is now settled (nothing was left unread or failed to apply).
    pub settled: bool,
    /// Records read that failed their CRC or were malformed (counted in the CRC errors too).
    pub damaged: u64,
}

/// The name a claiming record competes for: versions of one name are ordered by sequence
/// number, the newest wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Name {
    Object(String, String),
    Bucket(String),
    Upload(u64),
    Part(u64, u32),
}

fn name_of(h: &Header) -> Option<Name> {
    Some(match h.kind {
        Kind::Data => return None,
        Kind::Commit | Kind::Tombstone => Name::Object(h.bucket.clone(), h.key.clone()),
        Kind::Bucket | Kind::BucketDelete => Name::Bucket(h.bucket.clone()),
        Kind::Upload | Kind::UploadEnd => Name::Upload(h.upload_id()),
        Kind::Part => Name::Part(h.id, h.offset as u32),
    })
}

/// What makes two records copies of one: kind, sequence number, id, offset, bucket, key.
type RecordKey = (u8, u64, u64, u64, String, String);

fn record_key(h: &Header) -> RecordKey {
    (
        h.kind as u8,
        h.seq,
        h.id,
        h.offset,
        h.bucket.clone(),
        h.key.clone(),
    )
}

/// Copies of one record: per drive, the one with the highest write sequence number.
type Copies = BTreeMap<DriveId, (u64, Location)>;

/// One version found in the tail: its copies (the newest per drive), a header and payload.
struct Version {
    header: Header,
    payload: Vec<u8>,
    copies: Copies,
}

impl Version {
    fn locations(&self) -> Vec<Location> {
        self.copies.values().map(|(_, l)| *l).collect()
    }
}

/// The tail's records, grouped by what they are copies of.
#[derive(Default)]
struct Tail {
    /// Copies of data records by (stream, offset), with their payload length.
    data: HashMap<(u64, u64), (u32, Copies)>,
    /// Versions of claiming records by identity.
    versions: BTreeMap<RecordKey, Version>,
}

impl Tail {
    fn add(&mut self, f: Found) {
        let copy = (f.header.write_seq, f.location);
        let keep = |copies: &mut Copies| {
            let slot = copies.entry(f.location.drive).or_insert(copy);
            if slot.0 < copy.0 {
                *slot = copy;
            }
        };
        if f.header.kind == Kind::Data {
            let entry = self
                .data
                .entry((f.header.id, f.header.offset))
                .or_insert((f.length, BTreeMap::new()));
            keep(&mut entry.1);
            return;
        }
        let key = record_key(&f.header);
        let version = self.versions.entry(key).or_insert_with(|| Version {
            header: f.header.clone(),
            payload: f.payload.clone(),
            copies: BTreeMap::new(),
        });
        keep(&mut version.copies);
    }

    /// The extents of a stream of `length` bytes from the tail's data records, if all there.
    fn stream(&self, stream_id: u64, length: u64) -> Option<Vec<NewExtent>> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        while offset < length {
            let (len, copies) = self.data.get(&(stream_id, offset))?;
            if *len == 0 {
                return None;
            }
            out.push(NewExtent {
                stream_id,
                offset,
                extent: Extent {
                    length: *len,
                    replicas: copies.values().map(|(_, l)| *l).collect(),
                },
            });
            offset = offset.checked_add(u64::from(*len))?;
        }
        (offset == length).then_some(out)
    }
}

/// Key in the meta column family marking a drive left out of a roll-forward (followed by its
/// id, big-endian): by a rebuild, or by a start that could not read it (or some of its zones).
/// What the others held then was taken without it, and a version found on it alone may be
/// older than a deletion whose tombstone GC has since let go of, so it is replayed for copies
/// only, never rolled forward, the first time it is attached, at start or later.
const LEFT_OUT_PREFIX: &[u8] = b"left-out:";

/// The meta key marking `drive` as left out of a roll-forward.
pub(crate) fn left_out_key(drive: DriveId) -> Vec<u8> {
    [LEFT_OUT_PREFIX, &drive.to_be_bytes()[..]].concat()
}

/// Whether `drive` was left out of a roll-forward and has not been replayed since.
pub(crate) fn left_out(index: &super::index::Index, drive: DriveId) -> EngineResult<bool> {
    Ok(index
        .get_raw(super::index::cf::META, &left_out_key(drive))?
        .is_some())
}

/// Marks `drives` as left out of a roll-forward, durably, before anything is taken without
/// them.
pub(crate) fn mark_left_out(
    index: &super::index::Index,
    drives: impl IntoIterator<Item = DriveId>,
) -> EngineResult<()> {
    let mut batch = rocksdb::WriteBatch::default();
    for drive in drives {
        batch.put_cf(index.cf(super::index::cf::META), left_out_key(drive), []);
    }
    if !batch.is_empty() {
        index.write(batch, true)?;
    }
    Ok(())
}

/// What replaying does with versions the index does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// At start: apply them, as a rebuild would take them.
    RollForward,
    /// A drive attached while the engine runs, or one a rebuild left out: only record copies
    /// of what the index has. (A version found on that drive alone may be older than a
    /// deletion GC has since let go of, or the rebuild never saw.)
    CopiesOnly,
}

impl EngineInner {
    /// [`EngineInner::replay_tail`] of `drive` for copies only, as a drive left out of a
    /// roll-forward or one attached late must be. A drive left out stays marked so until all
    /// it held is settled, durably: a later start must not roll it forward.
    pub(super) async fn replay_copies_of(&self, drive: DriveId) -> EngineResult<ReplayReport> {
        let report = self.replay_tail(&[drive], Replay::CopiesOnly).await?;
        if report.settled && left_out(&self.index, drive)? {
            // The committer records how far zones are settled with each group's batch: an
            // empty group makes the replay's durable before the mark goes.
            self.committer.submit(Change::Replicas(Vec::new())).await?;
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_cf(self.index.cf(super::index::cf::META), left_out_key(drive));
            self.index.write(batch, true)?;
        }
        Ok(report)
    }
}

impl EngineInner {
    /// Reads every zone of `drives` past its settled prefix, applies what a crash left there
    /// without its index change, and marks those zones settled. A zone that cannot be read, or
    /// whose changes cannot all be applied now, stays unsettled: it is read again next time.
    pub(super) async fn replay_tail(
        &self,
        drives: &[DriveId],
        mode: Replay,
    ) -> EngineResult<ReplayReport> {
        let mut report = ReplayReport::default();
        let mut tail = Tail::default();
        // Found copies of records the index has, the newest per record and drive, with the
        // copies the index names.
        let mut copies: BTreeMap<(RecordKey, DriveId), (Found, Vec<Location>)> = BTreeMap::new();
        let mut settled_to = Vec::new();
        // Whether every record that could matter was read: a version whose data seems missing
        // may have it on a drive or zone not read, so nothing is settled unless all was.
        let mut complete = mode == Replay::CopiesOnly
            || self
                .drives
                .all()
                .iter()
                .all(|d| d.removed || drives.contains(&d.id));
        // Drives with zones left unread: left out of this roll-forward.
        let mut unread = BTreeSet::new();
        // The highest sequence number (of a record, write, stream or upload) read.
        let mut highest = 0;
        // The session each drive was read in: a change naming what was read is not applied if
        // its drive reconnected before the change's flush (the target may have restarted and
        // lost what was past its durable point).
        let mut sessions: BTreeMap<DriveId, u64> = BTreeMap::new();
        // Records of writes that failed: dead, never rolled forward (see [`super::revoked`]).
        let revoked = if mode == Replay::RollForward {
            super::revoked::load(&self.index)?
        } else {
            super::revoked::Revocations::new()
        };
        for &id in drives {
            let Some(drive) = self.drives.get(id).cloned() else {
                continue;
            };
            sessions.insert(id, drive.device.session());
            let zones = match drive.report_all_zones().await {
                Ok(zones) => zones,
                Err(e) => {
                    tracing::warn!(drive = %drive.name, "cannot replay the drive's zones now: {e}");
                    complete = false;
                    unread.insert(id);
                    continue;
                }
            };
            for (i, z) in zones.zones.iter().enumerate() {
                if matches!(z.state, ZoneState::Empty | ZoneState::Offline) {
                    continue;
                }
                let zone = ZoneId {
                    drive: id,
                    zone: i as u32,
                };
                let written = match drive.written_blocks(i as u32, z) {
                    Ok(written) => written,
                    Err(e) => {
                        tracing::warn!(drive = %drive.name, zone = i, "cannot replay the zone: {e}");
                        complete = false;
                        unread.insert(id);
                        continue;
                    }
                };
                let from = settled_prefix(&self.index, zone, self.accounts.generation(zone))?;
                if written > from {
                    let bytes = (written - from) * drive.block_size();
                    if bytes >= LONG_SCAN {
                        // Long (a zone no prefix was recorded for): say so, it takes a while.
                        tracing::info!(
                            drive = %drive.name,
                            zone = i,
                            mib = bytes >> 20,
                            "reading the part of a zone written since the index last settled it"
                        );
                    }
                    let mut scan = recovery::RebuildReport::default();
                    let found = recovery::scan_zone(
                        &drive,
                        drive.geometry.zone_start(i as u32) + from,
                        written - from,
                        &mut scan,
                    )
                    .await;
                    let found = match found {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::warn!(?zone, "cannot replay the zone now: {e}");
                            complete = false;
                            unread.insert(id);
                            continue;
                        }
                    };
                    if scan.damaged > 0 {
                        tracing::warn!(
                            ?zone,
                            damaged = scan.damaged,
                            "damaged records in the part of a zone written since it was settled"
                        );
                        report.damaged += scan.damaged;
                        self.stats
                            .crc_errors
                            .fetch_add(scan.damaged, std::sync::atomic::Ordering::Relaxed);
                    }
                    for f in found {
                        report.records += 1;
                        highest = highest
                            .max(f.header.seq)
                            .max(f.header.write_seq)
                            .max(f.header.id);
                        // Copies of what the index has are recorded; the rest is kept to be
                        // matched up (a version with its data).
                        let Some(named) = current_copies(&self.index, &relocation_of(&f.header))?
                        else {
                            if !super::revoked::covers(&revoked, f.header.seq, f.header.kind) {
                                tail.add(f);
                            }
                            continue;
                        };
                        if named.contains(&f.location) {
                            continue;
                        }
                        let slot = (record_key(&f.header), f.location.drive);
                        match copies.get(&slot) {
                            Some((kept, _)) if kept.header.write_seq >= f.header.write_seq => {}
                            _ => {
                                copies.insert(slot, (f, named));
                            }
                        }
                    }
                }
                settled_to.push((zone, written));
            }
        }
        if mode == Replay::RollForward {
            // What the unread zones hold is not rolled forward later either (see
            // [`left_out_key`]).
            mark_left_out(&self.index, unread)?;
        }
        // Numbers the log holds are never handed out again, even if the index's record of
        // them was lost: a newer change must order after what is replayed.
        self.seq.raise_to(highest.saturating_add(1))?;
        let mut changes = Vec::new();
        // Records made before the drives were last numbered anew name them by old ids: what
        // they say they replaced is not taken (read once for every copy found).
        let floor = super::registry::replacement_floor_of(&self.index).unwrap_or(u64::MAX);
        for (f, named) in copies.values() {
            match self.copy_to_record(f, named, floor).await {
                Ok(Some(change)) => changes.push((0, (change, None))),
                Ok(None) => {}
                Err(()) => complete = false,
            }
        }
        // Versions found that do not become the index's: hidden by what holds their names.
        let mut passed_over: Vec<&Version> = Vec::new();
        let mut forward = Vec::new();
        if mode == Replay::RollForward {
            forward = self.versions_to_roll_forward(&tail, &mut passed_over)?;
        } else {
            passed_over.extend(tail.versions.values());
        }
        changes.extend(
            forward
                .into_iter()
                .map(|(seq, change, v)| (seq, (change, Some(v)))),
        );
        changes.sort_by_key(|(seq, _)| *seq);
        let mut failed = 0;
        for (_, (change, version)) in changes {
            let mut read_in = ZoneHolds::new(self.placement.clone());
            for drive in change.drives() {
                if let Some(&session) = sessions.get(&drive) {
                    read_in.note_session(drive, session);
                }
            }
            match self.committer.submit_holding(change, vec![read_in]).await {
                Ok(_) => report.applied += 1,
                // Refused for what the index holds (a bucket gone, an upload ended): a
                // record of something that did not happen, dead like any refused write's.
                Err(e) if !worth_retrying(&e) => {
                    tracing::debug!("a record left by a crash is refused: {e}");
                    passed_over.extend(version);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!("a record left by a crash cannot be applied now: {e}");
                }
            }
        }
        // A multipart completion passed over for want of its end record (never acknowledged:
        // see [`EngineInner::completion`]) is revoked: hidden only by an older version holding
        // the name, it would be taken by a rebuild, which heeds revocations, not what entries
        // hide.
        if mode == Replay::RollForward {
            for v in &passed_over {
                if self.lone_completion(v, &tail)? {
                    let zones: Vec<ZoneId> = v
                        .copies
                        .values()
                        .filter_map(|(_, l)| self.drives.zone_of(l))
                        .collect();
                    self.revoke(v.header.seq, &zones).await;
                }
            }
        }
        // A version passed over (older than the index's, as a GC copy of a version deleted
        // meanwhile whose move a crash cut short; one whose data is not all there; or any, for
        // copies only) has its zones hidden by whatever holds its name, or is revoked when
        // nothing does: else once the zones it was first in are reset, and with them what
        // outranked it, a rebuild or a later replay could take it for the name's version.
        let orphans: Vec<(Relocation, Vec<ZoneId>)> = passed_over
            .iter()
            .map(|v| {
                let zones = v
                    .copies
                    .values()
                    .filter_map(|(_, l)| self.drives.zone_of(l))
                    .collect();
                (relocation_of(&v.header), zones)
            })
            .collect();
        if !orphans.is_empty()
            && let Err(e) = self.committer.submit(Change::Orphans(orphans)).await
        {
            failed += 1;
            tracing::warn!("the versions a replay passed over cannot be hidden now: {e}");
        }
        if complete && failed == 0 {
            for (zone, written) in settled_to {
                self.placement.settle_through(zone, written);
            }
            report.settled = true;
        }
        if report.records > 0 {
            tracing::info!(
                records = report.records,
                applied = report.applied,
                failed,
                "replayed the records written after the index was last updated"
            );
        }
        Ok(report)
    }

    /// The edit that records a found copy of a version the index has but does not name there:
    /// a GC move or a repair copy whose index change was lost, or a copy whose append was given
    /// up on yet landed. A rebuild names the newest copy on each drive. `Err` if the copy the
    /// index names on that drive cannot be read now to tell which is newer. What records made
    /// before `floor` say they replaced is not taken.
    async fn copy_to_record(
        &self,
        f: &Found,
        named: &[Location],
        floor: u64,
    ) -> Result<Option<Change>, ()> {
        let what = relocation_of(&f.header);
        let copy = f.location;
        let draining = self
            .drives
            .get(copy.drive)
            .is_none_or(|d| d.draining.load(std::sync::atomic::Ordering::Relaxed));
        if named.contains(&copy) || draining {
            return Ok(None);
        }
        // As a rebuild decides (see the record's `replaces`): a copy a named one was made to
        // replace is no copy; one made to replace a named copy older than it takes its place.
        let trusted = |r: &Replaced| r.at >= floor;
        // (A named copy that cannot be read now, its drive down, is taken to replace nothing:
        // at worst a copy too many is kept, and replay is not held up.)
        for other in named.iter().filter(|l| l.drive != copy.drive) {
            let replaced = self
                .header_at(&what, *other)
                .await
                .ok()
                .flatten()
                .and_then(|h| h.replaces)
                .filter(trusted);
            if replaced.is_some_and(|r| r.drive == copy.drive && f.header.write_seq < r.at) {
                return Ok(None);
            }
        }
        if let Some(r) = f.header.replaces.filter(trusted)
            && r.drive != copy.drive
            && let Some(&old) = named.iter().find(|l| l.drive == r.drive)
            // (Unreadable now, its drive down, or damaged: replaced, as a rebuild would have it.)
            && self
                .header_at(&what, old)
                .await
                .ok()
                .flatten()
                .is_none_or(|h| h.write_seq < r.at)
        {
            return Ok(Some(Change::Replicas(vec![(
                what,
                ReplicaEdit::Replace(old, copy),
            )])));
        }
        let edit = match named.iter().find(|l| l.drive == copy.drive) {
            // Copies enough already: one too many would hold its zone for good.
            None if named.len() >= self.replicas() => return Ok(None),
            None => ReplicaEdit::Add(copy),
            Some(&older) => match self.header_at(&what, older).await? {
                Some(kept) if kept.write_seq >= f.header.write_seq => return Ok(None),
                // Older, or damaged: the rebuild would name the copy found.
                _ => ReplicaEdit::Replace(older, copy),
            },
        };
        Ok(Some(Change::Replicas(vec![(what, edit)])))
    }

    /// The header of the record `what` at `location`: `Ok(None)` if it is damaged (or is not
    /// that record), `Err` if it cannot be read now.
    async fn header_at(&self, what: &Relocation, location: Location) -> Result<Option<Header>, ()> {
        let drive = self.drives.get(location.drive).ok_or(())?;
        let bytes = drive
            .device
            .read(location.lba, location.blocks)
            .await
            .map_err(|_| ())?;
        Ok(record::parse(&bytes, drive.block_size() as usize)
            .ok()
            .filter(|p| is_record_of(what, &p.header))
            .map(|p| p.header))
    }

    /// For each name the tail holds versions of that are newer than the index's, the changes
    /// that apply them in order, as they were first applied (an older one is hidden by the
    /// newer, as it was): each whose data is all there. The other versions (not newer, or not
    /// whole) go to `passed_over`. (Revoked ones are not in the tail: dead already.)
    fn versions_to_roll_forward<'t>(
        &self,
        tail: &'t Tail,
        passed_over: &mut Vec<&'t Version>,
    ) -> EngineResult<Vec<(u64, Change, &'t Version)>> {
        let mut by_name: BTreeMap<Name, Vec<&Version>> = BTreeMap::new();
        for v in tail.versions.values() {
            if let Some(name) = name_of(&v.header) {
                by_name.entry(name).or_default().push(v);
            }
        }
        let mut out = Vec::new();
        for (name, versions) in by_name {
            let indexed = self.newest_indexed(&name)?;
            for v in versions {
                match (Some(v.header.seq) > indexed)
                    .then(|| self.change_for(v, tail))
                    .transpose()?
                    .flatten()
                {
                    Some(change) => out.push((v.header.seq, change, v)),
                    None => passed_over.push(v),
                }
            }
        }
        Ok(out)
    }

    /// The sequence number of the version (or deletion) of `name` the index holds.
    fn newest_indexed(&self, name: &Name) -> EngineResult<Option<u64>> {
        let index = &self.index;
        Ok(match name {
            Name::Object(bucket, key) => {
                let object = index.object(bucket, key)?.map(|o| o.meta.seq);
                let tomb = index
                    .tombstone(TombKind::Object, &index::object_key(bucket, key))?
                    .map(|t| t.seq);
                object.max(tomb)
            }
            Name::Bucket(bucket) => {
                let entry = index.bucket(bucket)?.map(|b| b.seq);
                let tomb = index
                    .tombstone(TombKind::Bucket, bucket.as_bytes())?
                    .map(|t| t.seq);
                entry.max(tomb)
            }
            Name::Upload(id) => {
                let entry = index.upload(*id)?.map(|u| u.seq);
                let tomb = index
                    .tombstone(TombKind::Upload, &id.to_be_bytes())?
                    .map(|t| t.seq);
                entry.max(tomb)
            }
            Name::Part(id, number) => index.part(*id, *number)?.map(|p| p.seq),
        })
    }

    /// The change a version found in the tail makes, or None if it cannot be applied (its data
    /// is not all there, its payload does not decode): an older version is tried then.
    fn change_for(&self, v: &Version, tail: &Tail) -> EngineResult<Option<Change>> {
        let h = &v.header;
        let copies = v.locations();
        let undecodable = |what: &str| {
            tracing::warn!(
                seq = h.seq,
                "a {what} record left by a crash does not decode"
            );
            None
        };
        Ok(match h.kind {
            Kind::Data => None,
            Kind::Commit => {
                let Ok(meta) = ObjectMeta::decode(&v.payload) else {
                    return Ok(undecodable("commit"));
                };
                if meta.part_sizes.is_empty() {
                    let mut extents = Vec::new();
                    for s in &meta.streams {
                        let Some(stream) = tail.stream(s.stream_id, s.length) else {
                            return Ok(None);
                        };
                        extents.extend(stream);
                    }
                    Some(Change::PutObject {
                        bucket: h.bucket.clone(),
                        key: h.key.clone(),
                        meta,
                        commit: copies,
                        extents,
                        condition: Default::default(),
                        bucket_seq: None,
                    })
                } else {
                    self.completion(h, meta, copies, tail)?
                }
            }
            Kind::Tombstone => Some(Change::DeleteObject {
                bucket: h.bucket.clone(),
                key: h.key.clone(),
                seq: h.seq,
                tombstone: copies,
            }),
            Kind::Bucket => match BucketEntry::from_payload(h.seq, &v.payload) {
                Ok(mut entry) => {
                    entry.location = copies;
                    Some(Change::CreateBucket {
                        name: h.bucket.clone(),
                        entry,
                    })
                }
                Err(_) => undecodable("bucket"),
            },
            Kind::BucketDelete => Some(Change::DeleteBucket {
                name: h.bucket.clone(),
                seq: h.seq,
                tombstone: copies,
            }),
            Kind::Upload => match ObjectMeta::decode(&v.payload) {
                Ok(template) => Some(Change::CreateUpload {
                    entry: UploadEntry {
                        upload_id: h.id,
                        seq: h.seq,
                        bucket: h.bucket.clone(),
                        key: h.key.clone(),
                        template,
                        location: copies,
                        shadowed: Vec::new(),
                    },
                }),
                Err(_) => undecodable("upload"),
            },
            Kind::UploadEnd => {
                // A completion's end record goes with its commit record (same sequence
                // number), whose change ends the upload; otherwise the upload just ends.
                let commit = tail.versions.values().find(|c| {
                    c.header.kind == Kind::Commit
                        && c.header.seq == h.seq
                        && c.header.bucket == h.bucket
                        && c.header.key == h.key
                });
                let completes = match commit {
                    Some(c) => {
                        let name = Name::Object(c.header.bucket.clone(), c.header.key.clone());
                        let newer = Some(c.header.seq) > self.newest_indexed(&name)?;
                        match ObjectMeta::decode(&c.payload) {
                            Ok(meta) if newer => self
                                .completion(&c.header, meta, c.locations(), tail)?
                                .is_some(),
                            _ => false,
                        }
                    }
                    None => false,
                };
                (!completes).then(|| Change::AbortUpload {
                    upload_id: h.upload_id(),
                    seq: h.seq,
                    end: copies,
                })
            }
            Kind::Part => match PartEntry::from_payload(h.seq, &v.payload) {
                Ok(mut part) => {
                    let Some(extents) = tail.stream(part.stream_id, part.size) else {
                        return Ok(None);
                    };
                    part.location = copies;
                    Some(Change::PutPart {
                        upload_id: h.id,
                        part,
                        extents,
                    })
                }
                Err(_) => undecodable("part"),
            },
        })
    }

    /// Whether `v` is the commit record of a multipart completion newer than what the index
    /// holds for its name, whose end record is not in the tail (see [`EngineInner::completion`]).
    fn lone_completion(&self, v: &Version, tail: &Tail) -> EngineResult<bool> {
        let h = &v.header;
        if h.kind != Kind::Commit
            || ObjectMeta::decode(&v.payload).map_or(true, |m| m.part_sizes.is_empty())
        {
            return Ok(false);
        }
        let ended = tail.versions.values().any(|e| {
            e.header.kind == Kind::UploadEnd
                && e.header.seq == h.seq
                && e.header.bucket == h.bucket
                && e.header.key == h.key
        });
        let name = Name::Object(h.bucket.clone(), h.key.clone());
        Ok(!ended && Some(h.seq) > self.newest_indexed(&name)?)
    }

    /// The completion of a multipart upload whose commit record is in the tail: of the upload
    /// its end record names (same sequence number). Without an end record the completion did
    /// not land whole (the two records go apart when the commit record is large, and a crash
    /// came between them; or their one append was torn): never acknowledged, it is not rolled
    /// forward, and its commit record is passed over. (Rolled forward, the upload ended in the
    /// index with no record saying so on the drives: a rebuild, once the key had changed,
    /// restored it open, holding the parts' data.)
    fn completion(
        &self,
        h: &Header,
        meta: ObjectMeta,
        commit: Vec<Location>,
        tail: &Tail,
    ) -> EngineResult<Option<Change>> {
        let Some(end) = tail.versions.values().find(|e| {
            e.header.kind == Kind::UploadEnd
                && e.header.seq == h.seq
                && e.header.bucket == h.bucket
                && e.header.key == h.key
        }) else {
            return Ok(None);
        };
        let upload_id = end.header.upload_id();
        let mut parts: Vec<(u32, u64)> = self
            .index
            .parts(upload_id, 0, usize::MAX)?
            .into_iter()
            .map(|p| (p.part_number, p.stream_id))
            .collect();
        // Parts the replay applies: their data all there.
        parts.extend(tail.versions.values().filter_map(|p| {
            (p.header.kind == Kind::Part && p.header.id == upload_id)
                .then(|| PartEntry::from_payload(p.header.seq, &p.payload).ok())
                .flatten()
                .filter(|e| tail.stream(e.stream_id, e.size).is_some())
                .map(|e| (e.part_number, e.stream_id))
        }));
        let used: Option<Vec<(u32, u64)>> = meta
            .streams
            .iter()
            .map(|s| parts.iter().find(|p| p.1 == s.stream_id).copied())
            .collect();
        Ok(used.map(|parts| Change::CompleteUpload {
            upload_id,
            meta,
            commit,
            end: end.locations(),
            parts,
            condition: Default::default(),
        }))
    }
}

/// Whether a change that failed may succeed later (a drive or the index failing), rather than
/// being refused for what the index holds.
fn worth_retrying(e: &EngineError) -> bool {
    e.is_unavailable()
        || matches!(
            e,
            EngineError::Internal(_)
                | EngineError::Index(_)
                | EngineError::Drive { .. }
                | EngineError::Corrupt(_)
        )
}
