//! Bucket and object settings Zonestore does not let anyone make (policies, CORS, lifecycle,
//! tags, encryption, websites, object lock...): reading one answers what S3 answers where it
//! was never set, since that is the truth here, and deleting one succeeds, as there is nothing
//! to delete. Setting one is refused with NotImplemented (see the service's list of unsupported
//! sub-resources), never accepted and ignored. Tools that inspect a bucket (Terraform, SDK
//! helpers, consoles) read all of these and stop at an error they do not expect.

use http::{Method, StatusCode};

use crate::error::S3Error;
use crate::service::{Ctx, Reply, S3Service, empty, xml};
use crate::xml::XmlWriter;

/// What reading a bucket setting that was never made gives.
enum Unset {
    /// An error S3 returns for it (404 with its own code).
    Missing(&'static str, &'static str),
    /// An empty (or default) document, with its root element.
    Document(&'static str, Option<(&'static str, &'static str)>),
}

/// Bucket sub-resources, what a GET of them answers, and whether DELETE applies to them.
const BUCKET: &[(&str, Unset, bool)] = &[
    (
        "tagging",
        Unset::Missing("NoSuchTagSet", "The TagSet does not exist"),
        true,
    ),
    (
        "policy",
        Unset::Missing("NoSuchBucketPolicy", "The bucket policy does not exist"),
        true,
    ),
    (
        "policyStatus",
        Unset::Missing("NoSuchBucketPolicy", "The bucket policy does not exist"),
        false,
    ),
    (
        "cors",
        Unset::Missing(
            "NoSuchCORSConfiguration",
            "The CORS configuration does not exist",
        ),
        true,
    ),
    (
        "lifecycle",
        Unset::Missing(
            "NoSuchLifecycleConfiguration",
            "The lifecycle configuration does not exist",
        ),
        true,
    ),
    (
        "encryption",
        Unset::Missing(
            "ServerSideEncryptionConfigurationNotFoundError",
            "The server side encryption configuration was not found",
        ),
        true,
    ),
    (
        "website",
        Unset::Missing(
            "NoSuchWebsiteConfiguration",
            "The specified bucket does not have a website configuration",
        ),
        true,
    ),
    (
        "publicAccessBlock",
        Unset::Missing(
            "NoSuchPublicAccessBlockConfiguration",
            "The public access block configuration was not found",
        ),
        true,
    ),
    (
        "object-lock",
        Unset::Missing(
            "ObjectLockConfigurationNotFoundError",
            "Object Lock configuration does not exist for this bucket",
        ),
        false,
    ),
    (
        "replication",
        Unset::Missing(
            "ReplicationConfigurationNotFoundError",
            "The replication configuration was not found",
        ),
        true,
    ),
    (
        "accelerate",
        Unset::Document("AccelerateConfiguration", None),
        false,
    ),
    (
        "requestPayment",
        Unset::Document(
            "RequestPaymentConfiguration",
            Some(("Payer", "BucketOwner")),
        ),
        false,
    ),
    (
        "logging",
        Unset::Document("BucketLoggingStatus", None),
        false,
    ),
    (
        "notification",
        Unset::Document("NotificationConfiguration", None),
        false,
    ),
];

/// Answers a request on a setting that is never made, if the request is one (the operation's
/// name and its reply); `None` otherwise.
pub fn answer(svc: &S3Service, ctx: &mut Ctx) -> Option<(&'static str, Reply)> {
    ctx.bucket.as_ref()?;
    if ctx.key.is_some() {
        return object(svc, ctx);
    }
    let (_, unset, deletable) = BUCKET.iter().find(|(name, _, _)| ctx.has(name))?;
    match ctx.method {
        Method::GET => Some((
            "GetBucketSetting",
            svc.owned_bucket(ctx, ctx.bucket())
                .and_then(|_| match unset {
                    Unset::Missing(code, message) => {
                        Err(S3Error::new(StatusCode::NOT_FOUND, code, *message)
                            .with("BucketName", ctx.bucket()))
                    }
                    Unset::Document(root, element) => {
                        let mut w = XmlWriter::new(root);
                        if let Some((name, text)) = element {
                            w.element(name, text);
                        }
                        Ok(xml(w.finish()))
                    }
                }),
        )),
        Method::DELETE if *deletable => Some((
            "DeleteBucketSetting",
            svc.owned_bucket(ctx, ctx.bucket())
                .map(|_| empty(StatusCode::NO_CONTENT)),
        )),
        _ => None,
    }
}

/// Object tags (there are none: tags are refused on writes) and object lock settings (no
/// bucket has object lock).
fn object(svc: &S3Service, ctx: &mut Ctx) -> Option<(&'static str, Reply)> {
    let exists = |svc: &S3Service, ctx: &Ctx| super::acl::resource_exists(svc, ctx, true);
    if ctx.has("tagging") {
        return match ctx.method {
            Method::GET => Some((
                "GetObjectTagging",
                exists(svc, ctx).map(|_| {
                    let mut w = XmlWriter::new("Tagging");
                    w.start("TagSet").end();
                    xml(w.finish())
                }),
            )),
            Method::DELETE => Some((
                "DeleteObjectTagging",
                exists(svc, ctx).map(|_| empty(StatusCode::NO_CONTENT)),
            )),
            _ => None,
        };
    }
    if (ctx.has("retention") || ctx.has("legal-hold")) && ctx.method == Method::GET {
        return Some((
            "GetObjectLockSetting",
            exists(svc, ctx).and_then(|_| {
                Err(S3Error::invalid_request(
                    "Bucket is missing Object Lock Configuration",
                ))
            }),
        ));
    }
    None
}
