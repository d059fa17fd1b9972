//! Errors of the engine. The S3 front end maps each to an S3 error code and HTTP status in one
//! place (`crate::s3`).

use zns::{ZoneError, ZoneErrorKind};

use super::index::IndexError;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bucket does not exist.
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    /// The object does not exist.
    #[error("object {key} does not exist in bucket {bucket}")]
    NoSuchKey {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// Another user owns a bucket of that name.
    #[error("bucket {0} exists and belongs to another user")]
    BucketAlreadyExists(String),
    /// The user owns as many buckets as one may.
    #[error("you own {0} buckets, the most one user may")]
    TooManyBuckets(usize),
    /// The caller already owns the bucket.
    #[error("you already own bucket {0}")]
    BucketAlreadyOwnedByYou(String),
    /// The bucket still holds objects or uploads.
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    /// The multipart upload does not exist (or ended).
    #[error("multipart upload {0} does not exist")]
    NoSuchUpload(String),
    /// A part named in CompleteMultipartUpload is missing or its ETag differs.
    #[error("invalid part: {0}")]
    InvalidPart(String),
    /// Parts were not listed in ascending order.
    #[error("parts must be listed in ascending order")]
    InvalidPartOrder,
    /// The parts of a completion add up to more than an object may hold (5 TiB).
    #[error("the parts add up to {size} bytes; an object holds at most {max}")]
    EntityTooLarge {
        /// Their total size.
        size: u64,
        /// The largest object.
        max: u64,
    },
    /// A part other than the last is smaller than 5 MiB.
    #[error("part {part} is {size} bytes; every part but the last must be at least 5 MiB")]
    EntityTooSmall {
        /// Part number.
        part: u32,
        /// Its size.
        size: u64,
    },
    /// A conditional write's precondition does not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(&'static str),
    /// The bucket belongs to someone else (created again by them since it was looked up).
    #[error("bucket {0} belongs to someone else")]
    NotOwner(String),
    /// Out of space.
    #[error("insufficient storage: {0}")]
    NoSpace(String),
    /// Not possible now, to be tried again: too few drives reachable for the copies asked for,
    /// GC reclaiming space, the engine shutting down (the text says which).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A drive failed.
    #[error("drive {drive}: {source}")]
    Drive {
        /// Drive name.
        drive: String,
        /// The drive's error.
        #[source]
        source: ZoneError,
    },
    /// Stored data failed verification on every copy.
    #[error("data corrupt: {0}")]
    Corrupt(String),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The client's body could not be read.
    #[error("request body: {0}")]
    Body(String),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A different drive answers under a registered drive's name (see
    /// [`zns::ZonedDevice::identity`]): it is not used in the registered drive's place.
    #[error(
        "drive {drive}: a different drive answers (identity {found}; the index knows {known}): is the storage node's data directory mounted? It is left out, and its copies are served from other drives; if the old drive is gone for good, drain it (`zonestore admin drain {drive}`) and configure the new one under another name"
    )]
    WrongDrive {
        /// Drive name.
        drive: String,
        /// The identity the index recorded (hex).
        known: String,
        /// The identity the device reports (hex).
        found: String,
    },
    /// The drive answering under a registered drive's name lays its zones out otherwise than
    /// the index recorded (another drive, which reports no identity to tell it apart): it is not
    /// used in the registered drive's place.
    #[error(
        "drive {drive}: a drive of another geometry answers ({found}; the index knows {known}): is the storage node exporting the right disk? It is left out, and its copies are served from other drives; if the old drive is gone for good, drain it (`zonestore admin drain {drive}`) and configure the new one under another name"
    )]
    WrongGeometry {
        /// Drive name.
        drive: String,
        /// The geometry the index recorded.
        known: zns::Geometry,
        /// The geometry the device reports.
        found: zns::Geometry,
    },
    /// A drive this index has never used holds data (see [`registry::check_first_use`]).
    ///
    /// [`registry::check_first_use`]: super::registry::check_first_use
    #[error(
        "drive {drive} holds data in {zones} zones that this index never wrote: it is another gateway's drive (a drive belongs to one gateway at a time), or this gateway's index was lost. It is left out. To take its objects into this index, stop the server and run `zonestore recover --rebuild-index`; to use it empty, start its storage node on an empty data directory"
    )]
    ForeignData {
        /// Drive name.
        drive: String,
        /// How many of its zones hold data.
        zones: usize,
    },
    /// The engine is shutting down or a task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the error says a drive cannot be reached (as opposed to refusing a command).
    pub fn is_unavailable(&self) -> bool {
        match self {
            EngineError::Unavailable(_) => true,
            EngineError::Drive { source, .. } => source.kind() == ZoneErrorKind::Unavailable,
            EngineError::Index(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether the drive answering under a registered name is not one this index may use
    /// (another drive, or one holding another index's data): it is left out.
    pub fn is_foreign_drive(&self) -> bool {
        matches!(
            self,
            EngineError::WrongDrive { .. }
                | EngineError::WrongGeometry { .. }
                | EngineError::ForeignData { .. }
        )
    }

    /// Whether a drive answered wrongly (an error status, or zone state it cannot have): the
    /// fault of that drive, which the engine can leave out, rather than of the store.
    pub fn is_drive_fault(&self) -> bool {
        matches!(self, EngineError::Drive { .. } | EngineError::Corrupt(_))
    }
}

/// Result of engine operations.
pub type EngineResult<T> = Result<T, EngineError>;
