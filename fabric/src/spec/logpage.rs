//! Log pages (NVMe Base 2.0 §5.16.1; NVMe over Fabrics 1.1 §5.3 Discovery Log Page): what a
//! target returns for Get Log Page, and the discovery log a host reads.

use super::opcode::{admin, io};
use super::{get_str, get_u16, get_u64, put_str, put_u16, put_u32, put_u64};

/// Commands Supported and Effects for command set `csi` (LID 05h): which admin and I/O
/// commands exist (CSUPP) and which change logical block content (LBCC).
pub fn commands_effects(csi: u8) -> Vec<u8> {
    const CSUPP: u32 = 1 << 0;
    const LBCC: u32 = 1 << 1;
    let mut b = vec![0u8; 4096];
    for opcode in [
        admin::GET_LOG_PAGE,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
        admin::KEEP_ALIVE,
    ] {
        put_u32(&mut b, 4 * usize::from(opcode), CSUPP);
    }
    let mut io_commands = vec![
        (io::FLUSH, CSUPP),
        (io::WRITE, CSUPP | LBCC),
        (io::READ, CSUPP),
        (io::WRITE_ZEROES, CSUPP | LBCC),
    ];
    if csi == super::opcode::csi::ZNS {
        io_commands.extend([
            (io::ZONE_MGMT_SEND, CSUPP | LBCC),
            (io::ZONE_MGMT_RECV, CSUPP),
            (io::ZONE_APPEND, CSUPP | LBCC),
        ]);
    }
    for (opcode, effects) in io_commands {
        put_u32(&mut b, 1024 + 4 * usize::from(opcode), effects);
    }
    b
}

/// Counters reported in the SMART / Health Information log (LID 02h).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounters {
    /// Bytes read by hosts.
    pub bytes_read: u64,
    /// Bytes written by hosts.
    pub bytes_written: u64,
    /// Read commands.
    pub read_commands: u64,
    /// Write commands (writes and appends).
    pub write_commands: u64,
    /// Commands that failed with a media error.
    pub media_errors: u64,
}

/// Encodes the SMART / Health Information log (512 bytes).
pub fn smart_health(counters: &HealthCounters) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    put_u16(&mut b, 1, 273 + 40); // composite temperature: 40 C in kelvin
    b[3] = 100; // available spare
    b[4] = 10; // spare threshold
    // Data units are thousands of 512-byte units, rounded up.
    let units = |bytes: u64| (bytes / 512).div_ceil(1000);
    put_u64(&mut b, 32, units(counters.bytes_read));
    put_u64(&mut b, 48, units(counters.bytes_written));
    put_u64(&mut b, 64, counters.read_commands);
    put_u64(&mut b, 80, counters.write_commands);
    put_u64(&mut b, 160, counters.media_errors);
    b
}

/// Encodes an empty Changed Namespace List (LID 04h).
pub fn changed_namespaces() -> Vec<u8> {
    vec![0u8; 4096]
}

/// Encodes an Error Information log with no entries (`entries` 64-byte records).
pub fn error_information(entries: usize) -> Vec<u8> {
    vec![0u8; 64 * entries]
}

/// Discovery log page entry subtypes.
pub mod subtype {
    /// An NVM subsystem.
    pub const NVM: u8 = 2;
    /// The current discovery subsystem.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// One Discovery Log Page Entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Subsystem type.
    pub subtype: u8,
    /// Port identifier.
    pub portid: u16,
    /// Admin queue size the host should use.
    pub asqsz: u16,
    /// Transport service identifier (the TCP port).
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Transport address (IP address).
    pub traddr: String,
    /// Address family: 1 IPv4, 2 IPv6.
    pub adrfam: u8,
}

/// Encodes the Discovery log page (LID 70h): a 1024-byte header, then one 1024-byte entry per
/// subsystem (transport TCP, dynamic controllers; SQ flow control disable supported if
/// `sq_flow_control_disable`: a host that reads it asks for it in its Connect, which the
/// target must then grant).
pub fn discovery(
    genctr: u64,
    entries: &[DiscoveryEntry],
    sq_flow_control_disable: bool,
) -> Vec<u8> {
    let mut b = vec![0u8; 1024 * (1 + entries.len())];
    put_u64(&mut b, 0, genctr);
    put_u64(&mut b, 8, entries.len() as u64);
    for (i, e) in entries.iter().enumerate() {
        let at = 1024 * (1 + i);
        b[at] = 3; // TRTYPE TCP
        b[at + 1] = e.adrfam;
        b[at + 2] = e.subtype;
        // TREQ: secure channel not specified; bit 2: SQ flow control disable supported.
        b[at + 3] = if sq_flow_control_disable { 0x04 } else { 0 };
        put_u16(&mut b, at + 4, e.portid);
        put_u16(&mut b, at + 6, 0xFFFF); // CNTLID: dynamic
        put_u16(&mut b, at + 8, e.asqsz);
        put_str(&mut b, at + 32, 32, &e.trsvcid, 0);
        put_str(&mut b, at + 256, 256, &e.subnqn, 0);
        put_str(&mut b, at + 512, 256, &e.traddr, 0);
    }
    b
}

/// Decodes the entries of a Discovery log page (header plus however many entries `b` holds).
/// Entries whose NQN, address or service id hold spaces or control characters are dropped:
/// no valid one does, and a peer's newline must not become a line of a file we write.
pub fn parse_discovery(b: &[u8]) -> Option<(u64, Vec<DiscoveryEntry>)> {
    if b.len() < 1024 {
        return None;
    }
    let genctr = get_u64(b, 0);
    let numrec = get_u64(b, 8) as usize;
    let entries = (0..numrec)
        .map(|i| 1024 * (1 + i))
        .take_while(|&at| at + 1024 <= b.len())
        .map(|at| DiscoveryEntry {
            subtype: b[at + 2],
            adrfam: b[at + 1],
            portid: get_u16(b, at + 4),
            asqsz: get_u16(b, at + 8),
            trsvcid: get_str(b, at + 32, 32),
            subnqn: get_str(b, at + 256, 256),
            traddr: get_str(b, at + 512, 256),
        })
        .filter(|e| {
            let printable = [&e.subnqn, &e.traddr, &e.trsvcid]
                .iter()
                .all(|f| !f.chars().any(|c| c.is_whitespace() || c.is_control()));
            if !printable {
                tracing::warn!(
                    nqn = ?e.subnqn,
                    address = ?e.traddr,
                    "discovery log entry with spaces or control characters left out"
                );
            }
            printable
        })
        .collect();
    Some((genctr, entries))
}

/// Number of records a Discovery log header announces.
pub fn discovery_record_count(b: &[u8]) -> Option<u64> {
    (b.len() >= 16).then(|| get_u64(b, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zns_effects_mark_zone_append_supported() {
        let b = commands_effects(2);
        // Capture: IOCS[0x7D] at 0x5f4, IOCS[0x79] at 0x5e4, ACS[0x06] at 0x18.
        assert_eq!(b[0x5f4] & 1, 1);
        assert_eq!(b[0x5e4] & 1, 1);
        assert_eq!(b[0x18], 1);
        assert_eq!(commands_effects(0)[0x5f4], 0);
    }

    #[test]
    fn discovery_entry_layout_matches_capture() {
        let e = DiscoveryEntry {
            subtype: subtype::CURRENT_DISCOVERY,
            adrfam: 1,
            portid: 1,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: super::super::DISCOVERY_NQN.into(),
            traddr: "10.0.2.15".into(),
        };
        let b = discovery(2, std::slice::from_ref(&e), true);
        assert_eq!(&b[0..16], &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &b[1024..1036],
            &[3, 1, 3, 4, 1, 0, 0xff, 0xff, 0x20, 0, 0, 0]
        );
        assert_eq!(&b[1024 + 32..1024 + 36], b"4420");
        assert_eq!(parse_discovery(&b), Some((2, vec![e.clone()])));
        let forged = DiscoveryEntry {
            subnqn: "nqn.2026-01.io.example:a\nevil 10.0.0.1:4420 nqn.x".into(),
            ..e.clone()
        };
        let b = discovery(3, &[forged, e.clone()], true);
        assert_eq!(parse_discovery(&b), Some((3, vec![e.clone()])));
        // A target that keeps SQ flow control does not say it can be disabled.
        assert_eq!(discovery(2, std::slice::from_ref(&e), false)[1024 + 3], 0);
    }
}
