//! Counters of a target, for metrics and for tests that check the fabric carried the I/O.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Live counters of a target.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub(crate) connections: AtomicU64,
    pub(crate) connections_open: AtomicI64,
    pub(crate) commands: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) media_errors: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) in_flight: AtomicI64,
    pub(crate) keep_alive_timeouts: AtomicU64,
}

impl TargetStats {
    /// Counts a command in flight until the returned guard is dropped (also when its task is
    /// aborted, its connection gone).
    pub(crate) fn command_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

/// A command in flight, counted until dropped.
pub(crate) struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A copy of a target's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStatsSnapshot {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub connections_open: i64,
    /// Commands completed.
    pub commands: u64,
    /// Commands completed with an error status.
    pub errors: u64,
    /// Commands completed with a media error status (a drive's read or write failing): what
    /// the SMART / Health log reports as media errors.
    pub media_errors: u64,
    /// Connections ended by a transport error (a TermReq was sent or received).
    pub protocol_errors: u64,
    /// Bytes of data sent to hosts.
    pub bytes_read: u64,
    /// Bytes of data received from hosts.
    pub bytes_written: u64,
    /// Commands being executed now (queue depth over all queues).
    pub in_flight: i64,
    /// Controllers torn down because the host stopped sending keep-alives.
    pub keep_alive_timeouts: u64,
}

impl TargetStats {
    /// Takes a snapshot.
    pub fn snapshot(&self) -> TargetStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TargetStatsSnapshot {
            connections: get(&self.connections),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            commands: get(&self.commands),
            errors: get(&self.errors),
            media_errors: get(&self.media_errors),
            protocol_errors: get(&self.protocol_errors),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            keep_alive_timeouts: get(&self.keep_alive_timeouts),
        }
    }
}
