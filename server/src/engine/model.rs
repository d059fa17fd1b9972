//! The engine's data: where records live on drives, object manifests and the index entries built
//! from them, each with its binary encoding (see [`super::codec`]).

use super::codec::{Dec, DecodeError, Enc};

/// Identifies a drive within the engine (stable across restarts, see the drive registry).
pub type DriveId = u16;

/// Where one copy of a record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The drive.
    pub drive: DriveId,
    /// First block.
    pub lba: u64,
    /// Blocks the record occupies (padded).
    pub blocks: u32,
}

/// A zone of a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneId {
    /// The drive.
    pub drive: DriveId,
    /// Zone index on the drive.
    pub zone: u32,
}

/// A zone as it was at one reset generation: records written there before that generation's
/// reset are gone once the zone's generation moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneStamp {
    /// The zone.
    pub zone: ZoneId,
    /// Its reset generation when the record was there.
    pub generation: u64,
}

/// An extent of a stream: one data record, with its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Payload bytes.
    pub length: u32,
    /// Copies, one per drive. (Each copy's record carries its own CRC; copies moved by GC
    /// differ in their write sequence number, so the CRCs of copies may differ.)
    pub replicas: Vec<Location>,
}

/// A checksum a client sent with an object (algorithm such as `CRC32`, base64 value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Algorithm name as S3 spells it: CRC32, CRC32C, CRC64NVME, SHA1, SHA256.
    pub algorithm: String,
    /// Base64 value (for multipart objects, possibly with a `-N` suffix).
    pub value: String,
}

/// A byte stream an object is made of: the body of a PUT, or one part of a multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRef {
    /// Stream identifier (the `id` of its data records).
    pub stream_id: u64,
    /// Bytes in the stream.
    pub length: u64,
}

/// Everything S3 shows about an object version, and which streams hold its bytes. Stored in
/// the index and, as the payload of its commit record, in the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    /// Sequence number of the commit (the version).
    pub seq: u64,
    /// Size in bytes.
    pub size: u64,
    /// ETag, without quotes.
    pub etag: String,
    /// Content-Type.
    pub content_type: Option<String>,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Expires.
    pub expires: Option<String>,
    /// User metadata (x-amz-meta-*), names in lower case.
    pub user_meta: Vec<(String, String)>,
    /// Checksums the client supplied or asked for.
    pub checksums: Vec<Checksum>,
    /// Checksum type (FULL_OBJECT or COMPOSITE), for multipart objects.
    pub checksum_type: Option<String>,
    /// Last-Modified, milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
    /// Owner (access key of the user who wrote it).
    pub owner: String,
    /// The streams, in object order.
    pub streams: Vec<StreamRef>,
    /// Part sizes, for objects completed from multipart uploads (empty otherwise).
    pub part_sizes: Vec<u64>,
}

/// The manifest's format: 1 with fixed-width stream and part entries (24 bytes a part), 2 with
/// varints, stream ids as differences from the one before, and part sizes written only where
/// they are not the streams' lengths (5 bytes a part of 8 MiB when the parts' stream ids lie close
/// together, up to 11 when other writes took many sequence numbers between them), so that a
/// completion of 10,000 parts typically fits one record on a drive whose append limit is 128 KiB.
/// (A binary older than format 2 cannot read what this one writes.)
const META_VERSION: u8 = 2;

/// How a version-2 manifest gives its part sizes.
const PARTS_NONE: u8 = 0;
const PARTS_ARE_STREAMS: u8 = 1;
const PARTS_LISTED: u8 = 2;

/// `v` with its sign in the low bit (0, -1, 1, -2 ... as 0, 1, 2, 3 ...): small either way.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl ObjectMeta {
    /// Encodes the manifest.
    pub fn encode_into(&self, e: &mut Enc) {
        e.u8(META_VERSION);
        self.encode_fields(e);
        e.varint(self.streams.len() as u64);
        let mut previous = 0u64;
        for s in &self.streams {
            e.varint(zigzag(s.stream_id.wrapping_sub(previous) as i64))
                .varint(s.length);
            previous = s.stream_id;
        }
        let parts_are_streams = self
            .part_sizes
            .iter()
            .eq(self.streams.iter().map(|s| &s.length));
        if self.part_sizes.is_empty() {
            e.u8(PARTS_NONE);
        } else if parts_are_streams {
            e.u8(PARTS_ARE_STREAMS);
        } else {
            e.u8(PARTS_LISTED).varint(self.part_sizes.len() as u64);
            for p in &self.part_sizes {
                e.varint(*p);
            }
        }
    }

    /// The fields every format writes alike, from the sequence number to the owner.
    fn encode_fields(&self, e: &mut Enc) {
        e.u64(self.seq)
            .u64(self.size)
            .str(&self.etag)
            .opt_str(&self.content_type)
            .opt_str(&self.content_encoding)
            .opt_str(&self.content_disposition)
            .opt_str(&self.content_language)
            .opt_str(&self.cache_control)
            .opt_str(&self.expires);
        e.u32(self.user_meta.len() as u32);
        for (k, v) in &self.user_meta {
            e.str(k).str(v);
        }
        e.u32(self.checksums.len() as u32);
        for c in &self.checksums {
            e.str(&c.algorithm).str(&c.value);
        }
        e.opt_str(&self.checksum_type)
            .u64(self.last_modified_ms)
            .str(&self.owner);
    }

    /// Encodes the manifest alone.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        self.encode_into(&mut e);
        e.finish()
    }

    /// Decodes a manifest.
    pub fn decode_from(d: &mut Dec<'_>) -> Result<ObjectMeta, DecodeError> {
        let (version, mut m) = ObjectMeta::decode_fields(d)?;
        if version == 1 {
            for _ in 0..d.count(16)? {
                m.streams.push(StreamRef {
                    stream_id: d.u64()?,
                    length: d.u64()?,
                });
            }
            for _ in 0..d.count(8)? {
                m.part_sizes.push(d.u64()?);
            }
            return Ok(m);
        }
        let mut previous = 0u64;
        for _ in 0..d.varint_count(2)? {
            let stream_id = previous.wrapping_add(unzigzag(d.varint()?) as u64);
            m.streams.push(StreamRef {
                stream_id,
                length: d.varint()?,
            });
            previous = stream_id;
        }
        match d.u8()? {
            PARTS_NONE => {}
            PARTS_ARE_STREAMS => m.part_sizes = m.streams.iter().map(|s| s.length).collect(),
            PARTS_LISTED => {
                for _ in 0..d.varint_count(1)? {
                    m.part_sizes.push(d.varint()?);
                }
            }
            other => {
                return Err(DecodeError(format!(
                    "object manifest part sizes given as {other}"
                )));
            }
        }
        Ok(m)
    }

    /// Decodes the format version and the fields every format writes alike (see
    /// [`ObjectMeta::encode_fields`]).
    fn decode_fields(d: &mut Dec<'_>) -> Result<(u8, ObjectMeta), DecodeError> {
        let version = d.u8()?;
        if !(1..=META_VERSION).contains(&version) {
            return Err(DecodeError(format!(
                "object manifest format version {version}, expected 1 to {META_VERSION}"
            )));
        }
        let mut m = ObjectMeta {
            seq: d.u64()?,
            size: d.u64()?,
            etag: d.str()?,
            content_type: d.opt_str()?,
            content_encoding: d.opt_str()?,
            content_disposition: d.opt_str()?,
            content_language: d.opt_str()?,
            cache_control: d.opt_str()?,
            expires: d.opt_str()?,
            ..ObjectMeta::default()
        };
        for _ in 0..d.count(8)? {
            m.user_meta.push((d.str()?, d.str()?));
        }
        for _ in 0..d.count(8)? {
            m.checksums.push(Checksum {
                algorithm: d.str()?,
                value: d.str()?,
            });
        }
        m.checksum_type = d.opt_str()?;
        m.last_modified_ms = d.u64()?;
        m.owner = d.str()?;
        Ok((version, m))
    }

    /// Decodes a manifest alone.
    pub fn decode(bytes: &[u8]) -> Result<ObjectMeta, DecodeError> {
        ObjectMeta::decode_from(&mut Dec::new(bytes))
    }
}

fn put_locations(e: &mut Enc, locations: &[Location]) {
    e.u32(locations.len() as u32);
    for l in locations {
        e.u16(l.drive).u64(l.lba).u32(l.blocks);
    }
}

fn get_locations(d: &mut Dec<'_>) -> Result<Vec<Location>, DecodeError> {
    let n = d.count(14)?;
    (0..n)
        .map(|_| {
            Ok(Location {
                drive: d.u16()?,
                lba: d.u64()?,
                blocks: d.u32()?,
            })
        })
        .collect()
}

/// Encodes a list of zone stamps.
pub(crate) fn put_stamps(e: &mut Enc, stamps: &[ZoneStamp]) {
    e.u32(stamps.len() as u32);
    for s in stamps {
        e.u16(s.zone.drive).u32(s.zone.zone).u64(s.generation);
    }
}

/// Decodes a list of zone stamps.
pub(crate) fn get_stamps(d: &mut Dec<'_>) -> Result<Vec<ZoneStamp>, DecodeError> {
    let n = d.count(14)?;
    (0..n)
        .map(|_| {
            Ok(ZoneStamp {
                zone: ZoneId {
                    drive: d.u16()?,
                    zone: d.u32()?,
                },
                generation: d.u64()?,
            })
        })
        .collect()
}

impl Extent {
    /// Encodes an extents-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(2).u32(self.length);
        put_locations(&mut e, &self.replicas);
        e.finish()
    }

    /// Decodes an extents-CF value.
    pub fn decode(bytes: &[u8]) -> Result<Extent, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(2, "extent")?;
        Ok(Extent {
            length: d.u32()?,
            replicas: get_locations(&mut d)?,
        })
    }
}

/// The index entry of a live object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// The manifest.
    pub meta: ObjectMeta,
    /// Copies of its commit record.
    pub commit: Vec<Location>,
    /// Zones that may still hold older, dead commit records of this key.
    pub shadowed: Vec<ZoneStamp>,
}

impl ObjectEntry {
    /// Encodes an objects-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1);
        self.meta.encode_into(&mut e);
        put_locations(&mut e, &self.commit);
        put_stamps(&mut e, &self.shadowed);
        e.finish()
    }

    /// Decodes an objects-CF value.
    /// Decodes what a listing shows of an entry: its metadata, without the streams and part
    /// sizes a listing has no use for (for an object of 10,000 parts, hundreds of KB decoded).
    pub fn decode_listed(bytes: &[u8]) -> Result<ObjectMeta, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "object entry")?;
        ObjectMeta::decode_fields(&mut d).map(|(_, m)| m)
    }

    /// Decodes an entry.
    pub fn decode(bytes: &[u8]) -> Result<ObjectEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "object entry")?;
        Ok(ObjectEntry {
            meta: ObjectMeta::decode_from(&mut d)?,
            commit: get_locations(&mut d)?,
            shadowed: get_stamps(&mut d)?,
        })
    }
}

/// A tombstone still needed: it hides older commit records that may remain in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneEntry {
    /// Sequence number of the deletion.
    pub seq: u64,
    /// Copies of the tombstone record.
    pub location: Vec<Location>,
    /// Zones that may still hold the records it hides.
    pub shadowed: Vec<ZoneStamp>,
}

impl TombstoneEntry {
    /// Encodes a tombstones-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1).u64(self.seq);
        put_locations(&mut e, &self.location);
        put_stamps(&mut e, &self.shadowed);
        e.finish()
    }

    /// Decodes a tombstones-CF value.
    pub fn decode(bytes: &[u8]) -> Result<TombstoneEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "tombstone")?;
        Ok(TombstoneEntry {
            seq: d.u64()?,
            location: get_locations(&mut d)?,
            shadowed: get_stamps(&mut d)?,
        })
    }
}

/// A bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketEntry {
    /// Sequence number of its creation.
    pub seq: u64,
    /// Owner (access key).
    pub owner: String,
    /// Creation time, milliseconds since the epoch.
    pub created_ms: u64,
    /// Copies of its record.
    pub location: Vec<Location>,
    /// Zones that may hold older records of a bucket of this name.
    pub shadowed: Vec<ZoneStamp>,
}

impl BucketEntry {
    /// The record payload (owner and creation time).
    pub fn payload(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1).str(&self.owner).u64(self.created_ms);
        e.finish()
    }

    /// Decodes a record payload.
    pub fn from_payload(seq: u64, bytes: &[u8]) -> Result<BucketEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "bucket record")?;
        Ok(BucketEntry {
            seq,
            owner: d.str()?,
            created_ms: d.u64()?,
            location: Vec::new(),
            shadowed: Vec::new(),
        })
    }

    /// Encodes a buckets-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1).u64(self.seq).str(&self.owner).u64(self.created_ms);
        put_locations(&mut e, &self.location);
        put_stamps(&mut e, &self.shadowed);
        e.finish()
    }

    /// Decodes a buckets-CF value.
    pub fn decode(bytes: &[u8]) -> Result<BucketEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "bucket entry")?;
        Ok(BucketEntry {
            seq: d.u64()?,
            owner: d.str()?,
            created_ms: d.u64()?,
            location: get_locations(&mut d)?,
            shadowed: get_stamps(&mut d)?,
        })
    }
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEntry {
    /// Upload identifier.
    pub upload_id: u64,
    /// Sequence number of its creation.
    pub seq: u64,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Metadata the object will get (streams empty), owner and initiation time.
    pub template: ObjectMeta,
    /// Copies of its record.
    pub location: Vec<Location>,
    /// Zones that may hold part records replaced by later uploads of the same part number.
    pub shadowed: Vec<ZoneStamp>,
}

impl UploadEntry {
    /// The record payload (the template).
    pub fn payload(&self) -> Vec<u8> {
        self.template.encode()
    }

    /// Encodes an uploads-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1)
            .u64(self.upload_id)
            .u64(self.seq)
            .str(&self.bucket)
            .str(&self.key);
        self.template.encode_into(&mut e);
        put_locations(&mut e, &self.location);
        put_stamps(&mut e, &self.shadowed);
        e.finish()
    }

    /// Decodes an uploads-CF value.
    pub fn decode(bytes: &[u8]) -> Result<UploadEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "upload entry")?;
        Ok(UploadEntry {
            upload_id: d.u64()?,
            seq: d.u64()?,
            bucket: d.str()?,
            key: d.str()?,
            template: ObjectMeta::decode_from(&mut d)?,
            location: get_locations(&mut d)?,
            shadowed: get_stamps(&mut d)?,
        })
    }
}

/// A stored part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// Part number, 1..=10000.
    pub part_number: u32,
    /// Sequence number of this upload of the part.
    pub seq: u64,
    /// ETag (MD5 of the part), without quotes.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// The stream holding its bytes.
    pub stream_id: u64,
    /// Checksums of the part.
    pub checksums: Vec<Checksum>,
    /// When it was stored, milliseconds since the epoch.
    pub last_modified_ms: u64,
    /// Copies of its record.
    pub location: Vec<Location>,
}

impl PartEntry {
    /// The record payload.
    pub fn payload(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1)
            .u32(self.part_number)
            .str(&self.etag)
            .u64(self.size)
            .u64(self.stream_id)
            .u64(self.last_modified_ms);
        e.u32(self.checksums.len() as u32);
        for c in &self.checksums {
            e.str(&c.algorithm).str(&c.value);
        }
        e.finish()
    }

    /// Decodes a record payload.
    pub fn from_payload(seq: u64, bytes: &[u8]) -> Result<PartEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "part record")?;
        let mut p = PartEntry {
            part_number: d.u32()?,
            seq,
            etag: d.str()?,
            size: d.u64()?,
            stream_id: d.u64()?,
            checksums: Vec::new(),
            last_modified_ms: d.u64()?,
            location: Vec::new(),
        };
        for _ in 0..d.count(8)? {
            p.checksums.push(Checksum {
                algorithm: d.str()?,
                value: d.str()?,
            });
        }
        Ok(p)
    }

    /// Encodes a parts-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1).u64(self.seq).bytes(&self.payload());
        put_locations(&mut e, &self.location);
        e.finish()
    }

    /// Decodes a parts-CF value.
    pub fn decode(bytes: &[u8]) -> Result<PartEntry, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "part entry")?;
        let seq = d.u64()?;
        let mut p = PartEntry::from_payload(seq, d.bytes()?)?;
        p.location = get_locations(&mut d)?;
        Ok(p)
    }
}

/// Write streams: user data and GC relocations go to separate zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Data written by clients (hot).
    User = 0,
    /// Data moved by GC (cold).
    Gc = 1,
}

/// Per-zone accounting kept in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZoneAccount {
    /// Bytes of live records in the zone.
    pub valid_bytes: u64,
    /// Times the zone has been reset by GC.
    pub generation: u64,
    /// End LBA of the furthest record the index points into (must not exceed the write
    /// pointer).
    pub max_indexed_end: u64,
    /// When the zone was last written, milliseconds since the epoch (its age for GC).
    pub last_write_ms: u64,
}

impl ZoneAccount {
    /// Encodes a zones-CF value.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1)
            .u64(self.valid_bytes)
            .u64(self.generation)
            .u64(self.max_indexed_end)
            .u64(self.last_write_ms);
        e.finish()
    }

    /// Decodes a zones-CF value.
    pub fn decode(bytes: &[u8]) -> Result<ZoneAccount, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "zone account")?;
        Ok(ZoneAccount {
            valid_bytes: d.u64()?,
            generation: d.u64()?,
            max_indexed_end: d.u64()?,
            last_write_ms: d.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            seq: 5,
            size: 11,
            etag: "abc".into(),
            content_type: Some("text/plain".into()),
            user_meta: vec![("color".into(), "blue".into())],
            checksums: vec![Checksum {
                algorithm: "CRC32".into(),
                value: "AAAA".into(),
            }],
            last_modified_ms: 123,
            owner: "AKIA".into(),
            streams: vec![StreamRef {
                stream_id: 9,
                length: 11,
            }],
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn entries_round_trip() {
        let loc = Location {
            drive: 2,
            lba: 77,
            blocks: 3,
        };
        let stamp = ZoneStamp {
            zone: ZoneId { drive: 1, zone: 4 },
            generation: 2,
        };
        let o = ObjectEntry {
            meta: meta(),
            commit: vec![loc],
            shadowed: vec![stamp],
        };
        assert_eq!(ObjectEntry::decode(&o.encode()).unwrap(), o);
        let x = Extent {
            length: 100,
            replicas: vec![loc, loc],
        };
        assert_eq!(Extent::decode(&x.encode()).unwrap(), x);
        let t = TombstoneEntry {
            seq: 3,
            location: vec![loc],
            shadowed: vec![stamp],
        };
        assert_eq!(TombstoneEntry::decode(&t.encode()).unwrap(), t);
        let p = PartEntry {
            part_number: 2,
            seq: 8,
            etag: "e".into(),
            size: 5,
            stream_id: 1,
            checksums: vec![],
            last_modified_ms: 1,
            location: vec![loc],
        };
        assert_eq!(PartEntry::decode(&p.encode()).unwrap(), p);
        let z = ZoneAccount {
            valid_bytes: 1,
            generation: 2,
            max_indexed_end: 3,
            last_write_ms: 4,
        };
        assert_eq!(ZoneAccount::decode(&z.encode()).unwrap(), z);
    }

    /// A completed multipart upload's manifest: `parts` streams, ids increasing by a few with
    /// the sequence numbers other writes took meanwhile, 8 MiB parts and a shorter last one.
    fn multipart_meta(parts: u64) -> ObjectMeta {
        let streams: Vec<StreamRef> = (0..parts)
            .map(|i| StreamRef {
                stream_id: 1_000_000 + i * 3 + (i * 7919) % 5,
                length: if i + 1 == parts { 12_345 } else { 8 << 20 },
            })
            .collect();
        ObjectMeta {
            part_sizes: streams.iter().map(|s| s.length).collect(),
            size: streams.iter().map(|s| s.length).sum(),
            streams,
            ..meta()
        }
    }

    /// The manifest as format 1 wrote it (fixed-width stream and part entries).
    fn encode_v1(m: &ObjectMeta) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1);
        m.encode_fields(&mut e);
        e.u32(m.streams.len() as u32);
        for s in &m.streams {
            e.u64(s.stream_id).u64(s.length);
        }
        e.u32(m.part_sizes.len() as u32);
        for p in &m.part_sizes {
            e.u64(*p);
        }
        e.finish()
    }

    #[test]
    fn manifests_of_the_first_format_still_decode() {
        for m in [meta(), multipart_meta(3)] {
            assert_eq!(ObjectMeta::decode(&encode_v1(&m)).unwrap(), m);
        }
    }

    /// 10,000 parts (S3's most) fit a record on a drive appending at most 128 KiB: 240 KB in
    /// the first format.
    #[test]
    fn a_manifest_of_ten_thousand_parts_fits_a_small_append_limit() {
        let m = multipart_meta(10_000);
        let bytes = m.encode();
        assert!(bytes.len() < 100_000, "{} bytes", bytes.len());
        assert!(encode_v1(&m).len() > 240_000);
        assert_eq!(ObjectMeta::decode(&bytes).unwrap(), m);
    }

    proptest::proptest! {
        /// Any streams (ids in any order, down as well as up) and part sizes, listed or the
        /// streams' own, round-trip.
        #[test]
        fn manifests_round_trip(
            streams in proptest::collection::vec((proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>()), 0..20),
            parts in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u64>(), 1..20)),
            parts_are_streams in proptest::prelude::any::<bool>(),
        ) {
            let streams: Vec<StreamRef> = streams
                .into_iter()
                .map(|(stream_id, length)| StreamRef { stream_id, length })
                .collect();
            let part_sizes = if parts_are_streams {
                streams.iter().map(|s| s.length).collect()
            } else {
                parts.unwrap_or_default()
            };
            let m = ObjectMeta { streams, part_sizes, ..meta() };
            let bytes = m.encode();
            proptest::prop_assert_eq!(ObjectMeta::decode(&bytes).unwrap(), m);
            for cut in 0..bytes.len() {
                proptest::prop_assert!(ObjectMeta::decode(&bytes[..cut]).is_err());
            }
        }
    }

    /// A listing decodes an entry's metadata without its streams and part sizes.
    #[test]
    fn a_listing_decodes_the_metadata_alone() {
        let meta = multipart_meta(10_000);
        let bytes = ObjectEntry {
            meta: meta.clone(),
            commit: vec![],
            shadowed: vec![],
        }
        .encode();
        let listed = ObjectEntry::decode_listed(&bytes).unwrap();
        assert_eq!(
            listed,
            ObjectMeta {
                streams: Vec::new(),
                part_sizes: Vec::new(),
                ..meta
            }
        );
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let bytes = ObjectEntry {
            meta: meta(),
            commit: vec![],
            shadowed: vec![],
        }
        .encode();
        for cut in 0..bytes.len() {
            assert!(ObjectEntry::decode(&bytes[..cut]).is_err());
        }
    }
}
