//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, §3.6 "PDU Formats"), encoded and decoded
//! byte for byte as the Linux kernel's `include/linux/nvme-tcp.h` lays them out.
//!
//! ```text
//! | CH (8) | PSH (hlen-8) | HDGST (4)? | PAD? | DATA | DDGST (4)? |
//! 0                       hlen                pdo           plen
//! CH: 0 type, 1 flags, 2 hlen, 3 pdo, 4..8 plen (little endian)
//! ```
//! HDGST covers bytes `[0, hlen)`; DDGST covers the data only. All integers are little endian.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;

use super::command::{Cqe, Sqe};
use super::digest::{Digests, crc32c, crc32c_parts};

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// HLEN of ICReq and ICResp.
pub const IC_HLEN: u8 = 128;
/// HLEN of CapsuleCmd (header plus a 64-byte SQE).
pub const CMD_HLEN: u8 = 72;
/// HLEN of CapsuleResp, H2CData, C2HData, R2T and TermReq PDUs.
pub const SHORT_HLEN: u8 = 24;
/// Digest length.
pub const DIGEST_LEN: usize = 4;
/// Largest error data a TermReq carries (the offending header).
pub const TERM_DATA_MAX: usize = 128;

/// PDU-Type values (§3.6.1, Figure 18).
pub mod pdu_type {
    /// Initialize Connection Request.
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to controller terminate request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to host terminate request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// FLAGS bits of the common header.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// Last data PDU of a transfer (H2CData: of the R2T; C2HData: of the command).
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData only: the command succeeded and no CapsuleResp follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal Error Status values of a TermReq (§3.6.2.4, Figure 25).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Fes {
    /// A header field is invalid; FEI is the byte offset of the field.
    InvalidHeaderField = 0x01,
    /// The PDU is not allowed at this point of the connection.
    PduSequenceError = 0x02,
    /// The header digest does not match.
    HeaderDigestError = 0x03,
    /// Data lies outside the range the transfer allows.
    DataOutOfRange = 0x04,
    /// More data (or more R2Ts) than allowed.
    DataLimitExceeded = 0x05,
    /// A parameter of ICReq/ICResp is not supported; FEI is the offset of the field.
    UnsupportedParameter = 0x06,
}

impl Fes {
    /// Decodes a FES value.
    pub fn from_code(code: u16) -> Option<Fes> {
        Some(match code {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::PduSequenceError,
            0x03 => Fes::HeaderDigestError,
            0x04 => Fes::DataOutOfRange,
            0x05 => Fes::DataLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// ICReq (§3.6.2.2): the host opens a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment, 0's based dwords.
    pub hpda: u8,
    /// Digests the host asks for.
    pub dgst: Digests,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

/// ICResp (§3.6.2.3): the controller accepts a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version (0).
    pub pfv: u16,
    /// Controller PDU data alignment, 0's based dwords.
    pub cpda: u8,
    /// Digests enabled.
    pub dgst: Digests,
    /// Largest data in one H2CData PDU.
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq (§3.6.2.4/§3.6.2.5): a fatal transport error; the sender closes the
/// connection after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal error status (raw, so that unknown values survive decoding).
    pub fes: u16,
    /// Fatal error information.
    pub fei: u32,
    /// The header of the PDU in error (at most 128 bytes).
    pub data: Bytes,
}

/// CapsuleCmd (§3.6.2.6): a command, with in-capsule data if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleCmd {
    /// The submission queue entry.
    pub sqe: Sqe,
    /// In-capsule data.
    pub data: Bytes,
    /// Whether the data digest failed to verify (the command must then fail, §3.6.1.4).
    pub data_digest_error: bool,
}

/// CapsuleResp (§3.6.2.7): a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleResp {
    /// The completion queue entry.
    pub cqe: Cqe,
}

/// H2CData and C2HData (§3.6.2.8/§3.6.2.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPdu {
    /// Command capsule CID the data belongs to.
    pub cccid: u16,
    /// Transfer tag from the R2T (H2CData); reserved (0) in C2HData.
    pub ttag: u16,
    /// Offset of this data from the start of the command's data.
    pub datao: u32,
    /// LAST_PDU flag.
    pub last: bool,
    /// SUCCESS flag (C2HData only).
    pub success: bool,
    /// The data.
    pub data: Bytes,
    /// Whether the data digest failed to verify.
    pub data_digest_error: bool,
}

/// R2T (§3.6.2.10): the controller asks for write data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag the H2CData PDUs must carry.
    pub ttag: u16,
    /// Offset of the requested data in the command's data.
    pub r2to: u32,
    /// Length requested.
    pub r2tl: u32,
}

/// Any NVMe/TCP PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// ICReq.
    IcReq(IcReq),
    /// ICResp.
    IcResp(IcResp),
    /// H2CTermReq.
    H2CTermReq(TermReq),
    /// C2HTermReq.
    C2HTermReq(TermReq),
    /// CapsuleCmd.
    CapsuleCmd(CapsuleCmd),
    /// CapsuleResp.
    CapsuleResp(CapsuleResp),
    /// H2CData.
    H2CData(DataPdu),
    /// C2HData.
    C2HData(DataPdu),
    /// R2T.
    R2t(R2t),
}

impl Pdu {
    /// The PDU-Type code.
    pub fn type_code(&self) -> u8 {
        match self {
            Pdu::IcReq(_) => pdu_type::IC_REQ,
            Pdu::IcResp(_) => pdu_type::IC_RESP,
            Pdu::H2CTermReq(_) => pdu_type::H2C_TERM_REQ,
            Pdu::C2HTermReq(_) => pdu_type::C2H_TERM_REQ,
            Pdu::CapsuleCmd(_) => pdu_type::CAPSULE_CMD,
            Pdu::CapsuleResp(_) => pdu_type::CAPSULE_RESP,
            Pdu::H2CData(_) => pdu_type::H2C_DATA,
            Pdu::C2HData(_) => pdu_type::C2H_DATA,
            Pdu::R2t(_) => pdu_type::R2T,
        }
    }
}

/// The expected HLEN of a PDU type, or `None` for unknown types.
pub fn expected_hlen(pdu_type: u8) -> Option<u8> {
    match pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => Some(IC_HLEN),
        pdu_type::CAPSULE_CMD => Some(CMD_HLEN),
        pdu_type::H2C_TERM_REQ
        | pdu_type::C2H_TERM_REQ
        | pdu_type::CAPSULE_RESP
        | pdu_type::H2C_DATA
        | pdu_type::C2H_DATA
        | pdu_type::R2T => Some(SHORT_HLEN),
        _ => None,
    }
}

fn may_carry_header_digest(pdu_type: u8) -> bool {
    !matches!(
        pdu_type,
        pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ
    )
}

fn carries_data(pdu_type: u8) -> bool {
    matches!(
        pdu_type,
        pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA | pdu_type::C2H_DATA
    )
}

/// How PDUs are framed on one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Digests in use (none until ICReq/ICResp have been exchanged).
    pub digests: Digests,
    /// The receiver's PDU data alignment (HPDA for C2H, CPDA for H2C), 0's based dwords.
    pub pda: u8,
}

impl Framing {
    /// Framing before the connection is initialised: no digests, no alignment.
    pub const INITIAL: Framing = Framing {
        digests: Digests::NONE,
        pda: 0,
    };

    fn data_offset(&self, hlen: u8) -> usize {
        let start = usize::from(hlen) + if self.digests.header { DIGEST_LEN } else { 0 };
        let align = (usize::from(self.pda) + 1) * 4;
        start.div_ceil(align) * align
    }
}

/// A PDU ready to send: a header part (header, header digest, padding) and the data with its
/// digest, kept apart so that data is never copied.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Header, header digest and padding.
    pub head: Bytes,
    /// Data (empty if none).
    pub data: Bytes,
    /// Data digest, if one follows the data.
    pub ddgst: Option<[u8; 4]>,
    /// Bytes of further small PDUs sent right after this one (a completion after its data), so
    /// that both leave in one write.
    pub tail: Bytes,
    /// Held until the frame is sent (or copied into a write buffer) and dropped: a budget its
    /// data counts against while it waits in the writer's queue.
    pub held: Option<Arc<OwnedSemaphorePermit>>,
}

impl Frame {
    /// Total length on the wire (this PDU's PLEN plus the tail).
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.ddgst.map_or(0, |_| DIGEST_LEN) + self.tail.len()
    }

    /// This frame followed by `next` (a small PDU such as a CapsuleResp).
    pub fn followed_by(mut self, next: Frame) -> Frame {
        self.tail = next.to_bytes();
        self
    }

    /// Whether the frame is empty (never true for a valid PDU).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole PDU as one buffer (copies the data; for tests and small PDUs).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        out.put_slice(&self.head);
        out.put_slice(&self.data);
        if let Some(d) = self.ddgst {
            out.put_slice(&d);
        }
        out.put_slice(&self.tail);
        out.freeze()
    }
}

/// Encodes `pdu` with `framing` (the digests in use, the receiver's alignment).
pub fn encode(pdu: &Pdu, framing: Framing) -> Frame {
    let pdu_type = pdu.type_code();
    let hlen = expected_hlen(pdu_type).expect("every Pdu variant has a known type");
    let hdgst = framing.digests.header && may_carry_header_digest(pdu_type);
    let data: Bytes = match pdu {
        Pdu::CapsuleCmd(c) => c.data.clone(),
        Pdu::H2CData(d) | Pdu::C2HData(d) => d.data.clone(),
        Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => t.data.slice(..t.data.len().min(TERM_DATA_MAX)),
        _ => Bytes::new(),
    };
    let has_data = carries_data(pdu_type) && !data.is_empty();
    let ddgst = framing.digests.data && has_data;
    let header_end = usize::from(hlen) + if hdgst { DIGEST_LEN } else { 0 };
    let pdo = if has_data {
        framing.data_offset(hlen)
    } else {
        0
    };
    let head_len = if has_data { pdo } else { header_end };
    let plen = match pdu {
        Pdu::H2CTermReq(_) | Pdu::C2HTermReq(_) => usize::from(hlen) + data.len(),
        _ => head_len + if has_data { data.len() } else { 0 } + if ddgst { DIGEST_LEN } else { 0 },
    };
    let mut flag_bits = 0u8;
    if hdgst {
        flag_bits |= flags::HDGSTF;
    }
    if ddgst {
        flag_bits |= flags::DDGSTF;
    }
    if let Pdu::H2CData(d) | Pdu::C2HData(d) = pdu {
        if d.last {
            flag_bits |= flags::LAST_PDU;
        }
        if d.success {
            flag_bits |= flags::SUCCESS;
        }
    }
    let mut head = BytesMut::with_capacity(head_len);
    head.put_u8(pdu_type);
    head.put_u8(flag_bits);
    head.put_u8(hlen);
    head.put_u8(pdo as u8);
    head.put_u32_le(plen as u32);
    match pdu {
        Pdu::IcReq(ic) => {
            head.put_u16_le(ic.pfv);
            head.put_u8(ic.hpda);
            head.put_u8(ic.dgst.bits());
            head.put_u32_le(ic.maxr2t);
        }
        Pdu::IcResp(ic) => {
            head.put_u16_le(ic.pfv);
            head.put_u8(ic.cpda);
            head.put_u8(ic.dgst.bits());
            head.put_u32_le(ic.maxh2cdata);
        }
        Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
            head.put_u16_le(t.fes);
            head.put_u32_le(t.fei);
        }
        Pdu::CapsuleCmd(c) => head.put_slice(c.sqe.as_bytes()),
        Pdu::CapsuleResp(r) => head.put_slice(r.cqe.as_bytes()),
        Pdu::H2CData(d) | Pdu::C2HData(d) => {
            head.put_u16_le(d.cccid);
            head.put_u16_le(d.ttag);
            head.put_u32_le(d.datao);
            head.put_u32_le(d.data.len() as u32);
        }
        Pdu::R2t(r) => {
            head.put_u16_le(r.cccid);
            head.put_u16_le(r.ttag);
            head.put_u32_le(r.r2to);
            head.put_u32_le(r.r2tl);
        }
    }
    head.resize(usize::from(hlen), 0);
    if hdgst {
        let digest = crc32c(&head[..usize::from(hlen)]);
        head.put_u32_le(digest);
    }
    let (data, ddgst) = match pdu {
        Pdu::H2CTermReq(_) | Pdu::C2HTermReq(_) => {
            head.put_slice(&data);
            (Bytes::new(), None)
        }
        _ if has_data => {
            head.resize(pdo, 0);
            let digest = ddgst.then(|| crc32c(&data).to_le_bytes());
            (data, digest)
        }
        _ => (Bytes::new(), None),
    };
    Frame {
        head: head.freeze(),
        data,
        ddgst,
        tail: Bytes::new(),
        held: None,
    }
}

/// A PDU that cannot be accepted: what a TermReq must say about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fatal NVMe/TCP error {fes:?} (fei {fei:#x}): {reason}")]
pub struct PduError {
    /// Fatal error status for the TermReq.
    pub fes: Fes,
    /// Fatal error information for the TermReq.
    pub fei: u32,
    /// The header of the offending PDU (copied into the TermReq).
    pub header: Bytes,
    /// Human-readable reason.
    pub reason: String,
}

/// Decodes PDUs from a byte stream, checking every header field against the specification and
/// the connection's negotiated parameters.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Framing in use on this direction.
    pub framing: Framing,
    /// Largest data a single PDU may carry.
    pub max_data: usize,
    /// PDU types this side may receive.
    pub accept: &'static [u8],
}

/// PDU types a controller receives.
pub const HOST_TO_CONTROLLER: &[u8] = &[
    pdu_type::IC_REQ,
    pdu_type::H2C_TERM_REQ,
    pdu_type::CAPSULE_CMD,
    pdu_type::H2C_DATA,
];
/// PDU types a host receives.
pub const CONTROLLER_TO_HOST: &[u8] = &[
    pdu_type::IC_RESP,
    pdu_type::C2H_TERM_REQ,
    pdu_type::CAPSULE_RESP,
    pdu_type::C2H_DATA,
    pdu_type::R2T,
];

impl Decoder {
    /// A decoder for one side of a connection.
    pub fn new(accept: &'static [u8], max_data: usize) -> Self {
        Decoder {
            framing: Framing::INITIAL,
            max_data,
            accept,
        }
    }

    /// How many bytes the PDU at the front of `buf` needs in total, once its common header is
    /// there; errors for an invalid common header.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, PduError> {
        if buf.len() < CH_LEN {
            return Ok(None);
        }
        let fail = |fes, fei: u32, reason: String| PduError {
            fes,
            fei,
            header: Bytes::copy_from_slice(&buf[..buf.len().min(TERM_DATA_MAX)]),
            reason,
        };
        let pdu_type = buf[0];
        let Some(hlen) = expected_hlen(pdu_type).filter(|_| self.accept.contains(&pdu_type)) else {
            return Err(fail(
                Fes::InvalidHeaderField,
                0,
                format!("unexpected PDU type {pdu_type:#x}"),
            ));
        };
        if buf[2] != hlen {
            return Err(fail(
                Fes::InvalidHeaderField,
                2,
                format!(
                    "HLEN {} for PDU type {pdu_type:#x}, expected {hlen}",
                    buf[2]
                ),
            ));
        }
        let plen = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        let hdgst = self.framing.digests.header && may_carry_header_digest(pdu_type);
        let min = usize::from(hlen) + if hdgst { DIGEST_LEN } else { 0 };
        let max = match pdu_type {
            pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => usize::from(hlen) + TERM_DATA_MAX,
            t if carries_data(t) => self.framing.data_offset(hlen) + self.max_data + DIGEST_LEN,
            _ => min,
        };
        if plen < min || plen > max {
            let fes = if plen > max && carries_data(pdu_type) {
                Fes::DataLimitExceeded
            } else {
                Fes::InvalidHeaderField
            };
            return Err(fail(
                fes,
                4,
                format!("PLEN {plen} outside {min}..={max} for PDU type {pdu_type:#x}"),
            ));
        }
        Ok(Some(plen))
    }

    /// Decodes one PDU from the front of `buf` if it is complete, removing its bytes.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        let Some(plen) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < plen {
            return Ok(None);
        }
        let frame = buf.split_to(plen).freeze();
        self.decode_frame(frame).map(Some)
    }

    /// Decodes one complete PDU of exactly PLEN bytes.
    pub fn decode_frame(&self, frame: Bytes) -> Result<Pdu, PduError> {
        let header_copy = || frame.slice(..frame.len().min(TERM_DATA_MAX));
        let fail = |fes, fei: u32, reason: String| PduError {
            fes,
            fei,
            header: header_copy(),
            reason,
        };
        let pdu_type = frame[0];
        let flag_bits = frame[1];
        let hlen = usize::from(frame[2]);
        let pdo = usize::from(frame[3]);
        let plen = frame.len();
        let digests = self.framing.digests;
        let hdgst_expected = digests.header && may_carry_header_digest(pdu_type);
        let header_flags_ok = match pdu_type {
            pdu_type::IC_REQ
            | pdu_type::IC_RESP
            | pdu_type::H2C_TERM_REQ
            | pdu_type::C2H_TERM_REQ => flag_bits == 0,
            _ => (flag_bits & flags::HDGSTF != 0) == hdgst_expected,
        };
        if !header_flags_ok {
            return Err(fail(
                Fes::InvalidHeaderField,
                1,
                format!("FLAGS {flag_bits:#x} disagree with the negotiated header digest"),
            ));
        }
        let header_end = hlen + if hdgst_expected { DIGEST_LEN } else { 0 };
        if hdgst_expected {
            let want = crc32c(&frame[..hlen]);
            let got = u32::from_le_bytes(frame[hlen..hlen + 4].try_into().expect("4 bytes"));
            if want != got {
                // (FEI is defined for header and parameter errors only: 0 here, as SPDK
                // sends; the digests go to the log.)
                return Err(fail(
                    Fes::HeaderDigestError,
                    0,
                    format!("header digest {got:#010x}, computed {want:#010x}"),
                ));
            }
        }
        // Data placement for PDUs that may carry data.
        let mut data = Bytes::new();
        let mut data_digest_error = false;
        if carries_data(pdu_type) {
            let has_data = pdo != 0;
            if has_data {
                let aligned = self.framing.data_offset(hlen as u8);
                if pdo < header_end || pdo != aligned || pdo > plen {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        3,
                        format!("PDO {pdo}, expected {aligned}"),
                    ));
                }
                let ddgst = flag_bits & flags::DDGSTF != 0;
                if ddgst != digests.data {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        1,
                        format!("FLAGS {flag_bits:#x} disagree with the negotiated data digest"),
                    ));
                }
                let end = plen - if ddgst { DIGEST_LEN } else { 0 };
                if end < pdo {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        4,
                        "PLEN leaves no room for the data digest".into(),
                    ));
                }
                data = frame.slice(pdo..end);
                if ddgst {
                    let got = u32::from_le_bytes(frame[end..end + 4].try_into().expect("4 bytes"));
                    data_digest_error = crc32c(&data) != got;
                }
            } else if plen != header_end {
                return Err(fail(
                    Fes::InvalidHeaderField,
                    4,
                    format!("PLEN {plen} with PDO 0, expected {header_end}"),
                ));
            } else if flag_bits & flags::DDGSTF != 0 {
                return Err(fail(
                    Fes::InvalidHeaderField,
                    1,
                    "data digest flag on a PDU without data".into(),
                ));
            }
        } else if pdo != 0 {
            return Err(fail(
                Fes::InvalidHeaderField,
                3,
                format!("PDO {pdo} on a PDU without data"),
            ));
        }
        let mut psh = &frame[CH_LEN..hlen];
        let pdu = match pdu_type {
            pdu_type::IC_REQ | pdu_type::IC_RESP => {
                let pfv = psh.get_u16_le();
                let pda = psh.get_u8();
                let dgst = psh.get_u8();
                let value = psh.get_u32_le();
                if dgst & !0x03 != 0 {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        11,
                        format!("DGST {dgst:#x} has reserved bits"),
                    ));
                }
                if pdu_type == pdu_type::IC_REQ {
                    Pdu::IcReq(IcReq {
                        pfv,
                        hpda: pda,
                        dgst: Digests::from_bits(dgst),
                        maxr2t: value,
                    })
                } else {
                    Pdu::IcResp(IcResp {
                        pfv,
                        cpda: pda,
                        dgst: Digests::from_bits(dgst),
                        maxh2cdata: value,
                    })
                }
            }
            pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => {
                let fes = psh.get_u16_le();
                let fei = psh.get_u32_le();
                let term = TermReq {
                    fes,
                    fei,
                    data: frame.slice(hlen..plen),
                };
                if pdu_type == pdu_type::H2C_TERM_REQ {
                    Pdu::H2CTermReq(term)
                } else {
                    Pdu::C2HTermReq(term)
                }
            }
            pdu_type::CAPSULE_CMD => Pdu::CapsuleCmd(CapsuleCmd {
                sqe: Sqe::from_slice(psh),
                data,
                data_digest_error,
            }),
            pdu_type::CAPSULE_RESP => Pdu::CapsuleResp(CapsuleResp {
                cqe: Cqe::from_slice(psh),
            }),
            pdu_type::H2C_DATA | pdu_type::C2H_DATA => {
                let cccid = psh.get_u16_le();
                let ttag = psh.get_u16_le();
                let datao = psh.get_u32_le();
                let datal = psh.get_u32_le() as usize;
                if datal != data.len() {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        16,
                        format!("DATAL {datal} but the PDU carries {} bytes", data.len()),
                    ));
                }
                if datal == 0 {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        16,
                        "data PDU without data".into(),
                    ));
                }
                let last = flag_bits & flags::LAST_PDU != 0;
                let success = flag_bits & flags::SUCCESS != 0;
                if pdu_type == pdu_type::H2C_DATA && success {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        1,
                        "SUCCESS flag on H2CData".into(),
                    ));
                }
                if success && !last {
                    return Err(fail(
                        Fes::InvalidHeaderField,
                        1,
                        "SUCCESS without LAST_PDU".into(),
                    ));
                }
                let d = DataPdu {
                    cccid,
                    ttag,
                    datao,
                    last,
                    success,
                    data,
                    data_digest_error,
                };
                if pdu_type == pdu_type::H2C_DATA {
                    Pdu::H2CData(d)
                } else {
                    Pdu::C2HData(d)
                }
            }
            pdu_type::R2T => {
                let cccid = psh.get_u16_le();
                let ttag = psh.get_u16_le();
                let r2to = psh.get_u32_le();
                let r2tl = psh.get_u32_le();
                Pdu::R2t(R2t {
                    cccid,
                    ttag,
                    r2to,
                    r2tl,
                })
            }
            other => {
                return Err(fail(
                    Fes::InvalidHeaderField,
                    0,
                    format!("unexpected PDU type {other:#x}"),
                ));
            }
        };
        Ok(pdu)
    }
}

/// Checksums several buffers as one (re-exported for the data path).
pub fn data_digest(parts: &[&[u8]]) -> u32 {
    crc32c_parts(parts.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect()
    }

    fn target_decoder() -> Decoder {
        Decoder::new(HOST_TO_CONTROLLER, 1 << 20)
    }

    fn host_decoder() -> Decoder {
        Decoder::new(CONTROLLER_TO_HOST, 1 << 20)
    }

    #[test]
    fn icreq_from_the_linux_host_decodes() {
        // Linux 6.1 host ICReq (reference capture frame 4): PFV 0, HPDA 0, no digests, MAXR2T 0.
        let mut frame = hex("00 00 80 00 80 00 00 00 00 00 00 00 00 00 00 00");
        frame.resize(128, 0);
        let pdu = target_decoder().decode_frame(Bytes::from(frame)).unwrap();
        assert_eq!(
            pdu,
            Pdu::IcReq(IcReq {
                pfv: 0,
                hpda: 0,
                dgst: Digests::NONE,
                maxr2t: 0
            })
        );
    }

    #[test]
    fn icresp_matches_the_linux_target_bytes() {
        // nvmet's ICResp (capture frame 6): MAXH2CDATA 4 MiB at offset 12.
        let frame = encode(
            &Pdu::IcResp(IcResp {
                pfv: 0,
                cpda: 0,
                dgst: Digests::NONE,
                maxh2cdata: 0x40_0000,
            }),
            Framing::INITIAL,
        );
        let bytes = frame.to_bytes();
        assert_eq!(bytes.len(), 128);
        assert_eq!(
            &bytes[..16],
            &hex("01 00 80 00 80 00 00 00 00 00 00 00 00 00 40 00")[..]
        );
        assert!(bytes[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn capsule_resp_layout_and_header_digest_vector() {
        // Capture frame 14 re-flagged with HDGSTF: the digest over those 24 bytes is 0x6E59F19C.
        let cqe_bytes = hex("ff 03 00 0f 20 08 00 00 02 00 00 00 01 00 00 00");
        let cqe = Cqe::from_slice(&cqe_bytes);
        let framing = Framing {
            digests: Digests {
                header: true,
                data: false,
            },
            pda: 0,
        };
        let bytes = encode(&Pdu::CapsuleResp(CapsuleResp { cqe }), framing).to_bytes();
        assert_eq!(&bytes[..8], &hex("05 01 18 00 1c 00 00 00")[..]);
        assert_eq!(&bytes[24..28], &hex("9c f1 59 6e")[..]);
    }

    #[test]
    fn c2h_data_header_matches_capture() {
        // Capture frame 94: C2HData of an Identify, cccid 0x000a, 4096 bytes, LAST_PDU.
        let pdu = Pdu::C2HData(DataPdu {
            cccid: 0x000a,
            ttag: 0,
            datao: 0,
            last: true,
            success: false,
            data: Bytes::from(vec![0u8; 4096]),
            data_digest_error: false,
        });
        let frame = encode(&pdu, Framing::INITIAL);
        assert_eq!(
            &frame.head[..],
            &hex("07 04 18 18 18 10 00 00 0a 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00")[..]
        );
        let back = host_decoder().decode_frame(frame.to_bytes()).unwrap();
        assert_eq!(back, pdu);
    }

    #[test]
    fn c2h_data_with_both_digests_matches_vector() {
        let pdu = Pdu::C2HData(DataPdu {
            cccid: 0x000a,
            ttag: 0,
            datao: 0,
            last: true,
            success: false,
            data: Bytes::from(vec![0u8; 4096]),
            data_digest_error: false,
        });
        let framing = Framing {
            digests: Digests {
                header: true,
                data: true,
            },
            pda: 0,
        };
        let frame = encode(&pdu, framing);
        assert_eq!(&frame.head[..8], &hex("07 07 18 1c 20 10 00 00")[..]);
        assert_eq!(&frame.head[24..28], &hex("d4 1f e0 e7")[..]);
        assert_eq!(frame.ddgst, Some(hex("89 41 f9 98").try_into().unwrap()));
    }

    #[test]
    fn r2t_layout_matches_capture() {
        // Capture frame 262: cccid 0x0071, ttag 3, r2to 0, r2tl 196608.
        let frame = encode(
            &Pdu::R2t(R2t {
                cccid: 0x71,
                ttag: 3,
                r2to: 0,
                r2tl: 196_608,
            }),
            Framing::INITIAL,
        );
        assert_eq!(
            &frame.head[..],
            &hex("09 00 18 00 18 00 00 00 71 00 03 00 00 00 00 00 00 00 03 00 00 00 00 00")[..]
        );
    }

    #[test]
    fn h2c_data_from_the_linux_host_decodes() {
        // Capture frame 258 header, with a short payload substituted for the 64 KiB.
        let mut frame =
            hex("06 04 18 18 00 00 00 00 31 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00");
        let plen = 24 + 512u32;
        frame[4..8].copy_from_slice(&plen.to_le_bytes());
        frame.extend(vec![0xabu8; 512]);
        match target_decoder().decode_frame(Bytes::from(frame)).unwrap() {
            Pdu::H2CData(d) => {
                assert_eq!((d.cccid, d.ttag, d.datao, d.last), (0x31, 0, 0, true));
                assert_eq!(d.data.len(), 512);
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn capsule_with_in_capsule_data_from_the_linux_host() {
        // Capture frame 10 header: Connect with 1024 bytes in capsule, PDO 72, PLEN 1096.
        let mut frame = hex("04 00 48 48 48 04 00 00");
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[1] = 0x40;
        sqe[4] = 0x01;
        sqe[32..36].copy_from_slice(&1024u32.to_le_bytes());
        sqe[39] = 0x01;
        frame.extend_from_slice(&sqe);
        frame.extend(vec![7u8; 1024]);
        match target_decoder().decode_frame(Bytes::from(frame)).unwrap() {
            Pdu::CapsuleCmd(c) => {
                assert_eq!(c.sqe.opcode(), 0x7f);
                assert_eq!(c.data.len(), 1024);
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn term_req_puts_fei_at_offset_10() {
        let frame = encode(
            &Pdu::C2HTermReq(TermReq {
                fes: Fes::InvalidHeaderField as u16,
                fei: 2,
                data: Bytes::from(vec![0x11; 72]),
            }),
            Framing::INITIAL,
        );
        let bytes = frame.to_bytes();
        assert_eq!(
            &bytes[..16],
            &hex("03 00 18 00 60 00 00 00 01 00 02 00 00 00 00 00")[..]
        );
        assert_eq!(bytes.len(), 96);
    }

    #[test]
    fn wrong_hlen_is_an_invalid_header_field_at_offset_2() {
        let mut frame = vec![0u8; 128];
        frame[2] = 100;
        frame[4] = 128;
        let err = target_decoder().frame_len(&frame).unwrap_err();
        assert_eq!((err.fes, err.fei), (Fes::InvalidHeaderField, 2));
    }

    #[test]
    fn unknown_type_is_an_invalid_header_field_at_offset_0() {
        let frame = [0x08u8, 0, 24, 0, 24, 0, 0, 0];
        let err = target_decoder().frame_len(&frame).unwrap_err();
        assert_eq!((err.fes, err.fei), (Fes::InvalidHeaderField, 0));
    }

    #[test]
    fn controller_pdus_are_refused_by_a_controller() {
        let frame = encode(
            &Pdu::R2t(R2t {
                cccid: 1,
                ttag: 1,
                r2to: 0,
                r2tl: 1,
            }),
            Framing::INITIAL,
        )
        .to_bytes();
        assert!(target_decoder().frame_len(&frame).is_err());
    }

    #[test]
    fn oversized_data_is_a_data_limit_error() {
        let mut frame = hex("06 04 18 18 00 00 00 00");
        frame[4..8].copy_from_slice(&(24u32 + (2 << 20)).to_le_bytes());
        let err = target_decoder().frame_len(&frame).unwrap_err();
        assert_eq!((err.fes, err.fei), (Fes::DataLimitExceeded, 4));
    }

    #[test]
    fn header_digest_mismatch_is_reported_with_fes_3() {
        let framing = Framing {
            digests: Digests {
                header: true,
                data: false,
            },
            pda: 0,
        };
        let mut bytes = encode(
            &Pdu::H2CData(DataPdu {
                cccid: 1,
                ttag: 2,
                datao: 0,
                last: true,
                success: false,
                data: Bytes::from_static(&[1; 8]),
                data_digest_error: false,
            }),
            framing,
        )
        .to_bytes()
        .to_vec();
        bytes[9] ^= 0xff;
        let mut dec = target_decoder();
        dec.framing = framing;
        let err = dec.decode_frame(Bytes::from(bytes)).unwrap_err();
        assert_eq!((err.fes, err.fei), (Fes::HeaderDigestError, 0));
    }

    #[test]
    fn data_digest_mismatch_marks_the_pdu() {
        let framing = Framing {
            digests: Digests {
                header: false,
                data: true,
            },
            pda: 0,
        };
        let mut bytes = encode(
            &Pdu::H2CData(DataPdu {
                cccid: 1,
                ttag: 2,
                datao: 0,
                last: true,
                success: false,
                data: Bytes::from_static(&[1; 8]),
                data_digest_error: false,
            }),
            framing,
        )
        .to_bytes()
        .to_vec();
        bytes[26] ^= 0xff;
        let mut dec = target_decoder();
        dec.framing = framing;
        match dec.decode_frame(Bytes::from(bytes)).unwrap() {
            Pdu::H2CData(d) => assert!(d.data_digest_error),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn padding_follows_the_receivers_alignment() {
        let framing = Framing {
            digests: Digests {
                header: true,
                data: false,
            },
            pda: 3,
        };
        let frame = encode(
            &Pdu::C2HData(DataPdu {
                cccid: 1,
                ttag: 0,
                datao: 0,
                last: true,
                success: false,
                data: Bytes::from_static(&[9; 4]),
                data_digest_error: false,
            }),
            framing,
        );
        assert_eq!(frame.head[3], 32, "24 + 4 rounded up to 16");
        assert_eq!(frame.head.len(), 32);
        let mut dec = host_decoder();
        dec.framing = framing;
        assert!(dec.decode_frame(frame.to_bytes()).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_data() -> impl Strategy<Value = Bytes> {
            prop::collection::vec(any::<u8>(), 1..300).prop_map(Bytes::from)
        }

        fn arb_pdu() -> impl Strategy<Value = Pdu> {
            let sqe = prop::collection::vec(any::<u8>(), 64).prop_map(|b| Sqe::from_slice(&b));
            let cqe = prop::collection::vec(any::<u8>(), 16).prop_map(|b| Cqe::from_slice(&b));
            prop_oneof![
                (any::<u8>(), 0u8..4, any::<u32>()).prop_map(|(hpda, d, maxr2t)| Pdu::IcReq(
                    IcReq {
                        pfv: 0,
                        hpda,
                        dgst: Digests::from_bits(d),
                        maxr2t
                    }
                )),
                (any::<u8>(), 0u8..4, any::<u32>()).prop_map(|(cpda, d, m)| Pdu::IcResp(IcResp {
                    pfv: 0,
                    cpda,
                    dgst: Digests::from_bits(d),
                    maxh2cdata: m
                })),
                (
                    1u16..7,
                    any::<u32>(),
                    prop::collection::vec(any::<u8>(), 0..128)
                )
                    .prop_map(|(fes, fei, d)| Pdu::C2HTermReq(TermReq {
                        fes,
                        fei,
                        data: Bytes::from(d)
                    })),
                (
                    1u16..7,
                    any::<u32>(),
                    prop::collection::vec(any::<u8>(), 0..128)
                )
                    .prop_map(|(fes, fei, d)| Pdu::H2CTermReq(TermReq {
                        fes,
                        fei,
                        data: Bytes::from(d)
                    })),
                (sqe, prop_oneof![Just(Bytes::new()), arb_data()]).prop_map(|(sqe, data)| {
                    Pdu::CapsuleCmd(CapsuleCmd {
                        sqe,
                        data,
                        data_digest_error: false,
                    })
                }),
                cqe.prop_map(|cqe| Pdu::CapsuleResp(CapsuleResp { cqe })),
                (
                    any::<u16>(),
                    any::<u16>(),
                    any::<u32>(),
                    any::<bool>(),
                    arb_data()
                )
                    .prop_map(|(cccid, ttag, datao, last, data)| Pdu::H2CData(
                        DataPdu {
                            cccid,
                            ttag,
                            datao,
                            last,
                            success: false,
                            data,
                            data_digest_error: false
                        }
                    )),
                (
                    any::<u16>(),
                    any::<u32>(),
                    any::<bool>(),
                    any::<bool>(),
                    arb_data()
                )
                    .prop_map(|(cccid, datao, last, success, data)| Pdu::C2HData(
                        DataPdu {
                            cccid,
                            ttag: 0,
                            datao,
                            last: last || success,
                            success,
                            data,
                            data_digest_error: false
                        }
                    )),
                (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                    |(cccid, ttag, r2to, r2tl)| Pdu::R2t(R2t {
                        cccid,
                        ttag,
                        r2to,
                        r2tl
                    })
                ),
            ]
        }

        proptest! {
            #[test]
            fn every_pdu_round_trips_under_any_framing(pdu in arb_pdu(), digests in 0u8..4, pda in 0u8..4) {
                let framing = match pdu {
                    Pdu::IcReq(_) | Pdu::IcResp(_) => Framing::INITIAL,
                    _ => Framing { digests: Digests::from_bits(digests), pda },
                };
                let bytes = encode(&pdu, framing).to_bytes();
                let accept = if HOST_TO_CONTROLLER.contains(&pdu.type_code()) { HOST_TO_CONTROLLER } else { CONTROLLER_TO_HOST };
                let mut decoder = Decoder::new(accept, 1 << 16);
                decoder.framing = framing;
                let mut buf = BytesMut::from(&bytes[..]);
                let back = decoder.decode(&mut buf).unwrap().unwrap();
                prop_assert_eq!(back, pdu);
                prop_assert!(buf.is_empty());
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..400), digests in 0u8..4) {
                for accept in [HOST_TO_CONTROLLER, CONTROLLER_TO_HOST] {
                    let mut decoder = Decoder::new(accept, 4096);
                    decoder.framing = Framing { digests: Digests::from_bits(digests), pda: 0 };
                    let mut buf = BytesMut::from(&bytes[..]);
                    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
                }
            }
        }
    }
}
