//! Listings: ListObjects (v1), ListObjectsV2 and ListObjectVersions (every object is its only
//! version, `null`), with prefixes, delimiters, paging and `encoding-type=url`.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::continuation;
use crate::error::S3Error;
use crate::service::{Ctx, Reply, S3Service, xml};
use crate::store::ListPage;
use crate::time::iso8601;
use crate::xml::XmlWriter;

/// Characters left as they are by `encoding-type=url` (and in URLs of objects).
pub(crate) const URL_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

struct Params {
    prefix: String,
    delimiter: Option<String>,
    max: usize,
    url: bool,
}

fn params(ctx: &Ctx) -> Result<Params, S3Error> {
    refuse_nul(ctx)?;
    let max = match ctx.q("max-keys") {
        // MaxKeys is an int32 in S3's model: more is out of range, not 1000.
        Some(v) => v.parse::<i32>().map_err(|_| {
            S3Error::invalid_argument("Provided max-keys not an integer or within integer range")
        })?,
        None => 1000,
    };
    if max < 0 {
        return Err(S3Error::invalid_argument("max-keys must be non-negative"));
    }
    let url = url_encoding(ctx)?;
    Ok(Params {
        prefix: ctx.q("prefix").unwrap_or("").to_string(),
        delimiter: ctx
            .q("delimiter")
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        max: (max as usize).min(1000),
        url,
    })
}

/// Refuses a listing whose prefix, delimiter or marker holds NUL: no key holds one, and the
/// listing would echo it in XML, which cannot carry it (clients fail to read the answer).
pub(crate) fn refuse_nul(ctx: &Ctx) -> Result<(), S3Error> {
    const ECHOED: [&str; 6] = [
        "prefix",
        "delimiter",
        "marker",
        "start-after",
        "key-marker",
        "upload-id-marker",
    ];
    match ECHOED
        .iter()
        .find(|name| ctx.q(name).is_some_and(|v| v.contains('\0')))
    {
        Some(name) => Err(S3Error::invalid_argument(format!(
            "{name} contains a NUL character, which no key holds"
        ))),
        None => Ok(()),
    }
}

/// Whether the request asks for names URL-encoded (`encoding-type=url`); any other encoding
/// is InvalidArgument.
pub(crate) fn url_encoding(ctx: &Ctx) -> Result<bool, S3Error> {
    match ctx.q("encoding-type") {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(S3Error::invalid_argument(
            "Invalid Encoding Method specified in Request",
        )),
    }
}

/// `text` URL-encoded if `url`, as it is otherwise.
pub(crate) fn encoded(url: bool, text: &str) -> String {
    if url {
        utf8_percent_encode(text, URL_SAFE).to_string()
    } else {
        text.to_string()
    }
}

fn enc(p: &Params, text: &str) -> String {
    encoded(p.url, text)
}

async fn page(
    svc: &S3Service,
    ctx: &mut Ctx,
    p: &Params,
    start_after: &str,
) -> Result<ListPage, S3Error> {
    svc.owned_bucket(ctx, ctx.bucket())?;
    if p.max == 0 {
        return Ok(ListPage::default());
    }
    let store = svc.store.clone();
    let (bucket, prefix, start_after, delimiter, max) = (
        ctx.bucket().to_string(),
        p.prefix.clone(),
        start_after.to_string(),
        p.delimiter.clone(),
        p.max,
    );
    super::off_runtime(move || {
        store.list(&bucket, &prefix, &start_after, delimiter.as_deref(), max)
    })
    .await
}

fn contents(w: &mut XmlWriter, p: &Params, page: &ListPage, owner: bool) {
    for o in &page.objects {
        w.start("Contents")
            .element("Key", &enc(p, &o.key))
            .element("LastModified", &iso8601(o.last_modified))
            .element("ETag", &format!("\"{}\"", o.etag));
        super::checksum_fields(w, o);
        w.element("Size", &o.size.to_string());
        if owner {
            super::owner(w, &o.owner);
        }
        w.element("StorageClass", "STANDARD").end();
    }
    for prefix in &page.prefixes {
        w.start("CommonPrefixes")
            .element("Prefix", &enc(p, prefix))
            .end();
    }
}

/// ListObjectsV2.
pub async fn list_v2(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let p = params(ctx)?;
    let token = ctx.q("continuation-token").map(str::to_string);
    let start_after = match token.as_deref() {
        // An empty token (a client's paging loop that starts with one) is no token.
        Some("") | None => ctx.q("start-after").unwrap_or("").to_string(),
        Some(t) => continuation::redeem(ctx.bucket(), t)?,
    };
    let page = page(svc, ctx, &p, &start_after).await?;
    let mut w = XmlWriter::new("ListBucketResult");
    w.element("Name", ctx.bucket())
        .element("Prefix", &enc(&p, &p.prefix));
    if let Some(t) = &token {
        w.element("ContinuationToken", t);
    }
    if page.truncated
        && let Some(last) = &page.last
    {
        w.element(
            "NextContinuationToken",
            &continuation::issue(ctx.bucket(), last),
        );
    }
    w.element(
        "KeyCount",
        &(page.objects.len() + page.prefixes.len()).to_string(),
    )
    .element("MaxKeys", &p.max.to_string());
    if let Some(d) = &p.delimiter {
        w.element("Delimiter", &enc(&p, d));
    }
    if p.url {
        w.element("EncodingType", "url");
    }
    w.element("IsTruncated", &page.truncated.to_string());
    if let Some(s) = ctx.q("start-after") {
        w.element("StartAfter", &enc(&p, s));
    }
    contents(&mut w, &p, &page, ctx.q("fetch-owner") == Some("true"));
    Ok(xml(w.finish()))
}

/// ListObjects (v1).
pub async fn list_v1(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let p = params(ctx)?;
    let marker = ctx.q("marker").unwrap_or("").to_string();
    let page = page(svc, ctx, &p, &marker).await?;
    let mut w = XmlWriter::new("ListBucketResult");
    w.element("Name", ctx.bucket())
        .element("Prefix", &enc(&p, &p.prefix))
        .element("Marker", &enc(&p, &marker));
    // As in S3, only with a delimiter: without one, the next page starts after the last key.
    if page.truncated
        && p.delimiter.is_some()
        && let Some(last) = &page.last
    {
        w.element("NextMarker", &enc(&p, last));
    }
    w.element("MaxKeys", &p.max.to_string());
    if let Some(d) = &p.delimiter {
        w.element("Delimiter", &enc(&p, d));
    }
    if p.url {
        w.element("EncodingType", "url");
    }
    w.element("IsTruncated", &page.truncated.to_string());
    contents(&mut w, &p, &page, true);
    Ok(xml(w.finish()))
}

/// ListObjectVersions for an unversioned bucket: every object, version `null`.
pub async fn list_versions(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let p = params(ctx)?;
    let key_marker = ctx.q("key-marker").unwrap_or("").to_string();
    // Every object has one version, `null`: after it is after the key.
    let version_marker = ctx.q("version-id-marker").filter(|v| !v.is_empty());
    if version_marker.is_some() && key_marker.is_empty() {
        return Err(S3Error::invalid_argument(
            "A version-id marker cannot be specified without a key marker.",
        ));
    }
    if version_marker.is_some_and(|v| v != "null") {
        return Err(S3Error::invalid_argument("Invalid version id specified"));
    }
    let page = page(svc, ctx, &p, &key_marker).await?;
    let mut w = XmlWriter::new("ListVersionsResult");
    w.element("Name", ctx.bucket())
        .element("Prefix", &enc(&p, &p.prefix))
        .element("KeyMarker", &enc(&p, &key_marker))
        .element("VersionIdMarker", ctx.q("version-id-marker").unwrap_or(""));
    if page.truncated
        && let Some(last) = &page.last
    {
        w.element("NextKeyMarker", &enc(&p, last))
            .element("NextVersionIdMarker", "null");
    }
    w.element("MaxKeys", &p.max.to_string());
    if let Some(d) = &p.delimiter {
        w.element("Delimiter", &enc(&p, d));
    }
    if p.url {
        w.element("EncodingType", "url");
    }
    w.element("IsTruncated", &page.truncated.to_string());
    for o in &page.objects {
        w.start("Version")
            .element("Key", &enc(&p, &o.key))
            .element("VersionId", "null")
            .element("IsLatest", "true")
            .element("LastModified", &iso8601(o.last_modified))
            .element("ETag", &format!("\"{}\"", o.etag));
        super::checksum_fields(&mut w, o);
        w.element("Size", &o.size.to_string());
        super::owner(&mut w, &o.owner);
        w.element("StorageClass", "STANDARD").end();
    }
    for prefix in &page.prefixes {
        w.start("CommonPrefixes")
            .element("Prefix", &enc(&p, prefix))
            .end();
    }
    Ok(xml(w.finish()))
}
