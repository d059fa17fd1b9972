//! What the S3 front end needs from storage. The server implements [`ObjectStore`] over its
//! engine (mapping engine errors to [`S3Error`]s in one place); the front end never sees zones
//! or fabrics.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::S3Error;

/// A stream of body bytes.
pub type BodyStream = BoxStream<'static, Result<Bytes, S3Error>>;

/// A bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// Name.
    pub name: String,
    /// Owner (access key).
    pub owner: String,
    /// Creation time.
    pub created: SystemTime,
}

/// Metadata a client sets on an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHeaders {
    /// Content-Type.
    pub content_type: Option<String>,
    /// Content-Encoding (without aws-chunked).
    pub content_encoding: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Expires.
    pub expires: Option<String>,
    /// x-amz-meta-* (names lower case, without the prefix).
    pub user_meta: Vec<(String, String)>,
}

/// A stored checksum: algorithm name (CRC32...) and base64 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChecksum {
    /// Algorithm name.
    pub algorithm: String,
    /// Value (composite values end in `-N`).
    pub value: String,
}

/// An object as S3 shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Last-Modified.
    pub last_modified: SystemTime,
    /// Headers set by the writer.
    pub headers: ObjectHeaders,
    /// Checksums.
    pub checksums: Vec<StoredChecksum>,
    /// FULL_OBJECT or COMPOSITE.
    pub checksum_type: Option<String>,
    /// Owner (access key).
    pub owner: String,
    /// Part sizes, for objects from multipart uploads (empty otherwise).
    pub part_sizes: Vec<u64>,
}

/// Reads one version of an object (the one [`ObjectStore::open_object`] found).
pub trait ObjectReader: Send + Sync {
    /// Streams a byte range.
    fn read(&self, range: Range<u64>) -> Result<BodyStream, S3Error>;
}

/// An object opened for reading.
#[derive(Clone)]
pub struct OpenObject {
    /// Its metadata.
    pub info: ObjectInfo,
    /// Its bytes.
    pub reader: Arc<dyn ObjectReader>,
}

/// A page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes.
    pub prefixes: Vec<String>,
    /// Whether more follow.
    pub truncated: bool,
    /// Last key or prefix returned.
    pub last: Option<String>,
}

/// What CompleteMultipartUpload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// (part number, ETag) pairs, in order.
    pub parts: Vec<(u32, String)>,
    /// The whole object's checksum the client sent, if any.
    pub checksum: Option<StoredChecksum>,
    /// `COMPOSITE` or `FULL_OBJECT`, if the upload has a checksum.
    pub checksum_type: Option<String>,
    /// The condition on the key.
    pub condition: WriteCondition,
}

/// A condition on a write to a key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WriteCondition {
    /// None.
    #[default]
    None,
    /// If-None-Match: *.
    IfAbsent,
    /// If-Match: the current ETag.
    IfMatch(String),
    /// If-Match: * (the key must exist).
    IfExists,
}

/// A condition on a deletion (If-Match on DeleteObject, ETag in DeleteObjects).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeleteCondition {
    /// None: deleting what is not there succeeds.
    #[default]
    None,
    /// If-Match: *: the object must exist.
    IfExists,
    /// If-Match: the current ETag (without quotes) must be this.
    IfMatch(String),
}

/// One page of a ListMultipartUploads: uploads, and keys folded into common prefixes.
#[derive(Debug, Default)]
pub struct UploadsPage {
    /// Uploads, in (key, upload id) order.
    pub uploads: Vec<UploadInfo>,
    /// Common prefixes.
    pub prefixes: Vec<String>,
    /// Whether more entries follow.
    pub truncated: bool,
}

/// A multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Upload id.
    pub upload_id: String,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Initiated.
    pub initiated: SystemTime,
    /// Owner.
    pub owner: String,
    /// Checksum algorithm declared at creation.
    pub checksum_algorithm: Option<String>,
    /// Checksum type declared at creation.
    pub checksum_type: Option<String>,
}

/// A stored part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Part number.
    pub part_number: u32,
    /// ETag without quotes.
    pub etag: String,
    /// Size.
    pub size: u64,
    /// Stored.
    pub last_modified: SystemTime,
    /// Checksums.
    pub checksums: Vec<StoredChecksum>,
}

/// Receives a body; dropping it without committing abandons what was written.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Adds body bytes.
    async fn write(&mut self, chunk: Bytes) -> Result<(), S3Error>;

    /// The body has paused (no bytes for a while): lets go of memory held for bytes still to
    /// come, so that clients that send slowly do not hold what others need.
    async fn idle(&mut self) -> Result<(), S3Error> {
        Ok(())
    }

    /// Makes the body an object version.
    async fn commit_object(
        self: Box<Self>,
        etag: String,
        headers: ObjectHeaders,
        checksums: Vec<StoredChecksum>,
        owner: String,
        condition: WriteCondition,
    ) -> Result<ObjectInfo, S3Error>;

    /// Makes the body a part of its upload.
    async fn commit_part(
        self: Box<Self>,
        etag: String,
        checksums: Vec<StoredChecksum>,
    ) -> Result<PartInfo, S3Error>;
}

/// Storage for the S3 front end.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Creates a bucket.
    async fn create_bucket(&self, bucket: &str, owner: &str) -> Result<(), S3Error>;
    /// Deletes an empty bucket if `owner` owns it (checked with the deletion: a bucket deleted
    /// and created again by someone else meanwhile is theirs, AccessDenied).
    async fn delete_bucket(&self, bucket: &str, owner: &str) -> Result<(), S3Error>;
    /// A bucket.
    fn bucket(&self, bucket: &str) -> Result<BucketInfo, S3Error>;
    /// All buckets, by name.
    fn buckets(&self) -> Result<Vec<BucketInfo>, S3Error>;
    /// Lists objects.
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> Result<ListPage, S3Error>;
    /// Opens an object for reading.
    fn open_object(&self, bucket: &str, key: &str) -> Result<OpenObject, S3Error>;
    /// Starts writing an object.
    async fn put_object(&self, bucket: &str, key: &str) -> Result<Box<dyn ObjectWriter>, S3Error>;
    /// Deletes an object (no error if absent) from `bucket` as the request checked it: a
    /// bucket of that name deleted and created again since (perhaps by another user) is
    /// another bucket, and NoSuchBucket.
    async fn delete_object(
        &self,
        bucket: &BucketInfo,
        key: &str,
        condition: &DeleteCondition,
    ) -> Result<(), S3Error>;
    /// Creates a multipart upload.
    async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: ObjectHeaders,
        owner: &str,
        checksum: Option<(String, String)>,
    ) -> Result<UploadInfo, S3Error>;
    /// An upload of `bucket`/`key`.
    fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<UploadInfo, S3Error>;
    /// Whether upload `upload_id` (ended) was completed into the object now at `bucket`/`key`
    /// (not aborted, not another upload's, not replaced since); `None` when the store no
    /// longer knows how the upload ended.
    fn completed_into_current(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<bool>, S3Error>;
    /// Starts writing a part.
    async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
    ) -> Result<Box<dyn ObjectWriter>, S3Error>;
    /// Parts of an upload after `after`, in order, at most `limit`.
    fn parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<PartInfo>, S3Error>;
    /// One page of a bucket's uploads in progress: keys under `prefix`, after the marker (key
    /// and upload id; a key that is a common prefix continues after everything under it),
    /// keys with `delimiter` after the prefix folded into common prefixes; at most `max`
    /// entries.
    fn uploads(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<(&str, &str)>,
        max: usize,
    ) -> Result<UploadsPage, S3Error>;
    /// Completes an upload from (part number, ETag) pairs.
    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        completion: Completion,
    ) -> Result<ObjectInfo, S3Error>;

    /// Aborts an upload.
    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Error>;
}
