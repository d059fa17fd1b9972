//! The drives the engine writes to, local or remote, each a [`ZonedDevice`] with a stable id,
//! and what the engine knows of their health and load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use zns::{
    Geometry, ReportFilter, ZoneDescriptor, ZoneError, ZoneErrorKind, ZoneReport, ZoneState,
    ZonedDevice,
};

use super::error::EngineError;
use super::model::{DriveId, Location, ZoneId};

/// One drive.
pub struct Drive {
    /// Stable id (index in the drive registry).
    pub id: DriveId,
    /// Identity: `nvme-tcp://addr/nqn` or `zns-file://path`.
    pub name: String,
    /// The device.
    pub device: Arc<dyn ZonedDevice>,
    /// Its geometry.
    pub geometry: Geometry,
    /// Commands in flight from this engine (for least-loaded reads).
    pub in_flight: AtomicI64,
    /// Until when (ms since the epoch) the drive is considered down after a transport failure.
    pub down_until: AtomicU64,
    /// Until when (ms since the epoch) new writes skip the drive after one it could not make
    /// (reads still go to it).
    pub writes_paused_until: AtomicU64,
    /// Writes running that the drive could not make (see [`Drive::note_write`]).
    pub write_faults: AtomicU32,
    /// Until when (ms since the epoch) reads pass the drive over for its other copies, after
    /// another copy answered a read sooner (see [`Drive::note_slow_read`]).
    pub reads_slow_until: AtomicU64,
    /// Pauses running for writes (appends, flushes) that were not waited for (see
    /// [`Drive::note_too_slow`]): each one doubles how long new writes skip the drive.
    pub slow_pauses: AtomicU32,
    /// Writes (appends, flushes) not waited for since the engine started (see
    /// [`Drive::note_too_slow`]).
    pub slow_writes_total: AtomicU64,
    /// Since when (ms since the epoch) the drive has been unusable (unreachable or not
    /// attached); 0 while it is usable.
    pub unreachable_since: AtomicU64,
    /// Since when (ms since the epoch) a drive that was unusable has been usable again; 0 while
    /// it is unusable, or once its outage counts as over (see [`STAYS_UP`]).
    pub usable_since: AtomicU64,
    /// Whether its data is being moved off (no new writes go to it).
    pub draining: AtomicBool,
    /// How many repair passes had begun when the drive last began draining: one begun after
    /// that has met every record the drive held or was about to take.
    pub drain_began_after_pass: AtomicU64,
    /// I/O errors seen.
    pub errors: AtomicU64,
    /// Whether the engine knows the drive's zones: false for a drive that could not be reached
    /// when the engine opened, until it answers and has been surveyed.
    pub attached: AtomicBool,
    /// Whether the drive was removed from the configuration (it held nothing): it keeps its id
    /// and is never used again.
    pub removed: bool,
    /// Whether a different drive answers under this one's name (see
    /// [`EngineError::WrongDrive`]): it stays unattached while it does.
    pub foreign: AtomicBool,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Drive {
    /// A drive.
    pub fn new(id: DriveId, name: String, device: Arc<dyn ZonedDevice>) -> Self {
        let geometry = device.geometry();
        Drive {
            id,
            name,
            device,
            geometry,
            in_flight: AtomicI64::new(0),
            down_until: AtomicU64::new(0),
            writes_paused_until: AtomicU64::new(0),
            write_faults: AtomicU32::new(0),
            reads_slow_until: AtomicU64::new(0),
            slow_pauses: AtomicU32::new(0),
            slow_writes_total: AtomicU64::new(0),
            unreachable_since: AtomicU64::new(0),
            usable_since: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drain_began_after_pass: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            attached: AtomicBool::new(true),
            removed: false,
            foreign: AtomicBool::new(false),
        }
    }

    /// The engine's error for a command this drive failed.
    pub fn error(&self, source: ZoneError) -> EngineError {
        EngineError::Drive {
            drive: self.name.clone(),
            source,
        }
    }

    /// The drive's report of all its zones: one descriptor per zone of its geometry, in order
    /// (the report is input, a remote drive's: any other count is refused, never indexed by).
    pub async fn report_all_zones(&self) -> Result<ZoneReport, EngineError> {
        let report = self
            .device
            .report_zones(0, ReportFilter::All, self.geometry.zone_count as usize)
            .await
            .map_err(|e| self.error(e))?;
        if report.zones.len() != self.geometry.zone_count as usize {
            return Err(EngineError::Corrupt(format!(
                "drive {} reported {} zones of the {} it has",
                self.name,
                report.zones.len(),
                self.geometry.zone_count
            )));
        }
        Ok(report)
    }

    /// Blocks written in zone `index`, as its report `z` says (the whole capacity once it is
    /// full, read-only or offline). The report is input (a remote drive's): a write pointer
    /// outside the zone is refused, never turned into a huge or negative amount.
    pub fn written_blocks(&self, index: u32, z: &ZoneDescriptor) -> Result<u64, EngineError> {
        match z.state {
            // A read-only or offline zone's write pointer is not valid.
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => {
                return Ok(self.geometry.zone_capacity);
            }
            ZoneState::Empty => return Ok(0),
            _ if z.wp == u64::MAX => return Ok(self.geometry.zone_capacity),
            _ => {}
        }
        z.wp.checked_sub(z.zslba)
            .filter(|&w| z.zslba == self.geometry.zone_start(index) && w <= self.geometry.zone_capacity)
            .ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "drive {} reports zone {index} starting at LBA {} with its write pointer at {}, outside the zone",
                    self.name, z.zslba, z.wp
                ))
            })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        u64::from(self.geometry.block_size)
    }

    /// The zone a location lies in.
    pub fn zone_of(&self, lba: u64) -> ZoneId {
        ZoneId {
            drive: self.id,
            zone: (lba / self.geometry.zone_size) as u32,
        }
    }

    /// Bytes a location occupies.
    pub fn bytes_of(&self, location: &Location) -> u64 {
        u64::from(location.blocks) * self.block_size()
    }

    /// Notes the outcome of an I/O: a transport failure marks the drive down for a moment
    /// (new writes skip it; it is tried again after [`RETRY_AFTER`]).
    pub fn note<T>(&self, result: &Result<T, ZoneError>) {
        if let Err(e) = result {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if e.kind() == ZoneErrorKind::Unavailable {
                self.down_until
                    .store(now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Notes the outcome of a write (an append, a Finish): as [`Drive::note`], and
    /// [`WRITE_FAULTS_TO_PAUSE`] writes running that the drive could not make (write faults:
    /// its media, or the file behind an emulated drive, failing) have new writes skip the drive
    /// for a moment, rather than try it (and wait for its zones) for every record. Its copies
    /// are still read.
    pub fn note_write<T>(&self, result: &Result<T, ZoneError>) {
        self.note(result);
        if result.is_ok() {
            self.write_faults.store(0, Ordering::Relaxed);
        }
        self.count_write_fault(result);
    }

    /// Counts a Finish the drive could not make as a write fault (see [`Drive::note_write`]);
    /// one that it made says nothing of its writes, nor does a transport failure (the host's
    /// outcome, not the drive's).
    pub fn count_write_fault(&self, result: &Result<impl Sized, ZoneError>) {
        if let Err(e) = result
            && e.kind() == ZoneErrorKind::MediaError
        {
            let running = self.write_faults.fetch_add(1, Ordering::Relaxed) + 1;
            if running >= WRITE_FAULTS_TO_PAUSE {
                // (Not shortening a longer pause a slow drive is in.)
                self.writes_paused_until
                    .fetch_max(now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Notes the outcome of a flush: any failure marks the drive down for a moment, as a
    /// transport failure does (writes it cannot make durable go to other drives meanwhile).
    pub fn note_flush(&self, result: &Result<(), ZoneError>) {
        self.note(result);
        if result.is_err() {
            self.down_until
                .store(now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Notes that `what` (an append, a flush) of the drive was not waited for past `waited`: the
    /// drive answers, but too slowly (a disk failing slow behind a live target). New writes
    /// skip it for [`RETRY_AFTER`], doubled each time it is slow again after a pause, up to
    /// [`SLOW_PAUSE_LONGEST`], rather than have each write wait for it before going on without
    /// it; a flush it makes in good time ends that (see [`Drive::note_timely_flush`]).
    pub fn note_too_slow(&self, what: &str, waited: Duration) {
        tracing::warn!(
            drive = %self.name,
            "{what} not answered in {} ms while the copies the write needs were made: the drive is slow; its copy is left out (made on another drive, or later by repair) and new writes skip the drive for a while",
            waited.as_millis()
        );
        self.slow_writes_total.fetch_add(1, Ordering::Relaxed);
        // Writes given up on together (a write's extents, a group's flush) are one pause.
        if now_ms() < self.writes_paused_until.load(Ordering::Relaxed) {
            return;
        }
        let running = self.slow_pauses.fetch_add(1, Ordering::Relaxed).min(8);
        let pause = RETRY_AFTER
            .saturating_mul(1 << running)
            .min(SLOW_PAUSE_LONGEST);
        self.writes_paused_until
            .fetch_max(now_ms() + pause.as_millis() as u64, Ordering::Relaxed);
    }

    /// Notes that a flush of the drive was made in good time (see [`Drive::note_too_slow`]).
    pub fn note_timely_flush(&self) {
        self.slow_pauses.store(0, Ordering::Relaxed);
    }

    /// Notes that another copy answered a read this drive was slow to answer (a hedge won):
    /// reads go to other copies first for a moment ([`RETRY_AFTER`]), rather than each wait
    /// for this drive before they hedge. Writes still go to it (a drive that hangs is told
    /// from a slow one by its host, or by the command timeout).
    pub fn note_slow_read(&self) {
        self.reads_slow_until
            .store(now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether reads pass the drive over for now (see [`Drive::note_slow_read`]).
    pub fn is_slow_for_reads(&self) -> bool {
        now_ms() < self.reads_slow_until.load(Ordering::Relaxed)
    }

    /// Whether the drive can take I/O now: reachable, attached, and no transport failure just
    /// now.
    pub fn is_up(&self) -> bool {
        // Unusable: unreachable, or reachable but not attached (a foreign drive answering in
        // its place, or one whose attaching failed): its copies are as far out of reach.
        let usable = self.usable();
        let now = now_ms();
        self.observe(usable, now);
        usable && now >= self.down_until.load(Ordering::Relaxed)
    }

    /// Whether the drive is reachable and attached.
    fn usable(&self) -> bool {
        self.device.is_available() && self.attached.load(Ordering::Relaxed)
    }

    /// Notes whether the drive is usable at `now`: an outage begins when it is not, and ends
    /// once it has been usable for [`STAYS_UP`] (a moment back now and then does not end it).
    fn observe(&self, usable: bool, now: u64) {
        let since = self.unreachable_since.load(Ordering::Relaxed);
        if !usable {
            self.usable_since.store(0, Ordering::Relaxed);
            if since == 0 {
                self.unreachable_since.store(now, Ordering::Relaxed);
            }
            return;
        }
        if since == 0 {
            return;
        }
        match self.usable_since.load(Ordering::Relaxed) {
            0 => self.usable_since.store(now, Ordering::Relaxed),
            back if now.saturating_sub(back) >= STAYS_UP.as_millis() as u64 => {
                self.unreachable_since.store(0, Ordering::Relaxed);
                self.usable_since.store(0, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Whether new writes may go to the drive: up, not being drained, and not paused after
    /// write faults (see [`Drive::note_write`]).
    pub fn is_writable(&self) -> bool {
        self.is_up()
            && !self.draining.load(Ordering::Relaxed)
            && now_ms() >= self.writes_paused_until.load(Ordering::Relaxed)
    }

    /// How long the drive has been unusable, unreachable or not attached (zero once it has
    /// been usable for [`STAYS_UP`]): past the repair grace, its copies count as lost and are
    /// made again elsewhere. An outage counts from its beginning through moments back that did
    /// not last: a drive that flaps is as lost as one that stays away, also in the moments it
    /// is back (while back, the outage is as long as it was when the drive came back: it does
    /// not grow, nor drop to nothing).
    pub fn down_for(&self) -> Duration {
        let usable = self.usable();
        let now = now_ms();
        self.observe(usable, now);
        self.outage_at(usable, now)
    }

    /// The outage [`Drive::down_for`] gives at `now`, the drive usable then or not.
    fn outage_at(&self, usable: bool, now: u64) -> Duration {
        let ended = if usable {
            self.usable_since.load(Ordering::Relaxed)
        } else {
            now
        };
        match self.unreachable_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(ended.saturating_sub(since)),
        }
    }
}

/// How long a drive that was unusable must stay usable before its outage counts as over.
pub const STAYS_UP: Duration = Duration::from_secs(60);

/// Write faults running after which new writes skip a drive for [`RETRY_AFTER`] (one alone,
/// say a completion lost on the way, does not).
pub const WRITE_FAULTS_TO_PAUSE: u32 = 3;

/// How long a drive that failed with a transport error is skipped before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The longest new writes skip a drive whose writes are too slow to wait for (see
/// [`Drive::note_too_slow`]).
pub const SLOW_PAUSE_LONGEST: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The set of drives, by id.
#[derive(Debug, Clone)]
pub struct Drives {
    list: Vec<Arc<Drive>>,
}

impl Drives {
    /// Drives whose ids are their positions in `list`.
    pub fn new(list: Vec<Arc<Drive>>) -> Self {
        debug_assert!(list.iter().enumerate().all(|(i, d)| usize::from(d.id) == i));
        Drives { list }
    }

    /// A drive by id.
    pub fn get(&self, id: DriveId) -> Option<&Arc<Drive>> {
        self.list.get(usize::from(id))
    }

    /// The drive holding a location (locations come from the index, which only names known
    /// drives; an unknown id is reported as unavailable by callers).
    pub fn of(&self, location: &Location) -> Option<&Arc<Drive>> {
        self.get(location.drive)
    }

    /// All drives.
    pub fn all(&self) -> &[Arc<Drive>] {
        &self.list
    }

    /// Number of drives.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no drives.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Bytes a location occupies (0 for an unknown drive).
    pub fn bytes_of(&self, location: &Location) -> u64 {
        self.of(location).map_or(0, |d| d.bytes_of(location))
    }

    /// The zone of a location.
    pub fn zone_of(&self, location: &Location) -> Option<ZoneId> {
        self.of(location).map(|d| d.zone_of(location.lba))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outage runs from the first moment the drive was unusable through moments back that
    /// did not last, and ends once it has stayed usable for `STAYS_UP`.
    #[test]
    fn a_drive_that_flaps_stays_down_until_it_stays_up() {
        let dir = tempfile::tempdir().unwrap();
        let device = zns::EmulatedZns::create(dir.path(), Geometry::new(4, 1 << 20)).unwrap();
        let drive = Drive::new(0, "d".into(), Arc::new(device));
        let s = 1000;
        let stays = STAYS_UP.as_millis() as u64;
        drive.observe(false, 10 * s);
        // Back every minute for a moment, away again: the outage goes on, and counts while the
        // drive is back too (as long as it was then).
        for minute in 1..5u64 {
            let at = 10 * s + minute * 60 * s;
            drive.observe(true, at);
            drive.observe(true, at + s / 2);
            assert_eq!(
                drive.outage_at(true, at + s / 2),
                Duration::from_millis(minute * 60 * s),
                "back for a moment at minute {minute}"
            );
            drive.observe(false, at + s);
            assert_eq!(
                drive.outage_at(false, at + s),
                Duration::from_millis(minute * 60 * s + s),
                "minute {minute}"
            );
        }
        // Back for good: after STAYS_UP the outage is over, and a new one counts from its own
        // beginning.
        let back = 400 * s;
        drive.observe(true, back);
        drive.observe(true, back + stays);
        assert_eq!(drive.outage_at(true, back + stays), Duration::ZERO);
        drive.observe(false, back + stays + s);
        assert_eq!(
            drive.outage_at(false, back + stays + 2 * s),
            Duration::from_millis(s)
        );
    }

    /// A zone report is input: a write pointer outside its zone is an error, not a huge or
    /// negative amount written.
    #[test]
    fn a_write_pointer_outside_its_zone_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let device = zns::EmulatedZns::create(dir.path(), g).unwrap();
        let drive = Drive::new(0, "d".into(), Arc::new(device));
        let zone = |state, zslba, wp| ZoneDescriptor {
            state,
            zslba,
            zcap: g.zone_capacity,
            wp,
        };
        let start = g.zone_start(1);
        let open = ZoneState::ImplicitlyOpened;
        assert_eq!(
            drive
                .written_blocks(1, &zone(open, start, start + 3))
                .unwrap(),
            3
        );
        assert_eq!(
            drive
                .written_blocks(1, &zone(ZoneState::Full, start, 0))
                .unwrap(),
            g.zone_capacity
        );
        for (zslba, wp) in [
            (start, start - 1),
            (start, start + g.zone_capacity + 1),
            (g.zone_start(2), g.zone_start(2)),
        ] {
            assert!(drive.written_blocks(1, &zone(open, zslba, wp)).is_err());
        }
    }

    /// A report of more or fewer zones than the drive has is refused: the engine indexes its
    /// zones by their place in the report.
    #[tokio::test]
    async fn a_report_of_another_count_of_zones_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let inner = Arc::new(zns::EmulatedZns::create(dir.path(), g).unwrap());
        for extra in [false, true] {
            let mut device = zns::testing::Intercepted::new(inner.clone());
            device.after_report = Box::new(move |report| {
                let mut report = report?;
                if extra {
                    let last = report.zones[report.zones.len() - 1];
                    report.zones.push(last);
                } else {
                    report.zones.pop();
                }
                Ok(report)
            });
            let drive = Drive::new(0, "d".into(), Arc::new(device));
            let e = drive.report_all_zones().await.unwrap_err().to_string();
            assert!(e.contains("zones of the 4"), "{e}");
        }
        let drive = Drive::new(0, "d".into(), inner);
        assert_eq!(drive.report_all_zones().await.unwrap().zones.len(), 4);
    }
}
