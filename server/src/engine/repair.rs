//! Keeping R copies of everything: a background task finds records with fewer than R healthy
//! copies (written while a drive was down, on a drive down for longer than the grace period,
//! or on a drive being drained) and copies them onto other drives, rate-limited; draining
//! moves every record off a drive; scrub reads every copy, checks its CRC and identity, and
//! replaces a bad copy from a good one.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::EngineInner;
use super::commit::{Change, Relocation, ReplicaEdit, now_ms};
use super::drives::Drive;
use super::error::{EngineError, EngineResult};
use super::located::{self, Located};
use super::model::{DriveId, Location};
use super::placement::ZoneHolds;
use super::record;
use super::stats::Writer;

/// Tunables of repair and scrub.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// How long a drive may be unreachable before its copies are made again elsewhere.
    pub grace: Duration,
    /// Copy rate limit in bytes per second (0: unlimited).
    pub rate_bytes_per_sec: u64,
    /// Time between background scrub passes (None: only when asked).
    pub scrub_interval: Option<Duration>,
    /// Scrub read rate limit in bytes per second (0: unlimited).
    pub scrub_rate_bytes_per_sec: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            grace: Duration::from_secs(120),
            rate_bytes_per_sec: 128 << 20,
            scrub_interval: Some(Duration::from_secs(7 * 24 * 3600)),
            scrub_rate_bytes_per_sec: 64 << 20,
        }
    }
}

/// What repair and scrub have found and done.
#[derive(Debug, Clone, Default)]
pub struct RepairStatus {
    /// Bytes of records with fewer than R healthy copies, as of the last pass.
    pub under_replicated_bytes: u64,
    /// Records with fewer than R healthy copies, as of the last pass.
    pub under_replicated_records: u64,
    /// Bytes of records that have a copy on a draining drive, as of the last pass.
    pub draining_bytes: u64,
    /// Copies made by repair and drain.
    pub copies_made: u64,
    /// Bytes copied by repair and drain.
    pub bytes_copied: u64,
    /// Copies dropped from draining drives.
    pub copies_dropped: u64,
    /// Repair passes completed.
    pub passes: u64,
    /// Repair passes begun (one at a time; a pass that fails ends without counting in
    /// `passes`).
    pub passes_begun: u64,
    /// The number (in `passes_begun`) of the last pass that ran to its end.
    pub last_completed: u64,
    /// Why the last pass could not do everything, if it could not.
    pub blocked: Option<String>,
    /// Copy rate of the last pass that copied anything, bytes per second.
    pub last_rate: f64,
    /// Scrub: whether a pass is running.
    pub scrub_running: bool,
    /// Scrub: passes completed.
    pub scrub_passes: u64,
    /// Scrub: copies read and checked.
    pub scrub_checked: u64,
    /// Scrub: bytes read.
    pub scrub_bytes: u64,
    /// Scrub: copies found damaged or not what the index says (by a scrub pass, or by a read
    /// that met a damaged copy).
    pub scrub_bad: u64,
    /// Scrub: bad copies replaced from a good one.
    pub scrub_repaired: u64,
    /// Scrub: why the last pass stopped short, if it did.
    pub scrub_failure: Option<String>,
    /// Scrub: passes that stopped short since the start (failed passes are not counted in
    /// `scrub_passes`; this tells a new failure from an old one of the same words).
    pub scrub_failures: u64,
    /// Scrub: when the last pass ended (milliseconds since the Unix epoch), across restarts.
    pub scrub_last_end_ms: Option<u64>,
}

/// The meta key of when the last scrub pass ended (milliseconds since the epoch, big-endian):
/// the scrub interval counts from it across restarts, or a server restarted more often than
/// the interval would never scrub.
const SCRUB_LAST_END_KEY: &[u8] = b"scrub:last-end-ms";

/// How long a scrub pass that failed (its index unreadable for a moment) waits to go on.
const SCRUB_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The meta key of where an unfinished scrub pass stands (a [`located::Cursor`]): a pass stopped
/// by a restart goes on from there, or a store restarted more often than a pass lasts would
/// never check its last entries.
const SCRUB_CURSOR_KEY: &[u8] = b"scrub:cursor";

/// How often a running scrub pass keeps where it stands (and at every stop).
const SCRUB_CURSOR_SAVE_EVERY: Duration = Duration::from_secs(10);

/// The instant `interval` counts from, for a last pass that ended at `last_end_ms` (`now_ms`
/// being now): now for a store never scrubbed (its data was just written and checked), and
/// never later than now (a clock set back).
fn scrub_counted_from(last_end_ms: Option<u64>, now_ms: u64, now: Instant) -> Instant {
    let ago = last_end_ms.map_or(0, |end| now_ms.saturating_sub(end));
    now.checked_sub(Duration::from_millis(ago)).unwrap_or(now)
}

/// Runtime control of repair and scrub.
#[derive(Debug)]
pub struct RepairControl {
    config: Mutex<RepairConfig>,
    status: Mutex<RepairStatus>,
    wake: Notify,
    /// Wakes the scrub task (which runs beside repair: a pass of days must not hold repair up).
    scrub_wake: Notify,
    scrub_requested: AtomicBool,
    /// Extent copies a read found damaged (stream, offset, copy), to be made again from a
    /// good copy without waiting for the next scrub.
    suspects: Mutex<BTreeSet<(u64, u64, Location)>>,
    /// Copies known bad whose new copy could not be made (no drive could take it, a flush or
    /// the index failing for a moment): tried again later, not left to the next scrub.
    unrepaired: Mutex<Vec<Unrepaired>>,
    /// Pacing of the new copies made of damaged ones (see [`capped_credit`]): from when, and
    /// bytes since; kept from one round of them to the next, so each round's first is paced.
    rewrites_paced: Mutex<(Instant, u64)>,
    closed: AtomicBool,
    /// Turns true with `closed`: what upkeep tasks wait on between passes.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Taken by a drain or undrain from its check to its commit: two drains at once could
    /// each see enough other drives taking writes, and leave too few between them.
    pub(crate) drains: tokio::sync::Mutex<()>,
    /// The repair and scrub tasks, and other upkeep stopped with them.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Damaged copies a read may report before repair has taken them (more are left to the scrub).
const MAX_SUSPECTS: usize = 1024;

/// How long after a failed attempt a bad copy's new copy is tried again: doubled at each
/// failure, up to [`UNREPAIRED_LAST_WAIT`].
const UNREPAIRED_FIRST_WAIT: Duration = Duration::from_secs(10);
const UNREPAIRED_LAST_WAIT: Duration = Duration::from_secs(600);

/// A copy known bad whose new copy could not be made yet.
#[derive(Debug)]
struct Unrepaired {
    what: Relocation,
    bad: Location,
    /// Failed attempts so far.
    attempts: u32,
    /// When to try again.
    due: Instant,
}

impl RepairControl {
    pub(crate) fn new(config: RepairConfig) -> Self {
        RepairControl {
            config: Mutex::new(config),
            status: Mutex::new(RepairStatus::default()),
            wake: Notify::new(),
            scrub_wake: Notify::new(),
            scrub_requested: AtomicBool::new(false),
            suspects: Mutex::new(BTreeSet::new()),
            unrepaired: Mutex::new(Vec::new()),
            rewrites_paced: Mutex::new((Instant::now(), 0)),
            closed: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            drains: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// A snapshot of the status.
    pub fn status(&self) -> RepairStatus {
        self.status.lock().clone()
    }

    /// Asks for a repair pass now.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Asks for a scrub pass now.
    pub fn scrub(&self) {
        self.scrub_requested.store(true, Ordering::SeqCst);
        self.scrub_wake.notify_one();
    }

    /// Reports that the copy at `location` of the extent at `offset` of stream `stream_id`
    /// failed its CRC on a read: repair checks it and makes it again from a good copy.
    pub(crate) fn suspect(&self, stream_id: u64, offset: u64, location: Location) {
        let mut suspects = self.suspects.lock();
        if suspects.len() < MAX_SUSPECTS && suspects.insert((stream_id, offset, location)) {
            self.wake.notify_one();
        }
    }

    /// Keeps the bad copy `bad` of `what`, whose new copy could not be made after `attempts`
    /// tries (none: one just found), to be made again (said, and left to the next scrub, past
    /// [`MAX_SUSPECTS`]).
    fn retry_later(&self, what: Relocation, bad: Location, attempts: u32) {
        let mut unrepaired = self.unrepaired.lock();
        // Once each (reads and scrub passes may meet it again meanwhile).
        if unrepaired.iter().any(|u| u.bad == bad && u.what == what) {
            return;
        }
        if unrepaired.len() >= MAX_SUSPECTS {
            tracing::warn!(
                ?what,
                "too many bad copies wait to be made again: this one is left to the next scrub"
            );
            return;
        }
        // (None failed yet: a bad copy just found, to be made again at once.)
        let wait = match attempts {
            0 => Duration::ZERO,
            n => UNREPAIRED_FIRST_WAIT
                .saturating_mul(1 << (n - 1).min(16))
                .min(UNREPAIRED_LAST_WAIT),
        };
        unrepaired.push(Unrepaired {
            what,
            bad,
            attempts,
            due: Instant::now() + wait,
        });
    }

    /// The bad copies due to be tried again, taken out of the list.
    fn unrepaired_due(&self) -> Vec<Unrepaired> {
        let now = Instant::now();
        let mut unrepaired = self.unrepaired.lock();
        let (due, later) = std::mem::take(&mut *unrepaired)
            .into_iter()
            .partition(|u| u.due <= now);
        *unrepaired = later;
        due
    }

    /// Whether the engine is shutting down (upkeep tasks end).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the engine is shutting down: what an upkeep task waits on between passes.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            // (An error: the engine is gone, which is as stopped.)
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Makes `task`, an upkeep task that ends once [`RepairControl::is_closed`], one that
    /// shutting down waits for.
    pub(crate) fn adopt(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().push(task);
    }

    /// Sets the grace period.
    pub fn set_grace(&self, grace: Duration) {
        self.config.lock().grace = grace;
    }

    /// Ends the task and waits for it.
    pub async fn shut_down(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stopping.send_replace(true);
        self.wake.notify_one();
        self.scrub_wake.notify_one();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        futures::future::join_all(
            tasks
                .into_iter()
                .map(|task| super::stop_task("repair and scrub", task)),
        )
        .await;
    }
}

/// Starts the repair and scrub tasks; they end when the engine is dropped or shut down.
pub(crate) fn spawn(engine: Weak<EngineInner>) {
    let Some(strong) = engine.upgrade() else {
        return;
    };
    let control = &strong.repair;
    let scrub = tokio::spawn(scrub_when_due(engine.clone()));
    let task = tokio::spawn(async move {
        let mut last_signature: Option<HealthSignature> = None;
        // When the last pass ended and how long it took.
        let mut last_pass: Option<(Instant, Duration)> = None;
        loop {
            let Some(e) = engine.upgrade() else { return };
            if e.repair.closed.load(Ordering::SeqCst) {
                return;
            }
            let signature = e.health_signature();
            // (A draining drive still holding records, or about to, is as a pass that could not
            // do everything: records an upload begun before the drain put there.)
            let blocked = e.repair.status.lock().blocked.is_some() || e.drain_unfinished();
            if pass_due(&signature, last_signature.as_ref(), last_pass, blocked) {
                match e.repair_pass().await {
                    Ok(scanning) => {
                        last_signature = Some(signature);
                        last_pass = Some((Instant::now(), scanning));
                    }
                    Err(err) => {
                        tracing::warn!("repair pass failed: {err}");
                        e.repair.status.lock().blocked = Some(err.to_string());
                        last_signature = None;
                        last_pass = Some((Instant::now(), Duration::ZERO));
                    }
                }
            }
            e.fix_suspects().await;
            let wait = Duration::from_millis(500);
            let e2 = e.clone();
            drop(e);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = e2.repair.wake.notified() => {}
            }
        }
    });
    control.tasks.lock().extend([task, scrub]);
}

/// The value of scrub's meta `key` (`what` it says, for the warning should it not read).
fn scrub_meta(e: &EngineInner, key: &[u8], what: &str) -> Option<Vec<u8>> {
    e.index
        .get_raw(super::index::cf::META, key)
        .unwrap_or_else(|err| {
            tracing::warn!("reading {what} failed: {err}");
            None
        })
}

/// Runs a scrub pass when one is asked for, and every scrub interval (counted from the end of
/// the last pass: a pass longer than the interval is not followed by another at once).
async fn scrub_when_due(engine: Weak<EngineInner>) {
    let Some(e) = engine.upgrade() else { return };
    let last_end_ms = scrub_meta(&e, SCRUB_LAST_END_KEY, "when the last scrub pass ended")
        .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)));
    e.repair.status.lock().scrub_last_end_ms = last_end_ms;
    // A pass a restart stopped goes on at once from where it stood.
    let mut unfinished = scrub_meta(&e, SCRUB_CURSOR_KEY, "where the last scrub pass stood")
        .and_then(|v| {
            let cursor = located::Cursor::from_bytes(&v);
            if cursor.is_none() {
                tracing::warn!(
                    "where the last scrub pass stood does not read: the next starts over"
                );
            }
            cursor
        });
    drop(e);
    let mut last_scrub = scrub_counted_from(last_end_ms, now_ms(), Instant::now());
    // When a pass that failed goes on.
    let mut retry_at: Option<Instant> = None;
    loop {
        let Some(e) = engine.upgrade() else { return };
        if e.repair.closed.load(Ordering::SeqCst) {
            return;
        }
        let interval = e.repair.config.lock().scrub_interval;
        if e.repair.scrub_requested.swap(false, Ordering::SeqCst)
            || (unfinished.is_some() && retry_at.is_none_or(|at| Instant::now() >= at))
            || interval.is_some_and(|i| last_scrub.elapsed() >= i)
        {
            if unfinished.is_some() {
                tracing::info!("a scrub pass a restart stopped goes on");
            }
            let from = unfinished.take().unwrap_or_default();
            if let Err(err) = e.scrub_pass(from.clone()).await {
                // It goes on later from where it stood (as kept, else where it began).
                tracing::warn!("scrub pass failed (it goes on in a minute): {err}");
                unfinished = Some(
                    scrub_meta(&e, SCRUB_CURSOR_KEY, "where the scrub pass stood")
                        .and_then(|v| located::Cursor::from_bytes(&v))
                        .unwrap_or(from),
                );
                retry_at = Some(Instant::now() + SCRUB_RETRY_AFTER);
            }
            last_scrub = Instant::now();
        }
        let e2 = e.clone();
        drop(e);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = e2.repair.scrub_wake.notified() => {}
        }
    }
}

/// The drives' states and the count of writes made with fewer than R copies.
#[derive(Debug, PartialEq)]
struct HealthSignature {
    drives: Vec<DriveView>,
    short_writes: u64,
}

/// Shortest time between two passes that no drive's change asked for.
const MIN_PASS_GAP: Duration = Duration::from_secs(10);
/// Longest time between two passes.
const MAX_PASS_GAP: Duration = Duration::from_secs(300);

/// Whether a repair pass (a scan of the whole index) is due. A drive going down, coming back,
/// draining or outliving the grace period asks for one at once. New short writes, a pass that
/// could not finish, or a draining drive still holding records (`blocked`), ask for one too,
/// but no sooner than `MIN_PASS_GAP` and ten times the last pass's length after it: a target
/// down under write load must not keep the gateway busy scanning a big index. And a pass runs
/// at least every `MAX_PASS_GAP`.
fn pass_due(
    now: &HealthSignature,
    last: Option<&HealthSignature>,
    last_pass: Option<(Instant, Duration)>,
    blocked: bool,
) -> bool {
    let Some((ended, took)) = last_pass else {
        return true;
    };
    let since = ended.elapsed();
    let Some(last) = last else {
        // The last pass failed: try again after a while.
        return since >= MIN_PASS_GAP;
    };
    // A drive's change is followed at once, unless it is only a drive coming and going
    // (a flaky drive's back-off flips it every few seconds) and passes would then follow each
    // other back to back: at most half the time goes to passes those ask for. A drive lost
    // past its grace period, or a drain, is followed at once whatever the last pass took.
    let settled_change = now
        .drives
        .iter()
        .zip(&last.drives)
        .any(|(a, b)| a.lost != b.lost || a.draining != b.draining)
        || now.drives.len() != last.drives.len();
    (now.drives != last.drives && (settled_change || since >= took))
        || ((now.short_writes != last.short_writes || blocked)
            && since >= MIN_PASS_GAP.max(took * 10))
        || since >= MAX_PASS_GAP
}

/// What repair may do with a drive.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DriveView {
    up: bool,
    draining: bool,
    /// Unreachable for longer than the grace period: its copies count as lost.
    lost: bool,
}

/// Whether a read of a copy counts the damage it finds (see [`EngineInner::read_verified`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Counted in the CRC errors.
    Damage,
    /// Not counted: read again, having been counted when met.
    Nothing,
}

/// Why a copy read by repair or scrub is not taken.
#[derive(Debug)]
enum CopyRead {
    /// It could not be read now (its drive's connection lost or timed out, the index not
    /// answering): nothing is known of the copy.
    Unreadable(String),
    /// What is there is damaged, or not the record the index names (or no longer named).
    Bad(String),
}

impl std::fmt::Display for CopyRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyRead::Unreadable(why) => write!(f, "cannot be read now: {why}"),
            CopyRead::Bad(why) => f.write_str(why),
        }
    }
}

/// One thing to do for a record.
#[derive(Debug)]
enum Action {
    /// Make a new copy on another drive (replacing `replace`, if given).
    Copy { replace: Option<Location> },
    /// Drop a copy on a draining drive (enough copies remain elsewhere).
    Drop(Location),
}

impl EngineInner {
    /// What decides whether a repair pass is due.
    fn health_signature(&self) -> HealthSignature {
        let drives = self.drive_views();
        let short_writes = self.stats.under_replicated_writes.load(Ordering::Relaxed)
            + self.committer.short_commits.load(Ordering::Relaxed);
        HealthSignature {
            drives,
            short_writes,
        }
    }

    /// Whether a draining drive still holds records, or appends on their way there.
    fn drain_unfinished(&self) -> bool {
        self.drives
            .all()
            .iter()
            .any(|d| d.draining.load(Ordering::Relaxed) && self.holds_or_awaits_records(d))
    }

    fn drive_views(&self) -> Vec<DriveView> {
        let grace = self.repair.config.lock().grace;
        self.drives
            .all()
            .iter()
            .map(|d| DriveView {
                up: d.is_up(),
                draining: d.draining.load(Ordering::Relaxed),
                lost: d.down_for() > grace,
            })
            .collect()
    }

    /// One pass over the index, a batch at a time: counts what is under-replicated and fixes
    /// what can be fixed now (memory stays bounded however many entries the index holds).
    /// Returns the time spent reading the index (copying, paced by the rate limit, is not).
    async fn repair_pass(&self) -> EngineResult<Duration> {
        // Numbered before the drives are looked at: a drain that begins after this pass saw
        // the drive as not draining is not one this pass can end.
        let number = {
            let mut s = self.repair.status.lock();
            s.passes_begun += 1;
            s.passes_begun
        };
        let r = self.replicas();
        let views = self.drive_views();
        let healthy = |l: &Location| healthy_in(&views, l);
        let mut progress = Progress {
            rate: self.repair.config.lock().rate_bytes_per_sec,
            started: Instant::now(),
            paced_from: Instant::now(),
            copied: 0,
            blocked: None,
            edits: Vec::new(),
            holds: Vec::new(),
            left: Tally::default(),
            unrecorded: Unrecorded::default(),
        };
        let mut tally = Tally::default();
        let mut cursor = located::Cursor::default();
        let mut scanning = Duration::ZERO;
        loop {
            let scan_started = Instant::now();
            let (index, drives, batch_views) =
                (self.index.clone(), self.drives.clone(), views.clone());
            let (work, counts, next, end) = tokio::task::spawn_blocking(move || {
                let entries = located::next_batch(&index, &mut cursor, REPAIR_BATCH)?;
                let end = entries.is_empty();
                let (work, counts) = triage(entries, r, &batch_views, &drives);
                Ok::<_, EngineError>((work, counts, cursor, end))
            })
            .await
            .map_err(|e| EngineError::Internal(format!("repair scan failed: {e}")))??;
            scanning += scan_started.elapsed();
            cursor = next;
            tally.add(&counts);
            if end || self.repair.closed.load(Ordering::SeqCst) {
                break;
            }
            self.repair_entries(work, r, &healthy, &mut progress).await;
        }
        let Progress {
            started,
            copied,
            blocked,
            left,
            ..
        } = progress;
        if self.repair.closed.load(Ordering::SeqCst) {
            // Cut short by the shutdown: its counts are of part of the index, and it drained
            // nothing it did not reach.
            return Ok(scanning);
        }
        tally.add(&left);
        let mut s = self.repair.status.lock();
        s.under_replicated_bytes = tally.under_bytes;
        s.under_replicated_records = tally.under_records;
        s.draining_bytes = tally.draining_bytes;
        s.passes += 1;
        s.last_completed = number;
        if copied > 0 {
            s.last_rate = copied as f64 / started.elapsed().as_secs_f64().max(1e-6);
            tracing::info!(
                copied_mib = copied >> 20,
                rate_mib_s = s.last_rate / (1 << 20) as f64,
                "repair copied records"
            );
        }
        if blocked.is_some() && blocked != s.blocked {
            tracing::warn!(
                "repair could not finish: {}",
                blocked.as_deref().unwrap_or("")
            );
        }
        s.blocked = blocked;
        Ok(scanning)
    }

    /// Does what was planned for each entry of a batch, several entries at once, pacing copies
    /// to the rate limit.
    async fn repair_entries(
        &self,
        work: Vec<Work>,
        r: usize,
        healthy: &impl Fn(&Location) -> bool,
        progress: &mut Progress,
    ) {
        let mut outcomes = futures::stream::iter(work)
            .map(|w| self.repair_entry(w, r, healthy))
            .buffered(REPAIRS_IN_FLIGHT);
        while let Some(outcome) = outcomes.next().await {
            progress.holds.extend(outcome.holds);
            progress.copied += outcome.copied;
            if outcome.edits.is_empty() {
                progress.left.add(&outcome.left);
            } else {
                let u = &mut progress.unrecorded;
                u.left.add(&outcome.left);
                u.found.add(&outcome.found);
                u.made += outcome.made;
                u.dropped += outcome.dropped;
                u.bytes += outcome.copied;
            }
            progress.edits.extend(outcome.edits);
            if let Some(why) = outcome.blocked {
                progress.blocked.get_or_insert(why);
            }
            progress.paced_from = capped_credit(
                progress.paced_from,
                progress.copied,
                progress.rate,
                Instant::now(),
            );
            pace_until(
                progress.paced_from,
                progress.copied,
                progress.rate,
                &self.repair.wake,
                &self.repair.closed,
            )
            .await;
            if progress.edits.len() >= 64 {
                self.commit_edits(progress).await;
            }
        }
        // Each batch's copies are recorded before the next batch is read: copies made at the
        // pace of the rate limit wait no longer than a batch to count.
        self.commit_edits(progress).await;
    }

    /// Records the copies made and dropped so far. Edits the committer cannot record (a drive's
    /// flush failed, or its session changed) are left for the next pass rather than ending this
    /// one: one flaky target must not keep every pass from reaching the records after them.
    async fn commit_edits(&self, progress: &mut Progress) {
        if progress.edits.is_empty() {
            return;
        }
        let edits = std::mem::take(&mut progress.edits);
        let holds = std::mem::take(&mut progress.holds);
        let done = std::mem::take(&mut progress.unrecorded);
        let count = edits.len();
        let submitted = edits.clone();
        match self
            .committer
            .submit_holding(Change::Replicas(edits), holds)
            .await
        {
            Ok(_) => {
                // The committer takes what it can of a change and leaves out the rest without
                // failing it (copies on a drive whose flush failed or that reconnected; an edit
                // GC's move of the record made moot): what it left out is not counted done.
                let (missed_copies, missed_drops) = self.edits_not_recorded(&submitted);
                let missed = missed_copies + missed_drops;
                if missed == 0 {
                    progress.left.add(&done.left);
                } else {
                    // Which entries they were is not told apart here: the batch counts as
                    // found until the next pass (due soon, as this one is blocked) does them.
                    progress.left.add(&done.found);
                    progress.blocked.get_or_insert(format!(
                        "{missed} of {count} copy changes were not recorded (a drive's flush failed or it reconnected, or the record moved meanwhile); the next pass does them again"
                    ));
                }
                let mut s = self.repair.status.lock();
                s.copies_made += done.made.saturating_sub(missed_copies);
                s.copies_dropped += done.dropped.saturating_sub(missed_drops);
                s.bytes_copied += done.bytes;
            }
            Err(e) => {
                tracing::warn!(
                    count,
                    "repair could not record the copies it made; the next pass makes them again: {e}"
                );
                progress.left.add(&done.found);
                progress
                    .blocked
                    .get_or_insert(format!("recording {count} copies failed: {e}"));
            }
        }
    }

    /// How many of `edits`, committed, the index does not show: new copies it does not name,
    /// and copies dropped that it still names, of records that are still there (one deleted
    /// meanwhile needs nothing). An index that cannot be read counts every edit as missing.
    fn edits_not_recorded(&self, edits: &[(Relocation, ReplicaEdit)]) -> (u64, u64) {
        let missed: Vec<&ReplicaEdit> = edits
            .iter()
            .filter(|(what, edit)| {
                let copies = match located::current_copies(&self.index, what) {
                    Ok(Some(copies)) => copies,
                    Ok(None) => return false,
                    Err(e) => {
                        tracing::warn!("checking what repair recorded failed: {e}");
                        return true;
                    }
                };
                match edit {
                    ReplicaEdit::Add(to) | ReplicaEdit::Replace(_, to) => !copies.contains(to),
                    ReplicaEdit::Remove(gone) => copies.contains(gone),
                }
            })
            .map(|(_, edit)| edit)
            .collect();
        let drops = missed
            .iter()
            .filter(|e| matches!(e, ReplicaEdit::Remove(_)))
            .count() as u64;
        (missed.len() as u64 - drops, drops)
    }

    /// Whether a copy of `entry` other than `kept` that stays (on a drive that takes writes and
    /// is not lost past `grace`: as counted for R, so not one on another draining drive, being
    /// dropped too) reads whole (CRC and identity checked), so that dropping `kept` cannot drop
    /// the last whole copy. Damaged copies met are handed to be made again (from a whole one:
    /// `kept`, if no other).
    async fn another_copy_reads_whole(
        &self,
        entry: &Located,
        kept: Location,
        grace: Duration,
    ) -> bool {
        for &other in entry.copies.iter().filter(|l| **l != kept) {
            let stays = self
                .drives
                .of(&other)
                .is_some_and(|d| d.is_writable() && d.down_for() <= grace);
            if !stays {
                continue;
            }
            match self.read_verified(&entry.what, other, Count::Damage).await {
                Ok(_) => return true,
                Err(CopyRead::Bad(why)) => {
                    tracing::warn!(what = ?entry.what, drive = other.drive, "a copy read before a drain drops another is bad: {why}");
                    self.repair.retry_later(entry.what.clone(), other, 0);
                }
                Err(CopyRead::Unreadable(_)) => {}
            }
        }
        false
    }

    /// Does what was planned for one entry.
    async fn repair_entry(
        &self,
        work: Work,
        r: usize,
        healthy: &impl Fn(&Location) -> bool,
    ) -> EntryOutcome {
        let Work {
            entry,
            actions,
            bytes,
            found,
        } = work;
        let mut outcome = EntryOutcome::default();
        if self.repair.closed.load(Ordering::SeqCst) {
            outcome.left = found;
            return outcome;
        }
        // What remains of the entry's problems once its actions are done.
        let mut left = Tally::default();
        let mut made = 0;
        // Drives this entry's new copies went to (not to be chosen again for it).
        let mut new_copies: Vec<DriveId> = Vec::new();
        for action in actions {
            let result = match action {
                Action::Drop(copy) => {
                    // Planned on the drives' states as the pass began, which may be hours
                    // old: a drive down since must not leave the record short of R copies
                    // that can be read.
                    let grace = self.repair.config.lock().grace;
                    let up_now = entry
                        .copies
                        .iter()
                        .filter(|l| **l != copy)
                        .filter(|l| {
                            self.drives
                                .of(l)
                                .is_some_and(|d| d.is_writable() && d.down_for() <= grace)
                        })
                        .count()
                        + new_copies.len();
                    // Undrained since: the copy stays.
                    let draining = self
                        .drives
                        .of(&copy)
                        .is_some_and(|d| d.draining.load(Ordering::SeqCst));
                    if !draining {
                        Err(format!(
                            "drive {} is no longer drained: its copy stays",
                            copy.drive
                        ))
                    } else if up_now >= r
                        && new_copies.is_empty()
                        && !self.another_copy_reads_whole(&entry, copy, grace).await
                    {
                        // The drives' states say nothing of what the copies hold: the copy
                        // dropped may be the last whole one (the others are made again from it
                        // first; see [`Self::another_copy_reads_whole`]).
                        Err(format!(
                            "no other copy reads whole: the copy on draining drive {} is kept for now",
                            copy.drive
                        ))
                    } else if up_now >= r {
                        outcome
                            .edits
                            .push((entry.what.clone(), ReplicaEdit::Remove(copy)));
                        outcome.dropped += 1;
                        Ok(())
                    } else {
                        Err(format!(
                            "a copy on draining drive {} is kept: {up_now} other copies are on drives up now",
                            copy.drive
                        ))
                    }
                }
                Action::Copy { replace } => {
                    match self
                        .copy_record(&entry, &new_copies, replace, healthy)
                        .await
                    {
                        Ok(Some((edit, bytes, holds))) => {
                            outcome.holds.push(holds);
                            if let ReplicaEdit::Add(to) | ReplicaEdit::Replace(_, to) = &edit {
                                new_copies.push(to.drive);
                            }
                            outcome.edits.push((entry.what.clone(), edit));
                            outcome.copied += bytes;
                            made += 1;
                            Ok(())
                        }
                        // No drive can take the copy (on a drain, the copy stays on the
                        // draining drive until one can: a drain never lowers the number of
                        // copies). The entry's later actions, planned on this copy being
                        // made, are not taken.
                        Ok(None) => Err(match replace {
                            Some(from) => {
                                format!("no drive can take the copy on drive {}", from.drive)
                            }
                            None => "no drive can take another copy".to_string(),
                        }),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            if let Err(why) = result {
                // An entry that changed since its batch was read (GC moved a copy, a client
                // overwrote it) is looked at again next pass; nothing is blocked.
                let changed = located::current_copies(&self.index, &entry.what)
                    .map(|now| now.as_deref() != Some(&entry.copies[..]))
                    .unwrap_or(false);
                if !changed {
                    outcome.blocked = Some(why);
                }
                left = found;
                break;
            }
        }
        // Copies on a drive down for less than the grace period are waited for, not made
        // again: the entry stays under-replicated meanwhile.
        let good = entry.copies.iter().filter(|l| healthy(l)).count();
        if left.under_records == 0 && good + made < r {
            left.under_bytes = bytes;
            left.under_records = 1;
        }
        outcome.left = left;
        outcome.found = found;
        outcome.made = made as u64;
        outcome
    }

    /// Whether a repair or scrub copy may go to `drive`: it takes writes and has free zones
    /// beyond its reserve. Copies are written like GC's relocations, which may use the
    /// reserve; they must not, or they could leave GC no room to move live records.
    fn can_take_copy(&self, drive: DriveId) -> bool {
        self.drives.get(drive).is_some_and(|d| d.is_writable())
            && self.placement.free_zones(drive) > self.placement.reserve_of(drive)
    }

    /// Reads a good copy of `entry` and appends it to a drive that holds none; returns the
    /// edit to commit and the bytes copied, or None if no drive can take it.
    async fn copy_record(
        &self,
        entry: &Located,
        new_copies: &[DriveId],
        replace: Option<Location>,
        healthy: &impl Fn(&Location) -> bool,
    ) -> EngineResult<Option<(ReplicaEdit, u64, ZoneHolds)>> {
        let holding: HashSet<DriveId> = entry
            .copies
            .iter()
            .map(|l| l.drive)
            .chain(new_copies.iter().copied())
            .collect();
        let target = self
            .drives
            .all()
            .iter()
            .filter(|d| self.can_take_copy(d.id) && !holding.contains(&d.id))
            .max_by_key(|d| self.placement.free_zones(d.id))
            .map(|d| d.id);
        let Some(target) = target else {
            return Ok(None);
        };
        let mut last = String::from("no readable copy");
        // Healthy copies first; then any other on a drive that answers (the copy a drain moves
        // off its drive is one: it may be the only good one left). Every copy read is checked.
        let up = |l: &Location| self.drives.of(l).is_some_and(|d| d.is_up());
        let sources = entry
            .copies
            .iter()
            .filter(|l| healthy(l))
            .chain(entry.copies.iter().filter(|l| !healthy(l) && up(l)));
        // Damaged copies met on the way to a good one: made again from a good one soon (as a
        // read that meets one has it), not left counted as copies until a scrub. (With no good
        // copy at all, nothing could make them again: they are not queued, pass after pass.)
        let mut damaged = Vec::new();
        for source in sources {
            match self
                .read_verified(&entry.what, *source, Count::Damage)
                .await
            {
                Ok(bytes) => {
                    if let Relocation::Extent { stream_id, offset } = &entry.what {
                        for bad in damaged {
                            self.repair.suspect(*stream_id, *offset, bad);
                        }
                    }
                    let len = bytes.len() as u64;
                    let bytes = self.new_copy(&bytes, replace, target)?;
                    let (to, holds) = self
                        .append_moved(bytes, target, Writer::Repair, || vec![entry.what.clone()])
                        .await?;
                    let edit = match replace {
                        Some(from) => ReplicaEdit::Replace(from, to),
                        None => ReplicaEdit::Add(to),
                    };
                    return Ok(Some((edit, len, holds)));
                }
                Err(e) => {
                    if matches!(e, CopyRead::Bad(_)) {
                        damaged.push(*source);
                    }
                    last = e.to_string();
                }
            }
        }
        Err(EngineError::Corrupt(format!(
            "no good copy of {:?} to repair from: {last}",
            entry.what
        )))
    }

    /// Checks each copy a read found damaged that the index still names, and makes it again
    /// from a good copy if it is (as scrub does).
    async fn fix_suspects(&self) {
        let suspects = std::mem::take(&mut *self.repair.suspects.lock());
        let work = suspects
            .into_iter()
            .map(|(stream_id, offset, bad)| (Relocation::Extent { stream_id, offset }, bad, 0))
            .chain(
                self.repair
                    .unrepaired_due()
                    .into_iter()
                    .map(|u| (u.what, u.bad, u.attempts)),
            );
        // Paced as repair's copies are: reads meeting many damaged copies (a drive failing
        // silently) do not set off rewrites faster than the repair rate.
        let rate = self.repair.config.lock().rate_bytes_per_sec;
        for (what, bad, attempts) in work {
            let (paced_from, rewritten) = {
                let mut paced = self.repair.rewrites_paced.lock();
                paced.0 = capped_credit(paced.0, paced.1, rate, Instant::now());
                *paced
            };
            tokio::select! {
                _ = pace(paced_from, rewritten, rate) => {}
                _ = self.repair.stopped() => return,
            }
            if self.repair.closed.load(Ordering::SeqCst) {
                // Shutting down: what is left is met again by reads or the next scrub.
                return;
            }
            let Ok(Some(copies)) = located::current_copies(&self.index, &what) else {
                continue;
            };
            // Moved or replaced since, or its drive down (the read may have been cut short):
            // nothing to fix now (one known bad is tried again later).
            if !copies.contains(&bad) {
                continue;
            }
            let known_bad = attempts > 0;
            if self.drives.of(&bad).is_none_or(|d| !d.is_up()) {
                if known_bad {
                    self.repair.retry_later(what, bad, attempts);
                }
                continue;
            }
            match self.read_verified(&what, bad, Count::Nothing).await {
                Err(CopyRead::Bad(_)) => {}
                Err(CopyRead::Unreadable(_)) if known_bad => {
                    self.repair.retry_later(what, bad, attempts);
                    continue;
                }
                _ => continue,
            }
            // Moved while it was read: its old place may hold anything now.
            let still_named = located::current_copies(&self.index, &what)
                .ok()
                .flatten()
                .is_some_and(|copies| copies.contains(&bad));
            if !still_named {
                continue;
            }
            if !known_bad {
                self.repair.status.lock().scrub_bad += 1;
            }
            let entry = Located { what, copies };
            self.repair.rewrites_paced.lock().1 += self.drives.bytes_of(&bad);
            match self.rewrite_copy(&entry, bad).await {
                Ok(true) => self.repair.status.lock().scrub_repaired += 1,
                Ok(false) => {}
                // No whole copy left to make it from: the record is lost (counted by the reads
                // that met it), and trying again would not change that.
                Err(e @ EngineError::Corrupt(_)) => {
                    tracing::error!(what = ?entry.what, "a damaged copy cannot be made again: {e}");
                }
                Err(e) => {
                    tracing::error!(
                        what = ?entry.what,
                        attempts = attempts + 1,
                        "a damaged copy could not be made again (it is tried again later): {e}"
                    );
                    self.repair.retry_later(entry.what, bad, attempts + 1);
                }
            }
        }
    }

    /// The bytes of a new copy of `record` for drive `target`, made in place of `replace` if
    /// given: a new write_seq (a copy there is then newer than any before it), and, in place of
    /// a copy on another drive, what it replaces (should that drive come back, a rebuild or
    /// replay knows its copy is no longer one).
    fn new_copy(
        &self,
        record: &[u8],
        replace: Option<Location>,
        target: DriveId,
    ) -> EngineResult<Bytes> {
        let replaces = replace.map(|l| l.drive).filter(|d| *d != target);
        Ok(record::new_copy(record, self.seq.next()?, replaces))
    }

    /// Reads the copy at `location` and checks its CRC, that it is the record `what` means, and
    /// that the index still names the copy once it has been read. (Repair holds no read-gate
    /// ticket: GC may have moved the record and reset its zone meanwhile, and a record's own
    /// CRCs cannot tell a real record from bytes a client stored to look like one; GC takes a
    /// copy out of the index before it resets the zone.)
    /// A damaged copy is counted in the CRC errors when `count` says so (not when it is read
    /// again to be sure, having been counted when it was met).
    async fn read_verified(
        &self,
        what: &Relocation,
        location: Location,
        count: Count,
    ) -> Result<Bytes, CopyRead> {
        let drive: &Arc<Drive> = self
            .drives
            .of(&location)
            .ok_or_else(|| CopyRead::Unreadable("unknown drive".into()))?;
        let bytes = drive
            .device
            .read(location.lba, location.blocks)
            .await
            .map_err(|e| {
                // A read the host gave up on (a connection lost, a timeout) says nothing of
                // the copy; a media error does.
                if e.kind() == zns::ZoneErrorKind::Unavailable {
                    CopyRead::Unreadable(e.to_string())
                } else {
                    CopyRead::Bad(e.to_string())
                }
            })?;
        // What was read counts only if the index still names the copy now that it has been
        // read: GC may have moved it and reset its zone meanwhile (repair holds no read
        // ticket), and what is there then is not damage, nor counted as such.
        match located::current_copies(&self.index, what) {
            Ok(Some(copies)) if copies.contains(&location) => {}
            Ok(_) => {
                return Err(CopyRead::Bad(
                    "the copy was moved or dropped while it was read".into(),
                ));
            }
            Err(e) => return Err(CopyRead::Unreadable(e.to_string())),
        }
        let parsed = record::parse(&bytes, drive.block_size() as usize).map_err(|e| {
            if e.is_damage() && count == Count::Damage {
                self.stats.crc_errors.fetch_add(1, Ordering::Relaxed);
            }
            CopyRead::Bad(e.to_string())
        })?;
        if !located::is_record_of(what, &parsed.header) {
            return Err(CopyRead::Bad(
                "the record there is not the one the index names".into(),
            ));
        }
        Ok(bytes)
    }

    /// Reads every copy of every record (from `from` on: the start, or where a pass a restart
    /// stopped stood), checks it, and replaces bad copies from good ones.
    async fn scrub_pass(&self, from: located::Cursor) -> EngineResult<()> {
        let before = {
            let mut s = self.repair.status.lock();
            s.scrub_running = true;
            (s.scrub_checked, s.scrub_bad, s.scrub_repaired)
        };
        let result = self.scrub_all(from).await;
        let ended = {
            let mut s = self.repair.status.lock();
            s.scrub_running = false;
            s.scrub_failure = result.as_ref().err().map(|e| e.to_string());
            if result.is_err() && !self.repair.closed.load(Ordering::SeqCst) {
                s.scrub_failures += 1;
            }
            let (checked, bad, repaired) = (
                s.scrub_checked - before.0,
                s.scrub_bad - before.1,
                s.scrub_repaired - before.2,
            );
            // A pass cut short by a shutdown is not a pass.
            if self.repair.closed.load(Ordering::SeqCst) {
                tracing::info!(checked, bad, repaired, "scrub pass stopped by the shutdown");
                return result;
            }
            // Nor is one cut short by a failure: where it stood is kept, for it to go on from.
            if let Err(e) = &result {
                tracing::info!(
                    checked,
                    bad,
                    repaired,
                    "scrub pass stopped by a failure: {e}"
                );
                return result;
            }
            s.scrub_passes += 1;
            tracing::info!(checked, bad, repaired, "scrub pass finished");
            let ended = now_ms();
            s.scrub_last_end_ms = Some(ended);
            ended
        };
        let index = self.index.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            let mut batch = rocksdb::WriteBatch::default();
            let meta = index.cf(super::index::cf::META);
            batch.put_cf(meta, SCRUB_LAST_END_KEY, ended.to_be_bytes());
            batch.delete_cf(meta, SCRUB_CURSOR_KEY);
            index.write(batch, true)
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::warn!(
                "recording when the scrub pass ended failed: the interval counts from the next start"
            );
        }
        result
    }

    async fn scrub_all(&self, from: located::Cursor) -> EngineResult<()> {
        let rate = self.repair.config.lock().scrub_rate_bytes_per_sec;
        // Reads are paced from here, moved on so that a scrub that fell behind its rate (drives
        // busy) does not bank credit to read unpaced later.
        let mut paced_from = Instant::now();
        let mut read = 0u64;
        let healthy = |l: &Location| self.drives.of(l).is_some_and(|d| d.is_up());
        // `cursor`: where the next batch is read from; `checked_to`: everything before it is
        // checked (what a stop keeps).
        let mut cursor = from.clone();
        let mut checked_to = from;
        let mut kept_at = Instant::now();
        loop {
            // A batch at a time: memory stays bounded however many entries the index holds.
            let index = self.index.clone();
            let (entries, next) = tokio::task::spawn_blocking(move || {
                located::next_batch_positioned(&index, &mut cursor, SCRUB_BATCH)
                    .map(|b| (b, cursor))
            })
            .await
            .map_err(|e| EngineError::Internal(format!("scrub scan failed: {e}")))??;
            cursor = next;
            if entries.is_empty() {
                break;
            }
            let closed = || self.repair.closed.load(Ordering::SeqCst);
            if closed() {
                self.keep_scrub_cursor(&checked_to).await;
                break;
            }
            let result = self
                .scrub_entries(
                    entries,
                    rate,
                    &mut paced_from,
                    &mut read,
                    &healthy,
                    &mut checked_to,
                )
                .await;
            if result.is_err() || closed() || kept_at.elapsed() >= SCRUB_CURSOR_SAVE_EVERY {
                self.keep_scrub_cursor(&checked_to).await;
                kept_at = Instant::now();
            }
            result?;
            if closed() {
                break;
            }
        }
        Ok(())
    }

    /// Keeps where a scrub pass stands, for the next start to go on from.
    async fn keep_scrub_cursor(&self, cursor: &located::Cursor) {
        let index = self.index.clone();
        let bytes = cursor.to_bytes();
        let kept = tokio::task::spawn_blocking(move || {
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(index.cf(super::index::cf::META), SCRUB_CURSOR_KEY, bytes);
            index.write(batch, false)
        })
        .await;
        if !matches!(kept, Ok(Ok(()))) {
            tracing::warn!(
                "keeping where the scrub pass stands failed: a restart goes back further"
            );
        }
    }

    /// Checks the copies of `entries` (each with the cursor just past it), moving `checked_to`
    /// past every entry whose copies are all dealt with.
    async fn scrub_entries(
        &self,
        entries: Vec<(Located, located::Cursor)>,
        rate: u64,
        paced_from: &mut Instant,
        read: &mut u64,
        healthy: &impl Fn(&Location) -> bool,
        checked_to: &mut located::Cursor,
    ) -> EngineResult<()> {
        // Several copies are read at once; what they show is dealt with in order.
        let mut checks: Vec<(usize, Location)> = Vec::new();
        for (i, (entry, _)) in entries.iter().enumerate() {
            checks.extend(entry.copies.iter().filter(|c| healthy(c)).map(|c| (i, *c)));
        }
        let entries = &entries;
        let mut results = futures::stream::iter(checks)
            .map(|(i, copy)| {
                let entry = &entries[i].0;
                async move {
                    let result = self.read_verified(&entry.what, copy, Count::Damage).await;
                    (i, entry, copy, result)
                }
            })
            .buffered(SCRUB_READS_IN_FLIGHT);
        while let Some((i, entry, copy, result)) = results.next().await {
            if self.repair.closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Results come in entry order: every entry before this one is dealt with.
            if let Some(before) = i.checked_sub(1) {
                *checked_to = entries[before].1.clone();
            }
            let bytes = self.drives.bytes_of(&copy);
            *read += bytes;
            // Checked: read, good or bad (a copy that could not be read is left to the next
            // pass, unchecked).
            if !matches!(result, Err(CopyRead::Unreadable(_))) {
                let mut s = self.repair.status.lock();
                s.scrub_checked += 1;
                s.scrub_bytes += bytes;
            }
            // A copy that GC moved, or an entry overwritten or deleted, since the batch was read
            // is not a bad copy: its old place may hold anything now.
            let moved = || {
                located::current_copies(&self.index, &entry.what)
                    .map(|now| !now.is_some_and(|copies| copies.contains(&copy)))
                    .unwrap_or(false)
            };
            // A copy that could not be read now (its drive failing for a moment) is left to
            // the next pass: it is not known bad.
            if let Err(CopyRead::Bad(why)) = result
                && !moved()
            {
                tracing::warn!(
                    drive = copy.drive,
                    lba = copy.lba,
                    what = ?entry.what,
                    "scrub found a bad copy: {why}"
                );
                self.repair.status.lock().scrub_bad += 1;
                match self.rewrite_copy(entry, copy).await {
                    Ok(true) => self.repair.status.lock().scrub_repaired += 1,
                    Ok(false) => {}
                    Err(e @ EngineError::Corrupt(_)) => {
                        tracing::error!(what = ?entry.what, "scrub could not repair the copy: {e}");
                    }
                    Err(e) => {
                        tracing::error!(what = ?entry.what, "scrub could not repair the copy (it is tried again later): {e}");
                        self.repair.retry_later(entry.what.clone(), copy, 1);
                    }
                }
            }
            *paced_from = capped_credit(*paced_from, *read, rate, Instant::now());
            pace_until(
                *paced_from,
                *read,
                rate,
                &self.repair.scrub_wake,
                &self.repair.closed,
            )
            .await;
        }
        if !self.repair.closed.load(Ordering::SeqCst)
            && let Some((_, past)) = entries.last()
        {
            *checked_to = past.clone();
        }
        Ok(())
    }

    /// Replaces the bad copy `bad` of `entry` with a fresh one written from a good copy, on the
    /// same drive if it takes writes, else on another. Whether it did: not when the index no
    /// longer names the bad copy (moved, overwritten, deleted since), with nothing to make.
    pub(super) async fn rewrite_copy(&self, entry: &Located, bad: Location) -> EngineResult<bool> {
        // The record's copies as the index has them now, while it still names the bad one.
        let named_now = || -> EngineResult<Option<Vec<Location>>> {
            Ok(located::current_copies(&self.index, &entry.what)?
                .filter(|copies| copies.contains(&bad)))
        };
        if named_now()?.is_none() {
            return Ok(false);
        }
        let mut source = None;
        // (A copy that cannot be read now may be whole: then the record is not known lost.)
        let mut unreadable = false;
        for copy in entry.copies.iter().filter(|l| **l != bad) {
            match self.read_verified(&entry.what, *copy, Count::Damage).await {
                Ok(bytes) => {
                    source = Some(bytes);
                    break;
                }
                Err(CopyRead::Unreadable(_)) => unreadable = true,
                Err(CopyRead::Bad(_)) => {}
            }
        }
        let source = source.ok_or_else(|| {
            if unreadable {
                EngineError::Unavailable("no other copy can be read now".into())
            } else {
                EngineError::Corrupt("no good copy left".into())
            }
        })?;
        // Again after the read: the batch that found the bad copy may be minutes old, and a
        // copy made since on another drive must not be the new copy's target (the edit would
        // be refused, the bad copy left named). No longer named: nothing to make again.
        let Some(copies) = named_now()? else {
            return Ok(false);
        };
        let holding: HashSet<DriveId> = copies
            .iter()
            .filter(|l| **l != bad)
            .map(|l| l.drive)
            .collect();
        // The bad copy's own drive takes the new one as GC's relocations are taken, from its
        // reserve if need be (the bad copy becomes garbage there: no space is lost); it is
        // what GC at the reserve needs to empty the zone the bad copy is in.
        let own_drive_takes =
            |id: DriveId| id == bad.drive && self.drives.get(id).is_some_and(|d| d.is_writable());
        let target = std::iter::once(bad.drive)
            .chain(self.drives.all().iter().map(|d| d.id))
            .find(|&id| !holding.contains(&id) && (own_drive_takes(id) || self.can_take_copy(id)))
            .ok_or_else(|| EngineError::Unavailable("no drive can take the new copy".into()))?;
        let bytes = self.new_copy(&source, Some(bad), target)?;
        let (to, holds) = self
            .append_moved(bytes, target, Writer::Repair, || vec![entry.what.clone()])
            .await?;
        self.committer
            .submit_holding(
                Change::Replicas(vec![(entry.what.clone(), ReplicaEdit::Replace(bad, to))]),
                vec![holds],
            )
            .await?;
        // Refused (the record changed meanwhile): not counted as repaired.
        match located::current_copies(&self.index, &entry.what)? {
            Some(now) if now.contains(&to) => Ok(true),
            _ => Err(EngineError::Unavailable(
                "the record changed while its copy was made again; it is looked at again".into(),
            )),
        }
    }

    /// Marks a drive as draining (persistently): no new writes go to it and repair moves every
    /// record off it.
    pub(crate) async fn drain(&self, drive: DriveId) -> EngineResult<()> {
        let d = self
            .drives
            .get(drive)
            .ok_or_else(|| EngineError::InvalidArgument("no such drive".into()))?;
        // No new writes go to it from now; if the drain cannot be recorded, it never began.
        let was = d.draining.swap(true, Ordering::SeqCst);
        if !was {
            let begun = self.repair.status.lock().passes_begun;
            d.drain_began_after_pass.store(begun, Ordering::SeqCst);
        }
        if let Err(e) = self
            .committer
            .submit(Change::SetDraining(drive, true))
            .await
        {
            d.draining.store(was, Ordering::SeqCst);
            return Err(e);
        }
        self.repair.nudge();
        Ok(())
    }
}

/// Index entries a scrub reads at a time.
const SCRUB_BATCH: usize = 1024;

/// Index entries a repair pass reads at a time.
const REPAIR_BATCH: usize = 1024;

/// What a repair pass counts over the whole index.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    under_bytes: u64,
    under_records: u64,
    draining_bytes: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.under_bytes += other.under_bytes;
        self.under_records += other.under_records;
        self.draining_bytes += other.draining_bytes;
    }
}

/// What a repair pass has done so far.
struct Progress {
    /// Copy rate limit, bytes per second (0: none).
    rate: u64,
    started: Instant,
    /// What pacing counts the rate from: the pass's start, moved on so that time spent with
    /// nothing to copy saves up at most [`PACE_BURST`] of copying.
    paced_from: Instant,
    copied: u64,
    /// Why something could not be done, the first time it could not.
    blocked: Option<String>,
    /// Replica edits not yet committed.
    edits: Vec<(Relocation, ReplicaEdit)>,
    /// Keep GC off the zones of the new copies until their edits are committed.
    holds: Vec<ZoneHolds>,
    /// What the entries acted on still lack after their recorded actions.
    left: Tally,
    /// What the edits not yet committed did, counted once they are.
    unrecorded: Unrecorded,
}

/// What repair's edits not yet committed did: counted in the status and the pass's tally once
/// they are recorded; if they are not, their entries count as they were found.
#[derive(Debug, Default)]
struct Unrecorded {
    left: Tally,
    found: Tally,
    made: u64,
    dropped: u64,
    bytes: u64,
}

/// Entries repaired at once: each copy is a read and an append, and one at a time leaves the
/// drives idle between them.
const REPAIRS_IN_FLIGHT: usize = 8;

/// Copies scrub reads at once.
const SCRUB_READS_IN_FLIGHT: usize = 8;

/// What repairing one entry did.
#[derive(Default)]
struct EntryOutcome {
    /// Replica edits to commit.
    edits: Vec<(Relocation, ReplicaEdit)>,
    /// Holds on the zones of the new copies.
    holds: Vec<ZoneHolds>,
    /// Bytes copied.
    copied: u64,
    /// What the entry still lacks, once its edits are recorded.
    left: Tally,
    /// What it lacked as found (what it still lacks if its edits are not recorded).
    found: Tally,
    /// Copies made.
    made: u64,
    /// Copies dropped.
    dropped: u64,
    /// Why an action could not be done.
    blocked: Option<String>,
}

/// An entry with something for repair to do now.
struct Work {
    entry: Located,
    /// What to do for it, as planned when the batch was read.
    actions: Vec<Action>,
    /// The size of one copy.
    bytes: u64,
    /// What the entry adds to the pass's counts as found.
    found: Tally,
}

/// Counts a batch of entries that need nothing now and returns those that do.
fn triage(
    entries: Vec<Located>,
    r: usize,
    views: &[DriveView],
    drives: &super::drives::Drives,
) -> (Vec<Work>, Tally) {
    let mut tally = Tally::default();
    let mut work = Vec::new();
    for entry in entries {
        let bytes = entry.copies.first().map_or(0, |l| drives.bytes_of(l));
        let good = entry.copies.iter().filter(|l| healthy_in(views, l)).count();
        let mut found = Tally::default();
        if good < r {
            found.under_bytes = bytes;
            found.under_records = 1;
        }
        if entry.copies.iter().any(|l| draining_in(views, l)) {
            found.draining_bytes = bytes;
        }
        let actions = plan(&entry, r, views);
        if actions.is_empty() {
            tally.add(&found);
        } else {
            work.push(Work {
                entry,
                actions,
                bytes,
                found,
            });
        }
    }
    (work, tally)
}

/// The state of the drive holding `l` (None: a drive this engine does not know).
fn view_of(views: &[DriveView], l: &Location) -> Option<DriveView> {
    views.get(usize::from(l.drive)).copied()
}

/// Whether `l` is a copy that counts: on a drive that is up, not draining, and not lost (one
/// back from an outage longer than the grace has its copies made again elsewhere: counting
/// them too would let a drain drop a copy for one being replaced).
fn healthy_in(views: &[DriveView], l: &Location) -> bool {
    view_of(views, l).is_some_and(|v| v.up && !v.draining && !v.lost)
}

/// Whether `l` is on a draining drive.
fn draining_in(views: &[DriveView], l: &Location) -> bool {
    view_of(views, l).is_some_and(|v| v.draining)
}

/// What to do for one record, given the drives' states.
fn plan(entry: &Located, r: usize, views: &[DriveView]) -> Vec<Action> {
    let mut actions = Vec::new();
    let good = entry.copies.iter().filter(|l| healthy_in(views, l)).count();
    // Copies on draining drives: move each (or drop it when enough others remain).
    let mut planned_good = good;
    for copy in entry.copies.iter().filter(|l| draining_in(views, l)) {
        if planned_good >= r {
            actions.push(Action::Drop(*copy));
        } else {
            actions.push(Action::Copy {
                replace: Some(*copy),
            });
            planned_good += 1;
        }
    }
    // Missing copies: written short, or on drives unreachable for longer than the grace.
    let lost = entry
        .copies
        .iter()
        .filter(|l| view_of(views, l).is_none_or(|v| v.lost))
        .count();
    let present = entry.copies.len() - lost;
    // Draining copies still there (a lost one is not counted twice).
    let draining = entry
        .copies
        .iter()
        .filter(|l| draining_in(views, l) && view_of(views, l).is_some_and(|v| !v.lost))
        .count();
    let counted = present.saturating_sub(draining) + (planned_good - good);
    // A copy made for one on a lost drive takes its place (and says so in its record): should
    // the drive come back, its copy is garbage there, not one more copy than R holding its
    // zone for good.
    let mut lost_copies = entry
        .copies
        .iter()
        .filter(|l| view_of(views, l).is_none_or(|v| v.lost) && !draining_in(views, l));
    for _ in counted..r {
        actions.push(Action::Copy {
            replace: lost_copies.next().copied(),
        });
    }
    actions
}

/// [`pace`], but none once the engine is shutting down (`closed`), and cut short when `wake` is
/// notified (the shutdown's wake-up; or more work asked for: the next pace makes up for it, the
/// rate being counted from `started`).
async fn pace_until(started: Instant, bytes: u64, rate: u64, wake: &Notify, closed: &AtomicBool) {
    if closed.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = pace(started, bytes, rate) => {}
        _ = wake.notified() => {}
    }
}

/// Copying that time spent with nothing to copy may save up, at most: a pass that scanned for
/// minutes before it found records to copy does not then copy minutes' worth at full speed.
const PACE_BURST: Duration = Duration::from_secs(1);

/// `paced_from`, moved on (at `now`) so that `bytes` copied at `rate` leave at most
/// [`PACE_BURST`] of credit.
fn capped_credit(paced_from: Instant, bytes: u64, rate: u64, now: Instant) -> Instant {
    if rate == 0 {
        return paced_from;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    match now.checked_sub(due + PACE_BURST) {
        Some(earliest) if earliest > paced_from => earliest,
        _ => paced_from,
    }
}

async fn pace(started: Instant, bytes: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time with nothing to copy saves up at most a second's worth of copying.
    #[test]
    fn pacing_saves_up_at_most_a_burst() {
        let start = Instant::now();
        let now = start + Duration::from_secs(300);
        let mib = 1 << 20;
        // Five minutes of scanning, then the first MiB: a second's credit, not five minutes'.
        let from = capped_credit(start, mib, mib, now);
        assert_eq!(now.duration_since(from), Duration::from_secs(2));
        // Behind schedule (copying as fast as the rate allows): nothing moves.
        assert_eq!(capped_credit(start, 400 * mib, mib, now), start);
        assert_eq!(capped_credit(start, mib, 0, now), start, "no limit");
    }

    #[test]
    fn the_scrub_interval_counts_from_the_last_pass_across_restarts() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let from = scrub_counted_from(Some(10_000_000 - 3_600_000), 10_000_000, now);
        assert_eq!(now.duration_since(from), hour, "a pass an hour ago");
        assert_eq!(
            scrub_counted_from(None, 10_000_000, now),
            now,
            "never scrubbed"
        );
        assert_eq!(
            scrub_counted_from(Some(20_000_000), 10_000_000, now),
            now,
            "a clock set back counts from now"
        );
    }

    fn at(drive: DriveId) -> Location {
        Location {
            drive,
            lba: 0,
            blocks: 1,
        }
    }

    fn entry(drives: &[DriveId]) -> Located {
        Located {
            what: Relocation::Upload { upload_id: 1 },
            copies: drives.iter().map(|d| at(*d)).collect(),
        }
    }

    /// Plans for drives 0..views.len() with the given states.
    fn plan_with(views: &[DriveView], drives: &[DriveId], r: usize) -> Vec<String> {
        plan(&entry(drives), r, views)
            .into_iter()
            .map(|a| match a {
                Action::Copy { replace: None } => "copy".to_string(),
                Action::Copy { replace: Some(l) } => format!("move {}", l.drive),
                Action::Drop(l) => format!("drop {}", l.drive),
            })
            .collect()
    }

    const UP: DriveView = DriveView {
        up: true,
        draining: false,
        lost: false,
    };
    const DOWN: DriveView = DriveView {
        up: false,
        draining: false,
        lost: false,
    };
    const LOST: DriveView = DriveView {
        up: false,
        draining: false,
        lost: true,
    };
    const DRAINING: DriveView = DriveView {
        up: true,
        draining: true,
        lost: false,
    };

    fn signature(drives: &[DriveView], short_writes: u64) -> HealthSignature {
        HealthSignature {
            drives: drives.to_vec(),
            short_writes,
        }
    }

    /// A pass that ended `ago` and took `took`.
    fn pass(ago: Duration, took: Duration) -> Option<(Instant, Duration)> {
        Some((Instant::now().checked_sub(ago).expect("uptime"), took))
    }

    #[test]
    fn passes_follow_drive_changes_at_once_and_short_writes_at_a_pace() {
        let second = Duration::from_secs(1);
        let calm = signature(&[UP, UP, UP], 5);
        assert!(pass_due(&calm, None, None, false), "the first pass");
        assert!(!pass_due(&calm, Some(&calm), pass(second, second), false));
        // A drive goes down, comes back or outlives the grace: at once, unless the last pass
        // took longer than it has been since (a flapping drive does not keep the index
        // scanned back to back).
        let down = signature(&[UP, UP, DOWN], 5);
        assert!(pass_due(&down, Some(&calm), pass(second, second), false));
        assert!(!pass_due(
            &down,
            Some(&calm),
            pass(second, 5 * second),
            false
        ));
        let lost = signature(&[UP, UP, LOST], 5);
        assert!(pass_due(&lost, Some(&down), pass(second, second), false));
        assert!(
            pass_due(&lost, Some(&down), pass(second, 5 * second), false),
            "a drive lost past its grace is followed at once"
        );
        // Writes made short while it is down: not before the gap, which grows with the
        // length of the last pass.
        let short = signature(&[UP, UP, DOWN], 9);
        assert!(!pass_due(&short, Some(&down), pass(second, second), false));
        assert!(pass_due(
            &short,
            Some(&down),
            pass(11 * second, second),
            false
        ));
        assert!(!pass_due(
            &short,
            Some(&down),
            pass(11 * second, 5 * second),
            false
        ));
        assert!(pass_due(
            &short,
            Some(&down),
            pass(51 * second, 5 * second),
            false
        ));
        // A pass that could not finish is tried again after the gap; a failed one too.
        assert!(!pass_due(&down, Some(&down), pass(second, second), true));
        assert!(pass_due(
            &down,
            Some(&down),
            pass(11 * second, second),
            true
        ));
        assert!(!pass_due(&down, None, pass(second, second), false));
        assert!(pass_due(&down, None, pass(11 * second, second), false));
        // And now and then regardless.
        assert!(pass_due(
            &calm,
            Some(&calm),
            pass(301 * second, second),
            false
        ));
    }

    #[test]
    fn short_writes_get_their_missing_copies() {
        assert_eq!(plan_with(&[UP, UP, UP], &[0, 1], 3), ["copy"]);
        assert_eq!(plan_with(&[UP, UP, UP], &[0], 3), ["copy", "copy"]);
        assert!(plan_with(&[UP, UP, UP], &[0, 1, 2], 3).is_empty());
    }

    #[test]
    fn a_briefly_down_drive_is_waited_for_and_a_lost_one_replaced() {
        assert!(plan_with(&[UP, UP, DOWN], &[0, 1, 2], 3).is_empty());
        assert_eq!(plan_with(&[UP, UP, LOST, UP], &[0, 1, 2], 3), ["move 2"]);
        // Two lost, one written short: each lost copy is replaced, the missing one added.
        assert_eq!(
            plan_with(&[UP, LOST, LOST, UP, UP, UP], &[0, 1, 2], 4),
            ["move 1", "move 2", "copy"]
        );
    }

    #[test]
    fn draining_moves_or_drops_copies() {
        assert_eq!(
            plan_with(&[UP, UP, DRAINING, UP], &[0, 1, 2], 3),
            ["move 2"]
        );
        assert_eq!(
            plan_with(&[UP, UP, DRAINING, UP], &[0, 1, 2, 3], 3),
            ["drop 2"]
        );
    }

    /// A drive back from an outage past the grace (up, yet lost) has its copies replaced: a
    /// drain does not drop a good copy on the strength of one.
    #[test]
    fn a_copy_on_a_drive_back_from_a_long_outage_does_not_let_a_drain_drop_one() {
        const BACK_BUT_LOST: DriveView = DriveView {
            up: true,
            draining: false,
            lost: true,
        };
        assert_eq!(
            plan_with(&[UP, UP, BACK_BUT_LOST, DRAINING, UP], &[0, 1, 2, 3], 3),
            ["move 3"]
        );
        assert_eq!(
            plan_with(&[UP, UP, BACK_BUT_LOST, UP], &[0, 1, 2], 3),
            ["move 2"]
        );
    }

    #[test]
    fn a_draining_drive_that_is_lost_too_is_counted_once() {
        const DRAINING_LOST: DriveView = DriveView {
            up: false,
            draining: true,
            lost: true,
        };
        // One good copy, one on a draining drive that died: moved, no extra copy.
        assert_eq!(plan_with(&[UP, DRAINING_LOST, UP], &[0, 1], 2), ["move 1"]);
        // Two such copies: both moved, and no arithmetic underflow.
        assert_eq!(
            plan_with(&[UP, DRAINING_LOST, DRAINING_LOST, UP, UP], &[0, 1, 2], 3),
            ["move 1", "move 2"]
        );
    }
}
