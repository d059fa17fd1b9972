//! The read gate: GC must not reset a zone while a read that looked up a location in it before
//! the relocation was committed is still running. Reads hold a ticket for the epoch they began
//! in; GC advances the epoch after committing relocations and waits for older tickets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    readers: BTreeMap<u64, usize>,
}

/// The gate.
#[derive(Debug, Default, Clone)]
pub struct ReadGate {
    state: Arc<Mutex<State>>,
}

/// A read in progress; dropping it ends the read.
#[derive(Debug)]
pub struct Ticket {
    gate: ReadGate,
    epoch: u64,
}

impl ReadGate {
    /// Begins a read.
    pub fn enter(&self) -> Ticket {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        *s.readers.entry(epoch).or_insert(0) += 1;
        Ticket {
            gate: self.clone(),
            epoch,
        }
    }

    /// Starts a new epoch; returns the one that ended.
    pub fn advance(&self) -> u64 {
        let mut s = self.state.lock();
        s.epoch += 1;
        s.epoch - 1
    }

    /// Waits until no read from `epoch` or before is running, or `limit` passes (a stalled
    /// client must not stop GC forever; its read then fails its checks and is retried).
    pub async fn drain(&self, epoch: u64, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let busy = self
                .state
                .lock()
                .readers
                .range(..=epoch)
                .any(|(_, &n)| n > 0);
            if !busy {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        if let Some(n) = s.readers.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                s.readers.remove(&self.epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_older_readers_only() {
        let gate = ReadGate::default();
        let old = gate.enter();
        let ended = gate.advance();
        let _new = gate.enter();
        assert!(!gate.drain(ended, Duration::from_millis(20)).await);
        drop(old);
        assert!(gate.drain(ended, Duration::from_millis(20)).await);
    }
}
