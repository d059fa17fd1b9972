//! Garbage collection under host control. Per drive, when free zones fall below a watermark, a
//! victim zone is chosen (cost-benefit: free space gained against the cost of moving its live
//! data, weighted by age; or greedy: least live data), its live records are appended to GC zones
//! (never mixed with user data), the index is updated only where it still points at the old copy
//! (a concurrent overwrite wins), reads that may still use the zone are waited for, and the zone
//! is reset. Relocation is rate-limited so that client latency holds, except when the drive is
//! about to run out of space. Small live records are copied in groups (one append of up to
//! 256 KiB), several appends in flight, with index commits overlapping the next appends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use zns::{ZoneAction, ZoneSelect, ZoneState};

use super::EngineInner;
use super::commit::{Change, Relocation, now_ms};
use super::error::{EngineError, EngineResult};
use super::index::TombKind;
use super::located;
use super::model::{DriveId, Location, ZoneId};
use super::placement::{ZoneHolds, ZoneUse};
use super::record::{self, RecordError};
use super::stats::Writer;

/// How victims are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The zone with the least live data.
    Greedy,
    /// The zone with the best (1 - u) * age / (1 + u), u being the live fraction.
    CostBenefit,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "greedy" => Ok(Policy::Greedy),
            "cost-benefit" | "cost_benefit" => Ok(Policy::CostBenefit),
            other => Err(format!(
                "unknown GC policy {other:?} (greedy or cost-benefit)"
            )),
        }
    }
}

/// GC tunables.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// Whether GC runs.
    pub enabled: bool,
    /// Victim selection.
    pub policy: Policy,
    /// GC starts when a drive's free zones fall below this fraction of its zones.
    pub low_watermark: f64,
    /// GC stops once free zones reach this fraction.
    pub high_watermark: f64,
    /// Relocation rate limit in bytes per second (0: unlimited). Ignored when a drive is down
    /// to its reserve.
    pub rate_bytes_per_sec: u64,
    /// How long a reset waits for reads that began before its zone's records moved (at most
    /// [`URGENT_READ_WAIT`] when the drive is down to its reserve of free zones).
    pub read_wait: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            policy: Policy::CostBenefit,
            low_watermark: 0.10,
            high_watermark: 0.20,
            rate_bytes_per_sec: 256 << 20,
            read_wait: Duration::from_secs(30),
        }
    }
}

/// Runtime control and status of GC.
#[derive(Debug)]
pub struct GcControl {
    config: Mutex<GcConfig>,
    enabled: AtomicBool,
    wake: Notify,
    /// Zones reclaimed.
    pub zones_collected: AtomicU64,
    /// Live bytes moved.
    pub bytes_relocated: AtomicU64,
    /// Drives with a zone being collected right now.
    pub busy: AtomicUsize,
    /// Zones whose collection failed, and when they may be tried again: a zone that cannot be
    /// read or reset must not be every pass's victim while the drive's other zones fill up.
    held_back: Mutex<HashMap<ZoneId, Instant>>,
    /// How many collections running of each zone had to keep something: each holds the zone
    /// back twice as long as the one before (reading it whole every few seconds for a record
    /// that cannot move would cost a drive's bandwidth for nothing).
    kept_runs: Mutex<HashMap<ZoneId, u32>>,
    /// One collection at a time per drive (background passes and admin runs alike): the
    /// reserve of free zones is sized for one victim's live data.
    collecting: Mutex<HashMap<DriveId, Arc<tokio::sync::Mutex<()>>>>,
    last_error: Mutex<Option<String>>,
    closed: AtomicBool,
    /// Wakes collections waiting out their rate limit when the engine shuts down.
    closing: Notify,
    /// `zones_collected` when tombstones were last pruned (u64::MAX: never, this run).
    pruned_at: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A snapshot of GC status.
#[derive(Debug, Clone)]
pub struct GcStatus {
    /// Whether GC runs.
    pub enabled: bool,
    /// Whether a zone is being collected right now.
    pub busy: bool,
    /// Victim policy.
    pub policy: Policy,
    /// Zones reclaimed.
    pub zones_collected: u64,
    /// Live bytes moved.
    pub bytes_relocated: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl GcControl {
    /// Waits for the right to collect on `drive` (see [`GcControl::collecting`]).
    async fn collect_on(&self, drive: DriveId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.collecting.lock().entry(drive).or_default().clone();
        lock.lock_owned().await
    }

    pub(crate) fn new(config: GcConfig) -> Self {
        GcControl {
            enabled: AtomicBool::new(config.enabled),
            config: Mutex::new(config),
            wake: Notify::new(),
            zones_collected: AtomicU64::new(0),
            bytes_relocated: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            held_back: Mutex::new(HashMap::new()),
            kept_runs: Mutex::new(HashMap::new()),
            collecting: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            pruned_at: AtomicU64::new(u64::MAX),
            task: Mutex::new(None),
        }
    }

    /// Whether GC has been told to end (the engine is shutting down).
    pub fn is_shut_down(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ends the GC task and waits for it.
    pub async fn shut_down(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.enabled.store(false, Ordering::SeqCst);
        self.wake.notify_one();
        self.closing.notify_waiters();
        let task = self.task.lock().take();
        if let Some(task) = task {
            super::stop_task("GC", task).await;
        }
    }

    /// Lets GC run.
    pub fn start(&self) {
        self.enabled.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Stops GC after the zone in progress.
    pub fn stop(&self) {
        self.enabled.store(false, Ordering::SeqCst);
    }

    /// Sets the victim policy.
    pub fn set_policy(&self, policy: Policy) {
        self.config.lock().policy = policy;
    }

    /// Sets the relocation rate limit.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.config.lock().rate_bytes_per_sec = bytes_per_sec;
    }

    /// Sets the watermarks.
    pub fn set_watermarks(&self, low: f64, high: f64) {
        let mut c = self.config.lock();
        c.low_watermark = low;
        c.high_watermark = high.max(low);
    }

    /// Status.
    pub fn status(&self) -> GcStatus {
        GcStatus {
            enabled: self.enabled.load(Ordering::SeqCst),
            busy: self.busy.load(Ordering::SeqCst) > 0,
            policy: self.config.lock().policy,
            zones_collected: self.zones_collected.load(Ordering::Relaxed),
            bytes_relocated: self.bytes_relocated.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }

    /// Asks GC to look at the drives now.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }
}

/// How often GC looks at the drives (also when nudged).
const GC_TICK: Duration = Duration::from_millis(100);

/// Starts the GC task; it ends when the engine is dropped or GC is shut down (after the passes
/// running then have ended: none is cut off in the middle of a zone).
pub(crate) fn spawn(engine: Weak<EngineInner>) {
    let Some(strong) = engine.upgrade() else {
        return;
    };
    let control = &strong.gc;
    let task = tokio::spawn(async move {
        // Drives are collected each at its own pace, a pass per drive at a time: they are
        // separate devices, and one that is slow or stuck (a target timing out, a reset
        // waiting for reads) must hold up neither the passes of the others nor their next.
        let mut passes = futures::stream::FuturesUnordered::new();
        let mut running: HashSet<DriveId> = HashSet::new();
        let mut tick = tokio::time::interval(GC_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut look = true;
        loop {
            let Some(e) = engine.upgrade() else { return };
            if e.gc.closed.load(Ordering::SeqCst) {
                drop(e);
                while passes.next().await.is_some() {}
                return;
            }
            if look && e.gc.enabled.load(Ordering::SeqCst) {
                for drive in e.drives.all().iter() {
                    if !running.insert(drive.id) {
                        continue;
                    }
                    let (e, drive) = (e.clone(), drive.clone());
                    passes.push(async move {
                        if let Err(err) = e.collect_drive(drive.id).await
                            && !e.gc.closed.load(Ordering::SeqCst)
                        {
                            tracing::warn!(drive = %drive.name, "GC: {err}");
                            *e.gc.last_error.lock() = Some(err.to_string());
                        }
                        drive.id
                    });
                }
            }
            // A pass that ends is followed by the drive's next at the next look (a tick, or a
            // nudge), not at once: a drive with nothing to collect is not asked in a loop.
            look = tokio::select! {
                Some(drive) = passes.next(), if !passes.is_empty() => {
                    running.remove(&drive);
                    false
                }
                _ = tick.tick() => true,
                _ = e.gc.wake.notified() => true,
            };
            drop(e);
        }
    });
    *control.task.lock() = Some(task);
}

/// A zone whose live records were all moved, waiting for its reset.
#[derive(Debug)]
struct Reset {
    zone: ZoneId,
    /// Reads that began in this epoch or before may still use the zone.
    epoch: u64,
    /// Live bytes moved out of it.
    moved: u64,
}

/// Appends of relocated records in flight at once while a zone is collected: the drive sees a
/// queue, not one append per round trip.
const GROUPS_IN_FLIGHT: usize = 8;

/// Most bytes of live records gathered into one append. Not the drive's whole append limit: a
/// group that does not fit in what is left of a GC zone closes the zone, and the space left
/// there is lost until the zone is collected in turn (1 MiB groups raised the churn
/// benchmark's write amplification by 5%).
const GROUP_BYTES: usize = 256 << 10;

/// Tombstones a prune pass hands the committer per change.
const PRUNE_BATCH: usize = 1024;

/// Live records' copies gathered into one append: copying many small records costs one append
/// instead of one each.
#[derive(Default)]
struct Group {
    data: BytesMut,
    /// Each record: what the index must change, where it was, and its block within the group.
    members: Vec<(Relocation, Location, u64)>,
}

impl Group {
    /// Adds a copy of `record` (found at `from`) with a new `write_seq`.
    fn add(&mut self, record: &[u8], write_seq: u64, what: Relocation, from: Location) {
        let at = self.blocks_before();
        record::append_rewritten(record, write_seq, &mut self.data);
        self.members.push((what, from, at));
    }

    /// Blocks of the group before the next record.
    fn blocks_before(&self) -> u64 {
        self.members
            .last()
            .map_or(0, |(_, from, at)| at + u64::from(from.blocks))
    }
}

/// A relocated record: what the index must change, and from where to where.
type Relocated = (Relocation, Location, Location);

/// A group's relocations, and the holds on the zone it landed in.
type Landed = (Vec<Relocated>, ZoneHolds);

/// Relocations committed to the index at once.
const RELOCATIONS_PER_COMMIT: usize = 256;

/// The relocations of one zone under way: copies being appended, copies appended and not yet
/// committed, and at most one commit in flight (it overlaps the next appends; the drive flush
/// and index write a commit costs would otherwise stall the copying).
#[derive(Default)]
struct Relocations {
    appending: FuturesOrdered<JoinHandle<EngineResult<Landed>>>,
    appended: Vec<Relocated>,
    /// Keep GC off the zones of the appended copies until their commit is done.
    holds: Vec<ZoneHolds>,
    committing: Option<JoinHandle<EngineResult<()>>>,
}

impl Relocations {
    /// Adds an append under way.
    fn start(&mut self, append: JoinHandle<EngineResult<Landed>>) {
        self.appending.push_back(append);
    }

    /// Waits until at most `keep` appends are under way, committing what has landed in batches.
    async fn settle(&mut self, engine: &Arc<EngineInner>, keep: usize) -> EngineResult<()> {
        while self.appending.len() > keep {
            let Some(done) = self.appending.next().await else {
                break;
            };
            let (relocated, holds) = done.map_err(task_failed)??;
            self.appended.extend(relocated);
            self.holds.push(holds);
            if self.appended.len() >= RELOCATIONS_PER_COMMIT {
                self.commit(engine).await?;
            }
        }
        Ok(())
    }

    /// Waits for the commit in flight, then starts committing what has landed.
    async fn commit(&mut self, engine: &Arc<EngineInner>) -> EngineResult<()> {
        if let Some(previous) = self.committing.take() {
            previous.await.map_err(task_failed)??;
        }
        let items = std::mem::take(&mut self.appended);
        let holds = std::mem::take(&mut self.holds);
        let engine = engine.clone();
        self.committing = Some(tokio::spawn(async move {
            engine.commit_relocations(items, holds).await
        }));
        Ok(())
    }

    /// Starts appending the `last` group, waits for every append and commits them all.
    async fn finish(&mut self, engine: &Arc<EngineInner>, last: Group) -> EngineResult<()> {
        if !last.members.is_empty() {
            self.start(engine.relocate_group(last));
        }
        self.settle(engine, 0).await?;
        self.commit(engine).await?;
        if let Some(last) = self.committing.take() {
            last.await.map_err(task_failed)??;
        }
        Ok(())
    }
}

impl Relocations {
    /// The collection failed: waits for the appends and the commit under way, and has the
    /// index hide the zones of every copy that landed without its commit (orphans, which a
    /// rebuild or replay would otherwise take for their names once nothing else hides them).
    async fn abandon(mut self, engine: &Arc<EngineInner>) {
        while let Some(done) = self.appending.next().await {
            // A failed append hid its own attempts (see [`EngineInner::relocate_group`]).
            if let Ok(Ok((relocated, holds))) = done {
                self.appended.extend(relocated);
                self.holds.push(holds);
            }
        }
        if let Some(committing) = self.committing.take() {
            // A refused commit hid its copies (see the committer).
            let _ = committing.await;
        }
        if self.appended.is_empty() {
            return;
        }
        let orphans = self
            .appended
            .drain(..)
            .filter_map(|(what, _, to)| {
                let zone = engine.drives.zone_of(&to)?;
                Some((what, vec![zone]))
            })
            .collect();
        if let Err(e) = engine.committer.submit(Change::Orphans(orphans)).await {
            tracing::error!("hiding the copies of an abandoned collection failed: {e}");
        }
    }
}

/// Stops a read-ahead no longer needed and waits until it has let go of its drive (a task
/// left to end on its own could hold the drive open after the engine has shut down).
async fn stop_read<T>(read: Option<JoinHandle<T>>) {
    if let Some(read) = read {
        read.abort();
        let _ = read.await;
    }
}

fn task_failed(e: tokio::task::JoinError) -> EngineError {
    EngineError::Internal(format!("relocation task: {e}"))
}

/// Paces relocation to a byte rate.
struct Pacer {
    start: Instant,
    bytes: u64,
}

impl Pacer {
    /// Waits until `bytes` more are within `rate` (bytes a second, 0: no limit); false, at
    /// once, if the engine shuts down meanwhile (a slow rate must not hold the shutdown up
    /// for minutes before the drives are flushed) — unless `to_the_end`: a collection at the
    /// drive's reserve may have opened its last free zone, which only the victim's reset gives
    /// back (stopped halfway, the zone it opened is finished at the next start and the victim
    /// still holds live data: no free zone is left for GC, nor for writes or deletes), so it
    /// runs to its end, unpaced, within the bound the shutdown waits for GC.
    async fn pace(&mut self, bytes: u64, rate: u64, to_the_end: bool, gc: &GcControl) -> bool {
        self.bytes += bytes;
        if to_the_end {
            return true;
        }
        if rate == 0 {
            return !gc.closed.load(Ordering::SeqCst);
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            let closing = gc.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if gc.closed.load(Ordering::SeqCst) {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(due - elapsed) => {}
                _ = closing => return false,
            }
        }
        !gc.closed.load(Ordering::SeqCst)
    }
}

/// Collections in a row that had to keep a zone after which, while it is held back, it no
/// longer counts as space GC can reclaim (see [`EngineInner::stuck`]).
const STUCK_AFTER_KEPT_RUNS: u32 = 2;

/// The most a reset waits for older reads when the drive is down to its reserve of free zones
/// (see [`GcConfig::read_wait`]).
const URGENT_READ_WAIT: Duration = Duration::from_secs(2);

/// How long a zone whose collection failed is left alone.
const HOLD_BACK: Duration = Duration::from_secs(60);

/// Moves a zone scan one block on: how it resynchronises past a damaged record header, whose
/// length is as suspect as the rest of it. Stepping a block at a time, the scan takes for a
/// record only what the index names at that very place: bytes of a client's that look like a
/// record (an object's payload is free to) are neither copied nor skipped over as one, so the
/// live records after the damage are all found.
fn step_one_block(buf: &mut BytesMut, buf_lba: &mut u64, block_size: u64) {
    let _ = buf.split_to((block_size as usize).min(buf.len()));
    *buf_lba += 1;
}

/// How long a zone whose collection had to keep something is left alone.
const KEEP_BACK: Duration = Duration::from_secs(5);

/// How long a zone is held back after the `runs`th collection running that had to keep
/// something: [`KEEP_BACK`], doubling with each such run up to 32 times that.
fn kept_back_for(runs: u32) -> Duration {
    KEEP_BACK * (1u32 << runs.saturating_sub(1).min(5))
}

/// Failed collections after which a pass over one drive stops (the drive itself may be
/// failing).
const FAILURES_PER_PASS: usize = 3;

impl EngineInner {
    /// Whether `drive` is down to its reserve of free zones: ordinary writes then wait for GC,
    /// which goes at full speed.
    fn at_reserve(&self, drive: DriveId) -> bool {
        self.placement.free_zones(drive) <= self.placement.reserve_of(drive)
    }

    /// Collects zones of one drive while it is below the low watermark (then up to the high).
    /// A zone that fails is held back for a while and the pass goes on with others.
    async fn collect_drive(self: &Arc<Self>, drive: DriveId) -> EngineResult<()> {
        // A draining drive takes no writes, GC's relocations included: drain empties it.
        if !self.drives.get(drive).is_some_and(|d| d.is_writable()) {
            return Ok(());
        }
        let config = self.gc.config.lock().clone();
        let (low, high) = self.watermarks(drive, &config);
        if self.placement.free_zones(drive) >= low {
            return Ok(());
        }
        let _collecting = self.gc.collect_on(drive).await;
        self.gc.busy.fetch_add(1, Ordering::SeqCst);
        let mut result = Ok(());
        // Zones this pass took but had to keep (something in them could not be moved): not
        // taken again until the next pass, or the pass would read them over and over.
        let mut kept = self.held_back(drive);
        let mut failures = 0;
        while self.placement.free_zones(drive) < high && self.gc.enabled.load(Ordering::SeqCst) {
            // At the reserve with nothing to collect, tombstones whose zones were reset since
            // may be garbage still counted live: dropped, they make victims.
            let victim = match self.choose_victim_except(drive, config.policy, &kept) {
                None if self.at_reserve(drive) && self.prune_tombstones_if_due().await => {
                    self.choose_victim_except(drive, config.policy, &kept)
                }
                chosen => chosen,
            };
            let Some(victim) = victim else {
                break;
            };
            if !self.placement.collectable(victim) {
                // Records in it not indexed yet, or its Finish being sent: passed over this
                // time only, without reading it (and without holding it back).
                kept.insert(victim.zone);
                continue;
            }
            let rate = if self.at_reserve(drive) {
                0
            } else {
                self.gc.config.lock().rate_bytes_per_sec
            };
            // One zone at a time: relocating the next ones while resets wait raised the churn
            // benchmark's write amplification by a tenth.
            let collected = match self.begin_zone(victim, rate).await {
                Ok(Some(reset)) => {
                    self.gc.kept_runs.lock().remove(&victim);
                    self.finish_reset(reset).await
                }
                Ok(None) => {
                    // Not taken again for a while either (a record damaged everywhere, or one
                    // that will not be indexed soon, would have every pass read it again).
                    kept.insert(victim.zone);
                    let runs = {
                        let mut kept_runs = self.gc.kept_runs.lock();
                        let runs = kept_runs.entry(victim).or_insert(0);
                        *runs = runs.saturating_add(1);
                        *runs
                    };
                    self.gc
                        .held_back
                        .lock()
                        .insert(victim, Instant::now() + kept_back_for(runs));
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = collected {
                // (A collection the shutdown stops is no failure worth a warning.)
                if self.gc.closed.load(Ordering::SeqCst) {
                    result = Err(e);
                    break;
                }
                // The drive went down (or stopped taking writes) meanwhile: the zone is not to
                // blame, and is not held back. The pass ends; the next waits for the drive.
                if !self.drives.get(drive).is_some_and(|d| d.is_writable()) {
                    tracing::info!(zone = ?victim, "collecting the zone stopped: its drive takes no writes now: {e}");
                    *self.gc.last_error.lock() = Some(e.to_string());
                    result = Err(e);
                    break;
                }
                tracing::warn!(zone = ?victim, "collecting the zone failed; holding it back for {HOLD_BACK:?}: {e}");
                self.gc
                    .held_back
                    .lock()
                    .insert(victim, Instant::now() + HOLD_BACK);
                kept.insert(victim.zone);
                // Told at once, not when the pass ends: the pass goes on with other zones.
                *self.gc.last_error.lock() = Some(e.to_string());
                result = Err(e);
                failures += 1;
                if failures >= FAILURES_PER_PASS {
                    break;
                }
            }
        }
        self.gc.busy.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Rewrites the copy at `from`, whose record (at the start of `bytes`) is damaged, from a
    /// good copy, if the index names it (its header, which has a CRC of its own, says what it
    /// is).
    async fn rewrite_damaged(&self, bytes: &[u8], block_size: usize, from: Location) {
        let Ok(Some(view)) = record::parse_header(bytes, block_size) else {
            return;
        };
        let what = located::relocation_of(&view.header);
        let Ok(Some(copies)) = located::current_copies(&self.index, &what) else {
            return;
        };
        if !copies.contains(&from) {
            return;
        }
        let entry = located::Located { what, copies };
        match self.rewrite_copy(&entry, from).await {
            Ok(true) => tracing::info!(?from, "GC made a damaged copy again from a good one"),
            Ok(false) => {}
            Err(e) => tracing::warn!(?from, "a damaged copy could not be made again: {e}"),
        }
    }

    /// Drops every tombstone with nothing older left to hide (see [`Change::PruneTombstones`]),
    /// if a zone was reset since the last time (or never this run). Returns whether it did.
    async fn prune_tombstones_if_due(&self) -> bool {
        let collected = self.gc.zones_collected.load(Ordering::SeqCst);
        if self.gc.pruned_at.swap(collected, Ordering::SeqCst) == collected {
            return false;
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let index = self.index.clone();
            let start = after.clone();
            let batch = tokio::task::spawn_blocking(move || {
                let mut items = Vec::new();
                let mut last = None;
                let from = start.as_deref().unwrap_or(&[]);
                index.for_each_from(super::index::cf::TOMBSTONES, from, |k, v| {
                    if start.as_deref() == Some(k) {
                        return true;
                    }
                    last = Some(k.to_vec());
                    if let (Some(kind), Ok(t)) = (
                        k.first().copied().and_then(located::tomb_kind),
                        super::model::TombstoneEntry::decode(v),
                    ) {
                        items.push((kind, k[1..].to_vec(), t.seq));
                    }
                    items.len() < PRUNE_BATCH
                })?;
                Ok::<_, EngineError>((items, last))
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))
            .and_then(|read| read);
            let (items, last) = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!("reading tombstones to prune failed: {e}");
                    break;
                }
            };
            let full = items.len() >= PRUNE_BATCH;
            if !items.is_empty()
                && let Err(e) = self.committer.submit(Change::PruneTombstones(items)).await
            {
                tracing::warn!("pruning tombstones failed: {e}");
                break;
            }
            if !full || last.is_none() {
                break;
            }
            after = last;
        }
        true
    }

    /// Whether GC is reclaiming space now or has something to reclaim on some drive: a
    /// victim on a drive it would collect (below its low watermark, taking writes; one held
    /// back after a try is due again soon). A store with nothing GC will reclaim is full
    /// (507), not busy (503).
    pub(crate) fn can_reclaim(&self) -> bool {
        if !self.gc.enabled.load(Ordering::SeqCst) {
            return false;
        }
        if self.gc.busy.load(Ordering::SeqCst) > 0 {
            return true;
        }
        let config = self.gc.config.lock().clone();
        // Tombstones to prune (zones were reset since the last time) may make victims too.
        let prune_due = self.gc.pruned_at.load(Ordering::SeqCst)
            != self.gc.zones_collected.load(Ordering::SeqCst);
        self.drives.all().iter().any(|d| {
            d.is_writable()
                && self.placement.free_zones(d.id) < self.watermarks(d.id, &config).0
                && (self
                    .choose_victim_except(d.id, config.policy, &self.stuck(d.id))
                    .is_some()
                    || (prune_due && self.at_reserve(d.id)))
        })
    }

    /// Zones of `drive` held back now after GC took them and had to keep them at least
    /// [`STUCK_AFTER_KEPT_RUNS`] times in a row (a record in them damaged on every copy):
    /// not counted as space GC can reclaim, or a store full but for them would answer every
    /// PUT "busy, try again" (503) after a wait, for good, instead of "full" (507).
    fn stuck(&self, drive: DriveId) -> HashSet<u32> {
        let held = self.held_back(drive);
        let kept_runs = self.gc.kept_runs.lock();
        held.into_iter()
            .filter(|&zone| {
                kept_runs
                    .get(&ZoneId { drive, zone })
                    .is_some_and(|&runs| runs >= STUCK_AFTER_KEPT_RUNS)
            })
            .collect()
    }

    /// The free-zone counts below which GC collects `drive`, and up to which it goes on.
    fn watermarks(&self, drive: DriveId, config: &GcConfig) -> (usize, usize) {
        let zones = self.placement.zone_count(drive);
        let low = ((zones as f64 * config.low_watermark).ceil() as usize)
            .max(self.placement.reserve_of(drive) + 1);
        let high = ((zones as f64 * config.high_watermark).ceil() as usize).max(low);
        (low, high)
    }

    /// The zones of `drive` GC keeps out of its choice for now (it took them and had to keep
    /// them: something in them could not be moved).
    fn held_back(&self, drive: DriveId) -> HashSet<u32> {
        let mut held = self.gc.held_back.lock();
        let now = Instant::now();
        held.retain(|_, until| *until > now);
        held.keys()
            .filter(|z| z.drive == drive)
            .map(|z| z.zone)
            .collect()
    }

    /// The best victim among the drive's sealed zones, if any has enough garbage to be worth
    /// moving its live data: at least an eighth of a zone and a whole record, or collecting
    /// would consume as much space (in GC zones) as it frees.
    fn choose_victim(&self, drive: DriveId, policy: Policy) -> Option<ZoneId> {
        self.choose_victim_except(drive, policy, &HashSet::new())
    }

    /// [`EngineInner::choose_victim`], leaving the zones in `except` out.
    fn choose_victim_except(
        &self,
        drive: DriveId,
        policy: Policy,
        except: &HashSet<u32>,
    ) -> Option<ZoneId> {
        // A drive at its reserve with no zone worth collecting takes any zone holding deleted
        // data, most garbage first: deletes spread thin over many zones may leave none with
        // the garbage asked for, while their tombstones fill the one zone of the reserve they
        // may use, and then neither a PUT nor a DELETE could go on. (Deleted data, not the
        // unwritten end a Finish left: a zone holding only that would have its records moved
        // into a zone that ends the same.) While zones worth collecting remain, the policy
        // chooses among them, at the reserve too: steady churn runs GC at the reserve, and
        // greedy there undid cost-benefit's separation of hot and cold data.
        self.best_victim(drive, policy, except, false).or_else(|| {
            self.at_reserve(drive)
                .then(|| self.best_victim(drive, Policy::Greedy, except, true))
                .flatten()
        })
    }

    /// The best zone of `drive` by `policy` (leaving out `except`) among those whose garbage
    /// makes them worth collecting, or (`relaxed`) holding any deleted data at all.
    fn best_victim(
        &self,
        drive: DriveId,
        policy: Policy,
        except: &HashSet<u32>,
        relaxed: bool,
    ) -> Option<ZoneId> {
        let geometry = self.drives.get(drive)?.geometry;
        let capacity_bytes = geometry.zone_capacity_bytes();
        let block = u64::from(geometry.block_size);
        let capacity = capacity_bytes as f64;
        let worth = (capacity_bytes / 8).max(self.record_limit);
        let now = now_ms();
        self.placement
            .sealed(drive)
            .into_iter()
            .filter(|(zone, _)| !except.contains(zone))
            .filter_map(|(zone, held_blocks)| {
                let id = ZoneId { drive, zone };
                let account = self.accounts.get(id);
                let deleted = (held_blocks * block).saturating_sub(account.valid_bytes);
                if capacity_bytes.saturating_sub(account.valid_bytes) < worth
                    && !(relaxed && deleted >= block)
                {
                    return None;
                }
                let u = (account.valid_bytes as f64 / capacity).min(1.0);
                let age = (now.saturating_sub(account.last_write_ms) as f64 / 1000.0) + 1.0;
                let score = match policy {
                    Policy::Greedy => 1.0 - u,
                    Policy::CostBenefit => (1.0 - u) * age / (1.0 + u),
                };
                Some((id, score))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(id, _)| id)
    }

    /// Whether the tombstone of `kind`, `name` and `seq` has nothing older left to hide: every
    /// zone it hides records in has been reset since.
    fn hides_nothing(&self, kind: TombKind, name: &[u8], seq: u64) -> EngineResult<bool> {
        Ok(self.index.tombstone(kind, name)?.is_some_and(|t| {
            t.seq == seq
                && t.shadowed
                    .iter()
                    .all(|s| self.accounts.generation(s.zone) != s.generation)
        }))
    }

    /// Whether the record at `location` is still what the index uses, and how to relocate it.
    fn live_record(
        &self,
        header: &record::Header,
        location: Location,
    ) -> EngineResult<Option<Relocation>> {
        let what = located::relocation_of(header);
        let named = located::current_copies(&self.index, &what)?;
        Ok(named
            .filter(|copies| copies.contains(&location))
            .map(|_| what))
    }

    /// Moves a zone's live records to GC zones and resets it; whether it was reset (not kept).
    pub(crate) async fn collect_zone(
        self: &Arc<Self>,
        zone: ZoneId,
        rate: u64,
    ) -> EngineResult<bool> {
        match self.begin_zone(zone, rate).await? {
            Some(reset) => self.finish_reset(reset).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Takes a sealed zone and moves its live records away; returns the reset that completes
    /// its collection, or None if the zone is kept (not sealed, or something remains).
    async fn begin_zone(self: &Arc<Self>, zone: ZoneId, rate: u64) -> EngineResult<Option<Reset>> {
        if !self.placement.begin_collect(zone) {
            return Ok(None);
        }
        match self.relocate_zone(zone, rate).await {
            Ok(Some(reset)) => Ok(Some(reset)),
            Ok(None) => {
                self.placement.abort_collect(zone);
                Ok(None)
            }
            Err(e) => {
                self.placement.abort_collect(zone);
                Err(e)
            }
        }
    }

    /// Resets a zone whose records were all moved, once the reads that may still use it end
    /// (or the gate's limit passes), and frees it.
    async fn finish_reset(self: &Arc<Self>, reset: Reset) -> EngineResult<()> {
        let Reset { zone, epoch, moved } = reset;
        let result = async {
            let drive = self
                .drives
                .get(zone.drive)
                .cloned()
                .ok_or_else(|| EngineError::Internal("unknown drive".into()))?;
            // Reads that began before the relocation may still use the zone: wait for them,
            // but not long once the drive is down to its reserve (writes would fail first),
            // also if it gets there while the reset waits.
            let wait = self.gc.config.lock().read_wait;
            let limit = || {
                if self.at_reserve(zone.drive) {
                    wait.min(URGENT_READ_WAIT)
                } else {
                    wait
                }
            };
            if !self.gate.drain(epoch, zone, limit).await {
                tracing::warn!(?zone, "resetting a zone while a slow read may still use it");
            }
            let zslba = drive.geometry.zone_start(zone.zone);
            if let Err(e) = drive
                .device
                .manage_zones(ZoneAction::Reset, ZoneSelect::Zone(zslba))
                .await
            {
                // Its records were moved: a zone the drive has made read-only or taken
                // offline (a reset of it is an invalid transition) is just left out.
                let state = drive
                    .device
                    .report_zones(zslba, zns::ReportFilter::All, 1)
                    .await
                    .ok()
                    .and_then(|r| r.zones.first().map(|z| z.state));
                if matches!(state, Some(ZoneState::ReadOnly | ZoneState::Offline)) {
                    self.placement.mark_bad(zone);
                }
                // The host gave up on the reset, which the target may still carry out: were
                // the zone reset again and written meanwhile (an admin `gc run` takes it at
                // once), this one would wipe what was written. Left alone until it has landed
                // or never will.
                if e.kind() == zns::ZoneErrorKind::Unavailable {
                    super::writer::hold_while_in_doubt(&self.placement, zone);
                }
                return Err(drive.error(e));
            }
            self.committer.submit(Change::ZoneReset(zone)).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.placement.abort_collect(zone);
            return Err(e);
        }
        self.placement.reset_done(zone);
        self.stats.zones_reset.fetch_add(1, Ordering::Relaxed);
        self.gc.zones_collected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(?zone, moved, "zone reclaimed");
        Ok(())
    }

    async fn relocate_zone(
        self: &Arc<Self>,
        zone: ZoneId,
        rate: u64,
    ) -> EngineResult<Option<Reset>> {
        let mut relocations = Relocations::default();
        let mut next_read = None;
        let result = self
            .relocate_zone_into(zone, rate, &mut relocations, &mut next_read)
            .await;
        // A read ahead still under way on any way out (an error included) is stopped, so
        // that nothing keeps using the drive after the collection (or the engine) is done.
        stop_read(next_read.take()).await;
        if result.is_err() {
            relocations.abandon(self).await;
        }
        result
    }

    /// [`EngineInner::relocate_zone`], its copies under way kept in `relocations`, and its
    /// read ahead in `next_read`.
    async fn relocate_zone_into(
        self: &Arc<Self>,
        zone: ZoneId,
        rate: u64,
        relocations: &mut Relocations,
        next_read: &mut Option<JoinHandle<EngineResult<bytes::Bytes>>>,
    ) -> EngineResult<Option<Reset>> {
        let drive = self
            .drives
            .get(zone.drive)
            .cloned()
            .ok_or_else(|| EngineError::Internal("unknown drive".into()))?;
        let bs = drive.block_size();
        let zslba = drive.geometry.zone_start(zone.zone);
        let written = self.placement.usage(zone.drive)[zone.zone as usize].1;
        let capacity = drive.geometry.zone_capacity;
        let chunk_blocks = ((1u64 << 20) / bs).max(1);
        // A zone with nothing live that the drive holds empty already (its reset landed, but
        // the index did not take the record of it; or the host gave up on it and the target
        // carried it out) has nothing to read: its blocks would only look like damaged
        // records. Its reset is done and recorded again.
        if written > 0
            && self.accounts.get(zone).valid_bytes == 0
            && let Ok(report) = drive
                .device
                .report_zones(zslba, zns::ReportFilter::All, 1)
                .await
            && report
                .zones
                .first()
                .is_some_and(|z| z.zslba == zslba && z.state == ZoneState::Empty)
        {
            tracing::info!(?zone, "the drive holds the zone empty already");
            let epoch = self.gate.advance();
            return Ok(Some(Reset {
                zone,
                epoch,
                moved: 0,
            }));
        }
        let mut pacer = Pacer {
            start: Instant::now(),
            bytes: 0,
        };
        let mut buf = BytesMut::new();
        let mut buf_lba = zslba;
        let read_ahead = |from: u64, blocks: u64| {
            let drive = drive.clone();
            tokio::spawn(async move {
                drive
                    .device
                    .read(zslba + from, blocks as u32)
                    .await
                    .map_err(|e| drive.error(e))
            })
        };
        let mut read_to = chunk_blocks.min(written);
        *next_read = (read_to > 0).then(|| read_ahead(0, read_to));
        let mut group = Group::default();
        let group_limit = GROUP_BYTES.min(self.record_limit as usize);
        let mut moved = 0u64;
        // Where the first damaged header was met, if one was: from there on the scan
        // resynchronises (see [`step_one_block`]).
        let mut damaged_at = None;
        let zone_end = zslba + written;
        let indexed_end = self.accounts.get(zone).max_indexed_end;
        // Tombstones in the zone with nothing older left to hide: dropped, not moved.
        let mut prunable = Vec::new();
        'scan: loop {
            // Parse what is buffered.
            loop {
                let resyncing = damaged_at.is_some();
                if resyncing && (buf_lba >= zone_end || buf.len() < bs as usize) {
                    if buf_lba >= zone_end {
                        break 'scan;
                    }
                    break;
                }
                match record::parse(&buf, bs as usize) {
                    Ok(parsed) => {
                        let blocks = parsed.padded as u64 / bs;
                        let from = Location {
                            drive: zone.drive,
                            lba: buf_lba,
                            blocks: blocks as u32,
                        };
                        let what = match self.live_record(&parsed.header, from)? {
                            // A tombstone with nothing older left to hide is dropped, not
                            // copied (the committer checks again).
                            Some(Relocation::Tombstone { kind, name, seq })
                                if self.hides_nothing(kind, &name, seq)? =>
                            {
                                prunable.push((kind, name, seq));
                                None
                            }
                            live => live,
                        };
                        if let Some(what) = what {
                            // Unpaced once the drive is down to its reserve, also if it gets
                            // there while this zone is collected: writers wait for the space.
                            let at_reserve = self.at_reserve(zone.drive);
                            let rate = if at_reserve { 0 } else { rate };
                            if !pacer
                                .pace(parsed.padded as u64, rate, at_reserve, &self.gc)
                                .await
                            {
                                // What was copied is hidden (see [`Relocations::abandon`]).
                                return Err(EngineError::Unavailable(
                                    "GC stopped: the engine is shutting down".into(),
                                ));
                            }
                            if !group.members.is_empty()
                                && group.data.len() + parsed.padded > group_limit
                            {
                                relocations.start(self.relocate_group(std::mem::take(&mut group)));
                                relocations.settle(self, GROUPS_IN_FLIGHT - 1).await?;
                            }
                            let write_seq = self.seq.next()?;
                            group.add(&buf[..parsed.padded], write_seq, what, from);
                            moved += parsed.padded as u64;
                        } else if resyncing {
                            // Dead, or a client's bytes that look like a record.
                            step_one_block(&mut buf, &mut buf_lba, bs);
                            continue;
                        }
                        let _ = buf.split_to(parsed.padded);
                        buf_lba += blocks;
                    }
                    Err(RecordError::Truncated(needed)) => {
                        if resyncing && buf_lba + (needed as u64).div_ceil(bs) > zone_end {
                            step_one_block(&mut buf, &mut buf_lba, bs);
                            continue;
                        }
                        break;
                    }
                    Err(RecordError::NotARecord) if resyncing => {
                        step_one_block(&mut buf, &mut buf_lba, bs);
                    }
                    // Before the end of the furthest record the index ever named in the zone,
                    // records follow one another: a block that is none is a record whose magic
                    // is damaged, looked past like a damaged header (or the live records after
                    // it would never be moved, and the zone never emptied). Past it is where
                    // the zone's records end (what a finished zone's tail reads as is the
                    // drive's affair: zeros, ones, anything).
                    Err(RecordError::NotARecord)
                        if buf_lba < indexed_end && buf.len() >= bs as usize =>
                    {
                        self.stats.crc_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            ?zone,
                            lba = buf_lba,
                            "GC found a block that is no record below the write pointer (a damaged record); looking past it for the records the index names"
                        );
                        damaged_at = Some(buf_lba);
                        step_one_block(&mut buf, &mut buf_lba, bs);
                    }
                    Err(RecordError::NotARecord) if buf.len() >= bs as usize => break 'scan,
                    Err(RecordError::NotARecord) => break,
                    Err(RecordError::Checksum { padded, .. }) => {
                        let blocks = padded as u64 / bs;
                        if padded > buf.len() {
                            if resyncing && buf_lba + blocks > zone_end {
                                step_one_block(&mut buf, &mut buf_lba, bs);
                                continue;
                            }
                            break;
                        }
                        // (Past a damaged header, what fails its checksum may be a client's
                        // bytes: only a copy the index names counts.)
                        if !resyncing {
                            tracing::error!(
                                ?zone,
                                lba = buf_lba,
                                "GC found a damaged record; skipping it"
                            );
                            self.stats.crc_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        // A damaged copy the index still names is made again from a good one
                        // (as scrub would): otherwise the zone could never be emptied, and GC
                        // would read it again on every pass.
                        let from = Location {
                            drive: zone.drive,
                            lba: buf_lba,
                            blocks: blocks as u32,
                        };
                        self.rewrite_damaged(&buf, bs as usize, from).await;
                        if resyncing {
                            step_one_block(&mut buf, &mut buf_lba, bs);
                            continue;
                        }
                        let _ = buf.split_to(padded);
                        buf_lba += blocks;
                    }
                    // A damaged header leaves the record's end unknown: skipping by its
                    // length could take client bytes for records. The scan resynchronises.
                    Err(e @ (RecordError::Malformed(_) | RecordError::HeaderChecksum { .. })) => {
                        if !resyncing {
                            if e.is_damage() {
                                self.stats.crc_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::error!(
                                ?zone,
                                lba = buf_lba,
                                "GC found a damaged record header ({e}); looking past it for the records the index names"
                            );
                            damaged_at = Some(buf_lba);
                        }
                        step_one_block(&mut buf, &mut buf_lba, bs);
                    }
                }
            }
            // The next chunk was read while this one was parsed; start the one after.
            let Some(read) = next_read.take() else {
                if read_to >= capacity || damaged_at.is_some() {
                    break;
                }
                // Past the blocks placement counted, records may go on: an append that reported
                // failure (a lost completion) landed before later ones. With nothing pending,
                // one block tells whether a record starts there (else the scan ends on it);
                // with a record begun, read on.
                let n = if buf.is_empty() {
                    1
                } else {
                    chunk_blocks.min(capacity - read_to)
                };
                *next_read = Some(read_ahead(read_to, n));
                read_to += n;
                continue;
            };
            let bytes = read.await.map_err(task_failed)??;
            if read_to < written {
                let n = chunk_blocks.min(written - read_to);
                *next_read = Some(read_ahead(read_to, n));
                read_to += n;
            }
            if buf.is_empty() {
                buf = BytesMut::from(bytes);
            } else {
                buf.extend_from_slice(&bytes);
            }
        }
        stop_read(next_read.take()).await;
        relocations.finish(self, group).await?;
        if !prunable.is_empty() {
            self.committer
                .submit(Change::PruneTombstones(prunable))
                .await?;
        }
        let left = self.accounts.get(zone).valid_bytes;
        if left != 0 {
            match damaged_at {
                Some(lba) => tracing::error!(
                    ?zone,
                    lba,
                    left,
                    "live data remains in a zone with a damaged record header; leaving it"
                ),
                None => tracing::warn!(
                    ?zone,
                    left,
                    "live data remains after relocation; the zone is kept"
                ),
            }
            return Ok(None);
        }
        if let Some(lba) = damaged_at {
            tracing::warn!(
                ?zone,
                lba,
                "nothing the index names is left in a zone with a damaged record header: it is reset"
            );
        }
        // Reads that looked up locations in this zone before the relocations must finish
        // before it is reset: they hold tickets of this epoch or older.
        let epoch = self.gate.advance();
        Ok(Some(Reset { zone, epoch, moved }))
    }

    /// Starts appending a group of live records' copies to a GC zone of their drive, as one
    /// append; the task gives what the index must change. A task runs to its end even if the
    /// collection fails meanwhile (an append is never abandoned halfway); a copy no relocation
    /// commits is garbage.
    fn relocate_group(self: &Arc<Self>, group: Group) -> JoinHandle<EngineResult<Landed>> {
        let engine = self.clone();
        tokio::spawn(async move {
            let Some((_, first, _)) = group.members.first() else {
                return Ok((Vec::new(), ZoneHolds::new(engine.placement.clone())));
            };
            let (to, holds) = engine
                .append_moved(group.data.freeze(), first.drive, Writer::Gc, || {
                    group
                        .members
                        .iter()
                        .map(|(what, _, _)| what.clone())
                        .collect()
                })
                .await?;
            let relocated = group
                .members
                .into_iter()
                .map(|(what, from, at)| {
                    let copy = Location {
                        drive: to.drive,
                        lba: to.lba + at,
                        blocks: from.blocks,
                    };
                    (what, from, copy)
                })
                .collect();
            Ok((relocated, holds))
        })
    }

    /// Commits relocations to the index (after flushing the drives they landed on).
    async fn commit_relocations(
        &self,
        items: Vec<Relocated>,
        holds: Vec<ZoneHolds>,
    ) -> EngineResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        // Counted once committed, whether or not their zone is reset after: the copies were
        // written (a copy a racing overwrite made garbage was written too).
        let (records, bytes) = (
            items.len() as u64,
            items
                .iter()
                .map(|(_, _, copy)| self.drives.bytes_of(copy))
                .sum::<u64>(),
        );
        self.committer
            .submit_holding(Change::Relocate(items), holds)
            .await?;
        self.stats
            .records_relocated
            .fetch_add(records, Ordering::Relaxed);
        self.gc.bytes_relocated.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Zones in use by placement for a class (for tests and the admin table).
    pub fn zones_in_use(&self, drive: DriveId) -> usize {
        self.placement
            .usage(drive)
            .iter()
            .filter(|(u, _)| !matches!(u, ZoneUse::Free))
            .count()
    }

    /// Collects the best victim of every drive now, whatever the watermarks (admin `gc run`),
    /// all drives at once. Returns how many zones were reset.
    pub async fn collect_now(self: &Arc<Self>) -> EngineResult<usize> {
        if self.gc.closed.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable(
                "GC has stopped: the server is shutting down".into(),
            ));
        }
        let policy = self.gc.config.lock().policy;
        // Drives that take writes (not draining, attached), one collection each at a time.
        let drives: Vec<DriveId> = self
            .drives
            .all()
            .iter()
            .filter(|d| d.is_writable())
            .map(|d| d.id)
            .collect();
        let collected = futures::future::join_all(drives.into_iter().map(|drive| async move {
            let _collecting = self.gc.collect_on(drive).await;
            match self.choose_victim(drive, policy) {
                // Counted only if reset: a zone kept (something in it could not be moved)
                // was read for nothing, and is the same victim next time.
                Some(zone) => self.collect_zone(zone, 0).await.map(usize::from),
                None => Ok(0),
            }
        }))
        .await;
        let mut taken = 0;
        for result in collected {
            taken += result?;
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_kept_again_and_again_is_held_back_longer_each_time() {
        assert_eq!(kept_back_for(1), KEEP_BACK);
        assert_eq!(kept_back_for(2), KEEP_BACK * 2);
        assert_eq!(kept_back_for(6), KEEP_BACK * 32);
        assert_eq!(kept_back_for(u32::MAX), KEEP_BACK * 32);
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!("greedy".parse::<Policy>(), Ok(Policy::Greedy));
        assert_eq!("cost-benefit".parse::<Policy>(), Ok(Policy::CostBenefit));
        assert!("lru".parse::<Policy>().is_err());
    }
}
