//! AWS Signature Version 4 as S3 verifies it: canonical request (no URI normalisation, S3's
//! encoding rules), string to sign, signing key (computed with `aws-sigv4`), and the chunk and
//! trailer signatures of aws-chunked bodies.

use std::time::SystemTime;

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use sha2::{Digest, Sha256};

use crate::query;

/// Characters left as they are by AWS URI encoding.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping `/` (for paths).
const UNRESERVED_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');

/// SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The canonical URI of a raw (still percent-encoded) path: decoded, then re-encoded the AWS
/// way, without normalising `.` or `//`.
pub fn canonical_uri(raw_path: &str) -> String {
    let bytes: Vec<u8> = percent_decode_str(raw_path).collect();
    let s = percent_encode(&bytes, UNRESERVED_SLASH).to_string();
    if s.is_empty() { "/".into() } else { s }
}

/// The canonical query string; with `presigned`, X-Amz-Signature is left out.
pub fn canonical_query(raw_query: Option<&str>, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = query::decode_bytes(k);
            if presigned && k == b"X-Amz-Signature" {
                return None;
            }
            let v = query::decode_bytes(v);
            Some((
                percent_encode(&k, UNRESERVED).to_string(),
                percent_encode(&v, UNRESERVED).to_string(),
            ))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// How whitespace in a signed header's value is folded in the canonical request. The
/// specification (and the AWS SDKs for Rust, Go and Java) trims and collapses spaces only;
/// botocore (boto3, aws-cli) folds any whitespace, which in a header it sends can only be tabs
/// (it sends values as Latin-1: a Unicode space arrives as a byte that is not UTF-8). A request
/// is taken as signed either way; folding more than tabs would let other whitespace (a
/// no-break space) be put in place of a signed space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folding {
    /// Spaces trimmed at both ends, runs of them made one.
    Spaces,
    /// Spaces and tabs, likewise.
    SpacesAndTabs,
}

impl Folding {
    /// The value folded; `None` if it is not UTF-8 (its bytes cannot be taken in the canonical
    /// request as they came, and a lossy form would let other bytes pass for them).
    fn fold(self, value: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(value).ok()?;
        Some(match self {
            Folding::Spaces => text
                .split(' ')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            Folding::SpacesAndTabs => text
                .split([' ', '\t'])
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        })
    }
}

/// The foldings whose canonical requests differ for these signed headers: both when a value
/// holds a tab, else the one.
pub fn foldings(headers: &HeaderMap, signed: &[&str]) -> &'static [Folding] {
    let tab = signed.iter().any(|name| {
        headers
            .get_all(*name)
            .iter()
            .any(|v| v.as_bytes().contains(&b'\t'))
    });
    if tab {
        &[Folding::Spaces, Folding::SpacesAndTabs]
    } else {
        &[Folding::Spaces]
    }
}

/// The canonical request (header values folded by the specification's rule), or `None` if a
/// signed header is missing or its value is not UTF-8.
pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    signed: &[&str],
    payload_hash: &str,
    presigned: bool,
) -> Option<String> {
    canonical_request_folded(
        method,
        raw_path,
        raw_query,
        headers,
        signed,
        payload_hash,
        presigned,
        Folding::Spaces,
    )
}

/// [`canonical_request`] with header values folded by `folding`.
#[allow(clippy::too_many_arguments)]
pub fn canonical_request_folded(
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    signed: &[&str],
    payload_hash: &str,
    presigned: bool,
    folding: Folding,
) -> Option<String> {
    let mut block = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| folding.fold(v.as_bytes()))
            .collect::<Option<_>>()?;
        if values.is_empty() {
            return None;
        }
        block.push_str(name);
        block.push(':');
        block.push_str(&values.join(","));
        block.push('\n');
    }
    Some(format!(
        "{method}\n{}\n{}\n{block}\n{}\n{payload_hash}",
        canonical_uri(raw_path),
        canonical_query(raw_query, presigned),
        signed.join(";")
    ))
}

/// The string to sign of a request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// The signing key for a secret, date and region (service `s3`).
pub fn signing_key(secret: &str, time: SystemTime, region: &str) -> Vec<u8> {
    generate_signing_key(secret, time, region, "s3")
        .as_ref()
        .to_vec()
}

/// Hex HMAC-SHA256 signature of `string_to_sign`.
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    calculate_signature(key, string_to_sign.as_bytes())
}

/// The signature of one aws-chunked chunk whose data hashes to `data_sha256` (hex).
pub fn chunk_signature(
    key: &[u8],
    amz_date: &str,
    scope: &str,
    previous: &str,
    data_sha256: &str,
) -> String {
    sign(
        key,
        &format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{EMPTY_SHA256}\n{data_sha256}"
        ),
    )
}

/// The signature of the trailers of an aws-chunked body.
pub fn trailer_signature(
    key: &[u8],
    amz_date: &str,
    scope: &str,
    previous: &str,
    trailers: &[(String, String)],
) -> String {
    let mut sorted: Vec<&(String, String)> = trailers.iter().collect();
    sorted.sort();
    let canonical: String = sorted
        .iter()
        .map(|(k, v)| format!("{}:{}\n", k.to_ascii_lowercase(), v.trim()))
        .collect();
    sign(
        key,
        &format!(
            "AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous}\n{}",
            sha256_hex(canonical.as_bytes())
        ),
    )
}

/// Constant-time comparison of signatures.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_amz_date;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const SCOPE: &str = "20130524/us-east-1/s3/aws4_request";

    fn key() -> Vec<u8> {
        signing_key(
            SECRET,
            parse_amz_date("20130524T000000Z").unwrap(),
            "us-east-1",
        )
    }

    #[test]
    fn signing_key_matches_the_aws_example() {
        assert_eq!(
            hex::encode(key()),
            "dbb893acc010964918f1fd433add87c70e8b0db6be30c1fbeafefa5ec6ba8378"
        );
    }

    #[test]
    fn get_object_with_range_example() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert("range", "bytes=0-9".parse().unwrap());
        h.insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
        h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        let signed = ["host", "range", "x-amz-content-sha256", "x-amz-date"];
        let c =
            canonical_request("GET", "/test.txt", None, &h, &signed, EMPTY_SHA256, false).unwrap();
        let sig = sign(&key(), &string_to_sign("20130524T000000Z", SCOPE, &c));
        assert_eq!(
            sig,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// A signed header value that is not UTF-8 gives no canonical request (the signature then
    /// fails): read lossily, other bytes would pass for its own.
    #[test]
    fn a_signed_header_that_is_not_utf8_signs_nothing() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert(
            "x-amz-meta-a",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let signed = ["host", "x-amz-meta-a"];
        assert!(canonical_request("GET", "/k", None, &h, &signed, EMPTY_SHA256, false).is_none());
        h.insert(
            "x-amz-meta-a",
            http::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        );
        assert!(canonical_request("GET", "/k", None, &h, &signed, EMPTY_SHA256, false).is_some());
    }

    #[test]
    fn a_plus_in_the_query_is_signed_as_a_space() {
        assert_eq!(
            canonical_query(Some("prefix=my+dir/&a%2Bb=c"), false),
            "a%2Bb=c&prefix=my%20dir%2F"
        );
    }

    #[test]
    fn query_and_presigned_examples() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
        h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        let signed = ["host", "x-amz-content-sha256", "x-amz-date"];
        let c = canonical_request(
            "GET",
            "/",
            Some("max-keys=2&prefix=J"),
            &h,
            &signed,
            EMPTY_SHA256,
            false,
        )
        .unwrap();
        assert_eq!(
            sign(&key(), &string_to_sign("20130524T000000Z", SCOPE, &c)),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
        let c = canonical_request(
            "GET",
            "/",
            Some("lifecycle"),
            &h,
            &signed,
            EMPTY_SHA256,
            false,
        )
        .unwrap();
        assert_eq!(
            sign(&key(), &string_to_sign("20130524T000000Z", SCOPE, &c)),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";
        let c = canonical_request(
            "GET",
            "/test.txt",
            Some(q),
            &h,
            &["host"],
            "UNSIGNED-PAYLOAD",
            true,
        )
        .unwrap();
        assert_eq!(
            sign(&key(), &string_to_sign("20130524T000000Z", SCOPE, &c)),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn chunk_and_trailer_signatures_match_the_aws_examples() {
        let a64k = vec![b'a'; 65536];
        let s1 = chunk_signature(
            &key(),
            "20130524T000000Z",
            SCOPE,
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            &sha256_hex(&a64k),
        );
        assert_eq!(
            s1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let trailer = trailer_signature(
            &key(),
            "20130524T000000Z",
            SCOPE,
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
            &[("x-amz-checksum-crc32c".into(), "sOO8/Q==".into())],
        );
        assert_eq!(
            trailer,
            "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
        );
    }

    #[test]
    fn uri_encoding_of_botocore_keys() {
        assert_eq!(
            canonical_uri("/bkt/dir/a%20b%2Bc~%21%2A%27%28%29.txt"),
            "/bkt/dir/a%20b%2Bc~%21%2A%27%28%29.txt"
        );
        assert_eq!(canonical_uri("/test$file.text"), "/test%24file.text");
        assert_eq!(canonical_uri(""), "/");
    }
}
