//! The S3 operations, by family.

pub mod acl;
pub mod bucket;
pub mod continuation;
pub mod list;
pub mod long_copy;
pub mod multipart;
pub mod object;
pub mod unconfigured;

use crate::error::S3Error;
use crate::store::ObjectInfo;
use crate::xml::XmlWriter;

/// Runs `scan` (a listing: up to a thousand index seeks, each maybe a table block read) on a
/// blocking thread, so a slow one does not hold a runtime worker and every stream it carries.
pub(crate) async fn off_runtime<T: Send + 'static>(
    scan: impl FnOnce() -> Result<T, S3Error> + Send + 'static,
) -> Result<T, S3Error> {
    tokio::task::spawn_blocking(scan)
        .await
        .map_err(|e| S3Error::internal(&format!("an index scan failed: {e}")))?
}

/// Writes the `Owner` element of an object or upload.
pub(crate) fn owner(w: &mut XmlWriter, id: &str) {
    w.start("Owner")
        .element("ID", id)
        .element("DisplayName", id)
        .end();
}

/// The checksum algorithm and type of an object, for listings.
pub(crate) fn checksum_fields(w: &mut XmlWriter, info: &ObjectInfo) {
    if let Some(c) = info.checksums.first() {
        w.element("ChecksumAlgorithm", &c.algorithm);
        w.element(
            "ChecksumType",
            info.checksum_type.as_deref().unwrap_or("FULL_OBJECT"),
        );
    }
}
