//! One queue of a controller on one TCP connection: connection set-up (ICReq/ICResp, Connect),
//! the receive loop (command capsules, R2T and H2CData flow), and how completions go back
//! (C2HData, CapsuleResp). Malformed PDUs end the connection with a C2HTermReq; bad commands
//! only fail the command.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use super::TargetInner;
use super::controller::{Controller, IoQueueRefused};
use super::subsystem::Subsystem;
use super::{admin, io};
use crate::spec::connect::{self, CNTLID_DYNAMIC, Connect, invalid_parameter};
use crate::spec::opcode::{self, admin as admin_op, fctype};
use crate::transport::{Backlog, FrameSender, PduReader, ReadError, spawn_writer};
use crate::wire::command::{Cqe, FLAGS_SGL, SGL_IN_CAPSULE, SGL_TRANSPORT, Sqe};
use crate::wire::pdu::{
    CapsuleCmd, CapsuleResp, DataPdu, Decoder, Fes, Frame, Framing, HOST_TO_CONTROLLER, IcResp,
    Pdu, PduError, R2t, TermReq, encode,
};
use crate::wire::status::Status;

/// In-capsule data a host may send on an admin queue (Linux: NVME_TCP_ADMIN_CCSZ).
pub(crate) const ADMIN_IN_CAPSULE: u32 = 8192;
/// How long a new connection may take to send its ICReq.
const IC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may go on after its ICReq without connecting a queue (a host sends
/// its Connect at once; nothing else is served before it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a command handler answers.
pub(crate) enum Reply {
    /// Completed: a status, the 64-bit result (CQE DW0/DW1) and data for the host.
    Done {
        status: Status,
        result: u64,
        data: Bytes,
    },
    /// Held by the controller (an Asynchronous Event Request).
    Held,
}

impl Reply {
    pub(crate) fn ok() -> Self {
        Reply::result(0)
    }

    pub(crate) fn result(result: u64) -> Self {
        Reply::Done {
            status: Status::SUCCESS,
            result,
            data: Bytes::new(),
        }
    }

    pub(crate) fn data(data: Bytes) -> Self {
        Reply::Done {
            status: Status::SUCCESS,
            result: 0,
            data,
        }
    }

    pub(crate) fn error(status: Status) -> Self {
        Reply::error_with(status, 0)
    }

    pub(crate) fn error_with(status: Status, result: u64) -> Self {
        Reply::Done {
            status,
            result,
            data: Bytes::new(),
        }
    }
}

/// What command handlers see of their queue.
pub(crate) struct QueueCtx {
    pub(crate) target: Arc<TargetInner>,
    pub(crate) controller: Arc<Controller>,
    pub(crate) qid: u16,
    pub(crate) local: SocketAddr,
    pub(crate) tx: FrameSender,
    pub(crate) framing: Framing,
    sqsize: u16,
    sqflow_disabled: bool,
    sq_head: AtomicU32,
    closed: AtomicBool,
    /// The generation of the controller's I/O queues this one belongs to (see
    /// [`Controller::io_queues_deleted`]); 0 for the admin queue.
    io_generation: u64,
    /// The connection's read budget, in [`READ_BUDGET_UNIT`]s (see
    /// [`super::TargetConfig::max_outstanding_read`]).
    read_budget: Arc<Semaphore>,
    /// The command identifiers in flight on the queue.
    cids: Arc<CidsInFlight>,
}

/// The command identifiers in flight on a queue (one bit each): a command whose identifier is
/// that of one in flight gets Command ID Conflict, for the host could not tell their
/// completions apart. An identifier is let go just before its completion is sent, so a host
/// reusing it once it has the completion never finds it taken.
pub(crate) struct CidsInFlight {
    bits: Box<[AtomicU64]>,
}

impl CidsInFlight {
    fn new() -> Self {
        CidsInFlight {
            bits: (0..(1usize << 16) / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Takes `cid`; false if it is in flight already.
    fn claim(&self, cid: u16) -> bool {
        let bit = 1u64 << (cid % 64);
        self.bits[usize::from(cid / 64)].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Lets `cid` go.
    fn release(&self, cid: u16) {
        let bit = 1u64 << (cid % 64);
        self.bits[usize::from(cid / 64)].fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Bytes one permit of a read budget stands for.
const READ_BUDGET_UNIT: usize = 4096;

/// Permits of the read budget of a connection to queue `qid`. An admin queue (all that a
/// discovery connection has, open to any host) holds at most one command's largest transfer:
/// its log pages and identify data need no more, and a thousand connections asking for large
/// log pages they never read must not hold the full read budget each.
fn read_budget_units(config: &super::TargetConfig, qid: u16) -> usize {
    let bytes = if qid == 0 {
        config
            .max_outstanding_read
            .min(config.max_transfer as usize)
    } else {
        config.max_outstanding_read
    };
    bytes.div_ceil(READ_BUDGET_UNIT).max(1)
}

impl QueueCtx {
    pub(crate) fn subsystem(&self) -> &Arc<Subsystem> {
        &self.controller.subsystem
    }

    fn next_sq_head(&self) -> u16 {
        if self.sqflow_disabled {
            return 0xFFFF;
        }
        let entries = u32::from(self.sqsize) + 1;
        let advance = |head: u32| Some((head + 1) % entries);
        let previous = self
            .sq_head
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, advance)
            .unwrap_or_default();
        ((previous + 1) % entries) as u16
    }

    /// Sends a completion (and its data) for command `cid`.
    pub(crate) async fn complete(&self, cid: u16, status: Status, result: u64, data: Bytes) {
        self.complete_holding(cid, status, result, data, None).await
    }

    /// Waits until the connection's read budget allows `bytes` more of read data to be held;
    /// the hold lasts until the data is sent.
    async fn reserve_read(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        take_budget(
            &self.read_budget,
            bytes,
            read_budget_units(&self.target.config, self.qid),
        )
        .await
    }

    /// [`QueueCtx::complete`], keeping `held` until the completion (and its data) is sent.
    async fn complete_holding(
        &self,
        cid: u16,
        status: Status,
        result: u64,
        data: Bytes,
        held: Option<OwnedSemaphorePermit>,
    ) {
        self.cids.release(cid);
        self.send_completion(cid, status, result, data, held).await
    }

    /// Completes a command the controller held (an Asynchronous Event Request) with `status`
    /// and no data, from outside the queue's tasks: unless the connection is closing (nothing
    /// may follow a C2HTermReq), and without waiting for room in the writer's queue.
    pub(crate) fn answer_held(&self, cid: u16, status: Status) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        self.cids.release(cid);
        let cqe = Cqe::new(cid, self.qid, self.next_sq_head(), status, 0);
        let _ = self
            .tx
            .try_send(encode(&Pdu::CapsuleResp(CapsuleResp { cqe }), self.framing));
    }

    /// Sends a completion (and its data) for `cid`, which stays in flight.
    async fn send_completion(
        &self,
        cid: u16,
        status: Status,
        result: u64,
        data: Bytes,
        held: Option<OwnedSemaphorePermit>,
    ) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        // Traffic-based keep alive: a completion is traffic too. A host may skip its next Keep
        // Alive after seeing one, so a long command must not leave the timer measuring from
        // when it arrived.
        self.controller.touch();
        let stats = &self.target.stats;
        stats.commands.fetch_add(1, Ordering::Relaxed);
        if !status.is_success() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        if status.sct == crate::wire::status::SCT_MEDIA {
            stats.media_errors.fetch_add(1, Ordering::Relaxed);
        }
        let sqhd = self.next_sq_head();
        let cqe = Cqe::new(cid, self.qid, sqhd, status, result);
        let resp = encode(&Pdu::CapsuleResp(CapsuleResp { cqe }), self.framing);
        let frame = if status.is_success() && !data.is_empty() {
            stats
                .bytes_read
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            // With SQ flow control disabled, the last C2HData may carry the completion itself.
            let success = self.sqflow_disabled && result == 0;
            let c2h = encode(
                &Pdu::C2HData(DataPdu {
                    cccid: cid,
                    ttag: 0,
                    datao: 0,
                    last: true,
                    success,
                    data,
                    data_digest_error: false,
                }),
                self.framing,
            );
            if success { c2h } else { c2h.followed_by(resp) }
        } else {
            resp
        };
        let frame = Frame {
            held: held.map(Arc::new),
            ..frame
        };
        let _ = self.tx.send(frame).await;
    }
}

/// A write command waiting for its data.
struct Transfer {
    sqe: Sqe,
    /// H2CData payloads received so far, kept as received (one, usually: no copy)...
    chunks: Vec<Bytes>,
    /// ...but for small ones, copied together here: a payload slice pins its whole receive
    /// buffer, so a host sending many tiny H2CData PDUs would otherwise make the target hold
    /// many times the data it asked for.
    small: BytesMut,
    received: usize,
    expected: usize,
    r2t_sent: bool,
    digest_error: bool,
    permit: Option<OwnedSemaphorePermit>,
}

/// H2CData payloads below this size are copied (see [`Transfer::small`]): they share their
/// receive buffer with other PDUs, where larger ones keep at most about twice their size alive
/// (see [`crate::transport::owned_payload`]).
const COPY_BELOW: usize = crate::transport::LARGE_PDU;

impl Transfer {
    /// Adds the payload of an H2CData PDU.
    fn add(&mut self, data: Bytes) {
        self.received += data.len();
        if data.len() < COPY_BELOW {
            self.small.extend_from_slice(&data);
            return;
        }
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        self.chunks.push(data);
    }

    /// Everything received, as one buffer.
    fn take_data(&mut self) -> Bytes {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        join(&mut self.chunks, self.expected)
    }
}

/// The chunks as one buffer, copying only when there are several.
fn join(chunks: &mut Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut all = BytesMut::with_capacity(len);
    for chunk in chunks.drain(..) {
        all.extend_from_slice(&chunk);
    }
    all.freeze()
}

/// The receive side of one connection.
struct Connection {
    target: Arc<TargetInner>,
    peer: SocketAddr,
    local: SocketAddr,
    tx: FrameSender,
    framing: Framing,
    ctx: Option<Arc<QueueCtx>>,
    slots: Arc<Semaphore>,
    transfers: HashMap<u16, Transfer>,
    waiting_for_r2t: VecDeque<u16>,
    /// Write data requested by R2T and not yet written by the drive (bounds memory).
    r2t_outstanding: Arc<AtomicUsize>,
    /// Signalled when a write completes and frees budget.
    r2t_freed: Arc<Notify>,
    /// Write data that came in capsules and is not yet written by the drive, in
    /// [`READ_BUDGET_UNIT`]s (see [`super::TargetConfig::max_outstanding_r2t`]): while it is
    /// spent, the connection reads no further PDUs. (That cannot stall what would free it:
    /// these writes wait only for the drive.)
    in_capsule_budget: Arc<Semaphore>,
    next_ttag: u16,
    /// Commands running and input not yet decoded, for the writer.
    backlog: Arc<Backlog>,
    /// Commands that had to wait, running as tasks of their own (aborted when dropped).
    spawned: tokio::task::JoinSet<()>,
    /// The command identifiers in flight (shared with the queue's context once connected).
    cids: Arc<CidsInFlight>,
}

impl Drop for Connection {
    /// However the connection ends (also by a panic in a command that ran inline), its queue
    /// does not stay registered with the controller, and its commands still waiting are
    /// stopped: their host has failed them and may be sending them again on a new connection,
    /// where an old reset or write running late would undo the new ones.
    fn drop(&mut self) {
        self.spawned.abort_all();
        self.close();
    }
}

/// What a write's data holds of its connection's write budgets until the drive has written it
/// (given back when dropped).
enum WriteHold {
    /// Data the target asked for with R2Ts.
    Requested { _held: BudgetHold },
    /// Data that came in the command's capsule.
    InCapsule { _held: OwnedSemaphorePermit },
}

/// Waits until `budget` (of `total` permits, each [`READ_BUDGET_UNIT`] bytes) has room for
/// `bytes`; one larger than the whole budget takes all of it. `None` once the budget is
/// closed.
async fn take_budget(
    budget: &Arc<Semaphore>,
    bytes: usize,
    total: usize,
) -> Option<OwnedSemaphorePermit> {
    let units = bytes.div_ceil(READ_BUDGET_UNIT).clamp(1, total);
    budget
        .clone()
        .acquire_many_owned(u32::try_from(units).unwrap_or(u32::MAX))
        .await
        .ok()
}

/// Permits of a connection's budget for in-capsule write data.
fn in_capsule_budget_units(config: &super::TargetConfig) -> usize {
    config.max_outstanding_r2t.div_ceil(READ_BUDGET_UNIT).max(1)
}

/// Holds a write's share of the connection's R2T budget until the drive has written it.
struct BudgetHold {
    outstanding: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    amount: usize,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(self.amount, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Command slots of a queue of `sqsize` + 1 entries: twice the queue, as the Linux target
/// allows, since a command's slot is freed only after its completion is queued, and the host
/// may reuse the entry as soon as the completion reaches it. Fewer than the 65536 transfer
/// tags, so that a write waiting for its R2T always finds a free one.
fn slots_for(sqsize: u16) -> usize {
    (2 * (usize::from(sqsize) + 1)).min(usize::from(u16::MAX))
}

/// Idle time before TCP keepalive probes a host's connection, the time between probes, and the
/// probes unanswered before the connection is given up (a dead host is found in two minutes).
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_PROBES: u32 = 6;

/// Keep-alive timeout of a discovery controller whose host asked for none, as the Linux target
/// sets (NVMET_DISC_KATO_MS): a host that vanishes does not keep it for ever.
const DISCOVERY_KATO_MS: u32 = 120_000;

/// Most entries an admin queue may have (MQES bounds only I/O queues over fabrics): far above
/// the 32 hosts ask for, while bounding what a queue's command slots take.
const MAX_ADMIN_QUEUE_ENTRIES: u32 = 4096;

/// Serves one TCP connection until the host closes it, the controller is torn down, the
/// target stops, or the host sends something the transport cannot accept.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    target: Arc<TargetInner>,
    mut stop: watch::Receiver<bool>,
) {
    target.stats.connections.fetch_add(1, Ordering::Relaxed);
    target
        .stats
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    // A host gone without closing its connection (powered off, cut off) is found by TCP
    // keepalive even when its controller has no keep-alive timeout (KATO 0 is allowed).
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES),
    );
    let local = stream.local_addr().unwrap_or(peer);
    let (rd, wr) = stream.into_split();
    // Until a Connect is accepted, no PDU may carry more than a Connect needs: a peer that
    // has not connected cannot make the target set aside buffers for large ones.
    let mut reader = PduReader::new(
        rd,
        Decoder::new(HOST_TO_CONTROLLER, ADMIN_IN_CAPSULE as usize),
    );
    let backlog = Arc::new(Backlog::default());
    let (tx, mut writer) = spawn_writer(wr, 1024, backlog.clone());
    // A peer that never sends its ICReq does not hold up a stopping target.
    let initialized = tokio::select! {
        framing = initialize(&mut reader, &tx, &target, peer) => framing,
        _ = stop.wait_for(|stopped| *stopped) => None,
    };
    if let Some(framing) = initialized {
        reader.decoder.framing = Framing {
            digests: framing.digests,
            pda: 0,
        };
        let mut conn = Connection {
            target: target.clone(),
            peer,
            local,
            tx: tx.clone(),
            framing,
            ctx: None,
            slots: Arc::new(Semaphore::new(slots_for(63))),
            transfers: HashMap::new(),
            waiting_for_r2t: VecDeque::new(),
            r2t_outstanding: Arc::new(AtomicUsize::new(0)),
            r2t_freed: Arc::new(Notify::new()),
            in_capsule_budget: Arc::new(Semaphore::new(in_capsule_budget_units(&target.config))),
            next_ttag: 0,
            backlog,
            spawned: tokio::task::JoinSet::new(),
            cids: Arc::new(CidsInFlight::new()),
        };
        conn.run(&mut reader, &mut stop).await;
        // Dropping `conn` detaches its queue from the controller.
    }
    drop(tx);
    // Let queued completions (or a TermReq) reach the host, then close the socket (also when
    // the host has stopped reading them).
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    target
        .stats
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

/// ICReq/ICResp (NVMe/TCP §3.3). Returns the framing of controller-to-host PDUs.
async fn initialize(
    reader: &mut PduReader<OwnedReadHalf>,
    tx: &FrameSender,
    target: &Arc<TargetInner>,
    peer: SocketAddr,
) -> Option<Framing> {
    let first = match tokio::time::timeout(IC_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(pdu))) => pdu,
        Ok(Err(ReadError::Pdu(e))) => {
            terminate(tx, target, e).await;
            return None;
        }
        _ => return None,
    };
    let Pdu::IcReq(ic) = first else {
        let header = encode(&first, Framing::INITIAL).head.slice(..8);
        terminate(
            tx,
            target,
            PduError {
                fes: Fes::PduSequenceError,
                fei: 0,
                header,
                reason: "the first PDU of a connection must be ICReq".into(),
            },
        )
        .await;
        return None;
    };
    let unsupported = |fei, reason: &str| PduError {
        fes: Fes::UnsupportedParameter,
        fei,
        header: Bytes::new(),
        reason: reason.to_string(),
    };
    if ic.pfv != 0 {
        terminate(tx, target, unsupported(8, "PDU format version is not 0")).await;
        return None;
    }
    if ic.hpda > 31 {
        terminate(tx, target, unsupported(10, "HPDA above 31")).await;
        return None;
    }
    let resp = IcResp {
        pfv: 0,
        cpda: 0,
        dgst: ic.dgst,
        maxh2cdata: target.config.max_h2c_data,
    };
    if tx
        .send(encode(&Pdu::IcResp(resp), Framing::INITIAL))
        .await
        .is_err()
    {
        return None;
    }
    tracing::debug!(%peer, digests = ?ic.dgst, "NVMe/TCP connection initialised");
    Some(Framing {
        digests: ic.dgst,
        pda: ic.hpda,
    })
}

async fn terminate(tx: &FrameSender, target: &Arc<TargetInner>, error: PduError) {
    tracing::warn!("NVMe/TCP protocol error, closing the connection: {error}");
    target.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    let term = Pdu::C2HTermReq(TermReq {
        fes: error.fes as u16,
        fei: error.fei,
        data: error.header,
    });
    // Best effort: a host that does not read its socket does not get to hold the connection
    // open by leaving no room for the TermReq.
    let _ = tokio::time::timeout(TERMREQ_TIMEOUT, tx.send(encode(&term, Framing::INITIAL))).await;
}

/// How long a TermReq may wait for room in the writer's queue.
const TERMREQ_TIMEOUT: Duration = Duration::from_secs(1);

/// Completes when the queue of a connection ends on its controller's side (never before it is
/// connected): the controller torn down (keep-alive timeout, or the admin queue closed), or,
/// for an I/O queue, deleted by a Controller Level Reset.
async fn queue_ended(
    controller_down: &mut Option<watch::Receiver<bool>>,
    io_queue_deleted: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
) {
    let down = async {
        match controller_down.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|down| *down).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let deleted = async {
        match io_queue_deleted.as_mut() {
            Some(deleted) => deleted.as_mut().await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = down => {}
        _ = deleted => {}
    }
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut PduReader<OwnedReadHalf>,
        stop: &mut watch::Receiver<bool>,
    ) {
        // Fire when the controller this queue belongs to is torn down, or this I/O queue
        // deleted (see [`queue_ended`]).
        let mut controller_gone: Option<watch::Receiver<bool>> = None;
        let mut io_queue_deleted: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
        let freed = self.r2t_freed.clone();
        let writer = self.tx.clone();
        let connect_deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            if *stop.borrow() {
                return;
            }
            // Handling a PDU may wait (for room in the writer's queue, when the host does not
            // read): it races the stop and teardown signals too, so neither goes unheard; and
            // once the writer has given up on the host, nothing more is worth reading.
            let result = tokio::select! {
                _ = stop.changed() => return,
                _ = queue_ended(&mut controller_gone, &mut io_queue_deleted) => return,
                _ = writer.closed() => return,
                _ = tokio::time::sleep_until(connect_deadline), if self.ctx.is_none() => {
                    tracing::debug!(peer = %self.peer, "no Connect in {CONNECT_TIMEOUT:?}; closing");
                    return;
                }
                _ = freed.notified() => {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = queue_ended(&mut controller_gone, &mut io_queue_deleted) => return,
                        _ = self.issue_r2ts() => {}
                    }
                    continue;
                }
                next = reader.next() => {
                    self.backlog.set_input_pending(reader.has_buffered());
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = queue_ended(&mut controller_gone, &mut io_queue_deleted) => return,
                        _ = writer.closed() => return,
                        handled = self.handle(next) => match handled {
                            Some(result) => result,
                            None => return,
                        },
                    }
                }
            };
            if let Err(e) = result {
                if let Some(ctx) = &self.ctx {
                    ctx.closed.store(true, Ordering::Relaxed);
                }
                terminate(&self.tx, &self.target, e).await;
                return;
            }
            if controller_gone.is_none()
                && let Some(ctx) = &self.ctx
            {
                controller_gone = Some(ctx.controller.shutdown_signal());
                if ctx.qid != 0 {
                    io_queue_deleted = Some(Box::pin(
                        ctx.controller.io_queues_deleted(ctx.io_generation),
                    ));
                }
                // An admin queue takes no data by R2T and at most ADMIN_IN_CAPSULE in a
                // capsule: a larger PDU there is refused at its header, not buffered whole (a
                // host the discovery controller admits could otherwise pin megabytes per
                // connection by sending all but its last bytes).
                let config = &self.target.config;
                if ctx.qid != 0 {
                    reader.decoder.max_data = ADMIN_IN_CAPSULE
                        .max(config.in_capsule_data)
                        .max(config.max_h2c_data)
                        as usize;
                }
            }
        }
    }

    /// Handles one PDU read from the host (or the end of input): `None` when the connection
    /// is over, else whether the PDU was acceptable.
    async fn handle(
        &mut self,
        next: Result<Option<Pdu>, ReadError>,
    ) -> Option<Result<(), PduError>> {
        match next {
            Ok(Some(Pdu::CapsuleCmd(capsule))) => Some(self.on_capsule(capsule).await),
            Ok(Some(Pdu::H2CData(data))) => Some(self.on_h2c_data(data).await),
            Ok(Some(Pdu::H2CTermReq(term))) => {
                tracing::warn!(peer = %self.peer, fes = term.fes, fei = term.fei, "host terminated the connection");
                self.target
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(Some(other)) => Some(Err(PduError {
                fes: Fes::PduSequenceError,
                fei: 0,
                header: encode(&other, Framing::INITIAL).head.slice(..8),
                reason: format!("unexpected PDU type {:#x}", other.type_code()),
            })),
            Ok(None) => None,
            Err(ReadError::Pdu(e)) => Some(Err(e)),
            Err(e) => {
                tracing::debug!(peer = %self.peer, "connection ended: {e}");
                None
            }
        }
    }

    /// Detaches the queue from its controller (tearing the controller down for the admin
    /// queue).
    fn close(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        // Whatever completes later (a held AER answered by the teardown below) is not sent:
        // the host is gone, or was sent a C2HTermReq that nothing may follow.
        ctx.closed.store(true, Ordering::Relaxed);
        if ctx.qid == 0 {
            ctx.controller.teardown();
        } else {
            ctx.controller.remove_io_queue(ctx.qid, ctx.io_generation);
        }
    }

    /// Sends a completion for a command that never reached a handler.
    async fn reject(&self, cid: u16, status: Status, result: u64) {
        self.cids.release(cid);
        self.answer_unclaimed(cid, status, result).await
    }

    /// Sends a completion for `cid` without letting it go (a command whose identifier is
    /// another's in flight).
    async fn answer_unclaimed(&self, cid: u16, status: Status, result: u64) {
        match &self.ctx {
            Some(ctx) => {
                ctx.send_completion(cid, status, result, Bytes::new(), None)
                    .await
            }
            None => {
                let cqe = Cqe::new(cid, 0, 0, status, result);
                let _ = self
                    .tx
                    .send(encode(&Pdu::CapsuleResp(CapsuleResp { cqe }), self.framing))
                    .await;
            }
        }
    }

    async fn on_capsule(&mut self, capsule: CapsuleCmd) -> Result<(), PduError> {
        let sqe = capsule.sqe;
        let cid = sqe.cid();
        if let Some(ctx) = &self.ctx {
            ctx.controller.touch();
        }
        if !self.cids.claim(cid) {
            self.answer_unclaimed(cid, Status::COMMAND_ID_CONFLICT, 0)
                .await;
            return Ok(());
        }
        if sqe.flags() != FLAGS_SGL {
            // Fused commands are not supported, and over fabrics PSDT must say SGL with a
            // contiguous metadata buffer (as the Linux target checks).
            self.reject(cid, Status::INVALID_FIELD, 0).await;
            return Ok(());
        }
        let (op, fc) = (sqe.opcode(), sqe.fctype());
        let writes = opcode::host_to_controller(op, fc);
        let in_capsule_limit = match &self.ctx {
            Some(ctx) if ctx.qid != 0 => self.target.config.in_capsule_data,
            _ => ADMIN_IN_CAPSULE,
        };
        let length = sqe.sgl_length() as usize;
        match sqe.sgl_identifier() {
            SGL_IN_CAPSULE => {
                if capsule.data_digest_error {
                    self.reject(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0).await;
                    return Ok(());
                }
                if !writes {
                    self.reject(cid, Status::INVALID_FIELD, 0).await;
                    return Ok(());
                }
                if sqe.sgl_address() != 0 || length > in_capsule_limit as usize {
                    self.reject(cid, Status::SGL_INVALID_OFFSET, 0).await;
                    return Ok(());
                }
                if length != capsule.data.len() {
                    self.reject(cid, Status::SGL_LENGTH_INVALID, 0).await;
                    return Ok(());
                }
                let hold = if length > 0 {
                    let total = in_capsule_budget_units(&self.target.config);
                    take_budget(&self.in_capsule_budget, length, total)
                        .await
                        .map(|_held| WriteHold::InCapsule { _held })
                } else {
                    None
                };
                // Small data is copied out of the receive buffer, as small H2CData is (see
                // [`Transfer::add`]): a slice would keep the whole buffer, with the PDUs around
                // it, for as long as the write waits, where the budget counts only its length.
                let data = crate::transport::owned_payload(capsule.data);
                self.dispatch(sqe, data, None, hold).await?;
            }
            SGL_TRANSPORT => {
                if !capsule.data.is_empty() {
                    self.reject(cid, Status::INVALID_FIELD, 0).await;
                    return Ok(());
                }
                if length > self.target.config.max_transfer as usize {
                    self.reject(cid, Status::INVALID_FIELD, 0).await;
                    return Ok(());
                }
                if writes && length > 0 && self.ctx.is_none() {
                    // Before a Connect (whose data comes in the capsule) nothing may make the
                    // target ask for and hold data.
                    self.reject(cid, Status::COMMAND_SEQUENCE_ERROR, 0).await;
                    return Ok(());
                }
                // Only a write of blocks is worth asking the host for its data: no other
                // command the target serves uses any, so for those it is not received (and
                // held) at all, and the command runs without it (an unknown one fails as such).
                let io_queue = matches!(&self.ctx, Some(ctx) if ctx.qid != 0);
                let takes_data =
                    io_queue && matches!(op, opcode::io::WRITE | opcode::io::ZONE_APPEND);
                if writes && length > 0 && takes_data {
                    if let Some(ctx) = &self.ctx
                        && let Some(status) = super::io::refused_before_data(ctx, &sqe)
                    {
                        self.reject(cid, status, 0).await;
                        return Ok(());
                    }
                    let permit = Some(self.slot(&sqe)?);
                    let ttag = self.allocate_ttag();
                    self.transfers.insert(
                        ttag,
                        Transfer {
                            sqe,
                            chunks: Vec::new(),
                            small: BytesMut::new(),
                            received: 0,
                            expected: length,
                            r2t_sent: false,
                            digest_error: false,
                            permit,
                        },
                    );
                    self.waiting_for_r2t.push_back(ttag);
                    self.issue_r2ts().await;
                } else {
                    self.dispatch(sqe, Bytes::new(), None, None).await?;
                }
            }
            _ => self.reject(cid, Status::SGL_TYPE_INVALID, 0).await,
        }
        Ok(())
    }

    /// A command slot, or a fatal error when the host has more commands outstanding than
    /// its queue holds (the receive loop must never wait for a slot: a write holding one
    /// waits for data that only the loop can read).
    fn slot(&self, sqe: &Sqe) -> Result<OwnedSemaphorePermit, PduError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| PduError {
                fes: Fes::PduSequenceError,
                fei: 0,
                header: encode(
                    &Pdu::CapsuleCmd(CapsuleCmd {
                        sqe: sqe.clone(),
                        data: Bytes::new(),
                        data_digest_error: false,
                    }),
                    Framing::INITIAL,
                )
                .head
                .slice(..8),
                reason: "the host overran its submission queue".into(),
            })
    }

    fn allocate_ttag(&mut self) -> u16 {
        loop {
            let ttag = self.next_ttag;
            self.next_ttag = self.next_ttag.wrapping_add(1);
            if !self.transfers.contains_key(&ttag) {
                return ttag;
            }
        }
    }

    /// Sends R2Ts for waiting writes while the connection's outstanding R2T data stays within
    /// budget (one R2T per command: the host allows one outstanding R2T per command).
    async fn issue_r2ts(&mut self) {
        let budget = self.target.config.max_outstanding_r2t;
        while let Some(&ttag) = self.waiting_for_r2t.front() {
            let Some(transfer) = self.transfers.get_mut(&ttag) else {
                self.waiting_for_r2t.pop_front();
                continue;
            };
            let outstanding = self.r2t_outstanding.load(Ordering::Acquire);
            if outstanding > 0 && outstanding + transfer.expected > budget {
                return;
            }
            self.waiting_for_r2t.pop_front();
            transfer.r2t_sent = true;
            self.r2t_outstanding
                .fetch_add(transfer.expected, Ordering::AcqRel);
            let r2t = R2t {
                cccid: transfer.sqe.cid(),
                ttag,
                r2to: 0,
                r2tl: transfer.expected as u32,
            };
            let _ = self.tx.send(encode(&Pdu::R2t(r2t), self.framing)).await;
        }
    }

    async fn on_h2c_data(&mut self, data: DataPdu) -> Result<(), PduError> {
        let header = || {
            encode(
                &Pdu::H2CData(DataPdu {
                    data: Bytes::new(),
                    ..data.clone()
                }),
                Framing::INITIAL,
            )
            .head
            .slice(..24)
        };
        let fail = |fes, fei, reason: String| PduError {
            fes,
            fei,
            header: header(),
            reason,
        };
        let Some(transfer) = self.transfers.get_mut(&data.ttag).filter(|t| t.r2t_sent) else {
            return Err(fail(
                Fes::InvalidHeaderField,
                10,
                format!("H2CData for unknown transfer tag {}", data.ttag),
            ));
        };
        if transfer.sqe.cid() != data.cccid {
            return Err(fail(
                Fes::InvalidHeaderField,
                8,
                format!("H2CData CCCID {:#x} does not match the R2T", data.cccid),
            ));
        }
        if data.data.len() > self.target.config.max_h2c_data as usize {
            return Err(fail(
                Fes::DataLimitExceeded,
                0,
                format!("H2CData of {} bytes exceeds MAXH2CDATA", data.data.len()),
            ));
        }
        if data.datao as usize != transfer.received {
            return Err(fail(
                Fes::InvalidHeaderField,
                12,
                format!(
                    "H2CData offset {} where {} was expected",
                    data.datao, transfer.received
                ),
            ));
        }
        if transfer.received + data.data.len() > transfer.expected {
            return Err(fail(
                Fes::DataOutOfRange,
                0,
                "H2CData beyond the requested range".into(),
            ));
        }
        transfer.add(data.data.clone());
        transfer.digest_error |= data.data_digest_error;
        let complete = transfer.received == transfer.expected;
        if data.last != complete {
            return Err(fail(
                Fes::PduSequenceError,
                0,
                if data.last {
                    "LAST_PDU before all requested data".into()
                } else {
                    "the H2CData completing the transfer lacks LAST_PDU".into()
                },
            ));
        }
        if complete {
            let mut transfer = self.transfers.remove(&data.ttag).expect("transfer present");
            let hold = BudgetHold {
                outstanding: self.r2t_outstanding.clone(),
                freed: self.r2t_freed.clone(),
                amount: transfer.expected,
            };
            self.target
                .stats
                .bytes_written
                .fetch_add(transfer.expected as u64, Ordering::Relaxed);
            if transfer.digest_error {
                drop(hold);
                self.reject(transfer.sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR, 0)
                    .await;
            } else {
                let data = transfer.take_data();
                self.dispatch(
                    transfer.sqe,
                    data,
                    transfer.permit,
                    Some(WriteHold::Requested { _held: hold }),
                )
                .await?;
            }
            self.issue_r2ts().await;
        }
        Ok(())
    }

    /// Runs a command whose data (if any) has arrived.
    async fn dispatch(
        &mut self,
        sqe: Sqe,
        data: Bytes,
        permit: Option<OwnedSemaphorePermit>,
        hold: Option<WriteHold>,
    ) -> Result<(), PduError> {
        let is_connect = sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::CONNECT;
        let Some(ctx) = self.ctx.clone() else {
            if is_connect {
                self.connect(&sqe, &data).await;
            } else {
                self.reject(sqe.cid(), Status::COMMAND_SEQUENCE_ERROR, 0)
                    .await;
            }
            return Ok(());
        };
        if is_connect {
            ctx.complete(sqe.cid(), Status::CONNECT_CONTROLLER_BUSY, 0, Bytes::new())
                .await;
            return Ok(());
        }
        if ctx.qid == 0 && sqe.opcode() == admin_op::ASYNC_EVENT_REQUEST {
            // Held, not executed: it needs no slot.
            if let Reply::Done {
                status,
                result,
                data,
            } = admin::execute(&ctx, &sqe, data).await
            {
                ctx.complete(sqe.cid(), status, result, data).await;
            }
            return Ok(());
        }
        let permit = match permit {
            Some(p) => p,
            None => self.slot(&sqe)?,
        };
        if !data.is_empty() && sqe.sgl_identifier() == SGL_IN_CAPSULE {
            self.target
                .stats
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let backlog = self.backlog.clone();
        backlog.begin();
        let mut command = Box::pin(async move {
            let stats = &ctx.target.stats;
            // Data for the host (a read, a zone report, a log page, on any queue) is held
            // until sent: the command waits for room in the read budget first, or a host that
            // asks for much and reads nothing would have it all held in memory.
            let read_hold =
                if opcode::controller_to_host(sqe.opcode(), sqe.fctype()) && sqe.sgl_length() > 0 {
                    ctx.reserve_read(sqe.sgl_length() as usize).await
                } else {
                    None
                };
            let in_flight = stats.command_started();
            let execution = async {
                if ctx.qid == 0 {
                    admin::execute(&ctx, &sqe, data).await
                } else {
                    io::execute(&ctx, &sqe, data).await
                }
            };
            // A command that panics (a drive's bug) is answered, not left for its host to time
            // out with its identifier taken for good.
            let reply = match std::panic::AssertUnwindSafe(execution).catch_unwind().await {
                Ok(reply) => reply,
                Err(_) => {
                    tracing::error!(
                        qid = ctx.qid,
                        cid = sqe.cid(),
                        opcode = sqe.opcode(),
                        "a command panicked: answered Internal Error"
                    );
                    // Without Do Not Retry: what the command did before it panicked is not
                    // known (an append may have landed), no sign the medium is damaged.
                    Reply::error(Status::INTERNAL_ERROR.retryable())
                }
            };
            // The drive has the data: the write budget is free again, whether or not the host
            // reads the completion.
            drop(hold);
            drop(in_flight);
            backlog.end();
            if let Reply::Done {
                status,
                result,
                data,
            } = reply
            {
                ctx.complete_holding(sqe.cid(), status, result, data, read_hold)
                    .await;
            }
            drop(permit);
        });
        // Most commands finish without waiting (a read the page cache serves, a zone report):
        // run them here, in order, and spawn a task only for those that must wait.
        if futures::poll!(command.as_mut()).is_pending() {
            while self.spawned.try_join_next().is_some() {}
            self.spawned.spawn(command);
        }
        Ok(())
    }

    /// Fabrics Connect (NVMe over Fabrics §3.3): creates a controller (admin queue) or attaches
    /// an I/O queue to one.
    async fn connect(&mut self, sqe: &Sqe, data: &[u8]) {
        let cid = sqe.cid();
        let Some(c) = Connect::parse(sqe, data) else {
            return self.reject(cid, Status::SGL_LENGTH_INVALID, 0).await;
        };
        let invalid = |in_data, offset| {
            (
                Status::CONNECT_INVALID_PARAMETERS,
                invalid_parameter(in_data, offset),
            )
        };
        // The controller, and the generation of its I/O queues the queue joins (0 for the
        // admin queue).
        let outcome: Result<(Arc<Controller>, u64), (Status, u64)> = (|| {
            if c.recfmt != 0 {
                return Err((Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
            }
            let Some(subsystem) = self.target.subsystem(&c.subnqn) else {
                return Err(invalid(true, connect::offset::SUBNQN));
            };
            if c.hostnqn.is_empty() || super::validate_nqn(&c.hostnqn).is_err() {
                return Err(invalid(true, connect::offset::HOSTNQN));
            }
            if !subsystem.allows(&c.hostnqn) {
                tracing::warn!(host = %c.hostnqn, subsystem = %c.subnqn, "host not allowed to connect");
                return Err((
                    Status::CONNECT_INVALID_HOST,
                    invalid_parameter(true, connect::offset::HOSTNQN),
                ));
            }
            // Over fabrics, MQES bounds the I/O queues only (as nvmet has it): the admin queue
            // a host asks for (Linux: 32 entries) is taken whatever MQES is.
            let entries = u32::from(c.sqsize) + 1;
            let most = if c.qid == 0 {
                MAX_ADMIN_QUEUE_ENTRIES
            } else {
                u32::from(self.target.config.max_queue_entries)
            };
            if c.sqsize == 0 || entries > most {
                return Err(invalid(false, connect::offset::SQSIZE));
            }
            if c.cattr & connect::CATTR_DISABLE_SQFLOW != 0
                && !self.target.config.sq_flow_control_disable
            {
                return Err(invalid(false, connect::offset::CATTR));
            }
            if c.qid == 0 {
                if c.cntlid != CNTLID_DYNAMIC {
                    return Err(invalid(true, connect::offset::CNTLID));
                }
                let kato_ms = if c.kato_ms == 0 && subsystem.is_discovery() {
                    DISCOVERY_KATO_MS
                } else {
                    c.kato_ms
                };
                let made = subsystem.register_new(|cntlid| {
                    Controller::new(
                        cntlid,
                        subsystem.clone(),
                        c.hostnqn.clone(),
                        c.hostid,
                        kato_ms,
                    )
                });
                return made
                    .map(|controller| (controller, 0))
                    .ok_or((Status::CONNECT_CONTROLLER_BUSY, 0));
            }
            if subsystem.is_discovery() {
                return Err(invalid(false, connect::offset::QID));
            }
            let Some(controller) = subsystem.controller(c.cntlid) else {
                return Err(invalid(true, connect::offset::CNTLID));
            };
            if controller.hostnqn != c.hostnqn || controller.hostid != c.hostid {
                return Err(invalid(true, connect::offset::HOSTNQN));
            }
            if !controller.is_ready() {
                return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
            }
            match controller.add_io_queue(c.qid, self.target.config.max_io_queues) {
                Ok(generation) => Ok((controller, generation)),
                Err(IoQueueRefused::BeyondGrant) => Err(invalid(false, connect::offset::QID)),
                Err(IoQueueRefused::Connected) => Err((Status::COMMAND_SEQUENCE_ERROR, 0)),
            }
        })();
        match outcome {
            Err((status, result)) => {
                tracing::debug!(peer = %self.peer, ?status, "connect refused");
                self.reject(cid, status, result).await;
            }
            Ok((controller, io_generation)) => {
                let cntlid = controller.cntlid;
                controller.touch();
                if c.qid == 0 {
                    // From the Connect on: a host that dies before it enables the controller
                    // (or that disables it and goes quiet) loses it too.
                    controller.start_keep_alive(self.target.clone());
                }
                self.slots = Arc::new(Semaphore::new(slots_for(c.sqsize)));
                let ctx = Arc::new(QueueCtx {
                    target: self.target.clone(),
                    controller,
                    qid: c.qid,
                    local: self.local,
                    tx: self.tx.clone(),
                    framing: self.framing,
                    sqsize: c.sqsize,
                    sqflow_disabled: c.cattr & connect::CATTR_DISABLE_SQFLOW != 0,
                    sq_head: AtomicU32::new(0),
                    closed: AtomicBool::new(false),
                    io_generation,
                    read_budget: Arc::new(Semaphore::new(read_budget_units(
                        &self.target.config,
                        c.qid,
                    ))),
                    cids: self.cids.clone(),
                });
                tracing::debug!(peer = %self.peer, qid = c.qid, cntlid, subsystem = %c.subnqn, host = %c.hostnqn, "queue connected");
                self.ctx = Some(ctx.clone());
                ctx.complete(cid, Status::SUCCESS, u64::from(cntlid), Bytes::new())
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_queue_holds_at_most_one_largest_transfer_of_read_data() {
        let config = super::super::TargetConfig::default();
        let unit = |bytes: usize| bytes / READ_BUDGET_UNIT;
        assert_eq!(
            read_budget_units(&config, 0),
            unit(config.max_transfer as usize)
        );
        assert_eq!(
            read_budget_units(&config, 1),
            unit(config.max_outstanding_read)
        );
        assert!(read_budget_units(&config, 0) < read_budget_units(&config, 1));
    }

    #[test]
    fn a_queue_never_has_more_slots_than_transfer_tags() {
        assert_eq!(slots_for(127), 256);
        assert_eq!(slots_for(1023), 2048);
        assert!(slots_for(u16::MAX) < 1 << 16);
        assert!(slots_for(40_000) < 1 << 16);
    }

    /// Tiny H2CData payloads are copied together (a slice would pin its receive buffer);
    /// large ones are kept as received; the data comes out whole and in order.
    #[test]
    fn small_h2c_payloads_are_copied_together_in_order() {
        let mut transfer = Transfer {
            sqe: Sqe::new(0x01, 1),
            chunks: Vec::new(),
            small: BytesMut::new(),
            received: 0,
            expected: 0,
            r2t_sent: true,
            digest_error: false,
            permit: None,
        };
        let mut want = Vec::new();
        for i in 0..1000u32 {
            let tiny = Bytes::from(vec![i as u8]);
            want.extend_from_slice(&tiny);
            transfer.add(tiny);
        }
        assert!(transfer.chunks.is_empty(), "no tiny slice kept");
        let large = Bytes::from(vec![7u8; COPY_BELOW]);
        want.extend_from_slice(&large);
        transfer.add(large);
        want.extend_from_slice(b"tail");
        transfer.add(Bytes::from_static(b"tail"));
        assert_eq!(transfer.chunks.len(), 2);
        transfer.expected = want.len();
        assert_eq!(transfer.received, want.len());
        assert_eq!(transfer.take_data(), want);
    }
}
