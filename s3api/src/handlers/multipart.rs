//! Multipart uploads: CreateMultipartUpload, UploadPart, UploadPartCopy,
//! CompleteMultipartUpload (composite and full-object checksums), AbortMultipartUpload,
//! ListParts, ListMultipartUploads.

use std::collections::HashMap;

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use md5::{Digest, Md5};

use super::object::{
    add_missing, header_name, open_copy_source, pipe, receive_with_checksum, requested_algorithm,
    write_condition,
};
use crate::checksum::{self, Algorithm, Hasher};
use crate::error::S3Error;
use crate::http_util::{check_key, object_headers};
use crate::service::{Ctx, Reply, S3Service, empty, response, xml};
use crate::store::{Completion, PartInfo, StoredChecksum, UploadInfo, WriteCondition};
use crate::time::iso8601;
use crate::xml::{CompletedPart, XmlWriter, parse_complete};

/// Largest part.
const MAX_PART: u64 = 5 << 30;

fn part_number(ctx: &Ctx) -> Result<u32, S3Error> {
    ctx.q("partNumber")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

fn upload_id(ctx: &Ctx) -> String {
    ctx.q("uploadId").unwrap_or_default().to_string()
}

/// CreateMultipartUpload.
pub async fn create(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    check_key(&key)?;
    svc.owned_bucket(ctx, &bucket)?;
    super::acl::check_acl_headers(&ctx.headers, ctx.user())?;
    crate::http_util::refuse_unsupported_write_headers(&ctx.headers)?;
    let headers = object_headers(&ctx.headers)?;
    let algorithm = requested_algorithm(ctx)?;
    let kind = ctx
        .header("x-amz-checksum-type")
        .map(str::to_ascii_uppercase);
    let checksum = match (algorithm, kind.as_deref()) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(S3Error::invalid_request(
                "x-amz-checksum-type requires x-amz-checksum-algorithm",
            ));
        }
        (Some(Algorithm::Crc64Nvme), None | Some("FULL_OBJECT")) => {
            Some((Algorithm::Crc64Nvme, "FULL_OBJECT"))
        }
        (Some(a @ (Algorithm::Crc32 | Algorithm::Crc32c)), None | Some("COMPOSITE")) => {
            Some((a, "COMPOSITE"))
        }
        (Some(a @ (Algorithm::Crc32 | Algorithm::Crc32c)), Some("FULL_OBJECT")) => {
            Some((a, "FULL_OBJECT"))
        }
        (Some(a @ (Algorithm::Sha1 | Algorithm::Sha256)), None | Some("COMPOSITE")) => {
            Some((a, "COMPOSITE"))
        }
        (Some(a), Some(t)) => {
            return Err(S3Error::invalid_request(format!(
                "The {} checksum algorithm does not support the {t} checksum type",
                a.name()
            )));
        }
    };
    let upload = svc
        .store
        .create_upload(
            &bucket,
            &key,
            headers,
            ctx.user(),
            checksum.map(|(a, t)| (a.name().to_string(), t.to_string())),
        )
        .await?;
    let mut w = XmlWriter::new("InitiateMultipartUploadResult");
    w.element("Bucket", &bucket)
        .element("Key", &key)
        .element("UploadId", &upload.upload_id);
    let mut resp = xml(w.finish());
    if let Some((a, t)) = checksum {
        resp.headers_mut().insert(
            "x-amz-checksum-algorithm",
            http::HeaderValue::from_static(a.name()),
        );
        resp.headers_mut()
            .insert("x-amz-checksum-type", http::HeaderValue::from_static(t));
    }
    Ok(resp)
}

/// The checksum algorithm an upload declared, which every part carries.
fn upload_algorithm(upload: &UploadInfo) -> Option<Algorithm> {
    upload
        .checksum_algorithm
        .as_deref()
        .and_then(Algorithm::parse)
}

/// Refuses a part whose checksum (a header, a trailer named in x-amz-trailer, or
/// x-amz-sdk-checksum-algorithm) is of another algorithm than the upload declared, as S3 does:
/// the completed object's checksum could not be made from it, and the client would believe its
/// part checked by the algorithm it chose.
fn same_checksum_type(ctx: &Ctx, declared: Option<Algorithm>) -> Result<(), S3Error> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let trailers = ctx.header("x-amz-trailer").unwrap_or("");
    let sent = Algorithm::ALL
        .into_iter()
        .find(|a| {
            let header = a.header();
            ctx.header(&header).is_some()
                || trailers
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(&header))
        })
        .or_else(|| {
            ctx.header("x-amz-sdk-checksum-algorithm")
                .and_then(Algorithm::parse)
        });
    match sent {
        Some(sent) if sent != declared => Err(S3Error::invalid_request(format!(
            "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
            declared.name().to_ascii_lowercase(),
            sent.name().to_ascii_lowercase()
        ))),
        _ => Ok(()),
    }
}

/// UploadPart.
pub async fn upload_part(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    svc.owned_bucket(ctx, &bucket)?;
    crate::http_util::refuse_unsupported_write_headers(&ctx.headers)?;
    let number = part_number(ctx)?;
    let id = upload_id(ctx);
    let upload = svc.store.upload(&bucket, &key, &id)?;
    super::object::require_length(ctx)?;
    same_checksum_type(ctx, upload_algorithm(&upload))?;
    let mut writer = svc.store.put_part(&bucket, &key, &id, number).await?;
    // The body reader verifies (and so computes) a checksum the client sends: one more is
    // computed only when the client sends none of the upload's algorithm.
    let also = upload_algorithm(&upload).filter(|a| {
        let header = a.header();
        ctx.header(&header).is_none()
            && !ctx
                .header("x-amz-trailer")
                .is_some_and(|t| t.eq_ignore_ascii_case(&header))
    });
    let summary = receive_with_checksum(ctx, &mut writer, MAX_PART, also).await?;
    let part = writer
        .commit_part(summary.etag(), summary.checksums.clone())
        .await?;
    let mut h = vec![
        ("etag", format!("\"{}\"", part.etag)),
        ("content-length", "0".into()),
    ];
    for c in &part.checksums {
        if let Some(a) = Algorithm::parse(&c.algorithm) {
            h.push((header_name(a), c.value.clone()));
        }
    }
    Ok(response(StatusCode::OK, h, Body::empty()))
}

/// UploadPartCopy: a part from a byte range of another object.
pub async fn upload_part_copy(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    svc.owned_bucket(ctx, &bucket)?;
    crate::http_util::refuse_unsupported_write_headers(&ctx.headers)?;
    let number = part_number(ctx)?;
    let id = upload_id(ctx);
    let upload = svc.store.upload(&bucket, &key, &id)?;
    let (_, _, source) = open_copy_source(svc, ctx)?;
    let size = source.info.size;
    let range = match ctx.header("x-amz-copy-source-range") {
        None => 0..size,
        Some(r) => {
            let bad = || {
                S3Error::invalid_argument(
                    "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
                )
            };
            let spec = r.trim().strip_prefix("bytes=").ok_or_else(bad)?;
            let (a, b) = spec.split_once('-').ok_or_else(bad)?;
            let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            // Well formed, but backwards or past the source's end: S3 answers 400 here (not a
            // GET's 416).
            if a > b || b >= size {
                return Err(S3Error::invalid_argument(format!(
                    "Range specified is not valid for source object of size: {size}"
                )));
            }
            a..b + 1
        }
    };
    if range.end - range.start > MAX_PART {
        if ctx.header("x-amz-copy-source-range").is_none() {
            // As CopyObject answers for a source too large to copy whole.
            return Err(S3Error::invalid_request(format!(
                "The specified copy source is larger than the maximum allowable size for a copy source: {MAX_PART}"
            )));
        }
        return Err(S3Error::entity_too_large(range.end - range.start, MAX_PART));
    }
    let mut writer = svc.store.put_part(&bucket, &key, &id, number).await?;
    let hasher = upload_algorithm(&upload).map(Hasher::new);
    let body = source.reader.read(range.clone())?;
    let copy = async move {
        let (_, md5, hasher) = pipe(body, range.end - range.start, &mut writer, hasher).await?;
        let mut checksums = Vec::new();
        add_missing(&mut checksums, hasher);
        let part = writer.commit_part(checksum::hex(&md5), checksums).await?;
        // With the part's checksum, for the client to name in CompleteMultipartUpload.
        Ok(super::long_copy::result_document(
            "CopyPartResult",
            part.last_modified,
            &part.etag,
            &part.checksums,
            None,
        ))
    };
    super::long_copy::copy_reply(svc, ctx, copy).await
}

/// A GF(2) operator on CRCs of `width` bits: a column per bit.
type Operator = Vec<u64>;

/// `mat` applied to the CRC `vec`.
fn apply(mat: &[u64], mut vec: u64) -> u64 {
    let (mut sum, mut i) = (0, 0);
    while vec != 0 {
        if vec & 1 != 0 {
            sum ^= mat[i];
        }
        vec >>= 1;
        i += 1;
    }
    sum
}

/// `a` after `b`.
fn compose(a: &[u64], b: &[u64]) -> Operator {
    b.iter().map(|&column| apply(a, column)).collect()
}

/// The operators that carry a CRC over 2^k zero bytes, for k = 0..64: `crc(A‖B)` is the CRC
/// of A carried over len(B) zero bytes, XOR `crc(B)`. `poly` is the reflected polynomial.
fn zero_byte_powers(poly: u64, width: usize) -> Vec<Operator> {
    // One zero bit, then squared to two, four and eight (a byte), and on.
    let bit: Operator = std::iter::once(poly)
        .chain((0..width - 1).map(|i| 1u64 << i))
        .collect();
    let two = compose(&bit, &bit);
    let four = compose(&two, &two);
    let mut powers = vec![compose(&four, &four)];
    for k in 1..64 {
        let last = &powers[k - 1];
        powers.push(compose(last, last));
    }
    powers
}

/// `crc` carried over `len` zero bytes: a product of vector and matrix per bit of `len`, so
/// that parts of as many sizes as a client likes cost next to nothing.
fn over_zeros(powers: &[Operator], mut crc: u64, len: u64) -> u64 {
    for (k, power) in powers.iter().enumerate() {
        if len >> k == 0 {
            break;
        }
        if len >> k & 1 != 0 {
            crc = apply(power, crc);
        }
    }
    crc
}

/// The full-object CRC of an object from its parts' CRCs and sizes.
fn full_object_crc(algorithm: Algorithm, parts: &[(String, u64)]) -> Result<String, S3Error> {
    let (poly, width) = match algorithm {
        Algorithm::Crc32 => (0xEDB8_8320u64, 32),
        Algorithm::Crc32c => (0x82F6_3B78u64, 32),
        Algorithm::Crc64Nvme => (0x9A6C_9329_AC4B_C9B5u64, 64),
        _ => {
            return Err(S3Error::invalid_request(
                "FULL_OBJECT checksums need a CRC algorithm",
            ));
        }
    };
    let powers = zero_byte_powers(poly, width);
    let mut total = 0u64;
    for (i, (value, size)) in parts.iter().enumerate() {
        let raw = STANDARD
            .decode(value)
            .ok()
            .filter(|raw| raw.len() == width / 8)
            .ok_or_else(|| S3Error::invalid_part("malformed part checksum"))?;
        let mut be = [0u8; 8];
        be[8 - raw.len()..].copy_from_slice(&raw);
        let crc = u64::from_be_bytes(be);
        total = if i == 0 {
            crc
        } else {
            over_zeros(&powers, total, *size) ^ crc
        };
    }
    let bytes = total.to_be_bytes();
    Ok(STANDARD.encode(&bytes[8 - width / 8..]))
}

/// CompleteMultipartUpload.
pub async fn complete(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    let checked = svc.owned_bucket(ctx, &bucket)?;
    let id = upload_id(ctx);
    let upload = match svc.store.upload(&bucket, &key, &id) {
        Ok(upload) => upload,
        Err(e) if e.code == "NoSuchUpload" => {
            let body = ctx.document_reader(4 << 20)?.read_all(4 << 20).await?;
            svc.still_owned_bucket(ctx, &checked)?;
            return completed_before(svc, ctx, &parse_complete(&body)?, e);
        }
        Err(e) => return Err(e),
    };
    let condition = write_condition(ctx)?;
    let body = ctx.document_reader(4 << 20)?.read_all(4 << 20).await?;
    let requested = parse_complete(&body)?;
    // From here on the upload may be gone because a concurrent Complete of the same request
    // (a client's retry while the first still waits for its commit) won: that one is told
    // it completed too, not that its upload does not exist.
    let outcome = complete_parts(svc, ctx, &upload, &requested, condition).await;
    match outcome {
        Err(e) if e.code == "NoSuchUpload" => completed_before(svc, ctx, &requested, e),
        other => other,
    }
}

/// CompleteMultipartUpload of the existing `upload` with the `requested` parts.
async fn complete_parts(
    svc: &S3Service,
    ctx: &mut Ctx,
    upload: &UploadInfo,
    requested: &[CompletedPart],
    condition: WriteCondition,
) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    let id = upload_id(ctx);
    if requested
        .windows(2)
        .any(|w| w[0].part_number >= w[1].part_number)
    {
        return Err(S3Error::invalid_part_order());
    }
    let stored = parts_of(svc, &bucket, &key, &id, 0, usize::MAX).await?;
    let stored: HashMap<u32, _> = stored.iter().map(|p| (p.part_number, p)).collect();
    check_completion_headers(ctx, upload, requested, &stored)?;
    // The object's checksum, if the upload declared an algorithm.
    let (checksum, checksum_type) = match (upload_algorithm(upload), upload.checksum_type.clone()) {
        (Some(algorithm), Some(kind)) => {
            let mut values = Vec::new();
            for p in requested {
                let part = stored.get(&p.part_number).ok_or_else(|| {
                    S3Error::invalid_part(&format!("part {} was not uploaded", p.part_number))
                })?;
                // The checksum is of the part the request names (one uploaded again since
                // would give another); the engine checks the ETags again under the key's lock.
                if part.etag.trim_matches('"') != p.etag {
                    return Err(S3Error::invalid_part(&format!(
                        "part {} does not have the ETag given",
                        p.part_number
                    )));
                }
                // Every part of the upload carries the algorithm's checksum, computed as it
                // was received: what the request says is only compared with it.
                let value = part
                    .checksums
                    .iter()
                    .find(|c| c.algorithm == algorithm.name())
                    .map(|c| c.value.clone())
                    .ok_or_else(|| {
                        S3Error::invalid_part(&format!(
                            "part {} has no {} checksum",
                            p.part_number,
                            algorithm.name()
                        ))
                    })?;
                // Of another algorithm, a part's checksum says nothing this upload can check;
                // a composite checksum is made of every part's, which the request must name
                // (as S3 has it).
                if let Some((other, _)) = p
                    .checksums
                    .iter()
                    .find(|(a, _)| !a.eq_ignore_ascii_case(algorithm.name()))
                {
                    return Err(S3Error::invalid_request(format!(
                        "part {} is given a {other} checksum, and the upload was created using a {} checksum",
                        p.part_number,
                        algorithm.name()
                    )));
                }
                match p
                    .checksums
                    .iter()
                    .find(|(a, _)| a.eq_ignore_ascii_case(algorithm.name()))
                {
                    Some((_, sent)) if *sent != value => {
                        return Err(S3Error::invalid_part(&format!(
                            "the checksum of part {} does not match",
                            p.part_number
                        )));
                    }
                    None if kind != "FULL_OBJECT" => {
                        return Err(S3Error::invalid_request(format!(
                            "The upload was created using a {} checksum. The complete request must include the checksum for each part. It was missing for part {} in the request.",
                            algorithm.name().to_ascii_lowercase(),
                            p.part_number
                        )));
                    }
                    _ => {}
                }
                values.push((value, part.size));
            }
            let value = if kind == "FULL_OBJECT" {
                full_object_crc(algorithm, &values)?
            } else {
                checksum::composite(
                    algorithm,
                    &values.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(),
                )?
            };
            // The object's checksum, if sent, must be the one the parts make (a composite
            // one with or without its `-N` suffix).
            if let Some(sent) = ctx.header(&algorithm.header()) {
                let sent = sent.trim();
                let matches = sent == value
                    || (kind != "FULL_OBJECT" && value.split('-').next() == Some(sent));
                if !matches {
                    return Err(S3Error::bad_digest(algorithm.name())
                        .with("ExpectedDigest", sent)
                        .with("CalculatedDigest", value));
                }
            }
            (
                Some(StoredChecksum {
                    algorithm: algorithm.name().to_string(),
                    value,
                }),
                Some(kind),
            )
        }
        _ => {
            // No checksum is made of the parts; those the request gives are still compared
            // with what their parts were stored with, not ignored.
            for p in requested {
                let Some(part) = stored.get(&p.part_number) else {
                    continue;
                };
                for (algorithm, sent) in &p.checksums {
                    let differs = part
                        .checksums
                        .iter()
                        .find(|c| c.algorithm.eq_ignore_ascii_case(algorithm))
                        .is_some_and(|c| c.value != *sent);
                    if differs {
                        return Err(S3Error::invalid_part(&format!(
                            "the {algorithm} checksum of part {} does not match",
                            p.part_number
                        )));
                    }
                }
            }
            (None, None)
        }
    };
    let parts: Vec<(u32, String)> = requested
        .iter()
        .map(|p| (p.part_number, p.etag.clone()))
        .collect();
    let info = svc
        .store
        .complete_upload(
            &bucket,
            &key,
            &id,
            Completion {
                parts,
                checksum,
                checksum_type,
                condition,
            },
        )
        .await?;
    Ok(completion_result(
        svc,
        ctx,
        &info.etag,
        &info.checksums,
        info.checksum_type.as_deref(),
    ))
}

/// What a CompleteMultipartUpload may say of the object it makes, checked as S3 does: its
/// size (`x-amz-mp-object-size`, which SDKs send to guard against a part left out) must be
/// the requested parts' (when they all exist: a missing one is InvalidPart), and its checksum
/// type (`x-amz-checksum-type`) the one the upload was created with, if it was created with one.
fn check_completion_headers(
    ctx: &Ctx,
    upload: &UploadInfo,
    requested: &[CompletedPart],
    stored: &HashMap<u32, &PartInfo>,
) -> Result<(), S3Error> {
    if let Some(sent) = ctx.header("x-amz-mp-object-size") {
        let sent: u64 = sent.trim().parse().map_err(|_| {
            S3Error::invalid_argument("x-amz-mp-object-size must be the object's size in bytes")
        })?;
        let sizes: Option<Vec<u64>> = requested
            .iter()
            .map(|p| stored.get(&p.part_number).map(|s| s.size))
            .collect();
        if let Some(sizes) = sizes {
            let total: u64 = sizes.iter().sum();
            if sent != total {
                return Err(S3Error::invalid_request(format!(
                    "The provided 'x-amz-mp-object-size' header value {sent} does not match what was computed: {total}"
                )));
            }
        }
    }
    if let (Some(sent), Some(kind)) = (ctx.header("x-amz-checksum-type"), &upload.checksum_type)
        && !sent.trim().eq_ignore_ascii_case(kind)
    {
        return Err(S3Error::invalid_request(format!(
            "The upload was created using the {kind} checksum mode. The complete request must use the same checksum mode."
        )));
    }
    Ok(())
}

/// The answer to a CompleteMultipartUpload of an upload that is gone (`gone`: NoSuchUpload):
/// when this upload was completed into the object there is now (or the store no longer knows
/// how it ended), and that object is the one the request's parts make (its ETag is theirs), a
/// client retrying a Complete whose answer it lost (a timeout, a reset connection) is told so
/// again, as S3 does; else `gone` (an aborted upload, or another one, naming the same parts is
/// not the completion of this one).
fn completed_before(
    svc: &S3Service,
    ctx: &Ctx,
    requested: &[CompletedPart],
    gone: S3Error,
) -> Reply {
    let mut md5s = Vec::with_capacity(requested.len() * 16);
    for p in requested {
        match hex::decode(&p.etag) {
            Ok(md5) if md5.len() == 16 => md5s.extend(md5),
            _ => return Err(gone),
        }
    }
    let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), requested.len());
    if svc
        .store
        .completed_into_current(ctx.bucket(), ctx.key(), &upload_id(ctx))?
        == Some(false)
    {
        return Err(gone);
    }
    match svc.store.open_object(ctx.bucket(), ctx.key()) {
        Ok(object) if !requested.is_empty() && object.info.etag == etag => Ok(completion_result(
            svc,
            ctx,
            &etag,
            &object.info.checksums,
            object.info.checksum_type.as_deref(),
        )),
        _ => Err(gone),
    }
}

/// The CompleteMultipartUploadResult document of the request's object.
fn completion_result(
    svc: &S3Service,
    ctx: &Ctx,
    etag: &str,
    checksums: &[StoredChecksum],
    checksum_type: Option<&str>,
) -> axum::response::Response {
    let mut w = XmlWriter::new("CompleteMultipartUploadResult");
    w.element("Location", &ctx.object_url(svc.config.https))
        .element("Bucket", ctx.bucket())
        .element("Key", ctx.key())
        .element("ETag", &format!("\"{etag}\""));
    for c in checksums {
        w.element(&format!("Checksum{}", c.algorithm), &c.value);
    }
    if let Some(t) = checksum_type {
        w.element("ChecksumType", t);
    }
    xml(w.finish())
}

/// AbortMultipartUpload.
pub async fn abort(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    svc.owned_bucket(ctx, &bucket)?;
    svc.store
        .abort_upload(&bucket, &key, &upload_id(ctx))
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Up to `limit` parts of an upload after part `after`, read off the runtime's workers.
async fn parts_of(
    svc: &S3Service,
    bucket: &str,
    key: &str,
    id: &str,
    after: u32,
    limit: usize,
) -> Result<Vec<crate::store::PartInfo>, S3Error> {
    let store = svc.store.clone();
    let (bucket, key, id) = (bucket.to_string(), key.to_string(), id.to_string());
    super::off_runtime(move || store.parts(&bucket, &key, &id, after, limit)).await
}

/// ListParts.
pub async fn list_parts(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    svc.owned_bucket(ctx, &bucket)?;
    let id = upload_id(ctx);
    let upload = svc.store.upload(&bucket, &key, &id)?;
    let marker = number_param(ctx, "part-number-marker", 0)? as u32;
    let max = number_param(ctx, "max-parts", 1000)?.min(1000) as usize;
    let all = parts_of(svc, &bucket, &key, &id, marker, max + 1).await?;
    // Nothing is listed with max-parts=0, and a page that cannot move on is not truncated
    // (a paginator would ask for it again forever).
    let truncated = max > 0 && all.len() > max;
    let parts = &all[..all.len().min(max)];
    let mut w = XmlWriter::new("ListPartsResult");
    w.element("Bucket", &bucket)
        .element("Key", &key)
        .element("UploadId", &id);
    w.start("Initiator")
        .element("ID", &upload.owner)
        .element("DisplayName", &upload.owner)
        .end();
    super::owner(&mut w, &upload.owner);
    w.element("StorageClass", "STANDARD")
        .element("PartNumberMarker", &marker.to_string())
        .element(
            "NextPartNumberMarker",
            &parts.last().map_or(marker, |p| p.part_number).to_string(),
        )
        .element("MaxParts", &max.to_string())
        .element("IsTruncated", &truncated.to_string());
    for p in parts {
        w.start("Part")
            .element("PartNumber", &p.part_number.to_string())
            .element("LastModified", &iso8601(p.last_modified))
            .element("ETag", &format!("\"{}\"", p.etag))
            .element("Size", &p.size.to_string());
        for c in &p.checksums {
            w.element(&format!("Checksum{}", c.algorithm), &c.value);
        }
        w.end();
    }
    if let Some(a) = &upload.checksum_algorithm {
        w.element("ChecksumAlgorithm", a);
        w.optional("ChecksumType", upload.checksum_type.as_deref());
    }
    Ok(xml(w.finish()))
}

/// A non-negative whole-number query parameter (`default` when absent): anything else —
/// including a number past an int32, the type S3's model gives these — is InvalidArgument, as
/// S3 answers (and as `max-keys` is).
fn number_param(ctx: &Ctx, name: &str, default: u64) -> Result<u64, S3Error> {
    match ctx.q(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i32>()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                S3Error::invalid_argument(format!(
                    "Provided {name} not an integer or within integer range"
                ))
            }),
    }
}

/// ListMultipartUploads.
pub async fn list_uploads(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let bucket = ctx.bucket().to_string();
    svc.owned_bucket(ctx, &bucket)?;
    super::list::refuse_nul(ctx)?;
    let prefix = ctx.q("prefix").unwrap_or("").to_string();
    let delimiter = ctx
        .q("delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let key_marker = ctx.q("key-marker").unwrap_or("").to_string();
    let id_marker = ctx.q("upload-id-marker").unwrap_or("").to_string();
    let max = number_param(ctx, "max-uploads", 1000)?.min(1000) as usize;
    let url = super::list::url_encoding(ctx)?;
    let enc = |text: &str| super::list::encoded(url, text);
    let page = {
        let store = svc.store.clone();
        let (bucket, prefix, key_marker, id_marker) = (
            bucket.clone(),
            prefix.clone(),
            key_marker.clone(),
            id_marker.clone(),
        );
        let delimiter = delimiter.clone();
        super::off_runtime(move || {
            let after =
                (!key_marker.is_empty()).then_some((key_marker.as_str(), id_marker.as_str()));
            store.uploads(&bucket, &prefix, delimiter.as_deref(), after, max)
        })
        .await?
    };
    let mut w = XmlWriter::new("ListMultipartUploadsResult");
    w.element("Bucket", &bucket)
        .element("KeyMarker", &enc(&key_marker))
        .element("UploadIdMarker", &id_marker);
    // Where the next page starts: after the last upload or common prefix shown.
    let last_upload = page
        .uploads
        .last()
        .map(|u| (u.key.as_str(), u.upload_id.as_str()));
    let last_prefix = page.prefixes.last().map(|p| (p.as_str(), ""));
    if let Some((key, id)) = last_upload.into_iter().chain(last_prefix).max() {
        w.element("NextKeyMarker", &enc(key))
            .element("NextUploadIdMarker", id);
    }
    if let Some(d) = delimiter.as_deref() {
        w.element("Delimiter", &enc(d));
    }
    w.element("Prefix", &enc(&prefix))
        .element("MaxUploads", &max.to_string())
        .element("IsTruncated", &page.truncated.to_string());
    if url {
        w.element("EncodingType", "url");
    }
    for u in &page.uploads {
        w.start("Upload")
            .element("Key", &enc(&u.key))
            .element("UploadId", &u.upload_id);
        w.start("Initiator")
            .element("ID", &u.owner)
            .element("DisplayName", &u.owner)
            .end();
        super::owner(&mut w, &u.owner);
        w.element("StorageClass", "STANDARD")
            .element("Initiated", &iso8601(u.initiated));
        w.optional("ChecksumAlgorithm", u.checksum_algorithm.as_deref());
        w.optional("ChecksumType", u.checksum_type.as_deref());
        w.end();
    }
    for p in &page.prefixes {
        w.start("CommonPrefixes").element("Prefix", &enc(p)).end();
    }
    Ok(xml(w.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_object_crc_of_the_documented_example() {
        let a = vec![b'a'; 5 << 20];
        let b = vec![b'b'; 5 << 20];
        let c = vec![b'c'; 1000];
        let parts: Vec<(String, u64)> = [&a, &b, &c]
            .iter()
            .map(|p| (checksum::compute(Algorithm::Crc32, p), p.len() as u64))
            .collect();
        assert_eq!(
            full_object_crc(Algorithm::Crc32, &parts).unwrap(),
            "AawuMQ=="
        );
        let parts: Vec<(String, u64)> = [&a, &b, &c]
            .iter()
            .map(|p| (checksum::compute(Algorithm::Crc64Nvme, p), p.len() as u64))
            .collect();
        assert_eq!(
            full_object_crc(Algorithm::Crc64Nvme, &parts).unwrap(),
            "pIe8NkwxpY0="
        );
    }

    /// Carrying a CRC over a+b zero bytes is carrying it over a, then b: also for sizes far
    /// beyond what the whole-object test can hold in memory.
    #[test]
    fn carrying_over_zeros_composes() {
        let powers = zero_byte_powers(0x9A6C_9329_AC4B_C9B5, 64);
        for (crc, a, b) in [
            (0x0123_4567_89ab_cdefu64, 5u64 << 20, 7u64),
            (0xdead_beef, (5 << 30) + 3, 1 << 40),
            (1, u64::MAX / 2, u64::MAX / 2),
        ] {
            assert_eq!(
                over_zeros(&powers, crc, a + b),
                over_zeros(&powers, over_zeros(&powers, crc, a), b)
            );
        }
        assert_eq!(over_zeros(&powers, 42, 0), 42);
    }

    /// Many parts of many sizes combine to the CRC of the whole, for every CRC algorithm; a
    /// zero-length part changes nothing.
    #[test]
    fn full_object_crc_of_many_parts_is_the_crc_of_the_whole() {
        let sizes = [7u64, 4096, 0, 4096, 1, 4096, 65_537, 4096];
        let mut whole = Vec::new();
        let pieces: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i as u64 * 31 + j * 7) as u8).collect())
            .collect();
        for p in &pieces {
            whole.extend_from_slice(p);
        }
        for algorithm in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            let parts: Vec<(String, u64)> = pieces
                .iter()
                .map(|p| (checksum::compute(algorithm, p), p.len() as u64))
                .collect();
            assert_eq!(
                full_object_crc(algorithm, &parts).unwrap(),
                checksum::compute(algorithm, &whole),
                "{algorithm:?}"
            );
        }
    }
}
