//! Counters of the engine: what users wrote, what GC moved, zones reset, faults seen.

use std::sync::atomic::{AtomicU64, Ordering};

use super::model::Class;

/// Who appended a record (for the counters; placement goes by its [`Class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A client's request.
    User,
    /// GC relocating live records.
    Gc,
    /// Repair, a drain or scrub making a copy again.
    Repair,
}

impl Writer {
    /// Where what it appends is placed: copies GC or repair make go with the cold data.
    pub fn class(self) -> Class {
        match self {
            Writer::User => Class::User,
            Writer::Gc | Writer::Repair => Class::Gc,
        }
    }
}

/// Engine counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Object bytes written by users (bodies).
    pub user_bytes: AtomicU64,
    /// Bytes appended for user requests (records, padded, all copies).
    pub user_written: AtomicU64,
    /// Bytes appended by GC relocations.
    pub gc_written: AtomicU64,
    /// Bytes appended by repair, drains and scrub (copies made again): not GC's, and not in the
    /// write amplification, which is GC's cost.
    pub repair_written: AtomicU64,
    /// Zones reset by GC.
    pub zones_reset: AtomicU64,
    /// Records relocated by GC.
    pub records_relocated: AtomicU64,
    /// Completed PUTs.
    pub puts: AtomicU64,
    /// Pieces of reads served by another copy after one failed (or was moved while read).
    pub read_failovers: AtomicU64,
    /// Pieces of reads for which a second copy was read because the first was slow.
    pub read_hedges: AtomicU64,
    /// Records whose CRC did not match.
    pub crc_errors: AtomicU64,
    /// Writes stored with fewer copies than asked (quorum met).
    pub under_replicated_writes: AtomicU64,
    /// Multipart uploads aborted for being left unfinished too long (see [`super::stale_uploads`]).
    pub uploads_expired: AtomicU64,
}

impl EngineStats {
    /// Counts appended bytes, by who appended them.
    pub fn add_written(&self, by: Writer, bytes: u64) {
        match by {
            Writer::User => self.user_written.fetch_add(bytes, Ordering::Relaxed),
            Writer::Gc => self.gc_written.fetch_add(bytes, Ordering::Relaxed),
            Writer::Repair => self.repair_written.fetch_add(bytes, Ordering::Relaxed),
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
