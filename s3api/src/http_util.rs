//! HTTP details of S3 objects: byte ranges, conditional requests, object metadata headers and
//! the response-* overrides.

use std::time::SystemTime;

use http::HeaderMap;

use crate::error::S3Error;
use crate::store::{ObjectHeaders, ObjectInfo};
use crate::time::{parse_http_date, whole_seconds};

/// Largest total size of user metadata (names and values).
pub const MAX_USER_METADATA: usize = 2048;

/// Most bytes the stored object headers other than user metadata (Content-*, Cache-Control,
/// Expires) may hold together: S3's limit on a PUT's whole header section. Each is kept with
/// the object and sent with every GET and HEAD.
pub const MAX_STORED_HEADERS: usize = 8192;
/// Longest key in bytes.
pub const MAX_KEY: usize = 1024;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses a Range header against an object of `size` bytes: `Ok(None)` means the whole object
/// (no header, or one S3 ignores), `Ok(Some(range))` a satisfiable range, `Err` InvalidRange.
pub fn parse_range(
    value: Option<&str>,
    size: u64,
) -> Result<Option<std::ops::Range<u64>>, S3Error> {
    let Some(value) = value else { return Ok(None) };
    // Range units are case-insensitive (RFC 9110 §14.1).
    let trimmed = value.trim();
    let Some(spec) = trimmed
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .and_then(|_| trimmed.get(6..))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Some(n) = position(last) else {
            return Ok(None);
        };
        if n == 0 {
            return Err(S3Error::invalid_range(size, value));
        }
        if size == 0 {
            // The last n bytes of nothing: the whole (empty) object, as S3 answers.
            return Ok(None);
        }
        size.saturating_sub(n)..size
    } else {
        let Some(a) = position(first) else {
            return Ok(None);
        };
        let b = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            match position(last) {
                Some(b) if b >= a => b.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if a >= size {
            return Err(S3Error::invalid_range(size, value));
        }
        a..b + 1
    };
    Ok(Some(range))
}

/// A byte position of a Range header: digits, a number too large for 64 bits standing for the
/// largest (it is past any object's end all the same); anything else is None.
fn position(text: &str) -> Option<u64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().unwrap_or(u64::MAX))
}

/// Whether an ETag in `list` matches `etag`: with `weak` comparison a weak candidate
/// (`W/"..."`) matches too (If-None-Match), with strong comparison it never does (If-Match,
/// RFC 9110 §13.1.1).
fn etag_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').any(|candidate| {
        let c = candidate.trim();
        let c = match c.strip_prefix("W/") {
            Some(_) if !weak => return false,
            Some(weak_tag) => weak_tag,
            None => c,
        };
        c == "*" || c.trim_matches('"') == etag
    })
}

/// Evaluates If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since (RFC 7232
/// order, S3 precedence) with headers named `prefix` + name (`""` for GET/HEAD,
/// `"x-amz-copy-source-"` for copy sources). `not_modified` is what a failed If-None-Match or
/// If-Modified-Since gives, told the header that failed (304 for reads, 412 for copies); a
/// failed If-Match or If-Unmodified-Since is a 412 naming its header.
pub fn check_preconditions(
    headers: &HeaderMap,
    prefix: &str,
    info: &ObjectInfo,
    not_modified: impl Fn(&str) -> S3Error,
) -> Result<(), S3Error> {
    let failed = |name: &str| format!("{prefix}{name}");
    let h = |name: &str| header(headers, &format!("{prefix}{name}"));
    // An ETag list may come in several header lines: they are one list.
    let list = |name: &str| {
        let all: Vec<&str> = headers
            .get_all(format!("{prefix}{name}"))
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!all.is_empty()).then(|| all.join(","))
    };
    let modified = whole_seconds(info.last_modified);
    let if_match = list("if-match");
    if let Some(etags) = if_match {
        if !etag_matches(&etags, &info.etag, false) {
            return Err(S3Error::precondition_failed(&failed("If-Match")));
        }
    } else if let Some(since) = h("if-unmodified-since").and_then(parse_http_date)
        && modified > since
    {
        return Err(S3Error::precondition_failed(&failed("If-Unmodified-Since")));
    }
    if let Some(etags) = list("if-none-match") {
        if etag_matches(&etags, &info.etag, true) {
            return Err(not_modified(&failed("If-None-Match")));
        }
    } else if let Some(since) = h("if-modified-since")
        .and_then(parse_http_date)
        // A date after the server's clock is no date (RFC 2616, as S3 answers): 200, not 304.
        .filter(|since| *since <= SystemTime::now())
        && modified <= since
    {
        return Err(not_modified(&failed("If-Modified-Since")));
    }
    Ok(())
}

/// Refuses headers asking a write for what Zonestore does not do — server-side encryption
/// (also with a customer's key), Object Lock retention, object tags — rather than storing the
/// object without it while the client believes otherwise.
pub fn refuse_unsupported_write_headers(headers: &HeaderMap) -> Result<(), S3Error> {
    for name in headers.keys().map(|n| n.as_str()) {
        if name.starts_with("x-amz-server-side-encryption")
            || name.starts_with("x-amz-copy-source-server-side-encryption")
        {
            return Err(S3Error::not_implemented(&format!(
                "Server-side encryption (the {name} header)"
            )));
        }
        if name.starts_with("x-amz-object-lock-") {
            return Err(S3Error::invalid_request(
                "Bucket is missing Object Lock Configuration",
            ));
        }
        // One storage class: another (cheaper, colder) is refused rather than silently not
        // given.
        if name == "x-amz-storage-class"
            && headers.get(name).and_then(|v| v.to_str().ok()) != Some("STANDARD")
        {
            return Err(S3Error::invalid_storage_class());
        }
        if name == "x-amz-tagging" {
            return Err(S3Error::not_implemented(
                "Object tagging (the x-amz-tagging header)",
            ));
        }
        // An append at an offset (S3 Express) would otherwise replace the whole object with
        // what was to be appended; a website redirect would be dropped.
        if name == "x-amz-write-offset-bytes" || name == "x-amz-website-redirect-location" {
            return Err(S3Error::not_implemented(&format!("The {name} header")));
        }
    }
    Ok(())
}

/// Reads the object headers a writer sets (Content-*, Cache-Control, Expires, x-amz-meta-*),
/// removing `aws-chunked` from Content-Encoding. Refuses metadata over 2 KiB.
pub fn object_headers(headers: &HeaderMap) -> Result<ObjectHeaders, S3Error> {
    // Clients send these in UTF-8 too (a file name in Content-Disposition): kept as sent,
    // as x-amz-meta-* values are, rather than dropped for not being ASCII. Other bytes (a
    // Latin-1 file name) could not be returned as sent: refused, not altered.
    let text = |name: &str, value: &http::HeaderValue| {
        String::from_utf8(value.as_bytes().to_vec()).map_err(|_| {
            S3Error::invalid_argument(format!(
                "header {name} holds bytes that are not UTF-8, which could not be returned as sent"
            ))
        })
    };
    let get = |name: &str| headers.get(name).map(|v| text(name, v)).transpose();
    let content_encoding = get("content-encoding")?.and_then(|v| {
        let kept: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        (!kept.is_empty()).then(|| kept.join(","))
    });
    let mut user_meta = Vec::new();
    let mut meta_size = 0;
    for (name, value) in headers {
        if let Some(n) = name.as_str().strip_prefix("x-amz-meta-") {
            let v = text(name.as_str(), value)?;
            meta_size += n.len() + v.len();
            user_meta.push((n.to_ascii_lowercase(), v));
        }
    }
    if meta_size > MAX_USER_METADATA {
        return Err(S3Error::metadata_too_large(meta_size));
    }
    user_meta.sort();
    let stored = ObjectHeaders {
        content_type: get("content-type")?,
        content_encoding,
        content_disposition: get("content-disposition")?,
        content_language: get("content-language")?,
        cache_control: get("cache-control")?,
        expires: get("expires")?,
        user_meta,
    };
    let size: usize = [
        &stored.content_type,
        &stored.content_encoding,
        &stored.content_disposition,
        &stored.content_language,
        &stored.cache_control,
        &stored.expires,
    ]
    .iter()
    .filter_map(|v| v.as_ref().map(String::len))
    .sum();
    if size > MAX_STORED_HEADERS {
        return Err(S3Error::header_section_too_large(size));
    }
    Ok(stored)
}

/// A user metadata value as S3 returns it: as stored when it is ASCII, else encoded as RFC 2047
/// says (`=?UTF-8?B?...?=`, the UTF-8 bytes in base64) so that it survives clients that read
/// header bytes as Latin-1 (S3 returns non-ASCII metadata "mail-safe" in this form).
pub fn mail_safe_metadata(value: &str) -> std::borrow::Cow<'_, str> {
    use base64::Engine;
    if value.is_ascii() {
        return value.into();
    }
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(value)
    )
    .into()
}

/// Refuses a request whose headers that change what it does (conditions, digests and
/// checksums, lengths, ranges, the copy source, the encoding) hold bytes other than visible
/// ASCII. Read as absent, such a header would be ignored: a conditional write would overwrite
/// unconditionally, a digest would go unchecked.
pub fn check_header_bytes(headers: &HeaderMap) -> Result<(), S3Error> {
    for (name, value) in headers {
        let n = name.as_str();
        let bears_meaning = n.starts_with("if-")
            || (n.starts_with("x-amz-") && !n.starts_with("x-amz-meta-"))
            || matches!(
                n,
                "content-md5" | "content-length" | "content-encoding" | "range"
            );
        if bears_meaning && value.to_str().is_err() {
            return Err(S3Error::invalid_argument(format!(
                "header {n} holds bytes that are not printable ASCII"
            )));
        }
    }
    Ok(())
}

/// Whether a key is acceptable.
pub fn check_key(key: &str) -> Result<(), S3Error> {
    if key.is_empty() {
        return Err(S3Error::invalid_argument("The key must not be empty."));
    }
    if key.len() > MAX_KEY {
        return Err(S3Error::key_too_long(key.len()));
    }
    if key.contains('\0') {
        // XML 1.0 cannot carry it, so no listing could show the key.
        return Err(S3Error::invalid_argument(
            "The key contains a NUL character, which no S3 listing can show.",
        ));
    }
    Ok(())
}

/// Bucket naming rules (general purpose buckets).
pub fn check_bucket_name(name: &str) -> Result<(), S3Error> {
    let bad = |why: &str| Err(S3Error::invalid_bucket_name(name, why));
    if !(3..=63).contains(&name.len()) {
        return bad("a bucket name has 3 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return bad("only lowercase letters, digits, dots and hyphens are allowed");
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("a bucket name begins and ends with a letter or digit");
    }
    if name.contains("..") {
        return bad("two adjacent dots are not allowed");
    }
    if name.contains(".-") || name.contains("-.") {
        // Each dot-separated label of a DNS name begins and ends with a letter or digit.
        return bad("a dot next to a hyphen is not allowed");
    }
    // Formatted as an address: four labels of digits (leading zeros included, which the
    // address parser refuses).
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() == 4
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("a bucket name is not formatted as an IP address");
    }
    for p in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(p) {
            return bad("reserved prefix");
        }
    }
    for s in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(s) {
            return bad("reserved suffix");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_metadata_is_returned_encoded_as_rfc_2047_says() {
        assert_eq!(mail_safe_metadata("plain value"), "plain value");
        assert_eq!(mail_safe_metadata(""), "");
        // "café" in UTF-8 is 63 61 66 c3 a9.
        assert_eq!(mail_safe_metadata("café"), "=?UTF-8?B?Y2Fmw6k=?=");
        assert_eq!(mail_safe_metadata("日本"), "=?UTF-8?B?5pel5pys?=");
    }

    #[test]
    fn a_condition_or_digest_that_is_not_ascii_is_refused_not_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-meta-name",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        headers.insert("if-match", http::HeaderValue::from_static("\"abc\""));
        assert!(
            check_header_bytes(&headers).is_ok(),
            "metadata may hold UTF-8"
        );
        for name in [
            "if-match",
            "content-md5",
            "x-amz-checksum-crc32",
            "x-amz-copy-source-if-match",
        ] {
            let mut bad = headers.clone();
            bad.insert(
                name,
                http::HeaderValue::from_bytes(b"\"\xc3\xa9\"").unwrap(),
            );
            let e = check_header_bytes(&bad).unwrap_err();
            assert_eq!(e.code, "InvalidArgument");
            assert!(e.message.contains(name), "{}", e.message);
        }
    }
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stored_headers_are_kept_as_sent_or_refused_never_altered() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-disposition",
            http::HeaderValue::from_bytes(b"attachment; filename=\"caf\xc3\xa9.pdf\"").unwrap(),
        );
        let kept = object_headers(&headers).unwrap();
        assert_eq!(
            kept.content_disposition.as_deref(),
            Some("attachment; filename=\"caf\u{e9}.pdf\"")
        );
        for name in ["content-disposition", "x-amz-meta-origin"] {
            let mut latin1 = HeaderMap::new();
            latin1.insert(name, http::HeaderValue::from_bytes(b"caf\xe9.pdf").unwrap());
            let e = object_headers(&latin1).unwrap_err();
            assert_eq!(e.code, "InvalidArgument");
            assert!(e.message.contains(name), "{}", e.message);
        }
    }

    #[test]
    fn keys_no_listing_could_show_are_refused() {
        assert!(check_key("photos/2026/a.jpg").is_ok());
        assert_eq!(check_key("").unwrap_err().code, "InvalidArgument");
        assert_eq!(check_key("nul\0key").unwrap_err().code, "InvalidArgument");
        assert_eq!(
            check_key(&"k".repeat(1025)).unwrap_err().code,
            "KeyTooLongError"
        );
    }

    #[test]
    fn object_headers_in_utf8_are_kept() {
        let mut h = HeaderMap::new();
        let disposition = "attachment; filename=\"\u{fc}bersicht.pdf\"";
        h.insert(
            "content-disposition",
            http::HeaderValue::from_bytes(disposition.as_bytes()).unwrap(),
        );
        h.insert("content-type", "text/plain".parse().unwrap());
        let o = object_headers(&h).unwrap();
        assert_eq!(o.content_disposition.as_deref(), Some(disposition));
        assert_eq!(o.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn ranges_as_s3_reads_them() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100).unwrap(), Some(0..10));
        assert_eq!(
            parse_range(Some("Bytes=0-9"), 100).unwrap(),
            Some(0..10),
            "range units are case-insensitive"
        );
        assert_eq!(parse_range(Some("items=0-9"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=90-"), 100).unwrap(), Some(90..100));
        assert_eq!(parse_range(Some("bytes=-10"), 100).unwrap(), Some(90..100));
        assert_eq!(parse_range(Some("bytes=-500"), 100).unwrap(), Some(0..100));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100).unwrap(),
            Some(50..100)
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100).unwrap_err().code,
            "InvalidRange"
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100).unwrap_err().code,
            "InvalidRange"
        );
        assert_eq!(
            parse_range(Some("bytes=0-0"), 0).unwrap_err().code,
            "InvalidRange"
        );
        assert_eq!(parse_range(Some("bytes=5-2"), 100).unwrap(), None);
        // Positions too large for 64 bits are past the end, not malformed.
        assert_eq!(
            parse_range(Some("bytes=0-99999999999999999999"), 100).unwrap(),
            Some(0..100)
        );
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999-"), 100)
                .unwrap_err()
                .code,
            "InvalidRange"
        );
        assert_eq!(
            parse_range(Some("bytes=-99999999999999999999"), 100).unwrap(),
            Some(0..100)
        );
        assert_eq!(parse_range(Some("bytes=+1-2"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("items=0-1"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100).unwrap(), None);
    }

    fn info() -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size: 1,
            etag: "abc".into(),
            last_modified: UNIX_EPOCH + Duration::from_secs(1_000_000),
            headers: ObjectHeaders::default(),
            checksums: vec![],
            checksum_type: None,
            owner: "o".into(),
            part_sizes: vec![],
        }
    }

    #[test]
    fn if_match_compares_strongly_and_if_none_match_weakly() {
        let read = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            check_preconditions(&h, "", &info(), |_| S3Error::not_modified())
        };
        assert_eq!(
            read("if-match", "W/\"abc\"").unwrap_err().code,
            "PreconditionFailed"
        );
        assert!(read("if-match", "\"x\", \"abc\"").is_ok(), "a list");
        assert_eq!(
            read("if-none-match", "W/\"abc\"").unwrap_err().code,
            "NotModified"
        );
    }

    #[test]
    fn precondition_precedence_follows_s3() {
        let mut h = HeaderMap::new();
        h.insert("if-match", "\"abc\"".parse().unwrap());
        h.insert(
            "if-unmodified-since",
            "Thu, 01 Jan 1970 00:00:01 GMT".parse().unwrap(),
        );
        assert!(
            check_preconditions(&h, "", &info(), |_| S3Error::not_modified()).is_ok(),
            "If-Match true wins over If-Unmodified-Since false"
        );
        let mut h = HeaderMap::new();
        h.insert("if-none-match", "\"abc\"".parse().unwrap());
        h.insert(
            "if-modified-since",
            "Thu, 01 Jan 1970 00:00:01 GMT".parse().unwrap(),
        );
        assert_eq!(
            check_preconditions(&h, "", &info(), |_| S3Error::not_modified())
                .unwrap_err()
                .code,
            "NotModified"
        );
        let mut h = HeaderMap::new();
        h.insert("if-match", "\"other\"".parse().unwrap());
        assert_eq!(
            check_preconditions(&h, "", &info(), |_| S3Error::not_modified())
                .unwrap_err()
                .code,
            "PreconditionFailed"
        );
        // A date after the server's clock is no date: the object is sent.
        let mut h = HeaderMap::new();
        h.insert(
            "if-modified-since",
            "Mon, 12 Oct 2099 17:50:30 GMT".parse().unwrap(),
        );
        assert!(check_preconditions(&h, "", &info(), |_| S3Error::not_modified()).is_ok());
        // An ETag list over several header lines is one list.
        let mut h = HeaderMap::new();
        h.append("if-none-match", "\"other\"".parse().unwrap());
        h.append(
            "if-none-match",
            format!("\"{}\"", info().etag).parse().unwrap(),
        );
        assert_eq!(
            check_preconditions(&h, "", &info(), |_| S3Error::not_modified())
                .unwrap_err()
                .code,
            "NotModified"
        );
    }

    /// A copy source's failed condition names the header that failed, as S3 does.
    #[test]
    fn a_failed_copy_source_condition_names_its_header() {
        let condition = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(format!("x-amz-copy-source-{name}").as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
            let e = check_preconditions(
                &h,
                "x-amz-copy-source-",
                &info(),
                S3Error::precondition_failed,
            )
            .unwrap_err();
            assert_eq!(e.code, "PreconditionFailed");
            e.extra
                .into_iter()
                .find(|(k, _)| *k == "Condition")
                .map(|(_, v)| v)
                .unwrap()
        };
        let long_ago = "Thu, 01 Jan 1970 00:00:01 GMT";
        let later = "Sat, 01 Jan 2000 00:00:00 GMT";
        assert_eq!(condition("if-match", "\"x\""), "x-amz-copy-source-If-Match");
        assert_eq!(
            condition("if-none-match", "\"abc\""),
            "x-amz-copy-source-If-None-Match"
        );
        assert_eq!(
            condition("if-unmodified-since", long_ago),
            "x-amz-copy-source-If-Unmodified-Since"
        );
        assert_eq!(
            condition("if-modified-since", later),
            "x-amz-copy-source-If-Modified-Since"
        );
    }

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.v2", "a1b"] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Upper",
            "-start",
            "end-",
            "a..b",
            "192.168.1.1",
            "192.168.01.1",
            "10.0.0.001",
            "xn--abc",
            "x".repeat(64).as_str(),
            "under_score",
            "foo.-bar",
            "foo-.bar",
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-amz-meta-Color", "blue".parse().unwrap());
        h.insert("content-encoding", "gzip,aws-chunked".parse().unwrap());
        let o = object_headers(&h).unwrap();
        assert_eq!(o.user_meta, vec![("color".to_string(), "blue".to_string())]);
        assert_eq!(o.content_encoding.as_deref(), Some("gzip"));
        let mut h = HeaderMap::new();
        h.insert("x-amz-meta-big", "x".repeat(3000).parse().unwrap());
        assert_eq!(object_headers(&h).unwrap_err().code, "MetadataTooLarge");
        let mut h = HeaderMap::new();
        h.insert("content-type", "x".repeat(5000).parse().unwrap());
        h.insert("content-disposition", "y".repeat(3000).parse().unwrap());
        assert!(object_headers(&h).is_ok());
        h.insert("cache-control", "z".repeat(500).parse().unwrap());
        assert_eq!(
            object_headers(&h).unwrap_err().code,
            "RequestHeaderSectionTooLarge"
        );
    }
}
