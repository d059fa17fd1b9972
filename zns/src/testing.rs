//! Test support shared by the crates that implement or carry a [`ZonedDevice`]: an independent,
//! deliberately naive model of the ZNS specification, random operation sequences, and a runner
//! that applies the same sequence to a device and to the model so their answers can be compared.
//! Enabled by the `testing` feature.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;

use crate::device::{WriteHint, ZonedDevice};
use crate::emulated::EmulatedZns;
use crate::error::{ZoneError, ZoneErrorKind, ZoneResult};
use crate::geometry::Geometry;
use crate::zone::{ReportFilter, ZoneAction, ZoneDescriptor, ZoneReport, ZoneSelect, ZoneState};

/// One operation of a random sequence. Zone numbers are taken modulo the zone count.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write `blocks` blocks at the write pointer of `zone` shifted by `skew` blocks.
    Write {
        zone: u32,
        skew: i8,
        blocks: u8,
        seed: u8,
    },
    /// Write Zeroes of `blocks` blocks at the write pointer of `zone` shifted by `skew`.
    WriteZeroes { zone: u32, skew: i8, blocks: u8 },
    /// Zone Append of `blocks` blocks to `zone` (to an LBA inside it when `misaligned`).
    Append {
        zone: u32,
        misaligned: bool,
        blocks: u8,
        seed: u8,
    },
    /// Read `blocks` blocks from block `offset` of `zone`.
    Read { zone: u32, offset: u8, blocks: u8 },
    /// A zone management action on `zone`, or on all zones when `zone` is `None`.
    Manage {
        action: ZoneAction,
        zone: Option<u32>,
    },
    /// Report Zones from `zone` with `filter`, at most `max` descriptors.
    Report {
        zone: u32,
        filter: ReportFilter,
        max: u8,
    },
    /// Flush.
    Flush,
    /// Fault injection: `zone` becomes Read Only.
    MakeReadOnly { zone: u32 },
    /// Fault injection: `zone` goes Offline.
    MakeOffline { zone: u32 },
    /// Fault injection: power loss (unflushed data is dropped).
    PowerLoss,
}

/// What an operation answered, comparable between a device and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success without data.
    Done,
    /// A Zone Append landed at this LBA.
    Placed(u64),
    /// Read data.
    Data(Vec<u8>),
    /// A zone report.
    Report(ZoneReport),
    /// The operation failed with this kind of error.
    Failed(ZoneErrorKind),
}

/// Drive-side controls a harness needs besides the [`ZonedDevice`] interface: what a test does
/// to the drive itself (fault injection), wherever the drive is.
#[async_trait]
pub trait Backdoor: Send + Sync {
    /// Makes the zone at `zslba` Read Only.
    async fn make_read_only(&self, zslba: u64) -> Result<(), ZoneError>;
    /// Takes the zone at `zslba` Offline.
    async fn make_offline(&self, zslba: u64) -> Result<(), ZoneError>;
    /// Simulates a power loss.
    async fn power_loss(&self);
}

#[async_trait]
impl Backdoor for EmulatedZns {
    async fn make_read_only(&self, zslba: u64) -> Result<(), ZoneError> {
        self.make_zone_read_only(zslba).await
    }
    async fn make_offline(&self, zslba: u64) -> Result<(), ZoneError> {
        self.make_zone_offline(zslba).await
    }
    async fn power_loss(&self) {
        self.simulate_power_loss().await
    }
}

/// The bytes of block `lba` written with `seed`.
pub fn pattern(geometry: &Geometry, lba: u64, blocks: u64, seed: u8) -> Vec<u8> {
    let bs = geometry.block_size as usize;
    let mut out = Vec::with_capacity(blocks as usize * bs);
    for b in 0..blocks {
        let tag = (lba + b).wrapping_mul(31).wrapping_add(u64::from(seed));
        out.extend((0..bs).map(|i| (tag as u8).wrapping_add((i / 7) as u8) ^ seed));
    }
    out
}

fn target_lba(geometry: &Geometry, zone: u32, wp: u64, skew: i8) -> u64 {
    let _ = zone;
    let lba = wp as i64 + i64::from(skew);
    lba.clamp(0, geometry.total_blocks() as i64 + 2) as u64
}

/// Applies `op` to a device, returning what it answered.
pub async fn apply(device: &dyn ZonedDevice, backdoor: &dyn Backdoor, op: &Op) -> Outcome {
    let g = device.geometry();
    let zslba = |zone: u32| g.zone_start(zone % g.zone_count);
    let outcome = |r: Result<(), ZoneError>| match r {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(e.kind()),
    };
    match *op {
        Op::Write {
            zone,
            skew,
            blocks,
            seed,
        } => {
            let wp = current_wp(device, zslba(zone)).await;
            let lba = target_lba(&g, zone, wp, skew);
            let data = pattern(&g, lba, u64::from(blocks), seed);
            outcome(device.write(lba, Bytes::from(data)).await)
        }
        Op::WriteZeroes { zone, skew, blocks } => {
            let wp = current_wp(device, zslba(zone)).await;
            let lba = target_lba(&g, zone, wp, skew);
            outcome(device.write_zeroes(lba, u32::from(blocks)).await)
        }
        Op::Append {
            zone,
            misaligned,
            blocks,
            seed,
        } => {
            let lba = zslba(zone) + u64::from(misaligned);
            // The data pattern cannot depend on where the drive puts it; key it on the zone.
            let data = pattern(&g, lba, u64::from(blocks), seed);
            match device.append(lba, Bytes::from(data)).await {
                Ok(at) => Outcome::Placed(at),
                Err(e) => Outcome::Failed(e.kind()),
            }
        }
        Op::Read {
            zone,
            offset,
            blocks,
        } => {
            let lba = zslba(zone) + u64::from(offset);
            match device.read(lba, u32::from(blocks)).await {
                Ok(data) => Outcome::Data(data.to_vec()),
                Err(e) => Outcome::Failed(e.kind()),
            }
        }
        Op::Manage { action, zone } => {
            let select = zone.map_or(ZoneSelect::All, |z| ZoneSelect::Zone(zslba(z)));
            outcome(device.manage_zones(action, select).await)
        }
        Op::Report { zone, filter, max } => {
            match device
                .report_zones(zslba(zone), filter, usize::from(max))
                .await
            {
                Ok(report) => Outcome::Report(report),
                Err(e) => Outcome::Failed(e.kind()),
            }
        }
        Op::Flush => outcome(device.flush().await),
        Op::MakeReadOnly { zone } => outcome(backdoor.make_read_only(zslba(zone)).await),
        Op::MakeOffline { zone } => outcome(backdoor.make_offline(zslba(zone)).await),
        Op::PowerLoss => {
            backdoor.power_loss().await;
            Outcome::Done
        }
    }
}

async fn current_wp(device: &dyn ZonedDevice, zslba: u64) -> u64 {
    match device.report_zones(zslba, ReportFilter::All, 1).await {
        Ok(report) => report
            .zones
            .first()
            .map_or(zslba, |z| if z.wp == u64::MAX { zslba } else { z.wp }),
        Err(_) => zslba,
    }
}

#[derive(Debug, Clone)]
struct ModelZone {
    state: ZoneState,
    written: u64,
    data: Vec<u8>,
}

/// A naive model of a ZNS namespace written straight from the specification's rules, with none
/// of the drive's code: the oracle for property tests.
#[derive(Debug, Clone)]
pub struct Model {
    g: Geometry,
    zones: Vec<ModelZone>,
    /// Zones in ZSIO, in the order they entered it.
    implicit_fifo: VecDeque<u32>,
    /// (state, written) as last made durable.
    durable: Vec<(ZoneState, u64)>,
}

impl Model {
    /// A model of a namespace of empty zones.
    pub fn new(g: Geometry) -> Self {
        let zone = ModelZone {
            state: ZoneState::Empty,
            written: 0,
            data: vec![0; g.zone_capacity_bytes() as usize],
        };
        Model {
            g,
            zones: vec![zone; g.zone_count as usize],
            implicit_fifo: VecDeque::new(),
            durable: vec![(ZoneState::Empty, 0); g.zone_count as usize],
        }
    }

    fn count(&self, f: impl Fn(ZoneState) -> bool) -> u32 {
        self.zones.iter().filter(|z| f(z.state)).count() as u32
    }

    fn set(&mut self, zone: u32, state: ZoneState) {
        let old = self.zones[zone as usize].state;
        if old == ZoneState::ImplicitlyOpened && state != old {
            self.implicit_fifo.retain(|&z| z != zone);
        }
        if state == ZoneState::ImplicitlyOpened && old != state {
            self.implicit_fifo.push_back(zone);
        }
        self.zones[zone as usize].state = state;
    }

    /// Takes resources to open `zone`; returns zones whose state changed, or the error.
    fn open(&mut self, zone: u32, explicit: bool) -> Result<Vec<u32>, ZoneErrorKind> {
        use ZoneState::*;
        let state = self.zones[zone as usize].state;
        let target = if explicit {
            ExplicitlyOpened
        } else {
            ImplicitlyOpened
        };
        match state {
            Empty | Closed => {
                let active =
                    self.count(|s| matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed));
                let open = self.count(|s| matches!(s, ImplicitlyOpened | ExplicitlyOpened));
                if state == Empty && self.g.max_active.is_some_and(|m| active + 1 > m) {
                    return Err(ZoneErrorKind::TooManyActiveZones);
                }
                let mut changed = vec![];
                if self.g.max_open.is_some_and(|m| open + 1 > m) {
                    let Some(&victim) = self.implicit_fifo.front() else {
                        return Err(ZoneErrorKind::TooManyOpenZones);
                    };
                    self.set(victim, Closed);
                    changed.push(victim);
                }
                self.set(zone, target);
                changed.push(zone);
                Ok(changed)
            }
            ImplicitlyOpened if explicit => {
                self.set(zone, target);
                Ok(vec![zone])
            }
            ImplicitlyOpened | ExplicitlyOpened => Ok(vec![]),
            _ => Err(ZoneErrorKind::InvalidZoneStateTransition),
        }
    }

    fn write(
        &mut self,
        lba: u64,
        blocks: u64,
        append: bool,
        data: Option<&[u8]>,
    ) -> Result<u64, ZoneErrorKind> {
        use ZoneState::*;
        if blocks == 0 {
            return Err(ZoneErrorKind::InvalidField);
        }
        // An append names only its zone start; its length is checked against the zone.
        let checked = if append { 1 } else { blocks };
        if lba + checked > self.g.total_blocks() {
            return Err(ZoneErrorKind::LbaOutOfRange);
        }
        let zone = (lba / self.g.zone_size) as u32;
        let zslba = u64::from(zone) * self.g.zone_size;
        if append && (lba != zslba || blocks > u64::from(self.g.max_append_blocks)) {
            return Err(ZoneErrorKind::InvalidField);
        }
        let z = &self.zones[zone as usize];
        match z.state {
            Full => return Err(ZoneErrorKind::ZoneIsFull),
            ReadOnly => return Err(ZoneErrorKind::ZoneIsReadOnly),
            Offline => return Err(ZoneErrorKind::ZoneIsOffline),
            _ => {}
        }
        let wp = zslba + z.written;
        let start = if append { wp } else { lba };
        if start != wp {
            return Err(ZoneErrorKind::ZoneInvalidWrite);
        }
        if z.written + blocks > self.g.zone_capacity {
            return Err(ZoneErrorKind::ZoneBoundary);
        }
        self.open(zone, false)?;
        let bs = self.g.block_size as usize;
        let z = &mut self.zones[zone as usize];
        let at = z.written as usize * bs;
        let len = blocks as usize * bs;
        match data {
            Some(d) => z.data[at..at + len].copy_from_slice(d),
            None => z.data[at..at + len].fill(0),
        }
        z.written += blocks;
        if z.written == self.g.zone_capacity {
            self.set(zone, Full);
        }
        Ok(start)
    }

    fn read(&self, lba: u64, blocks: u64) -> Result<Vec<u8>, ZoneErrorKind> {
        if blocks == 0 || lba + blocks > self.g.total_blocks() {
            return Err(ZoneErrorKind::LbaOutOfRange);
        }
        let bs = self.g.block_size as usize;
        let mut out = Vec::new();
        for b in lba..lba + blocks {
            let zone = (b / self.g.zone_size) as usize;
            if self.zones[zone].state == ZoneState::Offline {
                return Err(ZoneErrorKind::ZoneIsOffline);
            }
            let rel = b % self.g.zone_size;
            if rel < self.zones[zone].written {
                let at = rel as usize * bs;
                out.extend_from_slice(&self.zones[zone].data[at..at + bs]);
            } else {
                out.extend(std::iter::repeat_n(0u8, bs));
            }
        }
        Ok(out)
    }

    fn manage_one(&mut self, action: ZoneAction, zone: u32) -> Result<Vec<u32>, ZoneErrorKind> {
        use ZoneState::*;
        let state = self.zones[zone as usize].state;
        let bad = Err(ZoneErrorKind::InvalidZoneStateTransition);
        match (action, state) {
            (ZoneAction::Open, _) => self.open(zone, true),
            (ZoneAction::Close, ImplicitlyOpened | ExplicitlyOpened) => {
                self.set(zone, Closed);
                Ok(vec![zone])
            }
            (ZoneAction::Close, Closed) => Ok(vec![]),
            // (An empty zone is active for the moment it is finished.)
            (ZoneAction::Finish, Empty)
                if self.g.max_active.is_some_and(|m| {
                    self.count(|s| matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed)) >= m
                }) =>
            {
                Err(ZoneErrorKind::TooManyActiveZones)
            }
            (ZoneAction::Finish, Empty | ImplicitlyOpened | ExplicitlyOpened | Closed) => {
                self.set(zone, Full);
                Ok(vec![zone])
            }
            (ZoneAction::Finish, Full) => Ok(vec![]),
            (ZoneAction::Reset, ImplicitlyOpened | ExplicitlyOpened | Closed | Full) => {
                self.set(zone, Empty);
                self.zones[zone as usize].written = 0;
                Ok(vec![zone])
            }
            (ZoneAction::Reset, Empty) => Ok(vec![]),
            (ZoneAction::Offline, ReadOnly) => {
                self.set(zone, Offline);
                Ok(vec![zone])
            }
            (ZoneAction::Offline, Offline) => Ok(vec![]),
            _ => bad,
        }
    }

    fn manage(&mut self, action: ZoneAction, zone: Option<u32>) -> Result<Vec<u32>, ZoneErrorKind> {
        use ZoneState::*;
        let Some(zone) = zone else {
            let picks: Vec<u32> = (0..self.g.zone_count)
                .filter(|&z| {
                    let s = self.zones[z as usize].state;
                    match action {
                        ZoneAction::Open => s == Closed,
                        ZoneAction::Close => matches!(s, ImplicitlyOpened | ExplicitlyOpened),
                        ZoneAction::Finish => {
                            matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed)
                        }
                        ZoneAction::Reset => {
                            matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed | Full)
                        }
                        ZoneAction::Offline => s == ReadOnly,
                    }
                })
                .collect();
            let mut changed = vec![];
            if action == ZoneAction::Open
                && let Some(max) = self.g.max_open
            {
                let explicit = self.count(|s| s == ExplicitlyOpened);
                if explicit + picks.len() as u32 > max {
                    return Err(ZoneErrorKind::TooManyOpenZones);
                }
                while self.count(|s| matches!(s, ImplicitlyOpened | ExplicitlyOpened))
                    + picks.len() as u32
                    > max
                {
                    let victim = self.implicit_fifo[0];
                    self.set(victim, Closed);
                    changed.push(victim);
                }
            }
            for z in picks {
                changed.extend(self.manage_one(action, z)?);
            }
            return Ok(changed);
        };
        self.manage_one(action, zone)
    }

    fn descriptor(&self, zone: u32) -> ZoneDescriptor {
        let z = &self.zones[zone as usize];
        let zslba = u64::from(zone) * self.g.zone_size;
        ZoneDescriptor {
            state: z.state,
            zslba,
            zcap: self.g.zone_capacity,
            wp: match z.state {
                ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => u64::MAX,
                _ => zslba + z.written,
            },
        }
    }

    fn make_durable(&mut self, zones: &[u32]) {
        for &z in zones {
            let zone = &self.zones[z as usize];
            self.durable[z as usize] = (zone.state, zone.written);
        }
    }

    /// Applies `op` to the model, returning what a correct drive answers.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        let g = self.g;
        let zone_of = |z: u32| z % g.zone_count;
        let wp_of = |m: &Model, z: u32| {
            let d = m.descriptor(zone_of(z));
            if d.wp == u64::MAX { d.zslba } else { d.wp }
        };
        let done =
            |r: Result<Vec<u32>, ZoneErrorKind>| r.map_or_else(Outcome::Failed, |_| Outcome::Done);
        match *op {
            Op::Write {
                zone,
                skew,
                blocks,
                seed,
            } => {
                let lba = target_lba(&g, zone, wp_of(self, zone), skew);
                let data = pattern(&g, lba, u64::from(blocks), seed);
                self.write(lba, u64::from(blocks), false, Some(&data))
                    .map_or_else(Outcome::Failed, |_| Outcome::Done)
            }
            Op::WriteZeroes { zone, skew, blocks } => {
                let lba = target_lba(&g, zone, wp_of(self, zone), skew);
                self.write(lba, u64::from(blocks), false, None)
                    .map_or_else(Outcome::Failed, |_| Outcome::Done)
            }
            Op::Append {
                zone,
                misaligned,
                blocks,
                seed,
            } => {
                let lba = g.zone_start(zone_of(zone)) + u64::from(misaligned);
                let data = pattern(&g, lba, u64::from(blocks), seed);
                self.write(lba, u64::from(blocks), true, Some(&data))
                    .map_or_else(Outcome::Failed, Outcome::Placed)
            }
            Op::Read {
                zone,
                offset,
                blocks,
            } => {
                let lba = g.zone_start(zone_of(zone)) + u64::from(offset);
                self.read(lba, u64::from(blocks))
                    .map_or_else(Outcome::Failed, Outcome::Data)
            }
            Op::Manage { action, zone } => {
                let result = self.manage(action, zone.map(zone_of));
                // A zone action that took effect is recorded with every other zone's state
                // (zones closed to make room for writes among them), as a flush records them.
                if result.is_ok() {
                    let all: Vec<u32> = (0..g.zone_count).collect();
                    self.make_durable(&all);
                }
                done(result)
            }
            Op::Report { zone, filter, max } => {
                let start = zone_of(zone);
                let matching: Vec<u32> = (start..g.zone_count)
                    .filter(|&z| filter.matches(self.zones[z as usize].state))
                    .collect();
                Outcome::Report(ZoneReport {
                    matching: matching.len() as u64,
                    zones: matching
                        .iter()
                        .take(usize::from(max))
                        .map(|&z| self.descriptor(z))
                        .collect(),
                })
            }
            Op::Flush => {
                let all: Vec<u32> = (0..g.zone_count).collect();
                self.make_durable(&all);
                Outcome::Done
            }
            Op::MakeReadOnly { zone } | Op::MakeOffline { zone } => {
                let z = zone_of(zone);
                let state = if matches!(op, Op::MakeReadOnly { .. }) {
                    ZoneState::ReadOnly
                } else {
                    ZoneState::Offline
                };
                self.set(z, state);
                self.make_durable(&[z]);
                Outcome::Done
            }
            Op::PowerLoss => {
                for z in 0..g.zone_count {
                    let (state, written) = self.durable[z as usize];
                    self.zones[z as usize].written = written;
                    let state = match state {
                        ZoneState::ImplicitlyOpened
                        | ZoneState::ExplicitlyOpened
                        | ZoneState::Closed => {
                            if written == 0 {
                                ZoneState::Empty
                            } else {
                                ZoneState::Closed
                            }
                        }
                        other => other,
                    };
                    self.set(z, state);
                }
                self.implicit_fifo.clear();
                Outcome::Done
            }
        }
    }
}

/// Small geometries that make limits, capacities and boundaries easy to hit.
pub fn arb_geometry() -> impl Strategy<Value = Geometry> {
    (
        prop_oneof![Just(512u32), Just(4096u32)],
        4u32..8,
        prop_oneof![Just(None), Just(Some(2u32)), Just(Some(3u32))],
        0u32..2,
        any::<bool>(),
    )
        .prop_map(
            |(block_size, zone_count, max_open, extra_active, short_capacity)| {
                let zone_size = 16;
                Geometry {
                    block_size,
                    zone_size,
                    zone_capacity: if short_capacity { 12 } else { 16 },
                    zone_count,
                    max_open,
                    max_active: max_open.map(|o| o + extra_active),
                    // 8 KiB: the smallest limit ZASL can express (ZASL 0 means "same as MDTS").
                    max_append_blocks: if block_size == 512 { 16 } else { 2 },
                }
            },
        )
}

/// Random operations, biased towards writes and appends so that zones fill and limits bite.
pub fn arb_op(with_faults: bool) -> impl Strategy<Value = Op> {
    let zone = 0u32..8;
    let action = prop_oneof![
        Just(ZoneAction::Open),
        Just(ZoneAction::Close),
        Just(ZoneAction::Finish),
        Just(ZoneAction::Reset),
        Just(ZoneAction::Offline),
    ];
    let filter = (0u8..8).prop_map(|c| ReportFilter::from_code(c).expect("0..8 are filters"));
    let faults = if with_faults { 1 } else { 0 };
    prop_oneof![
        6 => (zone.clone(), -2i8..=2, 0u8..6, any::<u8>())
            .prop_map(|(zone, skew, blocks, seed)| Op::Write { zone, skew: if skew.abs() == 2 { 0 } else { skew }, blocks, seed }),
        1 => (zone.clone(), -1i8..=1, 0u8..4).prop_map(|(zone, skew, blocks)| Op::WriteZeroes { zone, skew, blocks }),
        6 => (zone.clone(), prop::bool::weighted(0.1), prop_oneof![8 => 1u8..6, 1 => 6u8..19], any::<u8>())
            .prop_map(|(zone, misaligned, blocks, seed)| Op::Append { zone, misaligned, blocks, seed }),
        3 => (zone.clone(), 0u8..20, 0u8..20).prop_map(|(zone, offset, blocks)| Op::Read { zone, offset, blocks }),
        3 => (action, prop::option::weighted(0.85, zone.clone())).prop_map(|(action, zone)| Op::Manage { action, zone }),
        2 => (zone.clone(), filter, 0u8..10).prop_map(|(zone, filter, max)| Op::Report { zone, filter, max }),
        2 => Just(Op::Flush),
        faults => zone.clone().prop_map(|zone| Op::MakeReadOnly { zone }),
        faults => zone.prop_map(|zone| Op::MakeOffline { zone }),
        faults => Just(Op::PowerLoss),
    ]
}

/// Runs before an intercepted append, given its zone start LBA, write hint and data; the append
/// goes on when the returned future completes.
pub type AppendHook = Box<
    dyn Fn(u64, WriteHint, &Bytes) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Gives what an intercepted zone report reports, given what the drive reported.
pub type ReportHook = Box<dyn Fn(ZoneResult<ZoneReport>) -> ZoneResult<ZoneReport> + Send + Sync>;

/// Runs before an intercepted flush; the flush goes on when the returned future completes
/// with `Ok`, and fails with its error otherwise.
pub type FlushHook =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ZoneResult<()>> + Send>> + Send + Sync>;

/// Runs before an intercepted read, given its LBA (before `read_base` is added) and length in
/// blocks; the read goes on when the returned future completes.
pub type ReadHook =
    Box<dyn Fn(u64, u32) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Runs after an intercepted read, given its LBA (before `read_base` is added), length and what
/// the drive answered; the read reports what the returned future gives.
pub type AfterReadHook = Box<
    dyn Fn(
            u64,
            u32,
            ZoneResult<Bytes>,
        ) -> std::pin::Pin<Box<dyn Future<Output = ZoneResult<Bytes>> + Send>>
        + Send
        + Sync,
>;

/// Runs after an intercepted append, given its zone start LBA and what the drive answered;
/// the append reports what the returned future gives (a test may turn a landed append into an
/// error, as when a completion is lost on the way back).
pub type AfterAppendHook = Box<
    dyn Fn(u64, ZoneResult<u64>) -> std::pin::Pin<Box<dyn Future<Output = ZoneResult<u64>> + Send>>
        + Send
        + Sync,
>;

/// May answer an intercepted zone management command (its action and selection) in the drive's
/// place: `Some` is what the command reports, and it never reaches the drive; `None` lets it
/// through.
pub type ManageHook = Box<dyn Fn(ZoneAction, ZoneSelect) -> Option<ZoneResult<()>> + Send + Sync>;

/// A device that passes every command to `inner`, for tests and benchmarks that watch or hold
/// up some of them: reads first await `before_read`, are shifted by `read_base` blocks and
/// report through `after_read`; each append first awaits `before_append` (which may record its
/// hint, or stall it) and reports through `after_append`.
pub struct Intercepted {
    /// The device commands go to.
    pub inner: Arc<dyn ZonedDevice>,
    /// Added to the LBA of every read.
    pub read_base: u64,
    /// Awaited before each read.
    pub before_read: ReadHook,
    /// Gives what each read reports.
    pub after_read: AfterReadHook,
    /// Awaited before each append.
    pub before_append: AppendHook,
    /// Gives what each append reports.
    pub after_append: AfterAppendHook,
    /// Flushes asked for so far.
    pub flushes: Arc<AtomicU64>,
    /// Awaited before each flush.
    pub before_flush: FlushHook,
    /// While set, flushes report success without reaching `inner` (a target that holds what it
    /// was sent, unflushed, when the server that sent it is killed).
    pub lost_flushes: Arc<std::sync::atomic::AtomicBool>,
    /// Gives what each zone report reports.
    pub after_report: ReportHook,
    /// May answer a zone management command in the drive's place.
    pub instead_of_manage: ManageHook,
    /// Added to `inner`'s session (a test bumps it to stand for a target that restarted).
    pub session_offset: Arc<AtomicU64>,
    /// While set, the drive says it is not available (a host that lost its connection).
    pub unavailable: Arc<std::sync::atomic::AtomicBool>,
    /// When set, the drive reports no identity (a target that gives its namespace no NGUID).
    pub anonymous: bool,
}

impl Intercepted {
    /// Passes everything to `inner` unchanged (set the fields to intercept).
    pub fn new(inner: Arc<dyn ZonedDevice>) -> Self {
        Intercepted {
            inner,
            read_base: 0,
            before_read: Box::new(|_, _| Box::pin(std::future::ready(()))),
            after_read: Box::new(|_, _, result| Box::pin(std::future::ready(result))),
            before_append: Box::new(|_, _, _| Box::pin(std::future::ready(()))),
            after_append: Box::new(|_, result| Box::pin(std::future::ready(result))),
            flushes: Arc::default(),
            before_flush: Box::new(|| Box::pin(std::future::ready(Ok(())))),
            lost_flushes: Arc::default(),
            after_report: Box::new(|result| result),
            instead_of_manage: Box::new(|_, _| None),
            session_offset: Arc::default(),
            unavailable: Arc::default(),
            anonymous: false,
        }
    }
}

impl std::fmt::Debug for Intercepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted")
            .field("inner", &self.inner)
            .field("read_base", &self.read_base)
            .finish()
    }
}

#[async_trait]
impl ZonedDevice for Intercepted {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn is_available(&self) -> bool {
        !self.unavailable.load(Ordering::SeqCst) && self.inner.is_available()
    }
    fn session(&self) -> u64 {
        self.inner
            .session()
            .wrapping_add(self.session_offset.load(Ordering::SeqCst))
    }
    fn identity(&self) -> Option<[u8; 16]> {
        if self.anonymous {
            return None;
        }
        self.inner.identity()
    }
    async fn read(&self, lba: u64, blocks: u32) -> ZoneResult<Bytes> {
        (self.before_read)(lba, blocks).await;
        let result = self.inner.read(self.read_base + lba, blocks).await;
        (self.after_read)(lba, blocks, result).await
    }
    async fn write(&self, lba: u64, data: Bytes) -> ZoneResult<()> {
        self.inner.write(lba, data).await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u32) -> ZoneResult<()> {
        self.inner.write_zeroes(lba, blocks).await
    }
    async fn append(&self, zslba: u64, data: Bytes) -> ZoneResult<u64> {
        self.append_hinted(zslba, data, WriteHint::None).await
    }
    async fn append_hinted(&self, zslba: u64, data: Bytes, hint: WriteHint) -> ZoneResult<u64> {
        (self.before_append)(zslba, hint, &data).await;
        let result = self.inner.append_hinted(zslba, data, hint).await;
        (self.after_append)(zslba, result).await
    }
    async fn append_in_session(
        &self,
        zslba: u64,
        data: Bytes,
        hint: WriteHint,
        session: u64,
    ) -> Option<ZoneResult<u64>> {
        // The inner device's own session binding holds (a remote drive's), offset as
        // [`ZonedDevice::session`] is.
        let offset = self.session_offset.load(Ordering::SeqCst);
        if self.session() != session {
            return None;
        }
        (self.before_append)(zslba, hint, &data).await;
        let result = self
            .inner
            .append_in_session(zslba, data, hint, session.wrapping_sub(offset))
            .await?;
        Some((self.after_append)(zslba, result).await)
    }
    async fn flush(&self) -> ZoneResult<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        (self.before_flush)().await?;
        if self.lost_flushes.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.flush().await
    }
    async fn manage_zones(&self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<()> {
        if let Some(answer) = (self.instead_of_manage)(action, select) {
            return answer;
        }
        self.inner.manage_zones(action, select).await
    }
    async fn report_zones(
        &self,
        start_lba: u64,
        filter: ReportFilter,
        max_zones: usize,
    ) -> ZoneResult<ZoneReport> {
        (self.after_report)(self.inner.report_zones(start_lba, filter, max_zones).await)
    }
}
