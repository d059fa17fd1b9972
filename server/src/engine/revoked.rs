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

use std::collections::BTreeMap;

use rocksdb::WriteBatch;

use super::codec::{Dec, DecodeError, Enc};
use super::index::{Index, IndexResult, cf};
use super::model::{ZoneId, ZoneStamp, get_stamps, put_stamps};

/// Revocations: sequence number → the zones its records may be in.
pub type Revocations = BTreeMap<u64, Vec<ZoneStamp>>;

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

/// The value of a revocation: the zones the records may be in.
pub fn encode(zones: &[ZoneStamp]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u8(1);
    put_stamps(&mut e, zones);
    e.finish()
}

/// The zones of a revocation's value.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<ZoneStamp>, DecodeError> {
    let mut d = Dec::new(bytes);
    d.version(1, "revocation")?;
    get_stamps(&mut d)
}

/// Records at once (durably) that the records of sequence number `seq`, which may be in
/// `zones`, are dead (adding to the zones of an earlier revocation of `seq`).
pub fn record(index: &Index, seq: u64, zones: &[ZoneStamp]) -> IndexResult<()> {
    let mut all = index
        .get_raw(cf::META, &key(seq))?
        .and_then(|v| decode(&v).ok())
        .unwrap_or_default();
    all.extend_from_slice(zones);
    all.sort();
    all.dedup();
    let mut batch = WriteBatch::default();
    batch.put_cf(index.cf(cf::META), key(seq), encode(&all));
    index.write(batch, true)
}

/// Every revocation: sequence number → the zones its records may be in. (One whose value does
/// not decode names no zones: it is kept.)
pub fn load(index: &Index) -> IndexResult<Revocations> {
    Ok(index
        .dump_prefix(cf::META, KEY_PREFIX)?
        .into_iter()
        .filter_map(|(k, v)| {
            let bytes: [u8; 8] = k.get(KEY_PREFIX.len()..)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), decode(&v).unwrap_or_default()))
        })
        .collect())
}

/// Drops the revocations whose zones have all been reset since (`generation` gives a zone's
/// current reset generation); returns how many.
pub fn prune(index: &Index, generation: impl Fn(ZoneId) -> u64) -> IndexResult<usize> {
    let mut batch = WriteBatch::default();
    let mut dropped = 0;
    for (seq, zones) in load(index)? {
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
    fn revocations_are_kept_until_every_zone_of_theirs_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert!(load(&index).unwrap().is_empty());
        record(&index, 7, &[stamp(2, 5)]).unwrap();
        record(&index, 7, &[stamp(1, 0), stamp(2, 5)]).unwrap();
        record(&index, 1 << 40, &[stamp(3, 0)]).unwrap();
        record(&index, 3, &[]).unwrap();
        let mut other = WriteBatch::default();
        other.put_cf(index.cf(cf::META), b"revokedness", b"x");
        other.put_cf(index.cf(cf::META), b"settled:zz", b"x");
        index.write(other, true).unwrap();
        let all = load(&index).unwrap();
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), vec![3, 7, 1 << 40]);
        assert_eq!(all[&7], vec![stamp(1, 0), stamp(2, 5)]);

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
}
