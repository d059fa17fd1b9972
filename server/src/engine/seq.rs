//! Sequence numbers: unique, increasing across restarts. They order versions in the log (a
//! rebuild keeps the newest) and identify streams and uploads. Leases of a million numbers are
//! recorded durably before use, so numbers are never reused after a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rocksdb::WriteBatch;

use super::index::{Index, IndexError, IndexResult, cf};

const LEASE: u64 = 1 << 20;

/// Past what no lease reaches: twice the largest number a record may carry
/// ([`super::record::MAX_SEQ`]), room enough for any rebuild's margin and lease above it,
/// and far below where adding to a number could overflow.
const CEILING: u64 = 2 * super::record::MAX_SEQ;
const KEY: &[u8] = b"seq_lease";

/// The end of the lease recorded in `index`: every number handed out with it is below. A value
/// that does not read is an error, never "none": starting again from 1 would hand out numbers
/// already used (new versions older than the ones they replace, upload and stream ids twice).
pub(crate) fn recorded_lease_end(index: &Index) -> IndexResult<Option<u64>> {
    index
        .get_raw(cf::META, KEY)?
        .map(|v| {
            <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| IndexError::Corrupt {
                    cf: cf::META,
                    detail: format!(
                        "the sequence number lease is {} bytes, not 8 (rebuild the index: `zonestore recover --rebuild-index`)",
                        v.len()
                    ),
                })
        })
        .transpose()
}

/// Records in `batch` a lease ending at `end` in `index`, so that its next start hands out
/// nothing below (an index rebuilt from the drives, told of what the old one handed out).
pub(crate) fn put_lease_end(batch: &mut WriteBatch, index: &Index, end: u64) {
    batch.put_cf(index.cf(cf::META), KEY, end.to_le_bytes());
}

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
        let stored = recorded_lease_end(&index)?.unwrap_or(1);
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
        let mut end = self.lease_end.lock();
        self.extend_locked(&mut end, from)
    }

    /// Records a lease ending `LEASE` after `from`, with the lease end locked: leases are
    /// recorded one at a time, so the durable end is never lower than one handed out.
    fn extend_locked(&self, end: &mut u64, from: u64) -> IndexResult<()> {
        let new_end = from
            .max(*end)
            .checked_add(LEASE)
            .filter(|&end| end <= CEILING)
            .ok_or_else(|| IndexError::Corrupt {
                cf: cf::META,
                detail: format!("sequence numbers would pass {CEILING}"),
            })?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.index.cf(cf::META), KEY, new_end.to_le_bytes());
        self.index.write(batch, true)?;
        *end = new_end;
        Ok(())
    }

    /// Raises the next number to at least `floor`: numbers found in the log beyond the
    /// recorded lease (an index put back from a copy) are never handed out again.
    pub fn raise_to(&self, floor: u64) -> IndexResult<()> {
        let mut end = self.lease_end.lock();
        self.next.fetch_max(floor, Ordering::SeqCst);
        if floor >= *end {
            self.extend_locked(&mut end, floor)?;
        }
        Ok(())
    }

    /// The next number.
    pub fn next(&self) -> IndexResult<u64> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let mut end = self.lease_end.lock();
        if n >= *end {
            self.extend_locked(&mut end, n)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_lease_covers_every_number_racing_threads_get() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(dir.path()).unwrap());
        let alloc = Arc::new(SeqAllocator::open(index.clone(), 1).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let alloc = alloc.clone();
                std::thread::spawn(move || {
                    (0..LEASE * 3 / 4)
                        .map(|_| alloc.next().unwrap())
                        .max()
                        .unwrap()
                })
            })
            .collect();
        let highest = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .max()
            .unwrap();
        let stored = u64::from_le_bytes(
            index
                .get_raw(cf::META, KEY)
                .unwrap()
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert!(stored > highest, "{stored} <= {highest}");
        // A restart starts past everything handed out.
        drop(alloc);
        let reopened = SeqAllocator::open(index, 1).unwrap();
        assert!(reopened.next().unwrap() > highest);
    }

    /// The largest number a record may carry, with a rebuild's margin for left-out drives on
    /// top, still opens the allocator (a record taken never stops a start or a rebuild); past
    /// its ceiling, a lease is refused rather than wrap.
    #[test]
    fn leases_reach_past_any_record_and_stop_before_wrapping() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(dir.path()).unwrap());
        let highest_record = super::super::record::MAX_SEQ;
        let alloc = SeqAllocator::open(index.clone(), highest_record + 1 + (1 << 40)).unwrap();
        assert!(alloc.next().unwrap() > highest_record);
        alloc.raise_to(highest_record + 1).unwrap();
        assert!(alloc.raise_to(CEILING).is_err());
        assert!(SeqAllocator::open(index, u64::MAX - 1).is_err());
    }

    /// A lease that does not read stops the start: numbers are never handed out again from 1.
    #[test]
    fn a_lease_that_does_not_read_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(dir.path()).unwrap());
        let mut batch = WriteBatch::default();
        batch.put_cf(index.cf(cf::META), KEY, [7u8; 5]);
        index.write(batch, true).unwrap();
        let e = SeqAllocator::open(index, 1).unwrap_err();
        assert!(matches!(e, IndexError::Corrupt { .. }), "{e}");
    }
}
