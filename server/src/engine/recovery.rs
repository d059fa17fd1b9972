//! Rebuilding the whole index from the zones alone: every record is read and its CRC checked;
//! for each bucket, key, upload and part the record with the highest sequence number wins
//! (tombstones included), and data records are matched to the streams the winners use. Also the
//! canonical dump used to compare a rebuilt index with a live one.

use std::collections::{BTreeMap, HashMap};
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
use super::record::{self, Kind, RecordError};
use super::registry::register_drives;

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
}

/// One physical record found in a zone.
#[derive(Debug, Clone)]
struct Found {
    header: record::Header,
    location: Location,
    payload: Vec<u8>,
    length: u32,
}

/// One version of a logical record: its copies, the payload of one copy, its kind.
type Version = (Vec<Location>, Vec<u8>, Kind);

/// The best copy of a data record on one drive: write_seq, location, payload length.
type DataCopy = (u64, Location, u32);

/// The copies of one logical record (same kind, identity and sequence number).
#[derive(Debug, Clone, Default)]
struct Versions {
    by_seq: BTreeMap<u64, Version>,
}

impl Versions {
    fn add(&mut self, f: &Found) {
        let entry = self
            .by_seq
            .entry(f.header.seq)
            .or_insert_with(|| (Vec::new(), f.payload.clone(), f.header.kind));
        if !entry.0.contains(&f.location) {
            entry.0.push(f.location);
        }
    }

    fn newest(&self) -> Option<(u64, &Version)> {
        self.by_seq.iter().next_back().map(|(s, v)| (*s, v))
    }

    /// Stamps (generation 0: a fresh index) of every copy older than `seq`.
    fn older_stamps(&self, seq: u64, drives: &Drives) -> Vec<ZoneStamp> {
        let mut stamps: Vec<ZoneStamp> = self
            .by_seq
            .range(..seq)
            .flat_map(|(_, (ls, _, _))| ls.iter())
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
pub async fn rebuild(
    index_dir: &Path,
    specs: Vec<DriveSpec>,
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
    let drives = register_drives(&index, specs)?;
    let mut report = RebuildReport::default();
    let mut max_seq = 0u64;

    // 1. Read every record of every zone.
    let mut data: HashMap<(u64, u64), HashMap<u16, DataCopy>> = HashMap::new();
    let mut objects: HashMap<(String, String), Versions> = HashMap::new();
    let mut buckets: HashMap<String, Versions> = HashMap::new();
    let mut uploads: HashMap<u64, Versions> = HashMap::new();
    let mut upload_names: HashMap<u64, (String, String)> = HashMap::new();
    let mut parts: HashMap<(u64, u32), Versions> = HashMap::new();
    for drive in drives.all() {
        let zones = drive.report_all_zones().await?;
        for (i, z) in zones.zones.iter().enumerate() {
            let end_blocks = match z.state {
                ZoneState::Empty | ZoneState::Offline => continue,
                ZoneState::Full | ZoneState::ReadOnly => drive.geometry.zone_capacity,
                _ => z.wp - z.zslba,
            };
            progress(&format!(
                "scanning {} zone {i} ({} KiB)",
                drive.name,
                end_blocks * drive.block_size() / 1024
            ));
            for f in scan_zone(drive, z.zslba, end_blocks, &mut report).await? {
                max_seq = max_seq
                    .max(f.header.seq)
                    .max(f.header.write_seq)
                    .max(f.header.id);
                let h = &f.header;
                match h.kind {
                    Kind::Data => {
                        let copies = data.entry((h.id, h.offset)).or_default();
                        let newer = copies
                            .get(&f.location.drive)
                            .is_none_or(|c| c.0 < h.write_seq);
                        if newer {
                            copies.insert(f.location.drive, (h.write_seq, f.location, f.length));
                        }
                    }
                    Kind::Commit | Kind::Tombstone => objects
                        .entry((h.bucket.clone(), h.key.clone()))
                        .or_default()
                        .add(&f),
                    Kind::Bucket | Kind::BucketDelete => {
                        buckets.entry(h.bucket.clone()).or_default().add(&f)
                    }
                    Kind::Upload | Kind::UploadEnd => {
                        upload_names.insert(h.id, (h.bucket.clone(), h.key.clone()));
                        uploads.entry(h.id).or_default().add(&f);
                    }
                    Kind::Part => parts.entry((h.id, h.offset as u32)).or_default().add(&f),
                }
            }
        }
    }

    // 2. Resolve the winners into index entries.
    let mut batch = WriteBatch::default();
    let mut accounts: HashMap<ZoneId, ZoneAccount> = HashMap::new();
    let count = |ls: &[Location], accounts: &mut HashMap<ZoneId, ZoneAccount>| {
        for l in ls {
            if let Some(zone) = drives.zone_of(l) {
                let a = accounts.entry(zone).or_default();
                a.valid_bytes += drives.bytes_of(l);
                a.max_indexed_end = a.max_indexed_end.max(l.lba + u64::from(l.blocks));
                a.last_write_ms = super::commit::now_ms();
            }
        }
    };
    // A deletion that still hides older records on the drives keeps its tombstone.
    let put_tombstone = |batch: &mut WriteBatch,
                         accounts: &mut HashMap<ZoneId, ZoneAccount>,
                         kind: TombKind,
                         name: &[u8],
                         seq: u64,
                         locations: &[Location],
                         shadowed: Vec<ZoneStamp>| {
        let t = TombstoneEntry {
            seq,
            location: sorted(locations),
            shadowed,
        };
        count(&t.location, accounts);
        batch.put_cf(
            index.cf(cf::TOMBSTONES),
            index::tombstone_key(kind, name),
            t.encode(),
        );
    };
    let stream_extents = |stream_id: u64, length: u64| -> Option<Vec<(u64, Extent)>> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        while offset < length {
            let copies = data.get(&(stream_id, offset))?;
            let mut replicas: Vec<Location> = copies.values().map(|c| c.1).collect();
            replicas.sort();
            let any = copies.values().next()?;
            out.push((
                offset,
                Extent {
                    length: any.2,
                    replicas,
                },
            ));
            offset += u64::from(any.2);
        }
        (offset == length).then_some(out)
    };

    for (name, versions) in &buckets {
        let Some((seq, (locations, payload, kind))) = versions.newest() else {
            continue;
        };
        let shadowed = versions.older_stamps(seq, &drives);
        match kind {
            Kind::Bucket => {
                let mut entry = BucketEntry::from_payload(seq, payload)
                    .map_err(|e| EngineError::Corrupt(e.0))?;
                entry.location = sorted(locations);
                entry.shadowed = shadowed;
                count(&entry.location, &mut accounts);
                batch.put_cf(index.cf(cf::BUCKETS), name.as_bytes(), entry.encode());
                report.buckets += 1;
            }
            _ if !shadowed.is_empty() => {
                put_tombstone(
                    &mut batch,
                    &mut accounts,
                    TombKind::Bucket,
                    name.as_bytes(),
                    seq,
                    locations,
                    shadowed,
                );
            }
            _ => {}
        }
    }
    for ((bucket, key), versions) in &objects {
        let Some((seq, (locations, payload, kind))) = versions.newest() else {
            continue;
        };
        let okey = index::object_key(bucket, key);
        let shadowed = versions.older_stamps(seq, &drives);
        match kind {
            Kind::Commit => {
                let meta = ObjectMeta::decode(payload).map_err(|e| EngineError::Corrupt(e.0))?;
                let mut all = Vec::new();
                let mut complete = true;
                for s in &meta.streams {
                    match stream_extents(s.stream_id, s.length) {
                        Some(extents) => all.push((s.stream_id, extents)),
                        None => complete = false,
                    }
                }
                if !complete {
                    tracing::error!(bucket, key, "object data missing or damaged; not restored");
                    report.incomplete_objects += 1;
                    continue;
                }
                for (stream_id, extents) in all {
                    for (offset, extent) in extents {
                        count(&extent.replicas, &mut accounts);
                        batch.put_cf(
                            index.cf(cf::EXTENTS),
                            index::extent_key(stream_id, offset),
                            extent.encode(),
                        );
                    }
                }
                let entry = ObjectEntry {
                    meta,
                    commit: sorted(locations),
                    shadowed,
                };
                count(&entry.commit, &mut accounts);
                batch.put_cf(index.cf(cf::OBJECTS), okey, entry.encode());
                report.objects += 1;
            }
            _ if !shadowed.is_empty() => {
                put_tombstone(
                    &mut batch,
                    &mut accounts,
                    TombKind::Object,
                    &okey,
                    seq,
                    locations,
                    shadowed,
                );
            }
            _ => {}
        }
    }
    for (upload_id, versions) in &uploads {
        let Some((seq, (locations, payload, kind))) = versions.newest() else {
            continue;
        };
        let (bucket, key) = upload_names.get(upload_id).cloned().unwrap_or_default();
        let mine: Vec<(&(u64, u32), &Versions)> = parts
            .iter()
            .filter(|((id, _), _)| id == upload_id)
            .collect();
        match kind {
            Kind::Upload => {
                let template =
                    ObjectMeta::decode(payload).map_err(|e| EngineError::Corrupt(e.0))?;
                let mut shadowed = Vec::new();
                for ((_, number), pv) in &mine {
                    let Some((pseq, (plocs, ppayload, _))) = pv.newest() else {
                        continue;
                    };
                    shadowed.extend(pv.older_stamps(pseq, &drives));
                    let mut part = PartEntry::from_payload(pseq, ppayload)
                        .map_err(|e| EngineError::Corrupt(e.0))?;
                    part.location = sorted(plocs);
                    let Some(extents) = stream_extents(part.stream_id, part.size) else {
                        tracing::error!(
                            upload_id,
                            part = number,
                            "part data missing; not restored"
                        );
                        continue;
                    };
                    for (offset, extent) in extents {
                        count(&extent.replicas, &mut accounts);
                        batch.put_cf(
                            index.cf(cf::EXTENTS),
                            index::extent_key(part.stream_id, offset),
                            extent.encode(),
                        );
                    }
                    count(&part.location, &mut accounts);
                    batch.put_cf(
                        index.cf(cf::PARTS),
                        index::part_key(*upload_id, *number),
                        part.encode(),
                    );
                }
                shadowed.sort();
                shadowed.dedup();
                let entry = UploadEntry {
                    upload_id: *upload_id,
                    seq,
                    bucket: bucket.clone(),
                    key: key.clone(),
                    template,
                    location: sorted(locations),
                    shadowed,
                };
                count(&entry.location, &mut accounts);
                batch.put_cf(
                    index.cf(cf::UPLOADS),
                    upload_id.to_be_bytes(),
                    entry.encode(),
                );
                batch.put_cf(
                    index.cf(cf::UPLOAD_KEYS),
                    index::upload_listing_key(&bucket, &key, *upload_id),
                    [],
                );
                report.uploads += 1;
            }
            _ => {
                let mut shadowed = versions.older_stamps(seq, &drives);
                for (_, pv) in &mine {
                    shadowed.extend(pv.older_stamps(u64::MAX, &drives));
                }
                shadowed.sort();
                shadowed.dedup();
                if !shadowed.is_empty() {
                    put_tombstone(
                        &mut batch,
                        &mut accounts,
                        TombKind::Upload,
                        &upload_id.to_be_bytes(),
                        seq,
                        locations,
                        shadowed,
                    );
                }
            }
        }
    }
    for (zone, account) in &accounts {
        batch.put_cf(
            index.cf(cf::ZONES),
            index::zone_key(*zone),
            account.encode(),
        );
    }
    index.write(batch, true)?;
    super::seq::SeqAllocator::open(index.clone(), max_seq + 1)?;
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

fn sorted(locations: &[Location]) -> Vec<Location> {
    let mut v = locations.to_vec();
    v.sort();
    v
}

/// Reads every record of a zone up to `end_blocks`, verifying each.
async fn scan_zone(
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
                Err(RecordError::NotARecord) if buf.len() >= bs as usize => return Ok(out),
                Err(RecordError::Malformed(detail)) => {
                    tracing::error!(drive = %drive.name, lba = buf_lba, "unparseable data, rest of zone skipped: {detail}");
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
        for p in index.parts(u.upload_id, 0)? {
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
