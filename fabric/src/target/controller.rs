//! A controller: what one host's association with a subsystem holds — properties (CC, CSTS),
//! features, held Asynchronous Event Requests, its I/O queues and its keep-alive timer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::TargetInner;
use super::queue::QueueCtx;
use super::subsystem::Subsystem;
use crate::spec::property;
use crate::wire::status::Status;

/// An Asynchronous Event Request the controller holds until an event, a reset or teardown.
pub(crate) struct HeldAer {
    pub(crate) cid: u16,
    /// The admin queue it came on (weak: the queue holds the controller).
    pub(crate) queue: Weak<QueueCtx>,
}

impl HeldAer {
    /// Completes the request with `status` (nothing is sent on a connection that is closing).
    fn answer(self, status: Status) {
        if let Some(queue) = self.queue.upgrade() {
            queue.answer_held(self.cid, status);
        }
    }
}

/// One controller of a subsystem.
pub(crate) struct Controller {
    pub(crate) cntlid: u16,
    pub(crate) subsystem: Arc<Subsystem>,
    pub(crate) hostnqn: String,
    pub(crate) hostid: [u8; 16],
    cc: AtomicU32,
    csts: AtomicU32,
    kato_ms: AtomicU32,
    pub(crate) aec: AtomicU32,
    /// Granted I/O queues, 0's based, as Set Features Number of Queues returns (NCQA << 16 |
    /// NSQA); `u32::MAX` until the host asks.
    pub(crate) queues_granted: AtomicU32,
    /// The I/O queues connected, by QID.
    pub(crate) io_queues: Mutex<HashSet<u16>>,
    /// Moved on by each Controller Level Reset, which deletes the I/O queues: a queue's
    /// connection ends once it moves on from the value the queue was connected in (changed
    /// only with `io_queues` locked).
    io_generation: watch::Sender<u64>,
    pub(crate) aers: Mutex<Vec<HeldAer>>,
    shutdown: watch::Sender<bool>,
    /// Milliseconds since `epoch` of the last command (traffic based keep alive).
    last_activity: AtomicU64,
    epoch: Instant,
    /// Whether the keep-alive watchdog runs (one per controller, however often the host
    /// toggles CC.EN).
    keep_alive_started: AtomicBool,
    /// I/O commands running on the controller's queues (from before their ready check to
    /// their end): a shutdown waits for them before its flush.
    io_running: AtomicUsize,
    /// Notified when `io_running` falls to 0.
    io_idle: Notify,
}

/// Why an I/O queue's Connect is refused (see [`Controller::add_io_queue`]).
pub(crate) enum IoQueueRefused {
    /// Its QID is beyond the queues granted.
    BeyondGrant,
    /// A queue of that QID is connected already.
    Connected,
}

/// An I/O command running on a controller (see [`Controller::io_begun`]), until dropped.
pub(crate) struct IoRunning(Arc<Controller>);

impl Drop for IoRunning {
    fn drop(&mut self) {
        if self.0.io_running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.io_idle.notify_waiters();
        }
    }
}

/// Longest a shutdown waits for the I/O commands running when it began (a host is to stop its
/// I/O first; one that did not is not waited for for ever).
const SHUTDOWN_IO_WAIT: Duration = Duration::from_secs(5);

/// A keep-alive timeout rounded up to the granularity Identify advertises (KAS: one second),
/// as the specification has the controller do: a host that asks for 400 ms is given 1 s.
fn whole_seconds(kato_ms: u32) -> u32 {
    kato_ms.div_ceil(1000).saturating_mul(1000)
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
    ) -> Self {
        Controller {
            cntlid,
            subsystem,
            hostnqn,
            hostid,
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            kato_ms: AtomicU32::new(whole_seconds(kato_ms)),
            aec: AtomicU32::new(0),
            queues_granted: AtomicU32::new(u32::MAX),
            io_queues: Mutex::new(HashSet::new()),
            io_generation: watch::channel(0).0,
            aers: Mutex::new(Vec::new()),
            shutdown: watch::channel(false).0,
            last_activity: AtomicU64::new(0),
            epoch: Instant::now(),
            keep_alive_started: AtomicBool::new(false),
            io_running: AtomicUsize::new(0),
            io_idle: Notify::new(),
        }
    }

    /// Notes traffic: with traffic based keep alive, any command keeps the controller alive.
    pub(crate) fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.store(now, Ordering::Relaxed);
    }

    pub(crate) fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(whole_seconds(ms), Ordering::Relaxed);
        self.touch();
    }

    pub(crate) fn cc(&self) -> u32 {
        self.cc.load(Ordering::SeqCst)
    }

    pub(crate) fn csts(&self) -> u32 {
        self.csts.load(Ordering::SeqCst)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.csts() & property::CSTS_RDY != 0
    }

    /// A receiver that fires when the controller is torn down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Counts an I/O command as running until the guard is dropped: taken before the command
    /// looks whether the controller is ready, so a shutdown that clears CSTS.RDY and then
    /// waits for the running ones to end misses none.
    pub(crate) fn io_begun(self: &Arc<Self>) -> IoRunning {
        self.io_running.fetch_add(1, Ordering::SeqCst);
        IoRunning(self.clone())
    }

    /// Waits (at most `limit`) until no I/O command runs; whether none does.
    async fn io_drained(&self, limit: Duration) -> bool {
        let drained = async {
            loop {
                let idle = self.io_idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.io_running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, drained).await.is_ok()
    }

    /// Registers I/O queue `qid`, unless it is beyond the queues granted by Set Features Number
    /// of Queues (`most_ungranted` before any grant) or one of that QID is connected already:
    /// the generation of I/O queues it belongs to (see [`Controller::io_queues_deleted`]).
    pub(crate) fn add_io_queue(
        &self,
        qid: u16,
        most_ungranted: u16,
    ) -> Result<u64, IoQueueRefused> {
        let mut queues = self.io_queues.lock();
        let granted = self.queues_granted.load(Ordering::SeqCst);
        let max_qid = if granted == u32::MAX {
            most_ungranted
        } else {
            // A fabrics queue is a submission and completion queue pair: as many as the
            // fewer of the two counts granted (0's based).
            (granted & 0xFFFF).min(granted >> 16) as u16 + 1
        };
        if qid > max_qid {
            return Err(IoQueueRefused::BeyondGrant);
        }
        if !queues.insert(qid) {
            return Err(IoQueueRefused::Connected);
        }
        Ok(*self.io_generation.borrow())
    }

    /// Forgets I/O queue `qid` of generation `generation` (a reset forgot it already, and a
    /// queue of that QID connected since is another's).
    pub(crate) fn remove_io_queue(&self, qid: u16, generation: u64) {
        let mut queues = self.io_queues.lock();
        if *self.io_generation.borrow() == generation {
            queues.remove(&qid);
        }
    }

    /// Completes when the I/O queues of `generation` are deleted by a Controller Level Reset.
    pub(crate) fn io_queues_deleted(&self, generation: u64) -> impl Future<Output = ()> + use<> {
        let mut rx = self.io_generation.subscribe();
        async move {
            let _ = rx.wait_for(|g| *g != generation).await;
        }
    }

    /// Property Set of CC (NVMe Base §3.1.3.6 and §3.6): enable, disable, shutdown.
    pub(crate) async fn write_cc(self: &Arc<Self>, new: u32, target: &Arc<TargetInner>) {
        let old = self.cc.swap(new, Ordering::SeqCst);
        let enable = new & property::CC_EN != 0;
        let was_enabled = old & property::CC_EN != 0;
        if enable && !was_enabled {
            if property::cc_is_valid_for_enable(new, self.subsystem.is_discovery()) {
                self.csts.store(property::CSTS_RDY, Ordering::SeqCst);
                // The keep-alive timer runs from the Connect; enabling restarts it.
                self.touch();
                self.start_keep_alive(target.clone());
            } else {
                self.csts.store(property::CSTS_CFS, Ordering::SeqCst);
            }
        } else if !enable && was_enabled {
            self.reset();
        }
        let shn = new & property::CC_SHN_MASK;
        if shn != 0 && old & property::CC_SHN_MASK == 0 {
            // A shutdown notification: make everything durable before reporting completion.
            // A flush that fails is a fatal controller status, never a completed shutdown (the
            // host would take what it wrote as durable). Until then, CSTS says it is under way.
            // No I/O command is taken from here on (not ready, as Linux's target has it), and
            // the flush waits for those running: a write the drive finished after it would not
            // be covered by the shutdown that reported everything durable.
            self.csts
                .fetch_or(property::CSTS_SHST_OCCURRING, Ordering::SeqCst);
            self.csts.fetch_and(!property::CSTS_RDY, Ordering::SeqCst);
            if !self.io_drained(SHUTDOWN_IO_WAIT).await {
                tracing::warn!(
                    cntlid = self.cntlid,
                    "shutdown: I/O commands still running after {SHUTDOWN_IO_WAIT:?}; flushing without them"
                );
            }
            if let Some(device) = &self.subsystem.device
                && let Err(e) = device.flush().await
            {
                tracing::error!(cntlid = self.cntlid, "flush on shutdown failed: {e}");
                let csts = self.csts() & !(property::CSTS_RDY | property::CSTS_SHST_MASK);
                self.csts.store(csts | property::CSTS_CFS, Ordering::SeqCst);
                return;
            }
            let csts = self.csts() & !(property::CSTS_RDY | property::CSTS_SHST_MASK);
            self.csts
                .store(csts | property::CSTS_SHST_COMPLETE, Ordering::SeqCst);
        } else if shn == 0 {
            self.csts
                .fetch_and(!property::CSTS_SHST_MASK, Ordering::SeqCst);
        }
    }

    /// A Controller Level Reset (CC.EN from 1 to 0, NVMe Base §3.7.2): not ready, the I/O
    /// queues deleted (their connections close, their commands still waiting are stopped; a
    /// host that wants I/O queues again connects them anew), the held Asynchronous Event
    /// Requests aborted (their identifiers free for the host's new ones), and the features a
    /// host sets on enabling (number of queues, async event configuration) back to their
    /// defaults. The admin queue and the association stay.
    fn reset(&self) {
        self.csts.store(0, Ordering::SeqCst);
        {
            let mut queues = self.io_queues.lock();
            queues.clear();
            self.io_generation.send_modify(|g| *g += 1);
        }
        let held: Vec<HeldAer> = self.aers.lock().drain(..).collect();
        for aer in held {
            aer.answer(Status::ABORTED_SQ_DELETION);
        }
        self.aec.store(0, Ordering::SeqCst);
        self.queues_granted.store(u32::MAX, Ordering::SeqCst);
    }

    /// Starts the keep-alive watchdog (once): with a KATO set, the controller is torn down when
    /// nothing is heard from its host for longer, enabled or not.
    pub(crate) fn start_keep_alive(self: &Arc<Self>, target: Arc<TargetInner>) {
        if self.keep_alive_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let grace = target.config.keep_alive_grace;
        tokio::spawn(async move {
            loop {
                let Some(ctrl) = weak.upgrade() else { return };
                if *ctrl.shutdown.borrow() {
                    return;
                }
                // At most a second between checks: a KATO lowered by Set Features takes
                // effect at once, not after half the old one.
                let kato = ctrl.kato_ms();
                // Without a timeout (KATO 0), only a KATO set later is looked for.
                let period = match kato {
                    0 => Duration::from_secs(1),
                    _ => Duration::from_millis((u64::from(kato.max(200)) / 2).min(1000)),
                };
                drop(ctrl);
                tokio::time::sleep(period).await;
                let Some(ctrl) = weak.upgrade() else { return };
                let kato = ctrl.kato_ms();
                // A shutdown under way (waiting for I/O, flushing) is not a silent host.
                if kato == 0
                    || ctrl.csts() & property::CSTS_SHST_MASK == property::CSTS_SHST_OCCURRING
                {
                    continue;
                }
                // Another thread may note activity between the two reads: never negative.
                let idle = (ctrl.epoch.elapsed().as_millis() as u64)
                    .saturating_sub(ctrl.last_activity.load(Ordering::Relaxed));
                if idle > u64::from(kato) + grace.as_millis() as u64 {
                    tracing::warn!(
                        cntlid = ctrl.cntlid,
                        host = %ctrl.hostnqn,
                        "keep alive timeout after {idle} ms; tearing the controller down"
                    );
                    target
                        .stats
                        .keep_alive_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    ctrl.teardown();
                    return;
                }
            }
        });
    }

    /// Ends the association: held AERs complete with Internal Error, every queue of the
    /// controller closes, and the subsystem forgets it.
    pub(crate) fn teardown(&self) {
        if self.shutdown.send_replace(true) {
            return;
        }
        // Not ready from here on: an I/O queue Connect or a command that comes in before the
        // subsystem forgets the controller is refused, not told Success by a dead controller.
        self.csts.fetch_and(!property::CSTS_RDY, Ordering::SeqCst);
        let held: Vec<HeldAer> = self.aers.lock().drain(..).collect();
        for aer in held {
            aer.answer(Status::INTERNAL_ERROR);
        }
        self.subsystem.unregister(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_down_controller_is_not_ready() {
        let subsystem = Arc::new(Subsystem::discovery());
        let controller = subsystem
            .register_new(|cntlid| {
                Controller::new(
                    cntlid,
                    subsystem.clone(),
                    "nqn.2026-01.io.zonestore:test".into(),
                    [0; 16],
                    0,
                )
            })
            .unwrap();
        assert_eq!(controller.cntlid, 1);
        // Another controller of the same ID (one torn down late, say) does not take this
        // one's registration with it.
        let stale = Controller::new(
            1,
            subsystem.clone(),
            "nqn.2026-01.io.zonestore:stale".into(),
            [0; 16],
            0,
        );
        stale.teardown();
        assert!(subsystem.controller(1).is_some());
        controller.csts.store(property::CSTS_RDY, Ordering::SeqCst);
        assert!(controller.is_ready());
        controller.teardown();
        assert!(!controller.is_ready());
        assert!(subsystem.controller(1).is_none());
    }
}
