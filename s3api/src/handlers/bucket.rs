//! Bucket operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation,
//! GetBucketVersioning.

use http::StatusCode;

use crate::error::S3Error;
use crate::http_util::check_bucket_name;
use crate::service::{Ctx, Reply, S3Service, empty, response, xml};
use crate::time::iso8601;
use crate::xml::{XmlWriter, parse_location_constraint};

/// ListBuckets: the caller's buckets only.
pub async fn list_buckets(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let mut w = XmlWriter::new("ListAllMyBucketsResult");
    w.start("Buckets");
    for b in svc
        .store
        .buckets()?
        .into_iter()
        .filter(|b| b.owner == ctx.user())
    {
        w.start("Bucket")
            .element("Name", &b.name)
            .element("CreationDate", &iso8601(b.created))
            .element("BucketRegion", &svc.config.region)
            .end();
    }
    w.end();
    super::owner(&mut w, ctx.user());
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
    let body = ctx.body_reader(64 << 10)?.read_all(64 << 10).await?;
    if let Some(location) = parse_location_constraint(&body)?
        && location != svc.config.region
    {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidLocationConstraint",
            format!(
                "The specified location-constraint is not valid: this endpoint serves {}.",
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

/// DeleteBucket.
pub async fn delete_bucket(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    let bucket = ctx.bucket().to_string();
    svc.owned_bucket(ctx, &bucket)?;
    svc.store.delete_bucket(&bucket).await?;
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
