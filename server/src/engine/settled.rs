//! How far into a zone every record is settled: in the index, or known dead. Records land in a
//! zone back to back from its start, but their index changes are applied in any order, so each
//! settled record is noted with its place and the settled prefix grows over those that join it.
//! An append whose place is unknown (it failed, or was abandoned: it may have landed anyway)
//! leaves a gap the prefix never passes, which is right: whether a record is there is unknown.
//!
//! The committer records each zone's prefix in the index; after a crash, only the part of a
//! zone past it can hold records whose index change was lost (see [`super::replay`]).

use std::collections::BTreeMap;

use super::index;
use super::model::ZoneId;

/// Key in the meta column family of a zone's settled prefix (followed by the zone key).
const KEY_PREFIX: &[u8] = b"settled:";

/// The meta key of `zone`'s settled prefix.
pub fn key(zone: ZoneId) -> Vec<u8> {
    [KEY_PREFIX, &index::zone_key(zone)[..]].concat()
}

/// A zone's settled prefix, in blocks from the zone's start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    prefix: u64,
    /// Settled records beyond the prefix: start → end, in blocks from the zone's start.
    ahead: BTreeMap<u64, u64>,
    /// The prefix last handed to the committer.
    reported: Option<u64>,
}

impl Settled {
    /// A zone whose first `blocks` blocks are settled.
    pub fn at(blocks: u64) -> Settled {
        Settled {
            prefix: blocks,
            ahead: BTreeMap::new(),
            reported: None,
        }
    }

    /// The settled prefix.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// Notes that the record at `start` (blocks from the zone's start) of `blocks` blocks is
    /// settled.
    pub fn settle(&mut self, start: u64, blocks: u64) {
        let end = start.saturating_add(blocks);
        if start < self.prefix {
            // A record landed inside what was settled: the drive's write pointer went back (a
            // target restarted and lost appends it had not flushed, whose writes failed and
            // were settled as dead). What was settled from here on was of records gone: it is
            // forgotten, and the prefix goes back to this record's start (reading more after
            // a crash is safe; a prefix inside a record, or past records not settled, is not).
            self.prefix = start;
            self.ahead.clear();
        }
        self.ahead.insert(start, end);
        while let Some(end) = self.ahead.remove(&self.prefix) {
            self.prefix = end;
        }
    }

    /// Everything up to `blocks` is settled (the tail of a zone replayed at start).
    pub fn settle_through(&mut self, blocks: u64) {
        if blocks > self.prefix {
            self.prefix = blocks;
            self.ahead.retain(|&start, _| start >= blocks);
            while let Some(end) = self.ahead.remove(&self.prefix) {
                self.prefix = end;
            }
        }
    }

    /// The prefix if it changed since it was last taken, marking it taken.
    pub fn take_report(&mut self) -> Option<u64> {
        if self.reported == Some(self.prefix) {
            return None;
        }
        self.reported = Some(self.prefix);
        Some(self.prefix)
    }

    /// Takes back a report of `prefix` that was not recorded (its index write failed): the
    /// prefix is reported again when next asked.
    pub fn unreport(&mut self, prefix: u64) {
        if self.reported == Some(prefix) {
            self.reported = None;
        }
    }
}

/// Encodes a zone's settled prefix for the index, with the zone's reset generation (a prefix
/// from before a reset means nothing).
pub fn encode(generation: u64, prefix: u64) -> Vec<u8> {
    [generation.to_le_bytes(), prefix.to_le_bytes()].concat()
}

/// Decodes [`encode`]'s value: (generation, prefix).
pub fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let generation = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let prefix = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((generation, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_prefix_grows_over_records_settled_out_of_order_and_stops_at_a_gap() {
        let mut s = Settled::at(0);
        s.settle(4, 2);
        s.settle(2, 2);
        assert_eq!(s.prefix(), 0, "blocks 0..2 are not settled");
        s.settle(0, 2);
        assert_eq!(s.prefix(), 6);
        // 6..9 is an append whose place is unknown: the records after it wait behind it.
        s.settle(9, 1);
        assert_eq!(s.prefix(), 6);
        assert_eq!(s.take_report(), Some(6));
        assert_eq!(s.take_report(), None, "reported once");
        s.settle_through(9);
        assert_eq!(
            s.prefix(),
            10,
            "the replayed tail joins what was settled beyond it"
        );
        assert_eq!(s.take_report(), Some(10));
    }

    #[test]
    fn a_record_landing_inside_the_prefix_takes_it_back_to_its_start() {
        let mut s = Settled::at(0);
        s.settle(0, 4);
        s.settle(4, 8);
        // Settled ahead, then lost with the rest when the target restarted.
        s.settle(14, 2);
        assert_eq!(s.prefix(), 12);
        // The write pointer went back to 10: the next record lands at 10..13.
        s.settle(10, 3);
        assert_eq!(s.prefix(), 13, "from the new record's start, over it");
        // The lost record's old place does not let the prefix jump over 13..16, not settled.
        s.settle(16, 2);
        assert_eq!(s.prefix(), 13);
        s.settle(13, 3);
        assert_eq!(s.prefix(), 18);
        // A record entirely below the prefix takes it back too.
        s.settle(2, 1);
        assert_eq!(s.prefix(), 3);
    }

    #[test]
    fn encoded_prefixes_decode() {
        assert_eq!(decode(&encode(7, 1 << 40)), Some((7, 1 << 40)));
        assert_eq!(decode(&[1, 2, 3]), None);
    }

    proptest! {
        /// Records of any sizes settled in any order: the prefix is the end of the longest run
        /// of settled records from the start, never past an unsettled one.
        #[test]
        fn the_prefix_is_the_longest_settled_run(
            sizes in proptest::collection::vec(1u64..8, 1..40),
            order in any::<proptest::sample::Index>(),
            settled_mask in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let mut starts = Vec::new();
            let mut at = 0;
            for size in &sizes {
                starts.push(at);
                at += size;
            }
            let mut indices: Vec<usize> = (0..sizes.len()).collect();
            let rotate = order.index(indices.len());
            indices.rotate_left(rotate);
            let mut s = Settled::at(0);
            for &i in &indices {
                if settled_mask[i] {
                    s.settle(starts[i], sizes[i]);
                }
            }
            let run = (0..sizes.len()).take_while(|&i| settled_mask[i]).count();
            let expected = if run == sizes.len() { at } else { starts[run] };
            prop_assert_eq!(s.prefix(), expected);
        }
    }
}
