//! The rebuild's scratch store: every record the zone scan finds, kept in a temporary RocksDB
//! in key order (kind of name, name, sequence number, location), so that deciding which version
//! of each name wins needs memory for one name at a time, not for everything on the drives.
//! Millions of objects then rebuild in bounded memory; the store is deleted afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use super::{DataCopy, Found, Versions};
use crate::engine::error::{EngineError, EngineResult};
use crate::engine::index;
use crate::engine::model::Location;
use crate::engine::record::{Kind, Replaced};

/// Bytes gathered in one write to the scratch store.
const BATCH_BYTES: usize = 8 << 20;

/// Which names a scratch key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    /// Data records, by stream and offset.
    Data = b'D' as isize,
    /// Object commits and tombstones, by bucket and key.
    Object = b'O' as isize,
    /// Bucket creations and deletions, by bucket name.
    Bucket = b'B' as isize,
    /// Upload creations and ends, by upload id.
    Upload = b'U' as isize,
    /// Parts, by upload id and part number.
    Part = b'P' as isize,
}

/// Every version found of one name.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// The name (an object key as the index writes it, a bucket name, an upload id...).
    pub name: Vec<u8>,
    /// Its versions by sequence number.
    pub versions: Versions,
    /// Bucket and key the records carry (uploads need them).
    pub bucket: String,
    /// See `bucket`.
    pub key: String,
}

/// The scratch store. Dropping it deletes it, whatever ended the rebuild.
pub(super) struct Scratch {
    // Fields drop in order: the database closes before its directory is removed.
    db: DB,
    batch: WriteBatch,
    /// From which write_seq what records say they replaced names drives by this rebuild's ids
    /// (see [`Scratch::trust_replacements_from`]).
    replacement_floor: u64,
    _dir: RemovedOnDrop,
}

/// A directory deleted when this is dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), "removing the rebuild scratch store: {e}");
        }
    }
}

fn failed(what: &str) -> impl Fn(rocksdb::Error) -> EngineError + '_ {
    move |e| EngineError::Internal(format!("rebuild scratch store: {what}: {e}"))
}

fn corrupt(key: &[u8]) -> EngineError {
    EngineError::Internal(format!("rebuild scratch store: unreadable entry {key:?}"))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// `space | name length | name`: the prefix every version of one name shares.
fn name_prefix(space: Space, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + name.len() + 18);
    k.push(space as u8);
    k.extend_from_slice(&(name.len() as u32).to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Splits a named key into its name and what follows (sequence number and location).
fn split_named(key: &[u8]) -> Option<(&[u8], u64, Location)> {
    let len = be_u32(key, 1)? as usize;
    let name = key.get(5..5 + len)?;
    let rest = &key[5 + len..];
    let seq = be_u64(rest, 0)?;
    let location = Location {
        drive: be_u16(rest, 8)?,
        lba: be_u64(rest, 10)?,
        blocks: 0,
    };
    Some((name, seq, location))
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

fn get_str(v: &[u8], at: &mut usize) -> Option<String> {
    let len = be_u32(v, *at)? as usize;
    let s = String::from_utf8(v.get(*at + 4..*at + 4 + len)?.to_vec()).ok()?;
    *at += 4 + len;
    Some(s)
}

impl Scratch {
    /// Creates an empty store at `path` (removing what an interrupted rebuild left there).
    pub fn create(path: &Path) -> EngineResult<Scratch> {
        if path.exists() {
            std::fs::remove_dir_all(path)
                .map_err(|e| EngineError::Internal(format!("removing {}: {e}", path.display())))?;
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_write_buffer_size(64 << 20);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let db = DB::open(&options, path).map_err(failed("opening"))?;
        Ok(Scratch {
            db,
            batch: WriteBatch::default(),
            replacement_floor: 0,
            _dir: RemovedOnDrop(path.to_path_buf()),
        })
    }

    /// Ignores what records made before `floor` say they replaced: the drive ids they name may
    /// be other drives' now (a copy then kept that a live index had let go of is one copy too
    /// many, not a loss).
    pub fn trust_replacements_from(&mut self, floor: u64) {
        self.replacement_floor = floor;
    }

    /// Records one record the scan found.
    pub fn add(&mut self, f: &Found) -> EngineResult<()> {
        let h = &f.header;
        let l = f.location;
        if h.kind == Kind::Data {
            let mut k = Vec::with_capacity(35);
            k.push(Space::Data as u8);
            k.extend_from_slice(&h.id.to_be_bytes());
            k.extend_from_slice(&h.offset.to_be_bytes());
            k.extend_from_slice(&l.drive.to_be_bytes());
            k.extend_from_slice(&h.write_seq.to_be_bytes());
            k.extend_from_slice(&l.lba.to_be_bytes());
            let mut v = Vec::with_capacity(18);
            v.extend_from_slice(&l.blocks.to_be_bytes());
            v.extend_from_slice(&f.length.to_be_bytes());
            put_replaced(&mut v, h.replaces);
            self.batch.put(k, v);
        } else {
            let (space, name) = match h.kind {
                Kind::Commit | Kind::Tombstone => {
                    (Space::Object, index::object_key(&h.bucket, &h.key))
                }
                Kind::Bucket | Kind::BucketDelete => (Space::Bucket, h.bucket.as_bytes().to_vec()),
                Kind::Upload | Kind::UploadEnd => {
                    (Space::Upload, h.upload_id().to_be_bytes().to_vec())
                }
                Kind::Part | Kind::Data => {
                    let mut name = h.id.to_be_bytes().to_vec();
                    name.extend_from_slice(&(h.offset as u32).to_be_bytes());
                    (Space::Part, name)
                }
            };
            let mut k = name_prefix(space, &name);
            k.extend_from_slice(&h.seq.to_be_bytes());
            k.extend_from_slice(&l.drive.to_be_bytes());
            k.extend_from_slice(&l.lba.to_be_bytes());
            let mut v = Vec::with_capacity(21 + h.bucket.len() + h.key.len() + f.payload.len());
            v.push(h.kind as u8);
            v.extend_from_slice(&l.blocks.to_be_bytes());
            v.extend_from_slice(&h.write_seq.to_be_bytes());
            put_replaced(&mut v, h.replaces);
            put_str(&mut v, &h.bucket);
            put_str(&mut v, &h.key);
            v.extend_from_slice(&f.payload);
            self.batch.put(k, v);
        }
        if self.batch.size_in_bytes() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what `add` gathered.
    pub fn flush(&mut self) -> EngineResult<()> {
        let batch = std::mem::take(&mut self.batch);
        let mut options = WriteOptions::default();
        // Scratch: a crash restarts the rebuild from the drives anyway.
        options.disable_wal(true);
        self.db
            .write_opt(batch, &options)
            .map_err(failed("writing"))
    }

    /// Calls `f` with every group of `space`.
    pub fn for_each_group(
        &self,
        space: Space,
        f: impl FnMut(Group) -> EngineResult<()>,
    ) -> EngineResult<()> {
        self.groups_under(&[space as u8], f)
    }

    /// Calls `f` with the group of every part of upload `upload_id`, in part-number order.
    pub fn for_each_part(
        &self,
        upload_id: u64,
        f: impl FnMut(Group) -> EngineResult<()>,
    ) -> EngineResult<()> {
        // A part's name is the upload id and the part number: 12 bytes.
        let mut prefix = vec![Space::Part as u8];
        prefix.extend_from_slice(&12u32.to_be_bytes());
        prefix.extend_from_slice(&upload_id.to_be_bytes());
        self.groups_under(&prefix, f)
    }

    /// Calls `f` with every group whose keys start with `prefix`, in key order.
    fn groups_under(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(Group) -> EngineResult<()>,
    ) -> EngineResult<()> {
        let mut current: Option<Group> = None;
        let iter = self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(failed("reading"))?;
            if !k.starts_with(prefix) {
                break;
            }
            let (name, seq, mut location) = split_named(&k).ok_or_else(|| corrupt(&k))?;
            let kind = v
                .first()
                .and_then(|&c| Kind::from_code(c))
                .ok_or_else(|| corrupt(&k))?;
            location.blocks = be_u32(&v, 1).ok_or_else(|| corrupt(&k))?;
            let write_seq = v
                .get(5..13)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&k))?;
            let replaces = get_replaced(&v, 13).ok_or_else(|| corrupt(&k))?;
            let replaces = replaces.filter(|r| r.at >= self.replacement_floor);
            let mut at = 23;
            let bucket = get_str(&v, &mut at).ok_or_else(|| corrupt(&k))?;
            let key = get_str(&v, &mut at).ok_or_else(|| corrupt(&k))?;
            if let Some(mut done) = current.take_if(|g| g.name != name) {
                done.versions.drop_replaced();
                f(done)?;
            }
            let group = current.get_or_insert_with(|| Group {
                name: name.to_vec(),
                bucket,
                key,
                ..Group::default()
            });
            group
                .versions
                .add(seq, location, write_seq, replaces, &v[at..], kind);
        }
        if let Some(mut group) = current {
            group.versions.drop_replaced();
            f(group)?;
        }
        Ok(())
    }

    /// Calls `f` with every offset of stream `stream_id` that has data, in offset order, and
    /// the newest copy of it on each drive (write_seq, location, payload length). Stops early
    /// when `f` returns false.
    pub fn for_each_offset(
        &self,
        stream_id: u64,
        mut f: impl FnMut(u64, &BTreeMap<u16, DataCopy>) -> EngineResult<bool>,
    ) -> EngineResult<()> {
        let mut prefix = vec![Space::Data as u8];
        prefix.extend_from_slice(&stream_id.to_be_bytes());
        let mut current: Option<(u64, BTreeMap<u16, DataCopy>)> = None;
        // The current offset's copies made in place of another drive's: (drive, when).
        let mut replacements: Vec<(u16, u64)> = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(failed("reading"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let parsed = (|| {
                let offset = be_u64(&k, 9)?;
                let drive = be_u16(&k, 17)?;
                let write_seq = be_u64(&k, 19)?;
                let lba = be_u64(&k, 27)?;
                let blocks = be_u32(&v, 0)?;
                let length = be_u32(&v, 4)?;
                let replaces = get_replaced(&v, 8)?;
                Some((offset, drive, write_seq, lba, blocks, length, replaces))
            })();
            let (offset, drive, write_seq, lba, blocks, length, replaces) =
                parsed.ok_or_else(|| corrupt(&k))?;
            if let Some((done, mut copies)) = current.take_if(|(o, _)| *o != offset) {
                drop_replaced(&mut copies, &mut replacements);
                if !f(done, &copies)? {
                    return Ok(());
                }
            }
            if let Some(replaced) = replaces.filter(|r| r.at >= self.replacement_floor) {
                replacements.push((replaced.drive, replaced.at));
            }
            let (_, copies) = current.get_or_insert_with(|| (offset, BTreeMap::new()));
            // Keys run in write_seq order, then LBA: keep the first copy of the newest write.
            if copies.get(&drive).is_none_or(|c| c.0 < write_seq) {
                let location = Location { drive, lba, blocks };
                copies.insert(drive, (write_seq, location, length));
            }
        }
        if let Some((offset, mut copies)) = current {
            drop_replaced(&mut copies, &mut replacements);
            f(offset, &copies)?;
        }
        Ok(())
    }
}

/// Stores what a copy replaced: 0, or 1 + the drive id; then when (10 bytes).
fn put_replaced(v: &mut Vec<u8>, replaces: Option<Replaced>) {
    let code = crate::engine::record::replaces_field(replaces.map(|r| r.drive));
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&replaces.map_or(0, |r| r.at).to_be_bytes());
}

/// Reads what [`put_replaced`] stored at `at`.
fn get_replaced(v: &[u8], at: usize) -> Option<Option<Replaced>> {
    let code = be_u16(v, at)?;
    let when = be_u64(v, at + 2)?;
    Some(
        code.checked_sub(1)
            .map(|drive| Replaced { drive, at: when }),
    )
}

/// Drops from one offset's copies each that a copy made on another drive replaced
/// (`replacements`, emptied: the drives replaced, and when).
fn drop_replaced(copies: &mut BTreeMap<u16, DataCopy>, replacements: &mut Vec<(u16, u64)>) {
    for (drive, by) in replacements.drain(..) {
        if copies.get(&drive).is_some_and(|c| c.0 < by) {
            copies.remove(&drive);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::Header;

    fn found(kind: Kind, seq: u64, id: u64, offset: u64, at: (u16, u64), payload: &[u8]) -> Found {
        Found {
            header: Header {
                kind,
                seq,
                write_seq: seq,
                id,
                offset,
                bucket: "b".into(),
                key: format!("k{id}"),
                replaces: None,
            },
            location: Location {
                drive: at.0,
                lba: at.1,
                blocks: 2,
            },
            payload: payload.to_vec(),
            length: 4096,
        }
    }

    fn groups(scratch: &Scratch, space: Space) -> Vec<Group> {
        let mut out = Vec::new();
        scratch
            .for_each_group(space, |g| {
                out.push(g);
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn groups_hold_every_version_of_one_name_and_parts_stay_with_their_upload() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = Scratch::create(&dir.path().join("s")).unwrap();
        // Two versions of one object (three copies of the newer), one of another.
        scratch
            .add(&found(Kind::Commit, 5, 1, 0, (0, 10), b"old"))
            .unwrap();
        for drive in 0..3 {
            scratch
                .add(&found(Kind::Commit, 9, 1, 0, (drive, 20), b"new"))
                .unwrap();
        }
        scratch
            .add(&found(Kind::Tombstone, 7, 2, 0, (1, 30), b""))
            .unwrap();
        // Parts of uploads 1 and 256 (whose ids share their last byte), and upload 1.
        scratch
            .add(&found(Kind::Part, 3, 1, 2, (0, 40), b"p2"))
            .unwrap();
        scratch
            .add(&found(Kind::Part, 4, 256, 1, (0, 41), b"x"))
            .unwrap();
        scratch
            .add(&found(Kind::Part, 2, 1, 1, (0, 42), b"p1"))
            .unwrap();
        scratch
            .add(&found(Kind::Upload, 1, 1, 0, (0, 43), b"u"))
            .unwrap();
        scratch.flush().unwrap();

        let objects = groups(&scratch, Space::Object);
        assert_eq!(objects.len(), 2);
        let first = objects
            .iter()
            .find(|g| g.name == index::object_key("b", "k1"))
            .unwrap();
        let (seq, (locations, payload, kind)) = first.versions.newest().unwrap();
        assert_eq!(
            (seq, payload.as_slice(), *kind),
            (9, &b"new"[..], Kind::Commit)
        );
        assert_eq!(locations.len(), 3);
        assert!(locations.iter().all(|l| l.lba == 20 && l.blocks == 2));
        assert_eq!(first.versions.by_seq.len(), 2, "the older version is kept");

        let mut parts = Vec::new();
        scratch
            .for_each_part(1, |g| {
                parts.push(g.versions.newest().unwrap().1.1.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            parts,
            vec![b"p1".to_vec(), b"p2".to_vec()],
            "in part order, upload 1 only"
        );
        let uploads = groups(&scratch, Space::Upload);
        assert_eq!(uploads.len(), 1);
        assert_eq!(
            (uploads[0].bucket.as_str(), uploads[0].key.as_str()),
            ("b", "k1")
        );
        drop(scratch);
        assert!(
            !dir.path().join("s").exists(),
            "dropping the store deletes it"
        );
    }

    #[test]
    fn offsets_keep_the_newest_copy_per_drive() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = Scratch::create(&dir.path().join("s")).unwrap();
        let mut data = |write_seq: u64, offset: u64, at: (u16, u64)| {
            let mut f = found(Kind::Data, 1, 77, offset, at, b"");
            f.header.write_seq = write_seq;
            scratch.add(&f).unwrap();
        };
        data(10, 0, (0, 100));
        data(12, 0, (0, 200)); // relocated by GC: newer
        data(10, 0, (1, 100));
        data(10, 4096, (0, 101));
        scratch
            .add(&found(Kind::Data, 1, 78, 0, (0, 5), b""))
            .unwrap();
        scratch.flush().unwrap();
        let mut copies = BTreeMap::new();
        scratch
            .for_each_offset(77, |offset, at| {
                copies.insert(offset, at.clone());
                Ok(true)
            })
            .unwrap();
        assert_eq!(
            copies.len(),
            2,
            "two offsets of stream 77, nothing of stream 78"
        );
        assert_eq!(copies[&0][&0].1.lba, 200);
        assert_eq!(copies[&0][&1].1.lba, 100);
        assert_eq!(copies[&4096][&0].0, 10);
    }
}
