//! A drive that is not there: configured, yet out of reach for good or for now (removed from
//! the configuration, its node down). It reports the geometry it had, is never available, and
//! fails every command with Unavailable, saying why.

use async_trait::async_trait;
use bytes::Bytes;

use crate::device::ZonedDevice;
use crate::error::{ZoneError, ZoneResult};
use crate::geometry::Geometry;
use crate::zone::{ReportFilter, ZoneAction, ZoneReport, ZoneSelect};

/// A drive that is not there (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct AbsentDrive {
    /// The geometry it reports.
    pub geometry: Geometry,
    /// Why it is not there, for the errors of its commands.
    pub why: &'static str,
}

impl AbsentDrive {
    fn fail<T>(&self) -> ZoneResult<T> {
        Err(ZoneError::Unavailable(self.why.to_string()))
    }
}

#[async_trait]
impl ZonedDevice for AbsentDrive {
    fn geometry(&self) -> Geometry {
        self.geometry
    }
    fn is_available(&self) -> bool {
        false
    }
    async fn read(&self, _: u64, _: u32) -> ZoneResult<Bytes> {
        self.fail()
    }
    async fn write(&self, _: u64, _: Bytes) -> ZoneResult<()> {
        self.fail()
    }
    async fn write_zeroes(&self, _: u64, _: u32) -> ZoneResult<()> {
        self.fail()
    }
    async fn append(&self, _: u64, _: Bytes) -> ZoneResult<u64> {
        self.fail()
    }
    async fn flush(&self) -> ZoneResult<()> {
        self.fail()
    }
    async fn manage_zones(&self, _: ZoneAction, _: ZoneSelect) -> ZoneResult<()> {
        self.fail()
    }
    async fn report_zones(&self, _: u64, _: ReportFilter, _: usize) -> ZoneResult<ZoneReport> {
        self.fail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_command_fails_saying_why() {
        let drive = AbsentDrive {
            geometry: Geometry::new(4, 1 << 20),
            why: "the node is down",
        };
        assert!(!drive.is_available());
        let e = drive.read(0, 1).await.unwrap_err();
        assert_eq!(e.kind(), crate::ZoneErrorKind::Unavailable);
        assert!(e.to_string().contains("the node is down"), "{e}");
        assert!(
            drive
                .flush()
                .await
                .unwrap_err()
                .to_string()
                .contains("the node is down")
        );
    }
}
