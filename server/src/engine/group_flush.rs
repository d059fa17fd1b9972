//! The flushes of one commit group: every drive the group's records went to is flushed, and a
//! drive that answers but too slowly (a disk failing slow behind a live target) holds the group
//! up only while the group cannot do without it. Once the flushes made leave every change enough
//! copies, the others get [`SLOW_FLUSH_GRACE`] (or a few times as long as the group has taken,
//! if longer) before their drives count as failed for the group: their copies are left out as
//! after a failed flush, and repair makes them again.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::drives::Drives;
use super::model::DriveId;

/// How long flushes a group can do without are waited for once the others are made (at least:
/// see [`grace_after`]).
pub const SLOW_FLUSH_GRACE: Duration = Duration::from_millis(500);

/// How many times as long as the group's needed flushes took the others are waited for, when
/// that is longer than [`SLOW_FLUSH_GRACE`] (a disk busy for all its drives is not a slow one).
const GRACE_PER_NEEDED: u32 = 4;

/// The wait for the flushes a group can do without, once those it needs took `needed`.
fn grace_after(needed: Duration) -> Duration {
    SLOW_FLUSH_GRACE.max(needed.saturating_mul(GRACE_PER_NEEDED))
}

/// Flushes `touched` of `drives`; returns the drives whose flush failed, or was not waited for,
/// with why. `can_do_without(unflushed)` says whether the group's changes may go on without
/// the copies on the drives not flushed yet (see the module documentation).
pub async fn flush_drives(
    drives: &Drives,
    touched: &BTreeSet<DriveId>,
    can_do_without: impl Fn(&BTreeSet<DriveId>) -> bool,
) -> HashMap<DriveId, String> {
    let started = Instant::now();
    let mut running: FuturesUnordered<_> = touched.iter().map(|&d| flush_one(drives, d)).collect();
    let mut unflushed: BTreeSet<DriveId> = touched.clone();
    let mut failed = HashMap::new();
    let mut give_up_at: Option<Instant> = None;
    loop {
        // (Without the failed drives' copies too: a change that needs the slow drive's copies
        // after a flush failed elsewhere waits for them.)
        if give_up_at.is_none()
            && !unflushed.is_empty()
            && can_do_without(&unflushed.iter().chain(failed.keys()).copied().collect())
        {
            give_up_at = Some(Instant::now() + grace_after(started.elapsed()));
        }
        let next = match give_up_at {
            Some(at) => tokio::select! {
                next = running.next() => next,
                () = tokio::time::sleep_until(at) => break,
            },
            None => running.next().await,
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
                drive.note_slow_flush();
                drive.name.clone()
            }
            None => format!("drive {d}"),
        };
        tracing::warn!(
            drive = %name,
            "flush not made in {} ms: the drive is slow; its copies are left out (repair makes them again) and new writes skip it for a while",
            waited.as_millis()
        );
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
fn flush_one(drives: &Drives, d: DriveId) -> impl Future<Output = (DriveId, Result<(), String>)> {
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
                let result = drive.device.flush().await;
                drive.note_flush(&result);
                if result.is_ok() {
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
    use super::*;

    #[test]
    fn the_grace_grows_with_a_group_that_was_slow_for_every_drive() {
        assert_eq!(grace_after(Duration::from_millis(3)), SLOW_FLUSH_GRACE);
        assert_eq!(grace_after(Duration::from_secs(1)), Duration::from_secs(4));
    }
}
