//! Writing: records appended with Zone Append to as many drives as the replication factor asks
//! (the drive picks the LBA), and the streaming PUT writer, which cuts a body into extents no
//! larger than the zone append limit, appends several at once, and holds no more than a few
//! extents of the body in memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use tokio::task::JoinHandle;
use zns::{WriteHint, ZoneAction, ZoneSelect};

use super::EngineInner;
use super::commit::{Change, Condition, NewExtent, Outcome, Relocation, now_ms};
use super::drives::Drives;
use super::error::{EngineError, EngineResult};
use super::model::{Class, DriveId, Extent, Location, ObjectMeta, PartEntry, StreamRef, ZoneId};
use super::patience::next_by;
use super::placement::{FinishTurn, NoSpace, Placement, Slot, ZoneHolds};
use super::record::{self, Header, Kind, RecordBuilder};
use super::stats::Writer;

/// Appends in flight per upload: enough to keep drives busy, few enough to bound memory.
const IN_FLIGHT_PER_UPLOAD: usize = 4;
/// Unit of the engine's write budget: record bytes held in memory are counted in these.
pub(crate) const BUDGET_UNIT: usize = 64 << 10;
/// Record bytes all uploads together may hold in memory (being filled or being appended): the
/// server's memory does not grow with the number or size of uploads beyond this.
pub(crate) const WRITE_BUDGET: usize = 48 << 20;

/// Longest wait for read or write budget before a request gives up (503) instead.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(30);
/// How long a write waits for GC to free space before it fails for lack of space.
const SPACE_WAIT: Duration = Duration::from_secs(10);

/// Most rounds of one write that may send nothing, every zone placed in found written on an
/// older session of its drive, without counting as one of its three rounds: more than the
/// zones a drive keeps open for a class.
const MAX_STALE_ROUNDS: usize = 16;

/// Most failed writes whose revocations may wait for an index that takes no writes (see
/// [`super::revoked::Pending`]) before client writes are refused without being appended: each
/// would fail too and only add one more (memory, and work for every later index write).
const MAX_PENDING_REVOCATIONS: usize = 1024;

impl EngineInner {
    /// Finishes zones placement stopped using (frees their open and active resources).
    pub(crate) fn finish_zones(&self, zones: Vec<ZoneId>) {
        finish_zones(&self.placement, &self.drives, zones);
    }

    /// Appends `record` to `copies` drives (at least `quorum` must succeed) for writes of
    /// `class`, restricted to `only` if given. Returns where the copies landed, holding their
    /// zones from GC until the caller drops the holds (after the index names the copies).
    pub(crate) async fn append_record(
        &self,
        record: Bytes,
        class: Class,
        copies: usize,
        quorum: usize,
        only: Option<u16>,
    ) -> EngineResult<Appended> {
        let by = match class {
            Class::User => Writer::User,
            Class::Gc => Writer::Gc,
        };
        self.append_record_with(record, by, false, copies, quorum, only)
            .await
            .map_err(|failed| failed.error)
    }

    /// Appends one copy of records GC, repair or scrub moves (`moved` names them) to `drive`,
    /// returning where it landed, its zone held from GC. An append that fails may still have
    /// landed in a zone it tried: the names of the records then hide those zones (see
    /// [`Change::Orphans`]), or a rebuild or replay could take such a copy for a name's
    /// current version once nothing else hides it.
    pub(crate) async fn append_moved(
        &self,
        record: Bytes,
        drive: DriveId,
        by: Writer,
        moved: impl FnOnce() -> Vec<Relocation>,
    ) -> EngineResult<(Location, ZoneHolds)> {
        let Appended { locations, holds } = match self
            .append_record_with(record, by, false, 1, 1, Some(drive))
            .await
        {
            Ok(appended) => appended,
            Err(failed) => {
                if !failed.attempted.is_empty() {
                    let orphans = moved()
                        .into_iter()
                        .map(|what| (what, failed.attempted.clone()))
                        .collect();
                    if let Err(e) = self.committer.submit(Change::Orphans(orphans)).await {
                        tracing::error!("hiding the copies of a failed move failed: {e}");
                    }
                }
                return Err(failed.error);
            }
        };
        let to = locations
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("a copy landed nowhere".into()))?;
        Ok((to, holds))
    }

    /// [`EngineInner::append_record`] for records that let space be reclaimed (they may use
    /// part of the reserve).
    pub(crate) async fn append_record_with(
        &self,
        record: Bytes,
        by: Writer,
        frees_space: bool,
        copies: usize,
        quorum: usize,
        only: Option<u16>,
    ) -> Result<Appended, AppendFailed> {
        let class = by.class();
        let mut locations = Vec::with_capacity(copies);
        let mut holds = ZoneHolds::new(self.placement.clone());
        if by == Writer::User && !self.failed_writes_recorded().await {
            return Err(AppendFailed {
                error: EngineError::Unavailable(
                    "the index takes no writes now (those that failed wait for it): try again later"
                        .into(),
                ),
                attempted: Vec::new(),
                holds,
            });
        }
        let mut tried: Vec<u16> = Vec::new();
        let started = Instant::now();
        let deadline = started + SPACE_WAIT;
        let mut rounds = 0;
        // Rounds in which no append was sent, every zone placed in found stale (see below):
        // not counted as rounds, up to a bound (each retires its zones, and a drive has few
        // open ones).
        let mut stale_rounds = 0;
        // How long the write quorum took to store, once it has: what copies beyond it are given
        // (see [`super::patience::Patience::for_stragglers`]), in its round and any later one.
        let mut quorum_took: Option<Duration> = None;
        // Whether the copy written to be read (without the rarely-read hint) has landed.
        let mut primary_landed = false;
        while rounds < 3 {
            let missing = copies - locations.len();
            if missing == 0 {
                break;
            }
            let usable = |d: u16| {
                only.is_none_or(|o| o == d)
                    && !tried.contains(&d)
                    && self.drives.get(d).is_some_and(|drive| drive.is_writable())
            };
            let up = self.drives.all().iter().filter(|d| usable(d.id)).count();
            if up == 0 {
                break;
            }
            let blocks = (record.len() as u64).div_ceil(self.block_size);
            let min = (quorum.saturating_sub(locations.len())).clamp(1, missing);
            if up < min {
                // Too few drives are reachable for the write quorum: fail now, with nothing
                // made visible, rather than wait for space that is not the problem.
                break;
            }
            let (slots, finish) = match self.placement.reserve_with(
                class,
                frees_space,
                blocks,
                missing,
                min,
                usable,
            ) {
                Ok(x) => x,
                Err(NoSpace {
                    reason,
                    finish,
                    awaiting_finishes,
                }) => {
                    // Zones the attempt retired still need their Finish, or they would
                    // hold the drive's active-zone resources forever.
                    self.finish_zones(finish);
                    // A free zone waits for a resource the Finishes under way give back
                    // (moments on a drive that takes them; with a write quorum stored, a
                    // copy is not waited for long).
                    let patience = if locations.len() >= quorum {
                        // (A copy beyond the write quorum waits for a resource to open a
                        // zone with as long as for a slow drive, then goes on without it:
                        // repair makes it later.)
                        self.config.patience.slow_write_grace
                    } else {
                        SPACE_WAIT
                    };
                    if awaiting_finishes && started.elapsed() < patience {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    if locations.len() >= quorum {
                        break;
                    }
                    // Out of room: if GC can reclaim space, wait for it (writes slow down
                    // instead of failing); otherwise the store is truly full.
                    if class == Class::User && Instant::now() < deadline && self.can_reclaim() {
                        self.gc.nudge();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    // Space that is on its way (Finishes landing, GC reclaiming what it can) makes
                    // the write one to try again soon (503), not a full store (507: clients
                    // give up on it).
                    let error = if awaiting_finishes {
                        EngineError::Unavailable(format!(
                            "{reason} (the Finish of zones retired earlier has not landed: the drive allows no more open zones until it does)"
                        ))
                    } else if self.can_reclaim() {
                        EngineError::Unavailable(format!(
                            "{reason}: GC is reclaiming space; try again"
                        ))
                    } else {
                        EngineError::NoSpace(reason)
                    };
                    return Err(AppendFailed {
                        error,
                        attempted: holds.zones().collect(),
                        holds,
                    });
                }
            };
            rounds += 1;
            self.finish_zones(finish);
            // The first copy of a new record is the one reads prefer: the others are marked
            // as rarely read, so that a machine holding several copies caches one. (GC and
            // repair copies give none: the copy they move may be the one reads prefer, and
            // repair appends one record at a time, which a drive writing hinted data through
            // to the disk would hold up for a disk write each.)
            let replicating = class == Class::User && only.is_none();
            // (Until the copy written to be read has landed: should the first round's fail,
            // another round's first copy is written so.)
            let primary_pending = replicating && !primary_landed;
            let appends = slots.iter().enumerate().map(|(i, slot)| {
                let drive = self.drives.get(slot.drive).cloned();
                let record = record.clone();
                let slot = *slot;
                let guard = SlotGuard {
                    placement: self.placement.clone(),
                    drives: self.drives.clone(),
                    slot: Some(slot),
                };
                let hint = if replicating && !(primary_pending && i == 0) {
                    WriteHint::InfrequentReads
                } else {
                    WriteHint::None
                };
                // The guard goes with the result: until the loop below records the append's end,
                // dropping this call (with the results gathered so far) still ends the slot.
                async move {
                    let Some(drive) = drive else {
                        let unknown = zns::ZoneError::Unavailable("unknown drive".into());
                        return (slot, Some(Err(unknown)), guard);
                    };
                    // Noted before the append is sent: an append on an older session than
                    // the flush's must not count as flushed. The append goes out in that
                    // session or not at all: in a later one, the zone's write pointer may have
                    // gone back below what placement counts on.
                    let session = drive.device.session();
                    if !self.placement.same_session(&slot, session) {
                        return (slot, None, guard);
                    }
                    let Some(result) = drive
                        .device
                        .append_in_session(slot.zslba, record, hint, session)
                        .await
                    else {
                        return (slot, None, guard);
                    };
                    let result = result.and_then(|lba| {
                        // Where the drive says the record landed must be in the zone.
                        let capacity = drive.geometry.zone_capacity;
                        let start = lba.checked_sub(slot.zslba);
                        match start {
                            Some(s) if s.saturating_add(slot.blocks) <= capacity => Ok(lba),
                            _ => Err(zns::ZoneError::MediaError(format!(
                                "append to zone {:#x} reported LBA {lba:#x}, outside it",
                                slot.zslba
                            ))),
                        }
                    });
                    drive.note_write(&result);
                    (slot, Some(result.map(|lba| (lba, session))), guard)
                }
            });
            // Copies beyond the write quorum are waited for a grace once the quorum is stored
            // (see [`super::patience::Patience::for_stragglers`]), not until a drive failing slow
            // answers.
            let round_began = Instant::now();
            let landed_before = locations.len();
            let mut running: FuturesUnordered<_> = appends.collect();
            let mut unanswered: Vec<Slot> = slots.clone();
            let mut give_up_at: Option<tokio::time::Instant> = None;
            let mut sent_any = false;
            loop {
                if give_up_at.is_none() && locations.len() >= quorum && !running.is_empty() {
                    let took = *quorum_took.get_or_insert_with(|| round_began.elapsed());
                    give_up_at = Some(
                        tokio::time::Instant::from_std(round_began)
                            + took
                            + self.config.patience.for_stragglers(took),
                    );
                }
                let Ok(next) = next_by(&mut running, give_up_at).await else {
                    break;
                };
                let Some((slot, result, mut guard)) = next else {
                    break;
                };
                unanswered.retain(|s| s.drive != slot.drive);
                // Its end is recorded below, with no await before: the guard stands down.
                guard.reported();
                let Some(result) = result else {
                    // Not sent: the drive reconnected since the zone's earlier appends (see
                    // [`Placement::same_session`]). The zone is retired; the drive takes the
                    // record in another zone next round.
                    if let Some(zone) = self.placement.complete(&slot, false) {
                        self.finish_zones(vec![zone]);
                    }
                    continue;
                };
                sent_any = true;
                // A zone the drive made read-only or took offline is left out from now on;
                // the drive's other zones still take the record. So do they when the zone was
                // not in the state placement counted on (full, or its write pointer elsewhere):
                // the zone is retired. Any other failure (too many open or active zones too:
                // another zone would be refused alike, each retired one spent) leaves the drive
                // out of this record's next rounds.
                let zone_lost = result.as_ref().is_err_and(|e| {
                    matches!(
                        e.kind(),
                        zns::ZoneErrorKind::ZoneIsReadOnly | zns::ZoneErrorKind::ZoneIsOffline
                    )
                });
                let zone_state = result.as_ref().is_err_and(|e| {
                    matches!(
                        e.kind(),
                        zns::ZoneErrorKind::ZoneIsFull
                            | zns::ZoneErrorKind::ZoneBoundary
                            | zns::ZoneErrorKind::ZoneInvalidWrite
                            | zns::ZoneErrorKind::InvalidZoneStateTransition
                    )
                });
                // (A drive that took a copy is left out too: no drive holds two.)
                if !zone_lost && !zone_state {
                    tried.push(slot.drive);
                }
                let ok = result.is_ok();
                if let Err(e) = &result
                    && e.kind() == zns::ZoneErrorKind::Unavailable
                {
                    // The host gave up on the command (a connection lost or timed out), not
                    // the drive: it may still run on the target, as an abandoned one may.
                    hold_while_in_doubt(
                        &self.placement,
                        ZoneId {
                            drive: slot.drive,
                            zone: slot.zone,
                        },
                    );
                }
                if let Some(zone) = self.placement.complete(&slot, ok) {
                    self.finish_zones(vec![zone]);
                }
                match result {
                    Ok((lba, session)) => {
                        holds.adopt(
                            ZoneId {
                                drive: slot.drive,
                                zone: slot.zone,
                            },
                            lba.saturating_sub(slot.zslba),
                            slot.blocks,
                            session,
                        );
                        self.stats.add_written(by, slot.blocks * self.block_size);
                        locations.push(Location {
                            drive: slot.drive,
                            lba,
                            blocks: slot.blocks as u32,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(drive = slot.drive, "append failed: {e}");
                        holds.add_stray(ZoneId {
                            drive: slot.drive,
                            zone: slot.zone,
                        });
                        if zone_lost {
                            self.placement.mark_bad(ZoneId {
                                drive: slot.drive,
                                zone: slot.zone,
                            });
                        }
                    }
                }
            }
            // The copies landed in the order of their slots, whatever order they answered in:
            // the first is the one reads prefer (the one not written as rarely read).
            locations[landed_before..]
                .sort_by_key(|l| slots.iter().position(|s| s.drive == l.drive));
            if primary_pending
                && let Some(first) = slots.first()
                && let Some(at) = locations[landed_before..]
                    .iter()
                    .position(|l| l.drive == first.drive)
            {
                // Written in a later round, it goes before the rarely-read copies all the same.
                locations[..=landed_before + at].rotate_right(1);
                primary_landed = true;
            }
            // A round that sent nothing spent no drive's patience: after a reconnect, each of
            // a drive's open zones may be found stale in turn (the next one placement picks is
            // another of them while too few zones are free to open a new one).
            if !sent_any && unanswered.is_empty() && stale_rounds < MAX_STALE_ROUNDS {
                stale_rounds += 1;
                rounds -= 1;
            }
            // The appends not answered in time are given up on (dropped: their slots end as in
            // doubt, see [`SlotGuard`]); where they may yet land, the write's name hides.
            drop(running);
            for slot in unanswered {
                let zone = ZoneId {
                    drive: slot.drive,
                    zone: slot.zone,
                };
                holds.add_stray(zone);
                tried.push(slot.drive);
                if let Some(drive) = self.drives.get(slot.drive) {
                    drive.note_too_slow("append", round_began.elapsed());
                }
            }
        }
        if locations.len() >= quorum {
            if locations.len() < copies {
                self.stats
                    .under_replicated_writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Appended { locations, holds })
        } else {
            Err(AppendFailed {
                error: EngineError::Unavailable(format!(
                    "stored {} of the {quorum} copies a write needs",
                    locations.len()
                )),
                // Where copies may be, whether their appends reported or not.
                attempted: holds.zones().collect(),
                holds,
            })
        }
    }

    /// Appends a record holding `payload` with the replication the engine is configured for.
    pub(crate) async fn append_small(
        &self,
        header: &Header,
        payload: &[u8],
    ) -> EngineResult<Appended> {
        let record = record::encode(header, payload, self.block_size as usize);
        self.append_claiming(record, header.kind, header.seq).await
    }

    /// Appends `record` (whole records, the last a claiming record of `kind` and sequence
    /// number `seq`) in one append per copy, with the replication the engine is configured
    /// for. If the write fails, what may have landed of it is revoked.
    pub(crate) async fn append_claiming(
        &self,
        record: Bytes,
        kind: Kind,
        seq: u64,
    ) -> EngineResult<Appended> {
        // Tombstones and upload ends may use part of the reserve: deleting must work on a full
        // drive, since it is how space comes back.
        let frees_space = matches!(kind, Kind::Tombstone | Kind::BucketDelete | Kind::UploadEnd);
        if record.len() as u64 > self.record_limit {
            // Refused before any zone is tried: no drive takes an append this large.
            return Err(EngineError::InvalidArgument(format!(
                "the {kind:?} record is {} bytes, more than the drives' append limit of {} bytes (fewer parts, or less metadata)",
                record.len(),
                self.record_limit
            )));
        }
        let appended = self
            .append_record_with(
                record,
                Writer::User,
                frees_space,
                self.replicas(),
                self.quorum(),
                None,
            )
            .await;
        match appended {
            Ok(appended) => Ok(appended),
            Err(AppendFailed {
                error,
                attempted,
                holds,
            }) => {
                if kind != Kind::Data && !attempted.is_empty() {
                    // Some copies may have landed (or land yet): the write fails, so they
                    // are dead.
                    self.revoke(seq, &attempted).await;
                }
                // Only now may a settled prefix pass the copies that landed.
                drop(holds);
                Err(error)
            }
        }
    }

    /// Flushes the drives holding `copies` (appended under `holds`), all at once; done when a
    /// write quorum of them (or all there are, if fewer) is durable, the first error if that
    /// cannot be. For a record that must be durable before the next one is appended: a drive
    /// could otherwise hold the next without it (see [`super::Engine::complete_upload`]). A
    /// drive reconnected since the append counts for nothing (its flush cannot vouch for what
    /// the lost connection carried), as the committer has it.
    pub(crate) async fn flush_quorum_of(
        &self,
        copies: &[Location],
        holds: &ZoneHolds,
    ) -> EngineResult<()> {
        use futures::StreamExt;
        let needed = self.quorum().min(copies.len());
        if needed == 0 {
            return Ok(());
        }
        let mut flushes: FuturesUnordered<_> = copies
            .iter()
            .map(|copy| async move {
                let drive = self
                    .drives
                    .get(copy.drive)
                    .ok_or_else(|| EngineError::Internal("unknown drive".into()))?;
                let lost = || {
                    EngineError::Unavailable(format!(
                        "{}: reconnected since the record was appended",
                        drive.name
                    ))
                };
                if !drive.device.is_available() {
                    return Err(EngineError::Unavailable(format!(
                        "{}: not connected",
                        drive.name
                    )));
                }
                let flushed = drive.device.flush().await;
                drive.note_flush(&flushed);
                flushed.map_err(|e| drive.error(e))?;
                let appended_in = holds
                    .sessions()
                    .iter()
                    .find(|(d, _)| *d == copy.drive)
                    .map(|(_, session)| *session);
                match appended_in {
                    Some(session) if session != drive.device.session() => Err(lost()),
                    _ => Ok(()),
                }
            })
            .collect();
        let (mut made, mut first_error) = (0, None);
        while let Some(flushed) = flushes.next().await {
            match flushed {
                Ok(()) => {
                    made += 1;
                    if made >= needed {
                        return Ok(());
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| EngineError::Internal("no copy was flushed".into())))
    }

    /// Whether client writes may be appended: yes unless more failed writes' revocations wait
    /// for the index than [`MAX_PENDING_REVOCATIONS`]; then they are tried on their own first
    /// (no other index write may come to carry them while client writes are refused).
    async fn failed_writes_recorded(&self) -> bool {
        let pending = &self.committer.pending_revocations;
        if pending.len() < MAX_PENDING_REVOCATIONS {
            return true;
        }
        // Copied, not taken out: while they are written, other writers still find them
        // waiting (and are refused), and an index write of the committer's carries them.
        let waiting = pending.snapshot();
        if waiting.is_empty() {
            return true;
        }
        let to_write = waiting.clone();
        let index = self.index.clone();
        let written =
            tokio::task::spawn_blocking(move || super::revoked::record_all(&index, to_write)).await;
        if !matches!(written, Ok(Ok(()))) {
            return false;
        }
        pending.remove_recorded(&waiting);
        true
    }

    /// Records (durably, before the failed write's caller hears of it) that the records of
    /// sequence number `seq`, in `zones`, are dead: see [`super::revoked`]. If the index does
    /// not take it, the next index write carries it ([`super::revoked::Pending`]).
    pub(crate) async fn revoke(&self, seq: u64, zones: &[ZoneId]) {
        let stamps =
            super::revoked::stamps(zones.iter().copied(), |zone| self.accounts.generation(zone));
        let index = self.index.clone();
        let revocation = super::revoked::Revocation::whole(stamps);
        let to_write = revocation.clone();
        let written =
            tokio::task::spawn_blocking(move || super::revoked::record(&index, seq, to_write))
                .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(
                seq,
                "recording that a failed write's records are dead failed: the next index write carries it"
            );
            self.committer.pending_revocations.add(seq, revocation);
        }
    }
}

/// Why an append failed, and the zones it was tried in (copies may be there).
pub(crate) struct AppendFailed {
    error: EngineError,
    attempted: Vec<ZoneId>,
    /// The holds on the copies that landed: let go only once their revocation is arranged
    /// (see [`super::revoked::Pending`]), so that no settled prefix passes them before.
    holds: ZoneHolds,
}

/// The first wait before a failed Finish is tried again, and the longest (doubling between).
const FINISH_RETRY_FIRST: Duration = Duration::from_millis(250);
const FINISH_RETRY_LAST: Duration = Duration::from_secs(30);

/// Finishes `zones` of `drives` in the background (frees their open and active resources).
/// A zone left unfinished keeps one of the drive's few active resources, so a Finish that
/// fails for a while (the drive unreachable, busy) is tried again for as long as placement
/// still owes it (until GC resets the zone, or the engine is gone).
fn finish_zones(placement: &Arc<Placement>, drives: &Drives, zones: Vec<ZoneId>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for zone in zones {
        let Some(drive) = drives.get(zone.drive).map(Arc::downgrade) else {
            continue;
        };
        let placement = Arc::downgrade(placement);
        runtime.spawn(async move {
            let mut wait = FINISH_RETRY_FIRST;
            loop {
                let (Some(owner), Some(drive)) = (placement.upgrade(), drive.upgrade()) else {
                    return;
                };
                match owner.begin_finish(zone) {
                    FinishTurn::Never => return,
                    FinishTurn::Later => {}
                    FinishTurn::Send => {
                        drop(owner);
                        let zslba = drive.geometry.zone_start(zone.zone);
                        let result = drive
                            .device
                            .manage_zones(ZoneAction::Finish, ZoneSelect::Zone(zslba))
                            .await;
                        drive.count_write_fault(&result);
                        let done = match result {
                            Ok(()) => true,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    zns::ZoneErrorKind::Unavailable
                                        | zns::ZoneErrorKind::MediaError
                                ) =>
                            {
                                if matches!(e.kind(), zns::ZoneErrorKind::Unavailable)
                                    && let Some(owner) = placement.upgrade()
                                {
                                    // Given up on, the Finish may still run on the target:
                                    // were GC to reset the zone meanwhile, it would make the
                                    // zone's next life Full.
                                    hold_while_in_doubt(&owner, zone);
                                }
                                tracing::debug!(drive = %drive.name, zone = zone.zone, "finishing a zone failed, trying again in {wait:?}: {e}");
                                false
                            }
                            Err(e) => {
                                tracing::warn!(drive = %drive.name, zone = zone.zone, "finishing a zone failed: {e}");
                                true
                            }
                        };
                        if let Some(owner) = placement.upgrade() {
                            owner.end_finish(zone, done);
                        }
                        if done {
                            return;
                        }
                    }
                }
                drop(drive);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(FINISH_RETRY_LAST);
            }
        });
    }
}

/// An append's reserved slot until its end is recorded. If the append is abandoned (whoever
/// awaited it was dropped, a client gone), the slot is recorded as failed on drop: otherwise
/// its zone would wait forever for an append that never reports, and never be sealed or
/// collected. (The zone is retired: where the abandoned data lands is unknown.)
struct SlotGuard {
    placement: Arc<Placement>,
    drives: Arc<Drives>,
    /// Cleared once the append has reported.
    slot: Option<Slot>,
}

impl SlotGuard {
    /// The append reported: its caller records its end.
    fn reported(&mut self) {
        self.slot = None;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        // The command may still be on its way to the drive (over the fabric it runs until the
        // target answers or the host gives up): GC leaves the zone alone meanwhile, or the
        // append could land in it after its reset. Held before the slot ends, which may seal
        // the zone.
        hold_while_in_doubt(
            &self.placement,
            ZoneId {
                drive: slot.drive,
                zone: slot.zone,
            },
        );
        if let Some(zone) = self.placement.complete(&slot, false) {
            finish_zones(&self.placement, &self.drives, vec![zone]);
        }
    }
}

/// How long GC leaves the zone of an append in doubt alone (abandoned, or given up on by the
/// host rather than failed by the drive): twice the NVMe/TCP host's command timeout, by which
/// time the command has landed or never will.
const ABANDONED_APPEND_HOLD: Duration = Duration::from_secs(60);

/// Keeps GC off `zone` for [`ABANDONED_APPEND_HOLD`]: an append to it may still land, and
/// after a reset it would land in the zone's next life, where nothing revokes it. (A reset the
/// host gave up on likewise: it may still land, after the zone was reset again and written.)
pub(crate) fn hold_while_in_doubt(placement: &Arc<Placement>, zone: ZoneId) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        placement.hold(zone);
        let placement = placement.clone();
        runtime.spawn(async move {
            tokio::time::sleep(ABANDONED_APPEND_HOLD).await;
            placement.release(zone);
        });
    }
}

/// Where a record's copies landed, and the holds that keep GC off their zones until the index
/// names them: keep it until the index commit is done.
#[derive(Debug)]
pub(crate) struct Appended {
    /// The copies.
    pub(crate) locations: Vec<Location>,
    /// Released on drop.
    pub(crate) holds: ZoneHolds,
}

/// What a stream becomes when it is finished.
#[derive(Debug, Clone)]
pub(crate) enum Purpose {
    /// The body of a PUT into the bucket created with sequence number `bucket_seq` (see
    /// [`Change::PutObject`]).
    Object {
        /// The bucket's creation.
        bucket_seq: u64,
    },
    /// A part of a multipart upload.
    Part {
        /// Upload.
        upload_id: u64,
        /// Part number.
        part_number: u32,
    },
}

/// A body ready for its commit: the extents appended, or the one record it fits in, not yet
/// appended (see [`PutWriter::finish_object`]).
struct Body {
    extents: Vec<NewExtent>,
    whole: Option<WholeBody>,
}

/// A small body's one record, finished and not yet appended.
struct WholeBody {
    record: Bytes,
    /// Payload bytes.
    length: u32,
}

/// The largest body kept back to be appended with its commit record (see
/// [`PutWriter::finish_object`]): what the pairing saves is a command per copy, which counts for
/// small objects; a larger body's record goes first, as before, and holds no budget while the
/// PUT waits for its name.
const PAIRED_BODY_MAX: usize = 64 << 10;

/// Streams a body into the log. Dropping it without [`PutWriter::finish_object`] abandons the body
/// (what was appended becomes garbage for GC).
pub struct PutWriter {
    engine: Arc<EngineInner>,
    bucket: String,
    key: String,
    purpose: Purpose,
    stream_id: u64,
    builder: Option<RecordBuilder>,
    offset: u64,
    in_flight: VecDeque<JoinHandle<EngineResult<(NewExtent, ZoneHolds)>>>,
    extents: Vec<NewExtent>,
    /// Keeps GC off the zones of the extents appended so far until the body is committed (or
    /// abandoned: dropping the writer releases them).
    holds: ZoneHolds,
    /// The write budget the current record holds.
    budget: Option<OwnedSemaphorePermit>,
    /// Whether the body has paused (see [`PutWriter::idle`]) and not filled a record since:
    /// its records then hold the least budget, one unit each.
    slow: bool,
}

impl std::fmt::Debug for PutWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutWriter")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("stream_id", &self.stream_id)
            .field("offset", &self.offset)
            .finish()
    }
}

impl PutWriter {
    pub(crate) fn new(
        engine: Arc<EngineInner>,
        bucket: &str,
        key: &str,
        purpose: Purpose,
    ) -> EngineResult<PutWriter> {
        let stream_id = engine.seq.next()?;
        let holds = ZoneHolds::new(engine.placement.clone());
        Ok(PutWriter {
            engine,
            bucket: bucket.to_string(),
            key: key.to_string(),
            purpose,
            stream_id,
            builder: None,
            offset: 0,
            in_flight: VecDeque::new(),
            extents: Vec::new(),
            holds,
            budget: None,
            slow: false,
        })
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.offset + self.builder.as_ref().map_or(0, |b| b.payload_len() as u64)
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes write budget for the next record: a whole record's worth when it is free, less
    /// when memory is short (the record is then smaller), waiting only when none is left.
    /// Waiting holds no budget, so writers never wait on each other in a cycle.
    async fn take_budget(&self) -> EngineResult<OwnedSemaphorePermit> {
        let semaphore = &self.engine.write_budget;
        let mut units = if self.slow {
            1
        } else {
            (self.engine.record_limit as usize)
                .div_ceil(BUDGET_UNIT)
                .max(1)
        };
        while units >= 1 {
            if let Ok(permit) = semaphore.clone().try_acquire_many_owned(units as u32) {
                return Ok(permit);
            }
            units /= 2;
        }
        // Bounded: a copy holds read budget while it waits here, and a copy waiting for read
        // budget may hold write budget; should they ever wait on each other, one of them gives
        // up (the client may retry) instead of both waiting for ever.
        match tokio::time::timeout(BUDGET_WAIT, semaphore.clone().acquire_many_owned(1)).await {
            Ok(permit) => {
                permit.map_err(|_| EngineError::Unavailable("the engine is shutting down".into()))
            }
            Err(_) => Err(EngineError::Unavailable(
                "the server is too busy to take more data now".into(),
            )),
        }
    }

    /// A builder for the next record, no larger than `budget_bytes` in memory.
    fn new_builder(&self, budget_bytes: usize) -> RecordBuilder {
        let header = Header {
            kind: Kind::Data,
            seq: self.stream_id,
            write_seq: self.stream_id,
            id: self.stream_id,
            offset: self.offset,
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            replaces: None,
        };
        let limit = (self.engine.record_limit as usize).min(budget_bytes);
        let capacity = record::payload_capacity(&self.bucket, &self.key, limit);
        RecordBuilder::new(&header, capacity, self.engine.block_size as usize)
    }

    /// Adds body bytes; appends extents as they fill.
    pub async fn write(&mut self, mut chunk: Bytes) -> EngineResult<()> {
        while chunk.has_remaining() {
            if self.builder.is_none() {
                let budget = self.take_budget().await?;
                self.builder = Some(self.new_builder(budget.num_permits() * BUDGET_UNIT));
                self.budget = Some(budget);
            }
            let builder = self.builder.as_mut().expect("just set");
            let n = chunk.len().min(builder.remaining());
            builder.payload_mut().extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            if builder.remaining() == 0 {
                // Filled without a pause: the body flows again, and the next record takes a
                // whole record's budget (few, large records for a large body).
                self.slow = false;
                self.seal().await?;
            }
        }
        Ok(())
    }

    /// The body has paused: the record being filled is sent on as it is (its budget comes
    /// back once it is on the drives), and the body goes on in records holding one budget unit
    /// each until one fills. A client that sends a byte now and then holds little, not a whole
    /// record's budget each, which a few dozen of them would take from everyone else.
    /// A record already filled on the least budget is kept: sending it would give back
    /// nothing worth a record of its own (each is padded to a block), and a client trickling
    /// a byte per pause would have a block written per byte.
    pub async fn idle(&mut self) -> EngineResult<()> {
        if self.slow && self.budget.as_ref().is_some_and(|b| b.num_permits() <= 1) {
            return Ok(());
        }
        self.slow = true;
        self.seal().await
    }

    /// Sends the current extent to the drives.
    async fn seal(&mut self) -> EngineResult<()> {
        let Some(builder) = self.builder.take() else {
            return Ok(());
        };
        let length = builder.payload_len() as u32;
        if length == 0 {
            return Ok(());
        }
        let offset = self.offset;
        self.offset += u64::from(length);
        let record = builder.finish();
        let engine = self.engine.clone();
        let stream_id = self.stream_id;
        let budget = self.budget.take();
        self.in_flight.push_back(tokio::spawn(async move {
            let _budget = budget;
            let Appended {
                locations: replicas,
                holds,
            } = engine
                .append_record(
                    record,
                    Class::User,
                    engine.replicas(),
                    engine.quorum(),
                    None,
                )
                .await?;
            let extent = NewExtent {
                stream_id,
                offset,
                extent: Extent { length, replicas },
            };
            Ok((extent, holds))
        }));
        while self.in_flight.len() >= IN_FLIGHT_PER_UPLOAD {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> EngineResult<()> {
        if let Some(task) = self.in_flight.pop_front() {
            let (extent, holds) = task
                .await
                .map_err(|e| EngineError::Internal(format!("append task failed: {e}")))??;
            self.extents.push(extent);
            self.holds.merge(holds);
        }
        Ok(())
    }

    /// The holds on the zones of the body's extents, for the commit that names them.
    fn take_holds(&mut self) -> ZoneHolds {
        std::mem::replace(
            &mut self.holds,
            ZoneHolds::new(self.engine.placement.clone()),
        )
    }

    async fn drain(&mut self) -> EngineResult<(Vec<NewExtent>, StreamRef)> {
        self.seal().await?;
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok((
            std::mem::take(&mut self.extents),
            StreamRef {
                stream_id: self.stream_id,
                length: self.offset,
            },
        ))
    }

    /// Makes the body an object version with `meta` (size and streams are filled in) if
    /// `condition` holds. Returns the manifest as stored.
    pub async fn finish_object(
        mut self,
        meta: ObjectMeta,
        condition: Condition,
    ) -> EngineResult<ObjectMeta> {
        let Purpose::Object { bucket_seq } = self.purpose else {
            return Err(EngineError::Internal(
                "finish_object on a part writer".into(),
            ));
        };
        // A body that fits in one record is kept back, to go to the drives with the commit
        // record: one append per copy instead of two. A larger one's records are appended as
        // they fill.
        let whole = match self.builder.take() {
            Some(builder)
                if self.offset == 0
                    && self.in_flight.is_empty()
                    && (1..=PAIRED_BODY_MAX).contains(&builder.payload_len()) =>
            {
                let length = builder.payload_len() as u32;
                // Out of the record-sized buffer, and the budget beyond it given back: the
                // name may be a while coming.
                let record = Bytes::copy_from_slice(&builder.finish());
                if let Some(permit) = self.budget.as_mut() {
                    let keep = record.len().div_ceil(BUDGET_UNIT).max(1);
                    drop(permit.split(permit.num_permits().saturating_sub(keep)));
                }
                Some(WholeBody { record, length })
            }
            other => {
                self.builder = other;
                None
            }
        };
        // Until the version's commit record is written, a client gone ends it: nothing claims
        // the name yet.
        let (extents, stream) = match &whole {
            Some(body) => (
                Vec::new(),
                StreamRef {
                    stream_id: self.stream_id,
                    length: u64::from(body.length),
                },
            ),
            None => self.drain().await?,
        };
        let engine = self.engine.clone();
        let lock = engine.names.object(&self.bucket, &self.key).await;
        engine.check_object_change(&self.bucket, &self.key, &condition, Some(bucket_seq))?;
        // From here it runs to its end.
        let body = Body { extents, whole };
        super::detached(self.commit_object(lock, body, stream, meta, condition, bucket_seq)).await
    }

    async fn commit_object(
        mut self,
        lock: super::names::ObjectLock,
        body: Body,
        stream: StreamRef,
        mut meta: ObjectMeta,
        condition: Condition,
        bucket_seq: u64,
    ) -> EngineResult<ObjectMeta> {
        let engine = self.engine.clone();
        meta.seq = engine.seq.next()?;
        meta.size = stream.length;
        meta.streams = vec![stream];
        meta.last_modified_ms = now_ms();
        let header = Header {
            kind: Kind::Commit,
            seq: meta.seq,
            write_seq: meta.seq,
            id: meta.seq,
            offset: 0,
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            replaces: None,
        };
        let commit_record = record::encode(&header, &meta.encode(), engine.block_size as usize);
        let (extents, commit, commit_holds) = match body.whole {
            Some(whole)
                if (whole.record.len() + commit_record.len()) as u64 <= engine.record_limit =>
            {
                self.append_with_commit(whole, &commit_record, meta.seq)
                    .await?
            }
            whole => {
                // Too large to go together: the body's record first.
                let mut extents = body.extents;
                if let Some(whole) = whole {
                    let Appended { locations, holds } = engine
                        .append_record(
                            whole.record,
                            Class::User,
                            engine.replicas(),
                            engine.quorum(),
                            None,
                        )
                        .await?;
                    self.holds.merge(holds);
                    extents.push(self.whole_extent(whole.length, locations));
                }
                let Appended { locations, holds } = engine
                    .append_claiming(commit_record, Kind::Commit, meta.seq)
                    .await?;
                (extents, locations, holds)
            }
        };
        let change = Change::PutObject {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            meta: meta.clone(),
            commit,
            extents,
            condition,
            bucket_seq: Some(bucket_seq),
        };
        let holds = vec![self.take_holds(), commit_holds];
        match engine.committer.submit_locked(change, holds, lock).await? {
            Outcome::Done | Outcome::Superseded | Outcome::NotFound => {}
        }
        engine
            .stats
            .puts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        engine
            .stats
            .user_bytes
            .fetch_add(meta.size, std::sync::atomic::Ordering::Relaxed);
        Ok(meta)
    }

    /// Appends the body's one record `whole` and `commit_record` (of sequence number `seq`)
    /// after it, in one append per copy. Returns the body's extent, where the commit record's
    /// copies landed, and the holds on their zones.
    async fn append_with_commit(
        &self,
        whole: WholeBody,
        commit_record: &Bytes,
        seq: u64,
    ) -> EngineResult<(Vec<NewExtent>, Vec<Location>, ZoneHolds)> {
        let block_size = self.engine.block_size;
        let body_blocks = (whole.record.len() as u64 / block_size) as u32;
        let commit_blocks = (commit_record.len() as u64 / block_size) as u32;
        let mut pair = BytesMut::with_capacity(whole.record.len() + commit_record.len());
        pair.extend_from_slice(&whole.record);
        pair.extend_from_slice(commit_record);
        let pair = pair.freeze();
        let Appended { locations, holds } =
            self.engine.append_claiming(pair, Kind::Commit, seq).await?;
        let replicas = locations
            .iter()
            .map(|l| Location {
                blocks: body_blocks,
                ..*l
            })
            .collect();
        let commit = locations
            .iter()
            .map(|l| Location {
                drive: l.drive,
                lba: l.lba + u64::from(body_blocks),
                blocks: commit_blocks,
            })
            .collect();
        Ok((
            vec![self.whole_extent(whole.length, replicas)],
            commit,
            holds,
        ))
    }

    /// The extent of a body whose one record (`length` payload bytes) landed at `replicas`.
    fn whole_extent(&self, length: u32, replicas: Vec<Location>) -> NewExtent {
        NewExtent {
            stream_id: self.stream_id,
            offset: 0,
            extent: Extent { length, replicas },
        }
    }

    /// Makes the body a part of its upload, with ETag `etag` and `checksums`.
    pub async fn finish_part(
        mut self,
        etag: String,
        checksums: Vec<super::model::Checksum>,
    ) -> EngineResult<PartEntry> {
        let Purpose::Part {
            upload_id,
            part_number,
        } = self.purpose
        else {
            return Err(EngineError::Internal(
                "finish_part on an object writer".into(),
            ));
        };
        // As for an object: a client gone before the part's record is written ends it.
        let (extents, stream) = self.drain().await?;
        let engine = self.engine.clone();
        let lock = engine.names.part(&self.bucket, &self.key).await;
        if engine.index.upload(upload_id)?.is_none() {
            return Err(EngineError::NoSuchUpload(format!("{upload_id:016x}")));
        }
        let commit = self.commit_part(
            lock,
            (upload_id, part_number),
            extents,
            stream,
            (etag, checksums),
        );
        super::detached(commit).await
    }

    async fn commit_part(
        mut self,
        lock: super::names::PartLock,
        (upload_id, part_number): (u64, u32),
        extents: Vec<NewExtent>,
        stream: StreamRef,
        (etag, checksums): (String, Vec<super::model::Checksum>),
    ) -> EngineResult<PartEntry> {
        let engine = self.engine.clone();
        let seq = engine.seq.next()?;
        let mut part = PartEntry {
            part_number,
            seq,
            etag,
            size: stream.length,
            stream_id: stream.stream_id,
            checksums,
            last_modified_ms: now_ms(),
            location: Vec::new(),
        };
        let header = Header {
            kind: Kind::Part,
            seq,
            write_seq: seq,
            id: upload_id,
            offset: u64::from(part_number),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            replaces: None,
        };
        let Appended { locations, holds } = engine.append_small(&header, &part.payload()).await?;
        part.location = locations;
        engine
            .committer
            .submit_locked(
                Change::PutPart {
                    upload_id,
                    part: part.clone(),
                    extents,
                },
                vec![self.take_holds(), holds],
                lock,
            )
            .await?;
        engine
            .stats
            .user_bytes
            .fetch_add(part.size, std::sync::atomic::Ordering::Relaxed);
        Ok(part)
    }
}

impl Drop for PutWriter {
    fn drop(&mut self) {
        // Appends still running complete on their own; their records are garbage.
        for task in self.in_flight.drain(..) {
            drop(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::drives::Drive;
    use crate::engine::placement::ZoneSnapshot;
    use std::sync::atomic::{AtomicU32, Ordering};
    use zns::{EmulatedZns, Geometry, ReportFilter, ZoneError, ZoneState, ZonedDevice};

    /// A drive unreachable for minutes (past any backoff) still gets its Finish once it is
    /// back: an unfinished zone would hold one of its few active resources for good, and
    /// enough of them would refuse every new zone with Too Many Active Zones.
    #[tokio::test(start_paused = true)]
    async fn a_finish_failing_for_minutes_is_tried_until_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 64 << 10);
        let emulated = Arc::new(EmulatedZns::create(dir.path(), g).unwrap());
        emulated
            .append(0, Bytes::from(vec![7u8; g.block_size as usize]))
            .await
            .unwrap();
        let attempts = Arc::new(AtomicU32::new(0));
        let mut device = zns::testing::Intercepted::new(emulated.clone());
        device.instead_of_manage = Box::new({
            let attempts = attempts.clone();
            move |action, _| {
                let away =
                    action == ZoneAction::Finish && attempts.fetch_add(1, Ordering::SeqCst) < 20;
                away.then(|| Err(ZoneError::Unavailable("unreachable".into())))
            }
        });
        let drives = Drives::new(vec![Arc::new(Drive::new(
            0,
            "d".into(),
            Arc::new(device) as Arc<dyn ZonedDevice>,
        ))]);
        let mut zones = vec![
            ZoneSnapshot {
                state: ZoneState::Empty,
                written: 0,
                settled: 0,
            };
            4
        ];
        zones[0] = ZoneSnapshot {
            state: ZoneState::ImplicitlyOpened,
            written: 1,
            settled: 1,
        };
        let (placement, to_finish) = Placement::new(&drives, vec![Some(zones)]);
        let placement = Arc::new(placement);
        let zone = ZoneId { drive: 0, zone: 0 };
        assert_eq!(to_finish, vec![zone]);
        finish_zones(&placement, &drives, to_finish);
        let full = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let report = emulated
                    .report_zones(0, ReportFilter::All, 1)
                    .await
                    .unwrap();
                if report.zones[0].state == ZoneState::Full {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), full)
            .await
            .expect("the zone was finished once the drive came back");
        assert_eq!(attempts.load(Ordering::SeqCst), 21);
        assert_eq!(placement.begin_finish(zone), FinishTurn::Never);
    }
}
