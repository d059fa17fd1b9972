//! The aws-chunked content encoding: `hex-size[;chunk-signature=sig]\r\n data \r\n`, a final
//! 0-size chunk, then trailers (`name:value\r\n`) and an empty line. Signed variants chain each
//! chunk's signature from the previous one (the request signature seeds the chain), and sign
//! the trailers too. Decoding is incremental: bytes are fed as they arrive.

use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::auth::sigv4;
use crate::error::S3Error;

/// Longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailers a body may end with (clients send one checksum, and its signature).
const MAX_TRAILERS: usize = 16;
/// Smallest chunk of a signed body but its last (S3's rule: each chunk costs a signature).
const MIN_SIGNED_CHUNK: usize = 8192;
/// Most bytes accepted after the last chunk (trailers, empty lines, trailing whitespace): a
/// client trickling bytes there would otherwise hold its upload, and the zones its data went
/// to, for as long as it likes.
const MAX_TAIL: usize = 64 << 10;

/// Signature state of a signed aws-chunked body.
#[derive(Debug, Clone)]
pub struct ChunkSigning {
    /// Signing key.
    pub key: Vec<u8>,
    /// x-amz-date.
    pub amz_date: String,
    /// Credential scope.
    pub scope: String,
    /// The previous signature (initially the request's).
    pub previous: String,
}

#[derive(Debug)]
enum State {
    Header,
    Data {
        remaining: usize,
        signature: Option<String>,
    },
    DataEnd,
    Trailers,
    Done,
}

/// Decodes an aws-chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    buf: BytesMut,
    state: State,
    signing: Option<ChunkSigning>,
    chunk_hash: Sha256,
    trailers: Vec<(String, String)>,
    trailer_signature: Option<String>,
    expect_trailers: bool,
    /// Bytes of `buf` already searched for a line end without finding one.
    scanned: usize,
    /// Bytes taken after the last chunk.
    tail: usize,
    /// Data chunks begun so far.
    chunks: u64,
    /// The size of the last data chunk, if under [`MIN_SIGNED_CHUNK`] (only the last may be).
    small_chunk: Option<usize>,
}

fn malformed(detail: &str) -> S3Error {
    S3Error::incomplete_body(&format!("malformed aws-chunked body: {detail}"))
}

impl ChunkedDecoder {
    /// A decoder; with `signing`, every chunk signature is checked. `expect_trailers` when the
    /// request declared x-amz-trailer.
    pub fn new(signing: Option<ChunkSigning>, expect_trailers: bool) -> Self {
        ChunkedDecoder {
            buf: BytesMut::new(),
            state: State::Header,
            signing,
            chunk_hash: Sha256::new(),
            trailers: Vec::new(),
            trailer_signature: None,
            expect_trailers,
            scanned: 0,
            tail: 0,
            chunks: 0,
            small_chunk: None,
        }
    }

    fn take_line(&mut self) -> Result<Option<String>, S3Error> {
        // Search only bytes not searched before (less one: a CR may end them).
        let from = self.scanned.saturating_sub(1);
        match self.buf[from..].windows(2).position(|w| w == b"\r\n") {
            Some(found) => {
                let pos = from + found;
                self.scanned = 0;
                if pos > MAX_LINE {
                    return Err(malformed("line too long"));
                }
                let line = self.buf.split_to(pos);
                self.buf.advance(2);
                String::from_utf8(line.to_vec())
                    .map(Some)
                    .map_err(|_| malformed("line is not UTF-8"))
            }
            // A line of MAX_LINE bytes may wait here for the LF after its CR.
            None if self.buf.len() > MAX_LINE + 1 => Err(malformed("line too long")),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    fn count_tail(&mut self, bytes: usize) -> Result<(), S3Error> {
        self.tail += bytes;
        if self.tail > MAX_TAIL {
            return Err(malformed("too many bytes after the last chunk"));
        }
        Ok(())
    }

    fn verify_chunk(&mut self, signature: Option<String>) -> Result<(), S3Error> {
        let hash = hex::encode(std::mem::take(&mut self.chunk_hash).finalize());
        if let Some(signing) = self.signing.as_mut() {
            let provided = signature.ok_or_else(unsigned_chunk)?;
            let expected = sigv4::chunk_signature(
                &signing.key,
                &signing.amz_date,
                &signing.scope,
                &signing.previous,
                &hash,
            );
            if !sigv4::same(&expected, &provided) {
                return Err(S3Error::signature_mismatch()
                    .with("Detail", "a chunk signature does not match"));
            }
            signing.previous = expected;
        }
        Ok(())
    }

    /// Feeds raw bytes; returns the decoded data they complete.
    pub fn push(&mut self, raw: &[u8]) -> Result<Vec<Bytes>, S3Error> {
        self.buf.extend_from_slice(raw);
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Header => {
                    let Some(line) = self.take_line()? else { break };
                    let (size, ext) = line.split_once(';').unwrap_or((&line, ""));
                    // Hex digits only (no sign, no other spaces than around them).
                    let size = size.trim_ascii();
                    if size.is_empty()
                        || size.len() > 16
                        || !size.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(malformed("bad chunk size"));
                    }
                    let size =
                        usize::from_str_radix(size, 16).map_err(|_| malformed("bad chunk size"))?;
                    if size > 0 {
                        self.chunks += 1;
                        if let Some(small) = self.small_chunk
                            && self.signing.is_some()
                        {
                            return Err(S3Error::invalid_chunk_size(self.chunks, small));
                        }
                        self.small_chunk = (size < MIN_SIGNED_CHUNK).then_some(size);
                    }
                    let signature = ext
                        .trim()
                        .strip_prefix("chunk-signature=")
                        .map(str::to_string);
                    // A signed payload's chunk without a signature can never verify: refused
                    // now, before its data is taken.
                    if self.signing.is_some() && signature.is_none() {
                        return Err(unsigned_chunk());
                    }
                    if size == 0 {
                        self.verify_chunk(signature)?;
                        self.state = State::Trailers;
                    } else {
                        self.state = State::Data {
                            remaining: size,
                            signature,
                        };
                    }
                }
                State::Data {
                    remaining,
                    signature,
                } => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let n = (*remaining).min(self.buf.len());
                    let data = self.buf.split_to(n).freeze();
                    *remaining -= n;
                    if self.signing.is_some() {
                        self.chunk_hash.update(&data);
                    }
                    out.push(data);
                    if *remaining == 0 {
                        let signature = signature.take();
                        self.verify_chunk(signature)?;
                        self.state = State::DataEnd;
                    }
                }
                State::DataEnd => {
                    if self.buf.len() < 2 {
                        break;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(malformed("chunk data not followed by CRLF"));
                    }
                    self.buf.advance(2);
                    self.state = State::Header;
                }
                State::Trailers => {
                    let Some(line) = self.take_line()? else { break };
                    self.count_tail(line.len() + 2)?;
                    if line.is_empty() {
                        // Some encoders put an empty line before the trailers: with trailers
                        // expected and none seen yet, it does not end the body, wherever the
                        // bytes were split (the end of the input does; see `finish`).
                        if self.trailers.is_empty()
                            && self.trailer_signature.is_none()
                            && self.expect_trailers
                        {
                            continue;
                        }
                        self.state = State::Done;
                        continue;
                    }
                    let (name, value) = line
                        .split_once(':')
                        .ok_or_else(|| malformed("bad trailer line"))?;
                    let name = name.trim().to_ascii_lowercase();
                    if name == "x-amz-trailer-signature" {
                        if self.trailer_signature.is_some() {
                            return Err(malformed("a second trailer signature"));
                        }
                        self.trailer_signature = Some(value.trim().to_string());
                    } else if self.trailers.len() >= MAX_TRAILERS {
                        return Err(malformed("too many trailers"));
                    } else if self.trailers.iter().any(|(n, _)| *n == name) {
                        // Which of two values would be the one checked?
                        return Err(S3Error::invalid_request(format!(
                            "the trailer {name} is given twice"
                        )));
                    } else {
                        self.trailers.push((name, value.trim().to_string()));
                    }
                }
                State::Done => {
                    if !self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                        return Err(malformed("data after the end of the body"));
                    }
                    self.count_tail(self.buf.len())?;
                    self.buf.clear();
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Ends decoding at the end of the raw body: checks that the body was complete (and the
    /// trailer signature, when signed) and returns the trailers.
    pub fn finish(&mut self) -> Result<Vec<(String, String)>, S3Error> {
        match self.state {
            State::Done => {}
            // Tolerate a missing final empty line after the trailers.
            State::Trailers if self.buf.is_empty() => {}
            _ => return Err(S3Error::incomplete_body("the aws-chunked body ended early")),
        }
        if let Some(signing) = &self.signing
            && self.expect_trailers
        {
            let provided = self.trailer_signature.as_deref().ok_or_else(|| {
                S3Error::signature_mismatch().with("Detail", "missing trailer signature")
            })?;
            let expected = sigv4::trailer_signature(
                &signing.key,
                &signing.amz_date,
                &signing.scope,
                &signing.previous,
                &self.trailers,
            );
            if !sigv4::same(&expected, provided) {
                return Err(S3Error::signature_mismatch()
                    .with("Detail", "the trailer signature does not match"));
            }
        }
        Ok(std::mem::take(&mut self.trailers))
    }
}

/// A signed body's chunk that carries no signature.
fn unsigned_chunk() -> S3Error {
    S3Error::signature_mismatch().with("Detail", "chunk without a signature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_amz_date;

    fn decode_all(d: &mut ChunkedDecoder, body: &[u8], step: usize) -> Result<Vec<u8>, S3Error> {
        let mut out = Vec::new();
        for piece in body.chunks(step) {
            for b in d.push(piece)? {
                out.extend_from_slice(&b);
            }
        }
        Ok(out)
    }

    #[test]
    fn unsigned_trailer_body_from_boto3() {
        let body = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n";
        for step in [1, 3, 7, body.len()] {
            let mut d = ChunkedDecoder::new(None, true);
            assert_eq!(decode_all(&mut d, body, step).unwrap(), b"hello");
            assert_eq!(
                d.finish().unwrap(),
                vec![("x-amz-checksum-crc32".into(), "NhCmhg==".into())]
            );
        }
    }

    /// An empty line between the last chunk and the trailers is taken however the body's bytes
    /// arrive (split right after it, or not).
    /// S3 sets no largest chunk, and SDKs that frame a whole body as one chunk exist: a chunk of
    /// 80 MiB streams through in the pieces it arrives in (nothing is held whole; what bounds
    /// the body is its declared decoded length, checked by the caller).
    #[test]
    fn a_chunk_larger_than_any_buffer_streams_through() {
        let size = 80usize << 20;
        let mut d = ChunkedDecoder::new(None, true);
        assert!(
            d.push(format!("{size:x}\r\n").as_bytes())
                .unwrap()
                .is_empty()
        );
        let piece = vec![7u8; 1 << 20];
        let mut seen = 0;
        for _ in 0..size / piece.len() {
            let out = d.push(&piece).unwrap();
            assert!(out.iter().all(|b| b.len() <= piece.len()));
            seen += out.iter().map(|b| b.len()).sum::<usize>();
        }
        assert_eq!(seen, size);
        assert!(d.push(b"\r\n0\r\n\r\n").unwrap().is_empty());
        assert!(d.finish().unwrap().is_empty());
    }

    #[test]
    fn an_empty_line_before_the_trailers_whatever_the_split() {
        let body = b"5\r\nhello\r\n0\r\n\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n";
        for split in 1..body.len() {
            let mut d = ChunkedDecoder::new(None, true);
            let mut out = Vec::new();
            for piece in [&body[..split], &body[split..]] {
                for b in d.push(piece).unwrap() {
                    out.extend_from_slice(&b);
                }
            }
            assert_eq!(out, b"hello", "split at {split}");
            assert_eq!(
                d.finish().unwrap(),
                vec![("x-amz-checksum-crc32".into(), "NhCmhg==".into())],
                "split at {split}"
            );
        }
    }

    #[test]
    fn endless_empty_lines_or_whitespace_after_the_last_chunk_are_refused() {
        for filler in [&b"\r\n"[..], &b"  \t"[..]] {
            let mut d = ChunkedDecoder::new(None, true);
            let mut start = b"5\r\nhello\r\n0\r\n".to_vec();
            if filler != b"\r\n" {
                start.extend_from_slice(b"x-amz-checksum-crc32:NhCmhg==\r\n\r\n");
            }
            d.push(&start).unwrap();
            let refused = (0..100_000).find_map(|_| d.push(filler).err());
            let e = refused.expect("the tail is bounded");
            assert!(e.message.contains("after the last chunk"), "{e:?}");
        }
    }

    #[test]
    fn a_second_trailer_signature_and_an_overlong_line_are_refused() {
        let mut d = ChunkedDecoder::new(None, true);
        let e = d
            .push(b"0\r\nx-amz-trailer-signature:aa\r\nx-amz-trailer-signature:bb\r\n")
            .unwrap_err();
        assert!(e.message.contains("second trailer signature"), "{e:?}");
        // A line longer than the limit is refused even when its end arrives with it.
        let mut d = ChunkedDecoder::new(None, true);
        let mut body = b"0\r\nx-amz-meta-a:".to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        body.extend_from_slice(b"\r\n\r\n");
        let e = d.push(&body).unwrap_err();
        assert!(e.message.contains("line too long"), "{e:?}");
    }

    #[test]
    fn an_endless_run_of_trailers_is_refused() {
        let mut d = ChunkedDecoder::new(None, true);
        d.push(b"0\r\n").unwrap();
        let mut refused = None;
        for i in 0..1000 {
            if let Err(e) = d.push(format!("x-amz-meta-{i}:b\r\n").as_bytes()) {
                refused = Some(i);
                assert_eq!(e.code, "IncompleteBody", "{e:?}");
                break;
            }
        }
        assert_eq!(refused, Some(MAX_TRAILERS));
    }

    fn signing(seed: &str) -> ChunkSigning {
        ChunkSigning {
            key: sigv4::signing_key(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                parse_amz_date("20130524T000000Z").unwrap(),
                "us-east-1",
            ),
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            previous: seed.into(),
        }
    }

    fn signed_body(trailer: bool) -> Vec<u8> {
        let mut b = Vec::new();
        let sigs: [&str; 3] = if trailer {
            [
                "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
            ]
        } else {
            [
                "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
            ]
        };
        b.extend_from_slice(format!("10000;chunk-signature={}\r\n", sigs[0]).as_bytes());
        b.extend(vec![b'a'; 65536]);
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(format!("400;chunk-signature={}\r\n", sigs[1]).as_bytes());
        b.extend(vec![b'a'; 1024]);
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(format!("0;chunk-signature={}\r\n", sigs[2]).as_bytes());
        if trailer {
            b.extend_from_slice(b"x-amz-checksum-crc32c:sOO8/Q==\r\n");
            b.extend_from_slice(b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b
    }

    /// A signed aws-chunked body of `chunks` (and the final empty one), signatures chained
    /// from `seed`.
    fn sign_chunks(seed: &str, chunks: &[&[u8]]) -> Vec<u8> {
        let signing = signing(seed);
        let mut previous = seed.to_string();
        let mut body = Vec::new();
        for chunk in chunks.iter().copied().chain([&b""[..]]) {
            let hash = hex::encode(Sha256::digest(chunk));
            let signature = sigv4::chunk_signature(
                &signing.key,
                &signing.amz_date,
                &signing.scope,
                &previous,
                &hash,
            );
            body.extend_from_slice(
                format!("{:x};chunk-signature={signature}\r\n", chunk.len()).as_bytes(),
            );
            body.extend_from_slice(chunk);
            body.extend_from_slice(b"\r\n");
            previous = signature;
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    /// A signed body's chunk without a signature is refused at its size line, before any of
    /// its data is taken (it could never verify).
    #[test]
    fn a_signed_chunk_without_a_signature_is_refused_before_its_data() {
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        for line in [&b"fffffff\r\n"[..], b"10000;foo=bar\r\n"] {
            let mut d = ChunkedDecoder::new(Some(signing(seed)), false);
            let e = d.push(line).unwrap_err();
            assert_eq!(e.code, "SignatureDoesNotMatch", "{e:?}");
        }
    }

    /// As S3 answers: in a signed body only the last chunk may be under 8 KiB.
    #[test]
    fn a_signed_chunk_under_8_kib_but_the_last_is_refused() {
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        let big = vec![b'a'; MIN_SIGNED_CHUNK];
        let fine = sign_chunks(seed, &[&big, &big, b"tail"]);
        let mut d = ChunkedDecoder::new(Some(signing(seed)), false);
        assert_eq!(
            decode_all(&mut d, &fine, 1000).unwrap().len(),
            2 * big.len() + 4
        );
        d.finish().unwrap();
        let small_first = sign_chunks(seed, &[b"hel", b"lo"]);
        let mut d = ChunkedDecoder::new(Some(signing(seed)), false);
        let e = decode_all(&mut d, &small_first, 7).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "InvalidChunkSizeError"));
        let field = |name| {
            e.extra
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field("Chunk").as_deref(), Some("2"));
        assert_eq!(field("BadChunkSize").as_deref(), Some("3"));
        // An unsigned body's chunks may be any size.
        let mut d = ChunkedDecoder::new(None, false);
        let unsigned = b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(decode_all(&mut d, unsigned, 5).unwrap(), b"hello");
    }

    #[test]
    fn a_chunk_size_that_is_not_plain_hex_or_a_trailer_given_twice_is_refused() {
        for body in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n",
        ] {
            let mut d = ChunkedDecoder::new(None, false);
            let e = decode_all(&mut d, body, body.len()).unwrap_err();
            assert!(e.message.contains("bad chunk size"), "{e:?}");
        }
        let mut d = ChunkedDecoder::new(None, true);
        let twice = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        let e = decode_all(&mut d, twice, twice.len()).unwrap_err();
        assert_eq!(e.code, "InvalidRequest", "{e:?}");
    }

    #[test]
    fn signed_chunks_of_the_aws_example() {
        let body = signed_body(false);
        assert_eq!(body.len(), 66824);
        let mut d = ChunkedDecoder::new(
            Some(signing(
                "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            )),
            false,
        );
        assert_eq!(decode_all(&mut d, &body, 1000).unwrap().len(), 66560);
        d.finish().unwrap();
    }

    #[test]
    fn signed_chunks_with_signed_trailer_of_the_aws_example() {
        let body = signed_body(true);
        assert_eq!(body.len(), 66946);
        let mut d = ChunkedDecoder::new(
            Some(signing(
                "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
            )),
            true,
        );
        assert_eq!(decode_all(&mut d, &body, 4096).unwrap().len(), 66560);
        assert_eq!(
            d.finish().unwrap(),
            vec![("x-amz-checksum-crc32c".into(), "sOO8/Q==".into())]
        );
    }

    #[test]
    fn a_tampered_chunk_breaks_the_chain() {
        let mut body = signed_body(false);
        body[200] = b'b';
        let mut d = ChunkedDecoder::new(
            Some(signing(
                "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            )),
            false,
        );
        assert_eq!(
            decode_all(&mut d, &body, 1000).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn truncated_bodies_are_incomplete() {
        let mut d = ChunkedDecoder::new(None, false);
        d.push(b"5\r\nhel").unwrap();
        assert_eq!(d.finish().unwrap_err().code, "IncompleteBody");
        let mut d = ChunkedDecoder::new(None, false);
        assert!(d.push(b"zz\r\n").is_err());
    }
}
