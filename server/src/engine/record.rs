//! The on-drive record format: every byte Zonestore writes to a zone is part of a record, a
//! self-describing header followed by a payload and zero padding to the block size. A scan of
//! the zones alone can rebuild the whole index from these records.
//!
//! ```text
//! header, little endian (64 bytes fixed, then the bucket and key):
//!   0  magic "ZSR1"            24  write_seq u64  when this copy was written (GC bumps it)
//!   4  format version u8 (1)   32  id u64         data: stream; commit: version; upload/part: upload
//!   5  kind u8                 40  offset u64     data: offset in the stream; part: part number
//!   6  flags u16 (0)           48  length u32     payload bytes
//!   8  header_len u16          52  crc32 u32      CRC32 of header (this field zero) + payload
//!  10  bucket_len u16          56  reserved (8)
//!  12  key_len u16             64  bucket bytes, then key bytes
//!  14  reserved u16
//!  16  seq u64                 the entity's sequence number: newer versions have larger ones
//! then the payload, then zeros up to a whole number of blocks.
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// Magic bytes at the start of every record.
pub const MAGIC: &[u8; 4] = b"ZSR1";
/// Current record format version.
pub const VERSION: u8 = 1;
/// Length of the fixed part of the header.
pub const FIXED_HEADER: usize = 64;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A piece of an object's (or a part's) body.
    Data = 1,
    /// An object version became visible; the payload is its manifest.
    Commit = 2,
    /// An object was deleted.
    Tombstone = 3,
    /// A bucket was created; the payload names its owner.
    Bucket = 4,
    /// A bucket was deleted.
    BucketDelete = 5,
    /// A multipart upload was created; the payload is its metadata.
    Upload = 6,
    /// A multipart upload was completed or aborted.
    UploadEnd = 7,
    /// A part of a multipart upload was stored; the payload is its metadata.
    Part = 8,
}

impl Kind {
    /// Decodes a kind byte.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Data,
            2 => Kind::Commit,
            3 => Kind::Tombstone,
            4 => Kind::Bucket,
            5 => Kind::BucketDelete,
            6 => Kind::Upload,
            7 => Kind::UploadEnd,
            8 => Kind::Part,
            _ => return None,
        })
    }
}

/// The identity and versioning fields of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Record kind.
    pub kind: Kind,
    /// Sequence number of the entity version.
    pub seq: u64,
    /// Sequence number of this physical copy.
    pub write_seq: u64,
    /// Stream, version or upload identifier.
    pub id: u64,
    /// Offset in the stream, or part number.
    pub offset: u64,
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record starts here (unwritten space, or not a record).
    #[error("no record here")]
    NotARecord,
    /// The header is inconsistent.
    #[error("malformed record header: {0}")]
    Malformed(String),
    /// The record is shorter than its header says (read more blocks).
    #[error("record needs {0} bytes")]
    Truncated(usize),
    /// The checksum does not match: the record is damaged.
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
        /// Bytes the record occupies if its length field is right (to skip over it).
        padded: usize,
    },
}

/// Bytes a record with these header parts and payload occupies before padding.
pub fn header_len(bucket: &str, key: &str) -> usize {
    FIXED_HEADER + bucket.len() + key.len()
}

/// Bytes a record occupies on the drive: header and payload padded to whole blocks.
pub fn padded_len(header_len: usize, payload_len: usize, block_size: usize) -> usize {
    (header_len + payload_len).div_ceil(block_size) * block_size
}

/// Encodes a record around `payload`, padded to `block_size`. The payload is copied once into
/// the record buffer; callers that build large payloads use [`RecordBuilder`] instead.
pub fn encode(header: &Header, payload: &[u8], block_size: usize) -> Bytes {
    let mut builder = RecordBuilder::new(header, payload.len(), block_size);
    builder.payload_mut().put_slice(payload);
    builder.finish()
}

/// Builds a record in place: header space first, then the payload is filled by the caller, so
/// a body streamed in is copied exactly once, into the buffer that is sent to the drive.
#[derive(Debug)]
pub struct RecordBuilder {
    buf: BytesMut,
    header_len: usize,
    block_size: usize,
    capacity: usize,
}

impl RecordBuilder {
    /// A builder for a record whose payload holds at most `capacity` bytes.
    pub fn new(header: &Header, capacity: usize, block_size: usize) -> Self {
        let header_len = header_len(&header.bucket, &header.key);
        let mut buf = BytesMut::with_capacity(padded_len(header_len, capacity, block_size));
        buf.put_slice(MAGIC);
        buf.put_u8(VERSION);
        buf.put_u8(header.kind as u8);
        buf.put_u16_le(0);
        buf.put_u16_le(header_len as u16);
        buf.put_u16_le(header.bucket.len() as u16);
        buf.put_u16_le(header.key.len() as u16);
        buf.put_u16_le(0);
        buf.put_u64_le(header.seq);
        buf.put_u64_le(header.write_seq);
        buf.put_u64_le(header.id);
        buf.put_u64_le(header.offset);
        buf.put_u32_le(0); // length, set by finish
        buf.put_u32_le(0); // crc, set by finish
        buf.put_bytes(0, 8);
        buf.put_slice(header.bucket.as_bytes());
        buf.put_slice(header.key.as_bytes());
        RecordBuilder {
            buf,
            header_len,
            block_size,
            capacity,
        }
    }

    /// Payload bytes written so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - self.header_len
    }

    /// Payload bytes that still fit.
    pub fn remaining(&self) -> usize {
        self.capacity - self.payload_len()
    }

    /// The buffer to append payload bytes to (at most [`RecordBuilder::remaining`]).
    pub fn payload_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Sets length and CRC, pads to the block size and returns the record.
    pub fn finish(mut self) -> Bytes {
        let length = self.payload_len() as u32;
        self.buf[48..52].copy_from_slice(&length.to_le_bytes());
        let crc = crc32fast::hash(&self.buf);
        self.buf[52..56].copy_from_slice(&crc.to_le_bytes());
        let padded = padded_len(self.header_len, length as usize, self.block_size);
        self.buf.resize(padded, 0);
        self.buf.freeze()
    }
}

/// A decoded record: its header, where its payload lies within the bytes given, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The header fields.
    pub header: Header,
    /// Byte range of the payload in the buffer that was parsed.
    pub payload: std::ops::Range<usize>,
    /// Bytes the record occupies on the drive (padded).
    pub padded: usize,
    /// The stored CRC.
    pub crc: u32,
}

/// Decodes the record at the start of `bytes`, verifying its checksum.
pub fn parse(bytes: &[u8], block_size: usize) -> Result<Parsed, RecordError> {
    if bytes.len() < FIXED_HEADER || &bytes[0..4] != MAGIC {
        return Err(RecordError::NotARecord);
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes[4] != VERSION {
        return Err(RecordError::Malformed(format!(
            "format version {}",
            bytes[4]
        )));
    }
    let kind = Kind::from_code(bytes[5])
        .ok_or_else(|| RecordError::Malformed(format!("kind {}", bytes[5])))?;
    let header_len = usize::from(u16_at(8));
    let bucket_len = usize::from(u16_at(10));
    let key_len = usize::from(u16_at(12));
    if header_len != FIXED_HEADER + bucket_len + key_len {
        return Err(RecordError::Malformed(format!(
            "header length {header_len}"
        )));
    }
    let length = u32_at(48) as usize;
    let total = header_len + length;
    if bytes.len() < total {
        return Err(RecordError::Truncated(padded_len(
            header_len, length, block_size,
        )));
    }
    let stored = u32_at(52);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..52]);
    hasher.update(&[0u8; 4]);
    hasher.update(&bytes[56..total]);
    let computed = hasher.finalize();
    if stored != computed {
        let padded = padded_len(header_len, length, block_size);
        return Err(RecordError::Checksum {
            stored,
            computed,
            padded,
        });
    }
    let text = |range: std::ops::Range<usize>| {
        String::from_utf8(bytes[range].to_vec())
            .map_err(|_| RecordError::Malformed("name is not UTF-8".into()))
    };
    let bucket = text(FIXED_HEADER..FIXED_HEADER + bucket_len)?;
    let key = text(FIXED_HEADER + bucket_len..header_len)?;
    Ok(Parsed {
        header: Header {
            kind,
            seq: u64_at(16),
            write_seq: u64_at(24),
            id: u64_at(32),
            offset: u64_at(40),
            bucket,
            key,
        },
        payload: header_len..total,
        padded: padded_len(header_len, length, block_size),
        crc: stored,
    })
}

/// Gives a record a new `write_seq` (a relocated copy), recomputing its CRC.
pub fn rewrite_seq(record: &[u8], write_seq: u64) -> Bytes {
    let mut buf = BytesMut::from(record);
    buf[24..32].copy_from_slice(&write_seq.to_le_bytes());
    buf[52..56].fill(0);
    let header_len = usize::from(u16::from_le_bytes([buf[8], buf[9]]));
    let length = u32::from_le_bytes(buf[48..52].try_into().expect("4 bytes")) as usize;
    let crc = crc32fast::hash(&buf[..header_len + length]);
    buf[52..56].copy_from_slice(&crc.to_le_bytes());
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            kind: Kind::Data,
            seq: 7,
            write_seq: 9,
            id: 42,
            offset: 1 << 20,
            bucket: "photos".into(),
            key: "2026/cat.jpg".into(),
        }
    }

    #[test]
    fn layout_follows_the_documented_offsets() {
        let r = encode(&header(), b"hello", 4096);
        assert_eq!(r.len(), 4096);
        assert_eq!(&r[0..4], b"ZSR1");
        assert_eq!(r[4], 1);
        assert_eq!(r[5], Kind::Data as u8);
        assert_eq!(u16::from_le_bytes([r[8], r[9]]) as usize, 64 + 6 + 12);
        assert_eq!(u64::from_le_bytes(r[16..24].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(r[32..40].try_into().unwrap()), 42);
        assert_eq!(u32::from_le_bytes(r[48..52].try_into().unwrap()), 5);
        assert_eq!(&r[64..70], b"photos");
        assert_eq!(&r[82..87], b"hello");
        assert!(r[87..].iter().all(|&b| b == 0));
    }

    #[test]
    fn round_trip_and_checksum() {
        let r = encode(&header(), &[7u8; 5000], 512);
        assert_eq!(r.len(), 5120);
        let p = parse(&r, 512).unwrap();
        assert_eq!(p.header, header());
        assert_eq!(&r[p.payload.clone()], &[7u8; 5000][..]);
        assert_eq!(p.padded, 5120);
        let mut bad = r.to_vec();
        bad[100] ^= 1;
        assert!(matches!(
            parse(&bad, 512),
            Err(RecordError::Checksum { .. })
        ));
    }

    #[test]
    fn zeros_are_not_a_record_and_short_reads_ask_for_more() {
        assert_eq!(parse(&[0u8; 4096], 4096), Err(RecordError::NotARecord));
        let r = encode(&header(), &[1u8; 9000], 4096);
        assert_eq!(parse(&r[..4096], 4096), Err(RecordError::Truncated(12288)));
    }

    #[test]
    fn rewriting_the_write_seq_keeps_the_record_valid() {
        let r = encode(&header(), b"abc", 4096);
        let moved = rewrite_seq(&r, 99);
        let p = parse(&moved, 4096).unwrap();
        assert_eq!(p.header.write_seq, 99);
        assert_eq!(p.header.seq, 7);
    }

    #[test]
    fn builder_fills_payload_in_place() {
        let mut b = RecordBuilder::new(&header(), 10, 4096);
        assert_eq!(b.remaining(), 10);
        b.payload_mut().put_slice(b"0123");
        assert_eq!(b.remaining(), 6);
        let r = b.finish();
        let p = parse(&r, 4096).unwrap();
        assert_eq!(&r[p.payload], b"0123");
    }
}
