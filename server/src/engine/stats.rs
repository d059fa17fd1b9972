//! Counters of the engine: what users wrote, what GC moved, zones reset, faults seen.

use std::sync::atomic::{AtomicU64, Ordering};

use super::model::Class;

/// Engine counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Object bytes written by users (bodies).
    pub user_bytes: AtomicU64,
    /// Bytes appended for user requests (records, padded, all copies).
    pub user_written: AtomicU64,
    /// Bytes appended by GC relocations.
    pub gc_written: AtomicU64,
    /// Zones reset by GC.
    pub zones_reset: AtomicU64,
    /// Records relocated by GC.
    pub records_relocated: AtomicU64,
    /// Completed PUTs.
    pub puts: AtomicU64,
    /// Pieces of reads served by another copy after one failed (or was moved while read).
    pub read_failovers: AtomicU64,
    /// Records whose CRC did not match.
    pub crc_errors: AtomicU64,
    /// Writes stored with fewer copies than asked (quorum met).
    pub under_replicated_writes: AtomicU64,
}

impl EngineStats {
    /// Counts appended bytes.
    pub fn add_written(&self, class: Class, bytes: u64) {
        match class {
            Class::User => self.user_written.fetch_add(bytes, Ordering::Relaxed),
            Class::Gc => self.gc_written.fetch_add(bytes, Ordering::Relaxed),
        };
    }

    /// Write amplification: all bytes appended over bytes appended for users.
    pub fn write_amplification(&self) -> f64 {
        let user = self.user_written.load(Ordering::Relaxed);
        let gc = self.gc_written.load(Ordering::Relaxed);
        if user == 0 {
            1.0
        } else {
            (user + gc) as f64 / user as f64
        }
    }
}
