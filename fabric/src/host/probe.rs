//! Telling a stopped target from a slow one, fast. A target that stops answering without
//! closing its connections (a frozen process, a network that drops everything) would otherwise
//! hold every command in flight until the next Keep Alive goes unanswered (seconds: up to three
//! quarters of the keep-alive timeout after a send every half of it), and a replicated write
//! waits for all its copies meanwhile. So when an I/O command has waited
//! [`HostConfig::probe_after`] with nothing at all heard on its queue for as long, the host
//! sends a Keep Alive at once: a target that is alive answers it on its admin queue whatever its
//! drive is busy with (a long flush is no reason to give up on it), and one that does not answer
//! within [`HostConfig::probe_answer_within`] has its session failed, so the commands in flight
//! fail now (their callers go to other drives) and the host reconnects.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::admin;
use super::queue::HostQueue;
use super::{HostConfig, HostError};

/// How often the I/O queues are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The probing task of a session, stopped when dropped.
pub(crate) struct Prober(Option<tokio::task::JoinHandle<()>>);

impl Prober {
    /// Starts probing the target behind `admin_q` for the I/O queues `io` (none if the
    /// configuration asks for no probe, or there are no I/O queues).
    pub(crate) fn start(
        config: &HostConfig,
        admin_q: &Arc<HostQueue>,
        io: &[Arc<HostQueue>],
    ) -> Self {
        let quiet = config.probe_after;
        let answer_within = config.probe_answer_within;
        if quiet.is_zero() || io.is_empty() {
            return Prober(None);
        }
        let admin_q = Arc::downgrade(admin_q);
        let io: Vec<Weak<HostQueue>> = io.iter().map(Arc::downgrade).collect();
        Prober(Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOOK_EVERY).await;
                let now = Instant::now();
                let mut waiting = false;
                for queue in &io {
                    let Some(queue) = queue.upgrade() else { return };
                    waiting |= queue.waiting_unheard(now, quiet);
                }
                if !waiting {
                    continue;
                }
                let Some(admin_q) = admin_q.upgrade() else {
                    return;
                };
                // (The command's own deadline is later: the queue's watchdog would fail the
                // queue first, saying less.)
                let sent = Instant::now();
                let probe = admin::keep_alive(&admin_q, answer_within * 2);
                let answered = tokio::time::timeout(answer_within, probe).await;
                // Any answer, an error status too (a controller without a keep-alive timer
                // refuses the command), says the target is alive; so does anything heard
                // since the probe went out (this host's own threads may have been too busy to
                // take the answer in time).
                let alive = match &answered {
                    Ok(Ok(())) | Ok(Err(HostError::Refused { .. })) => true,
                    _ => admin_q.heard_since(sent),
                };
                if !alive {
                    let why = match answered {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("none within {answer_within:?}"),
                    };
                    admin_q.fail(format!(
                        "the target stopped answering: a command waited {quiet:?} with nothing heard from it, and a Keep Alive sent then got no answer ({why})"
                    ));
                    return;
                }
                // Alive (the drive is slow): looked at again once the same silence could have
                // passed anew.
                tokio::time::sleep(quiet).await;
            }
        })))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
