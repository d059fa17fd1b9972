//! The Fabrics Connect command and its 1024-byte data (NVMe over Fabrics 1.1, §3.3 "Connect
//! Command and Response").
//!
//! ```text
//! SQE: 4 FCTYPE=01h | 24..40 SGL | 40 RECFMT u16 | 42 QID u16 | 44 SQSIZE u16 (0's based)
//!      46 CATTR (bit 2: disable SQ flow control) | 48 KATO u32 (ms)
//! Data: 0 HOSTID[16] | 16 CNTLID u16 | 256 SUBNQN[256] | 512 HOSTNQN[256]
//! ```

use super::{get_str, get_u16, put_str, put_u16};
use crate::wire::command::Sqe;

/// Length of the Connect data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// CNTLID asking the subsystem to allocate a controller (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;
/// CATTR bit: the host disables SQ flow control.
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// IATTR/IPO of a Connect Invalid Parameters / Invalid Host completion: which field was wrong,
/// as a byte offset in the SQE (`in_data == false`) or in the Connect data.
pub fn invalid_parameter(in_data: bool, offset: u16) -> u64 {
    (u64::from(in_data) << 16) | u64::from(offset)
}

/// Offsets of the Connect fields that completions point at.
pub mod offset {
    /// QID in the SQE.
    pub const QID: u16 = 42;
    /// SQSIZE in the SQE.
    pub const SQSIZE: u16 = 44;
    /// CATTR in the SQE.
    pub const CATTR: u16 = 46;
    /// RECFMT in the SQE.
    pub const RECFMT: u16 = 40;
    /// CNTLID in the data.
    pub const CNTLID: u16 = 16;
    /// SUBNQN in the data.
    pub const SUBNQN: u16 = 256;
    /// HOSTNQN in the data.
    pub const HOSTNQN: u16 = 512;
}

/// The fields of a Connect command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Record format (0).
    pub recfmt: u16,
    /// Queue to connect: 0 admin, 1.. I/O.
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    /// Connect attributes.
    pub cattr: u8,
    /// Keep alive timeout in milliseconds (admin queue).
    pub kato_ms: u32,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller to attach to (I/O queues) or 0xFFFF (admin queue).
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
}

impl Connect {
    /// Reads the fields from the SQE and the Connect data, if the data is long enough.
    pub fn parse(sqe: &Sqe, data: &[u8]) -> Option<Connect> {
        if data.len() < CONNECT_DATA_LEN {
            return None;
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&data[0..16]);
        Some(Connect {
            recfmt: sqe.u16_field(40),
            qid: sqe.u16_field(42),
            sqsize: sqe.u16_field(44),
            cattr: sqe.byte(46),
            kato_ms: sqe.u32_field(48),
            hostid,
            cntlid: get_u16(data, 16),
            subnqn: get_str(data, 256, 256),
            hostnqn: get_str(data, 512, 256),
        })
    }

    /// Builds the SQE (with `cid`) and the data.
    pub fn encode(&self, cid: u16) -> (Sqe, Vec<u8>) {
        let mut sqe = Sqe::new(super::opcode::FABRICS, cid);
        sqe.put(4, &[super::opcode::fctype::CONNECT]);
        sqe.put(40, &self.recfmt.to_le_bytes());
        sqe.put(42, &self.qid.to_le_bytes());
        sqe.put(44, &self.sqsize.to_le_bytes());
        sqe.put(46, &[self.cattr]);
        sqe.put(48, &self.kato_ms.to_le_bytes());
        sqe.set_sgl(CONNECT_DATA_LEN as u32, true);
        let mut data = vec![0u8; CONNECT_DATA_LEN];
        data[0..16].copy_from_slice(&self.hostid);
        put_u16(&mut data, 16, self.cntlid);
        put_str(&mut data, 256, 256, &self.subnqn, 0);
        put_str(&mut data, 512, 256, &self.hostnqn, 0);
        (sqe, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trips_and_puts_fields_at_spec_offsets() {
        let c = Connect {
            recfmt: 0,
            qid: 1,
            sqsize: 127,
            cattr: 0,
            kato_ms: 0,
            hostid: [0x60; 16],
            cntlid: 1,
            subnqn: "nqn.2024-01.io.example:zns".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:0".into(),
        };
        let (sqe, data) = c.encode(0);
        // Capture frame 138: SQE bytes 40..48 are 00 00 01 00 7f 00 00 00.
        assert_eq!(&sqe.as_bytes()[40..48], &[0, 0, 1, 0, 0x7f, 0, 0, 0]);
        assert_eq!(sqe.byte(4), 0x01);
        assert_eq!(sqe.sgl_identifier(), 0x01);
        assert_eq!(&data[16..18], &[1, 0]);
        assert_eq!(&data[256..259], b"nqn");
        assert_eq!(Connect::parse(&sqe, &data), Some(c));
    }

    #[test]
    fn short_data_is_rejected() {
        let sqe = Sqe::new(0x7f, 0);
        assert_eq!(Connect::parse(&sqe, &[0u8; 100]), None);
    }

    #[test]
    fn ipo_values_match_nvmet() {
        assert_eq!(invalid_parameter(true, offset::HOSTNQN), 0x0001_0200);
        assert_eq!(invalid_parameter(false, offset::QID), 0x2A);
    }
}
