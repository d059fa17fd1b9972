//! Surveying drives: reading their zones at start (or when a drive that was unreachable at
//! start answers) and checking them against the index.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use zns::ZoneState;

use super::commit::{Change, ZoneAccounts};
use super::drives::Drive;
use super::error::EngineResult;
use super::index::{Index, cf};
use super::model::{DriveId, ZoneId};
use super::placement::ZoneSnapshot;
use super::{EngineInner, Reconciliation};
use super::{registry, settled};

/// Reads a drive's zones and checks them against the index: zones the index counts data in
/// but that are empty are reported (or, holding nothing live, queued in `resets` to be recorded
/// as reset); an index pointing past a write pointer is reported loudly. Returns the snapshot
/// placement starts from. First of all the drive must be the one the index knows by its name
/// ([`WrongDrive`](super::error::EngineError::WrongDrive) otherwise); a drive whose identity
/// was never recorded gets it recorded once found holding what the index expects; a drive this
/// index never used must come empty
/// ([`ForeignData`](super::error::EngineError::ForeignData) otherwise).
pub(super) async fn survey(
    drive: &Drive,
    index: &Index,
    accounts: &ZoneAccounts,
    reconciliation: &mut Reconciliation,
    resets: &mut Vec<ZoneId>,
) -> EngineResult<Vec<ZoneSnapshot>> {
    registry::confirm_identity(index, drive, false)?;
    let broken_before = reconciliation.broken_zones.len();
    let report = drive.report_all_zones().await?;
    registry::check_first_use(index, drive, &report.zones)?;
    let mut zones = Vec::with_capacity(report.zones.len());
    for (i, z) in report.zones.iter().enumerate() {
        let zone = ZoneId {
            drive: drive.id,
            zone: i as u32,
        };
        let account = accounts.get(zone);
        let written = drive.written_blocks(i as u32, z)?;
        let end = drive.geometry.zone_start(i as u32) + written;
        let settled = settled_prefix(index, zone, account.generation)?;
        // A zone the index counts live data in, found empty, is left out until the index is
        // rebuilt: written again, its new records would be counted with the lost ones (GC
        // would never find it free of them), and what the index keeps of its old life (reset
        // generation, zones hidden in it) would pass for its new one's.
        let mut quarantined = false;
        // Empty on the drive, yet the index knew it held records (indexed ones, or only
        // records settled there: a zone of orphans GC reset): the reset was not recorded.
        if z.state == ZoneState::Empty
            && (account.max_indexed_end > 0 || account.valid_bytes > 0 || settled > 0)
        {
            if account.valid_bytes > 0 {
                tracing::error!(
                    ?zone,
                    valid = account.valid_bytes,
                    "zone is empty on the drive but the index counts live data in it: data lost; the zone takes no writes until `zonestore recover --rebuild-index`"
                );
                reconciliation.broken_zones.push(zone);
                quarantined = true;
            } else {
                resets.push(zone);
            }
        } else if account.max_indexed_end > end && z.state != ZoneState::Full {
            tracing::error!(
                ?zone,
                indexed_end = account.max_indexed_end,
                write_pointer = end,
                "the index points past the zone's write pointer: acknowledged data may be missing"
            );
            reconciliation.broken_zones.push(zone);
        }
        let settled = if z.state == ZoneState::Empty {
            forget_settled(index, zone)?;
            0
        } else {
            settled
        };
        let written_bytes = written * drive.block_size();
        reconciliation.unindexed_bytes += written_bytes.saturating_sub(account.valid_bytes);
        zones.push(ZoneSnapshot {
            state: if quarantined {
                ZoneState::Offline
            } else {
                z.state
            },
            written,
            settled,
        });
    }
    if reconciliation.broken_zones.len() == broken_before {
        registry::confirm_identity(index, drive, true)?;
        registry::accept_first_use(index, drive)?;
    }
    Ok(zones)
}

/// How far the index says `zone` is settled (see [`super::settled`]): 0 if it does not know,
/// or knew it before the zone's last reset.
pub(super) fn settled_prefix(index: &Index, zone: ZoneId, generation: u64) -> EngineResult<u64> {
    let raw = index.get_raw(cf::META, &settled::key(zone))?;
    Ok(match raw.as_deref().and_then(settled::decode) {
        Some((g, prefix)) if g == generation => prefix,
        _ => 0,
    })
}

/// Drops what the index says of how far an empty zone is settled: the zone was reset without
/// the index hearing of it (the server stopped in between), and records will land in it from
/// its start again.
fn forget_settled(index: &Index, zone: ZoneId) -> EngineResult<()> {
    registry::forget(index, settled::key(zone))
}

/// How often a drive found foreign (or faulty) is looked at again.
const FOREIGN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Attaches a drive that was unreachable when the engine opened, once it answers.
pub(super) async fn attach_when_reachable(engine: Weak<EngineInner>, drive: DriveId) {
    // After each failed attach the next waits twice as long (up to FOREIGN_RETRY): one that
    // keeps failing (the index, a drive that answers its report but not its replay) is not
    // tried again five times a second, each time reading all the drive's zones. Whether the
    // drive answers is still looked at every 200 ms.
    let mut backoff = Duration::from_millis(100);
    let mut next_try = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tokio::time::Instant::now() < next_try {
            continue;
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let Some(d) = inner.drives.get(drive).cloned() else {
            return;
        };
        if !d.device.is_available() {
            continue;
        }
        let was_foreign = d.foreign.load(Ordering::SeqCst);
        match inner.attach_drive(&d).await {
            Ok(()) => return,
            Err(e) if e.is_foreign_drive() => {
                // Said once; tried again now and then, for the right drive may come back.
                if !was_foreign {
                    tracing::error!("{e}");
                }
                drop(inner);
                tokio::time::sleep(FOREIGN_RETRY).await;
            }
            Err(e) => {
                backoff = (backoff * 2).min(FOREIGN_RETRY);
                next_try = tokio::time::Instant::now() + backoff;
                // A drive found to be another (one registered under another name) is said
                // once, like a wrong drive, and looked at again now and then.
                let foreign = d.foreign.load(Ordering::SeqCst);
                if !(foreign && was_foreign) {
                    tracing::warn!(drive = %d.name, "attaching the drive failed: {e}");
                }
                if e.is_drive_fault() || foreign {
                    // Not a moment's unavailability: looked at again now and then.
                    drop(inner);
                    tokio::time::sleep(FOREIGN_RETRY).await;
                }
            }
        }
    }
}

impl EngineInner {
    /// Surveys a drive that was unreachable at start (nothing was written to it since) and
    /// lets placement, GC and reads use it.
    async fn attach_drive(&self, drive: &Drive) -> EngineResult<()> {
        let mut reconciliation = Reconciliation::default();
        let mut resets = Vec::new();
        let zones = survey(
            drive,
            &self.index,
            &self.accounts,
            &mut reconciliation,
            &mut resets,
        )
        .await?;
        for zone in resets {
            self.committer.submit(Change::ZoneReset(zone)).await?;
        }
        let to_finish = self.placement.attach_drive(drive.id, zones);
        // What a crash left on it without its index change (before its open zones are
        // finished: their write pointers say where the records end).
        self.replay_copies_of(drive.id).await?;
        self.finish_zones(to_finish);
        drive.attached.store(true, Ordering::SeqCst);
        if !reconciliation.broken_zones.is_empty() {
            tracing::error!(drive = %drive.name, zones = ?reconciliation.broken_zones, "index and drive disagree; run `zonestore recover --rebuild-index`");
            // As at start-up: the lost copies are made again from whole ones now.
            self.repair.scrub();
        }
        tracing::info!(
            drive = %drive.name,
            unindexed_mib = reconciliation.unindexed_bytes >> 20,
            "drive attached"
        );
        Ok(())
    }
}
