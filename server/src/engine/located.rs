//! Every index entry that names copies of a record on the drives (extents, commit records,
//! tombstones, buckets, uploads, parts), as the [`Relocation`] that identifies it for an edit
//! of its copies, and the check that a record read from a drive is the one an entry means.

use super::commit::Relocation;
use super::index::{self, Index, IndexResult, TombKind, cf};
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

/// The kind of tombstone the first byte of a tombstone key names.
pub(crate) fn tomb_kind(byte: u8) -> Option<TombKind> {
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
type Decoder = fn(&[u8], &[u8]) -> Option<Located>;

/// The column families whose entries name copies, in scan order, with their decoders.
const SOURCES: [(&str, Decoder); 6] = [
    (cf::EXTENTS, |k, v| {
        Some(Located {
            what: Relocation::Extent {
                stream_id: u64_at(k, 0)?,
                offset: u64_at(k, 8)?,
            },
            copies: Extent::decode(v).ok()?.replicas,
        })
    }),
    (cf::OBJECTS, |k, v| {
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
    }),
    (cf::TOMBSTONES, |k, v| {
        let t = TombstoneEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Tombstone {
                kind: tomb_kind(*k.first()?)?,
                name: k[1..].to_vec(),
                seq: t.seq,
            },
            copies: t.location,
        })
    }),
    (cf::BUCKETS, |k, v| {
        let b = BucketEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Bucket {
                name: String::from_utf8(k.to_vec()).ok()?,
                seq: b.seq,
            },
            copies: b.location,
        })
    }),
    (cf::UPLOADS, |k, v| {
        Some(Located {
            what: Relocation::Upload {
                upload_id: u64_at(k, 0)?,
            },
            copies: UploadEntry::decode(v).ok()?.location,
        })
    }),
    (cf::PARTS, |k, v| {
        let p = PartEntry::decode(v).ok()?;
        Some(Located {
            what: Relocation::Part {
                upload_id: u64_at(k, 0)?,
                part_number: u32::from_be_bytes(k.get(8..12)?.try_into().ok()?),
                seq: p.seq,
            },
            copies: p.location,
        })
    }),
];

/// The copies the index names for `what` now, or `None` if the entry is gone or is another
/// version than `what` means.
pub fn current_copies(index: &Index, what: &Relocation) -> IndexResult<Option<Vec<Location>>> {
    Ok(match what {
        Relocation::Extent { stream_id, offset } => {
            index.extent(*stream_id, *offset)?.map(|e| e.replicas)
        }
        Relocation::Commit { bucket, key, seq } => index
            .object(bucket, key)?
            .filter(|o| o.meta.seq == *seq)
            .map(|o| o.commit),
        Relocation::Tombstone { kind, name, seq } => index
            .tombstone(*kind, name)?
            .filter(|t| t.seq == *seq)
            .map(|t| t.location),
        Relocation::Bucket { name, seq } => index
            .bucket(name)?
            .filter(|b| b.seq == *seq)
            .map(|b| b.location),
        Relocation::Upload { upload_id } => index.upload(*upload_id)?.map(|u| u.location),
        Relocation::Part {
            upload_id,
            part_number,
            seq,
        } => index
            .part(*upload_id, *part_number)?
            .filter(|p| p.seq == *seq)
            .map(|p| p.location),
    })
}

/// Decodes one raw entry of `cf_name`; one that does not decode is said loudly (it is left out
/// of what repair, scrub and drains see) and skipped.
fn decoded(cf_name: &str, decode: Decoder, k: &[u8], v: &[u8]) -> Option<Located> {
    let located = decode(k, v);
    if located.is_none() {
        tracing::error!(
            cf = cf_name,
            key = %String::from_utf8_lossy(k),
            "an index entry does not decode: repair, scrub and drains pass over it"
        );
    }
    located
}

/// Calls `visit` with every located entry, until it returns false. Entries that do not decode
/// are reported and skipped (the index reports them too where it reads them for clients).
pub fn scan(index: &Index, mut visit: impl FnMut(Located) -> bool) -> IndexResult<()> {
    for (cf_name, decode) in SOURCES {
        let mut go = true;
        index.for_each_from(cf_name, &[], |k, v| {
            if let Some(located) = decoded(cf_name, decode, k, v) {
                go = visit(located);
            }
            go
        })?;
        if !go {
            break;
        }
    }
    Ok(())
}

/// Where a batched scan ([`next_batch`]) goes on from.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    source: usize,
    after: Option<Vec<u8>>,
}

impl Cursor {
    /// The cursor as bytes, to keep in the index: a long pass resumes from it after a restart.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![self.source as u8];
        if let Some(after) = &self.after {
            bytes.push(1);
            bytes.extend_from_slice(after);
        } else {
            bytes.push(0);
        }
        bytes
    }

    /// The cursor [`Cursor::to_bytes`] made, or `None` if `bytes` are not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Cursor> {
        let (&source, rest) = bytes.split_first()?;
        let (&has_after, after) = rest.split_first()?;
        let source = usize::from(source);
        if source > SOURCES.len() {
            return None;
        }
        let after = match has_after {
            0 if after.is_empty() => None,
            1 => Some(after.to_vec()),
            _ => return None,
        };
        Some(Cursor { source, after })
    }
}

/// Up to `max` located entries after `cursor`, which moves past them; empty at the end. Each
/// batch reads the index afresh (no iterator is held between batches), so a long, rate-limited
/// pass keeps memory bounded and pins nothing in RocksDB.
pub fn next_batch(index: &Index, cursor: &mut Cursor, max: usize) -> IndexResult<Vec<Located>> {
    batch_of(index, cursor, max, |located, _, _| located)
}

/// As [`next_batch`], each entry with the cursor just past it: where a pass stopped after that
/// entry goes on from.
pub fn next_batch_positioned(
    index: &Index,
    cursor: &mut Cursor,
    max: usize,
) -> IndexResult<Vec<(Located, Cursor)>> {
    batch_of(index, cursor, max, |located, source, key| {
        let past = Cursor {
            source,
            after: Some(key.to_vec()),
        };
        (located, past)
    })
}

fn batch_of<T>(
    index: &Index,
    cursor: &mut Cursor,
    max: usize,
    mut make: impl FnMut(Located, usize, &[u8]) -> T,
) -> IndexResult<Vec<T>> {
    let mut out = Vec::new();
    while let Some((cf_name, decode)) = SOURCES.get(cursor.source) {
        let source = cursor.source;
        let after = cursor.after.take();
        let mut last = None;
        index.for_each_from(cf_name, after.as_deref().unwrap_or(&[]), |k, v| {
            if after.as_deref() == Some(k) {
                return true;
            }
            if let Some(located) = decoded(cf_name, *decode, k, v) {
                out.push(make(located, source, k));
            }
            last = Some(k.to_vec());
            out.len() < max
        })?;
        if out.len() >= max {
            cursor.after = last;
            return Ok(out);
        }
        cursor.source += 1;
    }
    Ok(out)
}

/// The entry a record is a copy of (a version, for names that have them), whether or not the
/// index has it.
pub fn relocation_of(h: &Header) -> Relocation {
    match h.kind {
        Kind::Data => Relocation::Extent {
            stream_id: h.id,
            offset: h.offset,
        },
        Kind::Commit => Relocation::Commit {
            bucket: h.bucket.clone(),
            key: h.key.clone(),
            seq: h.seq,
        },
        Kind::Tombstone => Relocation::Tombstone {
            kind: TombKind::Object,
            name: index::object_key(&h.bucket, &h.key),
            seq: h.seq,
        },
        Kind::Bucket => Relocation::Bucket {
            name: h.bucket.clone(),
            seq: h.seq,
        },
        Kind::BucketDelete => Relocation::Tombstone {
            kind: TombKind::Bucket,
            name: h.bucket.as_bytes().to_vec(),
            seq: h.seq,
        },
        Kind::Upload => Relocation::Upload { upload_id: h.id },
        Kind::UploadEnd => Relocation::Tombstone {
            kind: TombKind::Upload,
            name: h.upload_id().to_be_bytes().to_vec(),
            seq: h.seq,
        },
        Kind::Part => Relocation::Part {
            upload_id: h.id,
            part_number: h.offset as u32,
            seq: h.seq,
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::index::extent_key;

    #[test]
    fn batches_cover_every_entry_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        for stream in 1..=5u64 {
            let e = Extent {
                length: 10,
                replicas: vec![],
            };
            batch.put_cf(index.cf(cf::EXTENTS), extent_key(stream, 0), e.encode());
        }
        index.write(batch, false).unwrap();
        let mut cursor = Cursor::default();
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let b = next_batch(&index, &mut cursor, 2).unwrap();
            if b.is_empty() {
                break;
            }
            sizes.push(b.len());
            for l in b {
                match l.what {
                    Relocation::Extent { stream_id, .. } => seen.push(stream_id),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(sizes, vec![2, 2, 1]);
        // A pass resumed from the cursor kept past an entry goes on after it.
        let mut from = Cursor::default();
        let first = next_batch_positioned(&index, &mut from, 2).unwrap();
        let kept = first[0].1.to_bytes();
        let mut resumed = Cursor::from_bytes(&kept).expect("a kept cursor reads back");
        let rest: Vec<u64> = next_batch(&index, &mut resumed, 10)
            .unwrap()
            .into_iter()
            .map(|l| match l.what {
                Relocation::Extent { stream_id, .. } => stream_id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(rest, vec![2, 3, 4, 5]);
        assert!(Cursor::from_bytes(&Cursor::default().to_bytes()).is_some());
        for garbage in [&[][..], &[0], &[0, 2], &[0, 0, 9], &[99, 0]] {
            assert!(Cursor::from_bytes(garbage).is_none(), "{garbage:?}");
        }
        let mut all = Vec::new();
        scan(&index, |l| {
            all.push(l);
            true
        })
        .unwrap();
        assert_eq!(all.len(), 5);
    }
}
