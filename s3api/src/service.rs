//! The S3 service: one handler for every request. It works out the bucket and key (path-style
//! or virtual-hosted-style), authenticates, picks the operation from method, path and query,
//! runs it and shapes the response — `x-amz-request-id` on all of them, S3 error XML on
//! failures, no body on HEAD and 304.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

use crate::auth::{self, Authenticated, Credentials, RequestParts};
use crate::body::BodyReader;
use crate::error::S3Error;
use crate::handlers;
use crate::query;
use crate::store::ObjectStore;

/// What is known of a request once its response is ready.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    /// S3 operation name, e.g. `PutObject`.
    pub operation: &'static str,
    /// HTTP status.
    pub status: u16,
    /// Time to the response head.
    pub elapsed: Duration,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes (from Content-Length).
    pub bytes_out: u64,
    /// How the body was protected (`Payload::name`); `none` when authentication failed.
    pub payload: &'static str,
}

/// Status recorded for a request dropped before it was answered (as nginx logs a client that
/// closed its connection first).
pub const STATUS_UNANSWERED: u16 = 499;

/// Records a request dropped before it was answered (see [`STATUS_UNANSWERED`]), unless its
/// `observer` is taken away first (it was answered, and recorded as such).
struct Unanswered<'a> {
    observer: Option<&'a dyn Observer>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(observer) = self.observer {
            observer.observe(RequestRecord {
                operation: "Unknown",
                status: STATUS_UNANSWERED,
                elapsed: self.started.elapsed(),
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: 0,
                payload: "none",
            });
        }
    }
}

/// Notified of every request (for metrics).
pub trait Observer: Send + Sync {
    /// One request finished.
    fn observe(&self, request: RequestRecord);
}

/// How the service is set up.
#[derive(Clone)]
pub struct S3Config {
    /// Region reported to clients.
    pub region: String,
    /// Users.
    pub credentials: Credentials,
    /// Base domains for virtual-hosted-style requests (`bucket.<domain>`).
    pub domains: Vec<String>,
    /// Largest single PUT (S3: 5 GiB).
    pub max_put_size: u64,
    /// Request observer.
    pub observer: Option<Arc<dyn Observer>>,
    /// Whether clients reach the service over HTTPS (for the URLs it returns).
    pub https: bool,
    /// When a long copy's reply begins and how it is kept alive (see
    /// [`crate::handlers::long_copy`]).
    pub copy_keep_alive: crate::handlers::long_copy::KeepAlive,
    /// Whether requests signed with Signature Version 2 are taken.
    pub sigv2: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("region", &self.region)
            .field("domains", &self.domains)
            .finish()
    }
}

impl S3Config {
    /// Defaults: us-east-1, virtual hosts under `localhost`, 5 GiB PUTs.
    pub fn new(credentials: Credentials) -> Self {
        S3Config {
            region: "us-east-1".into(),
            credentials,
            domains: vec!["localhost".into()],
            max_put_size: 5 << 30,
            observer: None,
            https: false,
            copy_keep_alive: Default::default(),
            sigv2: true,
        }
    }
}

/// The service: share it between connections.
#[derive(Clone)]
pub struct S3Service {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) config: Arc<S3Config>,
    ids: Arc<AtomicU64>,
}

/// One request being served.
pub struct Ctx {
    /// Method.
    pub method: Method,
    /// Headers.
    pub headers: HeaderMap,
    /// Bucket, if any.
    pub bucket: Option<String>,
    /// Key, if any.
    pub key: Option<String>,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The authenticated user.
    pub auth: Authenticated,
    /// Request id.
    pub request_id: String,
    /// The body, until taken.
    pub body: Option<Body>,
    /// Host header.
    pub host: String,
    /// Whether the bucket was named by the host (virtual-hosted style).
    pub virtual_hosted: bool,
    /// Bytes of body read (for metrics).
    pub bytes_in: Arc<AtomicU64>,
}

impl Ctx {
    /// A query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a query parameter is present.
    pub fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The user's access key.
    pub fn user(&self) -> &str {
        &self.auth.access_key
    }

    /// The bucket (the router only sends bucket operations here).
    pub fn bucket(&self) -> &str {
        self.bucket.as_deref().unwrap_or_default()
    }

    /// The key.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or_default()
    }

    /// The URL of the object the request names, as the client addressed it.
    pub fn object_url(&self, https: bool) -> String {
        let key =
            percent_encoding::utf8_percent_encode(self.key(), crate::handlers::list::URL_SAFE);
        let scheme = if https { "https" } else { "http" };
        if self.virtual_hosted {
            format!("{scheme}://{}/{key}", self.host)
        } else {
            format!("{scheme}://{}/{}/{key}", self.host, self.bucket())
        }
    }

    /// A reader for the body, verified as the request's headers say.
    pub fn body_reader(&mut self, max: u64) -> Result<BodyReader, S3Error> {
        // Lent out and put back: no copy of the headers on every upload.
        let headers = std::mem::take(&mut self.headers);
        let reader = self.reader_with(&headers, max);
        self.headers = headers;
        reader
    }

    /// A reader for a request document whose `x-amz-checksum-*` headers are not about the
    /// body (CompleteMultipartUpload: they are the whole object's checksum); verified
    /// otherwise as the request's headers say.
    pub fn document_reader(&mut self, max: u64) -> Result<BodyReader, S3Error> {
        let mut headers = self.headers.clone();
        for algorithm in crate::checksum::Algorithm::ALL {
            headers.remove(algorithm.header());
        }
        self.reader_with(&headers, max)
    }

    fn reader_with(&mut self, headers: &HeaderMap, max: u64) -> Result<BodyReader, S3Error> {
        let body = self.body.take().unwrap_or_else(Body::empty);
        let counter = self.bytes_in.clone();
        let raw = body
            .into_data_stream()
            .map(move |r| {
                r.inspect(|b| {
                    counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                })
                .map_err(|e| S3Error::incomplete_body(&format!("reading the request body: {e}")))
            })
            .boxed();
        BodyReader::new(raw, headers, &self.auth, max)
    }
}

/// The answer of an operation.
pub type Reply = Result<Response<Body>, S3Error>;

/// Query parameters naming S3 features Zonestore does not implement: refused with
/// NotImplemented rather than answered wrongly.
const UNSUPPORTED: &[&str] = &[
    "accelerate",
    "analytics",
    "cors",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "legal-hold",
    "select",
    "tagging",
    "torrent",
    "website",
    "attributes",
    // Newer operations that would otherwise reach the plain one of their method (a
    // DeleteBucketMetadataTableConfiguration deleting the bucket, a RenameObject writing an
    // empty object, a CreateSession listing the bucket).
    "metadataTable",
    "metadataConfiguration",
    "renameObject",
    "session",
];

/// Query parameters of a presigned URL that authenticate it (they are not request headers).
const PRESIGN_AUTH_PARAMETERS: &[&str] = &[
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// The first query parameter of `query` that is not one of `known` (the operation's own),
/// authentication (presigned URLs of either signature version) or the operation hint some
/// SDKs add (`x-id`): a subresource.
fn unknown_subresource<'q>(query: &'q [(String, String)], known: &[&str]) -> Option<&'q str> {
    const AUTH_V2: [&str; 3] = ["AWSAccessKeyId", "Signature", "Expires"];
    query.iter().map(|(k, _)| k.as_str()).find(|k| {
        !(k.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("x-amz-"))
            || AUTH_V2.contains(k)
            || known.contains(k)
            || *k == "x-id")
    })
}

/// The `x-amz-*` settings a presigned URL carries in its query (SDK presigners move headers
/// such as `x-amz-meta-*`, `x-amz-acl`, `x-amz-checksum-*` or `x-amz-tagging` there, and
/// they are signed with it), taken as the request's headers where it has no such header: so
/// they are applied, verified or refused like headers, never silently ignored. One that no
/// header could carry (a control character in its value, say) is an InvalidArgument.
fn headers_from_presigned_query(
    headers: &mut HeaderMap,
    query: &[(String, String)],
) -> Result<(), S3Error> {
    for (name, value) in query {
        let name = name.to_ascii_lowercase();
        if !name.starts_with("x-amz-") || PRESIGN_AUTH_PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        // (UTF-8 in a value, as a header may carry it: only control characters are refused.)
        let (Ok(header), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            return Err(S3Error::invalid_argument(format!(
                "the presigned URL's {name} setting is not a valid header"
            ))
            .with("ArgumentName", &name));
        };
        if !headers.contains_key(&header) {
            headers.insert(header, value);
        }
    }
    Ok(())
}

/// A path segment's text: `%XX` decoded, a `+` kept (it is a space only in a query).
fn decode_path(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

impl S3Service {
    /// A service over `store`.
    pub fn new(store: Arc<dyn ObjectStore>, config: S3Config) -> Self {
        S3Service {
            store,
            config: Arc::new(config),
            ids: Arc::new(AtomicU64::new(1)),
        }
    }

    /// An axum router sending every request to the service.
    pub fn router(self) -> axum::Router {
        axum::Router::new().fallback(move |req: Request<Body>| {
            let service = self.clone();
            async move { service.handle(req).await }
        })
    }

    fn request_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        format!("{:016X}", t.rotate_left(20) ^ n)
    }

    /// Splits the host and path into bucket and key; also whether the bucket came from the host
    /// (virtual-hosted style).
    fn address(&self, host: &str, raw_path: &str) -> (Option<String>, Option<String>, bool) {
        address_in(&self.config.domains, host, raw_path)
    }

    /// Serves one request.
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let request_id = self.request_id();
        let (parts, body) = req.into_parts();
        let raw_path = parts.uri.path().to_string();
        let raw_query = parts.uri.query().map(str::to_string);
        let host = parts
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let (bucket, key, virtual_hosted) = self.address(&host, &raw_path);
        let resource = format!(
            "/{}{}",
            bucket.as_deref().unwrap_or(""),
            key.as_deref().map(|k| format!("/{k}")).unwrap_or_default()
        );
        let is_head = parts.method == Method::HEAD;
        let method = parts.method.clone();
        // SigV2 signs /bucket/key even for virtual-hosted requests.
        let v2_resource = match &bucket {
            Some(b) if virtual_hosted => format!("/{b}{raw_path}"),
            _ => raw_path.clone(),
        };
        let request = RequestParts {
            method: &parts.method,
            raw_path: &raw_path,
            raw_query: raw_query.as_deref(),
            headers: &parts.headers,
            v2_resource: &v2_resource,
        };
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut operation = "Unknown";
        let mut payload = "none";
        // Recorded if the request is dropped before it is answered (its client gone, or the
        // server's drain over): the slowest requests must not vanish from the metrics.
        let mut unanswered = Unanswered {
            observer: self.config.observer.as_deref(),
            started,
            bytes_in: bytes_in.clone(),
        };
        // Keys and query values are UTF-8 text: bytes that are not (a `%FF`) are refused, not
        // replaced, so that no two names are read as one.
        let uri_is_text = percent_decode_str(&raw_path).decode_utf8().is_ok()
            && raw_query.as_deref().is_none_or(|q| {
                q.split(['&', '='])
                    .all(|part| String::from_utf8(query::decode_bytes(part)).is_ok())
            });
        let authenticated = if !uri_is_text {
            Err(S3Error::invalid_uri())
        } else if !self.config.sigv2 && auth::is_sigv2(&request) {
            Err(S3Error::access_denied(
                "Signature Version 2 is turned off on this server: sign with Signature Version 4",
            ))
        } else {
            auth::authenticate(&request, &self.config.credentials, SystemTime::now())
        };
        let result = match authenticated {
            Err(e) => Err(e),
            Ok(auth) => {
                payload = auth.payload.name();
                let query = raw_query
                    .as_deref()
                    .unwrap_or("")
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (query::decode(k), query::decode(v))
                    })
                    .collect::<Vec<_>>();
                let mut headers = parts.headers.clone();
                let presigned_headers = if auth.presigned {
                    headers_from_presigned_query(&mut headers, &query)
                } else {
                    Ok(())
                };
                let mut ctx = Ctx {
                    method: parts.method.clone(),
                    headers,
                    bucket,
                    key,
                    query,
                    auth,
                    request_id: request_id.clone(),
                    body: Some(body),
                    host,
                    virtual_hosted,
                    bytes_in: bytes_in.clone(),
                };
                match presigned_headers
                    .and_then(|()| crate::http_util::check_header_bytes(&ctx.headers))
                {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let (op, reply) = self.dispatch(&mut ctx).await;
                        operation = op;
                        reply
                    }
                }
            }
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                let no_body = is_head || e.status == StatusCode::NOT_MODIFIED;
                let body = if no_body {
                    Body::empty()
                } else {
                    Body::from(e.to_xml(&resource, &request_id))
                };
                let mut r = Response::new(body);
                *r.status_mut() = e.status;
                if !no_body {
                    r.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/xml"));
                }
                // A 503 says when to try again (SDKs back off by it where they read it).
                if e.status == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert("retry-after", HeaderValue::from_static("1"));
                }
                if e.code == "InvalidRange"
                    && let Some((_, size)) = e.extra.iter().find(|(k, _)| *k == "ActualObjectSize")
                    && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
                {
                    r.headers_mut().insert("content-range", v);
                }
                tracing::debug!(request_id, %method, resource, code = e.code, "request failed: {}", e.message);
                r
            }
        };
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert("x-amz-request-id", v.clone());
            headers.insert("x-amz-id-2", v);
        }
        headers.insert("server", HeaderValue::from_static("Zonestore"));
        let status = response.status().as_u16();
        // A HEAD (or a 304) carries the length of a body it does not send.
        let sends_body = !is_head && status != 204 && status != 304;
        let bytes_out = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .filter(|_| sends_body)
            .unwrap_or(0);
        tracing::debug!(request_id, %method, resource, operation, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
        unanswered.observer = None;
        if let Some(observer) = &self.config.observer {
            observer.observe(RequestRecord {
                operation,
                status,
                elapsed: started.elapsed(),
                bytes_in: bytes_in.load(Ordering::Relaxed),
                bytes_out,
                payload,
            });
        }
        response
    }

    async fn dispatch(&self, ctx: &mut Ctx) -> (&'static str, Reply) {
        let bucket_only = ctx.bucket.is_some() && ctx.key.is_none();
        if bucket_only && ctx.method == Method::GET && ctx.has("ownershipControls") {
            return (
                "GetBucketOwnershipControls",
                handlers::acl::ownership_controls(self, ctx).await,
            );
        }
        if let Some(answer) = handlers::unconfigured::answer(self, ctx) {
            return answer;
        }
        if let Some(feature) = UNSUPPORTED.iter().find(|f| ctx.has(f)) {
            return (
                "Unsupported",
                Err(S3Error::not_implemented(&format!(
                    "The ?{feature} subresource"
                ))),
            );
        }
        let m = ctx.method.clone();
        let has_key = ctx.key.is_some();
        let has_bucket = ctx.bucket.is_some();
        macro_rules! op {
            ($name:literal, $call:expr) => {
                ($name, $call.await)
            };
        }
        if !has_bucket {
            return match m {
                Method::GET => op!("ListBuckets", handlers::bucket::list_buckets(self, ctx)),
                _ => ("Unknown", Err(S3Error::method_not_allowed(m.as_str()))),
            };
        }
        if ctx.has("acl") {
            return match (m, has_key) {
                (Method::GET, false) => {
                    op!("GetBucketAcl", handlers::acl::get_acl(self, ctx, false))
                }
                (Method::PUT, false) => {
                    op!("PutBucketAcl", handlers::acl::put_acl(self, ctx, false))
                }
                (Method::GET, true) => op!("GetObjectAcl", handlers::acl::get_acl(self, ctx, true)),
                (Method::PUT, true) => op!("PutObjectAcl", handlers::acl::put_acl(self, ctx, true)),
                (m, _) => ("Unknown", Err(S3Error::method_not_allowed(m.as_str()))),
            };
        }
        // A PUT or DELETE naming a subresource this server does not know asks for some other
        // operation than CreateBucket, DeleteBucket, PutObject or DeleteObject (deleting the
        // bucket for a `DELETE ?someNewConfiguration` would be the worst wrong answer).
        let known: &[&str] = match (has_key, &m) {
            (false, &Method::PUT) => &["versioning"],
            (true, &Method::PUT) => &["uploadId", "partNumber"],
            (true, &Method::DELETE) => &["uploadId", "versionId"],
            _ => &[],
        };
        if matches!(m, Method::PUT | Method::DELETE)
            && let Some(name) = unknown_subresource(&ctx.query, known)
        {
            return (
                "Unsupported",
                Err(S3Error::not_implemented(&format!(
                    "The ?{name} subresource"
                ))),
            );
        }
        if !has_key {
            return match m {
                Method::PUT if ctx.has("versioning") => (
                    "PutBucketVersioning",
                    Err(S3Error::not_implemented("Bucket versioning")),
                ),
                Method::PUT => op!("CreateBucket", handlers::bucket::create_bucket(self, ctx)),
                Method::DELETE => op!("DeleteBucket", handlers::bucket::delete_bucket(self, ctx)),
                Method::HEAD => op!("HeadBucket", handlers::bucket::head_bucket(self, ctx)),
                Method::GET if ctx.has("location") => {
                    op!("GetBucketLocation", handlers::bucket::location(self, ctx))
                }
                Method::GET if ctx.has("versioning") => op!(
                    "GetBucketVersioning",
                    handlers::bucket::versioning(self, ctx)
                ),
                Method::GET if ctx.has("uploads") => op!(
                    "ListMultipartUploads",
                    handlers::multipart::list_uploads(self, ctx)
                ),
                Method::GET if ctx.has("versions") => op!(
                    "ListObjectVersions",
                    handlers::list::list_versions(self, ctx)
                ),
                Method::GET if ctx.q("list-type") == Some("2") => {
                    op!("ListObjectsV2", handlers::list::list_v2(self, ctx))
                }
                Method::GET => op!("ListObjects", handlers::list::list_v1(self, ctx)),
                Method::POST if ctx.has("delete") => {
                    op!("DeleteObjects", handlers::object::delete_objects(self, ctx))
                }
                // A browser's form upload (PostObject, with a policy document): an S3 operation
                // this server does not have, rather than a method S3 does not allow.
                Method::POST => (
                    "PostObject",
                    Err(S3Error::not_implemented(
                        "Browser-based uploads with HTML forms (POST Object)",
                    )),
                ),
                _ => ("Unknown", Err(S3Error::method_not_allowed(m.as_str()))),
            };
        }
        let copy = ctx.headers.contains_key("x-amz-copy-source");
        let part = ctx.has("uploadId");
        if m == Method::PUT && !part && ctx.has("partNumber") {
            // An UploadPart or UploadPartCopy that lost its upload id (a presigned URL cut
            // short, a proxy dropping the parameter): taken for a PutObject or CopyObject, it
            // would replace the whole object with one part.
            return (
                if copy { "UploadPartCopy" } else { "UploadPart" },
                Err(S3Error::invalid_argument(
                    "This operation does not accept partNumber without uploadId",
                )),
            );
        }
        match m {
            Method::PUT if part && copy => op!(
                "UploadPartCopy",
                handlers::multipart::upload_part_copy(self, ctx)
            ),
            Method::PUT if part => op!("UploadPart", handlers::multipart::upload_part(self, ctx)),
            Method::PUT if copy => op!("CopyObject", handlers::object::copy_object(self, ctx)),
            Method::PUT => op!("PutObject", handlers::object::put_object(self, ctx)),
            Method::GET if part => op!("ListParts", handlers::multipart::list_parts(self, ctx)),
            Method::GET => op!("GetObject", handlers::object::get_object(self, ctx, false)),
            Method::HEAD => op!("HeadObject", handlers::object::get_object(self, ctx, true)),
            Method::DELETE if part => op!(
                "AbortMultipartUpload",
                handlers::multipart::abort(self, ctx)
            ),
            Method::DELETE => op!("DeleteObject", handlers::object::delete_object(self, ctx)),
            Method::POST if ctx.has("uploads") => op!(
                "CreateMultipartUpload",
                handlers::multipart::create(self, ctx)
            ),
            Method::POST if part => op!(
                "CompleteMultipartUpload",
                handlers::multipart::complete(self, ctx)
            ),
            _ => ("Unknown", Err(S3Error::method_not_allowed(m.as_str()))),
        }
    }

    /// Checks that the user owns the bucket (AccessDenied otherwise; NoSuchBucket if absent).
    pub fn owned_bucket(
        &self,
        ctx: &Ctx,
        bucket: &str,
    ) -> Result<crate::store::BucketInfo, S3Error> {
        self.owned_bucket_expecting(ctx, bucket, "x-amz-expected-bucket-owner")
    }

    /// [`S3Service::owned_bucket`] again, after a request's body was read (which a client can
    /// make last as long as it likes): the bucket must still be the one `checked` before, not
    /// one deleted meanwhile and created again by another user, whose objects the request
    /// would otherwise reach.
    pub fn still_owned_bucket(
        &self,
        ctx: &Ctx,
        checked: &crate::store::BucketInfo,
    ) -> Result<(), S3Error> {
        let now = self.owned_bucket(ctx, &checked.name)?;
        if now.created != checked.created {
            return Err(S3Error::access_denied("Access Denied"));
        }
        Ok(())
    }

    /// [`S3Service::owned_bucket`], where the request's `expected_owner_header` (if sent)
    /// names the owner the client expects: another owner is AccessDenied, as in S3 (clients
    /// send it so as never to write into a bucket of someone else's by mistake).
    pub fn owned_bucket_expecting(
        &self,
        ctx: &Ctx,
        bucket: &str,
        expected_owner_header: &str,
    ) -> Result<crate::store::BucketInfo, S3Error> {
        let info = self.store.bucket(bucket)?;
        let unexpected = ctx
            .header(expected_owner_header)
            .is_some_and(|expected| expected.trim() != info.owner);
        if info.owner != ctx.user() || unexpected {
            return Err(S3Error::access_denied("Access Denied"));
        }
        Ok(info)
    }
}

/// A response with status, headers and body.
pub fn response(
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Body,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (name, value) in headers {
        // Bytes as they came (a UTF-8 value a client stored goes back as it was sent).
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
            r.headers_mut().append(name, v);
        }
    }
    r
}

/// A 200 XML response.
pub fn xml(body: String) -> Response<Body> {
    let len = body.len();
    response(
        StatusCode::OK,
        vec![
            ("content-type", "application/xml".into()),
            ("content-length", len.to_string()),
        ],
        Body::from(body),
    )
}

/// An empty response (204s carry no Content-Length).
pub fn empty(status: StatusCode) -> Response<Body> {
    let headers = if status == StatusCode::NO_CONTENT {
        vec![]
    } else {
        vec![("content-length", "0".into())]
    };
    response(status, headers, Body::empty())
}

/// Splits a request's host and path into bucket and key, with `domains` the base domains of
/// virtual-hosted-style names; also whether the bucket came from the host.
fn address_in(
    domains: &[String],
    host: &str,
    raw_path: &str,
) -> (Option<String>, Option<String>, bool) {
    let host = host.to_ascii_lowercase();

    // The port goes first, then a fully qualified name's trailing dot
    // (`photos.localhost.:9000` is bucket `photos`).
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
        None => host.rsplit_once(':').map_or(host.clone(), |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h.to_string()
            } else {
                host.clone()
            }
        }),
    };
    let host = host.trim_end_matches('.');
    let path = raw_path.strip_prefix('/').unwrap_or(raw_path);
    // A host that is one of the domains is path-style; else the longest domain it ends in
    // names the bucket (with `example.com` and `s3.example.com` both configured,
    // `s3.example.com` is not bucket `s3`).
    let virtual_host = (!domains.iter().any(|d| d == host))
        .then(|| {
            domains
                .iter()
                .filter_map(|domain| host.strip_suffix(&format!(".{domain}")))
                .filter(|bucket| !bucket.is_empty())
                .min_by_key(|bucket| bucket.len())
        })
        .flatten();
    if let Some(bucket) = virtual_host {
        let key = (!path.is_empty()).then(|| decode_path(path));
        return (Some(bucket.to_string()), key, true);
    }
    if path.is_empty() {
        return (None, None, false);
    }
    match path.split_once('/') {
        Some((bucket, rest)) if !rest.is_empty() => {
            (Some(decode_path(bucket)), Some(decode_path(rest)), false)
        }
        Some((bucket, _)) => (Some(decode_path(bucket)), None, false),
        None => (Some(decode_path(path)), None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::{address_in, unknown_subresource};

    #[test]
    fn subresources_are_told_from_authentication_and_operation_hints() {
        let q = |pairs: &[&str]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|k| (k.to_string(), String::new()))
                .collect()
        };
        let auth = q(&[
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "x-amz-security-token",
            "AWSAccessKeyId",
            "Signature",
            "Expires",
            "x-id",
        ]);
        assert_eq!(unknown_subresource(&auth, &[]), None);
        let mut asked = auth.clone();
        asked.push(("metadataTable".into(), String::new()));
        assert_eq!(unknown_subresource(&asked, &[]), Some("metadataTable"));
        assert_eq!(unknown_subresource(&q(&["x-am"]), &[]), Some("x-am"));
        let part = q(&["uploadId", "partNumber"]);
        assert_eq!(
            unknown_subresource(&part, &["uploadId", "partNumber"]),
            None
        );
        assert_eq!(
            unknown_subresource(&part, &["uploadId"]),
            Some("partNumber")
        );
    }

    fn split(host: &str, path: &str) -> (Option<String>, Option<String>, bool) {
        address_in(&["localhost".to_string()], host, path)
    }

    #[test]
    fn buckets_come_from_virtual_host_names_with_a_port_or_a_trailing_dot() {
        let photos = |key: &str| (Some("photos".into()), Some(key.into()), true);
        assert_eq!(split("photos.localhost:9000", "/a/b"), photos("a/b"));
        assert_eq!(split("Photos.LocalHost.", "/a/b"), photos("a/b"));
        assert_eq!(split("photos.localhost.:9000", "/a/b"), photos("a/b"));
        assert_eq!(
            split("127.0.0.1:9000", "/backup/x"),
            (Some("backup".into()), Some("x".into()), false)
        );
        assert_eq!(
            split("[::1]:9000", "/backup/"),
            (Some("backup".into()), None, false)
        );
        assert_eq!(split("localhost:9000", "/"), (None, None, false));
    }

    /// With one domain a suffix of another, the host that is a domain is path-style, and a
    /// bucket comes off the longest domain.
    #[test]
    fn overlapping_domains_take_the_longest_and_a_domain_itself_is_path_style() {
        let domains = ["example.com".to_string(), "s3.example.com".to_string()];
        assert_eq!(
            address_in(&domains, "s3.example.com", "/photos/a.jpg"),
            (Some("photos".into()), Some("a.jpg".into()), false)
        );
        assert_eq!(
            address_in(&domains, "photos.s3.example.com", "/a.jpg"),
            (Some("photos".into()), Some("a.jpg".into()), true)
        );
        assert_eq!(
            address_in(&domains, "photos.example.com", "/a.jpg"),
            (Some("photos".into()), Some("a.jpg".into()), true)
        );
    }
}
