//! Where new records go: per drive, a few open zones for user writes and a separate one for GC
//! relocations (hot and cold data do not mix), within the drive's open and active zone limits;
//! writes stripe over the open zones and over drives. Free zones are held in reserve so that GC
//! can always make progress; when only the reserve is left, user writes fail with "no space".

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use zns::{Geometry, ZoneState};

use super::drives::Drives;
use super::model::{Class, DriveId, ZoneId};
use super::settled::Settled;

/// Tunables of placement.
#[derive(Debug, Clone, Copy)]
pub struct PlacementConfig {
    /// Open zones for user data per drive.
    pub user_zones: usize,
    /// Open zones for GC relocations per drive.
    pub gc_zones: usize,
    /// Free zones per drive that only GC may take.
    pub reserve: usize,
}

impl PlacementConfig {
    /// Settings that fit a drive's limits: up to 4 user zones and 1 GC zone, within the open
    /// and active limits, and a reserve of 2 zones: one that GC needs to make progress, and
    /// one more that only records freeing space (tombstones, upload ends) may take, so that a
    /// full drive whose zones are all sealed still takes deletes. (Only a drive of fewer than 8
    /// zones keeps 1.)
    pub fn for_geometry(geometry: &Geometry) -> Self {
        let limit = geometry
            .max_active
            .into_iter()
            .chain(geometry.max_open)
            .min()
            .map_or(16, |v| v as usize);
        let user_zones = limit.saturating_sub(2).clamp(1, 4);
        let reserve = if geometry.zone_count >= 8 { 2 } else { 1 };
        PlacementConfig {
            user_zones,
            gc_zones: 1,
            reserve,
        }
    }
}

/// What the engine is doing with a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneUse {
    /// Empty, available.
    Free,
    /// Open for appends of a class.
    Active(Class),
    /// No longer appended to; waits for its in-flight appends, then is finished.
    Closing,
    /// Full or finished: holds data until GC reclaims it.
    Sealed,
    /// Being reclaimed by GC.
    Collecting,
    /// Read-only or offline: never written again.
    Bad,
}

#[derive(Debug, Clone)]
struct ZoneSpace {
    usage: ZoneUse,
    written: u64,
    reserved: u64,
    pending: u32,
    /// Appends that landed here and are not in the index yet (see [`ZoneHolds`]).
    holds: u32,
    /// How far every record is in the index or known dead.
    settled: Settled,
    /// Opened from the reserve for a record that frees space (a tombstone on a full drive):
    /// only such records go on into it, or ordinary writes would fill a zone GC needs.
    from_reserve: bool,
    /// Whether the drive still owes this zone a Finish (see [`FinishDue`]).
    finish: FinishDue,
    /// The drive session (see [`zns::ZonedDevice::session`]) this zone's appends went to since
    /// it was opened (see [`Placement::same_session`]).
    session: Option<u64>,
}

/// Where a sealed zone that was not written to capacity stands with its Finish. Until the drive
/// has finished it, the zone keeps one of the drive's few active resources, so a Finish that
/// failed is tried again for as long as the zone stays sealed; and GC leaves a zone alone while
/// a Finish is on its way to it (a Finish landing after a reset would fill the fresh zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinishDue {
    /// Nothing to do (full, finished, or reset).
    No,
    /// A Finish must still be sent.
    Owed,
    /// A Finish is on its way to the drive.
    Sending,
}

/// What the task finishing a zone does next (see [`Placement::begin_finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishTurn {
    /// Send the Finish now.
    Send,
    /// GC is reclaiming the zone: ask again later (it stays sealed if GC gives up).
    Later,
    /// The zone needs no Finish any more.
    Never,
}

#[derive(Debug)]
struct DriveSpace {
    geometry: Geometry,
    zones: Vec<ZoneSpace>,
    free: BTreeSet<u32>,
    active: [Vec<u32>; 2],
    turn: usize,
    /// Zones whose settled prefix may have moved since it was last reported.
    settling: BTreeSet<u32>,
}

impl DriveSpace {
    /// Zones holding one of the drive's open or active resources, as far as placement knows:
    /// open for appends, waiting for appends in flight, or owing a Finish.
    fn zones_holding_resources(&self) -> usize {
        self.zones
            .iter()
            .filter(|z| {
                matches!(z.usage, ZoneUse::Active(_) | ZoneUse::Closing)
                    // (A read-only or offline zone holds none, whatever it owed; nor does a
                    // full one: its Finish only makes sure of that.)
                    || (z.finish != FinishDue::No
                        && z.usage != ZoneUse::Bad
                        && z.written < self.geometry.zone_capacity)
            })
            .count()
    }

    /// Whether the drive has a resource to spare for another open zone: zones retired
    /// together hold theirs until their Finishes land, and opening zones past the drive's
    /// limits meanwhile would have appends refused (Too Many Active Zones).
    fn can_open_another(&self) -> bool {
        let limit = [self.geometry.max_active, self.geometry.max_open]
            .into_iter()
            .flatten()
            .min();
        limit.is_none_or(|l| self.zones_holding_resources() < l as usize)
    }

    fn remaining(&self, zone: u32) -> u64 {
        let z = &self.zones[zone as usize];
        self.geometry
            .zone_capacity
            .saturating_sub(z.written + z.reserved)
    }

    fn retire(&mut self, zone: u32, to_finish: &mut Vec<ZoneId>, drive: DriveId) {
        for list in &mut self.active {
            list.retain(|&z| z != zone);
        }
        let z = &mut self.zones[zone as usize];
        if z.written >= self.geometry.zone_capacity {
            // Full on the drive, but only once the drive has made that durable: a target that
            // restarts before its next flush may bring the zone back Closed, holding one of
            // its few active resources for good. A Finish of a Full zone changes nothing, so
            // one is sent all the same.
            z.usage = ZoneUse::Sealed;
            z.finish = FinishDue::Owed;
            to_finish.push(ZoneId { drive, zone });
        } else if z.pending == 0 {
            // Sealed even when no append into it reported success: one that failed (a lost
            // completion, an abandoned request) may still have landed, so the zone goes back
            // to the free list only through GC's reset, never as it is.
            z.usage = ZoneUse::Sealed;
            z.finish = FinishDue::Owed;
            to_finish.push(ZoneId { drive, zone });
        } else {
            z.usage = ZoneUse::Closing;
        }
    }
}

/// A reservation of space for one record copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Drive.
    pub drive: DriveId,
    /// Zone index.
    pub zone: u32,
    /// Zone start LBA (what Zone Append takes).
    pub zslba: u64,
    /// Blocks reserved.
    pub blocks: u64,
}

/// Not enough free space for a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no space: {reason}")]
pub struct NoSpace {
    /// Why.
    pub reason: String,
    /// Zones the attempt retired, which the caller must still finish.
    pub finish: Vec<ZoneId>,
    /// Whether a drive had free zones but no resource to open one until Finishes of zones
    /// retired earlier land (a wait of moments, not a lack of space).
    pub awaiting_finishes: bool,
}

/// Why a drive took no copy of a record.
enum Unplaced {
    /// No zone it may use has room.
    NoRoom,
    /// A free zone, but no resource to open it until Finishes land.
    AwaitingFinishes,
}

/// Placement state of all drives.
#[derive(Debug)]
pub struct Placement {
    config: Vec<PlacementConfig>,
    drives: Mutex<Vec<DriveSpace>>,
    next_drive: AtomicUsize,
}

/// Zones holding appended records that are not in the index yet, one hold per append. GC
/// leaves a held zone alone: its accounting does not count those records (the index does not
/// name them yet), so it would look like garbage, and resetting it would take data that an
/// upload still streaming, or a relocation about to commit, is about to point at. The holds
/// are released when this is dropped: after the index commit that names the records, or when
/// the writer gives up (the records are then garbage).
#[derive(Debug)]
pub struct ZoneHolds {
    placement: Arc<Placement>,
    /// Each held record: its zone, and where it lies there (blocks from the zone's start).
    records: Vec<(ZoneId, u64, u64)>,
    /// The device session (see [`zns::ZonedDevice::session`]) each append went to: the
    /// committer refuses to count records durable if their drive's session changed before
    /// its flush.
    sessions: Vec<(DriveId, u64)>,
    /// Zones of copies whose appends reported failure yet may have landed: not held (where
    /// they are is unknown), but where a failed write's records may be.
    strays: Vec<ZoneId>,
}

impl ZoneHolds {
    /// No holds yet.
    pub fn new(placement: Arc<Placement>) -> Self {
        ZoneHolds {
            placement,
            records: Vec::new(),
            sessions: Vec::new(),
            strays: Vec::new(),
        }
    }

    /// Takes over the hold that a landed append (see [`Placement::complete`]) put on `zone`,
    /// for the record of `blocks` blocks that landed `start` blocks into it; `session` is its
    /// drive's session when the append was sent.
    pub fn adopt(&mut self, zone: ZoneId, start: u64, blocks: u64, session: u64) {
        self.records.push((zone, start, blocks));
        if !self.sessions.contains(&(zone.drive, session)) {
            self.sessions.push((zone.drive, session));
        }
    }

    /// Notes that records of `drive` were read in its session `session` (replay: what it read
    /// past a zone's durable point is lost if the target restarts before the flush).
    pub fn note_session(&mut self, drive: DriveId, session: u64) {
        if !self.sessions.contains(&(drive, session)) {
            self.sessions.push((drive, session));
        }
    }

    /// Notes that a copy whose append reported failure may be in `zone`.
    pub fn add_stray(&mut self, zone: ZoneId) {
        if !self.strays.contains(&zone) {
            self.strays.push(zone);
        }
    }

    /// Takes over all of `other`'s holds.
    pub fn merge(&mut self, mut other: ZoneHolds) {
        self.records.append(&mut other.records);
        self.strays.append(&mut other.strays);
        for s in other.sessions.drain(..) {
            if !self.sessions.contains(&s) {
                self.sessions.push(s);
            }
        }
    }

    /// The zones of the held records, and of copies that may have landed unheld.
    pub fn zones(&self) -> impl Iterator<Item = ZoneId> + '_ {
        self.records
            .iter()
            .map(|(zone, _, _)| *zone)
            .chain(self.strays.iter().copied())
    }

    /// Zones of copies whose appends reported failure yet may have landed.
    pub fn strays(&self) -> &[ZoneId] {
        &self.strays
    }

    /// The drive sessions the held records were appended in.
    pub fn sessions(&self) -> &[(DriveId, u64)] {
        &self.sessions
    }
}

impl Drop for ZoneHolds {
    fn drop(&mut self) {
        for (zone, start, blocks) in self.records.drain(..) {
            self.placement.release_settled(zone, start, blocks);
        }
    }
}

/// A zone's state as the drive reports it, with how much it holds, for start-up.
#[derive(Debug, Clone, Copy)]
pub struct ZoneSnapshot {
    /// Device state.
    pub state: ZoneState,
    /// Blocks written.
    pub written: u64,
    /// Blocks known settled (see [`Settled`]): the index's record of it, until the rest has
    /// been replayed.
    pub settled: u64,
}

impl DriveSpace {
    /// The space of a drive whose zones are described by `zones` (`None`: not known yet, while
    /// the drive cannot be reached: no zone is usable). Zones holding data are sealed; open
    /// ones go to `to_finish`.
    fn from_snapshot(
        drive: DriveId,
        geometry: Geometry,
        zones: Option<Vec<ZoneSnapshot>>,
        to_finish: &mut Vec<ZoneId>,
    ) -> DriveSpace {
        let unknown = ZoneSnapshot {
            state: ZoneState::Offline,
            written: 0,
            settled: 0,
        };
        let zones = zones.unwrap_or_else(|| vec![unknown; geometry.zone_count as usize]);
        let mut space = DriveSpace {
            geometry,
            zones: Vec::with_capacity(zones.len()),
            free: BTreeSet::new(),
            active: [Vec::new(), Vec::new()],
            turn: 0,
            settling: BTreeSet::new(),
        };
        for (i, snap) in zones.iter().enumerate() {
            let (usage, finish) = match snap.state {
                ZoneState::Empty => {
                    space.free.insert(i as u32);
                    (ZoneUse::Free, FinishDue::No)
                }
                ZoneState::Full => (ZoneUse::Sealed, FinishDue::No),
                ZoneState::ReadOnly | ZoneState::Offline => (ZoneUse::Bad, FinishDue::No),
                _ => {
                    // Open or closed with data: finish it so that it holds no resources.
                    to_finish.push(ZoneId {
                        drive,
                        zone: i as u32,
                    });
                    (ZoneUse::Sealed, FinishDue::Owed)
                }
            };
            space.zones.push(ZoneSpace {
                usage,
                written: snap.written,
                reserved: 0,
                pending: 0,
                holds: 0,
                settled: Settled::at(snap.settled.min(snap.written)),
                from_reserve: false,
                finish,
                session: None,
            });
        }
        space
    }
}

impl Placement {
    /// Placement for drives whose zones are described by `snapshots` (per drive, per zone;
    /// `None` for a drive that cannot be reached now: see [`Placement::attach_drive`]). Zones
    /// holding data are sealed; the caller finishes the open ones it got back.
    pub fn new(
        drives: &Drives,
        snapshots: Vec<Option<Vec<ZoneSnapshot>>>,
    ) -> (Placement, Vec<ZoneId>) {
        let mut spaces = Vec::new();
        let mut configs = Vec::new();
        let mut to_finish = Vec::new();
        for (drive, zones) in drives.all().iter().zip(snapshots) {
            let geometry = drive.geometry;
            spaces.push(DriveSpace::from_snapshot(
                drive.id,
                geometry,
                zones,
                &mut to_finish,
            ));
            configs.push(PlacementConfig::for_geometry(&geometry));
        }
        (
            Placement {
                config: configs,
                drives: Mutex::new(spaces),
                next_drive: AtomicUsize::new(0),
            },
            to_finish,
        )
    }

    /// Takes the zones of a drive that could not be reached when placement began (nothing was
    /// placed on it meanwhile). Returns the zones the caller must finish.
    pub fn attach_drive(&self, drive: DriveId, zones: Vec<ZoneSnapshot>) -> Vec<ZoneId> {
        let mut to_finish = Vec::new();
        let mut spaces = self.drives.lock();
        if let Some(space) = spaces.get_mut(usize::from(drive)) {
            *space = DriveSpace::from_snapshot(drive, space.geometry, Some(zones), &mut to_finish);
        }
        to_finish
    }

    /// Reserves space for up to `copies` copies (at least `min`) of a `blocks`-block record on
    /// distinct drives accepted by `usable`, for writes of `class`. Also returns zones the
    /// caller must finish.
    pub fn reserve(
        &self,
        class: Class,
        blocks: u64,
        copies: usize,
        min: usize,
        usable: impl Fn(DriveId) -> bool,
    ) -> Result<(Vec<Slot>, Vec<ZoneId>), NoSpace> {
        self.reserve_with(class, false, blocks, copies, min, usable)
    }

    /// Like [`Placement::reserve`]; `frees_space` marks records that let space be reclaimed
    /// (tombstones, aborts): they may dip into the reserve, all but the one zone GC needs.
    pub fn reserve_with(
        &self,
        class: Class,
        frees_space: bool,
        blocks: u64,
        copies: usize,
        min: usize,
        usable: impl Fn(DriveId) -> bool,
    ) -> Result<(Vec<Slot>, Vec<ZoneId>), NoSpace> {
        let mut drives = self.drives.lock();
        let n = drives.len();
        let start = self.next_drive.fetch_add(1, Ordering::Relaxed);
        let mut slots = Vec::with_capacity(copies);
        let mut to_finish = Vec::new();
        let mut awaiting_finishes = false;
        for i in 0..n {
            if slots.len() == copies {
                break;
            }
            let d = (start + i) % n;
            let drive = d as DriveId;
            if !usable(drive) {
                continue;
            }
            match self.reserve_on(
                &mut drives[d],
                d,
                class,
                frees_space,
                blocks,
                &mut to_finish,
            ) {
                Ok(slot) => slots.push(slot),
                Err(Unplaced::AwaitingFinishes) => awaiting_finishes = true,
                Err(Unplaced::NoRoom) => {}
            }
        }
        if slots.len() < min {
            for slot in &slots {
                let z = &mut drives[usize::from(slot.drive)].zones[slot.zone as usize];
                z.reserved -= slot.blocks;
                z.pending -= 1;
            }
            return Err(NoSpace {
                reason: format!(
                    "{} of {copies} drives have room for {blocks} blocks",
                    slots.len()
                ),
                finish: to_finish,
                awaiting_finishes,
            });
        }
        Ok((slots, to_finish))
    }

    fn reserve_on(
        &self,
        space: &mut DriveSpace,
        d: usize,
        class: Class,
        frees_space: bool,
        blocks: u64,
        to_finish: &mut Vec<ZoneId>,
    ) -> Result<Slot, Unplaced> {
        let config = self.config[d];
        let drive = d as DriveId;
        if blocks > space.geometry.zone_capacity {
            return Err(Unplaced::NoRoom);
        }
        let c = class as usize;
        let limit = match class {
            Class::User => config.user_zones,
            Class::Gc => config.gc_zones,
        };
        let reserve = match class {
            Class::User if frees_space => config.reserve.min(1),
            Class::User => config.reserve,
            Class::Gc => 0,
        };
        // Stripe: keep `limit` zones open while free zones allow (parallel appends land in
        // different zones, on real drives different dies), and take them in turn.
        if space.active[c].len() < limit
            && space.free.len() > reserve + limit
            && space.can_open_another()
            && let Some(&zone) = space.free.iter().next()
        {
            return Ok(open_zone(space, drive, zone, class, blocks, config.reserve));
        }

        let open = space.active[c].len();
        let ordinary = class == Class::User && !frees_space;
        for k in 0..open {
            let zone = space.active[c][(space.turn + k) % open];
            if ordinary && space.zones[zone as usize].from_reserve {
                continue;
            }
            if space.remaining(zone) >= blocks {
                space.turn = space.turn.wrapping_add(k + 1);
                return Ok(take(space, drive, zone, blocks));
            }
        }
        // None has room: at the limit, those that cannot take this record are retired, then a
        // new zone is opened. (Retiring only the fullest left the others open with less room
        // than records of this size: every later one retired the newest zone, and the drive
        // wrote to one zone at a time, its active resources held by zones nothing fits in.)
        // What each leaves unwritten is less than this record, at most the append limit.
        // (The loop found room in none of these.)
        let cannot: Vec<u32> = space.active[c]
            .iter()
            .copied()
            .filter(|&z| !(ordinary && space.zones[z as usize].from_reserve))
            .collect();
        // No zone may be opened at the reserve: the open ones stay, for records that fit.
        if space.free.len() <= reserve {
            return Err(Unplaced::NoRoom);
        }
        if space.active[c].len() >= limit {
            for &zone in &cannot {
                space.retire(zone, to_finish, drive);
            }
            // Only reserve zones open (an ordinary write leaves them alone): the fullest goes.
            if space.active[c].len() >= limit
                && let Some(&fullest) = space.active[c].iter().min_by_key(|&&z| space.remaining(z))
            {
                space.retire(fullest, to_finish, drive);
            }
        }
        if !space.can_open_another() {
            // Below the limit, but other zones' Finishes have not landed (one that keeps
            // failing holds its resource): those open zones nothing of this size fits in go
            // too, so their own Finishes give resources back.
            for &zone in &cannot {
                if space.active[c].contains(&zone) {
                    space.retire(zone, to_finish, drive);
                }
            }
            return Err(Unplaced::AwaitingFinishes);
        }
        let zone = *space.free.iter().next().ok_or(Unplaced::NoRoom)?;
        Ok(open_zone(space, drive, zone, class, blocks, config.reserve))
    }

    /// Records the end of an append into `slot` (`ok` when it landed). Returns a zone to
    /// finish, if the append closed one. A landed append holds its zone from GC until
    /// [`Placement::release`].
    pub fn complete(&self, slot: &Slot, ok: bool) -> Option<ZoneId> {
        let mut drives = self.drives.lock();
        let space = &mut drives[usize::from(slot.drive)];
        let capacity = space.geometry.zone_capacity;
        let z = &mut space.zones[slot.zone as usize];
        z.reserved -= slot.blocks;
        z.pending -= 1;
        if ok {
            z.written += slot.blocks;
            z.holds += 1;
        }
        let usage = z.usage;
        let (written, pending) = (z.written, z.pending);
        let mut finish = Vec::new();
        match usage {
            ZoneUse::Active(_) if !ok || written >= capacity => {
                // A failed append leaves the write pointer uncertain: stop using the zone.
                space.retire(slot.zone, &mut finish, slot.drive);
            }
            ZoneUse::Closing if pending == 0 => {
                // Finished even when full: see [`DriveSpace::retire`].
                space.zones[slot.zone as usize].usage = ZoneUse::Sealed;
                space.zones[slot.zone as usize].finish = FinishDue::Owed;
                finish.push(ZoneId {
                    drive: slot.drive,
                    zone: slot.zone,
                });
            }
            _ => {}
        }
        finish.pop()
    }

    /// Whether an append into `slot` may be sent on the drive's `session`: yes on the session
    /// the zone's earlier appends went to (the first one's is noted). A drive that reconnected
    /// since (its target may have restarted and lost unflushed appends, its write pointer gone
    /// back below what placement counts and what the index may have recorded as settled) must
    /// take nothing more in the zone: a record landing there could straddle a settled prefix,
    /// where a replay would start reading in the middle of it. The caller then does not send
    /// the append and gives the slot back as failed ([`Placement::complete`]), which retires
    /// the zone.
    pub fn same_session(&self, slot: &Slot, session: u64) -> bool {
        let mut drives = self.drives.lock();
        let Some(z) = drives
            .get_mut(usize::from(slot.drive))
            .and_then(|d| d.zones.get_mut(slot.zone as usize))
        else {
            return false;
        };
        match z.session {
            None => {
                z.session = Some(session);
                true
            }
            Some(s) => s == session,
        }
    }

    /// Appends on a drive that are not in the index yet: on their way, or landed and awaiting
    /// their index entry (or to be given up).
    pub fn unindexed_appends(&self, drive: DriveId) -> u64 {
        self.drives.lock()[usize::from(drive)]
            .zones
            .iter()
            .map(|z| u64::from(z.pending) + u64::from(z.holds))
            .sum()
    }

    /// Free zones on a drive.
    pub fn free_zones(&self, drive: DriveId) -> usize {
        self.drives.lock()[usize::from(drive)].free.len()
    }

    /// Zones of a drive and how many there are.
    pub fn zone_count(&self, drive: DriveId) -> usize {
        self.drives.lock()[usize::from(drive)].zones.len()
    }

    /// The reserve of a drive.
    pub fn reserve_of(&self, drive: DriveId) -> usize {
        self.config[usize::from(drive)].reserve
    }

    /// Sealed zones of a drive with how many blocks they hold as far as placement knows (GC
    /// candidates; a zone whose every append failed counts none, yet needs a reset).
    pub fn sealed(&self, drive: DriveId) -> Vec<(u32, u64)> {
        let drives = self.drives.lock();
        drives[usize::from(drive)]
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.usage == ZoneUse::Sealed && z.holds == 0)
            .map(|(i, z)| (i as u32, z.written))
            .collect()
    }

    /// Keeps GC off `zone` until a matching [`Placement::release`] (an append into it may
    /// still land).
    pub fn hold(&self, zone: ZoneId) {
        let mut drives = self.drives.lock();
        if let Some(z) = drives
            .get_mut(usize::from(zone.drive))
            .and_then(|d| d.zones.get_mut(zone.zone as usize))
        {
            z.holds += 1;
        }
    }

    /// [`Placement::release`] for a landed append whose record lies `start` blocks into the
    /// zone: it is settled (see [`Settled`]).
    pub fn release_settled(&self, zone: ZoneId, start: u64, blocks: u64) {
        let mut drives = self.drives.lock();
        if let Some(space) = drives.get_mut(usize::from(zone.drive))
            && let Some(z) = space.zones.get_mut(zone.zone as usize)
        {
            z.holds = z.holds.saturating_sub(1);
            z.settled.settle(start, blocks);
            space.settling.insert(zone.zone);
        }
    }

    /// Every zone holding records whose settled prefix moved since last asked, with the
    /// prefix (zones free, being reset or bad have none worth keeping).
    pub fn settled_reports(&self) -> Vec<(ZoneId, u64)> {
        let mut drives = self.drives.lock();
        let mut out = Vec::new();
        for (d, space) in drives.iter_mut().enumerate() {
            for i in std::mem::take(&mut space.settling) {
                let Some(z) = space.zones.get_mut(i as usize) else {
                    continue;
                };
                if z.usage == ZoneUse::Collecting {
                    // Maybe about to be reset: reported once GC gives it up, if it does.
                    space.settling.insert(i);
                    continue;
                }
                if z.usage != ZoneUse::Free
                    && let Some(prefix) = z.settled.take_report()
                {
                    out.push((
                        ZoneId {
                            drive: d as DriveId,
                            zone: i,
                        },
                        prefix,
                    ));
                }
            }
        }
        out
    }

    /// Takes back `reports` from [`Placement::settled_reports`] that the index did not record
    /// (its write failed): they are reported again when next asked.
    pub fn unreport(&self, reports: &[(ZoneId, u64)]) {
        let mut drives = self.drives.lock();
        for &(zone, prefix) in reports {
            if let Some(space) = drives.get_mut(usize::from(zone.drive))
                && let Some(z) = space.zones.get_mut(zone.zone as usize)
            {
                z.settled.unreport(prefix);
                space.settling.insert(zone.zone);
            }
        }
    }

    /// Every record in the first `blocks` blocks of `zone` is settled (replayed at start).
    pub fn settle_through(&self, zone: ZoneId, blocks: u64) {
        let mut drives = self.drives.lock();
        if let Some(space) = drives.get_mut(usize::from(zone.drive))
            && let Some(z) = space.zones.get_mut(zone.zone as usize)
        {
            z.settled.settle_through(blocks);
            space.settling.insert(zone.zone);
        }
    }

    /// Lets GC take a zone again as far as one landed append is concerned: its record is in
    /// the index now, or will never be.
    pub fn release(&self, zone: ZoneId) {
        let mut drives = self.drives.lock();
        if let Some(z) = drives
            .get_mut(usize::from(zone.drive))
            .and_then(|d| d.zones.get_mut(zone.zone as usize))
        {
            z.holds = z.holds.saturating_sub(1);
        }
    }

    /// Marks a sealed zone as being collected; false if it is not sealed, or holds records
    /// that are not in the index yet.
    /// Whether GC could take `zone` now (see [`Placement::begin_collect`]): sealed, with no
    /// record in it awaiting its index entry and no Finish being sent.
    pub fn collectable(&self, zone: ZoneId) -> bool {
        let drives = self.drives.lock();
        let z = &drives[usize::from(zone.drive)].zones[zone.zone as usize];
        z.usage == ZoneUse::Sealed && z.holds == 0 && z.finish != FinishDue::Sending
    }

    pub fn begin_collect(&self, zone: ZoneId) -> bool {
        let mut drives = self.drives.lock();
        let z = &mut drives[usize::from(zone.drive)].zones[zone.zone as usize];
        if z.usage == ZoneUse::Sealed && z.holds == 0 && z.finish != FinishDue::Sending {
            z.usage = ZoneUse::Collecting;
            true
        } else {
            false
        }
    }

    /// Gives up collecting a zone (it stays sealed).
    pub fn abort_collect(&self, zone: ZoneId) {
        let mut drives = self.drives.lock();
        let z = &mut drives[usize::from(zone.drive)].zones[zone.zone as usize];
        if z.usage == ZoneUse::Collecting {
            z.usage = ZoneUse::Sealed;
        }
    }

    /// A collected zone was reset: it is free again.
    pub fn reset_done(&self, zone: ZoneId) {
        let mut drives = self.drives.lock();
        let space = &mut drives[usize::from(zone.drive)];
        let z = &mut space.zones[zone.zone as usize];
        z.usage = ZoneUse::Free;
        z.written = 0;
        z.settled = Settled::at(0);
        z.finish = FinishDue::No;
        space.free.insert(zone.zone);
    }

    /// Asked before each Finish of `zone` is sent: whether to send it now. [`FinishTurn::Send`]
    /// keeps GC off the zone until [`Placement::end_finish`].
    pub fn begin_finish(&self, zone: ZoneId) -> FinishTurn {
        let mut drives = self.drives.lock();
        let Some(z) = drives
            .get_mut(usize::from(zone.drive))
            .and_then(|d| d.zones.get_mut(zone.zone as usize))
        else {
            return FinishTurn::Never;
        };
        match (z.usage, z.finish) {
            (ZoneUse::Sealed, FinishDue::Owed) => {
                z.finish = FinishDue::Sending;
                FinishTurn::Send
            }
            (ZoneUse::Collecting, FinishDue::Owed) => FinishTurn::Later,
            _ => FinishTurn::Never,
        }
    }

    /// A Finish of `zone` came back: `done` when the drive finished it (or never will, and
    /// trying again is pointless), else it is still owed.
    pub fn end_finish(&self, zone: ZoneId, done: bool) {
        let mut drives = self.drives.lock();
        if let Some(z) = drives
            .get_mut(usize::from(zone.drive))
            .and_then(|d| d.zones.get_mut(zone.zone as usize))
            && z.finish == FinishDue::Sending
        {
            z.finish = if done { FinishDue::No } else { FinishDue::Owed };
        }
    }

    /// A zone the drive reports read-only or offline.
    pub fn mark_bad(&self, zone: ZoneId) {
        let mut drives = self.drives.lock();
        let space = &mut drives[usize::from(zone.drive)];
        for list in &mut space.active {
            list.retain(|&z| z != zone.zone);
        }
        space.free.remove(&zone.zone);
        space.zones[zone.zone as usize].usage = ZoneUse::Bad;
    }

    /// How each zone of a drive is used, with blocks written.
    pub fn usage(&self, drive: DriveId) -> Vec<(ZoneUse, u64)> {
        self.drives.lock()[usize::from(drive)]
            .zones
            .iter()
            .map(|z| (z.usage, z.written))
            .collect()
    }
}

/// Makes free `zone` an open zone of `class` and reserves the first record in it.
/// Opens free `zone` for `class` and takes `blocks` of it; a user zone opened with no more
/// free zones than `reserve` is marked as taken from the reserve.
fn open_zone(
    space: &mut DriveSpace,
    drive: DriveId,
    zone: u32,
    class: Class,
    blocks: u64,
    reserve: usize,
) -> Slot {
    let from_reserve = class == Class::User && space.free.len() <= reserve;
    space.free.remove(&zone);
    let z = &mut space.zones[zone as usize];
    z.usage = ZoneUse::Active(class);
    z.from_reserve = from_reserve;
    z.written = 0;
    z.reserved = 0;
    z.pending = 0;
    z.settled = Settled::at(0);
    z.session = None;
    space.active[class as usize].push(zone);
    take(space, drive, zone, blocks)
}

fn take(space: &mut DriveSpace, drive: DriveId, zone: u32, blocks: u64) -> Slot {
    let z = &mut space.zones[zone as usize];
    z.reserved += blocks;
    z.pending += 1;
    Slot {
        drive,
        zone,
        zslba: space.geometry.zone_start(zone),
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::drives::Drive;
    use std::sync::Arc;
    use zns::{EmulatedZns, ZonedDevice};

    fn setup(zones: u32) -> (tempfile::TempDir, Drives, Placement) {
        let mut g = Geometry::new(zones, 64 << 10);
        g.max_append_blocks = 4;
        setup_with(g)
    }

    /// Placement over one empty emulated drive of geometry `g`.
    fn setup_with(g: Geometry) -> (tempfile::TempDir, Drives, Placement) {
        let zones = g.zone_count;
        let dir = tempfile::tempdir().unwrap();
        let drive = EmulatedZns::create(dir.path(), g).unwrap();
        let drives = Drives::new(vec![Arc::new(Drive::new(
            0,
            "d".into(),
            Arc::new(drive) as Arc<dyn ZonedDevice>,
        ))]);
        let snaps = vec![Some(vec![
            ZoneSnapshot {
                state: ZoneState::Empty,
                written: 0,
                settled: 0,
            };
            zones as usize
        ])];
        let (p, _) = Placement::new(&drives, snaps);
        (dir, drives, p)
    }

    /// A settled prefix whose index write failed is reported again by the next group: the
    /// zone's replay at start does not stay longer than it must.
    #[test]
    fn a_settled_prefix_taken_back_is_reported_again() {
        let (_d, _drives, p) = setup(8);
        let (slots, _) = p.reserve(Class::User, 3, 1, 1, |_| true).unwrap();
        p.complete(&slots[0], true);
        let zone = ZoneId {
            drive: slots[0].drive,
            zone: slots[0].zone,
        };
        p.hold(zone);
        p.release_settled(zone, 0, 3);
        let reports = p.settled_reports();
        assert_eq!(reports, vec![(zone, 3)]);
        assert_eq!(p.settled_reports(), vec![], "reported once");
        p.unreport(&reports);
        assert_eq!(p.settled_reports(), vec![(zone, 3)]);
    }

    #[test]
    fn a_drive_unknown_at_start_takes_no_writes_until_attached() {
        let (_d, drives, _) = setup(4);
        let (p, _) = Placement::new(&drives, vec![None]);
        assert!(p.reserve(Class::User, 1, 1, 1, |_| true).is_err());
        assert_eq!(p.free_zones(0), 0);
        let zones = vec![
            ZoneSnapshot {
                state: ZoneState::Empty,
                written: 0,
                settled: 0,
            },
            ZoneSnapshot {
                state: ZoneState::Closed,
                written: 3,
                settled: 3,
            },
            ZoneSnapshot {
                state: ZoneState::Full,
                written: 16,
                settled: 16,
            },
            ZoneSnapshot {
                state: ZoneState::Empty,
                written: 0,
                settled: 0,
            },
        ];
        let finish = p.attach_drive(0, zones);
        assert_eq!(finish, vec![ZoneId { drive: 0, zone: 1 }]);
        assert_eq!(p.free_zones(0), 2);
        assert!(p.reserve(Class::Gc, 1, 1, 1, |_| true).is_ok());
    }

    /// Records of one size that leave each zone with less room than one of them: the zones
    /// that cannot take the next are retired together, and writes go on striped over several
    /// zones, not one new zone at a time among open zones nothing fits in.
    #[test]
    fn zones_too_full_for_the_record_at_hand_are_retired_together() {
        let (_d, _drives, p) = setup(64);
        let limit = PlacementConfig::for_geometry(&p.drives.lock()[0].geometry).user_zones;
        assert!(limit >= 3, "the test needs several user zones: {limit}");
        let mut zones = Vec::new();
        for _ in 0..60 {
            // 3 blocks of a zone's 16: each zone keeps 1 block nothing of this size fits in.
            let (slots, _) = p.reserve(Class::User, 3, 1, 1, |_| true).unwrap();
            p.complete(&slots[0], true);
            zones.push(slots[0].zone);
        }
        let late = &zones[40..];
        let repeats = late.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(
            repeats <= 2,
            "records went to one zone after another, not striped: {late:?}"
        );
    }

    /// Zones retired together keep their resources until their Finishes land: placement opens
    /// no more zones meanwhile than the drive's active limit allows.
    #[test]
    fn zones_owing_their_finish_count_against_the_active_limit() {
        let mut g = Geometry::new(64, 64 << 10);
        g.max_append_blocks = 4;
        g.max_active = Some(6);
        g.max_open = Some(6);
        let (_d, _drives, p) = setup_with(g);
        // No Finish lands: every zone retired keeps its resource, until placement says the
        // write must wait for Finishes.
        let mut owed = Vec::new();
        let refused = loop {
            match p.reserve(Class::User, 3, 1, 1, |_| true) {
                Ok((slots, finish)) => {
                    owed.extend(finish);
                    if let Some(zone) = p.complete(&slots[0], true) {
                        owed.push(zone);
                    }
                }
                Err(refused) => break refused,
            }
            let held = p.drives.lock()[0].zones_holding_resources();
            assert!(
                held <= 6,
                "{held} zones hold resources of a drive allowing 6"
            );
            assert!(owed.len() < 64, "placement never ran out of resources");
        };
        assert!(refused.awaiting_finishes, "{}", refused.reason);
        owed.extend(refused.finish);
        // Open zones nothing of this size fits in were retired too: their Finishes give
        // resources back, with those of the zones before them.
        {
            let drives = p.drives.lock();
            let space = &drives[0];
            assert!(
                space.active[Class::User as usize]
                    .iter()
                    .all(|&z| space.remaining(z) >= 3),
                "a zone too full for the record holds a resource"
            );
        }
        for zone in owed {
            assert_eq!(p.begin_finish(zone), FinishTurn::Send);
            p.end_finish(zone, true);
        }
        assert!(p.reserve(Class::User, 3, 1, 1, |_| true).is_ok());
    }

    /// A record refused at the reserve leaves the open zones open: smaller records still fit
    /// there (retiring them for a zone that cannot be opened would strand their room and
    /// refuse the small records too).
    #[test]
    fn a_record_refused_at_the_reserve_leaves_the_open_zones_open() {
        let (_d, _drives, p) = setup(16);
        let limit = PlacementConfig::for_geometry(&p.drives.lock()[0].geometry).user_zones;
        // Open zones striped, each left with 3 blocks of its 16.
        for _ in 0..limit {
            let (slots, _) = p.reserve(Class::User, 13, 1, 1, |_| true).unwrap();
            p.complete(&slots[0], true);
        }
        // GC takes free zones down to the reserve.
        while p.free_zones(0) > p.reserve_of(0) {
            let (slots, _) = p.reserve(Class::Gc, 16, 1, 1, |_| true).unwrap();
            p.complete(&slots[0], true);
        }
        let refused = p
            .reserve(Class::User, 4, 1, 1, |_| true)
            .expect_err("no room for 4 blocks above the reserve");
        assert!(
            refused.finish.is_empty(),
            "zones retired: {:?}",
            refused.finish
        );
        assert_eq!(p.drives.lock()[0].active[Class::User as usize].len(), limit);
        for _ in 0..limit {
            let (slots, _) = p
                .reserve(Class::User, 3, 1, 1, |_| true)
                .expect("a record of 3 blocks fits in an open zone");
            p.complete(&slots[0], true);
        }
    }

    #[test]
    fn user_writes_stop_at_the_reserve_but_gc_may_use_it() {
        let (_d, _drives, p) = setup(4);
        let reserve = p.reserve_of(0);
        let mut user_slots = 0;
        while let Ok((slots, _)) = p.reserve(Class::User, 16, 1, 1, |_| true) {
            for s in &slots {
                p.complete(s, true);
            }
            user_slots += 1;
            assert!(user_slots < 100);
        }
        assert_eq!(p.free_zones(0), reserve);
        let (slots, _) = p
            .reserve(Class::Gc, 16, 1, 1, |_| true)
            .expect("GC may use the reserve");
        assert_eq!(slots.len(), 1);
    }

    /// A tombstone on a full drive may open a zone from the reserve; ordinary writes do not
    /// go on to fill that zone (GC needs it), while later tombstones do.
    #[test]
    fn a_zone_opened_from_the_reserve_takes_only_records_that_free_space() {
        let (_d, _drives, p) = setup(16);
        let reserve = p.reserve_of(0);
        assert_eq!(reserve, 2);
        while let Ok((slots, _)) = p.reserve(Class::User, 16, 1, 1, |_| true) {
            for s in &slots {
                // (The Finish a full zone is sent lands.)
                if let Some(zone) = p.complete(s, true) {
                    assert!(matches!(p.begin_finish(zone), FinishTurn::Send));
                    p.end_finish(zone, true);
                }
            }
        }
        assert_eq!(p.free_zones(0), reserve);
        let (tomb, _) = p
            .reserve_with(Class::User, true, 1, 1, 1, |_| true)
            .expect("a tombstone may dip into the reserve");
        p.complete(&tomb[0], true);
        assert!(
            p.reserve(Class::User, 1, 1, 1, |_| true).is_err(),
            "an ordinary write does not take the zone opened for the tombstone"
        );
        let (next, _) = p
            .reserve_with(Class::User, true, 1, 1, 1, |_| true)
            .expect("the next tombstone goes there");
        assert_eq!(next[0].zone, tomb[0].zone);
    }

    /// A zone filled to capacity is sent a Finish too: a target that restarts before its
    /// next flush may bring the zone back Closed, holding an active resource for good.
    #[test]
    fn a_full_zone_is_finished_too() {
        let (_d, _drives, p) = setup(16);
        let (slots, _) = p.reserve(Class::User, 16, 1, 1, |_| true).unwrap();
        let zone = p
            .complete(&slots[0], true)
            .expect("a Finish for the full zone");
        assert_eq!(zone.zone, slots[0].zone);
    }

    #[test]
    fn writes_stripe_over_open_zones() {
        let (_d, _drives, p) = setup(16);
        let zones: std::collections::HashSet<u32> = (0..8)
            .map(|_| p.reserve(Class::User, 1, 1, 1, |_| true).unwrap().0[0].zone)
            .collect();
        assert!(zones.len() >= 2, "appends use several zones: {zones:?}");
    }

    #[test]
    fn a_zone_whose_only_append_failed_is_sealed_for_gc_not_freed() {
        let (_d, _drives, p) = setup(8);
        let free = p.free_zones(0);
        let slot = p.reserve(Class::User, 1, 1, 1, |_| true).unwrap().0[0];
        // The append may have landed although it failed: the zone is finished and left to
        // GC's reset, not handed out again as empty.
        let finish = p.complete(&slot, false);
        let zone = ZoneId {
            drive: 0,
            zone: slot.zone,
        };
        assert_eq!(finish, Some(zone));
        assert_eq!(p.free_zones(0), free - 1);
        assert_eq!(p.sealed(0), vec![(slot.zone, 0)]);
        assert!(p.begin_collect(zone));
        p.reset_done(zone);
        assert_eq!(p.free_zones(0), free);
    }

    #[test]
    fn gc_leaves_a_zone_alone_while_its_finish_is_on_its_way() {
        let (_d, _drives, p) = setup(8);
        let slot = p.reserve(Class::User, 1, 1, 1, |_| true).unwrap().0[0];
        let zone = p.complete(&slot, false).expect("a zone to finish");
        assert_eq!(p.begin_finish(zone), FinishTurn::Send);
        // A Finish landing after GC's reset would fill the zone in its next life.
        assert!(!p.begin_collect(zone));
        // It failed: still owed, and GC may take the zone meanwhile.
        p.end_finish(zone, false);
        assert!(p.begin_collect(zone));
        assert_eq!(p.begin_finish(zone), FinishTurn::Later);
        // GC gave up: the Finish is sent again.
        p.abort_collect(zone);
        assert_eq!(p.begin_finish(zone), FinishTurn::Send);
        p.end_finish(zone, false);
        // GC reset the zone: it owes nothing any more, also once opened again.
        assert!(p.begin_collect(zone));
        p.reset_done(zone);
        assert_eq!(p.begin_finish(zone), FinishTurn::Never);
    }

    #[test]
    fn a_finished_zone_is_not_finished_again() {
        let (_d, _drives, p) = setup(8);
        let slot = p.reserve(Class::User, 1, 1, 1, |_| true).unwrap().0[0];
        let zone = p.complete(&slot, false).expect("a zone to finish");
        assert_eq!(p.begin_finish(zone), FinishTurn::Send);
        p.end_finish(zone, true);
        assert_eq!(p.begin_finish(zone), FinishTurn::Never);
        assert!(p.begin_collect(zone));
    }

    #[test]
    fn gc_and_user_data_never_share_a_zone() {
        let (_d, _drives, p) = setup(16);
        let u = p.reserve(Class::User, 1, 1, 1, |_| true).unwrap().0[0];
        let g = p.reserve(Class::Gc, 1, 1, 1, |_| true).unwrap().0[0];
        assert_ne!(u.zone, g.zone);
    }
}
