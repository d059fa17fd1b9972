//! The Report Zones data structure of Zone Management Receive (ZNS 1.1 §3.4.2.2): a 64-byte
//! header whose first 8 bytes count zones, then 64-byte zone descriptors.
//!
//! ```text
//! descriptor: 0 ZT (bits 3:0, 2h = sequential write required) | 1 ZS (bits 7:4) | 2 ZA
//!             8 ZCAP u64 | 16 ZSLBA u64 | 24 WP u64 | 32..64 reserved
//! ```

use super::{get_u64, put_u64};
use zns::{ZoneDescriptor, ZoneReport, ZoneState};

/// Length of the report header and of each descriptor.
pub const ENTRY_LEN: usize = 64;
/// Zone type: sequential write required.
pub const ZONE_TYPE_SWR: u8 = 0x2;

/// Zone Management Receive actions (cdw13 bits 7:0).
pub mod zra {
    /// Report Zones.
    pub const REPORT_ZONES: u8 = 0x00;
}

/// How many descriptors fit in a buffer of `len` bytes.
pub fn capacity(len: usize) -> usize {
    len.saturating_sub(ENTRY_LEN) / ENTRY_LEN
}

/// Encodes a report into exactly `len` bytes. With `partial`, the count is the number of
/// descriptors returned; without, the number of zones that matched.
pub fn encode_report(report: &ZoneReport, partial: bool, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(ENTRY_LEN)];
    let count = if partial {
        report.zones.len() as u64
    } else {
        report.matching
    };
    put_u64(&mut b, 0, count);
    for (i, zone) in report.zones.iter().take(capacity(len)).enumerate() {
        let at = ENTRY_LEN * (1 + i);
        b[at] = ZONE_TYPE_SWR;
        b[at + 1] = zone.state.code() << 4;
        put_u64(&mut b, at + 8, zone.zcap);
        put_u64(&mut b, at + 16, zone.zslba);
        put_u64(&mut b, at + 24, zone.wp);
    }
    b.truncate(len);
    b
}

/// Decodes a report buffer. The count becomes `matching` (with the partial bit it equals the
/// descriptors returned); descriptors are read up to the count or what the buffer holds.
pub fn decode_report(b: &[u8]) -> Result<ZoneReport, String> {
    if b.len() < ENTRY_LEN {
        return Err(format!(
            "zone report of {} bytes is shorter than its header",
            b.len()
        ));
    }
    let count = get_u64(b, 0);
    let present = count.min(capacity(b.len()) as u64) as usize;
    let mut zones = Vec::with_capacity(present);
    for i in 0..present {
        let at = ENTRY_LEN * (1 + i);
        let code = b[at + 1] >> 4;
        let state = ZoneState::from_code(code)
            .ok_or_else(|| format!("zone descriptor {i} has unknown state {code:#x}"))?;
        zones.push(ZoneDescriptor {
            state,
            zcap: get_u64(b, at + 8),
            zslba: get_u64(b, at + 16),
            wp: get_u64(b, at + 24),
        });
    }
    Ok(ZoneReport {
        matching: count,
        zones,
    })
}

/// Checks what a target reported for a report from `from`, on a namespace of zones of
/// `zone_size` blocks and `total_blocks` in all: each descriptor starts a zone after the last,
/// within the namespace and at or past the zone holding `from`; its capacity fits the zone; and
/// its write pointer is where its state says (at the start of an empty zone, within the
/// capacity of an open or closed one). The engine places records and reads by these, so a
/// target reporting otherwise is answering wrongly, not reporting a state.
pub fn check_report(
    zones: &[ZoneDescriptor],
    from: u64,
    zone_size: u64,
    total_blocks: u64,
) -> Result<(), String> {
    let zone_size = zone_size.max(1);
    let mut next = from - from % zone_size;
    for (i, z) in zones.iter().enumerate() {
        let bad = |why: String| Err(format!("zone descriptor {i} (ZSLBA {:#x}): {why}", z.zslba));
        if z.zslba % zone_size != 0 || z.zslba < next || z.zslba >= total_blocks {
            return bad(format!(
                "not the start of a zone at or after LBA {next:#x} in a namespace of {total_blocks:#x} blocks"
            ));
        }
        if z.zcap > zone_size {
            return bad(format!(
                "capacity {:#x} beyond the zone size {zone_size:#x}",
                z.zcap
            ));
        }
        let pointer_fits = match z.state {
            ZoneState::Empty => z.wp == z.zslba,
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened | ZoneState::Closed => {
                z.wp >= z.zslba && z.wp - z.zslba <= z.zcap
            }
            // The write pointer of a full, read-only or offline zone is not defined.
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => true,
        };
        if !pointer_fits {
            return bad(format!(
                "write pointer {:#x} impossible for a zone {} of capacity {:#x}",
                z.wp, z.state, z.zcap
            ));
        }
        next = z.zslba + zone_size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_target_could_not_truthfully_give_are_refused() {
        let zone = |state, zslba: u64, wp: u64| ZoneDescriptor {
            state,
            zslba,
            zcap: 0x3000,
            wp,
        };
        let good = [
            zone(ZoneState::Closed, 0x4000, 0x5000),
            zone(ZoneState::Empty, 0x8000, 0x8000),
            zone(ZoneState::Full, 0x10000, 0),
        ];
        assert_eq!(check_report(&good, 0x4100, 0x4000, 0x20000), Ok(()));
        let bad: [(&[ZoneDescriptor], &str); 6] = [
            (&[zone(ZoneState::Empty, 0x4001, 0x4001)], "not the start"),
            (&[zone(ZoneState::Empty, 0x0, 0x0)], "not the start"),
            (&[zone(ZoneState::Empty, 0x20000, 0x20000)], "not the start"),
            (
                &[
                    zone(ZoneState::Empty, 0x8000, 0x8000),
                    zone(ZoneState::Empty, 0x8000, 0x8000),
                ],
                "not the start",
            ),
            (&[zone(ZoneState::Empty, 0x4000, 0x4100)], "write pointer"),
            (
                &[zone(ZoneState::ImplicitlyOpened, 0x4000, 0x7001)],
                "write pointer",
            ),
        ];
        for (zones, says) in bad {
            let e = check_report(zones, 0x4000, 0x4000, 0x20000).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let oversized = ZoneDescriptor {
            zcap: 0x4001,
            ..zone(ZoneState::Closed, 0x4000, 0x4000)
        };
        assert!(check_report(&[oversized], 0, 0x4000, 0x20000).is_err());
    }

    fn report() -> ZoneReport {
        ZoneReport {
            matching: 16,
            zones: vec![
                ZoneDescriptor {
                    state: ZoneState::ImplicitlyOpened,
                    zslba: 0,
                    zcap: 0x4000,
                    wp: 0x100,
                },
                ZoneDescriptor {
                    state: ZoneState::Empty,
                    zslba: 0x4000,
                    zcap: 0x4000,
                    wp: 0x4000,
                },
            ],
        }
    }

    #[test]
    fn layout_matches_the_capture() {
        // Capture: "02 20 ..." for an implicitly opened zone 0 with WP 0x100, ZCAP 0x4000.
        let b = encode_report(&report(), true, 192);
        assert_eq!(&b[0..8], &2u64.to_le_bytes());
        assert_eq!(&b[64..66], &[0x02, 0x20]);
        assert_eq!(&b[72..80], &0x4000u64.to_le_bytes());
        assert_eq!(&b[88..96], &0x100u64.to_le_bytes());
        assert_eq!(&b[128..130], &[0x02, 0x10]);
        assert_eq!(&b[144..152], &0x4000u64.to_le_bytes());
    }

    #[test]
    fn count_without_partial_is_all_matching() {
        let b = encode_report(&report(), false, 192);
        assert_eq!(&b[0..8], &16u64.to_le_bytes());
        let back = decode_report(&b).unwrap();
        assert_eq!(back.matching, 16);
        assert_eq!(back.zones, report().zones);
    }

    #[test]
    fn short_buffers_hold_fewer_descriptors() {
        let b = encode_report(&report(), true, 128);
        assert_eq!(b.len(), 128);
        assert_eq!(decode_report(&b).unwrap().zones.len(), 1);
    }
}
