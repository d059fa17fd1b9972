//! Submission and completion queue entries (NVMe Base Specification 2.0, §4.2 "Submission Queue
//! Entry", §4.6 "Completion Queue Entry") and the SGL descriptor forms the TCP transport uses
//! (NVMe/TCP §3.2.2: in-capsule data as a Data Block descriptor with the Offset subtype, 01h;
//! data moved by R2T/H2CData or C2HData as a Transport SGL Data Block, 5Ah).
//!
//! ```text
//! SQE: 0 OPC | 1 FLAGS (7:6 PSDT) | 2..4 CID | 4..8 NSID (fabrics: 4 FCTYPE) | 8..16 CDW2-3
//!      16..24 MPTR | 24..40 DPTR (SGL1: 24 addr, 32 length, 39 identifier) | 40..64 CDW10-15
//! CQE: 0..4 DW0 | 4..8 DW1 | 8..10 SQHD | 10..12 SQID | 12..14 CID | 14..16 STATUS (bit 0 phase)
//! ```

use super::status::Status;

/// SGL identifier of a Data Block descriptor with the Offset subtype: in-capsule data.
pub const SGL_IN_CAPSULE: u8 = 0x01;
/// SGL identifier of a Transport SGL Data Block (transport-specific subtype A): data moved by
/// R2T/H2CData or C2HData, or no data when the length is zero.
pub const SGL_TRANSPORT: u8 = 0x5A;
/// FLAGS value the NVMe/TCP host uses: PSDT = SGL, metadata as a contiguous buffer.
pub const FLAGS_SGL: u8 = 0x40;

/// A 64-byte submission queue entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Sqe([u8; 64]);

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqe")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &format_args!("{:#06x}", self.cid()))
            .field("nsid", &self.nsid())
            .field(
                "sgl",
                &format_args!("{:#04x}/{}", self.sgl_identifier(), self.sgl_length()),
            )
            .field("cdw10", &format_args!("{:#x}", self.cdw(10)))
            .field("cdw11", &format_args!("{:#x}", self.cdw(11)))
            .field("cdw12", &format_args!("{:#x}", self.cdw(12)))
            .field("cdw13", &format_args!("{:#x}", self.cdw(13)))
            .finish()
    }
}

impl Sqe {
    /// A zeroed entry with `opcode` and `cid`, SGL flags set as the TCP transport requires.
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut raw = [0u8; 64];
        raw[0] = opcode;
        raw[1] = FLAGS_SGL;
        raw[2..4].copy_from_slice(&cid.to_le_bytes());
        raw[39] = SGL_TRANSPORT;
        Sqe(raw)
    }

    /// Takes the first 64 bytes of `bytes` (the caller guarantees the length).
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&bytes[..64]);
        Sqe(raw)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Opcode (OPC).
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    /// Command identifier (CID), echoed verbatim in the completion.
    pub fn cid(&self) -> u16 {
        self.u16_at(2)
    }

    /// FLAGS: fused operation (bits 1:0) and PSDT (bits 7:6).
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.0[2..4].copy_from_slice(&cid.to_le_bytes());
    }

    /// Namespace identifier (NSID).
    pub fn nsid(&self) -> u32 {
        self.u32_at(4)
    }

    /// Sets the namespace identifier.
    pub fn set_nsid(&mut self, nsid: u32) -> &mut Self {
        self.0[4..8].copy_from_slice(&nsid.to_le_bytes());
        self
    }

    /// Fabrics command type (FCTYPE, byte 4 of a Fabrics command, opcode 7Fh).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }

    /// Command dword `n` (2..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        self.u32_at(n * 4)
    }

    /// Sets command dword `n` (2..=15).
    pub fn set_cdw(&mut self, n: usize, value: u32) -> &mut Self {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&value.to_le_bytes());
        self
    }

    /// The starting LBA in CDW10-11 (Read, Write, Zone Append, Zone Management).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw(10)) | (u64::from(self.cdw(11)) << 32)
    }

    /// Sets CDW10-11 to an LBA.
    pub fn set_slba(&mut self, lba: u64) -> &mut Self {
        self.set_cdw(10, lba as u32);
        self.set_cdw(11, (lba >> 32) as u32)
    }

    /// Raw byte access for command-specific fields (Fabrics commands use byte offsets).
    pub fn byte(&self, at: usize) -> u8 {
        self.0[at]
    }

    /// A little-endian u16 at byte offset `at`.
    pub fn u16_field(&self, at: usize) -> u16 {
        self.u16_at(at)
    }

    /// A little-endian u32 at byte offset `at`.
    pub fn u32_field(&self, at: usize) -> u32 {
        self.u32_at(at)
    }

    /// A little-endian u64 at byte offset `at`.
    pub fn u64_field(&self, at: usize) -> u64 {
        u64::from(self.u32_at(at)) | (u64::from(self.u32_at(at + 4)) << 32)
    }

    /// Writes raw bytes at byte offset `at`.
    pub fn put(&mut self, at: usize, bytes: &[u8]) -> &mut Self {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// SGL1 descriptor identifier (byte 39): type in bits 7:4, subtype in bits 3:0.
    pub fn sgl_identifier(&self) -> u8 {
        self.0[39]
    }

    /// SGL1 length (bytes 32..36).
    pub fn sgl_length(&self) -> u32 {
        self.u32_at(32)
    }

    /// SGL1 address (bytes 24..32); for in-capsule data, the offset in the capsule.
    pub fn sgl_address(&self) -> u64 {
        self.u64_field(24)
    }

    /// Describes `len` bytes of data: in the capsule (`in_capsule`) or moved by the transport.
    pub fn set_sgl(&mut self, len: u32, in_capsule: bool) -> &mut Self {
        self.0[24..32].fill(0);
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[36..39].fill(0);
        self.0[39] = if in_capsule {
            SGL_IN_CAPSULE
        } else {
            SGL_TRANSPORT
        };
        self
    }
}

/// A 16-byte completion queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe([u8; 16]);

impl std::fmt::Debug for Cqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cqe")
            .field("cid", &format_args!("{:#06x}", self.cid()))
            .field("status", &self.status())
            .field("result", &format_args!("{:#x}", self.result()))
            .field("sqhd", &self.sqhd())
            .field("sqid", &self.sqid())
            .finish()
    }
}

impl Cqe {
    /// A completion for command `cid` on queue `sqid` with `status` and a 64-bit result
    /// (DW0 low, DW1 high).
    pub fn new(cid: u16, sqid: u16, sqhd: u16, status: Status, result: u64) -> Self {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&result.to_le_bytes());
        raw[8..10].copy_from_slice(&sqhd.to_le_bytes());
        raw[10..12].copy_from_slice(&sqid.to_le_bytes());
        raw[12..14].copy_from_slice(&cid.to_le_bytes());
        raw[14..16].copy_from_slice(&status.to_field().to_le_bytes());
        Cqe(raw)
    }

    /// Takes the first 16 bytes of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&bytes[..16]);
        Cqe(raw)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// DW0 and DW1 as one 64-bit result.
    pub fn result(&self) -> u64 {
        u64::from_le_bytes(self.0[0..8].try_into().expect("8 bytes"))
    }

    /// DW0.
    pub fn dw0(&self) -> u32 {
        self.result() as u32
    }

    /// SQ head pointer.
    pub fn sqhd(&self) -> u16 {
        u16::from_le_bytes([self.0[8], self.0[9]])
    }

    /// SQ identifier.
    pub fn sqid(&self) -> u16 {
        u16::from_le_bytes([self.0[10], self.0[11]])
    }

    /// Command identifier.
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[12], self.0[13]])
    }

    /// Decoded status field.
    pub fn status(&self) -> Status {
        Status::from_field(u16::from_le_bytes([self.0[14], self.0[15]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_field_offsets_follow_the_spec() {
        let mut sqe = Sqe::new(0x7d, 0x2001);
        sqe.set_nsid(1)
            .set_slba(0x1_0000_8000)
            .set_cdw(12, 7)
            .set_sgl(4096, true);
        let b = sqe.as_bytes();
        assert_eq!(b[0], 0x7d);
        assert_eq!(b[1], 0x40);
        assert_eq!(&b[2..4], &[0x01, 0x20]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[32..36], &[0, 0x10, 0, 0]);
        assert_eq!(b[39], 0x01);
        assert_eq!(&b[40..48], &[0, 0x80, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[48..52], &[7, 0, 0, 0]);
        assert_eq!(sqe.slba(), 0x1_0000_8000);
    }

    #[test]
    fn cqe_matches_the_connect_completion_of_the_capture() {
        // Capture frame 75: cntlid 1 in DW0, SQHD 1, SQID 0, CID 0, success.
        let cqe = Cqe::new(0, 0, 1, Status::SUCCESS, 1);
        assert_eq!(
            cqe.as_bytes(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(cqe.dw0(), 1);
        assert!(cqe.status().is_success());
    }
}
