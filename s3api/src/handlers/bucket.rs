//! Bucket operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation,
//! GetBucketVersioning.

use http::StatusCode;

use crate::error::S3Error;
use crate::http_util::check_bucket_name;
use crate::service::{Ctx, Reply, S3Service, empty, response, xml};
use crate::time::iso8601;
use crate::xml::{XmlWriter, parse_location_constraint};

/// Most buckets one ListBuckets page may be asked for.
const MAX_BUCKETS: usize = 10_000;

/// ListBuckets: the caller's buckets only, in name order, filtered by `prefix` and
/// `bucket-region`, in pages of `max-buckets` continued by `continuation-token`.
pub async fn list_buckets(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    super::list::refuse_nul(ctx)?;
    let max = match ctx.q("max-buckets") {
        None => MAX_BUCKETS,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_BUCKETS).contains(n))
            .ok_or_else(|| {
                S3Error::invalid_argument(format!(
                    "max-buckets must be a number from 1 to {MAX_BUCKETS}"
                ))
            })?,
    };
    let after = match ctx.q("continuation-token") {
        None => None,
        Some(token) => Some(super::continuation::redeem(ctx.user(), token)?),
    };
    let prefix = ctx.q("prefix").unwrap_or_default();
    let region_matches = ctx
        .q("bucket-region")
        .is_none_or(|region| region == svc.config.region);
    let mut buckets: Vec<_> = svc
        .store
        .buckets()?
        .into_iter()
        .filter(|b| b.owner == ctx.user() && region_matches && b.name.starts_with(prefix))
        .filter(|b| after.as_ref().is_none_or(|after| b.name > *after))
        .collect();
    buckets.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = buckets.len() > max;
    buckets.truncate(max);
    let mut w = XmlWriter::new("ListAllMyBucketsResult");
    w.start("Buckets");
    for b in &buckets {
        w.start("Bucket")
            .element("Name", &b.name)
            .element("CreationDate", &iso8601(b.created))
            .element("BucketRegion", &svc.config.region)
            .end();
    }
    w.end();
    super::owner(&mut w, ctx.user());
    if truncated && let Some(last) = buckets.last() {
        w.element(
            "ContinuationToken",
            &super::continuation::issue(ctx.user(), &last.name),
        );
    }
    if ctx.has("prefix") {
        w.element("Prefix", prefix);
    }
    Ok(xml(w.finish()))
}

/// CreateBucket.
pub async fn create_bucket(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let bucket = ctx.bucket().to_string();
    check_bucket_name(&bucket)?;
    super::acl::check_bucket_acl_headers(&ctx.headers, ctx.user())?;
    if ctx
        .header("x-amz-bucket-object-lock-enabled")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Err(S3Error::not_implemented("Object Lock"));
    }
    check_object_ownership(ctx.header("x-amz-object-ownership"))?;
    let body = ctx.body_reader(64 << 10)?.read_all(64 << 10).await?;
    if let Some(location) = parse_location_constraint(&body)?
        && location != svc.config.region
    {
        // S3's regional endpoints answer a constraint naming another region so; the client
        // (aws-cli's --region, an SDK's region) is pointed at the wrong place.
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "IllegalLocationConstraintException",
            format!(
                "The {location} location constraint is incompatible for the region specific \
                 endpoint this request was sent to: this endpoint serves {}.",
                svc.config.region
            ),
        ));
    }
    svc.store.create_bucket(&bucket, ctx.user()).await?;
    Ok(response(
        StatusCode::OK,
        vec![
            ("location", format!("/{bucket}")),
            ("content-length", "0".into()),
        ],
        axum::body::Body::empty(),
    ))
}

/// The `x-amz-object-ownership` a CreateBucket asks for: bucket owner enforced (ACLs off) is
/// the one setting there is, and an ownership that would honour ACLs is refused rather than
/// ignored.
fn check_object_ownership(asked: Option<&str>) -> Result<(), S3Error> {
    match asked.map(str::trim) {
        None | Some("BucketOwnerEnforced") => Ok(()),
        Some("ObjectWriter" | "BucketOwnerPreferred") => Err(S3Error::not_implemented(
            "Object ownership other than BucketOwnerEnforced",
        )),
        Some(other) => Err(S3Error::invalid_argument(format!(
            "Invalid x-amz-object-ownership header: {other}"
        ))),
    }
}

/// DeleteBucket.
pub async fn delete_bucket(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let bucket = ctx.bucket().to_string();
    svc.owned_bucket(ctx, &bucket)?;
    svc.store.delete_bucket(&bucket, ctx.user()).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// HeadBucket.
pub async fn head_bucket(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    svc.owned_bucket(ctx, ctx.bucket())?;
    Ok(response(
        StatusCode::OK,
        vec![
            ("x-amz-bucket-region", svc.config.region.clone()),
            ("content-length", "0".into()),
        ],
        axum::body::Body::empty(),
    ))
}

/// GetBucketLocation: empty for us-east-1, as S3 answers.
pub async fn location(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    svc.owned_bucket(ctx, ctx.bucket())?;
    let region = &svc.config.region;
    let body = if region == "us-east-1" {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"{}\"/>",
            crate::xml::NS
        )
    } else {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"{}\">{region}</LocationConstraint>",
            crate::xml::NS
        )
    };
    Ok(xml(body))
}

/// GetBucketVersioning: buckets are unversioned (no Status).
pub async fn versioning(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    svc.owned_bucket(ctx, ctx.bucket())?;
    Ok(xml(XmlWriter::new("VersioningConfiguration").finish()))
}
