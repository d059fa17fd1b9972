//! The NVMe/TCP host: a [`ZonedDevice`] backed by a remote zoned namespace. It connects an admin
//! queue and several I/O queues, identifies the namespace and its zone geometry, pipelines
//! commands up to the queue depth across the queues, sends keep-alives, fails commands that
//! time out, and reconnects with backoff when the target goes away: commands in flight then fail
//! with a clear error, and new ones wait for the reconnection up to a bound.

mod address;
mod admin;
pub mod discovery;
mod probe;
mod queue;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;
use zns::{
    Geometry, ReportFilter, WriteHint, ZoneAction, ZoneError, ZoneReport, ZoneResult, ZoneSelect,
    ZonedDevice,
};

use crate::spec::opcode::io;
use crate::spec::zns as report;
use crate::wire::command::Sqe;
use crate::wire::digest::Digests;
use crate::wire::status::Status;
pub use address::TargetAddress;
use queue::Completion;
use session::Session;

/// How to reach and use a remote namespace.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Target address (a name is resolved at every connection attempt).
    pub address: TargetAddress,
    /// Subsystem NQN.
    pub subnqn: String,
    /// This host's NQN.
    pub hostnqn: String,
    /// This host's identifier.
    pub hostid: [u8; 16],
    /// Number of I/O queues (one TCP connection each).
    pub io_queues: u16,
    /// Commands in flight per I/O queue.
    pub queue_depth: u16,
    /// Keep alive timeout (0: none).
    pub keep_alive: Duration,
    /// How long an I/O command may wait with nothing at all heard from the target before the
    /// host probes it with a Keep Alive (0: never; see [`probe`]).
    pub probe_after: Duration,
    /// How long that probe may go unanswered before the target counts as stopped: the
    /// connection is reset, failing the commands in flight.
    pub probe_answer_within: Duration,
    /// Digests to ask for.
    pub digests: Digests,
    /// How long an I/O command may take before the connection is reset.
    pub command_timeout: Duration,
    /// How long an admin command may take.
    pub admin_timeout: Duration,
    /// How long a new command waits for a lost connection to come back.
    pub reconnect_wait: Duration,
    /// How long one TCP connection attempt may take.
    pub connect_timeout: Duration,
    /// The namespace NGUID the drive is known by (from an earlier connection): a namespace
    /// reporting another is refused, from the first connection on (`None`: the first one
    /// seen is kept).
    pub expected_identity: Option<[u8; 16]>,
}

impl HostConfig {
    /// Defaults for a target at `address` serving `subnqn`: 2 I/O queues of 128 commands,
    /// 5 s keep-alive, a probe after 500 ms of silence answered within 1.5 s, 30 s command
    /// timeout, 10 s reconnect wait.
    pub fn new(address: impl Into<TargetAddress>, subnqn: &str) -> Self {
        HostConfig {
            address: address.into(),
            subnqn: subnqn.to_string(),
            hostnqn: default_hostnqn(),
            hostid: *b"zonestore-host\0\0",
            io_queues: 2,
            queue_depth: 128,
            keep_alive: Duration::from_secs(5),
            probe_after: Duration::from_millis(500),
            probe_answer_within: Duration::from_millis(1500),
            digests: Digests::NONE,
            command_timeout: Duration::from_secs(30),
            admin_timeout: Duration::from_secs(10),
            reconnect_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            expected_identity: None,
        }
    }
}

/// A host NQN for this machine: [`machine_hostnqn`], or (on a machine without a machine id)
/// one made from the process id, which changes with every start.
pub fn default_hostnqn() -> String {
    machine_hostnqn().unwrap_or_else(|| uuid_hostnqn(u128::from(std::process::id())))
}

/// The host NQN of this machine's id (`/etc/machine-id`), if it has one: the same at every
/// start, as a target's allow-list needs.
pub fn machine_hostnqn() -> Option<String> {
    let id = std::fs::read_to_string("/etc/machine-id").ok()?;
    let id: String = id.trim().chars().filter(char::is_ascii_hexdigit).collect();
    let id = u128::from_str_radix(&id, 16)
        .ok()
        .filter(|_| id.len() == 32)?;
    Some(uuid_hostnqn(id))
}

/// The host NQN `nqn.2014-08.org.nvmexpress:uuid:` and `id` as a UUID.
pub fn uuid_hostnqn(id: u128) -> String {
    let id = format!("{id:032x}");
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// Errors of the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Target address.
        address: SocketAddr,
        /// Socket error.
        #[source]
        source: std::io::Error,
    },
    /// The target's host name does not resolve (now).
    #[error("cannot resolve {address}: {reason}")]
    Resolve {
        /// Target address.
        address: String,
        /// The resolver's error.
        reason: String,
    },
    /// The target broke the protocol.
    #[error("NVMe/TCP protocol error: {0}")]
    Protocol(String),
    /// The target refused a command.
    #[error("{what} failed: {status} (detail {detail:#x})")]
    Refused {
        /// The command.
        what: String,
        /// Its status.
        status: Status,
        /// CQE DW0/DW1 (Connect puts IATTR/IPO there).
        detail: u64,
    },
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection is gone.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The command was never sent: its session had failed (it may go on the next one).
    #[error("not sent: {0}")]
    NotSent(String),
    /// The subsystem has no zoned namespace.
    #[error("subsystem {0} has no zoned namespace")]
    NotZoned(String),
    /// The namespace changed shape between connections.
    #[error("the namespace geometry changed from [{before}] to [{after}]")]
    GeometryChanged {
        /// Before.
        before: Geometry,
        /// After.
        after: Geometry,
    },
    /// A different namespace (another NGUID) answers at the address and NQN: another drive,
    /// or one formatted afresh, which must not pass for the one connected before.
    #[error("a different drive answers: the namespace NGUID changed from {before} to {after}")]
    IdentityChanged {
        /// Before (hex).
        before: String,
        /// After (hex).
        after: String,
    },
}

impl HostError {
    fn into_zone_error(self) -> ZoneError {
        ZoneError::Unavailable(self.to_string())
    }
}

/// Counters of a host, for metrics.
#[derive(Debug, Default)]
pub struct HostStats {
    /// Commands completed successfully.
    pub commands: AtomicU64,
    /// Commands that failed (any error, including transport).
    pub errors: AtomicU64,
    /// Times the host reconnected.
    pub reconnects: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Commands in flight now.
    pub in_flight: AtomicU64,
}

enum State {
    Up(Arc<Session>),
    Down(String),
    Closed,
}

struct HostInner {
    config: HostConfig,
    geometry: Geometry,
    state: watch::Sender<State>,
    stats: HostStats,
    /// The largest transfer the last session allowed: commands issued while reconnecting are
    /// sized by it, not by a guess the target may refuse.
    last_max_transfer: AtomicUsize,
    /// Sessions lost so far (see [`ZonedDevice::session`]): the epoch of the session that is
    /// up, or, while down, of the one that comes next. A new session may be with a target
    /// that restarted and lost what was not flushed.
    session_epoch: AtomicU64,
    /// The namespace's NGUID as the first session reported it: a later session reporting
    /// another is refused, as a changed geometry is.
    identity: Mutex<Option<[u8; 16]>>,
    /// Whether the last reconnect found a different namespace (see
    /// [`HostError::IdentityChanged`]).
    wrong_namespace: AtomicBool,
}

impl HostInner {
    /// Whether a new session's namespace is the drive connected before; the first identity
    /// seen (a host started before its target answered) is the one kept from then on.
    fn same_identity(&self, identity: Option<[u8; 16]>) -> bool {
        let mut known = self.identity.lock();
        match (*known, identity) {
            (Some(before), Some(now)) => before == now,
            (Some(_), None) => false,
            (None, now) => {
                *known = now;
                true
            }
        }
    }
}

fn hex(bytes: [u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The transfer size assumed before any session has said (most targets allow at least this).
const ASSUMED_MAX_TRANSFER: usize = 128 << 10;

/// A remote zoned namespace over NVMe/TCP. Cheap to clone.
#[derive(Clone)]
pub struct NvmeTcpHost {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for NvmeTcpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeTcpHost")
            .field("address", &self.inner.config.address)
            .field("subnqn", &self.inner.config.subnqn)
            .finish()
    }
}

impl NvmeTcpHost {
    /// Connects to the namespace and keeps the connection up until [`NvmeTcpHost::close`].
    pub async fn connect(config: HostConfig) -> Result<NvmeTcpHost, HostError> {
        let session = Arc::new(Session::establish(&config).await?);
        if let Some(expected) = config.expected_identity
            && session.identity != Some(expected)
        {
            session.close("a different namespace answers");
            return Err(HostError::IdentityChanged {
                before: hex(expected),
                after: session.identity.map_or("none".into(), hex),
            });
        }
        let geometry = session.geometry;
        Ok(Self::supervised(config, geometry, Some(session)))
    }

    /// A host for a namespace that cannot be reached now but whose geometry is known (from an
    /// earlier connection): it starts down and keeps trying to connect in the background,
    /// coming up once the target answers with that same geometry.
    pub fn connect_later(config: HostConfig, geometry: Geometry) -> NvmeTcpHost {
        Self::supervised(config, geometry, None)
    }

    /// A host, up on `session` if there is one, with a task that keeps it connected.
    fn supervised(
        config: HostConfig,
        geometry: Geometry,
        session: Option<Arc<Session>>,
    ) -> NvmeTcpHost {
        let state = match &session {
            Some(s) => State::Up(s.clone()),
            None => State::Down("not connected yet".into()),
        };
        let (state, _) = watch::channel(state);
        let identity = config
            .expected_identity
            .or(session.as_ref().and_then(|s| s.identity));
        let host = NvmeTcpHost {
            inner: Arc::new(HostInner {
                config,
                geometry,
                state,
                stats: HostStats::default(),
                last_max_transfer: AtomicUsize::new(
                    session
                        .as_ref()
                        .map_or(ASSUMED_MAX_TRANSFER, |s| s.limits.max_transfer),
                ),
                session_epoch: AtomicU64::new(0),
                identity: Mutex::new(identity),
                wrong_namespace: AtomicBool::new(false),
            }),
        };
        tokio::spawn(supervise(Arc::downgrade(&host.inner), session));
        host
    }

    /// The configuration this host connects with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// The target's address.
    pub fn address(&self) -> &TargetAddress {
        &self.inner.config.address
    }

    /// Whether the host is down because a different namespace (another drive) now answers
    /// at the address and NQN: it keeps trying, for the right one to come back.
    pub fn finds_another_drive(&self) -> bool {
        self.inner.wrong_namespace.load(Ordering::Relaxed)
    }

    /// The subsystem NQN.
    pub fn subnqn(&self) -> &str {
        &self.inner.config.subnqn
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        matches!(*self.inner.state.borrow(), State::Up(_))
    }

    /// Counters.
    pub fn stats(&self) -> &HostStats {
        &self.inner.stats
    }

    /// Shuts the controller down cleanly and closes every connection. Runs to its end on a
    /// task of its own: a caller that stops waiting (a timeout) does not leave the connections
    /// open behind a host marked closed.
    pub async fn close(&self) {
        let previous = self.inner.state.send_replace(State::Closed);
        if let State::Up(session) = previous {
            let admin_timeout = self.inner.config.admin_timeout;
            let closing = tokio::spawn(async move {
                let _ = admin::shutdown(&session.admin, admin_timeout).await;
                session.close("host closed");
            });
            let _ = closing.await;
        }
    }

    /// The session to send on: the one up now, or the next one up by `deadline` (the command's
    /// reconnect wait, however many sessions it met that failed); not one that failed (and not
    /// `stale`, one a command found failed before it was sent).
    async fn session_other_than(
        &self,
        stale: Option<&Arc<Session>>,
        deadline: tokio::time::Instant,
    ) -> ZoneResult<Arc<Session>> {
        let usable = |s: &State| match s {
            State::Up(session) => {
                session.failed.borrow().is_none()
                    && !stale.is_some_and(|stale| Arc::ptr_eq(stale, session))
            }
            State::Down(_) => false,
            State::Closed => true,
        };
        {
            let state = self.inner.state.borrow();
            if let State::Up(session) = &*state
                && usable(&state)
            {
                return Ok(session.clone());
            }
        }
        let mut rx = self.inner.state.subscribe();
        let wait = self.inner.config.reconnect_wait;
        let ready = tokio::time::timeout_at(deadline, rx.wait_for(usable)).await;
        match ready {
            Ok(Ok(state)) => match &*state {
                State::Up(session) => Ok(session.clone()),
                _ => Err(ZoneError::Unavailable(format!(
                    "connection to {} is closed",
                    self.address()
                ))),
            },
            Ok(Err(_)) => Err(ZoneError::Unavailable("host dropped".into())),
            Err(_) => {
                let reason = match &*self.inner.state.borrow() {
                    State::Down(reason) => reason.clone(),
                    _ => "unknown".into(),
                };
                Err(ZoneError::Unavailable(format!(
                    "target {} ({}) unreachable for {wait:?}: {reason}",
                    self.address(),
                    self.subnqn()
                )))
            }
        }
    }

    /// Runs one I/O command; maps a failed status to the zone error it stands for.
    async fn io(
        &self,
        what: &str,
        sqe: Sqe,
        data_out: Bytes,
        lba: u64,
        blocks: u64,
    ) -> ZoneResult<Completion> {
        self.io_in(what, sqe, data_out, lba, blocks, None)
            .await?
            .ok_or_else(|| ZoneError::Unavailable("no session to send on".into()))
    }

    /// [`NvmeTcpHost::io`], sent only on a session numbered `in_session` if given: `None` when
    /// the one there is to send on has another number (nothing was sent).
    async fn io_in(
        &self,
        what: &str,
        mut sqe: Sqe,
        data_out: Bytes,
        lba: u64,
        blocks: u64,
        in_session: Option<u64>,
    ) -> ZoneResult<Option<Completion>> {
        let stats = &self.inner.stats;
        let other_session =
            |s: &Session| in_session.is_some_and(|n| n != s.epoch.load(Ordering::SeqCst));
        // No session to send on (the target unreachable) fails the command as much as one
        // that failed on the wire: counted alike.
        let counted = |e: ZoneError| {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            e
        };
        // One reconnect wait in all for a session to send on, however many fail before the
        // command is sent (time waiting for a queue entry is not waiting for a session).
        // (What is left of it, counted down only while waiting for a session.)
        let mut left = self.inner.config.reconnect_wait;
        let asked = tokio::time::Instant::now();
        let mut session = self
            .session_other_than(None, asked + left)
            .await
            .map_err(counted)?;
        left = left.saturating_sub(asked.elapsed());
        if other_session(&session) {
            return Ok(None);
        }
        let written = data_out.len() as u64;
        // A read whose data was damaged on the way (its digest did not match) is read again,
        // once: nothing is wrong with the drive.
        let mut read_again = matches!(
            sqe.opcode(),
            crate::spec::opcode::io::READ | crate::spec::opcode::io::ZONE_MGMT_RECV
        );
        let result = loop {
            sqe.set_nsid(session.limits.nsid);
            let result = {
                // Counted while it runs, also if the caller stops waiting (a timeout, a client
                // gone).
                let _counted = InFlight::enter(&stats.in_flight);
                session
                    .io_queue()
                    .submit(
                        sqe.clone(),
                        data_out.clone(),
                        self.inner.config.command_timeout,
                    )
                    .await
            };
            match result {
                // Never sent (its session failed as it waited for a queue entry): it waits
                // for the next session, as a command issued while down does — again each time
                // a session fails under it, within the one reconnect wait (each round needs a
                // new session, so it cannot spin).
                Err(HostError::NotSent(_)) => {
                    let failed = tokio::time::Instant::now();
                    session = self
                        .session_other_than(Some(&session), failed + left)
                        .await
                        .map_err(counted)?;
                    left = left.saturating_sub(failed.elapsed());
                    if other_session(&session) {
                        return Ok(None);
                    }
                }
                Ok(done)
                    if read_again && done.cqe.status() == Status::TRANSIENT_TRANSPORT_ERROR =>
                {
                    read_again = false;
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(lba, "read data damaged on the way; reading it again");
                }
                result => break result,
            }
        };
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into_zone_error());
            }
        };
        let status = done.cqe.status();
        if !status.is_success() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(status.to_zone_error(what, lba, blocks, self.inner.geometry.zone_size));
        }
        stats.commands.fetch_add(1, Ordering::Relaxed);
        stats.bytes_written.fetch_add(written, Ordering::Relaxed);
        stats
            .bytes_read
            .fetch_add(done.data.len() as u64, Ordering::Relaxed);
        Ok(Some(done))
    }

    /// A Zone Append, sent only on a session numbered `in_session` if given (`None`: not sent,
    /// see [`NvmeTcpHost::io_in`]).
    async fn append_in(
        &self,
        zslba: u64,
        data: Bytes,
        hint: WriteHint,
        in_session: Option<u64>,
    ) -> ZoneResult<Option<u64>> {
        // The target checks the append limit, in the order the specification gives.
        let blocks = self.blocks_of(&data)?;
        let mut sqe = Sqe::new(io::ZONE_APPEND, 0);
        // Dataset Management in CDW13, as for a Write (the Linux host builds both alike).
        sqe.set_slba(zslba)
            .set_cdw(12, (blocks - 1) as u32)
            .set_cdw(13, u32::from(hint.dsm()));
        let Some(done) = self
            .io_in("zone append", sqe, data, zslba, blocks, in_session)
            .await?
        else {
            return Ok(None);
        };
        // Where the target says the data went must lie inside the zone's writable capacity:
        // the caller records it as where the data is.
        let lba = done.cqe.result();
        let g = &self.inner.geometry;
        let inside = lba >= zslba
            && lba
                .checked_add(blocks)
                .is_some_and(|end| end <= zslba + g.zone_capacity);
        if !inside {
            return Err(ZoneError::MediaError(format!(
                "the target placed a {blocks}-block Zone Append to the zone at {zslba} at LBA {lba}, outside the zone"
            )));
        }
        Ok(Some(lba))
    }

    fn max_transfer_blocks(&self) -> u64 {
        let session_limit = match &*self.inner.state.borrow() {
            State::Up(s) => s.limits.max_transfer,
            _ => self.inner.last_max_transfer.load(Ordering::Relaxed),
        };
        (session_limit as u64 / u64::from(self.inner.geometry.block_size)).clamp(1, 65536)
    }

    fn blocks_of(&self, data: &Bytes) -> ZoneResult<u64> {
        match self.inner.geometry.blocks_of(data.len()) {
            Some(0) | None => Err(ZoneError::InvalidField(format!(
                "data length {} is not a positive multiple of the {}-byte block size",
                data.len(),
                self.inner.geometry.block_size
            ))),
            Some(blocks) => Ok(blocks),
        }
    }
}

/// Watches the live session; when it fails, reconnects with backoff until the host is closed.
async fn supervise(host: std::sync::Weak<HostInner>, mut session: Option<Arc<Session>>) {
    // Ends with the host: when its last handle is dropped (unclosed), its state's sender goes
    // with it, and the session's connections and keep-alive must not outlive it.
    let Some(mut state) = host.upgrade().map(|inner| inner.state.subscribe()) else {
        return;
    };
    // The first wait before reconnecting: it grows while sessions fail soon after they are
    // made (a target that accepts a session and drops it at once must not have one built every
    // few milliseconds), and starts small again after a session that lasted.
    let mut first_wait = RECONNECT_FIRST_WAIT;
    loop {
        let began = tokio::time::Instant::now();
        if let Some(session) = session.take() {
            let mut failed = session.failed.clone();
            let reason = tokio::select! {
                failed = failed.wait_for(|f| f.is_some()) => match failed {
                    Ok(reason) => reason.clone().unwrap_or_default(),
                    Err(_) => "session ended".into(),
                },
                () = dropped(&mut state) => {
                    session.close("host dropped");
                    return;
                }
            };
            session.close(&reason);
            let Some(inner) = host.upgrade() else { return };
            if matches!(*inner.state.borrow(), State::Closed) {
                return;
            }
            tracing::warn!(address = %inner.config.address, subsystem = %inner.config.subnqn, "NVMe/TCP connection lost ({reason}); reconnecting");
            // Before the host is seen down: a command sent from now on runs in the next
            // session, and counts in it.
            inner.session_epoch.fetch_add(1, Ordering::SeqCst);
            if !set_unless_closed(&inner, State::Down(reason)) {
                return;
            }
        }
        first_wait = next_first_wait(first_wait, began.elapsed());
        match reconnect(&host, first_wait).await {
            Some(s) => session = Some(s),
            None => return,
        }
    }
}

/// The first wait before the next reconnect, after one that began with `previous` and gave a
/// session that `lasted` (see [`supervise`]).
fn next_first_wait(previous: Duration, lasted: Duration) -> Duration {
    if lasted >= SESSION_LASTED {
        RECONNECT_FIRST_WAIT
    } else {
        (previous * 2).min(RECONNECT_LAST_WAIT)
    }
}

/// The first wait before reconnecting after a session that lasted, and the longest wait.
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(50);
const RECONNECT_LAST_WAIT: Duration = Duration::from_secs(2);
/// How long a session must have been up for the next reconnect to start with the shortest
/// wait again.
const SESSION_LASTED: Duration = Duration::from_secs(10);

/// Returns when the host that `state` watches is dropped.
async fn dropped(state: &mut watch::Receiver<State>) {
    while state.changed().await.is_ok() {}
}

/// Moves the host to `state` unless it was closed meanwhile; returns whether it did.
fn set_unless_closed(inner: &HostInner, state: State) -> bool {
    let mut state = Some(state);
    inner.state.send_if_modified(|current| {
        if matches!(current, State::Closed) {
            return false;
        }
        if let Some(next) = state.take() {
            *current = next;
        }
        true
    });
    state.is_none()
}

/// Tries to connect again, with backoff from `first_wait`, until it works (the new session,
/// with the host up) or the host is closed or dropped (`None`).
async fn reconnect(
    host: &std::sync::Weak<HostInner>,
    first_wait: Duration,
) -> Option<Arc<Session>> {
    let mut backoff = first_wait;
    let mut refused: Option<String> = None;
    loop {
        tokio::time::sleep(backoff).await;
        let inner = host.upgrade()?;
        if matches!(*inner.state.borrow(), State::Closed) {
            return None;
        }
        match Session::establish(&inner.config).await {
            Ok(s) if s.geometry == inner.geometry && inner.same_identity(s.identity) => {
                inner
                    .last_max_transfer
                    .store(s.limits.max_transfer, Ordering::Relaxed);
                // (The number was moved on when the last session failed, before this one.)
                s.epoch
                    .store(inner.session_epoch.load(Ordering::SeqCst), Ordering::SeqCst);
                let s = Arc::new(s);
                inner.wrong_namespace.store(false, Ordering::Relaxed);
                // Counted before commands waiting for the session can run on it (and their
                // callers look at the count).
                inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                // Closed while connecting: the new session goes too.
                if !set_unless_closed(&inner, State::Up(s.clone())) {
                    s.close("host closed");
                    return None;
                }
                tracing::info!(address = %inner.config.address, "NVMe/TCP connection restored");
                return Some(s);
            }
            Ok(s) => {
                let e = if s.geometry != inner.geometry {
                    HostError::GeometryChanged {
                        before: inner.geometry,
                        after: s.geometry,
                    }
                } else {
                    inner.wrong_namespace.store(true, Ordering::Relaxed);
                    HostError::IdentityChanged {
                        before: inner.identity.lock().map_or("none".into(), hex),
                        after: s.identity.map_or("none".into(), hex),
                    }
                };
                s.close("a different namespace answers");
                // Said once per episode; the host keeps trying quietly for the right one.
                let message = e.to_string();
                if refused.as_deref() != Some(message.as_str()) {
                    tracing::error!(address = %inner.config.address, "{message}");
                    refused = Some(message);
                }
                if !set_unless_closed(&inner, State::Down(e.to_string())) {
                    return None;
                }
            }
            Err(e) => {
                // Down, not another drive (as far as anyone can tell now).
                inner.wrong_namespace.store(false, Ordering::Relaxed);
                tracing::debug!("reconnect to {} failed: {e}", inner.config.address);
                if !set_unless_closed(&inner, State::Down(e.to_string())) {
                    return None;
                }
            }
        }
        backoff = (backoff * 2).min(RECONNECT_LAST_WAIT);
    }
}

#[async_trait]
impl ZonedDevice for NvmeTcpHost {
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn is_available(&self) -> bool {
        self.is_connected()
    }

    fn session(&self) -> u64 {
        self.inner.session_epoch.load(Ordering::SeqCst)
    }

    fn identity(&self) -> Option<[u8; 16]> {
        *self.inner.identity.lock()
    }

    async fn read(&self, lba: u64, blocks: u32) -> ZoneResult<Bytes> {
        let block = u64::from(self.inner.geometry.block_size);
        let chunk = self.max_transfer_blocks();
        let total = u64::from(blocks);
        if total == 0 {
            return Err(ZoneError::LbaOutOfRange { lba, blocks: 0 });
        }
        let read_at = |at: u64, n: u64| {
            let mut sqe = Sqe::new(io::READ, 0);
            sqe.set_slba(lba + at)
                .set_cdw(12, (n - 1) as u32)
                .set_sgl((n * block) as u32, false);
            self.io("read", sqe, Bytes::new(), lba + at, n)
        };
        if total <= chunk {
            // One command: no join of parts (most reads, and the hot path of small ones).
            return Ok(read_at(0, total).await?.data);
        }
        let mut parts = Vec::new();
        let mut at = 0;
        while at < total {
            let n = (total - at).min(chunk);
            parts.push(read_at(at, n));
            at += n;
        }
        let done = futures::future::try_join_all(parts).await?;
        let mut all = BytesMut::with_capacity((total * block) as usize);
        for part in done {
            all.extend_from_slice(&part.data);
        }
        Ok(all.freeze())
    }

    async fn write(&self, lba: u64, data: Bytes) -> ZoneResult<()> {
        let blocks = self.blocks_of(&data)?;
        let block = self.inner.geometry.block_size as usize;
        let chunk = self.max_transfer_blocks();
        // Sequential: each chunk must land at the write pointer the previous one left.
        let mut at = 0;
        while at < blocks {
            let n = (blocks - at).min(chunk);
            let mut sqe = Sqe::new(io::WRITE, 0);
            sqe.set_slba(lba + at).set_cdw(12, (n - 1) as u32);
            let part = data.slice(at as usize * block..(at + n) as usize * block);
            self.io("write", sqe, part, lba + at, n).await?;
            at += n;
        }
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u32) -> ZoneResult<()> {
        if blocks == 0 {
            return Err(ZoneError::InvalidField(
                "write zeroes of zero blocks".into(),
            ));
        }
        let mut at = 0u64;
        while at < u64::from(blocks) {
            let n = (u64::from(blocks) - at).min(65536);
            let mut sqe = Sqe::new(io::WRITE_ZEROES, 0);
            sqe.set_slba(lba + at).set_cdw(12, (n - 1) as u32);
            self.io("write zeroes", sqe, Bytes::new(), lba + at, n)
                .await?;
            at += n;
        }
        Ok(())
    }

    async fn append(&self, zslba: u64, data: Bytes) -> ZoneResult<u64> {
        self.append_hinted(zslba, data, WriteHint::None).await
    }

    async fn append_hinted(&self, zslba: u64, data: Bytes, hint: WriteHint) -> ZoneResult<u64> {
        self.append_in(zslba, data, hint, None)
            .await?
            .ok_or_else(|| ZoneError::Unavailable("no session to send on".into()))
    }

    async fn append_in_session(
        &self,
        zslba: u64,
        data: Bytes,
        hint: WriteHint,
        session: u64,
    ) -> Option<ZoneResult<u64>> {
        self.append_in(zslba, data, hint, Some(session))
            .await
            .transpose()
    }

    async fn flush(&self) -> ZoneResult<()> {
        let sqe = Sqe::new(io::FLUSH, 0);
        self.io("flush", sqe, Bytes::new(), 0, 0).await.map(|_| ())
    }

    async fn manage_zones(&self, action: ZoneAction, select: ZoneSelect) -> ZoneResult<()> {
        let mut sqe = Sqe::new(io::ZONE_MGMT_SEND, 0);
        let (slba, all) = match select {
            ZoneSelect::Zone(zslba) => (zslba, 0),
            ZoneSelect::All => (0, 1 << 8),
        };
        sqe.set_slba(slba)
            .set_cdw(13, u32::from(action.code()) | all);
        match self.io("zone management", sqe, Bytes::new(), slba, 1).await {
            Ok(_) => Ok(()),
            Err(ZoneError::InvalidZoneStateTransition { zslba, state, .. }) => {
                Err(ZoneError::InvalidZoneStateTransition {
                    action,
                    zslba,
                    state,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn report_zones(
        &self,
        start_lba: u64,
        filter: ReportFilter,
        max_zones: usize,
    ) -> ZoneResult<ZoneReport> {
        let limit_bytes =
            (self.max_transfer_blocks() * u64::from(self.inner.geometry.block_size)) as usize;
        let per_command = report::capacity(limit_bytes).max(1);
        let mut result: Option<ZoneReport> = None;
        let mut next = start_lba;
        loop {
            let have = result.as_ref().map_or(0, |r| r.zones.len());
            let want = (max_zones - have).min(per_command);
            let len = report::ENTRY_LEN * (1 + want);
            let mut sqe = Sqe::new(io::ZONE_MGMT_RECV, 0);
            sqe.set_slba(next)
                .set_cdw(12, (len / 4 - 1) as u32)
                .set_cdw(13, u32::from(filter.code()) << 8)
                .set_sgl(len as u32, false);
            let done = self.io("report zones", sqe, Bytes::new(), next, 1).await?;
            let geometry = &self.inner.geometry;
            let part = report::decode_report(&done.data)
                .and_then(|part| {
                    report::check_report(
                        &part.zones,
                        next,
                        geometry.zone_size,
                        geometry.total_blocks(),
                    )
                    .map(|()| part)
                })
                .map_err(|e| {
                    ZoneError::MediaError(format!("bad zone report from the target: {e}"))
                })?;
            let last = part.zones.last().map(|z| z.zslba);
            let got = part.zones.len();
            match result.as_mut() {
                None => result = Some(part),
                Some(r) => r.zones.extend(part.zones),
            }
            let r = result.as_ref().expect("set above");
            let Some(last) = last else { break };
            if r.zones.len() >= max_zones || got < want {
                break;
            }
            match last.checked_add(self.inner.geometry.zone_size) {
                Some(n) if n > next && n < self.inner.geometry.total_blocks() => next = n,
                _ => break,
            }
        }
        let mut r = result.expect("at least one report");
        r.zones.truncate(max_zones);
        Ok(r)
    }
}

/// A command counted in flight until dropped.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_that_fail_at_once_are_rebuilt_ever_more_slowly() {
        let mut wait = RECONNECT_FIRST_WAIT;
        let mut waits = Vec::new();
        for _ in 0..8 {
            wait = next_first_wait(wait, Duration::from_millis(5));
            waits.push(wait);
        }
        assert_eq!(waits[0], RECONNECT_FIRST_WAIT * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), RECONNECT_LAST_WAIT);
        assert_eq!(
            next_first_wait(RECONNECT_LAST_WAIT, SESSION_LASTED),
            RECONNECT_FIRST_WAIT,
            "a session that lasted starts the waits over"
        );
    }
}
