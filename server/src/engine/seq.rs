//! Sequence numbers: unique, increasing across restarts. They order versions in the log (a
//! rebuild keeps the newest) and identify streams and uploads. Leases of a million numbers are
//! recorded durably before use, so numbers are never reused after a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rocksdb::WriteBatch;

use super::index::{Index, IndexResult, cf};

const LEASE: u64 = 1 << 20;
const KEY: &[u8] = b"seq_lease";

/// Hands out sequence numbers.
#[derive(Debug)]
pub struct SeqAllocator {
    index: Arc<Index>,
    next: AtomicU64,
    lease_end: Mutex<u64>,
}

impl SeqAllocator {
    /// Starts after everything any previous run may have used; `at_least` raises the floor
    /// (after a rebuild, above every number found in the log).
    pub fn open(index: Arc<Index>, at_least: u64) -> IndexResult<SeqAllocator> {
        let stored = index
            .get_raw(cf::META, KEY)?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(1);
        let start = stored.max(at_least).max(1);
        let alloc = SeqAllocator {
            index,
            next: AtomicU64::new(start),
            lease_end: Mutex::new(start),
        };
        alloc.extend(start)?;
        Ok(alloc)
    }

    fn extend(&self, from: u64) -> IndexResult<()> {
        let end = from + LEASE;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.index.cf(cf::META), KEY, end.to_le_bytes());
        self.index.write(batch, true)?;
        *self.lease_end.lock() = end;
        Ok(())
    }

    /// The next number.
    pub fn next(&self) -> IndexResult<u64> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let mut end = self.lease_end.lock();
        if n >= *end {
            let from = (*end).max(n);
            drop(end);
            self.extend(from)?;
            end = self.lease_end.lock();
            debug_assert!(n < *end);
        }
        Ok(n)
    }
}
