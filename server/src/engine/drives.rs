//! The drives the engine writes to, local or remote, each a [`ZonedDevice`] with a stable id,
//! and what the engine knows of their health and load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use zns::{Geometry, ZoneError, ZoneErrorKind, ZonedDevice};

use super::model::{DriveId, Location, ZoneId};

/// One drive.
pub struct Drive {
    /// Stable id (index in the drive registry).
    pub id: DriveId,
    /// Identity: `nvme-tcp://addr/nqn` or `zns-file://path`.
    pub name: String,
    /// The device.
    pub device: Arc<dyn ZonedDevice>,
    /// Its geometry.
    pub geometry: Geometry,
    /// Commands in flight from this engine (for least-loaded reads).
    pub in_flight: AtomicI64,
    /// Whether the drive is considered down (I/O errors, unreachable).
    pub down: AtomicBool,
    /// I/O errors seen.
    pub errors: AtomicU64,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Drive {
    /// A drive.
    pub fn new(id: DriveId, name: String, device: Arc<dyn ZonedDevice>) -> Self {
        let geometry = device.geometry();
        Drive {
            id,
            name,
            device,
            geometry,
            in_flight: AtomicI64::new(0),
            down: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        }
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        u64::from(self.geometry.block_size)
    }

    /// The zone a location lies in.
    pub fn zone_of(&self, lba: u64) -> ZoneId {
        ZoneId {
            drive: self.id,
            zone: (lba / self.geometry.zone_size) as u32,
        }
    }

    /// Bytes a location occupies.
    pub fn bytes_of(&self, location: &Location) -> u64 {
        u64::from(location.blocks) * self.block_size()
    }

    /// Notes the outcome of an I/O: transport failures mark the drive down, success marks it up.
    pub fn note<T>(&self, result: &Result<T, ZoneError>) {
        match result {
            Ok(_) => {
                self.down.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if e.kind() == ZoneErrorKind::Unavailable {
                    self.down.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether the drive is usable for new writes.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}

/// The set of drives, by id.
#[derive(Debug, Clone)]
pub struct Drives {
    list: Vec<Arc<Drive>>,
}

impl Drives {
    /// Drives whose ids are their positions in `list`.
    pub fn new(list: Vec<Arc<Drive>>) -> Self {
        debug_assert!(list.iter().enumerate().all(|(i, d)| usize::from(d.id) == i));
        Drives { list }
    }

    /// A drive by id.
    pub fn get(&self, id: DriveId) -> Option<&Arc<Drive>> {
        self.list.get(usize::from(id))
    }

    /// The drive holding a location (locations come from the index, which only names known
    /// drives; an unknown id is reported as unavailable by callers).
    pub fn of(&self, location: &Location) -> Option<&Arc<Drive>> {
        self.get(location.drive)
    }

    /// All drives.
    pub fn all(&self) -> &[Arc<Drive>] {
        &self.list
    }

    /// Number of drives.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no drives.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Bytes a location occupies (0 for an unknown drive).
    pub fn bytes_of(&self, location: &Location) -> u64 {
        self.of(location).map_or(0, |d| d.bytes_of(location))
    }

    /// The zone of a location.
    pub fn zone_of(&self, location: &Location) -> Option<ZoneId> {
        self.of(location).map(|d| d.zone_of(location.lba))
    }
}
