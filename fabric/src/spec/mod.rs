//! Data structures and constants of the NVMe Base, NVMe over Fabrics and Zoned Namespace
//! specifications that travel inside commands: opcodes, properties, Connect, Identify data and
//! log pages. Each module holds one family with its byte layout.

pub mod connect;
pub mod identify;
pub mod logpage;
pub mod opcode;
pub mod property;
pub mod zns;

/// The well-known NQN of a discovery subsystem (NVMe over Fabrics 1.1, §7.1).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Writes `s` into a fixed-size, NUL-padded (or space-padded) field.
pub(crate) fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str, pad: u8) {
    let field = &mut buf[at..at + len];
    field.fill(pad);
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a NUL- or space-padded ASCII field.
pub(crate) fn get_str(buf: &[u8], at: usize, len: usize) -> String {
    let field = &buf[at..(at + len).min(buf.len())];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end])
        .trim_end()
        .to_string()
}

pub(crate) fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}
