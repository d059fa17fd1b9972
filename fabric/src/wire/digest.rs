//! CRC32C digests of NVMe/TCP (NVMe/TCP Transport Specification §3.6.1.3/§3.6.1.4): Castagnoli
//! polynomial, initial value and final XOR all ones, stored little endian after the covered bytes.

/// Which digests a connection carries, as the DGST field of ICReq/ICResp encodes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digests {
    /// Header digest (HDGST) on PDUs that may carry one.
    pub header: bool,
    /// Data digest (DDGST) on PDUs with data.
    pub data: bool,
}

impl Digests {
    /// No digests.
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };

    /// Decodes the DGST field (bit 0 HDGST_ENABLE, bit 1 DDGST_ENABLE).
    pub fn from_bits(bits: u8) -> Self {
        Digests {
            header: bits & 0x01 != 0,
            data: bits & 0x02 != 0,
        }
    }

    /// Encodes the DGST field.
    pub fn bits(self) -> u8 {
        u8::from(self.header) | (u8::from(self.data) << 1)
    }
}

/// CRC32C of `bytes` as NVMe/TCP computes it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C over several buffers, as if they were one.
pub fn crc32c_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    parts.into_iter().fold(0, crc32c::crc32c_append)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0u8; 4096]), 0x98F9_4189);
        assert_eq!(crc32c_parts([&b"1234"[..], &b"56789"[..]]), 0xE306_9283);
    }

    #[test]
    fn digest_bits() {
        assert_eq!(
            Digests::from_bits(3),
            Digests {
                header: true,
                data: true
            }
        );
        assert_eq!(Digests::from_bits(2).bits(), 2);
    }
}
