//! The S3 front end's storage, backed by the engine. Engine errors become S3 errors here, in one
//! place.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use s3api::S3Error;
use s3api::store::{
    BodyStream, BucketInfo, Completion, DeleteCondition, ListPage, ObjectHeaders, ObjectInfo,
    ObjectReader, ObjectStore, ObjectWriter, OpenObject, PartInfo, StoredChecksum, UploadInfo,
    UploadsPage, WriteCondition,
};
use s3api::time::{from_millis, to_millis};

use crate::engine::commit::Condition;
use crate::engine::model::{Checksum, ObjectMeta, PartEntry};
use crate::engine::{Engine, EngineError, ObjectHandle, PutWriter};

/// The one mapping from engine errors to S3 errors (code and HTTP status).
pub fn to_s3(e: EngineError) -> S3Error {
    // A drive that cannot be reached is an outage (retry later), not a server fault.
    if e.is_unavailable() && !matches!(e, EngineError::Unavailable(_)) {
        return S3Error::unavailable(&e.to_string());
    }
    match e {
        EngineError::NoSuchBucket(b) => S3Error::no_such_bucket(&b),
        EngineError::NoSuchKey { key, .. } => S3Error::no_such_key(&key),
        EngineError::BucketAlreadyExists(b) => S3Error::bucket_exists(&b),
        EngineError::TooManyBuckets(limit) => S3Error::too_many_buckets(limit),
        EngineError::BucketAlreadyOwnedByYou(b) => S3Error::bucket_owned(&b),
        EngineError::BucketNotEmpty(b) => S3Error::bucket_not_empty(&b),
        EngineError::NotOwner(_) => S3Error::access_denied("Access Denied"),
        EngineError::NoSuchUpload(u) => S3Error::no_such_upload(&u),
        EngineError::InvalidPart(detail) => S3Error::invalid_part(&detail),
        EngineError::InvalidPartOrder => S3Error::invalid_part_order(),
        EngineError::EntityTooSmall { part, size } => S3Error::entity_too_small(part, size),
        EngineError::EntityTooLarge { size, max } => S3Error::entity_too_large(size, max),
        EngineError::PreconditionFailed(condition) => S3Error::precondition_failed(condition),
        EngineError::NoSpace(detail) => S3Error::insufficient_storage(&detail),
        // The index's disk is full: as out of space as full drives are.
        EngineError::Index(e) if e.is_out_of_space() => {
            S3Error::insufficient_storage(&format!("the index's disk is full: {e}"))
        }
        EngineError::Unavailable(detail) => S3Error::unavailable(&detail),
        EngineError::WrongDrive { .. }
        | EngineError::WrongGeometry { .. }
        | EngineError::ForeignData { .. } => S3Error::unavailable("a drive is not available"),
        EngineError::InvalidArgument(detail) => S3Error::invalid_argument(detail),
        EngineError::Body(detail) => S3Error::incomplete_body(&detail),
        e @ (EngineError::Drive { .. }
        | EngineError::Corrupt(_)
        | EngineError::Index(_)
        | EngineError::Internal(_)) => S3Error::internal(&e.to_string()),
    }
}

fn checksums_of(list: &[Checksum]) -> Vec<StoredChecksum> {
    list.iter()
        .filter(|c| !c.value.is_empty())
        .map(|c| StoredChecksum {
            algorithm: c.algorithm.clone(),
            value: c.value.clone(),
        })
        .collect()
}

/// S3's view of an object manifest.
pub fn object_info(key: &str, m: &ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: m.size,
        etag: m.etag.clone(),
        last_modified: from_millis(m.last_modified_ms),
        headers: ObjectHeaders {
            content_type: m.content_type.clone(),
            content_encoding: m.content_encoding.clone(),
            content_disposition: m.content_disposition.clone(),
            content_language: m.content_language.clone(),
            cache_control: m.cache_control.clone(),
            expires: m.expires.clone(),
            user_meta: m.user_meta.clone(),
        },
        checksums: checksums_of(&m.checksums),
        checksum_type: m.checksum_type.clone(),
        owner: m.owner.clone(),
        part_sizes: m.part_sizes.clone(),
    }
}

fn meta_from(headers: ObjectHeaders, owner: String) -> ObjectMeta {
    ObjectMeta {
        content_type: headers.content_type,
        content_encoding: headers.content_encoding,
        content_disposition: headers.content_disposition,
        content_language: headers.content_language,
        cache_control: headers.cache_control,
        expires: headers.expires,
        user_meta: headers.user_meta,
        owner,
        ..ObjectMeta::default()
    }
}

fn part_info(p: &PartEntry) -> PartInfo {
    PartInfo {
        part_number: p.part_number,
        etag: p.etag.clone(),
        size: p.size,
        last_modified: from_millis(p.last_modified_ms),
        checksums: checksums_of(&p.checksums),
    }
}

fn condition(c: WriteCondition) -> Condition {
    match c {
        WriteCondition::None => Condition::None,
        WriteCondition::IfAbsent => Condition::IfNoneMatchAny,
        WriteCondition::IfMatch(etag) => Condition::IfMatch(etag),
        WriteCondition::IfExists => Condition::IfExists,
    }
}

fn parse_upload_id(id: &str) -> Result<u64, S3Error> {
    upload_id_value(id).ok_or_else(|| S3Error::no_such_upload(id))
}

/// The number an upload id names: ids are exactly the 16 lowercase hex digits this server
/// gives out, so that each upload has one id (`1`, `+1` or uppercase forms name none).
fn upload_id_value(id: &str) -> Option<u64> {
    let canonical = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    canonical
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

/// The engine as S3 storage.
#[derive(Debug, Clone)]
pub struct EngineStore {
    engine: Engine,
}

impl EngineStore {
    /// Storage over `engine`.
    pub fn new(engine: Engine) -> Self {
        EngineStore { engine }
    }
}

struct Reader {
    handle: ObjectHandle,
}

impl ObjectReader for Reader {
    fn read(&self, range: Range<u64>) -> Result<BodyStream, S3Error> {
        let stream = self.handle.read(range).map_err(to_s3)?;
        Ok(stream.map(|chunk| chunk.map_err(to_s3)).boxed())
    }
}

struct Writer {
    writer: PutWriter,
}

#[async_trait]
impl ObjectWriter for Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), S3Error> {
        self.writer.write(chunk).await.map_err(to_s3)
    }

    async fn idle(&mut self) -> Result<(), S3Error> {
        self.writer.idle().await.map_err(to_s3)
    }

    async fn commit_object(
        self: Box<Self>,
        etag: String,
        headers: ObjectHeaders,
        checksums: Vec<StoredChecksum>,
        owner: String,
        write_condition: WriteCondition,
    ) -> Result<ObjectInfo, S3Error> {
        let mut meta = meta_from(headers, owner);
        meta.etag = etag;
        meta.checksum_type = (!checksums.is_empty()).then(|| "FULL_OBJECT".to_string());
        meta.checksums = checksums
            .into_iter()
            .map(|c| Checksum {
                algorithm: c.algorithm,
                value: c.value,
            })
            .collect();
        let key = self.writer.key().to_string();
        let meta = self
            .writer
            .finish_object(meta, condition(write_condition))
            .await
            .map_err(to_s3)?;
        Ok(object_info(&key, &meta))
    }

    async fn commit_part(
        self: Box<Self>,
        etag: String,
        checksums: Vec<StoredChecksum>,
    ) -> Result<PartInfo, S3Error> {
        let checksums = checksums
            .into_iter()
            .map(|c| Checksum {
                algorithm: c.algorithm,
                value: c.value,
            })
            .collect();
        let part = self
            .writer
            .finish_part(etag, checksums)
            .await
            .map_err(to_s3)?;
        Ok(part_info(&part))
    }
}

#[async_trait]
impl ObjectStore for EngineStore {
    async fn create_bucket(&self, bucket: &str, owner: &str) -> Result<(), S3Error> {
        self.engine
            .create_bucket(bucket, owner)
            .await
            .map_err(to_s3)
    }

    async fn delete_bucket(&self, bucket: &str, owner: &str) -> Result<(), S3Error> {
        self.engine
            .delete_bucket_of(bucket, owner)
            .await
            .map_err(to_s3)
    }

    fn bucket(&self, bucket: &str) -> Result<BucketInfo, S3Error> {
        let b = self.engine.bucket(bucket).map_err(to_s3)?;
        Ok(BucketInfo {
            name: bucket.to_string(),
            owner: b.owner,
            created: from_millis(b.created_ms),
        })
    }

    fn buckets(&self) -> Result<Vec<BucketInfo>, S3Error> {
        Ok(self
            .engine
            .buckets()
            .map_err(to_s3)?
            .into_iter()
            .map(|(name, b)| BucketInfo {
                name,
                owner: b.owner,
                created: from_millis(b.created_ms),
            })
            .collect())
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> Result<ListPage, S3Error> {
        let l = self
            .engine
            .list(bucket, prefix, start_after, delimiter, max)
            .map_err(to_s3)?;
        Ok(ListPage {
            objects: l
                .objects
                .iter()
                .map(|(k, meta)| object_info(k, meta))
                .collect(),
            prefixes: l.prefixes,
            truncated: l.truncated,
            last: l.last,
        })
    }

    fn open_object(&self, bucket: &str, key: &str) -> Result<OpenObject, S3Error> {
        let handle = self.engine.open_object(bucket, key).map_err(to_s3)?;
        Ok(OpenObject {
            info: object_info(key, handle.meta()),
            reader: Arc::new(Reader { handle }),
        })
    }

    async fn put_object(&self, bucket: &str, key: &str) -> Result<Box<dyn ObjectWriter>, S3Error> {
        let writer = self.engine.put(bucket, key).map_err(to_s3)?;
        Ok(Box::new(Writer { writer }))
    }

    async fn delete_object(
        &self,
        bucket: &BucketInfo,
        key: &str,
        condition: &DeleteCondition,
    ) -> Result<(), S3Error> {
        let condition = match condition {
            DeleteCondition::None => Condition::None,
            DeleteCondition::IfExists => Condition::IfExists,
            DeleteCondition::IfMatch(etag) => Condition::IfMatch(etag.clone()),
        };
        self.engine
            .delete_in(&bucket.name, to_millis(bucket.created), key, condition)
            .await
            .map_err(to_s3)
    }

    async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: ObjectHeaders,
        owner: &str,
        checksum: Option<(String, String)>,
    ) -> Result<UploadInfo, S3Error> {
        let mut template = meta_from(headers, owner.to_string());
        if let Some((algorithm, kind)) = &checksum {
            template.checksums = vec![Checksum {
                algorithm: algorithm.clone(),
                value: String::new(),
            }];
            template.checksum_type = Some(kind.clone());
        }
        let id = self
            .engine
            .create_upload(bucket, key, template)
            .await
            .map_err(to_s3)?;
        self.upload(bucket, key, &format!("{id:016x}"))
    }

    fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<UploadInfo, S3Error> {
        let id = parse_upload_id(upload_id)?;
        let u = self.engine.upload(id).map_err(to_s3)?;
        if u.bucket != bucket || u.key != key {
            return Err(S3Error::no_such_upload(upload_id));
        }
        Ok(UploadInfo {
            upload_id: format!("{id:016x}"),
            bucket: u.bucket,
            key: u.key,
            initiated: from_millis(u.template.last_modified_ms),
            owner: u.template.owner,
            checksum_algorithm: u.template.checksums.first().map(|c| c.algorithm.clone()),
            checksum_type: u.template.checksum_type,
        })
    }

    fn completed_into_current(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<bool>, S3Error> {
        let Some(id) = upload_id_value(upload_id) else {
            return Ok(Some(false));
        };
        self.engine
            .completed_into_current(id, bucket, key)
            .map_err(to_s3)
    }

    async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
    ) -> Result<Box<dyn ObjectWriter>, S3Error> {
        self.upload(bucket, key, upload_id)?;
        let writer = self
            .engine
            .put_part(parse_upload_id(upload_id)?, part_number)
            .map_err(to_s3)?;
        Ok(Box::new(Writer { writer }))
    }

    fn parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<PartInfo>, S3Error> {
        self.upload(bucket, key, upload_id)?;
        Ok(self
            .engine
            .parts(parse_upload_id(upload_id)?, after, limit)
            .map_err(to_s3)?
            .iter()
            .map(part_info)
            .collect())
    }

    fn uploads(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<(&str, &str)>,
        max: usize,
    ) -> Result<UploadsPage, S3Error> {
        // A key marker alone is after every upload of its key; an upload-id marker must be
        // one of ours.
        let after = match after {
            Some((k, "")) => Some((k, u64::MAX)),
            Some((k, id)) => Some((
                k,
                upload_id_value(id).ok_or_else(|| {
                    S3Error::invalid_argument("Invalid uploadId marker")
                        .with("ArgumentName", "upload-id-marker")
                })?,
            )),
            None => None,
        };
        let listing = self
            .engine
            .uploads(bucket, prefix, delimiter, after, max)
            .map_err(to_s3)?;
        let uploads = listing
            .uploads
            .into_iter()
            .map(|u| UploadInfo {
                upload_id: format!("{:016x}", u.upload_id),
                bucket: u.bucket,
                key: u.key,
                initiated: from_millis(u.template.last_modified_ms),
                owner: u.template.owner.clone(),
                checksum_algorithm: u.template.checksums.first().map(|c| c.algorithm.clone()),
                checksum_type: u.template.checksum_type.clone(),
            })
            .collect();
        Ok(UploadsPage {
            uploads,
            prefixes: listing.prefixes,
            truncated: listing.truncated,
        })
    }

    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        completion: Completion,
    ) -> Result<ObjectInfo, S3Error> {
        self.upload(bucket, key, upload_id)?;
        let Completion {
            parts,
            checksum,
            checksum_type,
            condition: write_condition,
        } = completion;
        let checksum = checksum.map(|c| {
            (
                Checksum {
                    algorithm: c.algorithm,
                    value: c.value,
                },
                checksum_type.unwrap_or_else(|| "COMPOSITE".into()),
            )
        });
        let meta = self
            .engine
            .complete_upload(
                parse_upload_id(upload_id)?,
                &parts,
                checksum,
                condition(write_condition),
            )
            .await
            .map_err(to_s3)?;
        Ok(object_info(key, &meta))
    }

    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.upload(bucket, key, upload_id)?;
        self.engine
            .abort_upload(parse_upload_id(upload_id)?)
            .await
            .map_err(to_s3)
    }
}

#[cfg(test)]
mod tests {
    use super::{EngineError, to_s3, upload_id_value};

    /// What a 503 or 507 is about inside (drives, target addresses, paths) goes to the log,
    /// not to S3 clients.
    #[test]
    fn outages_and_full_stores_tell_clients_nothing_of_the_inside() {
        let down = to_s3(EngineError::Unavailable(
            "target 10.0.0.7:4420 (nqn.2026-01.io.zonestore:d2) unreachable".into(),
        ));
        assert_eq!(
            (down.status.as_u16(), down.code),
            (503, "ServiceUnavailable")
        );
        let full = to_s3(EngineError::NoSpace(
            "1 of 3 drives have room for 16 blocks (/data/drives/d0)".into(),
        ));
        assert_eq!(
            (full.status.as_u16(), full.code),
            (507, "InsufficientStorage")
        );
        for message in [&down.message, &full.message] {
            assert!(
                !message.contains("10.0.0.7")
                    && !message.contains("nqn")
                    && !message.contains("/data"),
                "{message}"
            );
        }
    }

    #[test]
    fn an_upload_id_is_exactly_sixteen_lowercase_hex_digits() {
        assert_eq!(upload_id_value("00000000000000ff"), Some(255));
        assert_eq!(
            upload_id_value(&format!("{:016x}", u64::MAX)),
            Some(u64::MAX)
        );
        for alias in [
            "ff",
            "+0000000000000ff",
            "00000000000000FF",
            "000000000000000ff",
            "",
        ] {
            assert_eq!(upload_id_value(alias), None, "{alias:?}");
        }
    }
}
