//! The drive registry in the index: every drive the engine has used, by name, in drive-id
//! order (ids are positions, so they stay stable across restarts and configuration changes),
//! with each drive's geometry (so that a drive unreachable at start can be attached later).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use zns::{Geometry, ZonedDevice};

use super::DriveSpec;
use super::codec;
use super::drives::{Drive, Drives};
use super::error::{EngineError, EngineResult};
use super::index::{Index, cf};
use super::located;

const DRIVES_KEY: &[u8] = b"drives";

/// Meta key: the write sequence number from which what records say they replaced can be
/// trusted (see [`replacement_floor`]).
const REPLACEMENT_FLOOR_KEY: &[u8] = b"replacement-floor";
/// META key prefix of a drive's geometry (followed by the drive's name).
const GEOMETRY_PREFIX: &[u8] = b"geometry:";
/// META key prefix of the mark of a drive registered but not yet accepted (followed by the
/// drive's name; see [`check_first_use`]).
const FIRST_USE_PREFIX: &[u8] = b"first-use:";
/// META key prefix of the mark of a drive a rebuild left out (followed by the drive's name; see
/// [`vouch_for`]).
const VOUCHED_PREFIX: &[u8] = b"vouched:";
/// META key prefix of a drive's identity (followed by the drive's name).
const IDENTITY_PREFIX: &[u8] = b"identity:";

/// Checks that the drive answering under a registered name is the drive the index knows by
/// it (its [`ZonedDevice::identity`]): a storage node started on an empty data directory (its
/// disk not mounted) or given another disk must not pass for the drive that holds the data.
/// The first identity a drive reports is recorded when `record` (the caller found the drive
/// holding what the index expects: a blank impostor met before any identity was recorded must
/// not become the drive's identity). A mismatch marks the drive foreign.
pub(crate) fn confirm_identity(index: &Index, drive: &Drive, record: bool) -> EngineResult<()> {
    let Some(found) = drive.device.identity() else {
        drive
            .foreign
            .store(false, std::sync::atomic::Ordering::SeqCst);
        return Ok(());
    };
    let key = identity_key(&drive.name);
    match index.get_raw(cf::META, &key)? {
        Some(known) if known == found => {}
        Some(known) => {
            drive
                .foreign
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(EngineError::WrongDrive {
                drive: drive.name.clone(),
                known: super::hex_encode(&known),
                found: super::hex_encode(&found),
            });
        }
        None if !record => {}
        None => {
            // One drive under two names would count as two copies of everything on it.
            for other in registry(index)? {
                if other != drive.name
                    && index.get_raw(cf::META, &identity_key(&other))?.as_deref()
                        == Some(&found[..])
                {
                    drive
                        .foreign
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(EngineError::InvalidArgument(format!(
                        "drive {} is the drive registered as {other} (identity {}): one drive cannot be two",
                        drive.name,
                        super::hex_encode(&found)
                    )));
                }
            }
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(index.cf(cf::META), key, found);
            index.write(batch, true)?;
        }
    }
    drive
        .foreign
        .store(false, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Refuses a drive this index has never used (registered, never yet accepted by a survey)
/// that holds data: another gateway's drive, whose zones this one would otherwise take for its
/// own and write, collect and reset under the other's index; or the drive of an index that was
/// lost, which `zonestore recover --rebuild-index` takes in whole. The drive is marked foreign
/// (left out, looked at again now and then).
pub(crate) fn check_first_use(
    index: &Index,
    drive: &Drive,
    zones: &[zns::ZoneDescriptor],
) -> EngineResult<()> {
    if index
        .get_raw(cf::META, &first_use_key(&drive.name))?
        .is_none()
    {
        return Ok(());
    }
    let used = zones
        .iter()
        .filter(|z| !matches!(z.state, zns::ZoneState::Empty | zns::ZoneState::Offline))
        .count();
    if used == 0 {
        return Ok(());
    }
    drive
        .foreign
        .store(true, std::sync::atomic::Ordering::SeqCst);
    Err(EngineError::ForeignData {
        drive: drive.name.clone(),
        zones: used,
    })
}

/// Notes that the index has accepted `drive` (surveyed it, or read it whole in a rebuild):
/// what it holds from now on is this index's (see [`check_first_use`]).
pub(crate) fn accept_first_use(index: &Index, drive: &Drive) -> EngineResult<()> {
    forget(index, first_use_key(&drive.name))
}

/// Deletes the META key `key`, durably, if it is there (no write when it is not).
pub(crate) fn forget(index: &Index, key: Vec<u8>) -> EngineResult<()> {
    if index.get_raw(cf::META, &key)?.is_some() {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(index.cf(cf::META), key);
        index.write(batch, true)?;
    }
    Ok(())
}

/// Refuses a drive that cannot keep a zone open for client writes and another for GC at once:
/// placement would open both, and every write into the second would fail with Too Many Open
/// (or Active) Zones.
fn check_zone_limits(name: &str, geometry: &zns::Geometry) -> EngineResult<()> {
    for (limit, what) in [(geometry.max_open, "open"), (geometry.max_active, "active")] {
        if let Some(n) = limit.filter(|&n| n < 2) {
            return Err(EngineError::InvalidArgument(format!(
                "drive {name} allows {n} {what} zone at a time; Zonestore needs 2 (one for client writes, one for GC)"
            )));
        }
    }
    Ok(())
}

/// `device`, registered as `name`, if it lays its zones out as the index recorded (see
/// [`Geometry::same_layout`]); otherwise a stand-in that is never available, with the recorded
/// geometry, and `true` (the drive is foreign): the zone accounts of what the index holds on
/// the drive keep meaning the recorded drive's zones, and nothing is read from or written to
/// the other. (A remote drive is held to its recorded geometry by its host, which waits for the
/// right one; what a reconnect finds, the host checks too.)
fn laid_out_as_recorded(
    index: &Index,
    name: &str,
    device: Arc<dyn ZonedDevice>,
) -> EngineResult<(Arc<dyn ZonedDevice>, bool)> {
    let Some(known) = recorded_geometry(index, name)? else {
        return Ok((device, false));
    };
    let found = device.geometry();
    if found.same_layout(&known) {
        return Ok((device, false));
    }
    tracing::error!(
        "{}",
        EngineError::WrongGeometry {
            drive: name.to_string(),
            known,
            found,
        }
    );
    let stand_in = zns::AbsentDrive {
        geometry: known,
        why: "a drive of another geometry answers under its name",
    };
    Ok((Arc::new(stand_in), true))
}

/// Matches configured drives with the registry in the index, giving each a stable id.
pub(crate) fn register_drives(index: &Index, specs: Vec<DriveSpec>) -> EngineResult<Drives> {
    let mut names = registry(index)?;

    let mut by_id: Vec<Option<Arc<dyn ZonedDevice>>> = vec![None; names.len()];
    // Drives new to the index: they must come empty (see [`check_first_use`]).
    let mut first_use = Vec::new();
    // Registered drives found laid out otherwise (see [`laid_out_as_recorded`]): foreign.
    let mut laid_out_otherwise = Vec::new();
    for spec in specs {
        check_zone_limits(&spec.name, &spec.device.geometry())?;
        if spec.device.is_available() && spec.device.identity().is_none() {
            tracing::warn!(
                drive = %spec.name,
                "the drive reports no identity (its namespace has no NGUID): another drive answering in its place is told apart only by its geometry"
            );
        }
        match names.iter().position(|n| *n == spec.name) {
            Some(i) => {
                // A rebuild's word for a drive it left out is spent once the drive is
                // registered (it was, or is now): none may let in a drive of that name later.
                forget(index, vouched_key(&spec.name))?;
                let (device, otherwise) = laid_out_as_recorded(index, &spec.name, spec.device)?;
                if otherwise {
                    laid_out_otherwise.push(i);
                }
                by_id[i] = Some(device);
            }
            None => {
                first_use.push(spec.name.clone());
                names.push(spec.name);
                by_id.push(Some(spec.device));
            }
        }
    }
    // A registered drive left out of the configuration may go only if it holds nothing live
    // (drained, or never used): it keeps its id, as a drive that is gone.
    let mut removed = vec![false; names.len()];
    if by_id.iter().any(Option::is_none) {
        let (live, records) = held_by_drive(index, names.len())?;
        for (i, device) in by_id.iter_mut().enumerate() {
            if device.is_some() {
                continue;
            }
            if live[i] > 0 || records[i] > 0 {
                return Err(EngineError::InvalidArgument(format!(
                    "drive {} holds {} live bytes in {} records but is not configured: configure it again, or drain it (`zonestore admin drain {}`) and remove it once nothing is left on it",
                    names[i], live[i], records[i], names[i]
                )));
            }
            let geometry =
                recorded_geometry(index, &names[i])?.unwrap_or_else(|| Geometry::new(0, 1 << 20));
            tracing::info!(drive = %names[i], "drive holds nothing and is no longer configured: removed");
            // Stands in for it: never available, so nothing is placed on it or read from it.
            *device = Some(Arc::new(zns::AbsentDrive {
                geometry,
                why: "the drive was removed from the configuration",
            }));
            removed[i] = true;
        }
    }
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(index.cf(cf::META), DRIVES_KEY, encode_registry(&names));
    for ((name, device), removed) in names.iter().zip(&by_id).zip(&removed) {
        // (Laid out as recorded: a drive laid out otherwise stands in with the recorded
        // geometry. Its limits may have changed, a target restarted with other flags: those are
        // taken.)
        if let (Some(device), false) = (device, removed) {
            batch.put_cf(
                index.cf(cf::META),
                geometry_key(name),
                encode_geometry(&device.geometry()),
            );
        }
    }
    for name in first_use {
        // A drive a rebuild left out is this index's all the same.
        let vouched = vouched_key(&name);
        if index.get_raw(cf::META, &vouched)?.is_some() {
            batch.delete_cf(index.cf(cf::META), vouched);
        } else {
            batch.put_cf(index.cf(cf::META), first_use_key(&name), []);
        }
    }
    index.write(batch, true)?;
    let list = names
        .into_iter()
        .zip(by_id)
        .zip(removed)
        .enumerate()
        .filter_map(|(i, ((name, device), removed))| {
            let mut drive = Drive::new(i as u16, name, device?);
            drive.removed = removed;
            if laid_out_otherwise.contains(&i) {
                drive
                    .foreign
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Some(Arc::new(drive))
        })
        .collect();
    Ok(Drives::new(list))
}

/// The registry's stored form: the drive names in drive-id order.
fn encode_registry(names: &[String]) -> Vec<u8> {
    let mut e = codec::Enc::new();
    e.u32(names.len() as u32);
    for n in names {
        e.str(n);
    }
    e.finish()
}

/// Registers `names` in a new index, in that order (ids 0, 1, ...), before its drives are
/// attached: a rebuilt index keeps the ids the old one gave, also those of drives removed
/// since (what refers to drives by id, the list of failed writes, stays right).
pub(crate) fn seed_registry(index: &Index, names: &[String]) -> EngineResult<()> {
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(index.cf(cf::META), DRIVES_KEY, encode_registry(names));
    index.write(batch, true)?;
    Ok(())
}

/// The drive names in an index's registry, in drive-id order.
fn registry(index: &Index) -> EngineResult<Vec<String>> {
    match index.get_raw(cf::META, DRIVES_KEY)? {
        Some(v) => {
            let mut d = codec::Dec::new(&v);
            let n = d.count(4).map_err(|e| EngineError::Internal(e.0))?;
            (0..n)
                .map(|_| d.str())
                .collect::<Result<_, _>>()
                .map_err(|e| EngineError::Internal(e.0))
        }
        None => Ok(Vec::new()),
    }
}

fn geometry_key(drive: &str) -> Vec<u8> {
    [GEOMETRY_PREFIX, drive.as_bytes()].concat()
}

/// The geometry the index recorded for drive `name`, if it did.
fn recorded_geometry(index: &Index, name: &str) -> EngineResult<Option<Geometry>> {
    index
        .get_raw(cf::META, &geometry_key(name))?
        .map(|raw| decode_geometry(&raw).map_err(|e| EngineError::Internal(e.0)))
        .transpose()
}

fn encode_geometry(g: &Geometry) -> Vec<u8> {
    let mut e = codec::Enc::new();
    e.u8(1)
        .u32(g.block_size)
        .u64(g.zone_size)
        .u64(g.zone_capacity)
        .u32(g.zone_count)
        .u32(g.max_open.unwrap_or(u32::MAX))
        .u32(g.max_active.unwrap_or(u32::MAX))
        .u32(g.max_append_blocks);
    e.finish()
}

fn decode_geometry(bytes: &[u8]) -> Result<Geometry, codec::DecodeError> {
    let mut d = codec::Dec::new(bytes);
    d.version(1, "drive geometry")?;
    let limit = |v: u32| (v != u32::MAX).then_some(v);
    Ok(Geometry {
        block_size: d.u32()?,
        zone_size: d.u64()?,
        zone_capacity: d.u64()?,
        zone_count: d.u32()?,
        max_open: limit(d.u32()?),
        max_active: limit(d.u32()?),
        max_append_blocks: d.u32()?,
    })
}

/// What the index knows of a drive before it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownDrive {
    /// Its geometry.
    pub geometry: Geometry,
    /// Its identity (see [`ZonedDevice::identity`]), once recorded.
    pub identity: Option<[u8; 16]>,
}

/// Live bytes and records the index names on each of the first `count` drives (by id): both
/// the zone accounts and the index entries themselves, which must agree that a drive is empty.
fn held_by_drive(index: &Index, count: usize) -> EngineResult<(Vec<u64>, Vec<u64>)> {
    let mut live = vec![0u64; count];
    for (zone, account) in index.zones()? {
        if let Some(l) = live.get_mut(usize::from(zone.drive)) {
            *l += account.valid_bytes;
        }
    }
    let mut records = vec![0u64; count];
    located::scan(index, |entry| {
        for copy in &entry.copies {
            if let Some(r) = records.get_mut(usize::from(copy.drive)) {
                *r += 1;
            }
        }
        true
    })?;
    Ok((live, records))
}

/// The drives the index in `index_dir` registers that hold anything it names (live bytes or
/// records), by name.
pub fn drives_holding_records(index_dir: &Path) -> EngineResult<Vec<String>> {
    if !index_dir.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    let index = Index::open(index_dir)?;
    let names = registry(&index)?;
    let (live, records) = held_by_drive(&index, names.len())?;
    Ok(names
        .into_iter()
        .enumerate()
        .filter(|(i, _)| live[*i] > 0 || records[*i] > 0)
        .map(|(_, name)| name)
        .collect())
}

/// Every drive the index in `index_dir` has seen, by drive name (empty when there is no index
/// yet), so that a drive that cannot be reached at start can still be attached later without
/// losing its id, and a different drive answering in its place is refused from the start.
pub fn known_drives(index_dir: &Path) -> EngineResult<HashMap<String, KnownDrive>> {
    let mut known = HashMap::new();
    if !index_dir.join("CURRENT").exists() {
        return Ok(known);
    }
    let index = Index::open(index_dir)?;
    for name in registry(&index)? {
        if let Some(geometry) = recorded_geometry(&index, &name)? {
            let identity = index
                .get_raw(cf::META, &identity_key(&name))?
                .and_then(|raw| raw.try_into().ok());
            known.insert(name, KnownDrive { geometry, identity });
        }
    }
    Ok(known)
}

/// Notes in a rebuilt index that the drives `names`, left out of the rebuild (unreachable),
/// are its own: registered when they are next configured, they are not refused for the data
/// they hold (see [`check_first_use`]), and what they hold is replayed for copies only.
pub(crate) fn vouch_for(index: &Index, names: &[String]) -> EngineResult<()> {
    let mut batch = rocksdb::WriteBatch::default();
    for name in names {
        batch.put_cf(index.cf(cf::META), vouched_key(name), []);
    }
    index.write(batch, true)?;
    Ok(())
}

fn vouched_key(drive: &str) -> Vec<u8> {
    [VOUCHED_PREFIX, drive.as_bytes()].concat()
}

fn first_use_key(drive: &str) -> Vec<u8> {
    [FIRST_USE_PREFIX, drive.as_bytes()].concat()
}

fn identity_key(drive: &str) -> Vec<u8> {
    [IDENTITY_PREFIX, drive.as_bytes()].concat()
}

/// Key in the meta column family of the lowest write quorum the engine ever ran with.
const LOWEST_QUORUM_KEY: &[u8] = b"lowest-write-quorum";

/// Notes that the engine runs with write quorum `quorum` (kept: the lowest ever). A write
/// acknowledged with that few copies may have them all on that many drives: what a rebuild
/// without some drives must go by, whatever the configuration says now.
pub(crate) fn note_write_quorum(index: &Index, quorum: usize) -> EngineResult<()> {
    let lowest = lowest_quorum_in(index)?;
    if lowest.is_some_and(|l| l <= quorum) {
        return Ok(());
    }
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(
        index.cf(cf::META),
        LOWEST_QUORUM_KEY,
        (quorum as u64).to_be_bytes(),
    );
    index.write(batch, true)?;
    Ok(())
}

fn lowest_quorum_in(index: &Index) -> EngineResult<Option<usize>> {
    Ok(index
        .get_raw(cf::META, LOWEST_QUORUM_KEY)?
        .and_then(|raw| <[u8; 8]>::try_from(raw.as_slice()).ok())
        .map(|b| u64::from_be_bytes(b) as usize))
}

/// The lowest write quorum the engine with its index in `index_dir` ever ran with, if it says
/// (every start notes its own).
pub fn lowest_write_quorum(index_dir: &Path) -> EngineResult<Option<usize>> {
    if !index_dir.join("CURRENT").exists() {
        return Ok(None);
    }
    lowest_quorum_in(&Index::open(index_dir)?)
}

/// Copies from the index in `old_dir` into the rebuilt one in `new_dir` what a scan of the
/// drives cannot tell: the lowest write quorum the engine ever ran with (what a later rebuild
/// without some drives must go by), how far sequence numbers were handed out (numbers whose
/// records GC has since removed, upload ids among them, must not be handed out again: a
/// client still holding an aborted upload's id would reach a new upload) and, when the rebuild
/// kept the old drive ids (`ids_kept`), which drives are being drained (else a drain would
/// stop unsaid, its drive taking writes again), and which of the drives the rebuild left out
/// (`left_out`, unread) the old index had never accepted (see [`check_first_use`]: a drive
/// refused as another gateway's stays refused until a rebuild reads it). Returns what was
/// carried over, for the operator.
pub fn carry_over(
    old_dir: &Path,
    new_dir: &Path,
    ids_kept: bool,
    left_out: &[String],
) -> EngineResult<Vec<&'static str>> {
    if !old_dir.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    let old = Index::open(old_dir)?;
    let new = Index::open(new_dir)?;
    let mut kept = vec![(LOWEST_QUORUM_KEY, "the lowest write quorum ever run with")];
    if ids_kept {
        kept.push((super::commit::DRAINING_KEY, "the drives being drained"));
    }
    let mut batch = rocksdb::WriteBatch::default();
    let mut carried = Vec::new();
    // (An old lease that does not read is left: the rebuild's numbers start above every one
    // the log holds; the rest still comes over.)
    if let Ok(Some(old_end)) = super::seq::recorded_lease_end(&old) {
        if super::seq::recorded_lease_end(&new)?.is_none_or(|end| end < old_end) {
            super::seq::put_lease_end(&mut batch, &new, old_end);
        }
        carried.push("how far sequence numbers were handed out");
    }
    for (key, what) in kept {
        if let Some(value) = old.get_raw(cf::META, key)? {
            batch.put_cf(new.cf(cf::META), key, value);
            carried.push(what);
        }
    }
    let mut unaccepted = false;
    for name in left_out {
        // What the old index knew of a drive the rebuild could not read: its geometry (so it
        // can be attached when it answers, and a local one missing is not made again empty)
        // and its identity (so another drive answering in its place is refused).
        for key in [geometry_key(name), identity_key(name)] {
            if new.get_raw(cf::META, &key)?.is_none()
                && let Some(value) = old.get_raw(cf::META, &key)?
            {
                batch.put_cf(new.cf(cf::META), key, value);
            }
        }
        let key = first_use_key(name);
        if old.get_raw(cf::META, &key)?.is_some() {
            batch.put_cf(new.cf(cf::META), key, []);
            batch.delete_cf(new.cf(cf::META), vouched_key(name));
            unaccepted = true;
        }
    }
    if unaccepted {
        carried.push("which drives left out were never accepted (refused as another's)");
    }
    new.write(batch, true)?;
    Ok(carried)
}

/// From which write sequence number the drive ids that records say they replaced (see the
/// record format's `replaces`) are this index's: an index rebuilt without the old one's
/// registry numbered the drives anew, and the ids in records written before may be other
/// drives' now. 0 when nothing was ever renumbered.
pub(crate) fn replacement_floor_of(index: &Index) -> EngineResult<u64> {
    Ok(index
        .get_raw(cf::META, REPLACEMENT_FLOOR_KEY)?
        .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
        .map_or(0, u64::from_be_bytes))
}

/// [`replacement_floor_of`] the index in `index_dir` (0 where there is none).
pub fn replacement_floor(index_dir: &Path) -> EngineResult<u64> {
    if !index_dir.join("CURRENT").exists() {
        return Ok(0);
    }
    replacement_floor_of(&Index::open(index_dir)?)
}

/// Records [`replacement_floor_of`] in a new index.
pub(crate) fn set_replacement_floor(index: &Index, floor: u64) -> EngineResult<()> {
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(
        index.cf(cf::META),
        REPLACEMENT_FLOOR_KEY,
        floor.to_be_bytes(),
    );
    index.write(batch, true)?;
    Ok(())
}

/// The drive names registered in the index in `index_dir` (in drive-id order), so that a
/// rebuilt index can give every drive the id it had (none where there is no index: a directory
/// without one, damaged perhaps, is never made into a new one here).
pub fn registered_drives(index_dir: &Path) -> EngineResult<Vec<String>> {
    if !index_dir.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    registry(&Index::open(index_dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::seq::SeqAllocator;

    /// A rebuild reads the old index to keep its drive ids; a directory holding something that
    /// is not an index (a damaged one) is read as none, never made into a new one in place.
    #[test]
    fn a_directory_without_an_index_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("000042.sst"),
            "what is left of a damaged index",
        )
        .unwrap();
        assert!(registered_drives(dir.path()).unwrap().is_empty());
        assert!(
            crate::engine::revoked_writes(dir.path())
                .unwrap()
                .is_empty()
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the directory was written to");
    }

    /// A rebuilt index keeps the old one's drains (only where the drive ids are the old ones)
    /// and its lowest write quorum: a scan of the drives tells neither.
    #[test]
    fn a_rebuilt_index_keeps_the_drains_lowest_quorum_and_sequence_numbers_of_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new, renumbered) = (
            dir.path().join("old"),
            dir.path().join("new"),
            dir.path().join("renumbered"),
        );
        {
            let index = Index::open(&old).unwrap();
            note_write_quorum(&index, 2).unwrap();
            note_write_quorum(&index, 1).unwrap();
            note_write_quorum(&index, 3).unwrap();
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(
                index.cf(cf::META),
                super::super::commit::DRAINING_KEY,
                [7u8, 0],
            );
            index.write(batch, true).unwrap();
            drop(Index::open(&new).unwrap());
            drop(Index::open(&renumbered).unwrap());
        }
        // The old index handed out numbers far beyond what the rebuilt one starts from.
        let handed_out = {
            let index = Arc::new(Index::open(&old).unwrap());
            let seq = SeqAllocator::open(index, 50_000_000).unwrap();
            seq.next().unwrap()
        };
        let rebuilt_starts_at = |dir: &Path| {
            let index = Arc::new(Index::open(dir).unwrap());
            SeqAllocator::open(index, 1).unwrap().next().unwrap()
        };
        assert!(rebuilt_starts_at(&new) < handed_out);
        assert_eq!(carry_over(&old, &new, true, &[]).unwrap().len(), 3);
        assert!(
            rebuilt_starts_at(&new) > handed_out,
            "no number is handed out again"
        );
        assert_eq!(lowest_write_quorum(&new).unwrap(), Some(1));
        let draining = |dir: &Path| {
            Index::open(dir)
                .unwrap()
                .get_raw(cf::META, super::super::commit::DRAINING_KEY)
                .unwrap()
        };
        assert_eq!(draining(&new), Some(vec![7, 0]));
        assert_eq!(carry_over(&old, &renumbered, false, &[]).unwrap().len(), 2);
        assert_eq!(
            draining(&renumbered),
            None,
            "drive ids are not the old ones"
        );
        assert!(
            carry_over(&dir.path().join("none"), &new, true, &[])
                .unwrap()
                .is_empty()
        );
    }

    /// A drive the old index never accepted (refused as another gateway's) and a rebuild left
    /// out unread stays unaccepted in the rebuilt index; one the rebuild read does not.
    #[test]
    fn a_rebuild_keeps_a_drive_it_left_out_unaccepted_if_the_old_index_had() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        {
            let index = Index::open(&old).unwrap();
            let mut batch = rocksdb::WriteBatch::default();
            for name in ["read", "unread"] {
                batch.put_cf(index.cf(cf::META), first_use_key(name), []);
            }
            index.write(batch, true).unwrap();
            let index = Index::open(&new).unwrap();
            vouch_for(&index, &["unread".to_string()]).unwrap();
        }
        let carried = carry_over(&old, &new, true, &["unread".to_string()]).unwrap();
        assert!(
            carried.iter().any(|c| c.contains("never accepted")),
            "{carried:?}"
        );
        let index = Index::open(&new).unwrap();
        let has = |key: Vec<u8>| index.get_raw(cf::META, &key).unwrap().is_some();
        assert!(has(first_use_key("unread")));
        assert!(!has(vouched_key("unread")), "not vouched for any more");
        assert!(!has(first_use_key("read")));
    }

    #[test]
    fn a_drive_that_keeps_one_zone_open_at_a_time_is_refused_by_name() {
        let mut g = zns::Geometry::new(16, 1 << 20);
        assert!(check_zone_limits("d", &g).is_ok());
        g.max_open = Some(2);
        g.max_active = Some(2);
        assert!(check_zone_limits("d", &g).is_ok());
        g.max_active = Some(1);
        let e = check_zone_limits("nvme-tcp://x/nqn", &g)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nvme-tcp://x/nqn") && e.contains("1 active zone"),
            "{e}"
        );
    }
}
