//! S3 errors: every error a client can receive, with its code, HTTP status and message as S3
//! words them, rendered as S3's XML error body (`<Error><Code>…`). The one place where error
//! codes meet HTTP statuses.

use http::StatusCode;

use crate::xml::escape;

/// An S3 error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct S3Error {
    /// HTTP status.
    pub status: StatusCode,
    /// S3 error code, e.g. `NoSuchKey`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Extra elements (name, value) added to the XML body.
    pub extra: Vec<(&'static str, String)>,
}

impl S3Error {
    /// An error with a code, status and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        S3Error {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    /// Adds an element to the XML body.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// The XML body for `resource` and `request_id`.
    pub fn to_xml(&self, resource: &str, request_id: &str) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
        s.push_str(self.code);
        s.push_str("</Code><Message>");
        s.push_str(&escape(&self.message));
        s.push_str("</Message>");
        for (name, value) in &self.extra {
            s.push_str(&format!("<{name}>{}</{name}>", escape(value)));
        }
        s.push_str(&format!(
            "<Resource>{}</Resource><RequestId>{}</RequestId></Error>",
            escape(resource),
            escape(request_id)
        ));
        s
    }

    // ---- authentication ----

    /// 403 AccessDenied.
    pub fn access_denied(message: &str) -> Self {
        S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }
    /// 403 InvalidAccessKeyId.
    pub fn invalid_access_key(key: &str) -> Self {
        S3Error::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
        .with("AWSAccessKeyId", key)
    }
    /// 403 SignatureDoesNotMatch.
    pub fn signature_mismatch() -> Self {
        S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        )
    }
    /// 403 RequestTimeTooSkewed.
    pub fn time_skewed(request_time: &str, server_time: &str) -> Self {
        S3Error::new(
            StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        )
        .with("RequestTime", request_time)
        .with("ServerTime", server_time)
        .with("MaxAllowedSkewMilliseconds", "900000")
    }
    /// 400 AuthorizationHeaderMalformed.
    pub fn auth_header_malformed(detail: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "AuthorizationHeaderMalformed",
            format!("The authorization header is malformed; {detail}"),
        )
    }
    /// 400 AuthorizationQueryParametersError.
    pub fn auth_query_error(detail: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            detail,
        )
    }

    // ---- buckets and objects ----

    /// 404 NoSuchBucket.
    pub fn no_such_bucket(bucket: &str) -> Self {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        )
        .with("BucketName", bucket)
    }
    /// 404 NoSuchKey.
    pub fn no_such_key(key: &str) -> Self {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        )
        .with("Key", key)
    }
    /// A version other than `null` (buckets are unversioned, so only that one exists): 404
    /// NoSuchVersion for one shaped as S3 makes them (32 URL-safe characters), else 400
    /// InvalidArgument, as S3 answers an id that cannot be one.
    pub fn no_such_version(version: &str) -> Self {
        if version.is_empty() {
            return S3Error::invalid_argument("Version id cannot be the empty string")
                .with("ArgumentName", "versionId");
        }
        let well_formed = version.len() == 32
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !well_formed {
            return S3Error::invalid_argument("Invalid version id specified")
                .with("ArgumentName", "versionId")
                .with("ArgumentValue", version);
        }
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchVersion",
            "The specified version does not exist.",
        )
        .with("VersionId", version)
    }
    /// 404 NoSuchUpload.
    pub fn no_such_upload(upload_id: &str) -> Self {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        )
        .with("UploadId", upload_id)
    }
    /// 409 BucketAlreadyExists.
    pub fn bucket_exists(bucket: &str) -> Self {
        S3Error::new(
            StatusCode::CONFLICT,
            "BucketAlreadyExists",
            "The requested bucket name is not available. The bucket namespace is shared by all users of the system. Please select a different name and try again.",
        )
        .with("BucketName", bucket)
    }
    /// 400 TooManyBuckets.
    pub fn too_many_buckets(limit: usize) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "TooManyBuckets",
            format!("You have attempted to create more buckets than allowed ({limit})."),
        )
    }
    /// 409 BucketAlreadyOwnedByYou.
    pub fn bucket_owned(bucket: &str) -> Self {
        S3Error::new(
            StatusCode::CONFLICT,
            "BucketAlreadyOwnedByYou",
            "Your previous request to create the named bucket succeeded and you already own it.",
        )
        .with("BucketName", bucket)
    }
    /// 409 BucketNotEmpty.
    pub fn bucket_not_empty(bucket: &str) -> Self {
        S3Error::new(
            StatusCode::CONFLICT,
            "BucketNotEmpty",
            "The bucket you tried to delete is not empty",
        )
        .with("BucketName", bucket)
    }
    /// 400 InvalidBucketName.
    pub fn invalid_bucket_name(bucket: &str, why: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidBucketName",
            format!("The specified bucket is not valid: {why}"),
        )
        .with("BucketName", bucket)
    }
    /// 400 InvalidArgument.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }
    /// 400 InvalidStorageClass: a storage class other than the one this store has.
    pub fn invalid_storage_class() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidStorageClass",
            "The storage class you specified is not valid (this store has STANDARD only)",
        )
    }
    /// 400 InvalidRequest.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }
    /// 416 InvalidPartNumber: a GET of a part the object does not have.
    pub fn invalid_part_number() -> Self {
        S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidPartNumber",
            "The requested partnumber is not satisfiable",
        )
    }
    /// 416 InvalidRange.
    pub fn invalid_range(size: u64, requested: &str) -> Self {
        S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The requested range is not satisfiable",
        )
        .with("RangeRequested", requested)
        .with("ActualObjectSize", size.to_string())
    }
    /// 412 PreconditionFailed.
    pub fn precondition_failed(condition: &str) -> Self {
        S3Error::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
        .with("Condition", condition)
    }
    /// 304 Not Modified (no body).
    pub fn not_modified() -> Self {
        S3Error::new(StatusCode::NOT_MODIFIED, "NotModified", "Not Modified")
    }
    /// 400 EntityTooSmall.
    pub fn entity_too_small(part: u32, size: u64) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "EntityTooSmall",
            "Your proposed upload is smaller than the minimum allowed object size.",
        )
        .with("ProposedSize", size.to_string())
        .with("MinSizeAllowed", "5242880")
        .with("PartNumber", part.to_string())
    }
    /// 400 EntityTooLarge.
    pub fn entity_too_large(size: u64, max: u64) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed object size.",
        )
        .with("ProposedSize", size.to_string())
        .with("MaxSizeAllowed", max.to_string())
    }
    /// 400 InvalidPart.
    pub fn invalid_part(detail: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidPart",
            format!(
                "One or more of the specified parts could not be found.  The part may not have been uploaded, or the specified entity tag may not match the part's entity tag. ({detail})"
            ),
        )
    }
    /// 400 InvalidPartOrder.
    pub fn invalid_part_order() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidPartOrder",
            "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        )
    }
    /// 400 BadDigest.
    pub fn bad_digest(what: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "BadDigest",
            format!("The {what} you specified did not match the calculated checksum."),
        )
    }
    /// 400 InvalidDigest.
    pub fn invalid_digest() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidDigest",
            "The Content-MD5 you specified is not valid.",
        )
    }
    /// 400 XAmzContentSHA256Mismatch.
    pub fn sha256_mismatch(client: &str, computed: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
        .with("ClientComputedContentSHA256", client)
        .with("S3ComputedContentSHA256", computed)
    }
    /// 403 InvalidChunkSizeError: a signed aws-chunked body has a chunk but its last under
    /// 8 KiB (`chunk` is the number of the chunk that followed it, `size` its size), as S3
    /// answers.
    pub fn invalid_chunk_size(chunk: u64, size: usize) -> Self {
        S3Error::new(
            StatusCode::FORBIDDEN,
            "InvalidChunkSizeError",
            "Only the last chunk is allowed to have a size less than 8192 bytes",
        )
        .with("Chunk", chunk.to_string())
        .with("BadChunkSize", size.to_string())
    }
    /// 400 InvalidURI: the path or query does not decode to UTF-8 text (two different keys
    /// must never be read as one).
    pub fn invalid_uri() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidURI",
            "Couldn't parse the specified URI.",
        )
    }
    /// 400 MalformedXML.
    pub fn malformed_xml() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema.",
        )
    }
    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str) -> Self {
        S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )
        .with("Method", method)
    }
    /// 501 NotImplemented.
    pub fn not_implemented(what: &str) -> Self {
        S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("{what} is not implemented by Zonestore."),
        )
    }
    /// 411 MissingContentLength.
    pub fn missing_content_length() -> Self {
        S3Error::new(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            "You must provide the Content-Length HTTP header.",
        )
    }
    /// 400 IncompleteBody.
    pub fn incomplete_body(detail: &str) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            format!("You did not provide the number of bytes specified. ({detail})"),
        )
    }
    /// 400 RequestTimeout: the request body stalled.
    pub fn request_timeout() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "RequestTimeout",
            "Your socket connection to the server was not read from or written to within the timeout period.",
        )
    }
    /// 400 KeyTooLongError.
    pub fn key_too_long(size: usize) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "KeyTooLongError",
            "Your key is too long.",
        )
        .with("Size", size.to_string())
        .with("MaxSizeAllowed", "1024")
    }
    /// 400 RequestHeaderSectionTooLarge: the object headers to store are too large.
    pub fn header_section_too_large(size: usize) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "RequestHeaderSectionTooLarge",
            "Your request header section exceeds the maximum allowed size.",
        )
        .with("Size", size.to_string())
        .with("MaxSizeAllowed", "8192")
    }
    /// 400 MetadataTooLarge.
    pub fn metadata_too_large(size: usize) -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size.",
        )
        .with("Size", size.to_string())
        .with("MaxSizeAllowed", "2048")
    }
    /// 507 InsufficientStorage: the store is full (not retried by clients). `detail` (which
    /// drives, which paths) goes to the log, not to the client.
    pub fn insufficient_storage(detail: &str) -> Self {
        tracing::warn!("answering InsufficientStorage: {detail}");
        S3Error::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "InsufficientStorage",
            "The store has no space left for this write; delete objects to make room.",
        )
    }
    /// 503 ServiceUnavailable: try again later. `detail` (drive names, target addresses) goes
    /// to the log, not to the client.
    pub fn unavailable(detail: &str) -> Self {
        tracing::warn!("answering ServiceUnavailable: {detail}");
        S3Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unable to handle request; please try again.",
        )
    }
    /// 400 InvalidToken: a session token, which no credentials here have.
    pub fn invalid_token() -> Self {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidToken",
            "The provided token is malformed or otherwise invalid.",
        )
    }
    /// 503 SlowDown: too many requests at once for a shared resource; retry with backoff.
    pub fn slow_down(detail: &str) -> Self {
        tracing::debug!("answering SlowDown: {detail}");
        S3Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        )
    }
    /// 500 InternalError.
    pub fn internal(detail: &str) -> Self {
        tracing::error!("internal error: {detail}");
        S3Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_body_has_code_message_resource_and_request_id() {
        let e = S3Error::no_such_key("a&b");
        let xml = e.to_xml("/bkt/a&b", "REQ1");
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(xml.contains("<Code>NoSuchKey</Code>"));
        assert!(xml.contains("<Key>a&amp;b</Key>"));
        assert!(xml.contains("<Resource>/bkt/a&amp;b</Resource><RequestId>REQ1</RequestId>"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }

    /// As S3 answers: a version id shaped like one of its own is a version that does not
    /// exist; anything else cannot be a version id at all.
    #[test]
    fn a_version_id_that_cannot_be_one_is_an_invalid_argument() {
        let missing = S3Error::no_such_version("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH");
        assert_eq!(
            (missing.status, missing.code),
            (StatusCode::NOT_FOUND, "NoSuchVersion")
        );
        for bad in [
            "",
            "abc",
            "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrH",
            &"a".repeat(33),
        ] {
            let e = S3Error::no_such_version(bad);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "InvalidArgument"),
                "{bad:?}"
            );
        }
    }
}
