//! Multipart uploads left unfinished too long are aborted, so that their parts' space comes
//! back. A client that crashes in the middle of an upload (a training job killed, a laptop
//! closed) never aborts it, and S3 keeps such parts until a lifecycle rule or an operator ends
//! them: on a store without lifecycle rules they would hold zones forever. An upload older than
//! [`super::EngineConfig::abort_uploads_after`] (counted from its initiation, as S3's
//! `AbortIncompleteMultipartUpload` counts) is aborted as a client's abort would: its parts
//! become garbage for GC, and a Complete or UploadPart naming it gets NoSuchUpload.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::error::{EngineError, EngineResult};
use super::{Engine, EngineInner};

/// Uploads read from the index at a time while looking for expired ones.
const PAGE: usize = 256;

/// Longest time between two looks for expired uploads.
const LONGEST_INTERVAL: Duration = Duration::from_secs(3600);

/// Shortest time between two looks.
const SHORTEST_INTERVAL: Duration = Duration::from_secs(1);

/// How often uploads are looked over for `expiry`: a quarter of it (an upload outlives its
/// expiry by at most that much), from a second to an hour.
pub(crate) fn interval(expiry: Duration) -> Duration {
    (expiry / 4).clamp(SHORTEST_INTERVAL, LONGEST_INTERVAL)
}

/// Aborts every upload initiated at `cutoff_ms` (milliseconds since the epoch) or before;
/// returns how many it aborted. An upload that ends meanwhile (completed or aborted by its
/// client) is passed over; one whose abort fails (no drive to log it on) is left for the next
/// look.
pub(crate) async fn abort_initiated_by(engine: &Engine, cutoff_ms: u64) -> EngineResult<usize> {
    let mut aborted = 0;
    let mut after = None;
    loop {
        let page = engine.inner.index.uploads_by_id(after, PAGE)?;
        let Some(last) = page.last() else {
            return Ok(aborted);
        };
        after = Some(last.upload_id);
        for upload in page {
            if upload.template.last_modified_ms > cutoff_ms {
                continue;
            }
            // A backlog of thousands must not hold a shutdown up.
            if engine.inner.repair.is_closed() {
                return Ok(aborted);
            }
            match engine.abort_upload(upload.upload_id).await {
                Ok(()) => {
                    aborted += 1;
                    engine
                        .inner
                        .stats
                        .uploads_expired
                        .fetch_add(1, Ordering::Relaxed);
                    let age =
                        super::commit::now_ms().saturating_sub(upload.template.last_modified_ms);
                    tracing::info!(
                        bucket = %upload.bucket,
                        key = %upload.key,
                        upload_id = %format!("{:016x}", upload.upload_id),
                        age_hours = age / 3_600_000,
                        "aborted a multipart upload left unfinished"
                    );
                }
                Err(EngineError::NoSuchUpload(_)) => {}
                Err(e) => tracing::warn!(
                    bucket = %upload.bucket,
                    key = %upload.key,
                    "aborting a multipart upload left unfinished failed ({e}); trying again later"
                ),
            }
        }
    }
}

/// Starts the task that aborts uploads older than `expiry`; it ends when the engine is dropped
/// or shut down.
pub(crate) fn spawn(engine: Weak<EngineInner>, expiry: Duration) {
    let Some(strong) = engine.upgrade() else {
        return;
    };
    let every = interval(expiry);
    let stopped = strong.repair.stopped();
    let task = tokio::spawn(async move {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => return,
                () = tokio::time::sleep(every) => {}
            }
            let Some(inner) = engine.upgrade() else {
                return;
            };
            let engine = Engine { inner };
            let cutoff = super::commit::now_ms()
                .saturating_sub(expiry.as_millis().min(u128::from(u64::MAX)) as u64);
            if let Err(e) = abort_initiated_by(&engine, cutoff).await {
                tracing::warn!("looking for multipart uploads left unfinished failed: {e}");
            }
        }
    });
    strong.repair.adopt(task);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_looked_over_four_times_an_expiry_within_a_second_and_an_hour() {
        assert_eq!(interval(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(interval(Duration::from_millis(100)), SHORTEST_INTERVAL);
        assert_eq!(
            interval(Duration::from_secs(7 * 24 * 3600)),
            LONGEST_INTERVAL
        );
    }
}
