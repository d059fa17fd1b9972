//! The on-drive record format: every byte Zonestore writes to a zone is part of a record, a
//! self-describing header followed by a payload and zero padding to the block size. A scan of
//! the zones alone can rebuild the whole index from these records.
//!
//! ```text
//! header, little endian (64 bytes fixed, then the bucket and key, then the chunk table):
//!   0  magic "ZSR1"            24  write_seq u64  when this copy was written (GC bumps it)
//!   4  format version u8 (1)   32  id u64         data: stream; commit: version; upload/part: upload
//!   5  kind u8                 40  offset u64     data: offset in the stream; part: part number
//!   6  flags u16 (1: chunked)  48  length u32     payload bytes
//!   8  header_len u16          52  crc32 u32      chunked: CRC32 of the header (this field zero);
//!  10  bucket_len u16                             else: of header (this field zero) + payload
//!  12  key_len u16             56  chunk_shift u8 chunked: log2 of the payload chunk size
//!  14  replaces u16           57  replaced_at (7 bytes: u56)
//!  16  seq u64                 64  bucket bytes, then key bytes
//! chunked: then the chunk table, a CRC32 u32 per payload chunk (slots beyond the payload zero);
//! then the payload, then zeros up to a whole number of blocks.
//! ```
//!
//! `replaces` is 0, or 1 + the id of a drive whose copy of the record this copy was made to
//! replace (repair making again a copy on a lost drive, a drain moving one off its drive), and
//! `replaced_at` this copy's `write_seq` when it was made (GC's later moves of it keep both): a
//! copy found on that drive written before, should the drive come back, is no longer a copy.
//! Every copy repair or scrub makes gets a new `write_seq`, so a later one there is newer.
//!
//! Records are written chunked: a read of part of a large record reads its header and the
//! chunks it needs, and checks just those. Records without the flag (written before it existed)
//! carry one CRC over everything and are read whole.

use bytes::{BufMut, Bytes, BytesMut};

/// Magic bytes at the start of every record.
pub const MAGIC: &[u8; 4] = b"ZSR1";
/// Current record format version.
pub const VERSION: u8 = 1;
/// Length of the fixed part of the header.
pub const FIXED_HEADER: usize = 64;
/// The largest sequence number (and id) a record may carry: far beyond what any store hands
/// out, and below the allocator's own ceiling ([`crate::engine::seq`]) by more than a rebuild's
/// margin and a lease, so that a record taken never stops the allocator.
pub const MAX_SEQ: u64 = 1 << 61;
/// Header flag: the header holds a CRC per payload chunk, and its own CRC covers it alone.
pub const FLAG_CHUNKED: u16 = 1;
/// log2 of the payload bytes each chunk CRC covers.
const CHUNK_SHIFT: u8 = 14;
/// Payload bytes each chunk CRC covers: the unit a partial read reads and checks.
pub const CHUNK: usize = 1 << CHUNK_SHIFT;
/// Longest bucket name plus longest key (S3's limits), for bounding a header's length.
const MAX_NAMES: usize = 63 + 1024;

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
    /// The copy this copy was made to replace, if it was made to replace one on another drive.
    pub replaces: Option<Replaced>,
}

/// A copy of a record that another copy was made to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// The drive it is on.
    pub drive: u16,
    /// The replacing copy's `write_seq` when it was made: a copy on `drive` written before
    /// that is the one replaced.
    pub at: u64,
}

/// Largest `replaced_at` the header holds (56 bits).
const REPLACED_AT_MAX: u64 = (1 << 56) - 1;

impl Header {
    /// The upload an Upload, UploadEnd or Part record belongs to. (UploadEnd records written
    /// before this was fixed carry the upload in `offset` and their own sequence number in
    /// `id`; a current one has offset 0, and an upload id is never 0.)
    pub fn upload_id(&self) -> u64 {
        if self.kind == Kind::UploadEnd && self.offset != 0 {
            self.offset
        } else {
            self.id
        }
    }
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
        /// Bytes the record occupies (to skip over it): its header has a CRC of its own that
        /// matched, so its length field is right.
        padded: usize,
    },
    /// The header's own checksum does not match: the record is damaged, and where it ends
    /// cannot be known (its length field is as suspect as the rest), so nothing after it in
    /// the zone can be found by skipping it.
    #[error("record header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the header bytes read.
        computed: u32,
    },
}

impl RecordError {
    /// Whether the bytes are a record whose checksum shows it damaged (a CRC error to count).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            RecordError::Checksum { .. } | RecordError::HeaderChecksum { .. }
        )
    }
}

/// Bytes of a header with these names and a chunk table for `capacity` payload bytes.
fn header_len(bucket: &str, key: &str, capacity: usize) -> usize {
    FIXED_HEADER + bucket.len() + key.len() + 4 * capacity.div_ceil(CHUNK)
}

/// Most payload one record carries, whatever the drive allows (its header length, chunk table
/// included, must fit 16 bits).
const MAX_PAYLOAD: usize = 64 << 20;

/// The most payload a record for `bucket`/`key` can carry within `limit` bytes, header and
/// chunk table included (at least 1, at most 64 MiB).
pub fn payload_capacity(bucket: &str, key: &str, limit: usize) -> usize {
    let limit = limit.min(MAX_PAYLOAD);
    let room = limit.saturating_sub(FIXED_HEADER + bucket.len() + key.len());
    room.saturating_sub(4 * room.div_ceil(CHUNK)).max(1)
}

/// The longest header a record of `record_bytes` (on the drive) can have: reading this much
/// from its start is enough to read its header.
pub fn header_bound(record_bytes: usize) -> usize {
    FIXED_HEADER + MAX_NAMES + 4 * record_bytes.div_ceil(CHUNK)
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
        let header_len = header_len(&header.bucket, &header.key, capacity);
        debug_assert!(header_len <= usize::from(u16::MAX), "header too long");
        let mut buf = BytesMut::with_capacity(padded_len(header_len, capacity, block_size));
        buf.put_slice(MAGIC);
        buf.put_u8(VERSION);
        buf.put_u8(header.kind as u8);
        buf.put_u16_le(FLAG_CHUNKED);
        buf.put_u16_le(header_len as u16);
        buf.put_u16_le(header.bucket.len() as u16);
        buf.put_u16_le(header.key.len() as u16);
        buf.put_u16_le(replaces_field(header.replaces.map(|r| r.drive)));
        buf.put_u64_le(header.seq);
        buf.put_u64_le(header.write_seq);
        buf.put_u64_le(header.id);
        buf.put_u64_le(header.offset);
        buf.put_u32_le(0); // length, set by finish
        buf.put_u32_le(0); // crc, set by finish
        buf.put_u8(CHUNK_SHIFT);
        buf.put_slice(&replaced_at_field(header.replaces));
        buf.put_slice(header.bucket.as_bytes());
        buf.put_slice(header.key.as_bytes());
        buf.resize(header_len, 0); // the chunk table, set by finish
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

    /// Sets length, chunk CRCs and header CRC, pads to the block size and returns the record.
    pub fn finish(mut self) -> Bytes {
        debug_assert!(
            self.payload_len() <= self.capacity,
            "payload beyond capacity"
        );
        let length = self.payload_len() as u32;
        self.buf[48..52].copy_from_slice(&length.to_le_bytes());
        let table = self.header_len - 4 * self.capacity.div_ceil(CHUNK);
        let (head, payload) = self.buf.split_at_mut(self.header_len);
        for (slot, chunk) in head[table..].chunks_exact_mut(4).zip(payload.chunks(CHUNK)) {
            slot.copy_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        }
        let crc = crc32fast::hash(head);
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

/// The fixed part of a header, checked for consistency.
struct Fixed {
    kind: Kind,
    header_len: usize,
    bucket_len: usize,
    key_len: usize,
    length: usize,
    stored: u32,
    /// Chunked records: the chunk size.
    chunk: Option<usize>,
}

impl Fixed {
    fn decode(bytes: &[u8]) -> Result<Fixed, RecordError> {
        if bytes.len() < FIXED_HEADER || &bytes[0..4] != MAGIC {
            return Err(RecordError::NotARecord);
        }
        if bytes[4] != VERSION {
            return Err(RecordError::Malformed(format!(
                "format version {}",
                bytes[4]
            )));
        }
        let kind = Kind::from_code(bytes[5])
            .ok_or_else(|| RecordError::Malformed(format!("kind {}", bytes[5])))?;
        let flags = u16_at(bytes, 6);
        if flags & !FLAG_CHUNKED != 0 {
            return Err(RecordError::Malformed(format!("flags {flags:#x}")));
        }
        let header_len = usize::from(u16_at(bytes, 8));
        let bucket_len = usize::from(u16_at(bytes, 10));
        let key_len = usize::from(u16_at(bytes, 12));
        let length = u32_at(bytes, 48) as usize;
        if length > MAX_PAYLOAD {
            return Err(RecordError::Malformed(format!("payload length {length}")));
        }
        // Sequence numbers are handed out from 1 up: one near the top of u64 (a header of
        // hostile or damaged bytes whose CRC holds) would send the allocator past its end.
        for (at, field) in [(16, "sequence number"), (24, "write sequence"), (32, "id")] {
            let value = u64_at(bytes, at);
            if value > MAX_SEQ {
                return Err(RecordError::Malformed(format!("{field} {value}")));
            }
        }
        let names_end = FIXED_HEADER + bucket_len + key_len;
        let chunk = if flags & FLAG_CHUNKED != 0 {
            let shift = bytes[56];
            if !(9..=24).contains(&shift) {
                return Err(RecordError::Malformed(format!("chunk shift {shift}")));
            }
            let chunk = 1usize << shift;
            let table = header_len.checked_sub(names_end).unwrap_or(usize::MAX);
            if !table.is_multiple_of(4) || table / 4 < length.div_ceil(chunk) {
                return Err(RecordError::Malformed(format!(
                    "header length {header_len} for {length} payload bytes"
                )));
            }
            Some(chunk)
        } else {
            if header_len != names_end {
                return Err(RecordError::Malformed(format!(
                    "header length {header_len}"
                )));
            }
            None
        };
        Ok(Fixed {
            kind,
            header_len,
            bucket_len,
            key_len,
            length,
            stored: u32_at(bytes, 52),
            chunk,
        })
    }

    fn padded(&self, block_size: usize) -> usize {
        padded_len(self.header_len, self.length, block_size)
    }

    /// The header fields (`bytes` holds at least the whole header).
    fn header(&self, bytes: &[u8]) -> Result<Header, RecordError> {
        let text = |range: std::ops::Range<usize>| {
            String::from_utf8(bytes[range].to_vec())
                .map_err(|_| RecordError::Malformed("name is not UTF-8".into()))
        };
        let bucket_end = FIXED_HEADER + self.bucket_len;
        Ok(Header {
            kind: self.kind,
            seq: u64_at(bytes, 16),
            write_seq: u64_at(bytes, 24),
            id: u64_at(bytes, 32),
            offset: u64_at(bytes, 40),
            bucket: text(FIXED_HEADER..bucket_end)?,
            key: text(bucket_end..bucket_end + self.key_len)?,
            replaces: u16_at(bytes, 14).checked_sub(1).map(|drive| Replaced {
                drive,
                at: u64_at(bytes, 56) >> 8,
            }),
        })
    }

    /// Checks the CRC of a chunked record's header (`bytes` holds at least the header).
    fn check_header(&self, bytes: &[u8]) -> Result<(), RecordError> {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[..52]);
        hasher.update(&[0u8; 4]);
        hasher.update(&bytes[56..self.header_len]);
        let computed = hasher.finalize();
        if computed == self.stored {
            Ok(())
        } else {
            Err(RecordError::HeaderChecksum {
                stored: self.stored,
                computed,
            })
        }
    }

    fn compare(&self, stored: u32, computed: u32, block_size: usize) -> Result<(), RecordError> {
        if stored == computed {
            Ok(())
        } else {
            Err(RecordError::Checksum {
                stored,
                computed,
                padded: self.padded(block_size),
            })
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at the start of `bytes`, verifying its checksums.
pub fn parse(bytes: &[u8], block_size: usize) -> Result<Parsed, RecordError> {
    let fixed = Fixed::decode(bytes)?;
    if fixed.chunk.is_some() {
        // The header first: a length from a damaged header must not have the caller read on
        // (and buffer) to wherever it points.
        if bytes.len() < fixed.header_len {
            return Err(RecordError::Truncated(fixed.header_len));
        }
        fixed.check_header(bytes)?;
    }
    let total = fixed.header_len + fixed.length;
    if bytes.len() < total {
        return Err(RecordError::Truncated(fixed.padded(block_size)));
    }
    match fixed.chunk {
        Some(chunk) => {
            let slots = &bytes[fixed.header_len - 4 * slot_count(&fixed)..fixed.header_len];
            let payload = &bytes[fixed.header_len..total];
            for (slot, data) in slots.chunks_exact(4).zip(payload.chunks(chunk)) {
                let stored = u32::from_le_bytes(slot.try_into().expect("4 bytes"));
                fixed.compare(stored, crc32fast::hash(data), block_size)?;
            }
        }
        None => {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&bytes[..52]);
            hasher.update(&[0u8; 4]);
            hasher.update(&bytes[56..total]);
            let computed = hasher.finalize();
            // One CRC over header and payload: a mismatch may be in the length field, so where
            // the record ends is unknown (skipping by that length could land in a payload).
            if computed != fixed.stored {
                return Err(RecordError::HeaderChecksum {
                    stored: fixed.stored,
                    computed,
                });
            }
        }
    }
    Ok(Parsed {
        header: fixed.header(bytes)?,
        payload: fixed.header_len..total,
        padded: fixed.padded(block_size),
        crc: fixed.stored,
    })
}

/// Number of chunk CRC slots in a chunked header.
fn slot_count(fixed: &Fixed) -> usize {
    (fixed.header_len - FIXED_HEADER - fixed.bucket_len - fixed.key_len) / 4
}

/// A chunked record's header, read and checked on its own: enough to read and check any part
/// of the payload without the rest.
#[derive(Debug, Clone)]
pub struct HeaderView {
    /// The header fields.
    pub header: Header,
    /// Where the payload starts in the record.
    pub header_len: usize,
    /// Payload bytes.
    pub length: usize,
    chunk: usize,
    table: Vec<u32>,
}

/// Decodes and checks the header at the start of `bytes` (which need not hold the payload).
/// `Ok(None)`: the record is not chunked, so it can only be checked whole.
pub fn parse_header(bytes: &[u8], block_size: usize) -> Result<Option<HeaderView>, RecordError> {
    let fixed = Fixed::decode(bytes)?;
    let Some(chunk) = fixed.chunk else {
        return Ok(None);
    };
    if bytes.len() < fixed.header_len {
        return Err(RecordError::Truncated(fixed.padded(block_size)));
    }
    fixed.check_header(bytes)?;
    let slots = slot_count(&fixed);
    let table = bytes[fixed.header_len - 4 * slots..fixed.header_len]
        .chunks_exact(4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .collect();
    Ok(Some(HeaderView {
        header: fixed.header(bytes)?,
        header_len: fixed.header_len,
        length: fixed.length,
        chunk,
        table,
    }))
}

impl HeaderView {
    /// Payload bytes each chunk CRC covers in this record.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The payload range of the whole chunks that cover `want` (a payload range).
    pub fn chunks_covering(&self, want: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let start = want.start / self.chunk * self.chunk;
        let end = (want.end.div_ceil(self.chunk) * self.chunk).min(self.length);
        start..end
    }

    /// Checks `data`, the payload bytes of `chunks` (a range [`HeaderView::chunks_covering`]
    /// gave), against the chunk CRCs.
    pub fn check(&self, chunks: &std::ops::Range<usize>, data: &[u8]) -> Result<(), RecordError> {
        if !chunks.start.is_multiple_of(self.chunk)
            || chunks.end > self.length
            || data.len() != chunks.len()
        {
            return Err(RecordError::Malformed(format!(
                "{} bytes for payload chunks {chunks:?}",
                data.len()
            )));
        }
        let first = chunks.start / self.chunk;
        for (i, piece) in data.chunks(self.chunk).enumerate() {
            let stored = self.table.get(first + i).copied().unwrap_or_default();
            let computed = crc32fast::hash(piece);
            if stored != computed {
                return Err(RecordError::Checksum {
                    stored,
                    computed,
                    padded: 0,
                });
            }
        }
        Ok(())
    }
}

/// Gives a record a new `write_seq` (a relocated copy), recomputing its CRC.
#[cfg(test)]
pub fn rewrite_seq(record: &[u8], write_seq: u64) -> Bytes {
    let mut buf = BytesMut::new();
    append_rewritten(record, write_seq, &mut buf);
    buf.freeze()
}

/// The `replaces` field's value for `drive` (0: none; a drive id too large to say is none).
pub(crate) fn replaces_field(drive: Option<u16>) -> u16 {
    drive.and_then(|d| d.checked_add(1)).unwrap_or(0)
}

/// The 7 bytes of `replaced_at` (zero when nothing is replaced).
fn replaced_at_field(replaces: Option<Replaced>) -> [u8; 7] {
    let at = replaces.map_or(0, |r| r.at.min(REPLACED_AT_MAX));
    let mut field = [0u8; 7];
    field.copy_from_slice(&at.to_le_bytes()[..7]);
    field
}

/// Appends to `out` a copy of `record` with a new `write_seq` (a relocated copy), its CRC
/// recomputed. What the record says it replaces stays.
pub fn append_rewritten(record: &[u8], write_seq: u64, out: &mut BytesMut) {
    rewrite_into(record, write_seq, None, out);
}

/// A new copy of `record` (repair's, scrub's) with a new `write_seq`, made to replace the copy
/// on drive `replaces` if given (see the module's `replaces`), its CRC recomputed.
pub fn new_copy(record: &[u8], write_seq: u64, replaces: Option<u16>) -> Bytes {
    let mut out = BytesMut::with_capacity(record.len());
    let replaced = replaces.map(|drive| Replaced {
        drive,
        at: write_seq,
    });
    rewrite_into(record, write_seq, replaced, &mut out);
    out.freeze()
}

fn rewrite_into(record: &[u8], write_seq: u64, replaces: Option<Replaced>, out: &mut BytesMut) {
    let start = out.len();
    out.extend_from_slice(record);
    let buf = &mut out[start..];
    buf[24..32].copy_from_slice(&write_seq.to_le_bytes());
    if replaces.is_some() {
        buf[14..16].copy_from_slice(&replaces_field(replaces.map(|r| r.drive)).to_le_bytes());
        buf[57..64].copy_from_slice(&replaced_at_field(replaces));
    }
    buf[52..56].fill(0);
    let header_len = usize::from(u16_at(buf, 8));
    let covered = if u16_at(buf, 6) & FLAG_CHUNKED != 0 {
        header_len
    } else {
        header_len + u32_at(buf, 48) as usize
    };
    let crc = crc32fast::hash(&buf[..covered]);
    buf[52..56].copy_from_slice(&crc.to_le_bytes());
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
            replaces: None,
        }
    }

    #[test]
    fn an_upload_end_names_its_upload_in_either_layout() {
        let end = |id, offset| Header {
            kind: Kind::UploadEnd,
            id,
            offset,
            ..header()
        };
        assert_eq!(end(77, 0).upload_id(), 77, "upload in id, offset 0");
        assert_eq!(
            end(90, 77).upload_id(),
            77,
            "records written before: upload in offset"
        );
        let part = Header {
            kind: Kind::Part,
            id: 77,
            offset: 3,
            ..header()
        };
        assert_eq!(part.upload_id(), 77, "a part's offset is its number");
    }

    /// A header whose numbers lie past any the store hands out (bytes whose CRC holds, yet
    /// hostile or damaged) is refused: taken, it would send the sequence allocator past u64.
    #[test]
    fn numbers_past_the_largest_sequence_are_malformed() {
        for h in [
            Header {
                seq: MAX_SEQ + 1,
                ..header()
            },
            Header {
                write_seq: u64::MAX,
                ..header()
            },
            Header {
                id: u64::MAX - 1,
                ..header()
            },
        ] {
            let r = encode(&h, b"hello", 4096);
            assert!(
                matches!(parse(&r, 4096), Err(RecordError::Malformed(_))),
                "{h:?}"
            );
        }
        let at_most = Header {
            seq: MAX_SEQ,
            write_seq: MAX_SEQ,
            id: MAX_SEQ,
            ..header()
        };
        assert!(parse(&encode(&at_most, b"hello", 4096), 4096).is_ok());
    }

    #[test]
    fn layout_follows_the_documented_offsets() {
        let r = encode(&header(), b"hello", 4096);
        assert_eq!(r.len(), 4096);
        assert_eq!(&r[0..4], b"ZSR1");
        assert_eq!(r[4], 1);
        assert_eq!(r[5], Kind::Data as u8);
        assert_eq!(u16::from_le_bytes([r[6], r[7]]), FLAG_CHUNKED);
        // Fixed part, names, one chunk CRC slot.
        assert_eq!(u16::from_le_bytes([r[8], r[9]]) as usize, 64 + 6 + 12 + 4);
        assert_eq!(u64::from_le_bytes(r[16..24].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(r[32..40].try_into().unwrap()), 42);
        assert_eq!(u32::from_le_bytes(r[48..52].try_into().unwrap()), 5);
        assert_eq!(r[56], 14, "16 KiB chunks");
        assert_eq!(&r[64..70], b"photos");
        assert_eq!(
            u32::from_le_bytes(r[82..86].try_into().unwrap()),
            crc32fast::hash(b"hello")
        );
        let mut header = r[..86].to_vec();
        header[52..56].fill(0);
        assert_eq!(
            u32::from_le_bytes(r[52..56].try_into().unwrap()),
            crc32fast::hash(&header)
        );
        assert_eq!(&r[86..91], b"hello");
        assert!(r[91..].iter().all(|&b| b == 0));
    }

    /// A record as written before chunk CRCs: one CRC over header and payload.
    fn legacy(header: &Header, payload: &[u8], block_size: usize) -> Vec<u8> {
        let mut r = encode(header, payload, block_size).to_vec();
        let old_len = 64 + header.bucket.len() + header.key.len();
        let table = u16::from_le_bytes([r[8], r[9]]) as usize - old_len;
        r.drain(old_len..old_len + table);
        r[6..8].fill(0);
        r[8..10].copy_from_slice(&(old_len as u16).to_le_bytes());
        r[52..57].fill(0);
        let crc = crc32fast::hash(&r[..old_len + payload.len()]);
        r[52..56].copy_from_slice(&crc.to_le_bytes());
        r.resize(padded_len(old_len, payload.len(), block_size), 0);
        r
    }

    #[test]
    fn records_written_before_chunk_crcs_still_read() {
        let payload = vec![5u8; 40_000];
        let r = legacy(&header(), &payload, 4096);
        let p = parse(&r, 4096).unwrap();
        assert_eq!(p.header, header());
        assert_eq!(&r[p.payload.clone()], &payload[..]);
        assert!(parse_header(&r, 4096).unwrap().is_none(), "read whole");
        let moved = rewrite_seq(&r, 77);
        assert_eq!(parse(&moved, 4096).unwrap().header.write_seq, 77);
        // Damage anywhere in such a record leaves its end unknown (one CRC covers the length
        // field too): it is not skipped by its length.
        let mut bad = r.clone();
        bad[30_000] ^= 4;
        assert!(matches!(
            parse(&bad, 4096),
            Err(RecordError::HeaderChecksum { .. })
        ));
    }

    #[test]
    fn part_of_a_record_is_read_and_checked_alone() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let r = encode(&header(), &payload, 4096);
        let view = parse_header(&r[..4096], 4096).unwrap().unwrap();
        assert_eq!(view.header, header());
        assert_eq!(view.length, payload.len());
        let chunks = view.chunks_covering(&(50_000..50_100));
        assert_eq!(chunks, 49_152..65_536);
        let at = |c: &std::ops::Range<usize>| view.header_len + c.start..view.header_len + c.end;
        view.check(&chunks, &r[at(&chunks)]).unwrap();
        // The last chunk is short.
        let tail = view.chunks_covering(&(99_000..100_000));
        assert_eq!(tail, 98_304..100_000);
        view.check(&tail, &r[at(&tail)]).unwrap();
        // Damage elsewhere does not matter; damage inside is caught.
        let mut bad = r.to_vec();
        bad[view.header_len + 10] ^= 1;
        view.check(&chunks, &bad[at(&chunks)]).unwrap();
        bad[view.header_len + 50_050] ^= 1;
        assert!(matches!(
            view.check(&chunks, &bad[at(&chunks)]),
            Err(RecordError::Checksum { .. })
        ));
        // So is damage to the header (and its chunk table), told apart: the record's end is
        // then unknown.
        let mut bad = r.to_vec();
        bad[view.header_len - 2] ^= 1;
        assert!(matches!(
            parse_header(&bad, 4096),
            Err(RecordError::HeaderChecksum { .. })
        ));
        assert!(matches!(
            parse(&bad, 4096),
            Err(RecordError::HeaderChecksum { .. })
        ));
        // A header longer than the bytes given asks for more.
        assert!(matches!(
            parse_header(&r[..80], 4096),
            Err(RecordError::Truncated(_))
        ));
    }

    #[test]
    fn a_damaged_length_is_caught_before_the_bytes_it_names_are_asked_for() {
        let r = encode(&header(), &[3u8; 5000], 4096);
        // A flipped bit makes the payload 8 KiB longer (its chunk table still covers it):
        // the header's CRC says so at once, rather than the parser asking its caller to read
        // (and buffer) what the length names.
        let mut bad = r.to_vec();
        bad[49] ^= 0x20;
        assert!(matches!(
            parse(&bad, 4096),
            Err(RecordError::HeaderChecksum { .. })
        ));
        assert!(parse(&bad, 4096).unwrap_err().is_damage());
        // A length no record can have is not a record, whatever its CRC says.
        let mut huge = r.to_vec();
        huge[51] = 0xff;
        assert!(matches!(parse(&huge, 4096), Err(RecordError::Malformed(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any part of any record reads back through its header and covering chunks, and a
        /// flipped bit anywhere in the header or those chunks is caught.
        #[test]
        fn any_part_reads_back_checked(
            len in 1usize..150_000,
            small_blocks in proptest::bool::ANY,
            a in 0usize..150_000,
            b in 0usize..150_000,
            flip in 0usize..200_000,
        ) {
            let block = if small_blocks { 512 } else { 4096 };
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let r = encode(&header(), &payload, block);
            let (x, y) = (a % len, b % len);
            let (lo, hi) = (x.min(y), x.max(y) + 1);
            let head = &r[..header_bound(r.len()).min(r.len())];
            let view = parse_header(head, block).unwrap().unwrap();
            let chunks = view.chunks_covering(&(lo..hi));
            let at = view.header_len + chunks.start..view.header_len + chunks.end;
            view.check(&chunks, &r[at.clone()]).unwrap();
            let want = view.header_len + lo..view.header_len + hi;
            proptest::prop_assert_eq!(&r[want], &payload[lo..hi]);
            let mut bad = r.to_vec();
            let spot = flip % bad.len();
            bad[spot] ^= 1;
            let in_header = spot < view.header_len;
            let in_chunks = at.contains(&spot);
            if in_header {
                proptest::prop_assert!(parse_header(&bad, block).is_err());
            } else if in_chunks {
                proptest::prop_assert!(view.check(&chunks, &bad[at.clone()]).is_err());
            }
            if spot < view.header_len + len {
                proptest::prop_assert!(parse(&bad, block).is_err());
            }
        }
    }

    #[test]
    fn capacity_keeps_records_within_the_limit() {
        for limit in [8192usize, 65_536, 1 << 20, (1 << 20) + 4096] {
            for key in ["k", &"x".repeat(1024)] {
                let capacity = payload_capacity("bucket", key, limit);
                let h = Header {
                    key: key.to_string(),
                    ..header()
                };
                let mut b = RecordBuilder::new(&h, capacity, 4096);
                b.payload_mut().put_bytes(1, capacity);
                let r = b.finish();
                assert!(r.len() <= limit, "{} > {limit}", r.len());
                assert!(
                    r.len() + 4096 + 4 * 4096 > limit,
                    "capacity {capacity} wastes room"
                );
                assert!(
                    parse_header(&r[..header_bound(r.len()).min(r.len())], 4096)
                        .unwrap()
                        .is_some()
                );
            }
        }
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
        assert_eq!(p.header.replaces, None);
    }

    /// A copy made in place of another drive's says which, at offset 14; GC's later moves of
    /// it keep saying so.
    #[test]
    fn a_replacing_copy_names_the_drive_it_replaced() {
        let r = encode(&header(), b"abc", 4096);
        assert_eq!(u16_at(&r, 14), 0);
        let copy = new_copy(&r, 120, Some(2));
        assert_eq!(u16_at(&copy, 14), 3);
        let replaced = Some(Replaced { drive: 2, at: 120 });
        let p = parse(&copy, 4096).unwrap();
        assert_eq!((p.header.write_seq, p.header.replaces), (120, replaced));
        let moved = rewrite_seq(&copy, 130);
        let p = parse(&moved, 4096).unwrap();
        assert_eq!((p.header.write_seq, p.header.replaces), (130, replaced));
        assert_eq!(p.header.seq, 7, "the fields around it are whole");
        let plain = parse(&new_copy(&r, 140, None), 4096).unwrap().header;
        assert_eq!((plain.write_seq, plain.replaces), (140, None));
        let made = encode(
            &Header {
                replaces: Some(Replaced {
                    drive: 0,
                    at: REPLACED_AT_MAX,
                }),
                ..header()
            },
            b"abc",
            4096,
        );
        let p = parse(&made, 4096).unwrap();
        assert_eq!(
            p.header.replaces,
            Some(Replaced {
                drive: 0,
                at: REPLACED_AT_MAX
            })
        );
        assert_eq!(p.header.bucket, header().bucket);
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
