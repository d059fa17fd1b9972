//! Object operations: PutObject (conditional, with checksums), GetObject and HeadObject
//! (ranges, preconditions, overrides, checksum mode), DeleteObject, DeleteObjects, CopyObject.

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;

use crate::body::{BodyReader, BodySummary};
use crate::checksum;
use crate::error::S3Error;
use crate::http_util::{
    check_key, check_preconditions, object_headers, parse_range, refuse_unsupported_write_headers,
};
use crate::md5_lanes::StreamMd5;
use crate::service::{Ctx, Reply, S3Service, empty, response, xml};
use crate::store::{
    BodyStream, DeleteCondition, ObjectHeaders, ObjectInfo, ObjectWriter, OpenObject,
    StoredChecksum, WriteCondition,
};
use crate::time::http_date;
use crate::xml::{XmlWriter, parse_delete};

/// The write condition of a PutObject or CompleteMultipartUpload.
pub(crate) fn write_condition(ctx: &Ctx) -> Result<WriteCondition, S3Error> {
    let if_match = single_condition(ctx, "if-match")?;
    match (single_condition(ctx, "if-none-match")?, if_match) {
        (Some("*"), None) => Ok(WriteCondition::IfAbsent),
        (Some(_), None) => Err(S3Error::not_implemented(
            "If-None-Match with a value other than * on writes",
        )),
        (Some(_), Some(_)) => Err(S3Error::not_implemented(
            "If-Match together with If-None-Match on writes",
        )),
        // `*` matches any current version (RFC 9110 §13.1.1), as on DeleteObject.
        (None, Some("*")) => Ok(WriteCondition::IfExists),
        (None, Some(etag)) => Ok(WriteCondition::IfMatch(strong_etag(etag))),
        (None, None) => Ok(WriteCondition::None),
    }
}

/// The one value of a write's condition header `name`, trimmed, if sent: a list of ETags
/// (commas, or several lines) is NotImplemented on writes rather than read as one odd ETag.
fn single_condition<'a>(ctx: &'a Ctx, name: &str) -> Result<Option<&'a str>, S3Error> {
    let mut values = ctx.headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let value = first.to_str().map(str::trim).unwrap_or_default();
    if values.next().is_some() || value.contains(',') {
        return Err(S3Error::not_implemented(&format!(
            "{name} with several ETags on writes and deletes"
        )));
    }
    Ok(Some(value))
}

/// The ETag an If-Match value asks for, compared strongly (RFC 9110 §13.1.1): a weak one
/// (`W/"..."`) keeps its prefix, so it matches no object's ETag.
fn strong_etag(value: &str) -> String {
    match value.strip_prefix("W/") {
        Some(_) => value.to_string(),
        None => value.trim_matches('"').to_string(),
    }
}

/// The checksum algorithm the request's x-amz-checksum-algorithm names, if it names one (an
/// unknown one is InvalidRequest): what a copy or a multipart upload is to carry.
pub(crate) fn requested_algorithm(ctx: &Ctx) -> Result<Option<checksum::Algorithm>, S3Error> {
    ctx.header("x-amz-checksum-algorithm")
        .map(|name| {
            checksum::Algorithm::parse(name.trim()).ok_or_else(|| {
                S3Error::invalid_request(format!("Checksum algorithm {name} is not supported"))
            })
        })
        .transpose()
}

/// A body whose length the request does not give (no Content-Length, no chunked transfer
/// encoding) is refused with 411, as S3 does: an empty object or part is not made of a request
/// that says nothing. (An aws-chunked body's decoded length does not frame the HTTP body: with
/// neither header, HTTP/1.1 has it empty.)
pub(crate) fn require_length(ctx: &Ctx) -> Result<(), S3Error> {
    if ctx.header("content-length").is_none() && ctx.header("transfer-encoding").is_none() {
        return Err(S3Error::missing_content_length());
    }
    Ok(())
}

/// Streams the request body into `writer`, verifying it; returns what it was.
pub(crate) async fn receive(
    ctx: &mut Ctx,
    writer: &mut Box<dyn ObjectWriter>,
    max: u64,
) -> Result<BodySummary, S3Error> {
    let mut body = ctx.body_reader(max)?;
    while let Some(chunk) = next_piece(&mut body, writer).await? {
        writer.write(chunk).await?;
    }
    body.summary()
        .ok_or_else(|| S3Error::internal("body ended without a summary"))
}

/// Like [`receive`], and also computes `also`'s checksum when the client sent none of that
/// algorithm (the parts of an upload that declared an algorithm all carry it).
pub(crate) async fn receive_with_checksum(
    ctx: &mut Ctx,
    writer: &mut Box<dyn ObjectWriter>,
    max: u64,
    also: Option<checksum::Algorithm>,
) -> Result<BodySummary, S3Error> {
    let mut hasher = also.map(checksum::Hasher::new);
    let mut body = ctx.body_reader(max)?;
    while let Some(chunk) = next_piece(&mut body, writer).await? {
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
        writer.write(chunk).await?;
    }
    let mut summary = body
        .summary()
        .ok_or_else(|| S3Error::internal("body ended without a summary"))?;
    add_missing(&mut summary.checksums, hasher);
    Ok(summary)
}

/// The next piece of `body`; while the client pauses, `writer` lets go of what it holds for
/// bytes still to come (see [`ObjectWriter::idle`]).
async fn next_piece(
    body: &mut BodyReader,
    writer: &mut Box<dyn ObjectWriter>,
) -> Result<Option<Bytes>, S3Error> {
    if !body.arrives_within(BODY_PAUSE).await? {
        writer.idle().await?;
    }
    body.next().await
}

/// Adds `hasher`'s checksum to `checksums` unless one of its algorithm is there already.
pub(crate) fn add_missing(checksums: &mut Vec<StoredChecksum>, hasher: Option<checksum::Hasher>) {
    if let Some(h) = hasher
        && !checksums
            .iter()
            .any(|c| c.algorithm == h.algorithm().name())
    {
        checksums.push(StoredChecksum {
            algorithm: h.algorithm().name().to_string(),
            value: h.finish(),
        });
    }
}

/// How long a body may pause before its writer lets go of memory held for what is to come.
const BODY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Streams `source` (`len` bytes) into `writer`; returns size, MD5 and, with `hasher`, its
/// checksum. A source that ends before or after `len` bytes is an error: a copy of it would
/// be short, or long, yet carry the source's checksums.
pub(crate) async fn pipe(
    mut source: BodyStream,
    len: u64,
    writer: &mut Box<dyn ObjectWriter>,
    mut hasher: Option<checksum::Hasher>,
) -> Result<(u64, [u8; 16], Option<checksum::Hasher>), S3Error> {
    let mut md5 = StreamMd5::new(Some(len));
    let mut size = 0u64;
    loop {
        let chunk = match tokio::time::timeout(BODY_PAUSE, source.next()).await {
            Ok(Some(chunk)) => chunk?,
            Ok(None) => break,
            Err(_) => {
                // A pause: what is held for the rest of the body is let go while it lasts.
                writer.idle().await?;
                match source.next().await {
                    Some(chunk) => chunk?,
                    None => break,
                }
            }
        };
        md5.update(&chunk);
        md5.caught_up().await;
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
        size += chunk.len() as u64;
        writer.write(chunk).await?;
    }
    if size != len {
        return Err(S3Error::internal(&format!(
            "the source gave {size} of its {len} bytes"
        )));
    }
    let md5 = md5
        .finish()
        .await
        .map_err(|e| S3Error::internal(&e.to_string()))?;
    Ok((size, md5, hasher))
}

fn checksum_headers(
    checksums: &[StoredChecksum],
    checksum_type: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for c in checksums {
        if let Some(a) = checksum::Algorithm::parse(&c.algorithm) {
            out.push((header_name(a), c.value.clone()));
        }
    }
    if !checksums.is_empty() {
        out.push((
            "x-amz-checksum-type",
            checksum_type.unwrap_or("FULL_OBJECT").to_string(),
        ));
    }
    out
}

/// Static header names for checksums (http needs 'static names).
pub(crate) fn header_name(a: checksum::Algorithm) -> &'static str {
    match a {
        checksum::Algorithm::Crc32 => "x-amz-checksum-crc32",
        checksum::Algorithm::Crc32c => "x-amz-checksum-crc32c",
        checksum::Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
        checksum::Algorithm::Sha1 => "x-amz-checksum-sha1",
        checksum::Algorithm::Sha256 => "x-amz-checksum-sha256",
    }
}

/// PutObject.
pub async fn put_object(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    check_key(&key)?;
    svc.owned_bucket(ctx, &bucket)?;
    super::acl::check_acl_headers(&ctx.headers, ctx.user())?;
    refuse_unsupported_write_headers(&ctx.headers)?;
    let headers = object_headers(&ctx.headers)?;
    let condition = write_condition(ctx)?;
    require_length(ctx)?;
    let mut writer = svc.store.put_object(&bucket, &key).await?;
    let summary = receive(ctx, &mut writer, svc.config.max_put_size).await?;
    let info = writer
        .commit_object(
            summary.etag(),
            headers,
            summary.checksums.clone(),
            ctx.user().to_string(),
            condition,
        )
        .await?;
    let mut h = vec![
        ("etag", format!("\"{}\"", info.etag)),
        ("content-length", "0".into()),
    ];
    h.extend(checksum_headers(
        &info.checksums,
        info.checksum_type.as_deref(),
    ));
    Ok(response(StatusCode::OK, h, Body::empty()))
}

/// The headers describing an object (GET and HEAD).
fn object_response_headers(info: &ObjectInfo, ctx: &Ctx) -> Vec<(&'static str, String)> {
    let o: &ObjectHeaders = &info.headers;
    let override_or = |param: &str, stored: Option<&String>| {
        ctx.q(param).map(str::to_string).or_else(|| stored.cloned())
    };
    let mut h = vec![
        ("etag", format!("\"{}\"", info.etag)),
        ("last-modified", http_date(info.last_modified)),
        ("accept-ranges", "bytes".into()),
        (
            "content-type",
            override_or("response-content-type", o.content_type.as_ref())
                .unwrap_or_else(|| "binary/octet-stream".into()),
        ),
    ];
    let optional = [
        (
            "content-encoding",
            override_or("response-content-encoding", o.content_encoding.as_ref()),
        ),
        (
            "content-disposition",
            override_or(
                "response-content-disposition",
                o.content_disposition.as_ref(),
            ),
        ),
        (
            "content-language",
            override_or("response-content-language", o.content_language.as_ref()),
        ),
        (
            "cache-control",
            override_or("response-cache-control", o.cache_control.as_ref()),
        ),
        (
            "expires",
            override_or("response-expires", o.expires.as_ref()),
        ),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            h.push((name, v));
        }
    }
    h
}

/// GetObject and HeadObject.
pub async fn get_object(svc: &S3Service, ctx: &mut Ctx, head: bool) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    svc.owned_bucket(ctx, &bucket)?;
    let response_overrides = ctx.query.iter().any(|(k, _)| k.starts_with("response-"));
    if response_overrides && ctx.auth.access_key.is_empty() {
        return Err(S3Error::invalid_request(
            "Request specific response headers cannot be used for anonymous GET requests.",
        ));
    }
    // An override that cannot be a header value would leave the header out of the answer.
    if let Some((name, _)) = ctx.query.iter().find(|(k, v)| {
        k.starts_with("response-") && http::HeaderValue::from_bytes(v.as_bytes()).is_err()
    }) {
        return Err(
            S3Error::invalid_argument(format!("{name} is not a valid header value"))
                .with("ArgumentName", name.clone()),
        );
    }
    check_version_id(ctx)?;
    let object = svc.store.open_object(&bucket, &key)?;
    let info = &object.info;
    match check_preconditions(&ctx.headers, "", info, |_| S3Error::not_modified()) {
        Ok(()) => {}
        Err(e) if e.status == StatusCode::NOT_MODIFIED => {
            // A 304 carries the validators and caching headers a 200 would (RFC 9110).
            let kept = ["etag", "last-modified", "cache-control", "expires"];
            let mut h = object_response_headers(info, ctx);
            h.retain(|(name, _)| kept.contains(name));
            return Ok(response(StatusCode::NOT_MODIFIED, h, Body::empty()));
        }
        Err(e) => return Err(e),
    }
    let size = info.size;
    if ctx.has("partNumber") && ctx.header("range").is_some() {
        return Err(S3Error::invalid_request(
            "Cannot specify both Range header and partNumber query parameter",
        ));
    }
    let mut range = parse_range(ctx.header("range"), size)?;
    let mut part_count = None;
    if let Some(part) = ctx.q("partNumber") {
        let n: usize = part
            .parse()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                S3Error::invalid_argument(
                    "Part number must be an integer between 1 and 10000, inclusive",
                )
            })?;
        let sizes = if info.part_sizes.is_empty() {
            vec![size]
        } else {
            info.part_sizes.clone()
        };
        if n > sizes.len() {
            return Err(S3Error::invalid_part_number());
        }
        let start: u64 = sizes[..n - 1].iter().sum();
        range = match sizes[n - 1] {
            // An empty object's one part is the whole (empty) object.
            0 if size == 0 => None,
            // No Content-Range can name an empty part of a larger object.
            0 => return Err(S3Error::invalid_range(size, &format!("partNumber={n}"))),
            len => Some(start..start + len),
        };
        // Only multipart objects have a parts count.
        part_count = (!info.part_sizes.is_empty()).then_some(sizes.len());
    }
    let mut h = object_response_headers(info, ctx);
    if let Some(n) = part_count {
        h.push(("x-amz-mp-parts-count", n.to_string()));
    }
    // Full-object checksums only on responses holding the whole object (a client would
    // check a range against them and fail): also part 1 of an object written in one part.
    let whole = match &range {
        None => true,
        Some(r) => part_count.is_none() && r.start == 0 && r.end == size,
    };
    if ctx
        .header("x-amz-checksum-mode")
        .is_some_and(|v| v.eq_ignore_ascii_case("enabled"))
        && whole
    {
        h.extend(checksum_headers(
            &info.checksums,
            info.checksum_type.as_deref(),
        ));
    }
    let (status, body_range) = match range {
        Some(r) => {
            h.push((
                "content-range",
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ));
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..size),
    };
    h.push((
        "content-length",
        (body_range.end - body_range.start).to_string(),
    ));
    let body = if head || body_range.is_empty() {
        Body::empty()
    } else {
        Body::from_stream(first_chunk_read(object.reader.read(body_range)?).await?)
    };
    let mut resp = response(status, h, body);
    for (name, value) in &info.headers.user_meta {
        let header = http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes());
        let value = crate::http_util::mail_safe_metadata(value);
        if let (Ok(n), Ok(v)) = (header, http::HeaderValue::from_str(&value)) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

/// `stream` with its first chunk read already: an error there (the drives busy, or every copy
/// out of reach) is answered with its own status, a 503 SDKs back off and retry on, rather
/// than after a 200 as a body cut short.
async fn first_chunk_read(mut stream: BodyStream) -> Result<BodyStream, S3Error> {
    match stream.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(futures::stream::once(async move { Ok(first) })
            .chain(stream)
            .boxed()),
        None => Ok(stream),
    }
}

/// DeleteObject: 204 whether or not it existed, unless If-Match asks for it (then 404
/// NoSuchKey if it does not exist, 412 if its ETag differs).
pub async fn delete_object(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    let checked = svc.owned_bucket(ctx, &bucket)?;
    check_version_id(ctx)?;
    for unsupported in ["x-amz-if-match-last-modified-time", "x-amz-if-match-size"] {
        if ctx.header(unsupported).is_some() {
            return Err(S3Error::not_implemented(&format!(
                "Conditional deletes by the {unsupported} header"
            )));
        }
    }
    let condition = delete_condition(single_condition(ctx, "if-match")?);
    svc.store.delete_object(&checked, &key, &condition).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// The condition an If-Match value (or a DeleteObjects ETag) puts on a deletion.
fn delete_condition(if_match: Option<&str>) -> DeleteCondition {
    match if_match.map(str::trim) {
        None => DeleteCondition::None,
        Some("*") => DeleteCondition::IfExists,
        Some(etag) => DeleteCondition::IfMatch(strong_etag(etag)),
    }
}

/// How many deletes of one DeleteObjects run at once.
const DELETES_AT_ONCE: usize = 32;

/// DeleteObjects.
pub async fn delete_objects(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let bucket = ctx.bucket().to_string();
    let checked = svc.owned_bucket(ctx, &bucket)?;
    // A digest the body is checked against: Content-MD5, a checksum header, or a trailer
    // naming a checksum (an x-amz-trailer of no names brings none). The SDK's
    // x-amz-sdk-checksum-algorithm alone only names an algorithm and carries no value.
    let is_checksum = |name: &str| crate::checksum::Algorithm::from_header(name).is_some();
    let has_digest = ctx.header("content-md5").is_some()
        || ctx.headers.keys().any(|k| is_checksum(k.as_str()))
        || ctx.header("x-amz-trailer").is_some_and(|v| {
            v.split(',')
                .any(|t| is_checksum(&t.trim().to_ascii_lowercase()))
        });
    if !has_digest {
        return Err(S3Error::invalid_request(
            "Missing required header for this request: Content-MD5",
        ));
    }
    // A thousand keys of 1024 bytes, each character possibly an entity of several (`&amp;`),
    // with version ids and ETags: S3 takes any such document.
    const MAX_DELETE_DOCUMENT: usize = 8 << 20;
    let body = ctx
        .body_reader(MAX_DELETE_DOCUMENT as u64)?
        .read_all(MAX_DELETE_DOCUMENT)
        .await?;
    svc.still_owned_bucket(ctx, &checked)?;
    let (targets, quiet) = parse_delete(&body)?;
    // The deletes run together (in order of the answer), so that their commits share flushes:
    // one after another, a thousand keys would wait for a thousand flushes.
    let store = &svc.store;
    let checked = &checked;
    let outcomes: Vec<_> = futures::stream::iter(targets)
        .map(|t| async move {
            if let Some(v) = t.version_id.as_deref().filter(|v| *v != "null") {
                return (t.key, None, Err(S3Error::no_such_version(v)));
            }
            let condition = delete_condition(t.etag.as_deref());
            let outcome = store.delete_object(checked, &t.key, &condition).await;
            (t.key, t.version_id, outcome)
        })
        .buffered(DELETES_AT_ONCE)
        .collect()
        .await;
    let mut w = XmlWriter::new("DeleteResult");
    for (key, version_id, outcome) in outcomes {
        match outcome {
            Ok(()) => {
                if !quiet {
                    // The version asked for (`null`) is echoed, as S3 does.
                    w.start("Deleted").element("Key", &key);
                    if let Some(v) = &version_id {
                        w.element("VersionId", v);
                    }
                    w.end();
                }
            }
            Err(e) => {
                w.start("Error").element("Key", &key);
                if let Some((_, v)) = e.extra.iter().find(|(k, _)| *k == "VersionId") {
                    w.element("VersionId", v);
                }
                w.element("Code", e.code)
                    .element("Message", &e.message)
                    .end();
            }
        }
    }
    Ok(xml(w.finish()))
}

/// Refuses a `versionId` other than `null` (buckets are unversioned): a GET must not answer
/// for a version it does not have, nor a DELETE remove the current object in its place.
pub(crate) fn check_version_id(ctx: &Ctx) -> Result<(), S3Error> {
    match ctx.q("versionId") {
        Some("") => Err(S3Error::invalid_argument(
            "Version id cannot be the empty string",
        )),
        Some(version) if version != "null" => Err(S3Error::no_such_version(version)),
        _ => Ok(()),
    }
}

/// Opens the object x-amz-copy-source names (in a bucket of the caller's) and checks the
/// x-amz-copy-source-if-* conditions on it; returns its bucket, key and the open object.
pub(crate) fn open_copy_source(
    svc: &S3Service,
    ctx: &Ctx,
) -> Result<(String, String, OpenObject), S3Error> {
    let (bucket, key) = copy_source(ctx)?;
    svc.owned_bucket_expecting(ctx, &bucket, "x-amz-source-expected-bucket-owner")?;
    let source = svc.store.open_object(&bucket, &key)?;
    check_preconditions(
        &ctx.headers,
        "x-amz-copy-source-",
        &source.info,
        S3Error::precondition_failed,
    )?;
    Ok((bucket, key, source))
}

/// The bucket and key named by x-amz-copy-source.
pub(crate) fn copy_source(ctx: &Ctx) -> Result<(String, String), S3Error> {
    let raw = ctx.header("x-amz-copy-source").unwrap_or_default();
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    if let Some(version) = query.split('&').find_map(|p| p.strip_prefix("versionId="))
        && version != "null"
    {
        return Err(S3Error::no_such_version(version));
    }
    // Bytes that are no UTF-8 name no key: refused, never read with replacement characters
    // as another key.
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| S3Error::invalid_argument("x-amz-copy-source names a key that is not UTF-8"))?
        .into_owned();
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
    match decoded.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_string(), k.to_string())),
        _ => Err(S3Error::invalid_argument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )),
    }
}

/// CopyObject: streams the source into a new object (metadata copied or replaced).
pub async fn copy_object(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let (bucket, key) = (ctx.bucket().to_string(), ctx.key().to_string());
    check_key(&key)?;
    svc.owned_bucket(ctx, &bucket)?;
    super::acl::check_acl_headers(&ctx.headers, ctx.user())?;
    refuse_unsupported_write_headers(&ctx.headers)?;
    let (src_bucket, src_key, source) = open_copy_source(svc, ctx)?;
    let replace = match ctx.header("x-amz-metadata-directive").unwrap_or("COPY") {
        "COPY" => false,
        "REPLACE" => true,
        _ => return Err(S3Error::invalid_argument("Unknown metadata directive.")),
    };
    // No object has tags (setting them is NotImplemented), so COPY and REPLACE without tags
    // give the same; another value is refused as S3 refuses it, not taken for either.
    if !matches!(
        ctx.header("x-amz-tagging-directive"),
        None | Some("COPY" | "REPLACE")
    ) {
        return Err(S3Error::invalid_argument("Unknown tagging directive."));
    }
    // S3 takes a copy onto itself that sets something: metadata (REPLACE) or the storage class
    // (`aws s3 cp` of an object onto itself with --storage-class).
    let sets_class = ctx.header("x-amz-storage-class").is_some();
    if !replace && !sets_class && src_bucket == bucket && src_key == key {
        return Err(S3Error::invalid_request(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    if source.info.size > svc.config.max_put_size {
        return Err(S3Error::invalid_request(format!(
            "The specified copy source is larger than the maximum allowable size for a copy source: {}",
            svc.config.max_put_size
        )));
    }
    let headers = if replace {
        object_headers(&ctx.headers)?
    } else {
        source.info.headers.clone()
    };
    let condition = write_condition(ctx)?;
    let composite = source.info.checksum_type.as_deref() == Some("COMPOSITE");
    // The checksum the copy is to carry, if the request names one (S3 keeps one per object);
    // naming none keeps the source's algorithm, as S3 does: a composite checksum (of the
    // source's parts, which the copy does not have) is computed again over the whole copy.
    let algorithm = requested_algorithm(ctx)?.or_else(|| {
        source
            .info
            .checksums
            .first()
            .filter(|_| composite)
            .and_then(|c| checksum::Algorithm::parse(&c.algorithm))
    });
    // Full-object checksums still hold for the same bytes; composite ones describe parts.
    let mut checksums = if composite {
        Vec::new()
    } else {
        source.info.checksums.clone()
    };
    if let Some(a) = algorithm {
        checksums.retain(|c| c.algorithm == a.name());
    }
    // Computed on the way when asked for and not already known.
    let hasher = algorithm
        .filter(|_| checksums.is_empty())
        .map(checksum::Hasher::new);
    let mut writer = svc.store.put_object(&bucket, &key).await?;
    let body = source.reader.read(0..source.info.size)?;
    let user = ctx.user().to_string();
    let copy = async move {
        let (_, md5, hasher) = pipe(body, source.info.size, &mut writer, hasher).await?;
        add_missing(&mut checksums, hasher);
        let info = writer
            .commit_object(checksum::hex(&md5), headers, checksums, user, condition)
            .await?;
        Ok(super::long_copy::result_document(
            "CopyObjectResult",
            info.last_modified,
            &info.etag,
            &info.checksums,
            Some(info.checksum_type.as_deref().unwrap_or("FULL_OBJECT")),
        ))
    };
    super::long_copy::copy_reply(svc, ctx, copy).await
}
