//! Who is asking: SigV4 in the Authorization header or in a presigned URL, SigV2 presigned
//! URLs and headers. Unsigned requests, unknown keys, wrong signatures, skewed clocks and
//! expired URLs are refused here, before anything is read or stored.

pub mod sigv2;
pub mod sigv4;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};

use crate::error::S3Error;
use crate::query;
use crate::time::{amz_date, iso8601, parse_amz_date, parse_http_date};

/// Users: access key to secret key.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Credentials of these (access key, secret key) pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Credentials {
            users: pairs.into_iter().collect(),
        }
    }

    /// The secret of an access key.
    pub fn secret(&self, access_key: &str) -> Option<&str> {
        self.users.get(access_key).map(String::as_str)
    }
}

/// How the body of an authenticated request is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Not signed (UNSIGNED-PAYLOAD, presigned URLs, SigV2).
    Unsigned,
    /// Signed by its SHA-256 (hex), to verify.
    Sha256(String),
    /// aws-chunked with signed chunks (and, with `trailer`, signed trailers).
    StreamingSigned {
        /// Signing key.
        key: Vec<u8>,
        /// x-amz-date.
        amz_date: String,
        /// Credential scope.
        scope: String,
        /// The request's signature, which the first chunk's signature chains from.
        seed: String,
        /// Whether trailers follow.
        trailer: bool,
    },
    /// aws-chunked without chunk signatures, with a trailer.
    StreamingUnsignedTrailer,
}

impl Payload {
    /// A short name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Payload::Unsigned => "unsigned",
            Payload::Sha256(_) => "sha256",
            Payload::StreamingSigned { trailer: false, .. } => "streaming-signed",
            Payload::StreamingSigned { trailer: true, .. } => "streaming-signed-trailer",
            Payload::StreamingUnsignedTrailer => "streaming-unsigned-trailer",
        }
    }
}

/// An authenticated request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user's access key.
    pub access_key: String,
    /// How its body is protected.
    pub payload: Payload,
    /// Whether it came as a presigned URL.
    pub presigned: bool,
}

/// The most a request's time may differ from the server's.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest a SigV4 presigned URL may live.
pub const MAX_PRESIGN: u64 = 604_800;

/// The most header names one signature may sign: far above what any client signs (every
/// `x-amz-meta-*` header of a request included), and a bound on the work a signature check does.
pub const MAX_SIGNED_HEADERS: usize = 512;

/// The names a `SignedHeaders` value lists, refused when one is empty or listed twice, or when
/// there are more than [`MAX_SIGNED_HEADERS`]: each listed name copies its header's value into
/// the canonical request, so a name repeated thousands of times would make one small request
/// cost gigabytes before its signature is found wrong. Names are told apart as header names
/// are, whatever their case: `aaa;Aaa;aAa...` names one header (and copies its value) each time.
fn signed_header_names(value: &str) -> Result<Vec<&str>, &'static str> {
    let names: Vec<&str> = value.split(';').collect();
    if names.len() > MAX_SIGNED_HEADERS {
        return Err("the SignedHeaders list more header names than a request may sign.");
    }
    if names.iter().any(|n| n.is_empty()) {
        return Err("the SignedHeaders contain an empty header name.");
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    if !names.iter().all(|n| seen.insert(n.to_ascii_lowercase())) {
        return Err("the SignedHeaders name a header twice.");
    }
    Ok(names)
}

/// The parts of a request authentication looks at.
#[derive(Debug)]
pub struct RequestParts<'a> {
    /// Method.
    pub method: &'a Method,
    /// Raw (encoded) path.
    pub raw_path: &'a str,
    /// Raw query.
    pub raw_query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The resource path for SigV2 (`/bucket/key`, raw).
    pub v2_resource: &'a str,
}

fn query_value(raw_query: Option<&str>, name: &str) -> Option<String> {
    raw_query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (query::decode(k) == name).then(|| query::decode(v))
    })
}

fn skew_check(request: SystemTime, now: SystemTime) -> Result<(), S3Error> {
    let skew = match now.duration_since(request) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        return Err(S3Error::time_skewed(&amz_date(request), &amz_date(now)));
    }
    Ok(())
}

/// Whether a request is signed with Signature Version 2 (an `AWS ` Authorization header, or a
/// presigned URL's `AWSAccessKeyId`).
pub fn is_sigv2(parts: &RequestParts<'_>) -> bool {
    parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS "))
        || query_value(parts.raw_query, "AWSAccessKeyId").is_some()
}

/// Authenticates a request; `region` is this server's region (any region in a credential scope
/// is accepted, as clients sign with whatever they are configured for).
pub fn authenticate(
    parts: &RequestParts<'_>,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Authenticated, S3Error> {
    // A header holding bytes outside visible ASCII is a malformed one, not none.
    let authorization = match parts.headers.get("authorization") {
        Some(v) => Some(v.to_str().map_err(|_| {
            S3Error::auth_header_malformed("the Authorization header holds non-ASCII bytes")
        })?),
        None => None,
    };
    // Temporary (STS) credentials are not issued here: a session token is refused by name,
    // not ignored (a client left with one from elsewhere would pass unknowingly).
    if parts.headers.contains_key("x-amz-security-token")
        || query_value(parts.raw_query, "X-Amz-Security-Token").is_some()
        || query_value(parts.raw_query, "x-amz-security-token").is_some()
    {
        return Err(S3Error::invalid_token());
    }
    let query_v4 = query_value(parts.raw_query, "X-Amz-Algorithm").is_some();
    let query_v2 = query_value(parts.raw_query, "AWSAccessKeyId").is_some();
    match (authorization, query_v4, query_v2) {
        (Some(_), true, _) | (Some(_), _, true) => Err(S3Error::invalid_argument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        )),
        (Some(h), _, _) if h.starts_with("AWS4-HMAC-SHA256 ") => {
            header_v4(parts, &h["AWS4-HMAC-SHA256 ".len()..], credentials, now)
        }
        (Some(h), _, _) if h.starts_with("AWS ") => header_v2(parts, &h[4..], credentials, now),
        (Some(h), _, _) if h.starts_with("AWS4-ECDSA") => Err(S3Error::not_implemented("SigV4a")),
        (Some(_), _, _) => Err(S3Error::invalid_argument("Unsupported Authorization Type")),
        (None, true, _) => presigned_v4(parts, credentials, now),
        (None, _, true) => presigned_v2(parts, credentials, now),
        (None, false, false) => Err(S3Error::access_denied(
            "Access Denied (the request is not signed)",
        )),
    }
}

/// A SigV4 signature a request carries, with what it is checked against.
struct SignatureClaim<'a> {
    key: &'a [u8],
    amz_date: &'a str,
    scope: &'a str,
    signature: &'a str,
}

impl SignatureClaim<'_> {
    /// Whether the signature signs the request's canonical form (its `signed` headers, the
    /// `payload_hash`), header values folded either way (see [`sigv4::Folding`]).
    fn holds(
        &self,
        parts: &RequestParts<'_>,
        signed: &[&str],
        payload_hash: &str,
        presigned: bool,
    ) -> bool {
        sigv4::foldings(parts.headers, signed)
            .iter()
            .any(|&folding| {
                sigv4::canonical_request_folded(
                    parts.method.as_str(),
                    parts.raw_path,
                    parts.raw_query,
                    parts.headers,
                    signed,
                    payload_hash,
                    presigned,
                    folding,
                )
                .is_some_and(|canonical| {
                    let to_sign = sigv4::string_to_sign(self.amz_date, self.scope, &canonical);
                    sigv4::same(&sigv4::sign(self.key, &to_sign), self.signature)
                })
            })
    }
}

fn header_v4(
    parts: &RequestParts<'_>,
    fields: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Authenticated, S3Error> {
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for item in fields.split(',') {
        let item = item.trim();
        if let Some((k, v)) = item.split_once('=') {
            match k.trim() {
                "Credential" => credential = Some(v.trim()),
                "SignedHeaders" => signed_headers = Some(v.trim()),
                "Signature" => signature = Some(v.trim()),
                _ => {}
            }
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(S3Error::auth_header_malformed(
            "Credential, SignedHeaders and Signature are required.",
        ));
    };
    let scope_parts: Vec<&str> = credential.split('/').collect();
    if scope_parts.len() != 5 || scope_parts[4] != "aws4_request" || scope_parts[3] != "s3" {
        return Err(S3Error::auth_header_malformed(
            "the Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".",
        ));
    }
    let access_key = scope_parts[0];
    let secret = credentials
        .secret(access_key)
        .ok_or_else(|| S3Error::invalid_access_key(access_key))?;
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (date_text, request_time) = match header("x-amz-date") {
        Some(d) => (
            d.to_string(),
            parse_amz_date(d).ok_or_else(|| {
                S3Error::access_denied(
                    "AWS authentication requires a valid Date or x-amz-date header",
                )
            })?,
        ),
        None => {
            let d = header("date").ok_or_else(|| {
                S3Error::access_denied(
                    "AWS authentication requires a valid Date or x-amz-date header",
                )
            })?;
            let t = parse_http_date(d).ok_or_else(|| {
                S3Error::access_denied(
                    "AWS authentication requires a valid Date or x-amz-date header",
                )
            })?;
            (amz_date(t), t)
        }
    };
    if !scope_date_matches(scope_parts[1], &date_text) {
        return Err(S3Error::auth_header_malformed(
            "Invalid credential date. Date is not the same as X-Amz-Date.",
        ));
    }
    if scope_parts[2].is_empty() {
        return Err(S3Error::auth_header_malformed(
            "the Credential has no region; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".",
        ));
    }
    skew_check(request_time, now)?;
    let signed = signed_header_names(signed_headers).map_err(S3Error::auth_header_malformed)?;
    if !signed.contains(&"host") {
        return Err(S3Error::auth_header_malformed(
            "the SignedHeaders must include host.",
        ));
    }
    let payload_hash = header("x-amz-content-sha256")
        .ok_or_else(|| {
            S3Error::invalid_request(
                "Missing required header for this request: x-amz-content-sha256",
            )
        })?
        .to_string();
    let region = scope_parts[2];
    let scope = scope_parts[1..].join("/");
    let key = sigv4::signing_key(secret, request_time, region);
    let claim = SignatureClaim {
        key: &key,
        amz_date: &date_text,
        scope: &scope,
        signature,
    };
    if !claim.holds(parts, &signed, &payload_hash, false) {
        return Err(S3Error::signature_mismatch());
    }
    all_amz_headers_signed(parts.headers, &signed)?;
    let payload = match plain_payload(&payload_hash) {
        Some(plain) => plain,
        None => match payload_hash.as_str() {
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Payload::StreamingUnsignedTrailer,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
                Payload::StreamingSigned {
                    key,
                    amz_date: date_text,
                    scope,
                    seed: signature.to_string(),
                    trailer: payload_hash.ends_with("-TRAILER"),
                }
            }
            h if h.starts_with("STREAMING-AWS4-ECDSA") => {
                return Err(S3Error::not_implemented("SigV4a streaming payloads"));
            }
            _ => {
                return Err(S3Error::invalid_argument(
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.",
                ));
            }
        },
    };
    Ok(Authenticated {
        access_key: access_key.to_string(),
        payload,
        presigned: false,
    })
}

/// Refuses a request carrying `x-amz-*` headers its signature does not cover, as S3 does: they
/// steer what the request does (a copy source, metadata, conditions), so a valid signature
/// over the rest (a presigned URL signs only the host) must not carry them.
/// `x-amz-content-sha256` is exempt: the signature covers the payload hash it names.
fn all_amz_headers_signed(headers: &HeaderMap, signed: &[&str]) -> Result<(), S3Error> {
    let mut unsigned: Vec<&str> = headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| {
            name.starts_with("x-amz-")
                && *name != "x-amz-content-sha256"
                && !signed.iter().any(|s| s.eq_ignore_ascii_case(name))
        })
        .collect();
    if unsigned.is_empty() {
        return Ok(());
    }
    unsigned.sort_unstable();
    unsigned.dedup();
    Err(
        S3Error::access_denied("There were headers present in the request which were not signed")
            .with("HeadersNotSigned", unsigned.join(", ")),
    )
}

/// The body protection a payload hash names when it is not a streaming one: none
/// (`UNSIGNED-PAYLOAD`) or the body's SHA-256 in hex.
fn plain_payload(hash: &str) -> Option<Payload> {
    match hash {
        "UNSIGNED-PAYLOAD" => Some(Payload::Unsigned),
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(Payload::Sha256(h.to_ascii_lowercase()))
        }
        _ => None,
    }
}

/// Whether a credential scope's date is the request's day (`yyyyMMdd` of its `x-amz-date`).
fn scope_date_matches(scope_date: &str, amz_date: &str) -> bool {
    scope_date.len() == 8
        && scope_date.bytes().all(|b| b.is_ascii_digit())
        && amz_date.get(..8) == Some(scope_date)
}

fn presigned_v4(
    parts: &RequestParts<'_>,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Authenticated, S3Error> {
    let q = |name: &str| query_value(parts.raw_query, name);
    let (
        Some(algorithm),
        Some(credential),
        Some(date),
        Some(expires),
        Some(signed_headers),
        Some(signature),
    ) = (
        q("X-Amz-Algorithm"),
        q("X-Amz-Credential"),
        q("X-Amz-Date"),
        q("X-Amz-Expires"),
        q("X-Amz-SignedHeaders"),
        q("X-Amz-Signature"),
    )
    else {
        return Err(S3Error::auth_query_error(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
        ));
    };
    if algorithm != "AWS4-HMAC-SHA256" {
        return Err(S3Error::auth_query_error(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
        ));
    }
    let expires: i64 = expires
        .bytes()
        .all(|c| c.is_ascii_digit() || c == b'-')
        .then(|| expires.parse().ok())
        .flatten()
        .ok_or_else(|| S3Error::auth_query_error("X-Amz-Expires should be a number"))?;
    if expires < 1 {
        return Err(S3Error::auth_query_error(
            "X-Amz-Expires must be at least one second",
        ));
    }
    if expires as u64 > MAX_PRESIGN {
        return Err(S3Error::auth_query_error(
            "X-Amz-Expires must be less than a week (in seconds) that is; 604800",
        ));
    }
    let request_time = parse_amz_date(&date).ok_or_else(|| {
        S3Error::auth_query_error(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
        )
    })?;
    let scope_parts: Vec<&str> = credential.split('/').collect();
    if scope_parts.len() != 5
        || scope_parts[4] != "aws4_request"
        || scope_parts[3] != "s3"
        || !scope_date_matches(scope_parts[1], &date)
        || scope_parts[2].is_empty()
    {
        return Err(S3Error::auth_query_error(
            "Error parsing the X-Amz-Credential parameter",
        ));
    }
    let access_key = scope_parts[0];
    let secret = credentials
        .secret(access_key)
        .ok_or_else(|| S3Error::invalid_access_key(access_key))?;
    if request_time > now + MAX_SKEW {
        return Err(S3Error::access_denied("Request is not valid yet"));
    }
    let expiry = request_time + Duration::from_secs(expires as u64);
    if now > expiry {
        return Err(S3Error::access_denied("Request has expired")
            .with("X-Amz-Expires", expires.to_string())
            .with("Expires", iso8601(expiry))
            .with("ServerTime", iso8601(now)));
    }
    let signed = signed_header_names(&signed_headers).map_err(S3Error::auth_query_error)?;
    if !signed.contains(&"host") {
        // Without the host signed, a URL for one bucket (virtual-hosted style) would serve
        // another bucket of the same owner.
        return Err(S3Error::auth_query_error(
            "X-Amz-SignedHeaders must include host",
        ));
    }
    let payload_hash = q("X-Amz-Content-Sha256").unwrap_or_else(|| "UNSIGNED-PAYLOAD".into());
    // A presigned URL may bind its body: a hash it signs is checked like a header's.
    let payload = plain_payload(&payload_hash).ok_or_else(|| {
        S3Error::auth_query_error(
            "X-Amz-Content-Sha256 of a presigned URL must be UNSIGNED-PAYLOAD or a sha256 value",
        )
    })?;
    let scope = scope_parts[1..].join("/");
    let key = sigv4::signing_key(secret, request_time, scope_parts[2]);
    let claim = SignatureClaim {
        key: &key,
        amz_date: &date,
        scope: &scope,
        signature: &signature,
    };
    if !claim.holds(parts, &signed, &payload_hash, true) {
        return Err(S3Error::signature_mismatch());
    }
    all_amz_headers_signed(parts.headers, &signed)?;
    Ok(Authenticated {
        access_key: access_key.to_string(),
        payload,
        presigned: true,
    })
}

fn presigned_v2(
    parts: &RequestParts<'_>,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Authenticated, S3Error> {
    let q = |name: &str| query_value(parts.raw_query, name);
    let (Some(access_key), Some(signature), Some(expires)) =
        (q("AWSAccessKeyId"), q("Signature"), q("Expires"))
    else {
        return Err(S3Error::access_denied(
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters",
        ));
    };
    let secret = credentials
        .secret(&access_key)
        .ok_or_else(|| S3Error::invalid_access_key(&access_key))?;
    let expires_at: u64 = expires
        .parse()
        .map_err(|_| S3Error::access_denied("Invalid date (should be seconds since epoch)"))?;
    let expiry = UNIX_EPOCH
        .checked_add(Duration::from_secs(expires_at))
        .ok_or_else(|| S3Error::access_denied("Invalid date (should be seconds since epoch)"))?;
    if now > expiry {
        return Err(S3Error::access_denied("Request has expired")
            .with("Expires", iso8601(expiry))
            .with("ServerTime", iso8601(now)));
    }
    let to_sign = sigv2::string_to_sign(
        parts.method.as_str(),
        parts.headers,
        parts.raw_query,
        &expires,
        parts.v2_resource,
        true,
    );
    if !sigv4::same(&sigv2::sign(secret, &to_sign), &signature) {
        return Err(S3Error::signature_mismatch());
    }
    Ok(Authenticated {
        access_key,
        payload: Payload::Unsigned,
        presigned: true,
    })
}

fn header_v2(
    parts: &RequestParts<'_>,
    value: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Authenticated, S3Error> {
    let (access_key, signature) = value.rsplit_once(':').ok_or_else(|| {
        S3Error::invalid_argument(
            "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature",
        )
    })?;
    let secret = credentials
        .secret(access_key)
        .ok_or_else(|| S3Error::invalid_access_key(access_key))?;
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (date_line, time) = match (header("x-amz-date"), header("date")) {
        (Some(d), _) => (
            String::new(),
            parse_http_date(d).or_else(|| parse_amz_date(d)),
        ),
        (None, Some(d)) => (d.to_string(), parse_http_date(d)),
        (None, None) => (String::new(), None),
    };
    let time = time.ok_or_else(|| {
        S3Error::access_denied("AWS authentication requires a valid Date or x-amz-date header")
    })?;
    skew_check(time, now)?;
    let to_sign = sigv2::string_to_sign(
        parts.method.as_str(),
        parts.headers,
        parts.raw_query,
        &date_line,
        parts.v2_resource,
        false,
    );
    if !sigv4::same(&sigv2::sign(secret, &to_sign), signature) {
        return Err(S3Error::signature_mismatch());
    }
    Ok(Authenticated {
        access_key: access_key.to_string(),
        payload: Payload::Unsigned,
        presigned: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new([(
            "AKIAIOSFODNN7EXAMPLE".to_string(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
        )])
    }

    fn parts<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestParts<'a> {
        RequestParts {
            method,
            raw_path: path,
            raw_query: query,
            headers,
            v2_resource: path,
        }
    }

    #[test]
    fn the_aws_get_example_authenticates_at_its_time_and_not_a_day_later() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert("range", "bytes=0-9".parse().unwrap());
        h.insert("x-amz-content-sha256", sigv4::EMPTY_SHA256.parse().unwrap());
        h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        h.insert("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41".parse().unwrap());
        let m = Method::GET;
        let at = parse_amz_date("20130524T000500Z").unwrap();
        let auth = authenticate(&parts(&m, "/test.txt", None, &h), &creds(), at).unwrap();
        assert_eq!(auth.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(auth.payload, Payload::Sha256(sigv4::EMPTY_SHA256.into()));
        let later = parse_amz_date("20130525T000000Z").unwrap();
        assert_eq!(
            authenticate(&parts(&m, "/test.txt", None, &h), &creds(), later)
                .unwrap_err()
                .code,
            "RequestTimeTooSkewed"
        );
        // A tampered range header breaks the signature.
        h.insert("range", "bytes=0-10".parse().unwrap());
        assert_eq!(
            authenticate(&parts(&m, "/test.txt", None, &h), &creds(), at)
                .unwrap_err()
                .code,
            "SignatureDoesNotMatch"
        );
    }

    /// A header name listed twice (or thousands of times: each listing would copy the header's
    /// value into the canonical request again) is refused before any value is copied, in the
    /// Authorization header and in a presigned URL alike; so is a list longer than any client signs.
    #[test]
    fn signed_headers_naming_a_header_twice_or_too_many_are_malformed() {
        let at = parse_amz_date("20130524T000500Z").unwrap();
        let m = Method::GET;
        let header_auth = |signed: &str| {
            let mut h = HeaderMap::new();
            h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
            h.insert("x-amz-content-sha256", sigv4::EMPTY_SHA256.parse().unwrap());
            h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
            let value = format!(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders={signed},Signature=00"
            );
            h.insert("authorization", value.parse().unwrap());
            authenticate(&parts(&m, "/test.txt", None, &h), &creds(), at).unwrap_err()
        };
        for signed in ["host;x-amz-date;x-amz-date", "host;x-amz-date;X-Amz-Date"] {
            let twice = header_auth(signed);
            assert_eq!(
                (twice.code, twice.message.as_str()),
                (
                    "AuthorizationHeaderMalformed",
                    "The authorization header is malformed; the SignedHeaders name a header twice."
                ),
                "{signed}"
            );
        }
        let many: Vec<String> = (0..=MAX_SIGNED_HEADERS).map(|i| format!("x-{i}")).collect();
        assert_eq!(
            header_auth(&format!("host;{}", many.join(";"))).code,
            "AuthorizationHeaderMalformed"
        );
        assert_eq!(
            header_auth("host;;x-amz-date").code,
            "AuthorizationHeaderMalformed"
        );
        // A correct list still reaches the signature check.
        assert_eq!(
            header_auth("host;x-amz-content-sha256;x-amz-date").code,
            "SignatureDoesNotMatch"
        );
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host%3Bhost&X-Amz-Signature=00";
        let e = authenticate(&parts(&m, "/test.txt", Some(q), &h), &creds(), at).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "AuthorizationQueryParametersError",
                "the SignedHeaders name a header twice."
            )
        );
    }

    /// The names a PUT of `/k` with a note ([`noted_put`]) signs.
    const NOTED_SIGNED: [&str; 4] = [
        "host",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-meta-note",
    ];

    /// The headers of a PUT of `/k` on 2013-05-24 carrying `x-amz-meta-note: note`.
    fn noted_put(note: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert("x-amz-content-sha256", sigv4::EMPTY_SHA256.parse().unwrap());
        h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        h.insert(
            "x-amz-meta-note",
            http::HeaderValue::from_bytes(note).unwrap(),
        );
        h
    }

    /// Authenticates the PUT of headers `h` signed (with the AWS example key) over
    /// `canonical`: the access key, or why not.
    fn authorize(h: &HeaderMap, canonical: &str) -> Result<String, S3Error> {
        let at = parse_amz_date("20130524T000000Z").unwrap();
        let scope = "20130524/us-east-1/s3/aws4_request";
        let key = sigv4::signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", at, "us-east-1");
        let signature = sigv4::sign(
            &key,
            &sigv4::string_to_sign("20130524T000000Z", scope, canonical),
        );
        let mut h = h.clone();
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{scope},SignedHeaders={},Signature={signature}",
            NOTED_SIGNED.join(";")
        );
        h.insert("authorization", authorization.parse().unwrap());
        authenticate(&parts(&Method::PUT, "/k", None, &h), &creds(), at).map(|a| a.access_key)
    }

    /// A signed header value holding a tab is folded one way by the specification and the
    /// Rust, Go and Java SDKs (spaces only: `a\tb` stays), another by botocore (any
    /// whitespace: `a b`); a request signed either way is taken, any other refused.
    #[test]
    fn a_header_value_with_a_tab_is_taken_signed_either_way() {
        let h = noted_put(b" a\t b ");
        for (folding, value) in [
            (sigv4::Folding::Spaces, "x-amz-meta-note:a\t b\n"),
            (sigv4::Folding::SpacesAndTabs, "x-amz-meta-note:a b\n"),
        ] {
            let canonical = sigv4::canonical_request_folded(
                "PUT",
                "/k",
                None,
                &h,
                &NOTED_SIGNED,
                sigv4::EMPTY_SHA256,
                false,
                folding,
            )
            .unwrap();
            assert!(canonical.contains(value), "{folding:?}: {canonical:?}");
            assert_eq!(authorize(&h, &canonical).unwrap(), "AKIAIOSFODNN7EXAMPLE");
            let other = canonical.replace(value, "x-amz-meta-note:a  b\n");
            assert_eq!(
                authorize(&h, &other).unwrap_err().code,
                "SignatureDoesNotMatch"
            );
        }
    }

    /// A request signed with `a b` in a header is refused when that space arrives as another
    /// whitespace character (a no-break space): only tabs fold into spaces (as botocore's
    /// requests need), so nothing else can be put in place of what was signed.
    #[test]
    fn a_signed_space_cannot_be_swapped_for_another_whitespace() {
        let canonical = sigv4::canonical_request(
            "PUT",
            "/k",
            None,
            &noted_put(b"a b"),
            &NOTED_SIGNED,
            sigv4::EMPTY_SHA256,
            false,
        )
        .unwrap();
        let sent = |note: &[u8]| authorize(&noted_put(note), &canonical);
        assert_eq!(sent(b"a b").unwrap(), "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(sent(b"a\tb").unwrap(), "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(
            sent("a\u{a0}b".as_bytes()).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
    }

    /// A session token (of temporary credentials, which are not issued here) is refused by
    /// name, as a header or in a presigned URL.
    #[test]
    fn a_session_token_is_refused() {
        let m = Method::GET;
        let mut h = HeaderMap::new();
        h.insert("x-amz-security-token", "FQoGZXIvYXdzE".parse().unwrap());
        let e =
            authenticate(&parts(&m, "/b/k", None, &h), &creds(), SystemTime::now()).unwrap_err();
        assert_eq!((e.code, e.status.as_u16()), ("InvalidToken", 400));
        // (SigV2 presigned URLs name it in lower case.)
        for query in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Security-Token=FQoGZXIvYXdzE",
            "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&x-amz-security-token=FQoGZXIvYXdzE",
        ] {
            let e = authenticate(
                &parts(&m, "/b/k", Some(query), &HeaderMap::new()),
                &creds(),
                SystemTime::now(),
            )
            .unwrap_err();
            assert_eq!(e.code, "InvalidToken", "{query}");
        }
    }

    #[test]
    fn an_authorization_header_of_non_ascii_bytes_is_malformed_not_absent() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            http::HeaderValue::from_bytes(b"AWS4-HMAC-SHA256 Credential=\xff").unwrap(),
        );
        let m = Method::GET;
        let e = authenticate(
            &parts(&m, "/b/k", Some("X-Amz-Algorithm=AWS4-HMAC-SHA256"), &h),
            &creds(),
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(e.code, "AuthorizationHeaderMalformed");
    }

    #[test]
    fn unsigned_and_unknown_keys_are_refused() {
        let h = HeaderMap::new();
        let m = Method::GET;
        assert_eq!(
            authenticate(&parts(&m, "/b/k", None, &h), &creds(), SystemTime::now())
                .unwrap_err()
                .code,
            "AccessDenied"
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", "AWS4-HMAC-SHA256 Credential=NOPE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00".parse().unwrap());
        assert_eq!(
            authenticate(&parts(&m, "/b/k", None, &h), &creds(), SystemTime::now())
                .unwrap_err()
                .code,
            "InvalidAccessKeyId"
        );
    }

    #[test]
    fn presigned_v4_example_and_expiry() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let m = Method::GET;
        let p = parts(&m, "/test.txt", Some(q), &h);
        assert!(authenticate(&p, &creds(), parse_amz_date("20130524T120000Z").unwrap()).is_ok());
        let e =
            authenticate(&p, &creds(), parse_amz_date("20130526T000000Z").unwrap()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("AccessDenied", "Request has expired")
        );
    }

    #[test]
    fn presigned_v4_refuses_x_amz_headers_it_does_not_sign() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        // A copy source added to a URL that signs only the host would copy another object.
        h.insert("x-amz-copy-source", "/private/secret".parse().unwrap());
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let m = Method::GET;
        let p = parts(&m, "/test.txt", Some(q), &h);
        let e =
            authenticate(&p, &creds(), parse_amz_date("20130524T120000Z").unwrap()).unwrap_err();
        assert_eq!(e.code, "AccessDenied");
        assert!(e.message.contains("not signed"), "{}", e.message);
        h.remove("x-amz-copy-source");
        h.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        let p = parts(&m, "/test.txt", Some(q), &h);
        assert!(authenticate(&p, &creds(), parse_amz_date("20130524T120000Z").unwrap()).is_ok());
    }

    /// A presigned URL (query `q` without its signature) signed as an SDK would.
    fn presign_v4(m: &Method, path: &str, q: &str, h: &HeaderMap, signed: &[&str]) -> String {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let hash = q
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Content-Sha256="))
            .unwrap_or("UNSIGNED-PAYLOAD");
        let canonical =
            sigv4::canonical_request(m.as_str(), path, Some(q), h, signed, hash, true).unwrap();
        let at = parse_amz_date("20130524T000000Z").unwrap();
        let key = sigv4::signing_key(secret, at, "us-east-1");
        let scope = "20130524/us-east-1/s3/aws4_request";
        let signature = sigv4::sign(
            &key,
            &sigv4::string_to_sign("20130524T000000Z", scope, &canonical),
        );
        format!("{q}&X-Amz-Signature={signature}")
    }

    #[test]
    fn a_presigned_v4_payload_hash_binds_the_body_and_host_must_be_signed() {
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        let m = Method::PUT;
        let at = parse_amz_date("20130524T000100Z").unwrap();
        let base = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=600";
        let q = format!(
            "{base}&X-Amz-Content-Sha256={}&X-Amz-SignedHeaders=host",
            sigv4::EMPTY_SHA256
        );
        let q = presign_v4(&m, "/k", &q, &h, &["host"]);
        let auth = authenticate(&parts(&m, "/k", Some(&q), &h), &creds(), at).unwrap();
        assert_eq!(auth.payload, Payload::Sha256(sigv4::EMPTY_SHA256.into()));
        let q = format!("{base}&X-Amz-SignedHeaders=range");
        h.insert("range", "bytes=0-1".parse().unwrap());
        let q = presign_v4(&m, "/k", &q, &h, &["range"]);
        assert_eq!(
            authenticate(&parts(&m, "/k", Some(&q), &h), &creds(), at)
                .unwrap_err()
                .code,
            "AuthorizationQueryParametersError"
        );
    }

    #[test]
    fn a_credential_scope_needs_the_request_day_and_a_region() {
        let m = Method::GET;
        for credential in [
            "AKIAIOSFODNN7EXAMPLE//us-east-1/s3/aws4_request",
            "AKIAIOSFODNN7EXAMPLE/2013/us-east-1/s3/aws4_request",
            "AKIAIOSFODNN7EXAMPLE/20130524//s3/aws4_request",
        ] {
            let mut h = HeaderMap::new();
            h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
            h.insert("x-amz-content-sha256", sigv4::EMPTY_SHA256.parse().unwrap());
            h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
            let authorization = format!(
                "AWS4-HMAC-SHA256 Credential={credential},SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=00"
            );
            h.insert("authorization", authorization.parse().unwrap());
            let at = parse_amz_date("20130524T000100Z").unwrap();
            let e = authenticate(&parts(&m, "/k", None, &h), &creds(), at).unwrap_err();
            assert_eq!(e.code, "AuthorizationHeaderMalformed", "{credential}");
            let q = format!(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date=20130524T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00",
                credential.replace('/', "%2F")
            );
            let h = HeaderMap::new();
            let e = authenticate(&parts(&m, "/k", Some(&q), &h), &creds(), at).unwrap_err();
            assert_eq!(e.code, "AuthorizationQueryParametersError", "{credential}");
        }
    }

    #[test]
    fn a_presigned_v2_url_with_an_added_x_amz_parameter_is_refused_in_any_case() {
        let h = HeaderMap::new();
        let m = Method::GET;
        let signed = "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=%2BMj%2B3n%2FLelQQ0GCkNE9dre6Kv1c%3D&Expires=1795632038";
        for added in [
            "X-Amz-Copy-Source=%2Fb%2Fsecret",
            "x-amz-copy-source=%2Fb%2Fsecret",
        ] {
            let q = format!("{signed}&{added}");
            let p = RequestParts {
                method: &m,
                raw_path: "/bkt/a%20b/c%2Bd",
                raw_query: Some(&q),
                headers: &h,
                v2_resource: "/bkt/a%20b/c%2Bd",
            };
            let at = UNIX_EPOCH + Duration::from_secs(1_795_632_000);
            assert_eq!(
                authenticate(&p, &creds(), at).unwrap_err().code,
                "SignatureDoesNotMatch",
                "{added}"
            );
        }
    }

    #[test]
    fn a_presigned_v2_expiry_past_the_end_of_time_is_refused() {
        let h = HeaderMap::new();
        let m = Method::GET;
        let q = "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=18446744073709551615";
        let p = RequestParts {
            method: &m,
            raw_path: "/b/k",
            raw_query: Some(q),
            headers: &h,
            v2_resource: "/b/k",
        };
        assert_eq!(
            authenticate(&p, &creds(), SystemTime::now())
                .unwrap_err()
                .code,
            "AccessDenied"
        );
    }

    #[test]
    fn presigned_v2_from_the_cli() {
        let h = HeaderMap::new();
        let m = Method::GET;
        let q = "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=%2BMj%2B3n%2FLelQQ0GCkNE9dre6Kv1c%3D&Expires=1795632038";
        let p = RequestParts {
            method: &m,
            raw_path: "/bkt/a%20b/c%2Bd",
            raw_query: Some(q),
            headers: &h,
            v2_resource: "/bkt/a%20b/c%2Bd",
        };
        assert!(
            authenticate(
                &p,
                &creds(),
                UNIX_EPOCH + Duration::from_secs(1_795_632_000)
            )
            .is_ok()
        );
        assert_eq!(
            authenticate(
                &p,
                &creds(),
                UNIX_EPOCH + Duration::from_secs(1_795_632_100)
            )
            .unwrap_err()
            .message,
            "Request has expired"
        );
    }
}
