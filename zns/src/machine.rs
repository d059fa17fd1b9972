//! The zone state machine of the ZNS command set: states, write pointers and open/active
//! resource accounting, with every check in the order the specification (and QEMU's reference
//! implementation, where the specification leaves room) applies them. Pure logic, no I/O: the
//! emulated drive wraps it with storage, and its decisions are what a real drive would decide.
//!
//! Implementation-defined choices, all deterministic:
//! - When a zone must open and the open limit is reached, the implicitly opened zone that was
//!   opened longest ago is closed to make room (as QEMU does); explicitly opened zones are never
//!   closed by the drive. The active limit is checked first and nothing changes if it fails.
//! - Open with Select All opens every Closed zone or none: it fails with Too Many Open Zones
//!   when the explicitly opened and closed zones together exceed the open limit; otherwise it
//!   first closes the oldest implicitly opened zones to make room.
//! - A zone whose write pointer reaches its capacity becomes Full when the write is accepted.

use crate::error::{ZoneError, ZoneResult};
use crate::geometry::Geometry;
use crate::zone::{ReportFilter, ZoneAction, ZoneDescriptor, ZoneReport, ZoneSelect, ZoneState};

/// One zone's mutable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneStatus {
    /// Current state.
    pub state: ZoneState,
    /// Blocks written from the zone start: data lies in `[zslba, zslba + written)`. For an open or
    /// closed zone this is the write pointer's offset.
    pub written: u64,
    /// Order in which the zone was last implicitly opened (for choosing whom to close).
    opened_at: u64,
}

impl ZoneStatus {
    /// A zone in `state` with `written` blocks of data.
    pub fn new(state: ZoneState, written: u64) -> Self {
        ZoneStatus {
            state,
            written,
            opened_at: 0,
        }
    }
}

/// The states and write pointers of all zones of a namespace, with resource accounting.
#[derive(Debug, Clone)]
pub struct ZoneTable {
    geometry: Geometry,
    zones: Vec<ZoneStatus>,
    open: u32,
    active: u32,
    clock: u64,
}

/// What a write was granted: where it lands and which zones changed state on the way (the zone
/// written and any zone implicitly closed to make room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteGrant {
    /// First LBA of the data.
    pub lba: u64,
    /// Zones whose state changed.
    pub changed: Vec<u32>,
}

impl ZoneTable {
    /// A table of empty zones.
    pub fn new(geometry: Geometry) -> Self {
        let zones = vec![ZoneStatus::new(ZoneState::Empty, 0); geometry.zone_count as usize];
        Self::from_zones(geometry, zones)
    }

    /// A table with the given zones (as recovered from storage); resources are recounted.
    pub fn from_zones(geometry: Geometry, zones: Vec<ZoneStatus>) -> Self {
        let mut table = ZoneTable {
            geometry,
            zones,
            open: 0,
            active: 0,
            clock: 0,
        };
        for i in 0..table.zones.len() {
            let state = table.zones[i].state;
            table.open += u32::from(state.is_open());
            table.active += u32::from(state.is_active());
            if state == ZoneState::ImplicitlyOpened {
                table.clock += 1;
                table.zones[i].opened_at = table.clock;
            }
        }
        table
    }

    /// The namespace geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Zone `index`'s status.
    pub fn zone(&self, index: u32) -> ZoneStatus {
        self.zones[index as usize]
    }

    /// Number of zones in the opened states.
    pub fn open_count(&self) -> u32 {
        self.open
    }

    /// Number of zones in the opened or closed states.
    pub fn active_count(&self) -> u32 {
        self.active
    }

    /// The zone descriptor Report Zones shows for zone `index`.
    pub fn descriptor(&self, index: u32) -> ZoneDescriptor {
        let z = self.zones[index as usize];
        let zslba = self.geometry.zone_start(index);
        // Full, Read Only and Offline zones have no valid write pointer (ZNS Figure 4); like
        // QEMU, report all ones.
        let wp = match z.state {
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => u64::MAX,
            _ => zslba + z.written,
        };
        ZoneDescriptor {
            state: z.state,
            zslba,
            zcap: self.geometry.zone_capacity,
            wp,
        }
    }

    fn set_state(&mut self, index: u32, state: ZoneState) {
        let zone = &mut self.zones[index as usize];
        let old = zone.state;
        self.open = self.open - u32::from(old.is_open()) + u32::from(state.is_open());
        self.active = self.active - u32::from(old.is_active()) + u32::from(state.is_active());
        if state == ZoneState::ImplicitlyOpened && old != ZoneState::ImplicitlyOpened {
            self.clock += 1;
            zone.opened_at = self.clock;
        }
        zone.state = state;
    }

    fn zone_of(&self, lba: u64) -> u32 {
        self.geometry
            .zone_index(lba)
            .expect("caller checked that the LBA is inside the namespace")
    }

    fn check_bounds(&self, lba: u64, blocks: u64) -> ZoneResult<()> {
        match lba.checked_add(blocks) {
            Some(end) if blocks > 0 && end <= self.geometry.total_blocks() => Ok(()),
            _ => Err(ZoneError::LbaOutOfRange { lba, blocks }),
        }
    }

    /// Checks that `blocks` blocks at `lba` may be read.
    pub fn check_read(&self, lba: u64, blocks: u64) -> ZoneResult<()> {
        self.check_bounds(lba, blocks)?;
        let first = self.zone_of(lba);
        let last = self.zone_of(lba + blocks - 1);
        for index in first..=last {
            if self.zones[index as usize].state == ZoneState::Offline {
                return Err(ZoneError::ZoneIsOffline {
                    zslba: self.geometry.zone_start(index),
                });
            }
        }
        Ok(())
    }

    /// How many of `blocks` blocks from `lba` hold data in the zone containing `lba` (the rest of
    /// the range within that zone reads as zeros).
    pub fn readable_blocks(&self, lba: u64, blocks: u64) -> u64 {
        let index = self.zone_of(lba);
        let data_end = self.geometry.zone_start(index) + self.zones[index as usize].written;
        data_end.saturating_sub(lba).min(blocks)
    }

    /// Validates a Write (`append == false`, `lba` must be the write pointer) or a Zone Append
    /// (`append == true`, `lba` must be a zone start) of `blocks` blocks, opens the zone if
    /// needed, advances the write pointer and returns where the data goes.
    pub fn grant_write(&mut self, lba: u64, blocks: u64, append: bool) -> ZoneResult<WriteGrant> {
        if append {
            // An append names only its zone: where its data would end is the zone's business
            // (the append size limit, then a Zone Boundary Error), not the namespace's, even in
            // the last zone.
            if blocks == 0 {
                return Err(ZoneError::LbaOutOfRange { lba, blocks });
            }
            self.check_bounds(lba, 1)?;
        } else {
            self.check_bounds(lba, blocks)?;
        }
        let index = self.zone_of(lba);
        let zslba = self.geometry.zone_start(index);
        if append {
            if lba != zslba {
                return Err(ZoneError::InvalidField(format!(
                    "zone append to LBA {lba}, which is not a zone start"
                )));
            }
            if blocks > u64::from(self.geometry.max_append_blocks) {
                return Err(ZoneError::InvalidField(format!(
                    "zone append of {blocks} blocks exceeds the limit of {}",
                    self.geometry.max_append_blocks
                )));
            }
        }
        let zone = self.zones[index as usize];
        match zone.state {
            ZoneState::Full => return Err(ZoneError::ZoneIsFull { zslba }),
            ZoneState::ReadOnly => return Err(ZoneError::ZoneIsReadOnly { zslba }),
            ZoneState::Offline => return Err(ZoneError::ZoneIsOffline { zslba }),
            _ => {}
        }
        let wp = zslba + zone.written;
        let start = if append { wp } else { lba };
        if start != wp {
            return Err(ZoneError::ZoneInvalidWrite { lba });
        }
        if zone.written + blocks > self.geometry.zone_capacity {
            return Err(ZoneError::ZoneBoundary {
                lba: start,
                blocks,
                zslba,
            });
        }
        let mut changed = self.acquire_open(index, false)?;
        let zone = &mut self.zones[index as usize];
        zone.written += blocks;
        if zone.written == self.geometry.zone_capacity {
            self.set_state(index, ZoneState::Full);
        }
        if !changed.contains(&index) {
            changed.push(index);
        }
        Ok(WriteGrant {
            lba: start,
            changed,
        })
    }

    /// Moves zone `index` into an opened state (implicitly for writes, explicitly for Open Zone),
    /// taking resources as needed. Returns the zones whose state changed.
    fn acquire_open(&mut self, index: u32, explicit: bool) -> ZoneResult<Vec<u32>> {
        let zslba = self.geometry.zone_start(index);
        let state = self.zones[index as usize].state;
        let target = if explicit {
            ZoneState::ExplicitlyOpened
        } else {
            ZoneState::ImplicitlyOpened
        };
        let mut changed = Vec::new();
        match state {
            ZoneState::Empty | ZoneState::Closed => {
                if state == ZoneState::Empty
                    && let Some(limit) = self.geometry.max_active
                    && self.active >= limit
                {
                    return Err(ZoneError::TooManyActiveZones { zslba });
                }
                if let Some(limit) = self.geometry.max_open
                    && self.open >= limit
                {
                    let victim = self.oldest_implicitly_open();
                    match victim {
                        Some(victim) => {
                            self.set_state(victim, ZoneState::Closed);
                            changed.push(victim);
                        }
                        None => return Err(ZoneError::TooManyOpenZones { zslba }),
                    }
                }
                self.set_state(index, target);
                changed.push(index);
            }
            ZoneState::ImplicitlyOpened if explicit => {
                self.set_state(index, target);
                changed.push(index);
            }
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => {}
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => {
                return Err(ZoneError::InvalidZoneStateTransition {
                    action: ZoneAction::Open,
                    zslba,
                    state: Some(state),
                });
            }
        }
        Ok(changed)
    }

    fn oldest_implicitly_open(&self) -> Option<u32> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.state == ZoneState::ImplicitlyOpened)
            .min_by_key(|(_, z)| z.opened_at)
            .map(|(i, _)| i as u32)
    }

    /// Applies a Zone Management Send action. Returns the zones whose state changed; zones that
    /// were reset appear with state Empty and no data.
    pub fn manage(&mut self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<Vec<u32>> {
        match select {
            ZoneSelect::Zone(zslba) => {
                let index = match self.geometry.zone_index(zslba) {
                    Some(index) if self.geometry.zone_start(index) == zslba => index,
                    Some(_) => {
                        return Err(ZoneError::InvalidField(format!(
                            "LBA {zslba} is not the start of a zone"
                        )));
                    }
                    None => {
                        return Err(ZoneError::LbaOutOfRange {
                            lba: zslba,
                            blocks: 1,
                        });
                    }
                };
                self.apply(action, index)
            }
            ZoneSelect::All => self.apply_all(action),
        }
    }

    fn apply(&mut self, action: ZoneAction, index: u32) -> ZoneResult<Vec<u32>> {
        let zslba = self.geometry.zone_start(index);
        let state = self.zones[index as usize].state;
        let invalid = || {
            Err(ZoneError::InvalidZoneStateTransition {
                action,
                zslba,
                state: Some(state),
            })
        };
        let unchanged = Ok(Vec::new());
        match action {
            ZoneAction::Open => self.acquire_open(index, true),
            ZoneAction::Close => match state {
                ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => {
                    self.set_state(index, ZoneState::Closed);
                    Ok(vec![index])
                }
                ZoneState::Closed => unchanged,
                _ => invalid(),
            },
            ZoneAction::Finish => match state {
                // An empty zone passes through the active states on its way to Full: it needs
                // an active resource for the moment (as QEMU's and null_blk's zoned devices
                // check), and a drive at its limit refuses.
                ZoneState::Empty
                    if self
                        .geometry
                        .max_active
                        .is_some_and(|limit| self.active >= limit) =>
                {
                    Err(ZoneError::TooManyActiveZones { zslba })
                }
                ZoneState::Empty
                | ZoneState::ImplicitlyOpened
                | ZoneState::ExplicitlyOpened
                | ZoneState::Closed => {
                    self.set_state(index, ZoneState::Full);
                    Ok(vec![index])
                }
                ZoneState::Full => unchanged,
                _ => invalid(),
            },
            ZoneAction::Reset => match state {
                ZoneState::ImplicitlyOpened
                | ZoneState::ExplicitlyOpened
                | ZoneState::Closed
                | ZoneState::Full => {
                    self.set_state(index, ZoneState::Empty);
                    self.zones[index as usize].written = 0;
                    Ok(vec![index])
                }
                ZoneState::Empty => unchanged,
                _ => invalid(),
            },
            ZoneAction::Offline => match state {
                ZoneState::ReadOnly => {
                    self.set_state(index, ZoneState::Offline);
                    Ok(vec![index])
                }
                ZoneState::Offline => unchanged,
                _ => invalid(),
            },
        }
    }

    fn apply_all(&mut self, action: ZoneAction) -> ZoneResult<Vec<u32>> {
        let applies = |state: ZoneState| match action {
            ZoneAction::Open => state == ZoneState::Closed,
            ZoneAction::Close => state.is_open(),
            ZoneAction::Finish => state.is_active(),
            ZoneAction::Reset => state.is_active() || state == ZoneState::Full,
            ZoneAction::Offline => state == ZoneState::ReadOnly,
        };
        let selected: Vec<u32> = (0..self.geometry.zone_count)
            .filter(|&i| applies(self.zones[i as usize].state))
            .collect();
        let mut changed = Vec::with_capacity(selected.len());
        if action == ZoneAction::Open
            && let Some(limit) = self.geometry.max_open
        {
            let explicit = self
                .zones
                .iter()
                .filter(|z| z.state == ZoneState::ExplicitlyOpened)
                .count() as u32;
            if explicit + selected.len() as u32 > limit {
                let zslba = selected.first().map_or(0, |&i| self.geometry.zone_start(i));
                return Err(ZoneError::TooManyOpenZones { zslba });
            }
            while self.open + selected.len() as u32 > limit {
                let victim = self
                    .oldest_implicitly_open()
                    .expect("enough implicitly opened zones to close, by the check above");
                self.set_state(victim, ZoneState::Closed);
                changed.push(victim);
            }
        }
        for index in selected {
            changed.extend(self.apply(action, index)?);
        }
        Ok(changed)
    }

    /// Moves zone `index` to Read Only or Offline, as a failing drive would (fault injection).
    pub fn degrade(&mut self, index: u32, state: ZoneState) {
        debug_assert!(matches!(state, ZoneState::ReadOnly | ZoneState::Offline));
        self.set_state(index, state);
    }

    /// Report Zones: descriptors of the zones matching `filter`, from the zone holding
    /// `start_lba` on, at most `max_zones` of them.
    pub fn report(
        &self,
        start_lba: u64,
        filter: ReportFilter,
        max_zones: usize,
    ) -> ZoneResult<ZoneReport> {
        let first = self
            .geometry
            .zone_index(start_lba)
            .ok_or(ZoneError::LbaOutOfRange {
                lba: start_lba,
                blocks: 1,
            })?;
        let mut report = ZoneReport {
            matching: 0,
            zones: Vec::new(),
        };
        for index in first..self.geometry.zone_count {
            if filter.matches(self.zones[index as usize].state) {
                report.matching += 1;
                if report.zones.len() < max_zones {
                    report.zones.push(self.descriptor(index));
                }
            }
        }
        Ok(report)
    }

    /// State after a power loss or shutdown (ZNS §2.1.1.3): opened and closed zones become
    /// Closed, or Empty if nothing was written to them. A drive never comes back holding more
    /// active zones than it has: should the crash have left more Closed (a zone whose filling
    /// write had not landed is Closed short of its capacity, while the zone opened in its
    /// place is recorded too), the fullest are finished, as a Finish would, keeping their data.
    pub fn after_power_loss(&mut self) {
        for index in 0..self.geometry.zone_count {
            let zone = self.zones[index as usize];
            if zone.state.is_active() {
                let state = if zone.written == 0 {
                    ZoneState::Empty
                } else {
                    ZoneState::Closed
                };
                self.set_state(index, state);
            }
        }
        let Some(limit) = self.geometry.max_active else {
            return;
        };
        while self.active > limit {
            let fullest = (0..self.geometry.zone_count)
                .filter(|&i| self.zones[i as usize].state == ZoneState::Closed)
                .max_by_key(|&i| (self.zones[i as usize].written, std::cmp::Reverse(i)));
            let Some(index) = fullest else { return };
            self.set_state(index, ZoneState::Full);
        }
    }

    /// Overrides how many blocks zone `index` holds (used when recovering from storage, where the
    /// durable write pointer may lag the one in memory).
    pub fn set_written(&mut self, index: u32, written: u64) {
        self.zones[index as usize].written = written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Geometry {
        Geometry {
            block_size: 4096,
            zone_size: 16,
            zone_capacity: 12,
            zone_count: 6,
            max_open: Some(2),
            max_active: Some(3),
            max_append_blocks: 4,
        }
    }

    #[test]
    fn write_opens_implicitly_and_fills_at_capacity() {
        let mut t = ZoneTable::new(small());
        let g = t.grant_write(0, 4, false).unwrap();
        assert_eq!(g.lba, 0);
        assert_eq!(t.zone(0).state, ZoneState::ImplicitlyOpened);
        assert_eq!(t.grant_write(0, 4, true).unwrap().lba, 4);
        assert_eq!(t.grant_write(0, 4, true).unwrap().lba, 8);
        assert_eq!(t.zone(0).state, ZoneState::Full);
        assert_eq!(t.open_count(), 0);
        assert_eq!(t.active_count(), 0);
    }

    #[test]
    fn append_past_zone_capacity_is_a_boundary_error() {
        let mut t = ZoneTable::new(small());
        t.grant_write(0, 4, true).unwrap();
        t.grant_write(0, 4, true).unwrap();
        t.grant_write(0, 2, true).unwrap();
        let err = t.grant_write(0, 4, true).unwrap_err();
        assert!(matches!(err, ZoneError::ZoneBoundary { .. }), "{err}");
    }

    #[test]
    fn oversized_append_to_the_last_zone_breaks_the_append_limit_not_the_namespace() {
        let mut t = ZoneTable::new(small());
        let last = 5 * 16;
        let err = t.grant_write(last, 20, true).unwrap_err();
        assert!(matches!(err, ZoneError::InvalidField(_)), "{err}");
        let err = t.grant_write(last + 1, 1, true).unwrap_err();
        assert!(matches!(err, ZoneError::InvalidField(_)), "{err}");
        let err = t.grant_write(96, 1, true).unwrap_err();
        assert!(matches!(err, ZoneError::LbaOutOfRange { .. }), "{err}");
        let err = t.grant_write(last, 0, true).unwrap_err();
        assert!(matches!(err, ZoneError::LbaOutOfRange { .. }), "{err}");
        assert_eq!(t.zone(5).written, 0);
    }

    #[test]
    fn write_away_from_the_write_pointer_is_invalid() {
        let mut t = ZoneTable::new(small());
        let err = t.grant_write(1, 1, false).unwrap_err();
        assert!(matches!(err, ZoneError::ZoneInvalidWrite { lba: 1 }));
    }

    #[test]
    fn open_limit_closes_the_oldest_implicitly_open_zone() {
        let mut t = ZoneTable::new(small());
        t.grant_write(0, 1, false).unwrap();
        t.grant_write(16, 1, false).unwrap();
        let g = t.grant_write(32, 1, false).unwrap();
        assert_eq!(t.zone(0).state, ZoneState::Closed);
        assert!(g.changed.contains(&0) && g.changed.contains(&2));
        assert_eq!(t.open_count(), 2);
        assert_eq!(t.active_count(), 3);
        // Active limit reached: a fourth zone cannot become active.
        let err = t.grant_write(48, 1, false).unwrap_err();
        assert!(matches!(err, ZoneError::TooManyActiveZones { zslba: 48 }));
    }

    /// Finishing an empty zone needs an active resource for the moment: at the limit it is
    /// Too Many Active Zones; below it, the zone goes to Full and holds none.
    #[test]
    fn finishing_an_empty_zone_needs_an_active_resource() {
        let mut t = ZoneTable::new(small());
        for zone in [0, 16, 32] {
            t.grant_write(zone, 1, false).unwrap();
        }
        assert_eq!(t.active_count(), 3);
        let err = t
            .manage(ZoneAction::Finish, ZoneSelect::Zone(48))
            .unwrap_err();
        assert!(matches!(err, ZoneError::TooManyActiveZones { zslba: 48 }));
        assert_eq!(t.zone(3).state, ZoneState::Empty);
        t.manage(ZoneAction::Finish, ZoneSelect::Zone(0)).unwrap();
        t.manage(ZoneAction::Finish, ZoneSelect::Zone(48)).unwrap();
        assert_eq!(t.zone(3).state, ZoneState::Full);
        assert_eq!(t.active_count(), 2);
    }

    #[test]
    fn explicitly_opened_zones_are_never_closed_by_the_drive() {
        let mut t = ZoneTable::new(small());
        t.manage(ZoneAction::Open, ZoneSelect::Zone(0)).unwrap();
        t.manage(ZoneAction::Open, ZoneSelect::Zone(16)).unwrap();
        let err = t.grant_write(32, 1, false).unwrap_err();
        assert!(matches!(err, ZoneError::TooManyOpenZones { .. }));
    }

    #[test]
    fn reset_returns_to_empty_and_frees_resources() {
        let mut t = ZoneTable::new(small());
        t.grant_write(0, 3, false).unwrap();
        t.manage(ZoneAction::Reset, ZoneSelect::Zone(0)).unwrap();
        assert_eq!((t.zone(0).state, t.zone(0).written), (ZoneState::Empty, 0));
        assert_eq!(t.active_count(), 0);
    }

    #[test]
    fn read_only_and_offline_reject_writes_and_transitions() {
        let mut t = ZoneTable::new(small());
        t.degrade(1, ZoneState::ReadOnly);
        assert!(matches!(
            t.grant_write(16, 1, false),
            Err(ZoneError::ZoneIsReadOnly { zslba: 16 })
        ));
        assert!(matches!(
            t.manage(ZoneAction::Reset, ZoneSelect::Zone(16)),
            Err(ZoneError::InvalidZoneStateTransition { .. })
        ));
        t.manage(ZoneAction::Offline, ZoneSelect::All).unwrap();
        assert_eq!(t.zone(1).state, ZoneState::Offline);
        assert!(matches!(
            t.check_read(16, 1),
            Err(ZoneError::ZoneIsOffline { .. })
        ));
    }

    #[test]
    fn report_counts_all_matches_but_returns_at_most_max() {
        let mut t = ZoneTable::new(small());
        t.grant_write(16, 1, false).unwrap();
        let r = t.report(0, ReportFilter::Empty, 2).unwrap();
        assert_eq!(r.matching, 5);
        assert_eq!(r.zones.len(), 2);
        assert_eq!(r.zones[1].zslba, 32);
    }
}
