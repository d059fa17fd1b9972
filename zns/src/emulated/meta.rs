//! On-disk layout of an emulated drive's zone metadata file (`zns.meta`): a header holding the
//! geometry, then one fixed-size entry per zone holding its state and how many blocks it holds.
//! Each record carries a CRC32 so that damage is detected rather than trusted.
//!
//! ```text
//! header, 4096 bytes (little endian)       zone entry i, 32 bytes at 4096 + 32*i
//!   0  magic "ZSEMUZNS"                        0  state (ZNS encoding)
//!   8  format version (1)                      1  reserved (7 bytes)
//!  12  block size                              8  blocks written from the zone start
//!  16  zone size (blocks)                     16  resets so far
//!  24  zone capacity (blocks)                 24  reserved (4 bytes)
//!  32  zone count                             28  CRC32 of bytes 0..28
//!  36  max open zones (0: unlimited)
//!  40  max active zones (0: unlimited)
//!  44  zone append limit (blocks)
//!  48  reserved (12 bytes)
//!  60  CRC32 of bytes 0..60
//!  64  identity (16 random bytes, set when the drive is created)
//!  80  CRC32 of bytes 64..80
//! ```
//!
//! A header whose identity is all zeros with a zero CRC was written before drives had one: it
//! gets one the next time the drive is opened.

use crate::geometry::Geometry;
use crate::zone::ZoneState;

/// Magic bytes at the start of the metadata file.
pub const MAGIC: &[u8; 8] = b"ZSEMUZNS";
/// Current format version.
pub const VERSION: u32 = 1;
/// Size of the header region.
pub const HEADER_LEN: usize = 4096;
/// Size of one zone entry.
pub const ENTRY_LEN: usize = 32;

/// Byte offset of zone `index`'s entry.
pub fn entry_offset(index: u32) -> u64 {
    HEADER_LEN as u64 + ENTRY_LEN as u64 * u64::from(index)
}

/// Total length of a metadata file for `zone_count` zones.
pub fn file_len(zone_count: u32) -> u64 {
    entry_offset(zone_count)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4-byte slice"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8-byte slice"))
}

/// Encodes the header for `geometry`.
pub fn encode_header(geometry: &Geometry) -> [u8; HEADER_LEN] {
    let mut buf = [0u8; HEADER_LEN];
    buf[0..8].copy_from_slice(MAGIC);
    put_u32(&mut buf, 8, VERSION);
    put_u32(&mut buf, 12, geometry.block_size);
    put_u64(&mut buf, 16, geometry.zone_size);
    put_u64(&mut buf, 24, geometry.zone_capacity);
    put_u32(&mut buf, 32, geometry.zone_count);
    put_u32(&mut buf, 36, geometry.max_open.unwrap_or(0));
    put_u32(&mut buf, 40, geometry.max_active.unwrap_or(0));
    put_u32(&mut buf, 44, geometry.max_append_blocks);
    let crc = crc32fast::hash(&buf[0..60]);
    put_u32(&mut buf, 60, crc);
    buf
}

/// Decodes a header, or says what is wrong with it.
pub fn decode_header(buf: &[u8]) -> Result<Geometry, String> {
    if buf.len() < 64 {
        return Err("metadata header is truncated".into());
    }
    if &buf[0..8] != MAGIC {
        return Err("not a zonestore emulated drive (bad magic)".into());
    }
    if crc32fast::hash(&buf[0..60]) != get_u32(buf, 60) {
        return Err("metadata header checksum mismatch".into());
    }
    let version = get_u32(buf, 8);
    if version != VERSION {
        return Err(format!("unsupported metadata version {version}"));
    }
    let limit = |v: u32| (v != 0).then_some(v);
    let geometry = Geometry {
        block_size: get_u32(buf, 12),
        zone_size: get_u64(buf, 16),
        zone_capacity: get_u64(buf, 24),
        zone_count: get_u32(buf, 32),
        max_open: limit(get_u32(buf, 36)),
        max_active: limit(get_u32(buf, 40)),
        max_append_blocks: get_u32(buf, 44),
    };
    geometry.validate().map_err(|e| e.to_string())?;
    Ok(geometry)
}

/// Where the drive's identity lies in the header.
pub const IDENTITY_AT: usize = 64;

/// Encodes a drive identity with its CRC, to be written at [`IDENTITY_AT`].
pub fn encode_identity(identity: &[u8; 16]) -> [u8; 20] {
    let mut buf = [0u8; 20];
    buf[..16].copy_from_slice(identity);
    let crc = crc32fast::hash(identity);
    put_u32(&mut buf, 16, crc);
    buf
}

/// The identity in a header: `Ok(None)` if the header predates identities (all zeros), an
/// error if it is damaged.
pub fn decode_identity(header: &[u8]) -> Result<Option<[u8; 16]>, String> {
    let Some(raw) = header.get(IDENTITY_AT..IDENTITY_AT + 20) else {
        return Err("metadata header is truncated".into());
    };
    if raw.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let identity: [u8; 16] = raw[..16].try_into().expect("16-byte slice");
    if crc32fast::hash(&identity) != get_u32(raw, 16) {
        return Err("drive identity checksum mismatch".into());
    }
    Ok(Some(identity))
}

/// A fresh identity: 16 bytes no other drive has (hashes keyed from the operating system's
/// randomness, over the time, the process and the drive's directory).
pub fn new_identity(dir: &std::path::Path) -> [u8; 16] {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let hash = std::collections::hash_map::RandomState::new().hash_one((
            i,
            nanos,
            std::process::id(),
            dir,
        ));
        half.copy_from_slice(&hash.to_le_bytes());
    }
    out
}

/// The durable record of one zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneEntry {
    /// State when last persisted.
    pub state: ZoneState,
    /// Blocks of data known durable from the zone start.
    pub written: u64,
    /// How many times the zone has been reset.
    pub resets: u64,
}

impl ZoneEntry {
    /// An empty zone that was never reset.
    pub const EMPTY: ZoneEntry = ZoneEntry {
        state: ZoneState::Empty,
        written: 0,
        resets: 0,
    };
}

/// Encodes one zone entry.
pub fn encode_entry(entry: &ZoneEntry) -> [u8; ENTRY_LEN] {
    let mut buf = [0u8; ENTRY_LEN];
    buf[0] = entry.state.code();
    put_u64(&mut buf, 8, entry.written);
    put_u64(&mut buf, 16, entry.resets);
    let crc = crc32fast::hash(&buf[0..28]);
    put_u32(&mut buf, 28, crc);
    buf
}

/// Decodes one zone entry, or says what is wrong with it.
pub fn decode_entry(buf: &[u8]) -> Result<ZoneEntry, String> {
    if buf.len() < ENTRY_LEN {
        return Err("zone entry is truncated".into());
    }
    if crc32fast::hash(&buf[0..28]) != get_u32(buf, 28) {
        return Err("zone entry checksum mismatch".into());
    }
    let state =
        ZoneState::from_code(buf[0]).ok_or_else(|| format!("unknown zone state {:#x}", buf[0]))?;
    Ok(ZoneEntry {
        state,
        written: get_u64(buf, 8),
        resets: get_u64(buf, 16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_round_trip() {
        let g = Geometry::new(8, 1 << 20);
        let buf = encode_header(&g);
        assert_eq!(&buf[0..8], b"ZSEMUZNS");
        assert_eq!(u32::from_le_bytes(buf[12..16].try_into().unwrap()), 4096);
        assert_eq!(u32::from_le_bytes(buf[32..36].try_into().unwrap()), 8);
        assert_eq!(decode_header(&buf).unwrap(), g);
    }

    #[test]
    fn corrupted_header_is_rejected() {
        let mut buf = encode_header(&Geometry::new(8, 1 << 20));
        buf[20] ^= 1;
        assert!(decode_header(&buf).unwrap_err().contains("checksum"));
    }

    #[test]
    fn entry_round_trip_and_corruption() {
        let e = ZoneEntry {
            state: ZoneState::Full,
            written: 77,
            resets: 3,
        };
        let mut buf = encode_entry(&e);
        assert_eq!(buf[0], 0xE);
        assert_eq!(decode_entry(&buf).unwrap(), e);
        buf[9] ^= 0x80;
        assert!(decode_entry(&buf).is_err());
    }
}
