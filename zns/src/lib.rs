//! The zone model of Zonestore: the [`ZonedDevice`] trait that the engine, the NVMe/TCP target
//! and the NVMe/TCP host share, the ZNS zone state machine, and [`EmulatedZns`], a file-backed
//! drive that behaves like a ZNS SSD (NVM Express Zoned Namespace Command Set Specification).

pub mod absent;
pub mod device;
pub mod emulated;
pub mod error;
pub mod geometry;
pub mod machine;
#[cfg(feature = "testing")]
pub mod testing;
pub mod zone;

pub use absent::AbsentDrive;
pub use device::{WriteHint, ZonedDevice};
pub use emulated::EmulatedZns;
pub use error::{ZoneError, ZoneErrorKind, ZoneResult};
pub use geometry::{Geometry, GeometryError, MAX_ZONES};
pub use zone::{ReportFilter, ZoneAction, ZoneDescriptor, ZoneReport, ZoneSelect, ZoneState};
