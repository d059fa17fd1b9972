//! Access control lists, as S3 has them by default since 2023 (Object Ownership "bucket owner
//! enforced", ACLs disabled): a bucket and everything in it belong to the bucket's owner, who
//! alone has access. ACLs can be read (they show the owner's FULL_CONTROL) and set to what they
//! already are; an ACL granting anything to anyone else is refused with
//! AccessControlListNotSupported, never accepted and silently ignored (a client asking for
//! `public-read` must not come to believe that its object is public).

use http::{HeaderMap, StatusCode};

use crate::error::S3Error;
use crate::service::{Ctx, Reply, S3Service, empty, xml};
use crate::xml::{AclGrant, XmlWriter, parse_acl};

/// Canned ACLs that grant nothing beyond the owner's full control.
const OWNER_ONLY: &[&str] = &["private", "bucket-owner-full-control"];

/// The headers that grant a permission to named grantees.
const GRANT_HEADERS: &[&str] = &[
    "x-amz-grant-full-control",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write",
    "x-amz-grant-write-acp",
];

/// The largest AccessControlPolicy document accepted.
const MAX_POLICY: usize = 64 << 10;

fn acl_not_supported() -> S3Error {
    S3Error::new(
        StatusCode::BAD_REQUEST,
        "AccessControlListNotSupported",
        "The bucket does not allow ACLs",
    )
}

/// Whether a grant header's value (`id="..."`, comma-separated) names the owner only.
fn names_owner_only(value: &str, owner: &str) -> bool {
    value.split(',').all(|grantee| {
        let grantee = grantee.trim();
        grantee
            .strip_prefix("id=")
            .map(|id| id.trim_matches('"'))
            .is_some_and(|id| id == owner)
    })
}

/// Checks the ACL headers (x-amz-acl, x-amz-grant-*) of a request that writes an object or
/// sets an ACL: only the owner's full control may be asked for.
pub(crate) fn check_acl_headers(headers: &HeaderMap, owner: &str) -> Result<(), S3Error> {
    for value in headers.get_all("x-amz-acl") {
        let acl = value.to_str().unwrap_or_default().trim();
        if !OWNER_ONLY.contains(&acl) {
            return Err(acl_not_supported());
        }
    }
    for name in GRANT_HEADERS {
        for value in headers.get_all(*name) {
            let value = value.to_str().unwrap_or_default();
            if *name != "x-amz-grant-full-control" || !names_owner_only(value, owner) {
                return Err(acl_not_supported());
            }
        }
    }
    Ok(())
}

/// Checks the ACL headers of CreateBucket: a bucket created with an ACL granting others
/// access gets the error S3 gives for it with ACLs disabled.
pub(crate) fn check_bucket_acl_headers(headers: &HeaderMap, owner: &str) -> Result<(), S3Error> {
    check_acl_headers(headers, owner).map_err(|_| {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidBucketAclWithObjectOwnership",
            "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
        )
    })
}

/// Whether a grant is the owner's full control.
fn is_owners_full_control(grant: &AclGrant, owner: &str) -> bool {
    grant.id.as_deref() == Some(owner)
        && grant.uri.is_none()
        && grant.email.is_none()
        && grant.permission == "FULL_CONTROL"
}

/// Checks that the bucket the request names is the caller's and, when `object`, that the
/// object exists.
pub(crate) fn resource_exists(svc: &S3Service, ctx: &Ctx, object: bool) -> Result<(), S3Error> {
    svc.owned_bucket(ctx, ctx.bucket())?;
    if object {
        super::object::check_version_id(ctx)?;
        svc.store.open_object(ctx.bucket(), ctx.key())?;
    }
    Ok(())
}

/// GetBucketAcl and GetObjectAcl: the owner's full control, the only grant there is.
pub async fn get_acl(svc: &S3Service, ctx: &mut Ctx, object: bool) -> Reply {
    resource_exists(svc, ctx, object)?;
    let owner = ctx.user();
    let mut w = XmlWriter::new("AccessControlPolicy");
    super::owner(&mut w, owner);
    w.start("AccessControlList")
        .start("Grant")
        .start_with(
            "Grantee",
            &[
                ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
                ("xsi:type", "CanonicalUser"),
            ],
        )
        .element("ID", owner)
        .element("DisplayName", owner)
        .end()
        .element("Permission", "FULL_CONTROL");
    Ok(xml(w.finish()))
}

/// PutBucketAcl and PutObjectAcl: accepted when the ACL asked for (canned, in grant headers
/// or as a document) is the owner's full control, which it already is.
pub async fn put_acl(svc: &S3Service, ctx: &mut Ctx, object: bool) -> Reply {
    resource_exists(svc, ctx, object)?;
    let owner = ctx.user().to_string();
    check_acl_headers(&ctx.headers, &owner)?;
    let body = ctx
        .body_reader(MAX_POLICY as u64)?
        .read_all(MAX_POLICY)
        .await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let grants = parse_acl(&body)?;
        if grants.is_empty() || !grants.iter().all(|g| is_owners_full_control(g, &owner)) {
            return Err(acl_not_supported());
        }
    }
    Ok(empty(StatusCode::OK))
}

/// GetBucketOwnershipControls: bucket owner enforced, the one setting there is.
pub async fn ownership_controls(svc: &S3Service, ctx: &mut Ctx) -> Reply {
    svc.owned_bucket(ctx, ctx.bucket())?;
    let mut w = XmlWriter::new("OwnershipControls");
    w.start("Rule")
        .element("ObjectOwnership", "BucketOwnerEnforced");
    Ok(xml(w.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_owners_full_control_passes() {
        let owner = "AKIAOWNER";
        for ok in [
            vec![],
            vec![("x-amz-acl", "private")],
            vec![("x-amz-acl", "bucket-owner-full-control")],
            vec![("x-amz-grant-full-control", "id=\"AKIAOWNER\"")],
            vec![("x-amz-grant-full-control", "id=AKIAOWNER")],
        ] {
            assert!(check_acl_headers(&headers(&ok), owner).is_ok(), "{ok:?}");
        }
        for refused in [
            vec![("x-amz-acl", "public-read")],
            vec![("x-amz-acl", "authenticated-read")],
            vec![("x-amz-acl", "private"), ("x-amz-acl", "public-read-write")],
            vec![(
                "x-amz-grant-read",
                "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"",
            )],
            vec![("x-amz-grant-full-control", "id=\"AKIAOWNER\", id=\"other\"")],
            vec![("x-amz-grant-read", "id=\"AKIAOWNER\"")],
        ] {
            let e = check_acl_headers(&headers(&refused), owner).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "AccessControlListNotSupported"),
                "{refused:?}"
            );
        }
        let e =
            check_bucket_acl_headers(&headers(&[("x-amz-acl", "public-read")]), owner).unwrap_err();
        assert_eq!(e.code, "InvalidBucketAclWithObjectOwnership");
    }

    #[test]
    fn a_policy_document_is_read_grant_by_grant() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Owner><ID>AKIAOWNER</ID></Owner>
  <AccessControlList>
    <Grant>
      <Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">
        <ID>AKIAOWNER</ID>
      </Grantee>
      <Permission>FULL_CONTROL</Permission>
    </Grant>
    <Grant>
      <Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">
        <URI>http://acs.amazonaws.com/groups/global/AllUsers</URI>
      </Grantee>
      <Permission>READ</Permission>
    </Grant>
  </AccessControlList>
</AccessControlPolicy>"#;
        let grants = parse_acl(doc).unwrap();
        assert_eq!(grants.len(), 2);
        assert!(is_owners_full_control(&grants[0], "AKIAOWNER"));
        assert!(!is_owners_full_control(&grants[0], "someone-else"));
        assert!(!is_owners_full_control(&grants[1], "AKIAOWNER"));
        assert_eq!(
            grants[1].uri.as_deref(),
            Some("http://acs.amazonaws.com/groups/global/AllUsers")
        );
        assert!(
            parse_acl(b"<Other/>").is_err(),
            "another document is malformed"
        );
    }
}
