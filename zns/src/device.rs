//! The one interface the engine, the NVMe/TCP target and the NVMe/TCP host share.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ZoneResult;
use crate::geometry::Geometry;
use crate::zone::{ReportFilter, ZoneAction, ZoneReport, ZoneSelect};

/// A zoned block device with the semantics of the NVMe ZNS command set: sequential-write-required
/// zones, Zone Append, zone management and Report Zones.
///
/// Implementations are cheap to share (`Arc<dyn ZonedDevice>`) and accept many operations in
/// flight at once, including several appends to one zone. Data is passed as [`Bytes`] so that a
/// buffer the caller already holds is never copied on the way in.
///
/// Durability: data written by a completed `write` or `append` survives a crash only once a
/// `flush` issued after that completion has returned (a volatile write cache). Zone management
/// actions are durable when they complete.
#[async_trait]
pub trait ZonedDevice: Send + Sync + std::fmt::Debug {
    /// The namespace's geometry.
    fn geometry(&self) -> Geometry;

    /// Whether the device can take commands now (a remote drive: whether its connection is up).
    /// Callers use it to skip a device that would only fail; a local device always can.
    fn is_available(&self) -> bool {
        true
    }

    /// Reads `blocks` blocks from `lba`. Blocks beyond a zone's write pointer read as zeros. The
    /// range may span zones.
    async fn read(&self, lba: u64, blocks: u32) -> ZoneResult<Bytes>;

    /// Writes `data` (whole blocks) at `lba`, which must be the zone's write pointer.
    async fn write(&self, lba: u64, data: Bytes) -> ZoneResult<()>;

    /// Writes `blocks` zero blocks at `lba`, which must be the zone's write pointer.
    async fn write_zeroes(&self, lba: u64, blocks: u32) -> ZoneResult<()>;

    /// Appends `data` (whole blocks, at most the append limit) to the zone starting at `zslba`
    /// and returns the LBA where the drive placed it.
    async fn append(&self, zslba: u64, data: Bytes) -> ZoneResult<u64>;

    /// Makes every completed write durable.
    async fn flush(&self) -> ZoneResult<()>;

    /// Applies a Zone Management Send action to one zone or to all zones it applies to.
    async fn manage_zones(&self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<()>;

    /// Reports up to `max_zones` zones matching `filter`, starting with the zone holding
    /// `start_lba`.
    async fn report_zones(
        &self,
        start_lba: u64,
        filter: ReportFilter,
        max_zones: usize,
    ) -> ZoneResult<ZoneReport>;
}
