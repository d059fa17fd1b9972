//! Every index entry that names copies of a record on the drives (extents, commit records,
//! tombstones, buckets, uploads, parts), as the [`Relocation`] that identifies it for an edit
//! of its copies, and the check that a record read from a drive is the one an entry means.

use super::commit::Relocation;
use super::index::{Index, IndexResult, TombKind, cf};
use super::model::{
    BucketEntry, Extent, Location, ObjectEntry, PartEntry, TombstoneEntry, UploadEntry,
};
use super::record::{Header, Kind};

/// One entry and its copies.
#[derive(Debug, Clone)]
pub struct Located {
    /// The entry.
    pub what: Relocation,
    /// Its copies.
    pub copies: Vec<Location>,
}

fn tomb_kind(byte: u8) -> Option<TombKind> {
    match byte {
        b'O' => Some(TombKind::Object),
        b'B' => Some(TombKind::Bucket),
        b'U' => Some(TombKind::Upload),
        _ => None,
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Turns one raw entry of a column family into a located entry.
type Decoder = dyn Fn(&[u8], &[u8]) -> Option<Located>;

/// Calls `visit` with every located entry, until it returns false. Entries that do not decode
/// are skipped (the index reports them where it reads them for clients).
pub fn scan(index: &Index, mut visit: impl FnMut(Located) -> bool) -> IndexResult<()> {
    let mut go = true;
    let mut each = |cf_name: &str, decode: &Decoder| {
        if !go {
            return Ok(());
        }
        index.for_each(cf_name, |k, v| {
            if let Some(located) = decode(k, v) {
                go = visit(located);
            }
            go
        })
    };
    each(cf::EXTENTS, &|k, v| {
        Some(Located {
            what: Relocation::Extent {
                stream_id: u64_at(k, 0)?,
                offset: u64_at(k, 8)?,
            },
            copies: Extent::decode(v).ok()?.replicas,
        })
    })?;
    each(cf::OBJECTS, &|k, v| {
        let split = k.iter().position(|&b| b == 0)?;
        let entry = ObjectEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Commit {
                bucket: String::from_utf8(k[..split].to_vec()).ok()?,
                key: String::from_utf8(k[split + 1..].to_vec()).ok()?,
                seq: entry.meta.seq,
            },
            copies: entry.commit,
        })
    })?;
    each(cf::TOMBSTONES, &|k, v| {
        let t = TombstoneEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Tombstone {
                kind: tomb_kind(*k.first()?)?,
                name: k[1..].to_vec(),
                seq: t.seq,
            },
            copies: t.location,
        })
    })?;
    each(cf::BUCKETS, &|k, v| {
        let b = BucketEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Bucket {
                name: String::from_utf8(k.to_vec()).ok()?,
                seq: b.seq,
            },
            copies: b.location,
        })
    })?;
    each(cf::UPLOADS, &|k, v| {
        Some(Located {
            what: Relocation::Upload {
                upload_id: u64_at(k, 0)?,
            },
            copies: UploadEntry::decode(v).ok()?.location,
        })
    })?;
    each(cf::PARTS, &|k, v| {
        let p = PartEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Part {
                upload_id: u64_at(k, 0)?,
                part_number: u32::from_be_bytes(k.get(8..12)?.try_into().ok()?),
                seq: p.seq,
            },
            copies: p.location,
        })
    })?;
    Ok(())
}

/// Whether a record with `header` is the one `what` means.
pub fn is_record_of(what: &Relocation, header: &Header) -> bool {
    match what {
        Relocation::Extent { stream_id, offset } => {
            header.kind == Kind::Data && header.id == *stream_id && header.offset == *offset
        }
        Relocation::Commit { bucket, key, seq } => {
            header.kind == Kind::Commit
                && header.seq == *seq
                && header.bucket == *bucket
                && header.key == *key
        }
        Relocation::Tombstone { kind, seq, .. } => {
            let expected = match kind {
                TombKind::Object => Kind::Tombstone,
                TombKind::Bucket => Kind::BucketDelete,
                TombKind::Upload => Kind::UploadEnd,
            };
            header.kind == expected && header.seq == *seq
        }
        Relocation::Bucket { name, seq } => {
            header.kind == Kind::Bucket && header.seq == *seq && header.bucket == *name
        }
        Relocation::Upload { upload_id } => header.kind == Kind::Upload && header.id == *upload_id,
        Relocation::Part {
            upload_id,
            part_number,
            seq,
        } => {
            header.kind == Kind::Part
                && header.id == *upload_id
                && header.offset == u64::from(*part_number)
                && header.seq == *seq
        }
    }
}
