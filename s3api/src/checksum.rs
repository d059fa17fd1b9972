//! Object checksums S3 clients send and ask for: CRC32, CRC32C, CRC64NVME, SHA1 and SHA256,
//! base64 of the big-endian value (or raw digest); Content-MD5; and the composite form of
//! multipart uploads.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::S3Error;

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// CRC32 (IEEE).
    Crc32,
    /// CRC32C (Castagnoli).
    Crc32c,
    /// CRC64 of NVMe.
    Crc64Nvme,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl Algorithm {
    /// All algorithms.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// Parses an algorithm name as S3 spells it (case-insensitive).
    pub fn parse(name: &str) -> Option<Algorithm> {
        Some(match name.to_ascii_uppercase().as_str() {
            "CRC32" => Algorithm::Crc32,
            "CRC32C" => Algorithm::Crc32c,
            "CRC64NVME" => Algorithm::Crc64Nvme,
            "SHA1" => Algorithm::Sha1,
            "SHA256" => Algorithm::Sha256,
            _ => return None,
        })
    }

    /// The name: `CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    /// The header carrying it: `x-amz-checksum-crc32` and so on.
    pub fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name().to_ascii_lowercase())
    }

    /// The algorithm of a header name, if it is a checksum header.
    pub fn from_header(name: &str) -> Option<Algorithm> {
        name.strip_prefix("x-amz-checksum-")
            .and_then(Algorithm::parse)
    }

    /// Decoded length of a value.
    fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64Nvme => 8,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }

    /// Checks that `value` is a well-formed value of this algorithm.
    pub fn validate(self, value: &str) -> Result<(), S3Error> {
        match STANDARD.decode(value.trim()) {
            Ok(bytes) if bytes.len() == self.digest_len() => Ok(()),
            _ => Err(S3Error::invalid_request(format!(
                "Value for {} header is invalid.",
                self.header()
            ))),
        }
    }
}

/// Computes one checksum over streamed data.
#[derive(Clone)]
pub enum Hasher {
    /// CRC32.
    Crc32(crc32fast::Hasher),
    /// CRC32C.
    Crc32c(u32),
    /// CRC64NVME.
    Crc64Nvme(crc64fast_nvme::Digest),
    /// SHA-1.
    Sha1(Sha1),
    /// SHA-256.
    Sha256(Sha256),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.algorithm().name())
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
            Algorithm::Crc32c => Hasher::Crc32c(0),
            Algorithm::Crc64Nvme => Hasher::Crc64Nvme(crc64fast_nvme::Digest::new()),
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Crc32(_) => Algorithm::Crc32,
            Hasher::Crc32c(_) => Algorithm::Crc32c,
            Hasher::Crc64Nvme(_) => Algorithm::Crc64Nvme,
            Hasher::Sha1(_) => Algorithm::Sha1,
            Hasher::Sha256(_) => Algorithm::Sha256,
        }
    }

    /// Adds data.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(data),
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Hasher::Crc64Nvme(h) => h.write(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The raw value bytes (big-endian for CRCs).
    pub fn finish_raw(self) -> Vec<u8> {
        match self {
            Hasher::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Hasher::Crc32c(c) => c.to_be_bytes().to_vec(),
            Hasher::Crc64Nvme(h) => h.sum64().to_be_bytes().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// The base64 value S3 shows.
    pub fn finish(self) -> String {
        STANDARD.encode(self.finish_raw())
    }
}

/// Checksum of `data` with `algorithm`, base64.
pub fn compute(algorithm: Algorithm, data: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(data);
    h.finish()
}

/// The composite checksum of a multipart upload: the checksum of the parts' raw checksums,
/// base64, then `-N`.
pub fn composite(algorithm: Algorithm, part_values: &[String]) -> Result<String, S3Error> {
    let mut h = Hasher::new(algorithm);
    for v in part_values {
        let raw = STANDARD
            .decode(v.trim())
            .map_err(|_| S3Error::invalid_part("malformed part checksum"))?;
        h.update(&raw);
    }
    Ok(format!("{}-{}", h.finish(), part_values.len()))
}

/// Decodes a Content-MD5 header.
pub fn parse_content_md5(value: &str) -> Result<[u8; 16], S3Error> {
    STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(S3Error::invalid_digest)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Base64.
pub fn base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_the_s3_documentation() {
        assert_eq!(compute(Algorithm::Crc32, b"hello"), "NhCmhg==");
        assert_eq!(compute(Algorithm::Crc32, b""), "AAAAAA==");
        assert_eq!(compute(Algorithm::Crc32, b"hello world"), "DUoRhQ==");
        assert_eq!(compute(Algorithm::Crc32c, b"hello world"), "yZRlqg==");
        assert_eq!(
            compute(Algorithm::Crc64Nvme, b"hello world"),
            "jSnVw/bqjr4="
        );
        assert_eq!(compute(Algorithm::Crc64Nvme, b"123456789"), "rosUhgp5mIg=");
        assert_eq!(compute(Algorithm::Crc32c, b"123456789"), "4waSgw==");
    }

    #[test]
    fn composite_of_the_documented_example() {
        let parts = [
            "r/zBbw==".to_string(),
            "yG5QvA==".to_string(),
            "re91iw==".to_string(),
        ];
        assert_eq!(composite(Algorithm::Crc32, &parts).unwrap(), "eCc0wQ==-3");
    }

    #[test]
    fn malformed_values_are_refused() {
        assert!(Algorithm::Crc32.validate("NhCmhg==").is_ok());
        assert!(Algorithm::Crc32.validate("AAAAAAAAAAA=").is_err());
        assert!(Algorithm::Sha256.validate("!!").is_err());
        assert!(parse_content_md5("XUFAKrxLKna5cZ2REBfFkg==").is_ok());
        assert!(parse_content_md5("nope").is_err());
    }
}
