//! How long the engine waits for one copy of a record before it turns to the others: a read
//! of a copy that is slow has another copy read too (a hedge), and copies of a write beyond
//! those it needs are given up on once they lag the others by a grace (repair makes them
//! again). A drive that hangs or fails slow thus holds no request up for long.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// How many times as long as the copies a write needed took the others are waited for, when
/// that is longer than [`Patience::slow_write_grace`] (a disk busy for every drive is not a
/// slow one).
const GRACE_PER_NEEDED: u32 = 4;

/// How long the engine waits for one copy before it turns to the others: set to the latency
/// the drives and network of a deployment are expected to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// How long a read of one copy may take before another copy is read too, the first good
    /// answer served (a hedged read).
    pub hedge_after: Duration,
    /// How long the copies of a write beyond those it needs are waited for at least, once those
    /// it needs are made (see [`Patience::for_stragglers`]).
    pub slow_write_grace: Duration,
}

impl Default for Patience {
    /// Far above what a read or write of a healthy drive takes (a record is at most a couple of
    /// MiB), so that a hedge or a copy left out costs something only when a drive is wrong.
    fn default() -> Self {
        Patience {
            hedge_after: Duration::from_millis(500),
            slow_write_grace: Duration::from_secs(1),
        }
    }
}

impl Patience {
    /// How long the copies of a write (its appends, its flushes) that it can do without are
    /// waited for once those it needs are made, `needed` after the write began: past that,
    /// their drive is too slow (see [`super::drives::Drive::note_too_slow`]), and repair makes the copies
    /// again elsewhere or later.
    pub fn for_stragglers(&self, needed: Duration) -> Duration {
        self.slow_write_grace
            .max(needed.saturating_mul(GRACE_PER_NEEDED))
    }
}

/// The deadline passed before anything answered (see [`next_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

/// The next of `running` to answer (None once none is left), waiting no later than `deadline`
/// if there is one. An answer ready with the deadline is taken.
pub async fn next_by<S: Stream + Unpin>(
    running: &mut S,
    deadline: Option<Instant>,
) -> Result<Option<S::Item>, DeadlinePassed> {
    match deadline {
        Some(at) => tokio::select! {
            biased;
            next = running.next() => Ok(next),
            () = tokio::time::sleep_until(at) => Err(DeadlinePassed),
        },
        None => Ok(running.next().await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_straggler_grace_grows_with_a_write_that_was_slow_for_every_drive() {
        let patience = Patience::default();
        assert_eq!(
            patience.for_stragglers(Duration::from_millis(3)),
            patience.slow_write_grace
        );
        assert_eq!(
            patience.for_stragglers(Duration::from_secs(1)),
            Duration::from_secs(4)
        );
    }

    #[tokio::test]
    async fn an_answer_is_waited_for_until_the_deadline_only() {
        let answer = |after: Duration, value: u8| async move {
            tokio::time::sleep(after).await;
            value
        };
        let mut running = futures::stream::FuturesUnordered::new();
        running.push(answer(Duration::from_secs(60), 1));
        running.push(answer(Duration::ZERO, 2));
        let soon = Some(Instant::now() + Duration::from_millis(50));
        assert_eq!(next_by(&mut running, soon).await, Ok(Some(2)));
        assert_eq!(next_by(&mut running, soon).await, Err(DeadlinePassed));
        let mut none: futures::stream::FuturesUnordered<std::future::Ready<u8>> =
            futures::stream::FuturesUnordered::new();
        assert_eq!(next_by(&mut none, None).await, Ok(None));
    }
}
