//! The NVMe/TCP target: exports [`ZonedDevice`]s as Zoned Namespaces of NVM subsystems, each
//! with its own NQN and host allow-list, plus a discovery controller that lists them. One TCP
//! connection per queue, many commands in flight per queue.

mod admin;
mod controller;
mod io;
mod queue;
mod stats;
pub(crate) mod subsystem;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zns::ZonedDevice;

pub use stats::{TargetStats, TargetStatsSnapshot};
pub use subsystem::Subsystem;

use crate::spec::DISCOVERY_NQN;

/// Tunables of a target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// MAXH2CDATA: the largest data in one H2CData PDU (multiple of 4, at least 4096). A
    /// target takes at least `max_transfer`: it asks for a whole command's data in one R2T, and
    /// hosts that predate MAXH2CDATA (Linux before 5.16) send an R2T's data in one PDU.
    pub max_h2c_data: u32,
    /// In-capsule data accepted on I/O queues (IOCCSZ = 4 + this / 16).
    pub in_capsule_data: u32,
    /// Largest queue a host may connect (CAP.MQES + 1, MAXCMD).
    pub max_queue_entries: u16,
    /// Most I/O queues per controller.
    pub max_io_queues: u16,
    /// Maximum data transfer size of one command in bytes (a power of two of 4 KiB pages, and
    /// at least two: MDTS cannot say less).
    pub max_transfer: u32,
    /// Write data a connection may hold, from its R2T until the drive has written it, before
    /// further writes wait for their R2T (bounds the target's memory).
    pub max_outstanding_r2t: usize,
    /// Read data a connection may hold, from the drive's answer until it is sent to the host,
    /// before further reads wait (bounds the target's memory when a host reads slowly, or not
    /// at all).
    pub max_outstanding_read: usize,
    /// Extra time a controller gets beyond its keep-alive timeout before it is torn down.
    pub keep_alive_grace: Duration,
    /// Most connections served at once; one more is closed as soon as it is accepted (each
    /// may hold its budgets of memory: peers must not take it all by opening more).
    pub max_connections: usize,
    /// Most connections served at once from one host address: one host (a discovery
    /// connection needs no allowed host NQN) must not take every place from the others.
    pub max_connections_per_host: usize,
    /// Model number reported in Identify Controller.
    pub model: String,
    /// Whether a host may disable SQ flow control (Connect CATTR bit 2); without it such a
    /// Connect is refused with Connect Invalid Parameters, as a controller that cannot
    /// disable it must (some targets cannot).
    pub sq_flow_control_disable: bool,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            max_h2c_data: 2 << 20,
            in_capsule_data: 128 << 10,
            max_queue_entries: 1024,
            max_io_queues: 64,
            max_transfer: 2 << 20,
            max_outstanding_r2t: 8 << 20,
            max_outstanding_read: 32 << 20,
            keep_alive_grace: Duration::from_millis(500),
            max_connections: 1024,
            max_connections_per_host: 256,
            model: "Zonestore ZNS".into(),
            sq_flow_control_disable: true,
        }
    }
}

/// Why a subsystem could not be added.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The NQN is malformed.
    #[error("invalid NQN {nqn:?}: {reason}")]
    InvalidNqn {
        /// The NQN.
        nqn: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subsystem with this NQN exists already.
    #[error("subsystem {0} exists already")]
    Duplicate(String),
    /// The device's geometry cannot be exported.
    #[error("cannot export {nqn}: {reason}")]
    Unexportable {
        /// The subsystem NQN.
        nqn: String,
        /// Why.
        reason: String,
    },
}

/// Checks an NQN the way the NVMe Base specification §4.5 describes it: starts with `nqn.`,
/// at most 223 bytes, UTF-8 without NULs.
pub fn validate_nqn(nqn: &str) -> Result<(), TargetError> {
    let fail = |reason| {
        Err(TargetError::InvalidNqn {
            nqn: nqn.to_string(),
            reason,
        })
    };
    if !nqn.starts_with("nqn.") {
        return fail("an NQN starts with \"nqn.\"");
    }
    if nqn.len() > 223 {
        return fail("an NQN is at most 223 bytes");
    }
    if nqn.contains('\0') || nqn.chars().any(char::is_whitespace) {
        return fail("an NQN has no NUL or whitespace");
    }
    Ok(())
}

pub(crate) struct TargetInner {
    pub(crate) config: TargetConfig,
    pub(crate) subsystems: RwLock<HashMap<String, Arc<Subsystem>>>,
    pub(crate) stats: TargetStats,
    pub(crate) genctr: AtomicU64,
}

impl TargetInner {
    pub(crate) fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.read().get(nqn).cloned()
    }
}

/// An NVMe/TCP target. Cheap to clone.
#[derive(Clone)]
pub struct Target {
    inner: Arc<TargetInner>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field(
                "subsystems",
                &self.inner.subsystems.read().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Target {
    /// A target with only its discovery subsystem.
    pub fn new(mut config: TargetConfig) -> Self {
        // MDTS counts 4 KiB pages as a power of two, and 0 would mean no limit at all: 8 KiB
        // is the least it can say.
        config.max_transfer = config.max_transfer.max(8192);
        config.max_h2c_data = config.max_h2c_data.max(config.max_transfer);
        // An I/O queue's Connect carries 1024 bytes of data: with room for less in a capsule,
        // a host would send them by R2T, which a queue with no controller yet cannot ask for.
        config.in_capsule_data = config.in_capsule_data.max(1024);
        let mut subsystems = HashMap::new();
        subsystems.insert(DISCOVERY_NQN.to_string(), Arc::new(Subsystem::discovery()));
        Target {
            inner: Arc::new(TargetInner {
                config,
                subsystems: RwLock::new(subsystems),
                stats: TargetStats::default(),
                genctr: AtomicU64::new(1),
            }),
        }
    }

    /// Exports `device` as namespace 1 of a new subsystem `nqn`. An empty `allowed_hosts`
    /// admits any host; otherwise only those host NQNs may connect.
    pub fn add_subsystem(
        &self,
        nqn: &str,
        device: Arc<dyn ZonedDevice>,
        allowed_hosts: Vec<String>,
    ) -> Result<(), TargetError> {
        self.check_exportable(nqn, &device.geometry(), &allowed_hosts)?;
        let mut subsystems = self.inner.subsystems.write();
        if subsystems.contains_key(nqn) {
            return Err(TargetError::Duplicate(nqn.to_string()));
        }
        subsystems.insert(
            nqn.to_string(),
            Arc::new(Subsystem::new(nqn, device, allowed_hosts)),
        );
        self.inner.genctr.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a drive of `geometry` could be exported as subsystem `nqn` to `allowed_hosts`
    /// ([`Target::add_subsystem`] checks the same): for a caller to ask before it makes one.
    pub fn check_exportable(
        &self,
        nqn: &str,
        geometry: &zns::Geometry,
        allowed_hosts: &[String],
    ) -> Result<(), TargetError> {
        validate_nqn(nqn)?;
        for host in allowed_hosts {
            validate_nqn(host)?;
        }
        if !geometry.zone_size.is_power_of_two() {
            return Err(TargetError::Unexportable {
                nqn: nqn.to_string(),
                reason: format!(
                    "zone size {} blocks is not a power of two, which hosts require",
                    geometry.zone_size
                ),
            });
        }
        if geometry.max_append_bytes() < 8192 {
            return Err(TargetError::Unexportable {
                nqn: nqn.to_string(),
                reason: "a zone append limit under 8 KiB cannot be expressed in ZASL".into(),
            });
        }
        if geometry.max_append_bytes() > u64::from(self.inner.config.max_transfer) {
            return Err(TargetError::Unexportable {
                nqn: nqn.to_string(),
                reason: format!(
                    "the zone append limit {} exceeds the maximum transfer {}",
                    geometry.max_append_bytes(),
                    self.inner.config.max_transfer
                ),
            });
        }
        Ok(())
    }

    /// Counters of what the target has done.
    pub fn stats(&self) -> TargetStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Starts serving on `addr`. The target runs until the returned handle is shut down or
    /// dropped.
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<TargetHandle> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = self.inner.clone();
        let accept = tokio::spawn(async move {
            let mut stop = stop_rx.clone();
            // The connections, so that a shutdown can wait for their commands to end.
            let mut connections = tokio::task::JoinSet::new();
            let slots = Arc::new(tokio::sync::Semaphore::new(inner.config.max_connections));
            let per_host = HostConnections::default();
            loop {
                while connections.try_join_next().is_some() {}
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                tracing::warn!(%peer, "connection refused: {} are open already", inner.config.max_connections);
                                continue;
                            };
                            let Some(host_slot) = per_host.take(peer.ip(), inner.config.max_connections_per_host) else {
                                tracing::warn!(%peer, "connection refused: {} are open from that host already", inner.config.max_connections_per_host);
                                continue;
                            };
                            let inner = inner.clone();
                            let stop = stop_rx.clone();
                            connections.spawn(async move {
                                queue::serve_connection(stream, peer, inner, stop).await;
                                drop((slot, host_slot));
                            });
                        }
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
            // Every connection heard the stop too: it stops its waiting commands (writes the
            // drive took still complete there, so a flush after this covers them) and ends.
            drop(listener);
            while connections.join_next().await.is_some() {}
        });
        tracing::info!(%local_addr, "NVMe/TCP target listening");
        Ok(TargetHandle {
            local_addr,
            stop: stop_tx,
            accept,
        })
    }
}

/// Connections open from each host address.
#[derive(Debug, Default, Clone)]
struct HostConnections(Arc<parking_lot::Mutex<HashMap<std::net::IpAddr, usize>>>);

/// One connection's place among its host's (given back when dropped).
struct HostSlot {
    hosts: HostConnections,
    ip: std::net::IpAddr,
}

impl HostConnections {
    /// A place for one more connection from `ip`, unless it has `limit` open already.
    fn take(&self, ip: std::net::IpAddr, limit: usize) -> Option<HostSlot> {
        let mut open = self.0.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(HostSlot {
            hosts: self.clone(),
            ip,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut open = self.hosts.0.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A listening target. Dropping it stops the listener and closes every connection.
#[derive(Debug)]
pub struct TargetHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl TargetHandle {
    /// The address the target listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// [`TargetHandle::shutdown`], then waits (up to `limit`) until every connection has ended,
    /// so that a flush after it covers every write the target took.
    pub async fn shut_down(mut self, limit: Duration) {
        self.shutdown();
        if tokio::time::timeout(limit, &mut self.accept).await.is_err() {
            tracing::warn!("NVMe/TCP connections still open {limit:?} after the stop");
        }
    }
}

impl Drop for TargetHandle {
    fn drop(&mut self) {
        // The accept task hears this, stops listening and lets its connections end in their
        // own time (aborting them would skip their bookkeeping and leave their writers).
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_limit_under_two_pages_is_raised_to_what_mdts_can_say() {
        let target = Target::new(TargetConfig {
            max_transfer: 4096,
            ..TargetConfig::default()
        });
        assert_eq!(target.inner.config.max_transfer, 8192);
        assert_eq!(
            crate::spec::identify::pages_log2(u64::from(target.inner.config.max_transfer)),
            1
        );
    }

    #[test]
    fn in_capsule_data_holds_at_least_a_connects_data() {
        let target = Target::new(TargetConfig {
            in_capsule_data: 0,
            ..TargetConfig::default()
        });
        assert_eq!(
            target.inner.config.in_capsule_data, 1024,
            "a Connect's data"
        );
    }
}
