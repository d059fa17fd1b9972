//! The emulated ZNS drive: a sparse data file holding every zone's blocks back to back, and a
//! metadata file holding each zone's durable state (see [`meta`]). The zone state machine
//! ([`crate::machine`]) decides; this module stores.
//!
//! Durability follows a drive with a volatile write cache. Completed writes live in the page
//! cache; `flush` makes them durable by syncing the data file and only then recording the new
//! write pointers in the metadata file, so that after a crash no write pointer covers data that
//! was not made durable. Zone management actions are recorded before they complete. Blocks
//! beyond a zone's recorded write pointer always read as zeros, so data written but never
//! flushed simply disappears after a crash, as it would on a drive that lost power.

pub mod faults;
mod fill;
pub mod meta;
mod writer;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::device::{WriteHint, ZonedDevice};
use crate::error::{ZoneError, ZoneResult};
use crate::geometry::Geometry;
use crate::machine::{ZoneStatus, ZoneTable};
use crate::zone::{ReportFilter, ZoneAction, ZoneReport, ZoneSelect, ZoneState};
use faults::FaultPlan;
use fill::{Segment, Wait, fill};
use meta::ZoneEntry;
use writer::Writers;

const DATA_FILE: &str = "zns.data";
const META_FILE: &str = "zns.meta";

/// The smallest write a rarely-read hint sends around the page cache. A smaller one would cost
/// the writer thread a disk round trip of its own (with R copies of 4 KiB objects, R - 1 of
/// every object's appends did), where in the cache it costs a page until the next flush writes
/// it with the others.
const HINTED_DIRECT_MIN: usize = 64 << 10;

/// A file-backed ZNS drive with the full zone state machine, durable zone metadata and fault
/// injection. Cheap to clone; clones share the drive.
#[derive(Clone, Debug)]
pub struct EmulatedZns {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    geometry: Geometry,
    /// Set when the drive was created (see [`meta::new_identity`]).
    identity: [u8; 16],
    dir: PathBuf,
    data: Arc<File>,
    meta: Arc<File>,
    writers: Writers,
    /// Whether aligned writes bypass the page cache.
    direct_writes: AtomicBool,
    state: Mutex<DriveState>,
    /// Serialises flushes and zone management so metadata records are written in order.
    persist: tokio::sync::Mutex<()>,
    /// Signalled whenever a write ends or a zone reset completes (see [`DriveState::next_write`]
    /// and [`ZoneBook::resetting`]).
    changed: tokio::sync::Notify,
    /// Tasks waiting on `changed` (a write that ends wakes nobody when there are none).
    waiters: std::sync::atomic::AtomicUsize,
    /// Whether `failed` holds a reason (read on every I/O without the lock).
    has_failed: AtomicBool,
    /// Set when writing or syncing failed: what is durable can no longer be told apart from
    /// what was lost (a failed `fsync` marks the lost pages clean, so a later one succeeds), so
    /// the drive refuses all I/O until it is opened again from its durable state.
    failed: Mutex<Option<String>>,
    /// Every write numbered below this is durable (a flush that arrives after the writes it
    /// must cover, numbered below its arrival, were made durable by an earlier one returns at
    /// once: group commit).
    durable_writes: AtomicU64,
    faults: FaultPlan,
}

#[derive(Debug)]
struct DriveState {
    table: ZoneTable,
    zones: Vec<ZoneBook>,
    /// Whether any zone changed since the last flush snapshot.
    dirty: bool,
    /// Number of the next write granted; writes in flight keep theirs (see [`ZoneBook`]).
    next_write: u64,
    /// Writes may not be granted anywhere: a reset of all zones is in progress.
    resetting_all: bool,
}

/// Per-zone bookkeeping beside the state machine: writes still in flight and what is durable.
#[derive(Debug, Clone)]
struct ZoneBook {
    /// Writes whose data is still being written: their first block relative to the zone start,
    /// and their number.
    in_flight: Vec<(u64, u64)>,
    /// A reset of the zone is in progress: no write is granted in it until the reset is
    /// durable and its old data gone.
    resetting: bool,
    /// The first block (relative to the zone start) of a write that failed: no durable write
    /// pointer may ever cover it (the drive has failed, but a flush or zone action already
    /// past its health check may still record entries).
    poisoned: Option<u64>,
    /// What the metadata file says about this zone.
    durable: ZoneEntry,
}

impl DriveState {
    /// Blocks of the zone whose data is completely written (the write pointer, less writes still
    /// in flight).
    fn settled(&self, index: u32) -> u64 {
        let written = self.table.zone(index).written;
        let book = &self.zones[index as usize];
        book.in_flight
            .iter()
            .map(|&(start, _)| start)
            .chain(book.poisoned)
            .min()
            .unwrap_or(written)
            .min(written)
    }

    /// Whether any write numbered below `horizon` is still in flight (in zone `only`, if given).
    fn writes_before(&self, horizon: u64, only: Option<u32>) -> bool {
        self.zones
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|z| *i == z as usize))
            .any(|(_, z)| z.in_flight.iter().any(|&(_, id)| id < horizon))
    }

    /// The entries of the zones whose state or settled write pointer is not what the metadata
    /// file says (none while nothing changed since the last flush).
    fn unrecorded(&self) -> Vec<(u32, ZoneEntry)> {
        if !self.dirty {
            return Vec::new();
        }
        (0..self.zones.len() as u32)
            .filter_map(|i| {
                let entry = self.entry(i);
                (entry != self.zones[i as usize].durable).then_some((i, entry))
            })
            .collect()
    }

    /// The metadata entry describing zone `index` now, counting only settled data. A zone the
    /// write that filled it made Full is recorded Full only once that write has landed: before,
    /// it is Closed at what has (as a drive that lost power then comes back), not Full over
    /// blocks that would read as zeros and take no more writes.
    fn entry(&self, index: u32) -> ZoneEntry {
        let zone = self.table.zone(index);
        let written = self.settled(index);
        let filling = zone.state == ZoneState::Full
            && written < zone.written
            && zone.written == self.table.geometry().zone_capacity;
        ZoneEntry {
            state: if filling {
                ZoneState::Closed
            } else {
                zone.state
            },
            written,
            resets: self.zones[index as usize].durable.resets,
        }
    }
}

/// Runs `work` to its end on a task of its own, whether or not its caller keeps waiting. A
/// flush or zone action whose caller stops waiting (the NVMe/TCP target drops the commands of a
/// connection that broke, and the host sends them again) must not stop half done: its table
/// change made but never recorded (a Reset that undoes itself at the next start), the drive
/// marked clean with nothing synced (a later flush that acknowledges nothing durable), its
/// metadata written after a later flush's (a write pointer going back), or a reset zone's
/// blocks deallocated after writes were let into it again.
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = ZoneResult<T>> + Send + 'static,
) -> ZoneResult<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| ZoneError::MediaError(format!("drive task failed: {e}")))?
}

/// Runs file I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ZoneResult<T> + Send + 'static,
) -> ZoneResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ZoneError::MediaError(format!("I/O task failed: {e}")))?
}

impl EmulatedZns {
    /// Creates a new drive in `dir` (created if missing). Fails if a drive already exists there.
    /// The metadata file appears whole or not at all (written aside, synced, then renamed), so a
    /// crash while creating leaves no drive that cannot be opened.
    pub fn create(dir: &Path, geometry: Geometry) -> ZoneResult<Self> {
        geometry
            .validate()
            .map_err(|e| ZoneError::InvalidField(e.to_string()))?;
        // The drive holds users' data: its directory and files are its owner's only.
        let made: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ZoneError::io(format!("creating {}", dir.display()), e))?;
        // Each directory made is durable in its parent, so the drive outlives a power loss.
        for made in made {
            if let Some(parent) = made.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                sync_dir(parent)?;
            }
        }
        let meta_path = dir.join(META_FILE);
        let building = dir.join(format!("{META_FILE}.new"));
        let meta = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&building)
            .map_err(|e| ZoneError::io(format!("creating {}", building.display()), e))?;
        // Locked before anything is changed: another process creating here holds it.
        lock_exclusive(&meta, &building)?;
        meta.set_len(0)
            .map_err(|e| ZoneError::io(format!("truncating {}", building.display()), e))?;
        if meta_path.exists() {
            return Err(ZoneError::InvalidField(format!(
                "a drive already exists in {}",
                dir.display()
            )));
        }
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&data_path)
            .map_err(|e| ZoneError::io(format!("creating {}", data_path.display()), e))?;
        let bytes = geometry.total_blocks() * u64::from(geometry.block_size);
        data.set_len(bytes)
            .map_err(|e| ZoneError::io(format!("sizing {}", data_path.display()), e))?;
        let mut image = vec![0u8; meta::file_len(geometry.zone_count) as usize];
        image[..meta::HEADER_LEN].copy_from_slice(&meta::encode_header(&geometry));
        let identity = meta::new_identity(dir);
        image[meta::IDENTITY_AT..meta::IDENTITY_AT + 20]
            .copy_from_slice(&meta::encode_identity(&identity));
        for index in 0..geometry.zone_count {
            let at = meta::entry_offset(index) as usize;
            image[at..at + meta::ENTRY_LEN].copy_from_slice(&meta::encode_entry(&ZoneEntry::EMPTY));
        }
        meta.write_all_at(&image, 0)
            .and_then(|_| meta.sync_all())
            .and_then(|_| data.sync_all())
            .map_err(|e| ZoneError::io(format!("initialising {}", building.display()), e))?;
        sync_dir(dir)?;
        std::fs::rename(&building, &meta_path)
            .map_err(|e| ZoneError::io(format!("renaming {} into place", building.display()), e))?;
        sync_dir(dir)?;
        let entries = vec![ZoneEntry::EMPTY; geometry.zone_count as usize];
        Self::assemble(geometry, identity, dir, data, meta, entries)
    }

    /// Opens the drive in `dir`, recovering zone states as after a power loss: opened zones come
    /// back Closed (or Empty if they hold nothing) with their durable write pointers.
    pub fn open(dir: &Path) -> ZoneResult<Self> {
        let meta_path = dir.join(META_FILE);
        let meta = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&meta_path)
            .map_err(|e| ZoneError::io(format!("opening {}", meta_path.display()), e))?;
        lock_exclusive(&meta, &meta_path)?;
        let mut header = vec![0u8; meta::HEADER_LEN];
        meta.read_exact_at(&mut header, 0)
            .map_err(|e| ZoneError::io(format!("reading {}", meta_path.display()), e))?;
        let geometry = meta::decode_header(&header)
            .map_err(|e| ZoneError::MediaError(format!("{}: {e}", meta_path.display())))?;
        let identity = match meta::decode_identity(&header)
            .map_err(|e| ZoneError::MediaError(format!("{}: {e}", meta_path.display())))?
        {
            Some(identity) => identity,
            None => {
                // Made before drives had an identity: it gets one now, for good.
                let identity = meta::new_identity(dir);
                meta.write_all_at(&meta::encode_identity(&identity), meta::IDENTITY_AT as u64)
                    .and_then(|_| meta.sync_data())
                    .map_err(|e| ZoneError::io(format!("writing {}", meta_path.display()), e))?;
                identity
            }
        };
        let mut image = vec![0u8; meta::ENTRY_LEN * geometry.zone_count as usize];
        meta.read_exact_at(&mut image, meta::HEADER_LEN as u64)
            .map_err(|e| ZoneError::io(format!("reading {}", meta_path.display()), e))?;
        let mut entries = Vec::with_capacity(geometry.zone_count as usize);
        for (index, raw) in image.chunks_exact(meta::ENTRY_LEN).enumerate() {
            let entry = match meta::decode_entry(raw) {
                Ok(entry) if entry.written <= geometry.zone_capacity => entry,
                Ok(entry) => {
                    tracing::error!(
                        zone = index,
                        written = entry.written,
                        "zone entry claims more data than the zone holds; taking the zone offline"
                    );
                    ZoneEntry {
                        state: ZoneState::Offline,
                        ..entry
                    }
                }
                Err(e) => {
                    tracing::error!(
                        zone = index,
                        "damaged zone entry ({e}); taking the zone offline"
                    );
                    ZoneEntry {
                        state: ZoneState::Offline,
                        ..ZoneEntry::EMPTY
                    }
                }
            };
            entries.push(entry);
        }
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(|e| ZoneError::io(format!("opening {}", data_path.display()), e))?;
        deallocate_past_write_pointers(&data, geometry, &entries);
        Self::assemble(geometry, identity, dir, data, meta, entries)
    }

    /// Opens the drive in `dir` if there is one (its geometry must equal `geometry`), or creates
    /// it.
    pub fn open_or_create(dir: &Path, geometry: Geometry) -> ZoneResult<Self> {
        if !dir.join(META_FILE).exists() {
            return Self::create(dir, geometry);
        }
        let drive = Self::open(dir)?;
        if drive.geometry() != geometry {
            return Err(ZoneError::InvalidField(format!(
                "the drive in {} has geometry [{}], not the requested [{}]",
                dir.display(),
                drive.geometry(),
                geometry
            )));
        }
        Ok(drive)
    }

    fn assemble(
        geometry: Geometry,
        identity: [u8; 16],
        dir: &Path,
        data: File,
        meta: File,
        entries: Vec<ZoneEntry>,
    ) -> ZoneResult<Self> {
        let state = recovered_state(geometry, &entries);
        let data = Arc::new(data);
        let direct = open_direct(&dir.join(DATA_FILE));
        let writers = Writers::start(data.clone(), direct, 1, "zns")
            .map_err(|e| ZoneError::io("starting writer threads", e))?;
        Ok(EmulatedZns {
            inner: Arc::new(Inner {
                geometry,
                identity,
                dir: dir.to_path_buf(),
                data,
                meta: Arc::new(meta),
                writers,
                direct_writes: AtomicBool::new(false),
                state: Mutex::new(state),
                persist: tokio::sync::Mutex::new(()),
                changed: tokio::sync::Notify::new(),
                waiters: std::sync::atomic::AtomicUsize::new(0),
                has_failed: AtomicBool::new(false),
                failed: Mutex::new(None),
                durable_writes: AtomicU64::new(0),
                faults: FaultPlan::default(),
            }),
        })
    }

    /// Whether every write bypasses the page cache (`O_DIRECT`), as a real drive's do; off by
    /// default, when only appends hinted [`WriteHint::InfrequentReads`] do. Bypassing, written
    /// data takes no page-cache memory and costs one copy into a reused buffer instead of page
    /// allocation, at the price of reading it from the disk the first time. Where the file
    /// system refuses `O_DIRECT`, writes stay buffered.
    pub fn set_direct_writes(&self, on: bool) {
        self.inner.direct_writes.store(on, Ordering::Relaxed);
    }

    /// The directory holding the drive's files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Path of the data file (tests corrupt it on purpose).
    pub fn data_path(&self) -> PathBuf {
        self.inner.dir.join(DATA_FILE)
    }

    /// Fault injection: the next `n` reads, writes, appends and flushes fail with a media error.
    pub fn fail_next_ios(&self, n: u32) {
        self.inner.faults.fail_next_ios(n);
    }

    /// Fault injection: the zone starting at `zslba` becomes Read Only (durably).
    pub async fn make_zone_read_only(&self, zslba: u64) -> ZoneResult<()> {
        self.degrade(zslba, ZoneState::ReadOnly).await
    }

    /// Fault injection: the zone starting at `zslba` goes Offline (durably).
    pub async fn make_zone_offline(&self, zslba: u64) -> ZoneResult<()> {
        self.degrade(zslba, ZoneState::Offline).await
    }

    async fn degrade(&self, zslba: u64, state: ZoneState) -> ZoneResult<()> {
        let geometry = self.inner.geometry;
        let index = geometry
            .zone_index(zslba)
            .filter(|&i| geometry.zone_start(i) == zslba)
            .ok_or_else(|| ZoneError::InvalidField(format!("{zslba} is not a zone start")))?;
        let _order = self.inner.persist.lock().await;
        let entries = {
            let mut st = self.inner.state.lock();
            st.table.degrade(index, state);
            vec![(index, st.entry(index))]
        };
        self.sync_data().await?;
        self.persist_entries(entries).await
    }

    /// Fault injection: simulates a power loss. Everything not flushed is dropped and zones
    /// return to their durable states, as when the drive is opened again. The caller must have
    /// no operations in flight.
    pub async fn simulate_power_loss(&self) {
        let _order = self.inner.persist.lock().await;
        let entries: Vec<ZoneEntry> = {
            let st = self.inner.state.lock();
            st.zones.iter().map(|z| z.durable).collect()
        };
        // What was never flushed is gone, as at a real reopen (see `open`).
        let (data, geometry) = (self.inner.data.clone(), self.inner.geometry);
        let durable = entries.clone();
        let _ = tokio::task::spawn_blocking(move || {
            deallocate_past_write_pointers(&data, geometry, &durable)
        })
        .await;
        let mut st = self.inner.state.lock();
        *st = recovered_state(self.inner.geometry, &entries);
        *self.inner.failed.lock() = None;
        self.inner.has_failed.store(false, Ordering::SeqCst);
        self.inner.durable_writes.store(0, Ordering::SeqCst);
    }

    /// Refuses I/O once writing or syncing failed (see [`Inner::failed`]).
    fn healthy(&self) -> ZoneResult<()> {
        if !self.inner.has_failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match &*self.inner.failed.lock() {
            None => Ok(()),
            Some(reason) => Err(ZoneError::MediaError(format!(
                "the drive failed earlier ({reason}) and takes no I/O until it is opened again"
            ))),
        }
    }

    /// Marks the drive failed (see [`Inner::failed`]).
    fn fail(&self, reason: String) {
        let mut failed = self.inner.failed.lock();
        if failed.is_none() {
            tracing::error!(
                "emulated drive in {} failed: {reason}",
                self.inner.dir.display()
            );
            *failed = Some(reason);
            self.inner.has_failed.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until no write numbered below `horizon` is in flight (in zone `only`, if given).
    async fn wait_for_writes(&self, horizon: u64, only: Option<u32>) {
        while self.inner.state.lock().writes_before(horizon, only) {
            self.wait_for_change(|st| st.writes_before(horizon, only))
                .await;
        }
    }

    /// Waits for a write to end or a reset to complete, unless `still` (checked once the
    /// wake-up is registered) says there is nothing to wait for any more.
    async fn wait_for_change(&self, still: impl Fn(&DriveState) -> bool) {
        /// Counts a waiter for as long as it waits (also if its future is dropped).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.inner.waiters);
        let notified = self.inner.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if still(&self.inner.state.lock()) {
            notified.await;
        }
    }

    /// Wakes the tasks waiting for a write to end or a reset to complete, if any.
    fn wake_waiters(&self) {
        if self.inner.waiters.load(Ordering::SeqCst) > 0 {
            self.inner.changed.notify_waiters();
        }
    }

    /// Writes metadata entries and syncs them. Callers hold `persist`.
    async fn persist_entries(&self, entries: Vec<(u32, ZoneEntry)>) -> ZoneResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let meta = self.inner.meta.clone();
        // Entries that give up open or active resources are made durable first: a crash, or a
        // power loss (dirty pages reach the disk in any order), between the two then leaves a
        // drive holding fewer of them than it has, never more.
        let (freeing, taking): (Vec<_>, Vec<_>) =
            entries.iter().cloned().partition(|(_, entry)| {
                matches!(
                    entry.state,
                    ZoneState::Empty | ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline
                )
            });
        let drive = self.clone();
        blocking(move || {
            let write_and_sync = |batch: &[(u32, ZoneEntry)]| -> ZoneResult<()> {
                if batch.is_empty() {
                    return Ok(());
                }
                for (index, entry) in batch {
                    meta.write_all_at(&meta::encode_entry(entry), meta::entry_offset(*index))
                        .map_err(|e| ZoneError::io("writing zone metadata", e))?;
                }
                meta.sync_data()
                    .map_err(|e| ZoneError::io("syncing zone metadata", e))
            };
            let result = write_and_sync(&freeing).and_then(|()| write_and_sync(&taking));
            // Recorded here, not by whoever awaits: it may have stopped waiting.
            if let Err(e) = &result {
                drive.fail(e.to_string());
            }
            result
        })
        .await?;
        let mut st = self.inner.state.lock();
        for (index, entry) in entries {
            st.zones[index as usize].durable = entry;
        }
        Ok(())
    }

    async fn sync_data(&self) -> ZoneResult<()> {
        let data = self.inner.data.clone();
        let drive = self.clone();
        blocking(move || {
            let result = data
                .sync_data()
                .map_err(|e| ZoneError::io("syncing zone data", e));
            // Recorded here, not by whoever awaits: it may have stopped waiting, and the next
            // fsync would wrongly succeed (a failed one marks the lost pages clean).
            if let Err(e) = &result {
                drive.fail(e.to_string());
            }
            result
        })
        .await
    }

    fn byte_offset(&self, lba: u64) -> u64 {
        lba * u64::from(self.inner.geometry.block_size)
    }

    fn blocks_of(&self, data: &Bytes) -> ZoneResult<u64> {
        match self.inner.geometry.blocks_of(data.len()) {
            Some(0) | None => Err(ZoneError::InvalidField(format!(
                "data length {} is not a positive multiple of the {}-byte block size",
                data.len(),
                self.inner.geometry.block_size
            ))),
            Some(blocks) => Ok(blocks),
        }
    }

    /// Grants a write and records it in flight, once no reset of its zone is in progress.
    async fn begin_write(&self, lba: u64, blocks: u64, append: bool) -> ZoneResult<Grant> {
        let geometry = self.inner.geometry;
        let resetting = |st: &DriveState| {
            st.resetting_all
                || geometry
                    .zone_index(lba)
                    .is_some_and(|i| st.zones[i as usize].resetting)
        };
        loop {
            {
                let mut st = self.inner.state.lock();
                if !resetting(&st) {
                    let grant = st.table.grant_write(lba, blocks, append)?;
                    let index = (grant.lba / geometry.zone_size) as u32;
                    let rel = grant.lba - geometry.zone_start(index);
                    let id = st.next_write;
                    st.next_write += 1;
                    st.zones[index as usize].in_flight.push((rel, id));
                    st.dirty = true;
                    return Ok(Grant {
                        lba: grant.lba,
                        index,
                        id,
                    });
                }
            }
            self.wait_for_change(resetting).await;
        }
    }

    /// Records that a granted write ended: its data is in the file (`ok`), or it failed (and
    /// its blocks may never count as written).
    fn end_write(&self, grant: &Grant, ok: bool) {
        {
            let mut st = self.inner.state.lock();
            let book = &mut st.zones[grant.index as usize];
            if let Some(pos) = book.in_flight.iter().position(|&(_, id)| id == grant.id) {
                let (start, _) = book.in_flight.swap_remove(pos);
                if !ok {
                    book.poisoned = Some(book.poisoned.map_or(start, |p| p.min(start)));
                }
            }
        }
        self.wake_waiters();
    }

    /// Records how a granted write ended: a failure fails the drive (see [`Inner::failed`]).
    fn write_ended(&self, grant: &Grant, result: &ZoneResult<()>) {
        if let Err(e) = result {
            // The write pointer already covers these blocks: a flush must never record it.
            self.fail(e.to_string());
        }
        self.end_write(grant, result.is_ok());
    }

    async fn store(&self, lba: u64, data: Bytes, append: bool, hint: WriteHint) -> ZoneResult<u64> {
        self.healthy()?;
        self.inner
            .faults
            .check(if append { "append" } else { "write" })?;
        let blocks = self.blocks_of(&data)?;
        let grant = self.begin_write(lba, blocks, append).await?;
        let lba = grant.lba;
        let offset = self.byte_offset(lba);
        let direct = (hint == WriteHint::InfrequentReads && data.len() >= HINTED_DIRECT_MIN)
            || self.inner.direct_writes.load(Ordering::Relaxed);
        // Handed to the writer threads now: it runs to its end whether or not we wait.
        let ending: Ending = match self.inner.writers.submit(data, offset, direct) {
            Ok(done) => Box::pin(async move {
                done.await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::other("a writer thread stopped mid-write"))
                    })
                    .map_err(|e| ZoneError::io(format!("writing LBA {lba}"), e))
            }),
            Err(e) => Box::pin(std::future::ready(Err(ZoneError::io(
                format!("writing LBA {lba}"),
                e,
            )))),
        };
        WriteInFlight::new(self, grant, ending)
            .ended()
            .await
            .map(|_| lba)
    }
}

/// Most bytes one read returns.
const MAX_READ_BYTES: u64 = 256 << 20;

/// A reset in progress holding writes off its zone (or every zone, `only` None) until dropped.
struct Resetting<'a> {
    drive: &'a EmulatedZns,
    only: Option<u32>,
}

impl Drop for Resetting<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.drive.inner.state.lock();
            match self.only {
                Some(i) => st.zones[i as usize].resetting = false,
                None => st.resetting_all = false,
            }
        }
        self.drive.wake_waiters();
    }
}

/// How a granted write ends.
type Ending = std::pin::Pin<Box<dyn Future<Output = ZoneResult<()>> + Send>>;

/// A granted write until its end is recorded. If whoever waits for it stops waiting (a caller
/// that gave up), a task of its own follows the write to its end and records it: the zone never
/// keeps a write in flight for ever (flushes and resets would wait for it), nor counts one that
/// failed.
struct WriteInFlight {
    drive: EmulatedZns,
    grant: Option<Grant>,
    ending: Option<Ending>,
}

impl WriteInFlight {
    fn new(drive: &EmulatedZns, grant: Grant, ending: Ending) -> Self {
        WriteInFlight {
            drive: drive.clone(),
            grant: Some(grant),
            ending: Some(ending),
        }
    }

    /// Waits for the write's end and records it.
    async fn ended(mut self) -> ZoneResult<()> {
        let result = match self.ending.as_mut() {
            Some(ending) => ending.await,
            None => Ok(()),
        };
        self.ending = None;
        if let Some(grant) = self.grant.take() {
            self.drive.write_ended(&grant, &result);
        }
        result
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        let (Some(grant), Some(ending)) = (self.grant.take(), self.ending.take()) else {
            return;
        };
        let drive = self.drive.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let result = ending.await;
                    drive.write_ended(&grant, &result);
                });
            }
            Err(_) => drive.write_ended(
                &grant,
                &Err(ZoneError::MediaError(
                    "a write was abandoned with no runtime left to see it end".into(),
                )),
            ),
        }
    }
}

/// A write granted in a zone: where, and its number among writes.
#[derive(Debug)]
struct Grant {
    lba: u64,
    index: u32,
    id: u64,
}

/// Rebuilds in-memory state from durable entries, applying the power-on rule to opened zones.
fn recovered_state(geometry: Geometry, entries: &[ZoneEntry]) -> DriveState {
    let statuses = entries
        .iter()
        .map(|e| ZoneStatus::new(e.state, e.written))
        .collect();
    let mut table = ZoneTable::from_zones(geometry, statuses);
    table.after_power_loss();
    let zones = entries
        .iter()
        .map(|&durable| ZoneBook {
            in_flight: Vec::new(),
            resetting: false,
            poisoned: None,
            durable,
        })
        .collect();
    DriveState {
        table,
        zones,
        dirty: true,
        next_write: 0,
        resetting_all: false,
    }
}

fn lock_exclusive(file: &File, path: &Path) -> ZoneResult<()> {
    // SAFETY: flock on a valid, open file descriptor has no memory-safety preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(ZoneError::io(
            format!("{} is in use by another process", path.display()),
            std::io::Error::last_os_error(),
        ))
    }
}

fn sync_dir(dir: &Path) -> ZoneResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ZoneError::io(format!("syncing {}", dir.display()), e))
}

/// Writes `len` zero bytes at `offset`, a bounded buffer at a time (a Write Zeroes may cover
/// 65536 blocks).
fn write_zeros(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; len.min(CHUNK) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        file.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// The data file opened again with `O_DIRECT` for the writer threads, if the file system allows
/// it (tmpfs and some others do not: writes then go through the page cache).
fn open_direct(path: &Path) -> Option<Arc<File>> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => Some(Arc::new(file)),
        Err(e) => {
            tracing::debug!(path = %path.display(), "no direct writes: {e}");
            None
        }
    }
}

/// Deallocates what lies past the durable write pointer of every zone that takes writes: bytes
/// written before a crash and never flushed reach the file all the same, and a write granted
/// over them again could otherwise be read (racing it) as the old, whole records. As a real
/// drive's deallocated blocks, they read as zeros instead.
fn deallocate_past_write_pointers(data: &File, geometry: Geometry, entries: &[ZoneEntry]) {
    let block = u64::from(geometry.block_size);
    let mut failed = None;
    for (index, entry) in entries.iter().enumerate() {
        if matches!(
            entry.state,
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline
        ) {
            continue;
        }
        let start = (geometry.zone_start(index as u32) + entry.written) * block;
        let len = (geometry.zone_size - entry.written) * block;
        if let Err(e) = punch_hole(data, start, len) {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        tracing::warn!("could not deallocate past the zones' write pointers: {e}");
    }
}

/// Deallocates a byte range of the data file so that it reads as zeros and frees space.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a valid, open file descriptor has no memory-safety preconditions.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[async_trait]
impl ZonedDevice for EmulatedZns {
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn identity(&self) -> Option<[u8; 16]> {
        Some(self.inner.identity)
    }

    async fn read(&self, lba: u64, blocks: u32) -> ZoneResult<Bytes> {
        self.healthy()?;
        self.inner.faults.check("read")?;
        let geometry = self.inner.geometry;
        let blocks = u64::from(blocks);
        // One read fills one buffer: bounded as a real drive bounds a transfer (MDTS).
        if self.byte_offset(blocks) > MAX_READ_BYTES {
            return Err(ZoneError::InvalidField(format!(
                "a read of {blocks} blocks is more than the {MAX_READ_BYTES} bytes one read may be"
            )));
        }
        // Which parts of the range hold data.
        let mut segments = Vec::new();
        {
            let st = self.inner.state.lock();
            st.table.check_read(lba, blocks)?;
            let mut at = lba;
            while at < lba + blocks {
                let zone_end = (at / geometry.zone_size + 1) * geometry.zone_size;
                let span = zone_end.min(lba + blocks) - at;
                let readable = st.table.readable_blocks(at, span);
                if readable > 0 {
                    segments.push(Segment {
                        file_offset: self.byte_offset(at),
                        buffer_offset: self.byte_offset(at - lba) as usize,
                        len: self.byte_offset(readable) as usize,
                    });
                }
                at += span;
            }
        }
        let len = self.byte_offset(blocks) as usize;
        let file = self.inner.data.clone();
        let failed = move |e| ZoneError::io(format!("reading LBA {lba}"), e);
        // From the page cache at once when it holds the bytes (no thread hand-off), else on
        // a thread that may block.
        if let Some(data) = fill(&file, len, &segments, Wait::CachedOnly).map_err(failed)? {
            return Ok(data);
        }
        blocking(move || {
            fill(&file, len, &segments, Wait::Block)
                .and_then(|data| {
                    data.ok_or_else(|| std::io::Error::other("a blocking read gave up"))
                })
                .map_err(failed)
        })
        .await
    }

    async fn write(&self, lba: u64, data: Bytes) -> ZoneResult<()> {
        self.store(lba, data, false, WriteHint::None)
            .await
            .map(|_| ())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u32) -> ZoneResult<()> {
        self.healthy()?;
        self.inner.faults.check("write zeroes")?;
        if blocks == 0 {
            return Err(ZoneError::InvalidField(
                "write zeroes of zero blocks".into(),
            ));
        }
        let grant = self.begin_write(lba, u64::from(blocks), false).await?;
        let lba = grant.lba;
        let file = self.inner.data.clone();
        let offset = self.byte_offset(lba);
        let len = self.byte_offset(u64::from(blocks));
        // Started now: it runs to its end whether or not we wait.
        let zeroing = tokio::task::spawn_blocking(move || {
            // The range may hold stale bytes from before a reset that was never punched.
            punch_hole(&file, offset, len)
                .or_else(|_| write_zeros(&file, offset, len))
                .map_err(|e| ZoneError::io(format!("zeroing LBA {lba}"), e))
        });
        let ending: Ending = Box::pin(async move {
            zeroing
                .await
                .map_err(|e| ZoneError::MediaError(format!("I/O task failed: {e}")))?
        });
        WriteInFlight::new(self, grant, ending).ended().await
    }

    async fn append(&self, zslba: u64, data: Bytes) -> ZoneResult<u64> {
        self.store(zslba, data, true, WriteHint::None).await
    }

    async fn append_hinted(&self, zslba: u64, data: Bytes, hint: WriteHint) -> ZoneResult<u64> {
        self.store(zslba, data, true, hint).await
    }

    async fn flush(&self) -> ZoneResult<()> {
        let drive = self.clone();
        to_the_end(async move { drive.flush_now().await }).await
    }

    async fn manage_zones(&self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<()> {
        let drive = self.clone();
        to_the_end(async move { drive.manage_zones_now(action, select).await }).await
    }

    async fn report_zones(
        &self,
        start_lba: u64,
        filter: ReportFilter,
        max_zones: usize,
    ) -> ZoneResult<ZoneReport> {
        self.inner
            .state
            .lock()
            .table
            .report(start_lba, filter, max_zones)
    }
}

impl EmulatedZns {
    /// Makes every write granted before now durable (see [`ZonedDevice::flush`]).
    async fn flush_now(&self) -> ZoneResult<()> {
        self.healthy()?;
        self.inner.faults.check("flush")?;
        // The writes to make durable: every one granted before now (completed ones among them;
        // the others are not covered, but may be).
        let horizon = self.inner.state.lock().next_write;
        let _order = self.inner.persist.lock().await;
        // Group commit: a flush that began after we arrived may have covered us (unless a
        // write failed meanwhile: what it covered then may not hold what we were told).
        if self.inner.durable_writes.load(Ordering::SeqCst) >= horizon {
            return self.healthy();
        }
        // A completed write may sit behind an earlier one still being written, and counts only
        // once that one has: wait for every write granted before we arrived.
        self.wait_for_writes(horizon, None).await;
        let (covered, entries) = {
            let mut st = self.inner.state.lock();
            // Checked again under the lock: a write that failed marks the drive failed before
            // it ends (which takes this lock), so one that ended since the check above, and is
            // no longer in flight below, is seen here rather than taken as settled.
            self.healthy()?;
            // Writes in a zone are numbered in LBA order, so every write numbered below the
            // oldest one in flight is settled.
            let covered = st
                .zones
                .iter()
                .flat_map(|z| z.in_flight.iter().map(|&(_, id)| id))
                .min()
                .unwrap_or(st.next_write);
            let entries = st.unrecorded();
            // Stays dirty while writes are in flight: their data is not covered by this flush.
            st.dirty = st.zones.iter().any(|z| !z.in_flight.is_empty());
            (covered, entries)
        };
        if !entries.is_empty() {
            self.sync_data().await?;
            self.persist_entries(entries).await?;
        }
        self.inner
            .durable_writes
            .fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// Applies a zone management action (see [`ZonedDevice::manage_zones`]).
    async fn manage_zones_now(&self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<()> {
        self.healthy()?;
        let _order = self.inner.persist.lock().await;
        if action != ZoneAction::Reset {
            return self.manage_now(action, select).await;
        }
        // A reset holds new writes off its zone (or every zone) and waits for those in flight
        // there, so that no write lands in the zone's old life after the reset is recorded and
        // its blocks deallocated, and none is granted in its new life before that is durable.
        let only = match select {
            ZoneSelect::Zone(zslba) => match self.inner.geometry.zone_index(zslba) {
                Some(index) if self.inner.geometry.zone_start(index) == zslba => Some(index),
                // Not a zone start: refused as such, holding nothing up (a host repeating it
                // must not stall the zone's writes).
                _ => return self.manage_now(action, select).await,
            },
            ZoneSelect::All => None,
        };
        let horizon = {
            let mut st = self.inner.state.lock();
            match only {
                Some(i) => st.zones[i as usize].resetting = true,
                None => st.resetting_all = true,
            }
            st.next_write
        };
        // Writes are let in again however this ends (also if the caller stops waiting).
        let _resetting = Resetting { drive: self, only };
        self.wait_for_writes(horizon, only).await;
        self.manage_now(action, select).await
    }

    /// Applies a zone management action, records it durably and, for a reset, deallocates the
    /// zone's blocks. Callers hold `persist` (and, for a reset, keep writes off the zone).
    async fn manage_now(&self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<()> {
        // Checked again here, with the persist lock held: a flush that held it before may
        // have failed meanwhile, and a second fdatasync would then report success for pages
        // the first one lost (the kernel reports a writeback error once): recording a write
        // pointer over them would claim data that is not on the disk.
        self.healthy()?;
        let (entries, reset, unsynced) = {
            let mut st = self.inner.state.lock();
            let changed = st.table.manage(action, select)?;
            let mut reset = Vec::new();
            let mut entries = Vec::with_capacity(changed.len());
            for &index in &changed {
                let mut entry = st.entry(index);
                if action == ZoneAction::Reset && st.table.zone(index).state == ZoneState::Empty {
                    debug_assert!(st.zones[index as usize].in_flight.is_empty());
                    reset.push(index);
                    entry.resets += 1;
                }
                entries.push((index, entry));
            }
            // Zones that changed unrecorded since the last flush (one closed to make room for
            // a write) are recorded with them: this action's zones alone could come back from a
            // crash beside others in older states, holding more open or active resources
            // together than the drive has.
            let recorded: std::collections::HashSet<u32> = changed.iter().copied().collect();
            entries.extend(
                st.unrecorded()
                    .into_iter()
                    .filter(|(index, _)| !recorded.contains(index)),
            );
            // Recording a zone's new state also records its write pointer, so data written since
            // the last flush must be durable first.
            let unsynced = entries
                .iter()
                .any(|(i, entry)| entry.written > st.zones[*i as usize].durable.written);
            (entries, reset, unsynced)
        };
        if unsynced {
            self.sync_data().await?;
        }
        self.persist_entries(entries).await?;
        if !reset.is_empty() {
            let geometry = self.inner.geometry;
            let file = self.inner.data.clone();
            let zone_bytes = geometry.zone_bytes();
            let starts: Vec<u64> = reset
                .iter()
                .map(|&i| self.byte_offset(geometry.zone_start(i)))
                .collect();
            // Reads above the write pointer are zeros regardless, but one racing a write
            // granted there later could read the old records: where the file system cannot
            // deallocate, the zone is zeroed (writes into it wait for this).
            blocking(move || {
                for start in starts {
                    if let Err(e) = punch_hole(&file, start, zone_bytes)
                        .or_else(|_| write_zeros(&file, start, zone_bytes))
                    {
                        tracing::warn!("could not deallocate or zero a reset zone: {e}");
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_filled_by_a_write_in_flight_is_not_recorded_full() {
        let g = Geometry::new(2, 1 << 20);
        let empty = ZoneEntry {
            state: ZoneState::Empty,
            written: 0,
            resets: 0,
        };
        let mut st = recovered_state(g, &[empty, empty]);
        st.table.grant_write(0, 3, true).unwrap();
        let rest = g.zone_capacity - 3;
        st.table.grant_write(0, rest, true).unwrap();
        assert_eq!(st.table.zone(0).state, ZoneState::Full);
        st.zones[0].in_flight.push((3, 1));
        let entry = st.entry(0);
        assert_eq!((entry.state, entry.written), (ZoneState::Closed, 3));
        st.zones[0].in_flight.clear();
        let entry = st.entry(0);
        assert_eq!(
            (entry.state, entry.written),
            (ZoneState::Full, g.zone_capacity)
        );
        // Finished with a write in flight short of capacity: Full (the Finish was asked for).
        st.table.grant_write(g.zone_start(1), 2, true).unwrap();
        st.table
            .manage(
                crate::ZoneAction::Finish,
                crate::ZoneSelect::Zone(g.zone_start(1)),
            )
            .unwrap();
        st.zones[1].in_flight.push((0, 2));
        let entry = st.entry(1);
        assert_eq!((entry.state, entry.written), (ZoneState::Full, 0));
    }

    /// Polls `work` once and drops it: a caller that stops waiting (a connection the NVMe/TCP
    /// target dropped, with its commands).
    async fn abandon(work: impl Future<Output = ZoneResult<()>>) {
        let mut work = std::pin::pin!(work);
        let once = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx)));
        assert!(once.await.is_pending(), "the work ended at its first step");
    }

    /// The write pointer of zone `index` as the drive in `dir` comes back after a crash.
    fn after_a_crash(dir: &Path, index: u32) -> (ZoneState, u64) {
        // (A file task of the dropped drive may hold its lock a moment longer.)
        let mut tries = 0;
        let d = loop {
            match EmulatedZns::open(dir) {
                Err(e) if tries < 100 && e.to_string().contains("in use") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened.unwrap(),
            }
        };
        let zone = d.inner.state.lock().table.zone(index);
        (zone.state, zone.written)
    }

    /// Bytes written before a crash and never flushed are gone from the data file when the
    /// drive is opened again (they would otherwise be read, whole, by a read racing the write
    /// granted over them next); what was flushed stays.
    #[tokio::test]
    async fn unflushed_bytes_are_deallocated_when_the_drive_is_opened_again() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(2, 1 << 20);
        let bs = g.block_size as usize;
        let d = EmulatedZns::create(dir.path(), g).unwrap();
        d.append(0, Bytes::from(vec![5u8; 2 * bs])).await.unwrap();
        d.flush().await.unwrap();
        d.append(0, Bytes::from(vec![6u8; 3 * bs])).await.unwrap();
        let zone1 = g.zone_start(1);
        d.append(zone1, Bytes::from(vec![7u8; bs])).await.unwrap();
        drop(d);
        assert_eq!(after_a_crash(dir.path(), 0), (ZoneState::Closed, 2));
        let file = File::open(dir.path().join(DATA_FILE)).unwrap();
        let mut zone0 = vec![0u8; 5 * bs];
        file.read_exact_at(&mut zone0, 0).unwrap();
        assert!(zone0[..2 * bs].iter().all(|&b| b == 5), "flushed data lost");
        assert!(
            zone0[2 * bs..].iter().all(|&b| b == 0),
            "unflushed bytes left"
        );
        let mut first = vec![0u8; bs];
        file.read_exact_at(&mut first, zone1 * g.block_size as u64)
            .unwrap();
        assert!(first.iter().all(|&b| b == 0), "unflushed bytes left");
    }

    #[tokio::test]
    async fn a_flush_its_caller_stopped_waiting_for_still_makes_the_next_one_durable() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(2, 1 << 20);
        let d = EmulatedZns::create(dir.path(), g).unwrap();
        d.write(0, Bytes::from(vec![5u8; 4 * g.block_size as usize]))
            .await
            .unwrap();
        abandon(d.flush()).await;
        d.flush().await.unwrap();
        drop(d);
        assert_eq!(after_a_crash(dir.path(), 0).1, 4, "acknowledged data lost");
    }

    #[tokio::test]
    async fn a_zone_action_its_caller_stopped_waiting_for_is_recorded_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(2, 1 << 20);
        let d = EmulatedZns::create(dir.path(), g).unwrap();
        d.write(0, Bytes::from(vec![5u8; g.block_size as usize]))
            .await
            .unwrap();
        abandon(d.manage_zones(ZoneAction::Finish, ZoneSelect::Zone(0))).await;
        // Sent again, it finds nothing left to do, and says so only once it is durable.
        d.manage_zones(ZoneAction::Finish, ZoneSelect::Zone(0))
            .await
            .unwrap();
        drop(d);
        assert_eq!(after_a_crash(dir.path(), 0).0, ZoneState::Full);
    }

    /// On a drive of one active zone: one block in zone 0, flushed; then zone 0 fills (the
    /// write `landed`, or only granted), zone 1 opens in its place, takes a block and is
    /// closed; then a crash. The zones' states and blocks as the drive comes back.
    async fn zone_0_fills_as_zone_1_opens(landed: bool) -> Vec<(ZoneState, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Geometry::new(4, 1 << 20);
        g.max_active = Some(1);
        g.max_open = Some(1);
        let d = EmulatedZns::create(dir.path(), g).unwrap();
        let block = Bytes::from(vec![5u8; g.block_size as usize]);
        d.write(0, block.clone()).await.unwrap();
        d.flush().await.unwrap();
        let rest = g.zone_capacity - 1;
        // (Granted only, zone 0 is Full in memory, its active resource free.)
        let _filling = if landed {
            let bytes = rest * u64::from(g.block_size);
            d.write(1, Bytes::from(vec![6u8; bytes as usize]))
                .await
                .unwrap();
            None
        } else {
            Some(d.begin_write(1, rest, false).await.unwrap())
        };
        let zone1 = g.zone_start(1);
        d.write(zone1, block).await.unwrap();
        d.manage_zones(ZoneAction::Close, ZoneSelect::Zone(zone1))
            .await
            .unwrap();
        drop(d);
        (0..4).map(|i| after_a_crash(dir.path(), i)).collect()
    }

    /// A zone closed to make room for a write is recorded with the next zone action, so that
    /// a drive never comes back from a crash holding more active zones than it has.
    #[tokio::test]
    async fn zones_come_back_from_a_crash_within_the_active_limit() {
        let states = zone_0_fills_as_zone_1_opens(true).await;
        let active = states.iter().filter(|(s, _)| s.is_active()).count();
        assert!(active <= 1, "{states:?} on a drive with 1 active zone");
    }

    /// The same while the write filling zone 0 has not landed when zone 1 opens and is
    /// recorded: zone 0 is then recorded Closed short of its capacity, and the drive finishes
    /// the fullest zone when it comes back rather than hold two active zones.
    #[tokio::test]
    async fn a_zone_still_filling_at_a_crash_comes_back_within_the_active_limit() {
        let states = zone_0_fills_as_zone_1_opens(false).await;
        let active = states.iter().filter(|(s, _)| s.is_active()).count();
        assert!(active <= 1, "{states:?} on a drive with 1 active zone");
        assert_eq!(states[0], (ZoneState::Full, 1), "the fullest is finished");
        assert_eq!(states[1], (ZoneState::Closed, 1));
    }

    #[tokio::test]
    async fn a_flush_waits_for_writes_granted_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        // A is granted first (blocks 0..8), B after it (block 8); B ends first.
        let a = d.begin_write(0, 8, true).await.unwrap();
        let b = d.begin_write(0, 1, true).await.unwrap();
        d.end_write(&b, true);
        let flush = tokio::spawn({
            let d = d.clone();
            async move { d.flush().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !flush.is_finished(),
            "the flush waits for A, which B's blocks sit behind"
        );
        d.end_write(&a, true);
        flush.await.unwrap().unwrap();
        assert_eq!(
            d.inner.state.lock().zones[0].durable.written,
            9,
            "B is durable"
        );
    }

    #[tokio::test]
    async fn a_reset_waits_for_writes_in_its_zone_and_holds_new_ones_off() {
        let dir = tempfile::tempdir().unwrap();
        let d = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        let old = d.begin_write(0, 4, true).await.unwrap();
        let reset = tokio::spawn({
            let d = d.clone();
            async move { d.manage_zones(ZoneAction::Reset, ZoneSelect::Zone(0)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !reset.is_finished(),
            "the reset waits for the write in flight"
        );
        let new = tokio::spawn({
            let d = d.clone();
            async move { d.begin_write(0, 1, true).await.map(|g| g.lba) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !new.is_finished(),
            "no write is granted in a zone being reset"
        );
        // Another zone is not held up.
        let other = d.begin_write(256, 1, true).await.unwrap();
        d.end_write(&other, true);
        d.end_write(&old, true);
        reset.await.unwrap().unwrap();
        assert_eq!(
            new.await.unwrap().unwrap(),
            0,
            "the new write starts the zone afresh"
        );
    }

    /// Polls `future` once.
    fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// A write that failed is never covered by a durable write pointer, even by a flush that
    /// passed its health check before the failure, nor are the writes after it in its zone.
    #[tokio::test]
    async fn a_failed_write_is_never_counted_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        let before = d.begin_write(0, 2, true).await.unwrap();
        d.end_write(&before, true);
        let failed = d.begin_write(0, 3, true).await.unwrap();
        let after = d.begin_write(0, 1, true).await.unwrap();
        d.end_write(&failed, false);
        d.end_write(&after, true);
        let st = d.inner.state.lock();
        assert_eq!(st.settled(0), 2, "only what lies before the failed write");
        assert_eq!(st.entry(0).written, 2);
    }

    /// A caller that stops waiting for its append (a timeout, a client gone) leaves nothing in
    /// flight for ever: the write is followed to its end, and flushes and resets go on.
    #[tokio::test]
    async fn an_abandoned_append_is_followed_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let d = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        // Polled once (granted, handed to the writers), then dropped: the first append the
        // writer thread has not already finished by then (one it has is simply done).
        let mut abandoned_one = false;
        for _ in 0..64 {
            let mut append = d.append(0, Bytes::from(vec![5u8; 16 << 10]));
            if poll_once(append.as_mut()).is_pending() {
                abandoned_one = true;
                break;
            }
        }
        assert!(abandoned_one, "every append finished at its first poll");
        tokio::time::timeout(std::time::Duration::from_secs(5), d.flush())
            .await
            .expect("the flush does not wait for ever")
            .unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            d.manage_zones(ZoneAction::Reset, ZoneSelect::Zone(0)),
        )
        .await
        .expect("the reset does not wait for ever")
        .unwrap();
        assert_eq!(d.append(0, Bytes::from(vec![6u8; 4096])).await.unwrap(), 0);
    }

    /// A reset whose caller stops waiting lets writes into its zone again.
    #[tokio::test]
    async fn an_abandoned_reset_lets_writes_in_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        let held = d.begin_write(0, 1, true).await.unwrap();
        // The reset waits for the write in flight, and is dropped while it waits.
        let mut reset = d.manage_zones(ZoneAction::Reset, ZoneSelect::Zone(0));
        assert!(poll_once(reset.as_mut()).is_pending());
        drop(reset);
        d.end_write(&held, true);
        let lba = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            d.append(0, Bytes::from(vec![1u8; 4096])),
        )
        .await
        .expect("the zone takes writes again")
        .unwrap();
        assert_eq!(lba, 1);
    }

    #[tokio::test]
    async fn a_drive_that_failed_refuses_io_until_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        d.append(0, Bytes::from(vec![1u8; 4096])).await.unwrap();
        d.fail("syncing zone data: Input/output error".into());
        for result in [
            d.flush().await.map(|_| 0),
            d.append(0, Bytes::from(vec![1u8; 4096])).await,
            d.read(0, 1).await.map(|_| 0),
        ] {
            assert_eq!(result.unwrap_err().kind(), crate::ZoneErrorKind::MediaError);
        }
        drop(d);
        let d = EmulatedZns::open(dir.path()).unwrap();
        assert_eq!(
            d.read(0, 1).await.unwrap(),
            Bytes::from(vec![0u8; 4096]),
            "nothing was flushed"
        );
    }

    #[test]
    fn a_creation_cut_short_leaves_a_directory_a_drive_can_be_created_in() {
        let dir = tempfile::tempdir().unwrap();
        // What a crash while creating leaves: a data file and a partial metadata file aside.
        std::fs::write(dir.path().join(DATA_FILE), b"").unwrap();
        std::fs::write(dir.path().join(format!("{META_FILE}.new")), b"partial").unwrap();
        let g = Geometry::new(2, 1 << 20);
        EmulatedZns::open_or_create(dir.path(), g).unwrap();
        assert_eq!(EmulatedZns::open(dir.path()).unwrap().geometry(), g);
    }

    /// Pages of `len` bytes at `offset` of `file` that are in the page cache.
    fn resident_pages(file: &File, offset: u64, len: usize) -> usize {
        let page = 4096;
        // SAFETY: a shared read-only mapping of an open file, unmapped before returning; mincore
        // writes one byte per page into a vector of that many bytes.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap");
            let mut flags = vec![0u8; len.div_ceil(page)];
            let rc = libc::mincore(map, len, flags.as_mut_ptr());
            libc::munmap(map, len);
            assert_eq!(rc, 0, "mincore");
            flags.iter().filter(|f| *f & 1 == 1).count()
        }
    }

    /// Whether `dir` is on tmpfs, whose files live in the page cache whatever the flags.
    fn on_tmpfs(dir: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs writes into a zeroed struct of the right type; the path is a C string.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
        }
    }

    #[tokio::test]
    async fn direct_writes_leave_the_page_cache_alone_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 4 << 20);
        let drive = EmulatedZns::create(dir.path(), g).unwrap();
        let zone_bytes = (g.zone_size * u64::from(g.block_size)) as usize;
        let data =
            |seed: u8| Bytes::from((0..1 << 20).map(|i| (i as u8) ^ seed).collect::<Vec<_>>());

        // Buffered (the default): the written pages are cached.
        drive.append(g.zone_start(0), data(1)).await.unwrap();
        assert!(resident_pages(&drive.inner.data, 0, 1 << 20) > 0);

        // Hinted as rarely read: bypasses the cache although direct writes are off.
        let hinted = drive
            .append_hinted(g.zone_start(2), data(3), WriteHint::InfrequentReads)
            .await
            .unwrap();
        let cached = resident_pages(&drive.inner.data, 2 * zone_bytes as u64, 1 << 20);
        if open_direct(&drive.data_path()).is_some() && !on_tmpfs(dir.path()) {
            assert_eq!(cached, 0, "a write hinted as rarely read was cached");
        }
        assert_eq!(drive.read(hinted, 256).await.unwrap(), data(3));
        // Unless it is small: then it waits in the cache for the next flush, like the rest.
        let small_hinted = drive
            .append_hinted(
                g.zone_start(3),
                Bytes::from(vec![9u8; 8192]),
                WriteHint::InfrequentReads,
            )
            .await
            .unwrap();
        assert!(resident_pages(&drive.inner.data, 3 * zone_bytes as u64, 8192) > 0);
        assert_eq!(small_hinted, g.zone_start(3));

        drive.set_direct_writes(true);
        let lba = drive.append(g.zone_start(1), data(2)).await.unwrap();
        let resident = resident_pages(&drive.inner.data, zone_bytes as u64, 1 << 20);
        if open_direct(&drive.data_path()).is_some() && !on_tmpfs(dir.path()) {
            assert_eq!(resident, 0, "a direct write left pages in the page cache");
        } else {
            eprintln!("no direct writes under {}", dir.path().display());
        }
        assert_eq!(drive.read(lba, 256).await.unwrap(), data(2));
        // A one-block write lands right after the direct one.
        let small = Bytes::from(vec![7u8; 4096]);
        drive.append(g.zone_start(1), small.clone()).await.unwrap();
        assert_eq!(drive.read(lba + 256, 1).await.unwrap(), small);
        drive.flush().await.unwrap();
        drop(drive);
        let drive = EmulatedZns::open(dir.path()).unwrap();
        assert_eq!(drive.read(lba, 256).await.unwrap(), data(2));
        assert_eq!(drive.read(g.zone_start(0), 256).await.unwrap(), data(1));
    }
}
