//! The flushes of one commit group: every drive the group's records went to is flushed, and a
//! drive that answers but too slowly (a disk failing slow behind a live target) holds the group
//! up only while the group cannot do without it. Once some flushes are made and they leave every
//! client change a write quorum of copies (and no GC or repair change needs the others), the
//! others get a grace (see [`Patience::for_stragglers`]) before their drives count as
//! failed for the group: their copies are left out as after a failed flush, and repair makes
//! them again. A group whose flushes all run slow (a disk busy for every drive) waits for them:
//! no drive is slower than the others.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::drives::Drives;
use super::model::DriveId;
use super::patience::{Patience, next_by};

/// Flushes `touched` of `drives`; returns the drives whose flush failed, or was not waited for,
/// with why. `can_do_without(unflushed)` says whether the group's changes may go on without
/// the copies on the drives not flushed yet (see the module documentation); `patience` says
/// how long the others are waited for then.
pub async fn flush_drives(
    drives: &Drives,
    touched: &BTreeSet<DriveId>,
    patience: Patience,
    can_do_without: impl Fn(&BTreeSet<DriveId>) -> bool,
) -> HashMap<DriveId, String> {
    let started = Instant::now();
    let mut running: FuturesUnordered<_> = touched
        .iter()
        .map(|&d| flush_one(drives, d, patience))
        .collect();
    let mut unflushed: BTreeSet<DriveId> = touched.clone();
    let mut failed = HashMap::new();
    let mut give_up_at: Option<Instant> = None;
    loop {
        // (Without the failed drives' copies too: a change that needs the slow drive's copies
        // after a flush failed elsewhere waits for them.)
        if give_up_at.is_none()
            && !unflushed.is_empty()
            && unflushed.len() < touched.len()
            && can_do_without(&unflushed.iter().chain(failed.keys()).copied().collect())
        {
            give_up_at = Some(Instant::now() + patience.for_stragglers(started.elapsed()));
        }
        let Ok(next) = next_by(&mut running, give_up_at).await else {
            break;
        };
        let Some((d, result)) = next else {
            return failed;
        };
        unflushed.remove(&d);
        if let Err(why) = result {
            failed.insert(d, why);
        }
    }
    // The rest are not waited for: their flushes are dropped (one the drive runs still lands;
    // the copies it would have vouched for are left out all the same).
    let waited = started.elapsed();
    for d in unflushed {
        let name = match drives.get(d) {
            Some(drive) => {
                drive.note_too_slow("flush", waited);
                drive.name.clone()
            }
            None => format!("drive {d}"),
        };
        failed.insert(
            d,
            format!(
                "{name}: too slow (no flush in {} ms, while the other copies were flushed)",
                waited.as_millis()
            ),
        );
    }
    failed
}

/// Flushes drive `d`: the result, named by the drive.
fn flush_one(
    drives: &Drives,
    d: DriveId,
    patience: Patience,
) -> impl Future<Output = (DriveId, Result<(), String>)> {
    let drive = drives.get(d).cloned();
    async move {
        match drive {
            // Not waited for: a flush would wait for the connection to come back (for seconds,
            // the whole committer with it), and could not vouch for what was appended before it
            // was lost anyway (see `sessions_changed`): the copies there are left out, as after
            // a failed flush.
            Some(drive) if !drive.device.is_available() => {
                (d, Err(format!("{}: not connected", drive.name)))
            }
            Some(drive) => {
                let began = Instant::now();
                let result = drive.device.flush().await;
                drive.note_flush(&result);
                // (One waited for only because the group could not do without it is no sign
                // the drive is well again.)
                if result.is_ok() && began.elapsed() < patience.slow_write_grace {
                    drive.note_timely_flush();
                }
                (d, result.map_err(|e| format!("{}: {e}", drive.name)))
            }
            None => (d, Err(format!("unknown drive {d}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::engine::drives::Drive;

    /// Two drives whose flushes take `delays`.
    fn drives_flushing_in(dir: &std::path::Path, delays: [Duration; 2]) -> Drives {
        let list = delays
            .iter()
            .enumerate()
            .map(|(i, &delay)| {
                let g = zns::Geometry::new(4, 1 << 20);
                let inner =
                    Arc::new(zns::EmulatedZns::create(&dir.join(i.to_string()), g).unwrap());
                let mut device = zns::testing::Intercepted::new(inner);
                device.before_flush = Box::new(move || {
                    Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        Ok(())
                    })
                });
                Arc::new(Drive::new(i as DriveId, format!("d{i}"), Arc::new(device)))
            })
            .collect();
        Drives::new(list)
    }

    /// A drive far slower than the other is not waited for when the group can do without it:
    /// it is said too slow, and new writes skip it.
    #[tokio::test]
    async fn a_drive_far_slower_than_the_others_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let drives = drives_flushing_in(dir.path(), [Duration::ZERO, Duration::from_secs(60)]);
        let failed = tokio::time::timeout(
            Duration::from_secs(10),
            flush_drives(
                &drives,
                &BTreeSet::from([0, 1]),
                Patience::default(),
                |_| true,
            ),
        )
        .await
        .expect("the slow drive was waited for");
        assert_eq!(failed.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(failed[&1].contains("too slow"), "{}", failed[&1]);
        let slow = drives.get(1).unwrap();
        assert!(!slow.is_writable());
        assert!(drives.get(0).unwrap().is_writable());
    }

    /// Flushes that all run slow (a disk busy for every drive) are waited for, nor is one the
    /// group cannot do without given up on.
    #[tokio::test]
    async fn flushes_all_slow_or_needed_are_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Duration::from_millis(800);
        let drives = drives_flushing_in(dir.path(), [slow, slow]);
        let failed = flush_drives(
            &drives,
            &BTreeSet::from([0, 1]),
            Patience::default(),
            |_| true,
        )
        .await;
        assert!(failed.is_empty(), "{failed:?}");
        let drives = drives_flushing_in(&dir.path().join("second"), [Duration::ZERO, slow]);
        let failed = flush_drives(
            &drives,
            &BTreeSet::from([0, 1]),
            Patience::default(),
            |_| false,
        )
        .await;
        assert!(failed.is_empty(), "{failed:?}");
        assert!(drives.all().iter().all(|d| d.is_writable()));
    }
}
