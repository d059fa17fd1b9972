//! The shape of a zoned namespace: block size, zone size and capacity, zone count and the resource
//! limits of the ZNS command set (NVMe ZNS Command Set Specification 1.1, §3.4.1 "Zone Append
//! Size Limit", §4.1.5.1 Identify Namespace data structure: MAR, MOR, ZSZE, and Identify
//! Controller ZASL).

use std::fmt;

/// Why a proposed [`Geometry`] cannot describe a drive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid zone geometry: {0}")]
pub struct GeometryError(pub String);

/// Geometry of one zoned namespace. All sizes except `block_size` are in logical blocks.
///
/// Every zone is a sequential-write-required zone of `zone_size` blocks of which the first
/// `zone_capacity` are writable. Zones are laid out back to back: zone `i` starts at LBA
/// `i * zone_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Zone size in blocks (the distance between zone start LBAs).
    pub zone_size: u64,
    /// Writable blocks per zone; at most `zone_size`.
    pub zone_capacity: u64,
    /// Number of zones in the namespace.
    pub zone_count: u32,
    /// Maximum zones in the opened states at once (`None`: no limit).
    pub max_open: Option<u32>,
    /// Maximum zones in the opened or closed states at once (`None`: no limit).
    pub max_active: Option<u32>,
    /// Largest Zone Append in blocks (ZASL). A power of two number of bytes, at least 4 KiB.
    pub max_append_blocks: u32,
}

/// Most zones a drive may have (real ZNS drives have tens of thousands; the emulated drive
/// keeps a metadata entry per zone in memory).
pub const MAX_ZONES: u32 = 1 << 20;

impl Geometry {
    /// A geometry the Linux kernel accepts from a real drive: 4096-byte blocks, power-of-two zone
    /// size, `zone_count` zones of `zone_bytes` each, capacity equal to size, 14 open and active
    /// zones and a 1 MiB zone append limit.
    pub fn new(zone_count: u32, zone_bytes: u64) -> Self {
        let block_size = 4096u32;
        let zone_size = zone_bytes / u64::from(block_size);
        Geometry {
            block_size,
            zone_size,
            zone_capacity: zone_size,
            zone_count,
            max_open: Some(14),
            max_active: Some(14),
            max_append_blocks: ((1u64 << 20) / u64::from(block_size)).min(zone_size.max(1)) as u32,
        }
    }

    /// Checks every rule a drive's geometry must satisfy, naming the first one broken.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let fail = |msg: String| Err(GeometryError(msg));
        if self.block_size != 512 && self.block_size != 4096 {
            return fail(format!(
                "block size {} is neither 512 nor 4096",
                self.block_size
            ));
        }
        if self.zone_size == 0 {
            return fail("zone size is zero".into());
        }
        if self.zone_capacity == 0 || self.zone_capacity > self.zone_size {
            return fail(format!(
                "zone capacity {} blocks must be between 1 and the zone size {}",
                self.zone_capacity, self.zone_size
            ));
        }
        if self.zone_count == 0 {
            return fail("zone count is zero".into());
        }
        if self.zone_count > MAX_ZONES {
            return fail(format!(
                "{} zones is more than the {MAX_ZONES} a drive may have",
                self.zone_count
            ));
        }
        if self
            .zone_size
            .checked_mul(u64::from(self.zone_count))
            .and_then(|blocks| blocks.checked_mul(u64::from(self.block_size)))
            .is_none_or(|bytes| bytes > i64::MAX as u64)
        {
            return fail("the namespace is larger than a file can be".into());
        }
        let append_bytes = u64::from(self.max_append_blocks) * u64::from(self.block_size);
        if append_bytes < 4096 || !append_bytes.is_power_of_two() {
            return fail(format!(
                "zone append limit {append_bytes} bytes is not a power of two of at least 4096"
            ));
        }
        if let (Some(open), Some(active)) = (self.max_open, self.max_active)
            && open > active
        {
            return fail(format!(
                "max open zones {open} exceeds max active zones {active}"
            ));
        }
        if self.max_open == Some(0) || self.max_active == Some(0) {
            return fail("open and active zone limits must be at least 1".into());
        }
        Ok(())
    }

    /// Whether data laid out under `other` lies at the same places under this geometry: the
    /// same block size, zone size, zone capacity and zone count (the open, active and append
    /// limits may differ: they bound what is written next, not where what was written lies).
    pub fn same_layout(&self, other: &Geometry) -> bool {
        (
            self.block_size,
            self.zone_size,
            self.zone_capacity,
            self.zone_count,
        ) == (
            other.block_size,
            other.zone_size,
            other.zone_capacity,
            other.zone_count,
        )
    }

    /// Total number of logical blocks in the namespace (NSZE).
    pub fn total_blocks(&self) -> u64 {
        self.zone_size * u64::from(self.zone_count)
    }

    /// Total writable bytes over all zones.
    pub fn capacity_bytes(&self) -> u64 {
        self.zone_capacity * u64::from(self.zone_count) * u64::from(self.block_size)
    }

    /// Zone size in bytes.
    pub fn zone_bytes(&self) -> u64 {
        self.zone_size * u64::from(self.block_size)
    }

    /// Zone capacity in bytes.
    pub fn zone_capacity_bytes(&self) -> u64 {
        self.zone_capacity * u64::from(self.block_size)
    }

    /// Largest Zone Append in bytes.
    pub fn max_append_bytes(&self) -> u64 {
        u64::from(self.max_append_blocks) * u64::from(self.block_size)
    }

    /// Index of the zone holding `lba`, or `None` past the end of the namespace.
    pub fn zone_index(&self, lba: u64) -> Option<u32> {
        let index = lba / self.zone_size;
        (index < u64::from(self.zone_count)).then_some(index as u32)
    }

    /// First LBA of zone `index`.
    pub fn zone_start(&self, index: u32) -> u64 {
        u64::from(index) * self.zone_size
    }

    /// Converts a byte count to blocks, if it is a whole number of blocks.
    pub fn blocks_of(&self, bytes: usize) -> Option<u64> {
        let bs = self.block_size as usize;
        bytes.is_multiple_of(bs).then_some((bytes / bs) as u64)
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |v: Option<u32>| v.map_or("unlimited".to_string(), |n| n.to_string());
        write!(
            f,
            "{} zones of {} KiB (capacity {} KiB), {}-byte blocks, max open {}, max active {}, \
             append limit {} KiB",
            self.zone_count,
            self.zone_bytes() / 1024,
            self.zone_capacity_bytes() / 1024,
            self.block_size,
            limit(self.max_open),
            limit(self.max_active),
            self.max_append_bytes() / 1024
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_is_valid_and_power_of_two() {
        let g = Geometry::new(16, 64 << 20);
        g.validate().unwrap();
        assert!(g.zone_size.is_power_of_two());
        assert_eq!(g.total_blocks(), 16 * 16384);
        assert_eq!(g.max_append_bytes(), 1 << 20);
    }

    #[test]
    fn capacity_larger_than_size_is_rejected() {
        let mut g = Geometry::new(4, 1 << 20);
        g.zone_capacity = g.zone_size + 1;
        assert!(g.validate().unwrap_err().0.contains("capacity"));
    }

    #[test]
    fn odd_block_size_and_append_limit_are_rejected() {
        let mut g = Geometry::new(4, 1 << 20);
        g.block_size = 1000;
        assert!(g.validate().is_err());
        let mut g = Geometry::new(4, 1 << 20);
        g.max_append_blocks = 3;
        assert!(g.validate().is_err());
    }

    #[test]
    fn zone_index_stops_at_the_end() {
        let g = Geometry::new(4, 1 << 20);
        assert_eq!(g.zone_index(0), Some(0));
        assert_eq!(g.zone_index(g.zone_size * 4 - 1), Some(3));
        assert_eq!(g.zone_index(g.zone_size * 4), None);
    }
}
