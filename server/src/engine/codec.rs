//! A small, explicit binary encoding for index values and record payloads: little-endian
//! integers, length-prefixed strings and byte strings, each structure led by a version byte so
//! that formats can evolve.

/// A value that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt encoded value: {0}")]
pub struct DecodeError(pub String);

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    /// An empty encoder.
    pub fn new() -> Self {
        Enc::default()
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Bytes with a u32 length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }

    /// A string with a u32 length prefix.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// An optional string: a presence byte, then the string.
    pub fn opt_str(&mut self, v: &Option<String>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).str(s),
            None => self.u8(0),
        }
    }

    /// An unsigned LEB128 varint: 7 bits a byte, low bits first (1 byte below 128).
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads encoded fields in order.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    /// A decoder over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("needs {n} bytes at {}", self.at)))?;
        let slice = &self.buf[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// An unsigned LEB128 varint (see [`Enc::varint`]); one longer than a u64, or with bits
    /// beyond 64, is an error.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(DecodeError("varint beyond 64 bits".into()));
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint longer than 10 bytes".into()))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A length-prefixed string.
    pub fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| DecodeError("string is not UTF-8".into()))
    }

    /// An optional string.
    pub fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            other => Err(DecodeError(format!("presence byte {other}"))),
        }
    }

    /// A version byte that must be `expected`.
    pub fn version(&mut self, expected: u8, what: &str) -> Result<(), DecodeError> {
        let v = self.u8()?;
        if v == expected {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{what} format version {v}, expected {expected}"
            )))
        }
    }

    /// A count of items that each take at least `min_item` bytes, checked against what is left
    /// so that corrupt counts cannot make a decoder allocate without bound.
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        self.check_count(n, min_item)
    }

    /// [`Dec::count`] for a count written as a varint.
    pub fn varint_count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        self.check_count(n, min_item)
    }

    fn check_count(&self, n: usize, min_item: usize) -> Result<usize, DecodeError> {
        if n.saturating_mul(min_item.max(1)) > self.buf.len() - self.at {
            return Err(DecodeError(format!("count {n} exceeds the data")));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Enc::new();
        e.u8(1)
            .u16(2)
            .u32(3)
            .u64(4)
            .str("héllo")
            .opt_str(&None)
            .opt_str(&Some("x".into()))
            .bytes(&[9, 9]);
        let b = e.finish();
        let mut d = Dec::new(&b);
        assert_eq!(d.u8().unwrap(), 1);
        assert_eq!(d.u16().unwrap(), 2);
        assert_eq!(d.u32().unwrap(), 3);
        assert_eq!(d.u64().unwrap(), 4);
        assert_eq!(d.str().unwrap(), "héllo");
        assert_eq!(d.opt_str().unwrap(), None);
        assert_eq!(d.opt_str().unwrap(), Some("x".into()));
        assert_eq!(d.bytes().unwrap(), &[9, 9]);
        assert!(d.u8().is_err());
    }

    proptest::proptest! {
        /// Every u64 round-trips as a varint, in as few bytes as its bits need.
        #[test]
        fn varints_round_trip(v in proptest::prelude::any::<u64>()) {
            let mut e = Enc::new();
            e.varint(v).u8(7);
            let b = e.finish();
            let bits = 64 - v.leading_zeros() as usize;
            proptest::prop_assert_eq!(b.len() - 1, bits.div_ceil(7).max(1));
            let mut d = Dec::new(&b);
            proptest::prop_assert_eq!(d.varint().unwrap(), v);
            proptest::prop_assert_eq!(d.u8().unwrap(), 7);
        }
    }

    #[test]
    fn varints_beyond_64_bits_are_refused() {
        // 2^64 (bit 64 set in the tenth byte), and eleven bytes.
        let over = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02];
        assert!(Dec::new(&over).varint().is_err());
        assert!(Dec::new(&[0xff; 11]).varint().is_err());
        assert!(Dec::new(&[0x80]).varint().is_err(), "cut short");
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Dec::new(&max).varint().unwrap(), u64::MAX);
    }

    #[test]
    fn absurd_counts_are_refused() {
        let mut e = Enc::new();
        e.u32(u32::MAX);
        let b = e.finish();
        assert!(Dec::new(&b).count(8).is_err());
    }
}
