//! Identify data structures (NVMe Base 2.0 §5.17.2; ZNS 1.1 §4.1.5) built by the target and read
//! back by the host: Identify Controller (CNS 01h), Identify Namespace (CNS 00h), the Active
//! Namespace ID list (CNS 02h), Namespace Identification Descriptors (CNS 03h), the ZNS
//! namespace and controller data (CNS 05h/06h with CSI 02h) and the I/O Command Set data
//! structure (CNS 1Ch). Every structure is 4096 bytes.

use super::{get_str, get_u16, get_u32, get_u64, put_str, put_u16, put_u32, put_u64};
use zns::Geometry;

/// Length of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// CNS values.
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Namespace.
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// I/O Command Set specific Identify Controller.
    pub const CSI_CONTROLLER: u8 = 0x06;
    /// I/O Command Set data structure.
    pub const COMMAND_SET: u8 = 0x1C;
}

/// Kind of controller (CNTRLTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerType {
    /// An I/O controller.
    Io = 1,
    /// A discovery controller.
    Discovery = 2,
}

/// What a target says about a controller in Identify Controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Controller type.
    pub kind: ControllerType,
    /// Controller ID (must equal what Connect returned).
    pub cntlid: u16,
    /// Serial number (20 ASCII characters).
    pub serial: String,
    /// Model number (40 ASCII characters).
    pub model: String,
    /// Firmware revision (8 ASCII characters).
    pub firmware: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Maximum Data Transfer Size as a power of two of 4 KiB pages (0: no limit).
    pub mdts: u8,
    /// Maximum outstanding commands per queue.
    pub maxcmd: u16,
    /// I/O queue command capsule size in 16-byte units (64-byte SQE plus in-capsule data).
    pub ioccsz: u32,
    /// Keep Alive Support granularity in 100 ms units (0 for discovery controllers).
    pub kas: u16,
    /// Number of namespaces.
    pub nn: u32,
    /// Asynchronous events supported (OAES).
    pub oaes: u32,
}

/// Encodes Identify Controller (CNS 01h).
pub fn controller(info: &ControllerInfo) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put_str(&mut b, 4, 20, &info.serial, b' ');
    put_str(&mut b, 24, 40, &info.model, b' ');
    put_str(&mut b, 64, 8, &info.firmware, b' ');
    let io = info.kind == ControllerType::Io;
    // CMIC bit 1: the subsystem may have several controllers (several hosts). No ANA.
    b[76] = if io { 0x02 } else { 0 };
    b[77] = info.mdts;
    put_u16(&mut b, 78, info.cntlid);
    put_u32(&mut b, 80, super::property::VERSION_1_4);
    put_u32(&mut b, 92, info.oaes);
    // CTRATT bit 0: 128-bit host identifier; bit 6: traffic based keep alive.
    put_u32(&mut b, 96, if io { 0x41 } else { 0 });
    b[111] = info.kind as u8;
    if io {
        b[258] = 3; // ACL
        b[259] = 3; // AERL: four outstanding AERs
    }
    // LPA: bit 1 Commands Supported and Effects; bit 2 extended data for Get Log Page.
    b[261] = if io { 0x06 } else { 0x04 };
    b[262] = if io { 0x3F } else { 0 }; // ELPE: 64 error log entries
    put_u16(&mut b, 320, info.kas);
    if io {
        b[512] = 0x66; // SQES
        b[513] = 0x44; // CQES
    }
    put_u16(&mut b, 514, info.maxcmd);
    put_u32(&mut b, 516, info.nn);
    if io {
        put_u16(&mut b, 520, 1 << 3); // ONCS: Write Zeroes
        b[525] = 0x01; // VWC: a volatile write cache, so hosts send Flush
    }
    // SGLS bit 0: SGLs supported; bit 20: SGL offset (in-capsule data).
    put_u32(&mut b, 536, 0x0010_0001);
    put_str(&mut b, 768, 256, &info.subnqn, 0);
    if io {
        put_u32(&mut b, 1792, info.ioccsz);
        put_u32(&mut b, 1796, 1); // IORCSZ
        b[1803] = 1; // MSDBD
    }
    b
}

/// The fields of Identify Controller a host needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSummary {
    /// Controller ID.
    pub cntlid: u16,
    /// MDTS.
    pub mdts: u8,
    /// MAXCMD.
    pub maxcmd: u16,
    /// IOCCSZ.
    pub ioccsz: u32,
    /// ICDOFF.
    pub icdoff: u16,
    /// KAS.
    pub kas: u16,
    /// SGLS.
    pub sgls: u32,
    /// Controller type.
    pub cntrltype: u8,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Serial number.
    pub serial: String,
}

/// Decodes the parts of Identify Controller a host uses.
pub fn parse_controller(b: &[u8]) -> Option<ControllerSummary> {
    (b.len() >= IDENTIFY_LEN).then(|| ControllerSummary {
        cntlid: get_u16(b, 78),
        mdts: b[77],
        maxcmd: get_u16(b, 514),
        ioccsz: get_u32(b, 1792),
        icdoff: get_u16(b, 1800),
        kas: get_u16(b, 320),
        sgls: get_u32(b, 536),
        cntrltype: b[111],
        subnqn: get_str(b, 768, 256),
        serial: get_str(b, 4, 20),
    })
}

fn lbads(block_size: u32) -> u8 {
    block_size.trailing_zeros() as u8
}

/// Encodes Identify Namespace (CNS 00h) for a zoned namespace of `geometry`; `used_blocks` is
/// NUSE.
pub fn namespace(geometry: &Geometry, used_blocks: u64, nguid: [u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let blocks = geometry.total_blocks();
    put_u64(&mut b, 0, blocks); // NSZE
    put_u64(&mut b, 8, blocks); // NCAP
    put_u64(&mut b, 16, used_blocks.min(blocks)); // NUSE
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
    b[30] = 0x01; // NMIC: may be shared by several controllers
    b[33] = 0x01; // DLFEAT: deallocated blocks read as zeros
    b[104..120].copy_from_slice(&nguid);
    // LBAF0: no metadata, LBADS, relative performance best.
    put_u32(&mut b, 128, u32::from(lbads(geometry.block_size)) << 16);
    b
}

/// The fields of Identify Namespace a host needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceSummary {
    /// Namespace size in blocks.
    pub nsze: u64,
    /// Namespace capacity in blocks (0: inactive).
    pub ncap: u64,
    /// Block size in bytes of the formatted LBA format.
    pub block_size: u32,
    /// Metadata bytes per block of the formatted LBA format.
    pub metadata: u16,
    /// Index of the formatted LBA format.
    pub format: usize,
    /// Namespace globally unique identifier (all zeros: not reported).
    pub nguid: [u8; 16],
}

/// Decodes the parts of Identify Namespace a host uses.
pub fn parse_namespace(b: &[u8]) -> Option<NamespaceSummary> {
    if b.len() < IDENTIFY_LEN {
        return None;
    }
    let flbas = b[26];
    let format = usize::from((flbas & 0x0F) | ((flbas >> 5) & 0x3) << 4);
    let lbaf = get_u32(b, 128 + 4 * format);
    let lbads = (lbaf >> 16) & 0xFF;
    if !(9..=16).contains(&lbads) {
        return None;
    }
    Some(NamespaceSummary {
        nsze: get_u64(b, 0),
        ncap: get_u64(b, 8),
        block_size: 1 << lbads,
        metadata: lbaf as u16,
        format,
        nguid: b[104..120].try_into().ok()?,
    })
}

/// Encodes the Active Namespace ID list (CNS 02h): active NSIDs greater than `after`.
pub fn active_namespaces(nsids: &[u32], after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    for (i, nsid) in nsids.iter().filter(|&&n| n > after).take(1024).enumerate() {
        put_u32(&mut b, i * 4, *nsid);
    }
    b
}

/// Decodes an Active Namespace ID list.
pub fn parse_active_namespaces(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .take_while(|&n| n != 0)
        .collect()
}

/// Namespace Identification Descriptor types.
pub mod nidt {
    /// NGUID (16 bytes).
    pub const NGUID: u8 = 0x02;
    /// UUID (16 bytes).
    pub const UUID: u8 = 0x03;
    /// Command Set Identifier (1 byte).
    pub const CSI: u8 = 0x04;
}

/// Encodes the Namespace Identification Descriptor list (CNS 03h): UUID, NGUID and CSI.
pub fn ns_descriptors(uuid: [u8; 16], nguid: [u8; 16], csi: u8) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut at = 0;
    for (kind, value) in [
        (nidt::UUID, &uuid[..]),
        (nidt::NGUID, &nguid[..]),
        (nidt::CSI, &[csi][..]),
    ] {
        b[at] = kind;
        b[at + 1] = value.len() as u8;
        b[at + 4..at + 4 + value.len()].copy_from_slice(value);
        at += 4 + value.len();
    }
    b
}

/// Finds the Command Set Identifier in a descriptor list.
pub fn parse_ns_descriptors_csi(b: &[u8]) -> Option<u8> {
    let mut at = 0;
    while at + 4 <= b.len() {
        let (kind, len) = (b[at], usize::from(b[at + 1]));
        if len == 0 || at + 4 + len > b.len() {
            return None;
        }
        if kind == nidt::CSI {
            return Some(b[at + 4]);
        }
        at += 4 + len;
    }
    None
}

/// Encodes the ZNS I/O Command Set specific Identify Namespace (CNS 05h, CSI 02h).
pub fn zns_namespace(geometry: &Geometry) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put_u16(&mut b, 0, 0); // ZOC: fixed zone capacity, no zone active excursions
    put_u16(&mut b, 2, 0x0001); // OZCS: reads across zone boundaries are allowed (RAZB)
    let limit = |v: Option<u32>| v.map_or(u32::MAX, |n| n - 1);
    put_u32(&mut b, 4, limit(geometry.max_active)); // MAR, 0's based
    put_u32(&mut b, 8, limit(geometry.max_open)); // MOR, 0's based
    put_u64(&mut b, 2816, geometry.zone_size); // LBAFE0.ZSZE
    b
}

/// The fields of the ZNS namespace data a host needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZnsNamespaceSummary {
    /// Zone operation characteristics.
    pub zoc: u16,
    /// Max active zones (`None`: no limit).
    pub max_active: Option<u32>,
    /// Max open zones (`None`: no limit).
    pub max_open: Option<u32>,
    /// Zone size in blocks for LBA format `format`.
    pub zone_size: u64,
}

/// Decodes the ZNS namespace data for LBA format `format`.
pub fn parse_zns_namespace(b: &[u8], format: usize) -> Option<ZnsNamespaceSummary> {
    if b.len() < IDENTIFY_LEN || format >= 64 {
        return None;
    }
    let limit = |v: u32| (v != u32::MAX).then(|| v + 1);
    Some(ZnsNamespaceSummary {
        zoc: get_u16(b, 0),
        max_active: limit(get_u32(b, 4)),
        max_open: limit(get_u32(b, 8)),
        zone_size: get_u64(b, 2816 + 16 * format),
    })
}

/// A limit of `bytes` as ZASL or MDTS give it: a power of two of 4 KiB pages, rounded down (a
/// host then never sends more than the limit).
pub fn pages_log2(bytes: u64) -> u8 {
    (bytes / 4096).max(1).ilog2() as u8
}

/// ZASL for a zone append limit of `bytes`.
pub fn zasl_for(bytes: u64) -> u8 {
    pages_log2(bytes)
}

/// Encodes the ZNS I/O Command Set specific Identify Controller (CNS 06h, CSI 02h): ZASL.
pub fn zns_controller(zasl: u8) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    b[0] = zasl;
    b
}

/// Encodes the I/O Command Set data structure (CNS 1Ch): one combination, NVM and ZNS.
pub fn command_sets() -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put_u64(&mut b, 0, (1 << 0) | (1 << 2));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ControllerInfo {
        ControllerInfo {
            kind: ControllerType::Io,
            cntlid: 1,
            serial: "ca7da2ff35d876bc31ab".into(),
            model: "Zonestore".into(),
            firmware: "0.1.0".into(),
            subnqn: "nqn.2024-01.io.example:zns".into(),
            mdts: 8,
            maxcmd: 1024,
            ioccsz: 0x404,
            kas: 10,
            nn: 1,
            oaes: 0,
        }
    }

    #[test]
    fn identify_controller_has_what_linux_checks() {
        let b = controller(&info());
        assert_eq!(&b[78..80], &[1, 0], "CNTLID at 78");
        assert_eq!(&b[320..322], &[10, 0], "KAS at 320");
        assert_eq!(&b[536..540], &[0x01, 0x00, 0x10, 0x00], "SGLS at 536");
        assert_eq!(&b[1792..1796], &[0x04, 0x04, 0, 0], "IOCCSZ at 1792");
        assert_eq!(&b[1800..1802], &[0, 0], "ICDOFF 0");
        assert_eq!(b[111], 1, "CNTRLTYPE I/O");
        assert_eq!(&b[768..794], b"nqn.2024-01.io.example:zns");
        assert_eq!(&b[4..24], b"ca7da2ff35d876bc31ab");
        let s = parse_controller(&b).unwrap();
        assert_eq!((s.cntlid, s.kas, s.ioccsz, s.maxcmd), (1, 10, 0x404, 1024));
    }

    #[test]
    fn identify_namespace_matches_capture_layout() {
        // Capture: NSZE 0x40000 at 0, LBAF0 = 00 00 0c 00 at 128 (4 KiB, no metadata).
        let g = Geometry::new(16, 64 << 20);
        let b = namespace(&g, 0, [1; 16]);
        assert_eq!(&b[0..8], &0x40000u64.to_le_bytes());
        assert_eq!(&b[128..132], &[0, 0, 0x0c, 0]);
        let s = parse_namespace(&b).unwrap();
        assert_eq!((s.nsze, s.block_size, s.metadata), (0x40000, 4096, 0));
    }

    #[test]
    fn zns_namespace_layout() {
        let mut g = Geometry::new(16, 64 << 20);
        g.max_open = Some(16);
        g.max_active = None;
        let b = zns_namespace(&g);
        assert_eq!(&b[4..8], &[0xff; 4], "MAR unlimited");
        assert_eq!(&b[8..12], &[0x0f, 0, 0, 0], "MOR 0's based");
        assert_eq!(&b[2816..2824], &0x4000u64.to_le_bytes(), "ZSZE of LBAFE0");
        let s = parse_zns_namespace(&b, 0).unwrap();
        assert_eq!(
            (s.max_open, s.max_active, s.zone_size),
            (Some(16), None, 0x4000)
        );
    }

    #[test]
    fn descriptor_list_matches_capture_and_has_csi() {
        let b = ns_descriptors([0xa3; 16], [0x11; 16], 2);
        assert_eq!(&b[0..4], &[0x03, 0x10, 0, 0]);
        assert_eq!(parse_ns_descriptors_csi(&b), Some(2));
    }

    #[test]
    fn zasl_is_log2_of_4k_units() {
        assert_eq!(zasl_for(128 << 10), 5);
        assert_eq!(zasl_for(1 << 20), 8);
        // 12 KiB: 8 KiB (not 0, which means "no limit but MDTS").
        assert_eq!(zasl_for(12 << 10), 1);
        assert_eq!(pages_log2(3 << 20), 9);
    }

    #[test]
    fn active_namespace_list_lists_greater_ids() {
        let b = active_namespaces(&[1, 2], 1);
        assert_eq!(parse_active_namespaces(&b), vec![2]);
    }
}
