//! Request bodies, streamed: aws-chunked decoding, the MD5 that becomes the ETag, the SHA-256 of
//! a signed payload, the checksums clients send (as headers or trailers), and the length. Every
//! check is settled when the body ends; a failed check makes the last read an error, so nothing
//! is committed.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::auth::{Authenticated, Payload};
use crate::checksum::{self, Algorithm, Hasher};
use crate::chunked::{ChunkSigning, ChunkedDecoder};
use crate::error::S3Error;
use crate::md5_lanes::StreamMd5;
use crate::store::StoredChecksum;

/// Memory (KiB) that request documents (DeleteObjects, CompleteMultipartUpload and other XML
/// bodies, each capped on its own) may hold at once while they are read: a client trickling
/// many large documents over many connections gets SlowDown, not gigabytes held for it.
pub const DOCUMENT_BUDGET_KIB: usize = 64 << 10;

/// How long a request document may take to arrive, whole, besides [`DOCUMENT_MIN_RATE`]'s
/// time for its length. A body trickled a byte at a time, which the idle timeout alone lets
/// run for ever, would hold its share of [`DOCUMENT_BUDGET_KIB`] (and the request's bucket) as
/// long as its client liked.
pub const DOCUMENT_DEADLINE: Duration = Duration::from_secs(60);

/// The slowest rate (bytes a second) a request document is waited for at, beyond
/// [`DOCUMENT_DEADLINE`]: an 8 MiB DeleteObjects from a client on a slow link still arrives.
pub const DOCUMENT_MIN_RATE: u64 = 16 << 10;

static DOCUMENT_BUDGET: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(DOCUMENT_BUDGET_KIB);

/// What a verified body was.
#[derive(Debug, Clone)]
pub struct BodySummary {
    /// Bytes.
    pub size: u64,
    /// MD5 (the ETag of a single-part object).
    pub md5: [u8; 16],
    /// Checksums the client sent, verified.
    pub checksums: Vec<StoredChecksum>,
}

impl BodySummary {
    /// The ETag: hex MD5.
    pub fn etag(&self) -> String {
        checksum::hex(&self.md5)
    }
}

/// Reads and verifies a request body.
pub struct BodyReader {
    raw: BoxStream<'static, Result<Bytes, S3Error>>,
    decoder: Option<ChunkedDecoder>,
    ready: VecDeque<Bytes>,
    /// Taken when the body ends.
    md5: Option<StreamMd5>,
    sha256: Option<(Sha256, String)>,
    /// Checksums to compute: (hasher, value from a header, or None when it comes as a trailer).
    checksums: Vec<(Hasher, Option<String>)>,
    content_md5: Option<[u8; 16]>,
    expected_len: Option<u64>,
    max_len: u64,
    size: u64,
    finished: Option<BodySummary>,
    /// The error the body failed with: every later call answers it again (a check that failed
    /// is never skipped by asking once more).
    failed: Option<S3Error>,
    /// Longest wait for the next bytes of the body before the request fails.
    idle_timeout: Duration,
    /// Time spent waiting on the client for body bytes, and the bytes it sent, since the
    /// last check of its rate (see [`MIN_BODY_RATE`]).
    waited: Duration,
    waited_bytes: u64,
    /// The trailers x-amz-trailer names (lowercase): no other may come.
    declared_trailers: Vec<String>,
}

/// How long a request body may stall before the request fails with RequestTimeout (S3 answers
/// an idle upload the same way). A stalled upload would otherwise hold its connection, and the
/// zones its data went to, from GC, for as long as the client likes.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest a client may send a body, in bytes a second, measured over the time spent
/// waiting on it (not on the server's own pace) in spans of the idle timeout: a body trickled a
/// byte at a time, each within the idle timeout, would otherwise hold its records' zones from
/// GC, and a write budget unit, for as long as the client likes.
pub const MIN_BODY_RATE: u64 = 1024;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl BodyReader {
    /// Prepares to read `raw` per the request's headers and authentication; refuses
    /// inconsistent or malformed headers before any byte is read.
    pub fn new(
        raw: BoxStream<'static, Result<Bytes, S3Error>>,
        headers: &HeaderMap,
        auth: &Authenticated,
        max_len: u64,
    ) -> Result<BodyReader, S3Error> {
        let chunked = matches!(
            auth.payload,
            Payload::StreamingSigned { .. } | Payload::StreamingUnsignedTrailer
        ) || header(headers, "content-encoding").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("aws-chunked"))
        });
        let trailer_names: Vec<String> = header(headers, "x-amz-trailer")
            .map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if !trailer_names.is_empty() && !chunked {
            return Err(S3Error::invalid_request(
                "x-amz-trailer needs an aws-chunked body (trailers come after its last chunk)",
            ));
        }
        // A -TRAILER payload names its trailers, and only one says trailers follow: otherwise
        // a trailer could come unchecked (its checksum, its signature) or be looked for in vain.
        let trailer_payload = matches!(
            auth.payload,
            Payload::StreamingUnsignedTrailer | Payload::StreamingSigned { trailer: true, .. }
        );
        if trailer_payload && trailer_names.is_empty() {
            return Err(S3Error::invalid_request(
                "a STREAMING-...-TRAILER payload needs x-amz-trailer naming its trailer",
            ));
        }
        if matches!(
            auth.payload,
            Payload::StreamingSigned { trailer: false, .. }
        ) && !trailer_names.is_empty()
        {
            return Err(S3Error::invalid_request(
                "x-amz-trailer needs a STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER payload",
            ));
        }
        // Where the signature does not cover the body (presigned URLs, SigV2), a payload hash
        // sent as a header is still the client's word on the body: checked, and a streaming
        // one refused (the body would be taken as it comes, framing and all).
        let unsigned_hash = match (&auth.payload, header(headers, "x-amz-content-sha256")) {
            (Payload::Unsigned, Some(v)) if v.starts_with("STREAMING-") => {
                return Err(S3Error::invalid_request(
                    "a streaming x-amz-content-sha256 needs a request signed with an Authorization header",
                ));
            }
            (Payload::Unsigned, Some(v))
                if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(v.to_ascii_lowercase())
            }
            _ => None,
        };
        if let Some(unknown) = trailer_names
            .iter()
            .find(|t| !Algorithm::ALL.iter().any(|a| a.header() == **t))
        {
            return Err(S3Error::invalid_request(format!(
                "x-amz-trailer {unknown} is not a checksum this server takes as a trailer"
            )));
        }
        let expected_len = if chunked {
            let v = header(headers, "x-amz-decoded-content-length").ok_or_else(|| {
                S3Error::missing_content_length().with(
                    "Detail",
                    "x-amz-decoded-content-length is required with aws-chunked",
                )
            })?;
            Some(
                v.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        S3Error::invalid_argument("x-amz-decoded-content-length is not a number")
                    })?,
            )
        } else {
            match header(headers, "content-length") {
                Some(v) => Some(
                    v.parse::<u64>()
                        .map_err(|_| S3Error::invalid_argument("Content-Length is not a number"))?,
                ),
                None => None,
            }
        };
        if let Some(len) = expected_len
            && len > max_len
        {
            return Err(S3Error::entity_too_large(len, max_len));
        }
        let decoder = chunked.then(|| {
            let signing = match &auth.payload {
                Payload::StreamingSigned {
                    key,
                    amz_date,
                    scope,
                    seed,
                    ..
                } => Some(ChunkSigning {
                    key: key.clone(),
                    amz_date: amz_date.clone(),
                    scope: scope.clone(),
                    previous: seed.clone(),
                }),
                _ => None,
            };
            // Where the signature does not cover the body (presigned URLs, SigV2), the
            // trailers x-amz-trailer names come as they do in an unsigned -TRAILER payload.
            let unsigned_trailers =
                matches!(auth.payload, Payload::Unsigned) && !trailer_names.is_empty();
            ChunkedDecoder::new(signing, trailer_payload || unsigned_trailers)
        });
        let mut checksums: Vec<(Hasher, Option<String>)> = Vec::new();
        for algorithm in Algorithm::ALL {
            if let Some(value) = header(headers, &algorithm.header()) {
                if trailer_names.contains(&algorithm.header()) {
                    // A value in a header and another in the trailer: which would be checked?
                    return Err(S3Error::invalid_request(format!(
                        "{} is given as a header and named in x-amz-trailer",
                        algorithm.header()
                    )));
                }
                algorithm.validate(value)?;
                checksums.push((Hasher::new(algorithm), Some(value.trim().to_string())));
            } else if trailer_names.contains(&algorithm.header()) {
                checksums.push((Hasher::new(algorithm), None));
            }
        }
        if checksums.len() > 1 {
            return Err(S3Error::invalid_request(
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
            ));
        }
        if let Some(declared) = header(headers, "x-amz-sdk-checksum-algorithm") {
            let algorithm = Algorithm::parse(declared).ok_or_else(|| {
                S3Error::invalid_request(format!("Checksum algorithm {declared} is not supported"))
            })?;
            if !checksums.is_empty() && !checksums.iter().any(|(h, _)| h.algorithm() == algorithm) {
                return Err(S3Error::invalid_request(format!(
                    "x-amz-sdk-checksum-algorithm says {declared} but another checksum was sent"
                )));
            }
            if checksums.is_empty() {
                return Err(S3Error::invalid_request(
                    "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer headers were found.",
                ));
            }
        }
        let content_md5 = header(headers, "content-md5")
            .map(checksum::parse_content_md5)
            .transpose()?;
        let sha256 = match &auth.payload {
            Payload::Sha256(hex) => Some((Sha256::new(), hex.clone())),
            _ => unsigned_hash.map(|hex| (Sha256::new(), hex)),
        };
        Ok(BodyReader {
            raw,
            decoder,
            ready: VecDeque::new(),
            md5: Some(StreamMd5::new(expected_len.or(Some(max_len)))),
            sha256,
            checksums,
            content_md5,
            expected_len,
            max_len,
            size: 0,
            finished: None,
            failed: None,
            idle_timeout: BODY_IDLE_TIMEOUT,
            waited: Duration::ZERO,
            waited_bytes: 0,
            declared_trailers: trailer_names,
        })
    }

    /// Sets how long the body may stall between bytes (default [`BODY_IDLE_TIMEOUT`]).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    fn account(&mut self, data: &Bytes) -> Result<(), S3Error> {
        self.size += data.len() as u64;
        if self.size > self.max_len {
            return Err(S3Error::entity_too_large(self.size, self.max_len));
        }
        if let Some(expected) = self.expected_len
            && self.size > expected
        {
            return Err(S3Error::incomplete_body(
                "more bytes than the declared length",
            ));
        }
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
        for (h, _) in &mut self.checksums {
            h.update(data);
        }
        Ok(())
    }

    /// Waits up to `pause` for the next piece of the body (or its end) to arrive: false when
    /// the client sent none meanwhile, so that its writer can let go of what it holds while
    /// the body pauses. [`next`](Self::next) then takes what arrived, or waits on. Only body
    /// bytes count: aws-chunked framing (a chunk line sent a byte at a time) is no progress.
    pub async fn arrives_within(&mut self, pause: Duration) -> Result<bool, S3Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let arrived = self.arrives_within_unchecked(pause).await;
        self.failed = arrived.as_ref().err().cloned();
        arrived
    }

    async fn arrives_within_unchecked(&mut self, pause: Duration) -> Result<bool, S3Error> {
        let deadline = tokio::time::Instant::now() + pause;
        while self.ready.is_empty() && self.finished.is_none() {
            let asked = tokio::time::Instant::now();
            let next = tokio::time::timeout_at(deadline, self.raw.next()).await;
            self.waited_on_client(asked, &next)?;
            match next {
                Err(_) => return Ok(false),
                Ok(next) => self.take_raw(next).await?,
            }
        }
        Ok(true)
    }

    /// The next piece of the body, or `None` at its end (once every check passed). It must
    /// come within the idle timeout: aws-chunked framing alone (a chunk line or trailers sent
    /// a byte at a time) does not hold the body open longer.
    pub async fn next(&mut self) -> Result<Option<Bytes>, S3Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let next = self.next_unchecked().await;
        self.failed = next.as_ref().err().cloned();
        next
    }

    async fn next_unchecked(&mut self) -> Result<Option<Bytes>, S3Error> {
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        loop {
            if let Some(data) = self.ready.pop_front() {
                self.account(&data)?;
                if let Some(md5) = &self.md5 {
                    md5.caught_up().await;
                }
                return Ok(Some(data));
            }
            if self.finished.is_some() {
                return Ok(None);
            }
            let asked = tokio::time::Instant::now();
            let next = tokio::time::timeout_at(deadline, self.raw.next()).await;
            self.waited_on_client(asked, &next)?;
            self.take_raw(next.map_err(|_| S3Error::request_timeout())?)
                .await?;
        }
    }

    /// Counts a wait on the client that began at `asked` and what it gave; fails the body
    /// once the client has been waited on for an idle timeout's span having sent less than
    /// [`MIN_BODY_RATE`] over it.
    fn waited_on_client<E>(
        &mut self,
        asked: tokio::time::Instant,
        next: &Result<Option<Result<Bytes, S3Error>>, E>,
    ) -> Result<(), S3Error> {
        self.waited += asked.elapsed();
        if let Ok(Some(Ok(raw))) = next {
            self.waited_bytes += raw.len() as u64;
        }
        if self.waited >= self.idle_timeout {
            let floor = (MIN_BODY_RATE as f64 * self.waited.as_secs_f64()) as u64;
            if self.waited_bytes < floor && !matches!(next, Ok(None)) {
                return Err(S3Error::request_timeout());
            }
            self.waited = Duration::ZERO;
            self.waited_bytes = 0;
        }
        Ok(())
    }

    /// Takes in what the raw body stream gave: bytes (decoded into `ready`), an error, or its
    /// end (every check then made).
    async fn take_raw(&mut self, next: Option<Result<Bytes, S3Error>>) -> Result<(), S3Error> {
        match next {
            Some(Ok(raw)) => {
                if let Some((h, _)) = self.sha256.as_mut() {
                    h.update(&raw);
                }
                match self.decoder.as_mut() {
                    Some(d) => self.ready.extend(d.push(&raw)?),
                    None => self.ready.push_back(raw),
                }
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => self.finish().await,
        }
    }

    async fn finish(&mut self) -> Result<(), S3Error> {
        let trailers = match self.decoder.as_mut() {
            Some(d) => d.finish()?,
            None => Vec::new(),
        };
        if let Some(expected) = self.expected_len
            && self.size != expected
        {
            return Err(S3Error::incomplete_body(&format!(
                "received {} of {expected} bytes",
                self.size
            )));
        }
        if let Some((h, expected)) = self.sha256.take() {
            let computed = hex::encode(h.finalize());
            if computed != expected {
                return Err(S3Error::sha256_mismatch(&expected, &computed));
            }
        }
        let md5 = match self.md5.take() {
            Some(md5) => md5
                .finish()
                .await
                .map_err(|e| S3Error::internal(&e.to_string()))?,
            None => return Err(S3Error::internal("the body's MD5 was already taken")),
        };
        if let Some(expected) = self.content_md5
            && expected != md5
        {
            return Err(S3Error::bad_digest("Content-MD5"));
        }
        if let Some((name, _)) = trailers
            .iter()
            .find(|(name, _)| !self.declared_trailers.contains(name))
        {
            return Err(S3Error::invalid_request(format!(
                "the trailer {name} was not declared in x-amz-trailer"
            )));
        }
        let mut verified = Vec::new();
        for (hasher, from_header) in std::mem::take(&mut self.checksums) {
            let algorithm = hasher.algorithm();
            let sent = match from_header {
                Some(v) => v,
                None => trailers
                    .iter()
                    .find(|(k, _)| *k == algorithm.header())
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        S3Error::incomplete_body(&format!(
                            "the {} trailer is missing",
                            algorithm.header()
                        ))
                    })?,
            };
            algorithm.validate(&sent)?;
            let computed = hasher.finish();
            if computed != sent {
                return Err(S3Error::bad_digest(algorithm.name())
                    .with("ExpectedDigest", sent)
                    .with("CalculatedDigest", computed));
            }
            verified.push(StoredChecksum {
                algorithm: algorithm.name().to_string(),
                value: computed,
            });
        }
        self.finished = Some(BodySummary {
            size: self.size,
            md5,
            checksums: verified,
        });
        Ok(())
    }

    /// What the body was (after [`BodyReader::next`] returned `None`).
    pub fn summary(&self) -> Option<BodySummary> {
        self.finished.clone()
    }

    /// Reads the whole body into memory (small request documents only), within the memory
    /// all documents being read share (see [`DOCUMENT_BUDGET_KIB`]) and within
    /// [`DOCUMENT_DEADLINE`] and the time its length takes at [`DOCUMENT_MIN_RATE`]
    /// (RequestTimeout past it).
    pub async fn read_all(&mut self, limit: usize) -> Result<Bytes, S3Error> {
        let length = self.expected_len.unwrap_or(limit as u64).min(limit as u64);
        let deadline = tokio::time::Instant::now()
            + DOCUMENT_DEADLINE
            + Duration::from_secs(length / DOCUMENT_MIN_RATE);
        tokio::time::timeout_at(deadline, self.read_all_within(limit, &DOCUMENT_BUDGET))
            .await
            .map_err(|_| S3Error::request_timeout())?
    }

    /// [`BodyReader::read_all`], holding what it has read in `budget` (in KiB) while it reads:
    /// SlowDown once the budget is spent.
    async fn read_all_within(
        &mut self,
        limit: usize,
        budget: &tokio::sync::Semaphore,
    ) -> Result<Bytes, S3Error> {
        let mut out = Vec::new();
        let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
        while let Some(chunk) = self.next().await? {
            if out.len() + chunk.len() > limit {
                return Err(S3Error::invalid_request("request body too large"));
            }
            // What the buffer will take (its capacity: it grows by doubling), held before it
            // grows.
            let will_take = if out.capacity() - out.len() >= chunk.len() {
                out.capacity()
            } else {
                (out.len() + chunk.len()).max(out.capacity() * 2).min(limit)
            };
            let need = will_take.div_ceil(1024) as u32;
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if need > have {
                let more = budget
                    .try_acquire_many(need - have)
                    .map_err(|_| S3Error::slow_down("the memory for request documents is taken"))?;
                match &mut held {
                    Some(permit) => permit.merge(more),
                    None => held = Some(more),
                }
            }
            out.reserve_exact(will_take - out.len());
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(payload: Payload) -> Authenticated {
        Authenticated {
            access_key: "a".into(),
            payload,
            presigned: false,
        }
    }

    fn raw(parts: Vec<&'static [u8]>) -> BoxStream<'static, Result<Bytes, S3Error>> {
        futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    async fn read(mut r: BodyReader) -> Result<(Vec<u8>, BodySummary), S3Error> {
        let mut out = Vec::new();
        while let Some(c) = r.next().await? {
            out.extend_from_slice(&c);
        }
        Ok((out, r.summary().unwrap()))
    }

    /// A body that failed a check fails again when asked again: the check is never skipped
    /// (the expected hash was taken out to compare, and a second end of the body passed).
    #[tokio::test]
    async fn a_body_that_failed_a_check_keeps_failing() {
        let mut r = BodyReader::new(
            raw(vec![b"hello"]),
            &HeaderMap::new(),
            &auth(Payload::Sha256("00".repeat(32))),
            1 << 30,
        )
        .unwrap();
        let mut failures = 0;
        for _ in 0..3 {
            match r.next().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a body whose hash is wrong ended well"),
                Err(e) => {
                    assert_eq!(e.code, "XAmzContentSHA256Mismatch");
                    failures += 1;
                }
            }
        }
        assert!(failures >= 2, "{failures}");
        assert!(r.arrives_within(Duration::from_millis(1)).await.is_err());
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "10".parse().unwrap());
        let started = futures::stream::iter([Ok(Bytes::from_static(b"abc"))]);
        let stalled = started.chain(futures::stream::pending()).boxed();
        let mut r = BodyReader::new(stalled, &h, &auth(Payload::Unsigned), 1 << 20)
            .unwrap()
            .with_idle_timeout(Duration::from_millis(50));
        assert_eq!(r.next().await.unwrap().unwrap(), Bytes::from_static(b"abc"));
        let e = r.next().await.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (http::StatusCode::BAD_REQUEST, "RequestTimeout")
        );
    }

    /// A body trickled a byte at a time, each well within the idle timeout, is cut off once
    /// the client has been waited on for an idle timeout's span at less than the slowest rate
    /// taken.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_times_out() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "1000000".parse().unwrap());
        let drip = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Some((Ok(Bytes::from_static(b"x")), ()))
        })
        .boxed();
        let mut r = BodyReader::new(drip, &h, &auth(Payload::Unsigned), 1 << 20).unwrap();
        let began = tokio::time::Instant::now();
        let e = loop {
            match r.next().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the body ended"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.code, "RequestTimeout");
        assert!(began.elapsed() <= BODY_IDLE_TIMEOUT + Duration::from_secs(10));
    }

    /// aws-chunked framing sent a byte at a time (a chunk line's extension) is no progress:
    /// the body times out, and a pause is a pause, however many such bytes come meanwhile.
    #[tokio::test]
    async fn a_body_dripping_only_framing_times_out() {
        let mut h = HeaderMap::new();
        h.insert("x-amz-decoded-content-length", "1000".parse().unwrap());
        h.insert("content-encoding", "aws-chunked".parse().unwrap());
        let dripping = || {
            let start = futures::stream::iter([Ok(Bytes::from_static(b"5\r\nhello\r\n1;"))]);
            let drip = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok(Bytes::from_static(b"a")), ()))
            });
            start.chain(drip).boxed()
        };
        let mut r = BodyReader::new(dripping(), &h, &auth(Payload::Unsigned), 1 << 20)
            .unwrap()
            .with_idle_timeout(Duration::from_millis(100));
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
        assert!(!r.arrives_within(Duration::from_millis(50)).await.unwrap());
        let e = r.next().await.unwrap_err();
        assert_eq!(e.code, "RequestTimeout");
    }

    /// A document trickled in, each piece within the idle timeout, is cut off at
    /// [`DOCUMENT_DEADLINE`]: it cannot hold its memory (and its request) for ever.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_document_times_out_whole() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "1000000".parse().unwrap());
        // Faster than the slowest body taken (MIN_BODY_RATE), slower than a document's.
        let drip = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok(Bytes::from_static(&[b' '; 2048])), ()))
        })
        .boxed();
        let mut r = BodyReader::new(drip, &h, &auth(Payload::Unsigned), 1 << 20).unwrap();
        let began = tokio::time::Instant::now();
        let e = r.read_all(1 << 20).await.unwrap_err();
        assert_eq!(e.code, "RequestTimeout");
        // (A megabyte is given 61 s at the slowest rate waited for.)
        let allowed = DOCUMENT_DEADLINE.as_secs() + 1_000_000 / DOCUMENT_MIN_RATE;
        assert_eq!(began.elapsed().as_secs(), allowed);
    }

    /// Documents being read hold their bytes in the budget they share: one that would take
    /// more than is left gets SlowDown; once the others are read and dropped, it fits.
    #[tokio::test]
    async fn documents_being_read_share_a_memory_budget() {
        let budget = tokio::sync::Semaphore::new(4);
        let document = |len: usize| {
            let mut h = HeaderMap::new();
            h.insert("content-length", len.to_string().parse().unwrap());
            let chunks: Vec<&'static [u8]> = vec![&[b'x'; 1024]; len / 1024];
            BodyReader::new(raw(chunks), &h, &auth(Payload::Unsigned), 1 << 20).unwrap()
        };
        // 3 KiB held by documents still being read.
        let held = budget.try_acquire_many(3).unwrap();
        let e = document(2 << 10)
            .read_all_within(1 << 20, &budget)
            .await
            .unwrap_err();
        assert_eq!((e.code, e.status.as_u16()), ("SlowDown", 503));
        drop(held);
        let whole = document(4 << 10)
            .read_all_within(1 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(whole.len(), 4 << 10);
        assert_eq!(budget.available_permits(), 4, "given back once read");
    }

    #[test]
    fn trailers_without_aws_chunked_or_of_unknown_names_are_refused_up_front() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "5".parse().unwrap());
        h.insert("x-amz-trailer", "x-amz-checksum-crc32".parse().unwrap());
        let e = BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30)
            .err()
            .expect("refused");
        assert_eq!(e.code, "InvalidRequest");
        // An unsigned-trailer body with `headers`, refused before it is read.
        let refused = |headers: &[(&'static str, &str)], body: &'static [u8]| {
            let mut h = HeaderMap::new();
            for (name, value) in headers {
                h.insert(*name, value.parse().unwrap());
            }
            BodyReader::new(
                raw(vec![body]),
                &h,
                &auth(Payload::StreamingUnsignedTrailer),
                1 << 30,
            )
            .err()
            .expect("refused")
        };
        let e = refused(
            &[
                ("x-amz-decoded-content-length", "5"),
                ("x-amz-trailer", "x-amz-meta-evil"),
            ],
            b"5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(e.code, "InvalidRequest");
        assert!(e.message.contains("x-amz-meta-evil"), "{}", e.message);
        // One checksum as a header and named as a trailer: which value would be checked?
        let e = refused(
            &[
                ("x-amz-decoded-content-length", "5"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
                ("x-amz-checksum-crc32", "NhCmhg=="),
            ],
            b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
        );
        assert_eq!(e.code, "InvalidRequest");
        // A decoded length with a sign is no number.
        let e = refused(
            &[
                ("x-amz-decoded-content-length", "+5"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ],
            b"5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(e.code, "InvalidArgument");
    }

    #[tokio::test]
    async fn plain_body_with_md5_and_crc32_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "5".parse().unwrap());
        h.insert("content-md5", "XUFAKrxLKna5cZ2REBfFkg==".parse().unwrap());
        h.insert("x-amz-checksum-crc32", "NhCmhg==".parse().unwrap());
        let r = BodyReader::new(
            raw(vec![b"hel", b"lo"]),
            &h,
            &auth(Payload::Unsigned),
            1 << 30,
        )
        .unwrap();
        let (data, summary) = read(r).await.unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(summary.etag(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(summary.checksums[0].value, "NhCmhg==");
    }

    #[test]
    fn two_checksum_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "5".parse().unwrap());
        h.insert("x-amz-checksum-crc32", "NhCmhg==".parse().unwrap());
        h.insert("x-amz-checksum-crc32c", "AAAAAA==".parse().unwrap());
        let e = BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30)
            .err()
            .expect("refused");
        assert_eq!((e.status.as_u16(), e.code), (400, "InvalidRequest"));
    }

    #[tokio::test]
    async fn wrong_md5_crc_sha256_and_length_fail_at_the_end() {
        let mut h = HeaderMap::new();
        h.insert("content-md5", "XUFAKrxLKna5cZ2REBfFkg==".parse().unwrap());
        let r =
            BodyReader::new(raw(vec![b"hellO"]), &h, &auth(Payload::Unsigned), 1 << 30).unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "BadDigest");
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        let r =
            BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30).unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "BadDigest");
        let r = BodyReader::new(
            raw(vec![b"hello"]),
            &HeaderMap::new(),
            &auth(Payload::Sha256("00".repeat(32))),
            1 << 30,
        )
        .unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "XAmzContentSHA256Mismatch");
        let mut h = HeaderMap::new();
        h.insert("content-length", "9".parse().unwrap());
        let r =
            BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30).unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "IncompleteBody");
    }

    #[tokio::test]
    async fn aws_chunked_with_a_crc32_trailer() {
        let mut h = HeaderMap::new();
        h.insert("content-encoding", "aws-chunked".parse().unwrap());
        h.insert("x-amz-trailer", "x-amz-checksum-crc32".parse().unwrap());
        h.insert("x-amz-decoded-content-length", "5".parse().unwrap());
        let r = BodyReader::new(
            raw(vec![
                b"5\r\nhel",
                b"lo\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n",
            ]),
            &h,
            &auth(Payload::StreamingUnsignedTrailer),
            1 << 30,
        )
        .unwrap();
        let (data, summary) = read(r).await.unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(summary.checksums[0].algorithm, "CRC32");
        let r = BodyReader::new(
            raw(vec![
                b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
            ]),
            &h,
            &auth(Payload::StreamingUnsignedTrailer),
            1 << 30,
        )
        .unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "BadDigest");
    }

    /// A -TRAILER payload must name its trailer, a trailer must have been named, and a
    /// trailer is looked for only after a -TRAILER payload.
    #[tokio::test]
    async fn trailers_come_only_declared_and_only_after_a_trailer_payload() {
        let body = || {
            raw(vec![
                b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
            ])
        };
        let mut h = HeaderMap::new();
        h.insert("x-amz-decoded-content-length", "5".parse().unwrap());
        let e = BodyReader::new(
            body(),
            &h,
            &auth(Payload::StreamingUnsignedTrailer),
            1 << 30,
        )
        .err()
        .expect("a trailer payload without x-amz-trailer is refused");
        assert_eq!(e.code, "InvalidRequest");
        let signed = |trailer| Payload::StreamingSigned {
            key: vec![0; 32],
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            seed: "00".into(),
            trailer,
        };
        let e = BodyReader::new(body(), &h, &auth(signed(true)), 1 << 30)
            .err()
            .expect("refused");
        assert_eq!(e.code, "InvalidRequest");
        h.insert("x-amz-trailer", "x-amz-checksum-crc32".parse().unwrap());
        let e = BodyReader::new(body(), &h, &auth(signed(false)), 1 << 30)
            .err()
            .expect("x-amz-trailer without a trailer payload is refused");
        assert_eq!(e.code, "InvalidRequest");
        // Declared crc32, sent crc32c as well: the undeclared one is refused.
        let r = BodyReader::new(
            raw(vec![
                b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\nx-amz-checksum-crc32c:AAAAAA==\r\n\r\n",
            ]),
            &h,
            &auth(Payload::StreamingUnsignedTrailer),
            1 << 30,
        )
        .unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "InvalidRequest");
        // A presigned (unsigned-payload) aws-chunked body with x-amz-trailer: its trailer is
        // read and checked.
        h.insert("content-encoding", "aws-chunked".parse().unwrap());
        let presigned = |trailer: &'static [u8]| {
            BodyReader::new(raw(vec![trailer]), &h, &auth(Payload::Unsigned), 1 << 30).unwrap()
        };
        let good = presigned(b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n");
        assert_eq!(read(good).await.unwrap().0, b"hello");
        let bad = presigned(b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n");
        assert_eq!(read(bad).await.unwrap_err().code, "BadDigest");
    }

    /// A presigned or SigV2 request's x-amz-content-sha256 header is checked against the body,
    /// and a streaming one refused (the body would be stored framing and all).
    #[tokio::test]
    async fn an_unsigned_requests_payload_hash_header_is_checked() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-content-sha256",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
                .parse()
                .unwrap(),
        );
        let r =
            BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30).unwrap();
        assert_eq!(read(r).await.unwrap().0, b"hello");
        let r =
            BodyReader::new(raw(vec![b"HELLO"]), &h, &auth(Payload::Unsigned), 1 << 30).unwrap();
        assert_eq!(read(r).await.unwrap_err().code, "XAmzContentSHA256Mismatch");
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER".parse().unwrap(),
        );
        let e = BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30)
            .err()
            .expect("refused");
        assert_eq!(e.code, "InvalidRequest");
    }

    #[test]
    fn a_checksum_algorithm_with_no_checksum_is_refused() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "5".parse().unwrap());
        h.insert("x-amz-sdk-checksum-algorithm", "CRC32".parse().unwrap());
        let e = BodyReader::new(raw(vec![b"hello"]), &h, &auth(Payload::Unsigned), 1 << 30)
            .err()
            .expect("refused");
        assert_eq!(e.code, "InvalidRequest");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_early() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "100".parse().unwrap());
        assert_eq!(
            BodyReader::new(raw(vec![]), &h, &auth(Payload::Unsigned), 10)
                .err()
                .unwrap()
                .code,
            "EntityTooLarge"
        );
    }
}
