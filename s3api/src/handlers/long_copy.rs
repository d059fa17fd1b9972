//! The reply of a copy (CopyObject, UploadPartCopy) that may take long: S3 answers 200 at once
//! and keeps the connection alive with whitespace until the result document follows, so that a
//! client's read timeout (60 s in the AWS SDKs) does not end a multi-gigabyte copy. An error
//! after that comes as an Error document in the 200's body, which the SDKs look for in a copy's
//! answer. A copy that ends soon gets an ordinary reply, its errors with their own status.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode};

use std::time::SystemTime;

use crate::error::S3Error;
use crate::service::{Ctx, Reply, S3Service, xml};
use crate::store::StoredChecksum;
use crate::time::iso8601;
use crate::xml::XmlWriter;

/// The XML declaration a document begins with (before any whitespace, as XML requires).
const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// When a copy's reply begins, and how often whitespace follows until it ends.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// A copy that takes longer than this is answered 200 at once.
    pub after: Duration,
    /// Whitespace is sent this often while it runs.
    pub every: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            after: Duration::from_secs(5),
            every: Duration::from_secs(5),
        }
    }
}

/// The result document of a copy (`root`: CopyObjectResult or CopyPartResult), with the
/// checksums' type where S3 gives one (a copied object's; a part's has none).
pub(crate) fn result_document(
    root: &'static str,
    last_modified: SystemTime,
    etag: &str,
    checksums: &[StoredChecksum],
    checksum_type: Option<&str>,
) -> String {
    let mut w = XmlWriter::new(root);
    w.element("LastModified", &iso8601(last_modified))
        .element("ETag", &format!("\"{etag}\""));
    if !checksums.is_empty()
        && let Some(t) = checksum_type
    {
        w.element("ChecksumType", t);
    }
    for c in checksums {
        w.element(&format!("Checksum{}", c.algorithm), &c.value);
    }
    w.finish()
}

/// Runs `work` (the copy into the request's bucket and key, giving its result document) to
/// its end, or until the request is dropped (its client gone), and replies as the module says.
pub(crate) fn copy_reply<F>(
    svc: &S3Service,
    ctx: &Ctx,
    work: F,
) -> impl Future<Output = Reply> + Send + use<F>
where
    F: Future<Output = Result<String, S3Error>> + Send + 'static,
{
    reply_when_done(
        work,
        svc.config.copy_keep_alive,
        format!("/{}/{}", ctx.bucket(), ctx.key()),
        ctx.request_id.clone(),
    )
}

/// [`copy_reply`] with `resource` and `request_id` for an Error document sent after the 200.
async fn reply_when_done<F>(
    work: F,
    keep_alive: KeepAlive,
    resource: String,
    request_id: String,
) -> Reply
where
    F: Future<Output = Result<String, S3Error>> + Send + 'static,
{
    let mut task = AbortOnDrop(tokio::spawn(work));
    if let Ok(joined) = tokio::time::timeout(keep_alive.after, &mut task.0).await {
        return joined.map_err(copy_failed)?.map(xml);
    }
    let declaration =
        futures::stream::once(async { Ok(Bytes::from_static(DECLARATION.as_bytes())) });
    let rest = futures::stream::unfold(Some(task), move |task| {
        let (resource, request_id) = (resource.clone(), request_id.clone());
        async move {
            let mut task = task?;
            let document = match tokio::time::timeout(keep_alive.every, &mut task.0).await {
                Err(_) => {
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from_static(b" ")),
                        Some(task),
                    ));
                }
                Ok(joined) => match joined.map_err(copy_failed).and_then(|done| done) {
                    Ok(document) => document,
                    Err(e) => e.to_xml(&resource, &request_id),
                },
            };
            let body = document.strip_prefix(DECLARATION).unwrap_or(&document);
            Some((Ok(Bytes::copy_from_slice(body.as_bytes())), None))
        }
    });
    let mut response = Response::new(Body::from_stream(declaration.chain(rest)));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    Ok(response)
}

/// A copy's task, stopped when its request is dropped (the client went away before or while
/// its answer was sent): a small request must not leave gigabytes of copying behind it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn copy_failed(e: tokio::task::JoinError) -> S3Error {
    S3Error::internal(&format!("the copy failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn quick() -> KeepAlive {
        KeepAlive {
            after: Duration::from_millis(50),
            every: Duration::from_millis(20),
        }
    }

    async fn body(reply: Reply) -> (StatusCode, String) {
        let response = reply.expect("a reply");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn document() -> String {
        format!("{DECLARATION}<CopyObjectResult><ETag>\"e\"</ETag></CopyObjectResult>")
    }

    #[tokio::test]
    async fn a_quick_copy_gets_an_ordinary_reply() {
        let (status, text) = body(
            reply_when_done(async { Ok(document()) }, quick(), "/b/k".into(), "R".into()).await,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, document());
        let failed = reply_when_done(
            async { Err(S3Error::no_such_key("k")) },
            quick(),
            "/b/k".into(),
            "R".into(),
        )
        .await;
        assert_eq!(failed.unwrap_err().code, "NoSuchKey");
    }

    /// A copy whose client goes away, before its answer starts or while whitespace keeps the
    /// connection alive, is stopped rather than left running.
    #[tokio::test]
    async fn a_copy_stops_when_its_request_is_dropped() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        for answer_started in [false, true] {
            let finished = Arc::new(AtomicBool::new(false));
            let work = {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    finished.store(true, Ordering::SeqCst);
                    Ok(document())
                }
            };
            let reply = reply_when_done(work, quick(), "/b/k".into(), "R".into());
            if answer_started {
                drop(reply.await.expect("a 200 at once"));
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(10), reply).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                !finished.load(Ordering::SeqCst),
                "the copy went on without its client (answer started: {answer_started})"
            );
        }
    }

    #[tokio::test]
    async fn a_long_copy_is_answered_at_once_and_kept_alive_until_its_document() {
        let work = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(document())
        };
        let (status, text) =
            body(reply_when_done(work, quick(), "/b/k".into(), "R".into()).await).await;
        assert_eq!(status, StatusCode::OK);
        let rest = text
            .strip_prefix(DECLARATION)
            .expect("the declaration first");
        let spaces = rest.len() - rest.trim_start().len();
        assert!(
            spaces >= 2,
            "whitespace kept the connection alive: {text:?}"
        );
        assert_eq!(
            rest.trim_start(),
            "<CopyObjectResult><ETag>\"e\"</ETag></CopyObjectResult>"
        );
    }

    #[tokio::test]
    async fn a_long_copy_that_fails_ends_its_200_with_an_error_document() {
        let work = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(S3Error::precondition_failed("If-Match"))
        };
        let (status, text) =
            body(reply_when_done(work, quick(), "/b/k".into(), "R".into()).await).await;
        assert_eq!(status, StatusCode::OK);
        let rest = text
            .strip_prefix(DECLARATION)
            .expect("the declaration first");
        assert!(
            rest.trim_start()
                .starts_with("<Error><Code>PreconditionFailed</Code>"),
            "{text:?}"
        );
        assert!(rest.contains("<RequestId>R</RequestId>"), "{text:?}");
    }
}
