//! A session: one association with a remote controller — the admin queue, the I/O queues, the
//! namespace's geometry and the keep-alive task — set up the way a host must (NVMe over Fabrics
//! §3.5 "Controller Initialization").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use zns::Geometry;

use super::probe::Prober;
use super::queue::{HostQueue, QueueParams};
use super::{HostConfig, HostError, admin};
use crate::spec::connect::{CATTR_DISABLE_SQFLOW, CNTLID_DYNAMIC, Connect};
use crate::spec::identify::{self, cns};
use crate::spec::opcode::{csi, feature, io};
use crate::spec::zns as report;
use crate::wire::command::Sqe;
use crate::wire::status::Status;

/// What the host learned about the controller and namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Namespace ID of the zoned namespace.
    pub(crate) nsid: u32,
    /// Largest transfer of one command in bytes.
    pub(crate) max_transfer: usize,
}

/// One live association.
pub(crate) struct Session {
    pub(crate) admin: Arc<HostQueue>,
    pub(crate) io: Vec<Arc<HostQueue>>,
    pub(crate) geometry: Geometry,
    /// The namespace's NGUID, if it reports one: which drive this is.
    pub(crate) identity: Option<[u8; 16]>,
    pub(crate) limits: Limits,
    /// Set (with the reason) when any queue of the session fails.
    pub(crate) failed: watch::Receiver<Option<String>>,
    /// The host's session number (see `ZonedDevice::session`) while this session is the one
    /// up: set by the host before it puts the session to use.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    failed_tx: watch::Sender<Option<String>>,
    next: AtomicUsize,
    keep_alive: KeepAlive,
    /// Probes the target when its I/O queues go silent (see [`super::probe`]).
    _prober: Prober,
}

/// The task that sends Keep Alive on the admin queue, stopped when dropped (so a session whose
/// set-up fails halfway leaves none behind).
struct KeepAlive(Option<tokio::task::JoinHandle<()>>);

impl KeepAlive {
    /// Sends Keep Alive every half of `kato` on `admin_q` (none if `kato` is zero), failing the
    /// queue when one fails. Sends are timed from the previous send, not from its answer (a
    /// slow answer must not push the next send past the target's timeout), and one not
    /// answered within three quarters of `kato` fails the queue: the gap between two sends
    /// stays under `kato`.
    fn start(admin_q: &Arc<HostQueue>, kato: Duration) -> KeepAlive {
        if kato.is_zero() {
            return KeepAlive(None);
        }
        let admin_q = admin_q.clone();
        let period = kato / 2;
        let answer_within = kato * 3 / 4;
        KeepAlive(Some(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + period;
            loop {
                tokio::time::sleep_until(next).await;
                next += period;
                if let Err(e) = admin::keep_alive(&admin_q, answer_within).await {
                    admin_q.fail(format!("keep alive failed: {e}"));
                    return;
                }
            }
        })))
    }

    fn stop(&self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Entries of each I/O queue: what the configuration asks for, within what the controller
/// takes (MAXCMD commands in flight, CAP.MQES + 1 entries a queue) and what command IDs allow.
fn io_queue_depth(wanted: u16, maxcmd: u16, cap: u64) -> u16 {
    let mqes_entries = u16::try_from((cap & 0xFFFF) + 1).unwrap_or(u16::MAX);
    let allowed = maxcmd
        .clamp(2, super::queue::MAX_DEPTH)
        .min(mqes_entries.max(2));
    wanted.clamp(2, allowed)
}

impl Session {
    /// An I/O queue, round robin.
    pub(crate) fn io_queue(&self) -> &Arc<HostQueue> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.io[i % self.io.len()]
    }

    /// Closes every queue.
    pub(crate) fn close(&self, reason: &str) {
        let _ = self.failed_tx.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(reason.to_string());
                true
            } else {
                false
            }
        });
        self.keep_alive.stop();
        for q in std::iter::once(&self.admin).chain(self.io.iter()) {
            q.fail(reason.to_string());
        }
    }

    /// Connects, enables the controller, identifies the zoned namespace and connects the I/O
    /// queues.
    pub(crate) async fn establish(config: &HostConfig) -> Result<Session, HostError> {
        let timeout = config.admin_timeout;
        let mut candidates = tokio::time::timeout(config.connect_timeout, config.address.resolve())
            .await
            .map_err(|_| HostError::Timeout(format!("resolving {}", config.address)))??;
        let params = |address, qid, depth, cattr: u8| QueueParams {
            address,
            qid,
            depth,
            digests: config.digests,
            connect_timeout: config.connect_timeout,
            sq_flow_disabled: cattr & CATTR_DISABLE_SQFLOW != 0,
        };
        let connect = |qid, sqsize, cntlid, kato_ms, cattr| Connect {
            recfmt: 0,
            qid,
            sqsize,
            cattr,
            kato_ms,
            hostid: config.hostid,
            cntlid,
            subnqn: config.subnqn.clone(),
            hostnqn: config.hostnqn.clone(),
        };
        let kato_ms = config.keep_alive.as_millis() as u32;
        // The host bounds commands in flight itself, so the controller need not track SQ heads,
        // and a read's last C2HData can then carry its completion (no CapsuleResp). A
        // controller that cannot disable SQ flow control refuses such a Connect with Connect
        // Invalid Parameters: then the queues connect with it on.
        let mut cattr = CATTR_DISABLE_SQFLOW;
        let (address, admin_q, cntlid, failed_tx, failed) = loop {
            // Each attempt has its own failure channel: a refused attempt's connection closing
            // must not mark the session that follows failed.
            let (failed_tx, failed) = watch::channel(None);
            // The first of the name's addresses that takes a connection; the same one for
            // every queue after it (they make one association with one controller).
            // (32 entries: with SQ flow control on, full at 31 in flight.)
            let admin_in_flight = if cattr & CATTR_DISABLE_SQFLOW == 0 {
                31
            } else {
                32
            };
            let (at, admin_q) = HostQueue::open_first(
                &candidates,
                |a| params(a, 0, admin_in_flight, cattr),
                8192,
                failed_tx.clone(),
            )
            .await?;
            candidates = vec![at];
            let admin_connect = connect(0, 31, CNTLID_DYNAMIC, kato_ms, cattr);
            match admin_q.connect(&admin_connect, timeout).await {
                Ok(cntlid) => break (at, admin_q, cntlid, failed_tx, failed),
                Err(HostError::Refused { status, .. })
                    if status.is(Status::CONNECT_INVALID_PARAMETERS) && cattr != 0 =>
                {
                    tracing::info!(
                        "{} cannot disable SQ flow control; connecting with it on",
                        config.subnqn
                    );
                    cattr = 0;
                }
                Err(e) => return Err(e),
            }
        };
        let cap = admin::enable(&admin_q, timeout).await?;
        // From here the controller counts the keep-alive timeout: the rest of the set-up
        // (identifying, connecting I/O queues) may take longer than it.
        let keep_alive = KeepAlive::start(&admin_q, Duration::from_millis(u64::from(kato_ms)));
        let ctrl = identify::parse_controller(
            &admin::identify(&admin_q, cns::CONTROLLER, 0, 0, timeout).await?,
        )
        .ok_or_else(|| HostError::Protocol("short Identify Controller".into()))?;
        if ctrl.cntlid != cntlid {
            return Err(HostError::Protocol(format!(
                "Identify reports controller {} but Connect returned {cntlid}",
                ctrl.cntlid
            )));
        }
        if ctrl.sgls & 0x3 == 0 || ctrl.icdoff != 0 {
            return Err(HostError::Protocol(
                "the controller does not support the SGLs NVMe/TCP needs".into(),
            ));
        }
        let max_transfer = match ctrl.mdts {
            0 => 16 << 20,
            n => pages_to_bytes(n).min(16 << 20),
        };
        let in_capsule = (ctrl.ioccsz as usize * 16).saturating_sub(64);
        let wanted = u32::from(config.io_queues.max(1) - 1);
        let granted = admin::set_features(
            &admin_q,
            feature::NUMBER_OF_QUEUES,
            (wanted << 16) | wanted,
            timeout,
        )
        .await?;
        let io_queues = ((granted & 0xFFFF).min(granted >> 16).min(wanted) + 1) as u16;

        let nsids = identify::parse_active_namespaces(
            &admin::identify(&admin_q, cns::ACTIVE_NAMESPACES, 0, 0, timeout).await?,
        );
        let mut zoned = None;
        for nsid in nsids {
            let descriptors =
                admin::identify(&admin_q, cns::NS_DESCRIPTORS, nsid, 0, timeout).await?;
            if identify::parse_ns_descriptors_csi(&descriptors) == Some(csi::ZNS) {
                zoned = Some(nsid);
                break;
            }
        }
        let nsid = zoned.ok_or_else(|| HostError::NotZoned(config.subnqn.clone()))?;
        let ns = identify::parse_namespace(
            &admin::identify(&admin_q, cns::NAMESPACE, nsid, 0, timeout).await?,
        )
        .ok_or_else(|| HostError::Protocol("unusable Identify Namespace".into()))?;
        if ns.metadata != 0 || ns.ncap == 0 {
            return Err(HostError::Protocol(
                "namespace has metadata or no capacity".into(),
            ));
        }
        let zns_ns = identify::parse_zns_namespace(
            &admin::identify(&admin_q, cns::CSI_NAMESPACE, nsid, csi::ZNS, timeout).await?,
            ns.format,
        )
        .ok_or_else(|| HostError::Protocol("unusable ZNS Identify Namespace".into()))?;
        if zns_ns.zoc != 0 || zns_ns.zone_size == 0 {
            return Err(HostError::Protocol(format!(
                "unsupported zone characteristics (ZOC {:#x}, zone size {})",
                zns_ns.zoc, zns_ns.zone_size
            )));
        }
        let zasl = admin::identify(&admin_q, cns::CSI_CONTROLLER, 0, csi::ZNS, timeout).await?[0];
        let append_bytes = if zasl == 0 {
            max_transfer
        } else {
            pages_to_bytes(zasl).min(max_transfer)
        };

        // I/O queues.
        let depth = io_queue_depth(config.queue_depth, ctrl.maxcmd, cap);
        // With SQ flow control on, a queue of `depth` entries is full with one free: the host
        // keeps at most `depth - 1` commands in flight.
        let in_flight = if cattr & CATTR_DISABLE_SQFLOW == 0 {
            depth - 1
        } else {
            depth
        };
        let mut io_qs = Vec::with_capacity(usize::from(io_queues));
        let mut connecting = Vec::new();
        for qid in 1..=io_queues {
            let p = params(address, qid, in_flight, cattr);
            let failed_tx = failed_tx.clone();
            let c = connect(qid, depth - 1, cntlid, 0, cattr);
            connecting.push(async move {
                let q = HostQueue::open(&p, in_capsule, failed_tx).await?;
                q.connect(&c, timeout).await?;
                Ok::<_, HostError>(q)
            });
        }
        for result in futures::future::join_all(connecting).await {
            io_qs.push(result?);
        }

        // Zone capacity comes from a zone descriptor: the first of a usable zone (an offline
        // or read-only zone's may say nothing, and a drive whose first zone fails is not one
        // of another geometry when its host reconnects).
        const FIRST_ZONES: u32 = 16;
        let report_bytes = 64 * (1 + FIRST_ZONES);
        let mut sqe = Sqe::new(io::ZONE_MGMT_RECV, 0);
        sqe.set_nsid(nsid)
            .set_slba(0)
            .set_cdw(12, report_bytes / 4 - 1)
            .set_cdw(13, 1 << 16)
            .set_sgl(report_bytes, false);
        let done = admin::run(&io_qs[0], "Report Zones", sqe, bytes::Bytes::new(), timeout).await?;
        let first = report::decode_report(&done.data).map_err(HostError::Protocol)?;
        let usable = |z: &&zns::ZoneDescriptor| {
            !matches!(z.state, zns::ZoneState::Offline | zns::ZoneState::ReadOnly)
        };
        let zcap = first
            .zones
            .iter()
            .find(usable)
            .or(first.zones.first())
            .map(|z| z.zcap)
            .ok_or_else(|| HostError::Protocol("the namespace reports no zones".into()))?;

        let geometry = Geometry {
            block_size: ns.block_size,
            zone_size: zns_ns.zone_size,
            zone_capacity: zcap,
            zone_count: u32::try_from(ns.nsze / zns_ns.zone_size.max(1)).map_err(|_| {
                HostError::Protocol(format!(
                    "the namespace reports {} blocks in zones of {}: more zones than a drive may have",
                    ns.nsze, zns_ns.zone_size
                ))
            })?,
            max_open: zns_ns.max_open,
            max_active: zns_ns.max_active,
            max_append_blocks: (append_bytes / ns.block_size as usize) as u32,
        };
        geometry
            .validate()
            .map_err(|e| HostError::Protocol(e.to_string()))?;

        tracing::debug!(address = %config.address, subsystem = %config.subnqn, cntlid, io_queues, depth, %geometry, "NVMe/TCP session established");
        let prober = Prober::start(config, &admin_q, &io_qs);
        Ok(Session {
            admin: admin_q,
            io: io_qs,
            geometry,
            // Targets from before drives had identities export an NGUID derived from the NQN:
            // that says nothing of which drive it is.
            identity: (ns.nguid != [0; 16]
                && ns.nguid != crate::target::subsystem::nqn_fingerprint(&config.subnqn))
            .then_some(ns.nguid),
            limits: Limits { nsid, max_transfer },
            failed,
            failed_tx,
            epoch: std::sync::atomic::AtomicU64::new(0),
            next: AtomicUsize::new(0),
            _prober: prober,
            keep_alive,
        })
    }
}

/// Bytes in 2^`exponent` pages of 4 KiB (MDTS, ZASL), saturating rather than wrapping.
fn pages_to_bytes(exponent: u8) -> usize {
    if u32::from(exponent) >= usize::BITS - 12 {
        usize::MAX
    } else {
        4096usize << exponent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_queues_are_as_deep_as_asked_within_what_the_controller_takes() {
        let cap_entries = |entries: u64| entries - 1;
        assert_eq!(io_queue_depth(128, 1024, cap_entries(1024)), 128);
        assert_eq!(io_queue_depth(128, 64, cap_entries(1024)), 64, "MAXCMD");
        assert_eq!(io_queue_depth(128, 1024, cap_entries(32)), 32, "CAP.MQES");
        assert_eq!(
            io_queue_depth(128, 0, cap_entries(1024)),
            2,
            "MAXCMD 0: one at a time"
        );
        assert_eq!(
            io_queue_depth(8192, 0xFFFF, 0xFFFF),
            super::super::queue::MAX_DEPTH
        );
        assert_eq!(io_queue_depth(1, 1024, cap_entries(1024)), 2);
    }

    #[test]
    fn page_exponents_saturate_instead_of_wrapping() {
        assert_eq!(pages_to_bytes(0), 4096);
        assert_eq!(pages_to_bytes(9), 2 << 20);
        assert_eq!(pages_to_bytes(52), usize::MAX);
        assert_eq!(pages_to_bytes(255), usize::MAX);
    }
}
