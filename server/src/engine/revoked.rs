//! Client writes that failed, or were refused, after their claiming record (commit, tombstone,
//! bucket, upload, part or upload-end record) reached a drive. The record stays there, dead,
//! until GC reclaims its zone. But after a crash, replay reads the part of each zone past its
//! settled prefix and applies the records it finds there whose index change was lost, and a
//! rebuild takes the newest record of every name: a record whose write the client was told
//! failed (a 503; a 412 of a conditional PUT that lost its race) must be taken for neither.
//! The client may have acted on the failure since (a DELETE of a key it believes absent writes
//! no tombstone; a lock taken with If-None-Match went to another writer).
//!
//! So each such record's sequence number is kept in the meta column family, with the zones
//! (and their reset generations) its copies may be in: written in the same batch as the group
//! that refused it, or at once when its append failed, so durable before the client hears of
//! the failure. Replay and rebuild pass over the records it names. It is dropped once every one
//! of those zones has been reset since, taking the records with it.
//!
//! A failed write revokes every claiming record of its number (a completion's commit and
//! upload-end records share one). A copy of one record that nothing holds any more revokes
//! that record's kind only: the other records of its number stay live.

use std::collections::BTreeMap;

use rocksdb::WriteBatch;

use super::codec::{Dec, DecodeError, Enc};
use super::index::{Index, IndexResult, cf};
use super::model::{ZoneId, ZoneStamp, get_stamps, put_stamps};
use super::record::Kind;

/// What one sequence number's revocation kills, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocation {
    /// The zones the records may be in, with their reset generations.
    pub zones: Vec<ZoneStamp>,
    /// The kinds of record revoked: `None` for every claiming record of the number (a failed
    /// write), or only these (copies of single records that nothing holds).
    pub kinds: Option<Vec<Kind>>,
}

impl Revocation {
    /// A failed write's: every claiming record of the number, in `zones`.
    pub fn whole(zones: Vec<ZoneStamp>) -> Self {
        Revocation { zones, kinds: None }
    }

    /// Only the records of `kind`, in `zones`.
    pub fn of_kind(kind: Kind, zones: Vec<ZoneStamp>) -> Self {
        Revocation {
            zones,
            kinds: Some(vec![kind]),
        }
    }

    /// Whether a record of `kind` with this number is dead. Data records are never: a failed
    /// write's data is garbage already, as nothing names it.
    pub fn covers(&self, kind: Kind) -> bool {
        kind != Kind::Data && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }

    /// This revocation and `other` (of the same number) together.
    pub fn merge(&mut self, other: Revocation) {
        self.zones.extend(other.zones);
        self.zones.sort();
        self.zones.dedup();
        self.kinds = match (self.kinds.take(), other.kinds) {
            (Some(mut mine), Some(theirs)) => {
                mine.extend(theirs);
                mine.sort();
                mine.dedup();
                Some(mine)
            }
            _ => None,
        };
    }

    /// Its value in the meta column family.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(1);
        put_stamps(&mut e, &self.zones);
        // Absent for a whole write's, as in revocations written before kinds were kept.
        if let Some(kinds) = &self.kinds {
            e.u8(u8::try_from(kinds.len()).unwrap_or(u8::MAX));
            for kind in kinds.iter().take(usize::from(u8::MAX)) {
                e.u8(*kind as u8);
            }
        }
        e.finish()
    }

    /// A revocation from its value.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec::new(bytes);
        d.version(1, "revocation")?;
        let zones = get_stamps(&mut d)?;
        let kinds = if d.is_empty() {
            None
        } else {
            let n = d.u8()?;
            let kinds = (0..n)
                .map(|_| {
                    let code = d.u8()?;
                    Kind::from_code(code)
                        .ok_or_else(|| DecodeError(format!("unknown record kind {code}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(kinds)
        };
        Ok(Revocation { zones, kinds })
    }
}

/// Revocations by sequence number.
pub type Revocations = BTreeMap<u64, Revocation>;

/// Whether `revocations` make the record of `kind` with number `seq` dead.
pub fn covers(revocations: &Revocations, seq: u64, kind: Kind) -> bool {
    revocations.get(&seq).is_some_and(|r| r.covers(kind))
}

/// Key prefix in the meta column family (followed by the sequence number, big-endian).
const KEY_PREFIX: &[u8] = b"revoked:";

/// The meta key that revokes the records of sequence number `seq`.
pub fn key(seq: u64) -> Vec<u8> {
    [KEY_PREFIX, &seq.to_be_bytes()[..]].concat()
}

/// `zones` stamped with their reset generations (`generation`), each once, in order.
pub fn stamps(
    zones: impl IntoIterator<Item = ZoneId>,
    generation: impl Fn(ZoneId) -> u64,
) -> Vec<ZoneStamp> {
    let mut stamps: Vec<ZoneStamp> = zones
        .into_iter()
        .map(|zone| ZoneStamp {
            zone,
            generation: generation(zone),
        })
        .collect();
    stamps.sort();
    stamps.dedup();
    stamps
}

/// The value of `revocation` added to the `earlier` value of its number's revocation, if any;
/// None where that one does not decode (it is never pruned, and revokes every record: left as
/// it is).
pub fn merged(earlier: Option<Vec<u8>>, revocation: Revocation) -> Option<Vec<u8>> {
    let all = match earlier {
        Some(v) => {
            let mut all = Revocation::decode(&v).ok()?;
            all.merge(revocation);
            all
        }
        None => revocation,
    };
    Some(all.encode())
}

/// Records at once (durably) that the records of sequence number `seq` that `revocation`
/// names are dead (adding to an earlier revocation of `seq`).
pub fn record(index: &Index, seq: u64, revocation: Revocation) -> IndexResult<()> {
    record_all(index, [(seq, revocation)])
}

/// [`record`] of several revocations, in one write.
pub fn record_all(
    index: &Index,
    revocations: impl IntoIterator<Item = (u64, Revocation)>,
) -> IndexResult<()> {
    let waiting = Pending::default();
    for (seq, revocation) in revocations {
        waiting.add(seq, revocation);
    }
    let mut batch = WriteBatch::default();
    for (seq, revocation) in waiting.take() {
        if let Some(value) = merged(index.get_raw(cf::META, &key(seq))?, revocation) {
            batch.put_cf(index.cf(cf::META), key(seq), value);
        }
    }
    index.write(batch, true)
}

/// Revocations the index did not take when their writes failed (a full disk, say): every
/// index write after carries them, until one lands. A group's batch records how far zones are
/// settled, which may pass the dead records only in a batch that also revokes them; so the
/// holds on a failed write's records are let go only after its revocation is here or durable.
/// (Should the server stop before any index write lands, a replay at the next start may apply
/// such a write: its client heard a 503 or 507, an outcome S3 clients retry or check.)
#[derive(Debug, Default)]
pub struct Pending(std::sync::Mutex<Revocations>);

impl Pending {
    /// Adds `revocation` of sequence number `seq` to those waiting.
    pub fn add(&self, seq: u64, revocation: Revocation) {
        let mut waiting = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.entry(seq) {
            std::collections::btree_map::Entry::Occupied(mut earlier) => {
                earlier.get_mut().merge(revocation)
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(revocation);
            }
        }
    }

    /// Every revocation waiting, taken out (put them back with [`Pending::add`] if the write
    /// carrying them fails).
    pub fn take(&self) -> Revocations {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of every revocation waiting (they stay: see [`Pending::remove_recorded`]).
    pub fn snapshot(&self) -> Revocations {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes the revocations in `recorded` (now durable) that still wait as they were (one
    /// that grew meanwhile stays, to be written whole).
    pub fn remove_recorded(&self, recorded: &Revocations) {
        let mut waiting = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (seq, revocation) in recorded {
            if waiting.get(seq) == Some(revocation) {
                waiting.remove(seq);
            }
        }
    }

    /// How many sequence numbers have revocations waiting.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no revocation waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every revocation by sequence number. (One whose value does not decode revokes every record
/// of its number and names no zones: it is kept.)
pub fn load(index: &Index) -> IndexResult<Revocations> {
    Ok(index
        .dump_prefix(cf::META, KEY_PREFIX)?
        .into_iter()
        .filter_map(|(k, v)| {
            let bytes: [u8; 8] = k.get(KEY_PREFIX.len()..)?.try_into().ok()?;
            Some((
                u64::from_be_bytes(bytes),
                Revocation::decode(&v).unwrap_or_default(),
            ))
        })
        .collect())
}

/// Drops the revocations whose zones have all been reset since (`generation` gives a zone's
/// current reset generation); returns how many.
pub fn prune(index: &Index, generation: impl Fn(ZoneId) -> u64) -> IndexResult<usize> {
    let mut batch = WriteBatch::default();
    let mut dropped = 0;
    for (seq, revocation) in load(index)? {
        let zones = &revocation.zones;
        if !zones.is_empty() && zones.iter().all(|z| generation(z.zone) != z.generation) {
            batch.delete_cf(index.cf(cf::META), key(seq));
            dropped += 1;
        }
    }
    if dropped > 0 {
        index.write(batch, true)?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(zone: u32, generation: u64) -> ZoneStamp {
        ZoneStamp {
            zone: ZoneId { drive: 1, zone },
            generation,
        }
    }

    #[test]
    fn waiting_revocations_of_one_number_add_up_and_keep_their_kinds() {
        let pending = Pending::default();
        pending.add(7, Revocation::of_kind(Kind::Commit, vec![stamp(1, 0)]));
        pending.add(7, Revocation::of_kind(Kind::Tombstone, vec![stamp(2, 3)]));
        pending.add(9, Revocation::whole(vec![stamp(1, 0)]));
        let taken = pending.take();
        assert!(pending.take().is_empty(), "taken out");
        let seven = &taken[&7];
        assert_eq!(seven.zones, vec![stamp(1, 0), stamp(2, 3)]);
        assert!(seven.covers(Kind::Commit) && seven.covers(Kind::Tombstone));
        assert!(
            !seven.covers(Kind::Upload),
            "one kind's revocations stay of their kinds"
        );
        assert!(taken[&9].covers(Kind::Upload));
    }

    #[test]
    fn revocations_are_kept_until_every_zone_of_theirs_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert!(load(&index).unwrap().is_empty());
        record(&index, 7, Revocation::whole(vec![stamp(2, 5)])).unwrap();
        record(&index, 7, Revocation::whole(vec![stamp(1, 0), stamp(2, 5)])).unwrap();
        record(&index, 1 << 40, Revocation::whole(vec![stamp(3, 0)])).unwrap();
        record(&index, 3, Revocation::whole(vec![])).unwrap();
        let mut other = WriteBatch::default();
        other.put_cf(index.cf(cf::META), b"revokedness", b"x");
        other.put_cf(index.cf(cf::META), b"settled:zz", b"x");
        index.write(other, true).unwrap();
        let all = load(&index).unwrap();
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), vec![3, 7, 1 << 40]);
        assert_eq!(all[&7], Revocation::whole(vec![stamp(1, 0), stamp(2, 5)]));

        // Zone 1 reset, zone 2 not yet: 7 stays; zone 3 reset: 1 << 40 goes; 3 names no
        // zone and stays.
        let generations = |z: ZoneId| match z.zone {
            1 | 3 => 1,
            2 => 5,
            _ => 0,
        };
        assert_eq!(prune(&index, generations).unwrap(), 1);
        assert_eq!(
            load(&index).unwrap().keys().copied().collect::<Vec<_>>(),
            vec![3, 7]
        );
        assert_eq!(prune(&index, |_| 9).unwrap(), 1);
        assert_eq!(
            load(&index).unwrap().keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn a_revocation_of_one_kind_leaves_the_other_records_of_its_number_live() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        record(
            &index,
            9,
            Revocation::of_kind(Kind::Commit, vec![stamp(1, 0)]),
        )
        .unwrap();
        let all = load(&index).unwrap();
        assert!(covers(&all, 9, Kind::Commit));
        assert!(
            !covers(&all, 9, Kind::UploadEnd),
            "the end record stays live"
        );
        assert!(!covers(&all, 9, Kind::Data));
        assert!(!covers(&all, 8, Kind::Commit));

        // Another kind adds to it; a failed write's revocation makes it whole.
        record(
            &index,
            9,
            Revocation::of_kind(Kind::Part, vec![stamp(2, 1)]),
        )
        .unwrap();
        let all = load(&index).unwrap();
        assert_eq!(all[&9].kinds, Some(vec![Kind::Commit, Kind::Part]));
        assert_eq!(all[&9].zones, vec![stamp(1, 0), stamp(2, 1)]);
        assert!(!covers(&all, 9, Kind::UploadEnd));
        record(&index, 9, Revocation::whole(vec![])).unwrap();
        let all = load(&index).unwrap();
        assert!(covers(&all, 9, Kind::UploadEnd));
        assert!(covers(&all, 9, Kind::Commit));
        assert!(!covers(&all, 9, Kind::Data));
        record(&index, 9, Revocation::of_kind(Kind::Part, vec![])).unwrap();
        assert_eq!(load(&index).unwrap()[&9].kinds, None, "whole stays whole");
    }

    #[test]
    fn revocations_written_before_kinds_were_kept_revoke_every_record() {
        // Version 1 with one zone and nothing after it: what earlier releases wrote.
        let old = Revocation::whole(vec![stamp(4, 2)]).encode();
        let mut e = Enc::new();
        e.u8(1);
        put_stamps(&mut e, &[stamp(4, 2)]);
        assert_eq!(old, e.finish());
        let decoded = Revocation::decode(&old).unwrap();
        assert!(decoded.covers(Kind::UploadEnd) && decoded.covers(Kind::Bucket));
        let scoped = Revocation::of_kind(Kind::Upload, vec![stamp(4, 2)]);
        assert_eq!(Revocation::decode(&scoped.encode()).unwrap(), scoped);
        let mut bad = scoped.encode();
        *bad.last_mut().unwrap() = 99;
        assert!(Revocation::decode(&bad).is_err());
    }
}
