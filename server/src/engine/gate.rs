//! The read gate: GC must not reset a zone while a read that looked up a location in it before
//! the relocation was committed is still running. Reads hold a ticket for the epoch they began
//! in; GC advances the epoch after committing relocations and waits for older tickets — but
//! not for ever: a ticket older than the wait's limit no longer holds a reset (a long download
//! must not stop GC; its later reads look their copies up again if moved). A reader given up
//! on in this way knows it: what it then reads may be from a zone reset and written again, and
//! a record's own CRCs cannot tell a real record from bytes a client stored to look like one,
//! so it takes what it read only if the index still names that copy once the read is done (GC
//! takes a copy out of the index before it resets the zone).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::model::ZoneId;

/// Readers of one epoch still running: how many began at each instant. (The newest running
/// one matters to a drain: one that ended, however recent, holds nothing.)
type Readers = BTreeMap<Instant, usize>;

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    readers: BTreeMap<u64, Readers>,
}

/// The gate.
#[derive(Debug, Default, Clone)]
pub struct ReadGate {
    state: Arc<Mutex<State>>,
    /// One past the newest epoch whose readers a drain went on without (0: none; see
    /// [`Ticket::given_up_on`]). Apart from `state`: every piece a read serves asks it, and
    /// only a read older than it looks at `given_up`.
    given_up_below: Arc<AtomicU64>,
    /// For each zone a drain went on without some readers before resetting it: one past the
    /// newest epoch of those readers (entries go once no reader that old is left).
    given_up: Arc<Mutex<HashMap<ZoneId, u64>>>,
}

/// A read in progress; dropping it ends the read.
#[derive(Debug)]
pub struct Ticket {
    gate: ReadGate,
    epoch: u64,
    began: Instant,
}

impl ReadGate {
    /// Begins a read.
    pub fn enter(&self) -> Ticket {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        let began = Instant::now();
        *s.readers
            .entry(epoch)
            .or_default()
            .entry(began)
            .or_default() += 1;
        Ticket {
            gate: self.clone(),
            epoch,
            began,
        }
    }

    /// Starts a new epoch; returns the one that ended.
    pub fn advance(&self) -> u64 {
        let mut s = self.state.lock();
        s.epoch += 1;
        s.epoch - 1
    }

    /// Waits until no read from `epoch` or before that began less than `limit` ago is running,
    /// before `zone` is reset. Returns whether every such read ended (false: some ran past the
    /// limit, and the caller goes on without them: they know it of `zone` alone).
    pub async fn drain(&self, epoch: u64, zone: ZoneId, limit: impl Fn() -> Duration) -> bool {
        loop {
            let limit = limit();
            let (young, old) = {
                let s = self.state.lock();
                let mut young = false;
                let mut old = false;
                for newest in s
                    .readers
                    .range(..=epoch)
                    .filter_map(|(_, r)| r.keys().next_back())
                {
                    if newest.elapsed() < limit {
                        young = true;
                    } else {
                        old = true;
                    }
                }
                (young, old)
            };
            if !young {
                if old {
                    let below = epoch.saturating_add(1);
                    let oldest = self.state.lock().readers.keys().next().copied();
                    let mut given_up = self.given_up.lock();
                    // No reader older than an entry's epoch is left: it tells nobody anything.
                    given_up.retain(|_, e| oldest.is_some_and(|o| o < *e));
                    let e = given_up.entry(zone).or_insert(0);
                    *e = (*e).max(below);
                    self.given_up_below.fetch_max(below, Ordering::SeqCst);
                }
                return !old;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Ticket {
    /// Whether GC went on without this read (it ran past a drain's limit) and reset `zone`,
    /// where the read may have looked copies up: that zone may have been written again since.
    pub fn given_up_on(&self, zone: ZoneId) -> bool {
        self.epoch < self.gate.given_up_below.load(Ordering::SeqCst)
            && self
                .gate
                .given_up
                .lock()
                .get(&zone)
                .is_some_and(|&below| self.epoch < below)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        if let Some(r) = s.readers.get_mut(&self.epoch) {
            if let Some(n) = r.get_mut(&self.began) {
                *n -= 1;
                if *n == 0 {
                    r.remove(&self.began);
                }
            }
            if r.is_empty() {
                s.readers.remove(&self.epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: ZoneId = ZoneId { drive: 0, zone: 3 };
    const OTHER: ZoneId = ZoneId { drive: 1, zone: 3 };

    #[tokio::test]
    async fn drain_waits_for_older_readers_only() {
        let gate = ReadGate::default();
        let old = gate.enter();
        let ended = gate.advance();
        let _new = gate.enter();
        assert!(!gate.drain(ended, ZONE, || Duration::from_millis(20)).await);
        drop(old);
        assert!(gate.drain(ended, ZONE, || Duration::from_millis(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_older_than_the_limit_no_longer_holds_a_drain() {
        let gate = ReadGate::default();
        let long = gate.enter();
        tokio::time::advance(Duration::from_secs(40)).await;
        let ended = gate.advance();
        assert!(!long.given_up_on(ZONE));
        let started = Instant::now();
        assert!(!gate.drain(ended, ZONE, || Duration::from_secs(30)).await);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a download that began 40 s ago does not hold GC for another 30 s"
        );
        assert!(
            long.given_up_on(ZONE),
            "the download knows it was given up on"
        );
        assert!(
            !long.given_up_on(OTHER),
            "of the zone reset alone: its reads elsewhere stand"
        );
        assert!(
            !gate.enter().given_up_on(ZONE),
            "a read begun since holds GC"
        );
        // A short read that began since (in the same epoch as a long one) and has ended holds
        // nothing: only running reads count.
        let _long_too = gate.enter();
        tokio::time::advance(Duration::from_secs(40)).await;
        drop(gate.enter());
        let ended = gate.advance();
        let started = Instant::now();
        assert!(!gate.drain(ended, ZONE, || Duration::from_secs(30)).await);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a read that ended made the drain wait for the old download"
        );
        // A young reader is waited for, until it too is older than the limit.
        let _young = gate.enter();
        let ended = gate.advance();
        let started = Instant::now();
        assert!(!gate.drain(ended, ZONE, || Duration::from_secs(30)).await);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }
}
