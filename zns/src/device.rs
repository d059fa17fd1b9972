//! The one interface the engine, the NVMe/TCP target and the NVMe/TCP host share.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ZoneResult;
use crate::geometry::Geometry;
use crate::zone::{ReportFilter, ZoneAction, ZoneReport, ZoneSelect};

/// What a writer expects of data it writes, as the NVMe Dataset Management field of a Write or
/// Zone Append command (Command Dword 13, Access Frequency in bits 3:0) says it: a drive may use
/// it to decide what to keep in fast memory. Zonestore marks every copy of a record but the one
/// reads prefer, so that a machine holding several copies caches one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteHint {
    /// No information (Access Frequency 0h), or reads expected.
    #[default]
    None,
    /// Infrequent reads expected (Access Frequency 2h, "infrequent writes and infrequent
    /// reads", or 4h, "frequent writes and infrequent reads").
    InfrequentReads,
}

impl WriteHint {
    /// The Dataset Management byte (CDW13 bits 7:0) that carries the hint.
    pub fn dsm(self) -> u8 {
        match self {
            WriteHint::None => 0,
            WriteHint::InfrequentReads => 2,
        }
    }

    /// The hint a Dataset Management byte carries (other fields of the byte are ignored).
    pub fn from_dsm(dsm: u8) -> WriteHint {
        match dsm & 0x0F {
            2 | 4 => WriteHint::InfrequentReads,
            _ => WriteHint::None,
        }
    }
}

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

    /// The drive's identity, fixed when it was formatted (an NVMe namespace's NGUID): tells
    /// the drive apart from another one answering at the same address (a storage node started
    /// on an empty data directory, a swapped disk). `None` if the device has none.
    fn identity(&self) -> Option<[u8; 16]> {
        None
    }

    /// Which incarnation of the device's volatile state I/O goes to now: it changes when
    /// writes completed before may have been lost without a flush (a remote target that
    /// restarted, reached again on a new connection). A caller that notes it before writing
    /// and finds it changed after its flush cannot count those writes durable. A local device
    /// keeps one for its life.
    fn session(&self) -> u64 {
        0
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

    /// [`ZonedDevice::append`] with a hint of how the data will be read. Devices that have no
    /// use for the hint ignore it.
    async fn append_hinted(&self, zslba: u64, data: Bytes, hint: WriteHint) -> ZoneResult<u64> {
        let _ = hint;
        self.append(zslba, data).await
    }

    /// [`ZonedDevice::append_hinted`], sent only in session `session` (see
    /// [`ZonedDevice::session`]): `None` when the device's session is another by the time the
    /// command would go out, and nothing was sent. A caller that has written a zone in one
    /// session must not append to it in the next: a restarted target may have lost the zone's
    /// unflushed tail, and its write pointer gone back below what the caller counted on.
    /// A device wrapping another passes this on to it, for the inner device's binding to hold.
    async fn append_in_session(
        &self,
        zslba: u64,
        data: Bytes,
        hint: WriteHint,
        session: u64,
    ) -> Option<ZoneResult<u64>> {
        if self.session() != session {
            return None;
        }
        Some(self.append_hinted(zslba, data, hint).await)
    }

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

#[cfg(test)]
mod tests {
    use super::WriteHint;

    #[test]
    fn write_hints_use_the_access_frequency_codes_of_the_specification() {
        assert_eq!(WriteHint::None.dsm(), 0);
        assert_eq!(WriteHint::InfrequentReads.dsm(), 2);
        for (dsm, hint) in [
            (0x00, WriteHint::None),
            (0x01, WriteHint::None),
            (0x02, WriteHint::InfrequentReads),
            (0x03, WriteHint::None),
            (0x04, WriteHint::InfrequentReads),
            (0x05, WriteHint::None),
            // Access Latency, Sequential Request and Incompressible bits do not change it.
            (0xF2, WriteHint::InfrequentReads),
            (0xF0, WriteHint::None),
        ] {
            assert_eq!(WriteHint::from_dsm(dsm), hint, "DSM {dsm:#04x}");
        }
    }
}
