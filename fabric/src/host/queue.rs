//! One host queue on one TCP connection: ICReq/ICResp, Connect, and then any number of commands
//! in flight, each identified by its CID. A reader task matches C2HData, R2T and CapsuleResp
//! PDUs to the waiting commands; a writer task sends capsules and H2CData.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::HostError;
use crate::spec::connect::Connect;
use crate::transport::{Backlog, FrameSender, PduReader, ReadError, spawn_writer};
use crate::wire::command::{Cqe, Sqe};
use crate::wire::digest::Digests;
use crate::wire::pdu::{
    CONTROLLER_TO_HOST, CapsuleCmd, DataPdu, Decoder, Framing, IcReq, Pdu, R2t, encode,
};
use crate::wire::status::Status;

/// A completed command: its completion entry and the data the controller sent.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The completion queue entry.
    pub cqe: Cqe,
    /// Data from C2HData PDUs.
    pub data: Bytes,
}

struct Pending {
    /// Its command ID (entry and generation).
    cid: u16,
    done: oneshot::Sender<Result<Completion, HostError>>,
    /// The queue entry the command takes, given back with its command ID (not when its caller
    /// stops waiting: the ID stays taken until the target answers).
    _permit: OwnedSemaphorePermit,
    /// Bytes of data the command reads (C2HData must bring exactly these).
    expected_in: usize,
    /// When the command counts as lost (checked by the queue's watchdog, not a timer each).
    deadline: Instant,
    /// When it was submitted.
    sent: Instant,
    data_out: Bytes,
    /// Whether `data_out` went in the capsule (no R2T may then ask for it).
    in_capsule: bool,
    /// Bytes of `data_out` R2Ts have asked for so far (each must ask for the next ones).
    solicited: usize,
    /// Whether the H2CData answering the last R2T is still waiting for room in the writer's
    /// queue (a task of its own sends it): no other R2T may come meanwhile (MAXR2T is 0), so
    /// a target cannot make the host hold frames, and tasks, without end.
    answering: bool,
    /// A large read that came whole in one C2HData PDU, kept as it came (it keeps at most about
    /// twice its size alive: see [`crate::transport::LARGE_PDU`])...
    whole_in: Option<Bytes>,
    /// ...or what came otherwise, copied together: a smaller payload shares its receive buffer
    /// with other PDUs and would keep all of it alive for as long as the data is held.
    data_in: BytesMut,
    received: usize,
    /// A C2HData PDU of the command failed its data digest: the command completes with
    /// Transient Transport Error (the data was damaged on the way, not on the drive: a media
    /// error would have good copies taken for bad), and the connection, with every other
    /// command on it, goes on.
    damaged: bool,
}

impl Pending {
    /// A command about to be sent (its command ID given when it takes a queue entry): it
    /// reads `expected_in` bytes or writes `data_out` (in its capsule or as R2Ts ask), and
    /// counts as lost at `deadline`; nothing has come back yet.
    fn new(
        done: oneshot::Sender<Result<Completion, HostError>>,
        permit: OwnedSemaphorePermit,
        expected_in: usize,
        deadline: Instant,
        data_out: Bytes,
        in_capsule: bool,
    ) -> Self {
        Pending {
            cid: 0,
            done,
            _permit: permit,
            expected_in,
            deadline,
            sent: Instant::now(),
            data_out,
            in_capsule,
            solicited: 0,
            answering: false,
            whole_in: None,
            data_in: BytesMut::new(),
            received: 0,
            damaged: false,
        }
    }

    /// Takes the payload of a C2HData PDU (checked to be the next bytes, within the command's).
    fn add_data(&mut self, data: &Bytes) {
        if self.received == 0
            && data.len() == self.expected_in
            && data.len() >= crate::transport::LARGE_PDU
        {
            self.whole_in = Some(data.clone());
        } else {
            if self.data_in.capacity() == 0 {
                self.data_in.reserve(self.expected_in);
            }
            self.data_in.extend_from_slice(data);
        }
        self.received += data.len();
    }

    /// The received data as one buffer.
    fn data(&mut self) -> Bytes {
        self.whole_in
            .take()
            .unwrap_or_else(|| self.data_in.split().freeze())
    }
}

/// Commands in flight by queue entry. A command ID is the entry (its low bits, as many as the
/// queue's depth needs: 12 at most) and a generation the entry counts up on each use (the high
/// bits, 4 at least), as the Linux host does: an answer that comes late or twice names a
/// generation that is not in flight, and is refused rather than taken for the entry's next
/// command. A shallow queue reuses each entry often, so the generation gets the bits the entry
/// does not need. Free entries are reused oldest first.
struct Slots {
    pending: Vec<Option<Pending>>,
    generation: Vec<u16>,
    free: std::collections::VecDeque<u16>,
    /// Bits of a command ID that name the entry.
    entry_bits: u32,
}

/// Queue entries a queue may have: command IDs keep 12 bits for the entry.
pub(crate) const MAX_DEPTH: u16 = 1 << ENTRY_BITS;
const ENTRY_BITS: u16 = 12;

impl Slots {
    fn new(depth: usize) -> Self {
        let depth = depth.clamp(1, usize::from(MAX_DEPTH));
        Slots {
            pending: (0..depth).map(|_| None).collect(),
            generation: vec![0; depth],
            free: (0..depth as u16).collect(),
            entry_bits: depth.next_power_of_two().trailing_zeros(),
        }
    }

    /// The entry command ID `cid` names.
    fn entry_of(&self, cid: u16) -> u16 {
        (u32::from(cid) & ((1u32 << self.entry_bits) - 1)) as u16
    }

    /// Takes a free entry for `pending`; returns the command ID.
    fn insert(&mut self, pending: Pending) -> Option<u16> {
        let entry = self.free.pop_front()?;
        let generation = &mut self.generation[usize::from(entry)];
        let generations = 1u32 << (16 - self.entry_bits);
        *generation = ((u32::from(*generation) + 1) % generations) as u16;
        let cid = ((u32::from(*generation) << self.entry_bits) | u32::from(entry)) as u16;
        self.pending[usize::from(entry)] = Some(Pending { cid, ..pending });
        Some(cid)
    }

    /// The command in flight with ID `cid`.
    fn get_mut(&mut self, cid: u16) -> Option<&mut Pending> {
        let entry = usize::from(self.entry_of(cid));
        self.pending
            .get_mut(entry)?
            .as_mut()
            .filter(|p| p.cid == cid)
    }

    /// Ends the command with ID `cid`, freeing its entry.
    fn remove(&mut self, cid: u16) -> Option<Pending> {
        self.get_mut(cid)?;
        let entry = self.entry_of(cid);
        let pending = self.pending[usize::from(entry)].take()?;
        self.free.push_back(entry);
        Some(pending)
    }
}

/// Parameters of one queue's connection.
#[derive(Debug, Clone)]
pub(crate) struct QueueParams {
    pub(crate) address: SocketAddr,
    pub(crate) qid: u16,
    pub(crate) depth: u16,
    pub(crate) digests: Digests,
    pub(crate) connect_timeout: Duration,
    /// Whether the queue's Connect disables SQ flow control (only then may a read's last
    /// C2HData carry its completion, the SUCCESS flag).
    pub(crate) sq_flow_disabled: bool,
}

/// One connected queue.
pub(crate) struct HostQueue {
    pub(crate) qid: u16,
    tx: FrameSender,
    framing: Framing,
    maxh2cdata: usize,
    /// In-capsule data limit for this queue.
    in_capsule: usize,
    slots_free: Arc<Semaphore>,
    slots: Mutex<Slots>,
    /// Commands in flight, for the writer.
    backlog: Arc<Backlog>,
    failed: watch::Sender<Option<String>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer: Mutex<Option<tokio::task::AbortHandle>>,
    /// When the queue was opened: the origin of `heard_ms`.
    opened: Instant,
    /// When a PDU last came from the target, in ms since `opened`.
    heard_ms: AtomicU64,
    /// See [`QueueParams::sq_flow_disabled`].
    sq_flow_disabled: bool,
}

impl HostQueue {
    /// [`HostQueue::open`] on the first of `candidates` that takes a TCP connection (the
    /// addresses a target's name resolves to); returns it with the queue.
    pub(crate) async fn open_first(
        candidates: &[SocketAddr],
        params: impl Fn(SocketAddr) -> QueueParams,
        in_capsule: usize,
        failed: watch::Sender<Option<String>>,
    ) -> Result<(SocketAddr, Arc<HostQueue>), HostError> {
        let mut last = None;
        for &address in candidates {
            match HostQueue::open(&params(address), in_capsule, failed.clone()).await {
                Ok(queue) => return Ok((address, queue)),
                Err(e @ (HostError::Connect { .. } | HostError::Timeout(_))) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HostError::Protocol("no address to connect to".into())))
    }

    /// Opens the TCP connection and exchanges ICReq/ICResp. `failed` is set when the queue dies.
    pub(crate) async fn open(
        params: &QueueParams,
        in_capsule: usize,
        failed: watch::Sender<Option<String>>,
    ) -> Result<Arc<HostQueue>, HostError> {
        let stream =
            tokio::time::timeout(params.connect_timeout, TcpStream::connect(params.address))
                .await
                .map_err(|_| HostError::Timeout(format!("connecting to {}", params.address)))?
                .map_err(|e| HostError::Connect {
                    address: params.address,
                    source: e,
                })?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut reader = PduReader::new(rd, Decoder::new(CONTROLLER_TO_HOST, 16 << 20));
        let backlog = Arc::new(Backlog::default());
        let (tx, writer) = spawn_writer(wr, usize::from(params.depth) * 2 + 8, backlog.clone());
        let icreq = IcReq {
            pfv: 0,
            hpda: 0,
            dgst: params.digests,
            maxr2t: 0,
        };
        tx.send(encode(&Pdu::IcReq(icreq), Framing::INITIAL))
            .await
            .map_err(|_| HostError::Protocol("connection closed before ICReq".into()))?;
        let resp = tokio::time::timeout(params.connect_timeout, reader.next())
            .await
            .map_err(|_| HostError::Timeout("waiting for ICResp".into()))?;
        let ic = match resp {
            Ok(Some(Pdu::IcResp(ic))) => ic,
            Ok(Some(Pdu::C2HTermReq(t))) => {
                return Err(HostError::Protocol(format!(
                    "target refused the connection (FES {:#x}, FEI {:#x})",
                    t.fes, t.fei
                )));
            }
            Ok(Some(other)) => {
                return Err(HostError::Protocol(format!(
                    "expected ICResp, got PDU type {:#x}",
                    other.type_code()
                )));
            }
            Ok(None) => {
                return Err(HostError::Protocol(
                    "connection closed before ICResp".into(),
                ));
            }
            Err(e) => return Err(HostError::Protocol(format!("reading ICResp: {e}"))),
        };
        if ic.pfv != 0
            || ic.dgst != params.digests
            || ic.maxh2cdata < 4096
            || ic.maxh2cdata % 4 != 0
            || ic.cpda > 31
        {
            return Err(HostError::Protocol(format!(
                "unacceptable ICResp: PFV {}, digests {:?} (asked {:?}), MAXH2CDATA {}, CPDA {}",
                ic.pfv, ic.dgst, params.digests, ic.maxh2cdata, ic.cpda
            )));
        }
        let framing = Framing {
            digests: ic.dgst,
            pda: ic.cpda,
        };
        reader.decoder.framing = Framing {
            digests: ic.dgst,
            pda: 0,
        };
        let depth = usize::from(params.depth);
        let queue = Arc::new(HostQueue {
            qid: params.qid,
            tx,
            framing,
            maxh2cdata: ic.maxh2cdata as usize,
            in_capsule,
            slots_free: Arc::new(Semaphore::new(depth)),
            backlog,
            slots: Mutex::new(Slots::new(depth)),
            failed,
            reader: Mutex::new(None),
            writer: Mutex::new(Some(writer.abort_handle())),
            opened: Instant::now(),
            heard_ms: AtomicU64::new(0),
            sq_flow_disabled: params.sq_flow_disabled,
        });
        // The writer ends while the queue lives only when the connection failed (it could not
        // write, or the target stopped reading): the commands it holds are not coming back.
        let weak = Arc::downgrade(&queue);
        tokio::spawn(async move {
            let _ = writer.await;
            if let Some(queue) = weak.upgrade() {
                queue.fail("the connection could not be written to".into());
            }
        });
        let weak = Arc::downgrade(&queue);
        let task = tokio::spawn(async move {
            let reason = receive(reader, weak.clone()).await;
            if let Some(queue) = weak.upgrade() {
                queue.fail(reason);
            }
        });
        *queue.reader.lock() = Some(task);
        tokio::spawn(watchdog(Arc::downgrade(&queue)));
        Ok(queue)
    }

    /// Connects the queue to a controller with Fabrics Connect; returns the controller ID.
    pub(crate) async fn connect(
        &self,
        connect: &Connect,
        timeout: Duration,
    ) -> Result<u16, HostError> {
        let (sqe, data) = connect.encode(0);
        let done = self.submit(sqe, Bytes::from(data), timeout).await?;
        let status = done.cqe.status();
        if !status.is_success() {
            return Err(HostError::Refused {
                what: format!(
                    "Connect of queue {} to {} as host {}",
                    connect.qid, connect.subnqn, connect.hostnqn
                ),

                status,
                detail: done.cqe.result(),
            });
        }
        Ok(done.cqe.dw0() as u16)
    }

    /// Sends a command (with `data_out` for the controller, if any) and waits for its completion.
    pub(crate) async fn submit(
        &self,
        mut sqe: Sqe,
        data_out: Bytes,
        timeout: Duration,
    ) -> Result<Completion, HostError> {
        if let Some(reason) = self.failed.borrow().clone() {
            return Err(HostError::NotSent(reason));
        }
        let permit = self
            .slots_free
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HostError::NotSent("queue closed".into()))?;
        let (done_tx, done_rx) = oneshot::channel();
        let expected = if data_out.is_empty() {
            sqe.sgl_length()
        } else {
            data_out.len() as u32
        };
        let in_capsule = !data_out.is_empty() && data_out.len() <= self.in_capsule;
        let cid = {
            let mut slots = self.slots.lock();
            // `fail` marks the queue failed before it drains the slots under this lock: a
            // command added after the drain would wait for a completion that never comes.
            if let Some(reason) = self.failed.borrow().clone() {
                return Err(HostError::NotSent(reason));
            }
            let expected_in = if data_out.is_empty() {
                expected as usize
            } else {
                0
            };
            let inserted = slots.insert(Pending::new(
                done_tx,
                permit,
                expected_in,
                Instant::now() + timeout,
                data_out.clone(),
                in_capsule,
            ));
            let Some(cid) = inserted else {
                return Err(HostError::Disconnected(
                    "no free command ID for a free queue entry".into(),
                ));
            };
            self.backlog.begin();
            cid
        };
        // Until the capsule is queued for sending, a caller that stops waiting takes the
        // command back; once it is on its way, only the target's answer (or the watchdog)
        // frees its ID.
        let mut unsent = Unsent {
            queue: self,
            cid: Some(cid),
        };
        sqe.set_cid(cid);
        sqe.set_sgl(expected, in_capsule);
        let capsule = Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: if in_capsule { data_out } else { Bytes::new() },
            data_digest_error: false,
        });
        if self.tx.send(encode(&capsule, self.framing)).await.is_err() {
            self.fail("connection closed".into());
        }
        unsent.cid = None;
        // A command that outlives its deadline is failed by the queue's watchdog.
        match done_rx.await {
            Ok(result) => result,
            Err(_) => Err(HostError::Disconnected("queue closed".into())),
        }
    }

    /// Whether a command has waited `quiet` or longer while nothing at all came from the target
    /// on this queue for as long: the target may have stopped (a frozen process, a network that
    /// drops everything), which only a probe of the session tells from a slow drive (see
    /// [`super::probe`]).
    pub(crate) fn waiting_unheard(&self, now: Instant, quiet: Duration) -> bool {
        let heard = self.opened + Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        if now.saturating_duration_since(heard) < quiet {
            return false;
        }
        let slots = self.slots.lock();
        slots
            .pending
            .iter()
            .flatten()
            .any(|p| now.saturating_duration_since(p.sent) >= quiet)
    }

    /// Whether a PDU came from the target at `when` or later.
    pub(crate) fn heard_since(&self, when: Instant) -> bool {
        let heard = self.opened + Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        // (Stamps are in whole ms: a PDU in the same ms counts.)
        heard + Duration::from_millis(1) >= when
    }

    /// Notes that a PDU came from the target.
    fn heard(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.heard_ms.store(ms, Ordering::Relaxed);
    }

    /// The first command in flight whose deadline has passed.
    fn overdue(&self, now: Instant) -> Option<u16> {
        let slots = self.slots.lock();
        slots
            .pending
            .iter()
            .flatten()
            .find(|p| p.deadline < now)
            .map(|p| p.cid)
    }

    fn take(&self, cid: u16) -> Option<Pending> {
        let pending = self.slots.lock().remove(cid)?;
        self.backlog.end();
        Some(pending)
    }

    /// Marks the queue dead, fails every command in flight and closes the connection.
    pub(crate) fn fail(&self, reason: String) {
        let first = self.failed.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(reason.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::warn!(qid = self.qid, "NVMe/TCP queue failed: {reason}");
        }
        let drained: Vec<Pending> = {
            let mut slots = self.slots.lock();
            let mut drained = Vec::new();
            let in_flight: Vec<u16> = slots.pending.iter().flatten().map(|p| p.cid).collect();
            for cid in in_flight {
                if let Some(p) = slots.remove(cid) {
                    drained.push(p);
                    self.backlog.end();
                }
            }
            drained
        };
        for pending in drained {
            let _ = pending
                .done
                .send(Err(HostError::Disconnected(reason.clone())));
        }
        self.slots_free.close();
        if let Some(task) = self.reader.lock().take() {
            task.abort();
        }
        if let Some(task) = self.writer.lock().take() {
            task.abort();
        }
    }

    /// The data an R2T asks for, checked against its command: data the command sends, not
    /// in its capsule, and the bytes after those asked for before (MAXR2T is 0: one R2T at a
    /// time, in order). A target asking for anything else is broken, and nothing is sent twice.
    fn solicited(&self, r2t: &R2t) -> Result<Bytes, String> {
        let mut slots = self.slots.lock();
        let Some(pending) = slots.get_mut(r2t.cccid) else {
            return Err(format!("R2T for unknown command {:#x}", r2t.cccid));
        };
        if pending.in_capsule {
            return Err(format!(
                "R2T for command {:#x}, whose data went in its capsule",
                r2t.cccid
            ));
        }
        if pending.answering {
            return Err(format!(
                "R2T for command {:#x} while the data of its last R2T is still being sent (MAXR2T is 0)",
                r2t.cccid
            ));
        }
        let (start, len) = (r2t.r2to as usize, r2t.r2tl as usize);
        let total = pending.data_out.len();
        if len == 0 || start != pending.solicited || len > total - start.min(total) {
            return Err(format!(
                "R2T asks for {len} bytes at {start} of a {total}-byte transfer whose first {} were asked for",
                pending.solicited
            ));
        }
        pending.solicited += len;
        Ok(pending.data_out.slice(start..start + len))
    }

    /// Notes whether the data answering an R2T of command `cid` waits to be queued.
    fn set_answering(&self, cid: u16, answering: bool) {
        if let Some(pending) = self.slots.lock().get_mut(cid) {
            pending.answering = answering;
        }
    }

    /// Answers an R2T with `data` (what it asks for) in H2CData PDUs of at most MAXH2CDATA
    /// bytes. The reader calls this and must not wait on the writer: with both sockets full, a
    /// reader waiting for room to send and a target waiting for the host to read would wait on
    /// each other. So what the writer's queue takes now goes now, and the rest is sent by a task
    /// of its own.
    fn answer_r2t(self: &Arc<Self>, r2t: &R2t, data: Bytes) -> Result<(), String> {
        let start = r2t.r2to as usize;
        let mut frames = Vec::with_capacity(data.len().div_ceil(self.maxh2cdata));
        let mut at = 0;
        while at < data.len() {
            let n = (data.len() - at).min(self.maxh2cdata);
            let pdu = Pdu::H2CData(DataPdu {
                cccid: r2t.cccid,
                ttag: r2t.ttag,
                datao: (start + at) as u32,
                last: at + n == data.len(),
                success: false,
                data: data.slice(at..at + n),
                data_digest_error: false,
            });
            frames.push(encode(&pdu, self.framing));
            at += n;
        }
        let mut frames = frames.into_iter();
        while let Some(frame) = frames.next() {
            match self.tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err("connection closed".into());
                }
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    let cid = r2t.cccid;
                    self.set_answering(cid, true);
                    let queue = self.clone();
                    tokio::spawn(async move {
                        let mut frames = std::iter::once(frame).chain(frames).peekable();
                        while let Some(frame) = frames.next() {
                            if frames.peek().is_none() {
                                // Before the last frame can reach the target (and the target
                                // ask for more in answer), another R2T becomes acceptable.
                                queue.set_answering(cid, false);
                            }
                            if queue.tx.send(frame).await.is_err() {
                                queue.fail("connection closed".into());
                                return;
                            }
                        }
                    });
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// A command whose capsule is not queued for sending yet (see [`HostQueue::submit`]).
struct Unsent<'a> {
    queue: &'a HostQueue,
    cid: Option<u16>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(cid) = self.cid.take() {
            self.queue.take(cid);
        }
    }
}

impl Drop for HostQueue {
    fn drop(&mut self) {
        if let Some(task) = self.reader.get_mut().take() {
            task.abort();
        }
    }
}

/// Fails the queue when a command outlives its deadline: its fate is unknown, so, like the
/// Linux host, the connection is reset (and the host reconnects). Fails it too when another
/// queue of its session failed (they share `failed`): the session is over, and a command this
/// queue still waits for (a Connect while the session is being set up, before anything else
/// would close it) must end now, not wait for an answer that may never come.
async fn watchdog(queue: std::sync::Weak<HostQueue>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(queue) = queue.upgrade() else { return };
        let failed = queue.failed.borrow().clone();
        if let Some(reason) = failed {
            queue.fail(reason);
            return;
        }
        if let Some(cid) = queue.overdue(Instant::now()) {
            queue.fail(format!("command {cid:#x} on queue {} timed out", queue.qid));
            return;
        }
    }
}

/// The receive loop of a queue; returns why it ended.
async fn receive(
    mut reader: PduReader<tokio::net::tcp::OwnedReadHalf>,
    queue: std::sync::Weak<HostQueue>,
) -> String {
    loop {
        let pdu = match reader.next().await {
            Ok(Some(pdu)) => pdu,
            Ok(None) => return "the target closed the connection".into(),
            Err(ReadError::Pdu(e)) => return format!("malformed PDU from the target: {e}"),
            Err(e) => return e.to_string(),
        };
        let Some(queue) = queue.upgrade() else {
            return "queue dropped".into();
        };
        queue.heard();
        match pdu {
            Pdu::CapsuleResp(resp) => {
                let cqe = resp.cqe;
                let Some(mut pending) = queue.take(cqe.cid()) else {
                    return format!("completion for unknown command {:#x}", cqe.cid());
                };
                // A success must have had all its data: every byte read, and every byte
                // written (in the capsule, or asked for by R2Ts).
                let sent = if pending.in_capsule {
                    pending.data_out.len()
                } else {
                    pending.solicited
                };
                if cqe.status().is_success()
                    && (pending.received != pending.expected_in || sent != pending.data_out.len())
                {
                    let reason = format!(
                        "command {:#x} succeeded with {} of its {} bytes of data read and {} of its {} bytes written",
                        cqe.cid(),
                        pending.received,
                        pending.expected_in,
                        sent,
                        pending.data_out.len()
                    );
                    let _ = pending
                        .done
                        .send(Err(HostError::Disconnected(reason.clone())));
                    return reason;
                }
                let cqe = if pending.damaged && cqe.status().is_success() {
                    Cqe::new(
                        cqe.cid(),
                        cqe.sqid(),
                        cqe.sqhd(),
                        Status::TRANSIENT_TRANSPORT_ERROR,
                        0,
                    )
                } else {
                    cqe
                };
                let data = pending.data();
                let _ = pending.done.send(Ok(Completion { cqe, data }));
            }
            Pdu::C2HData(data) => {
                let finished = {
                    let mut slots = queue.slots.lock();
                    let Some(pending) = slots.get_mut(data.cccid) else {
                        return format!("C2HData for unknown command {:#x}", data.cccid);
                    };
                    if data.datao as usize != pending.received {
                        return format!(
                            "C2HData at offset {} where {} was expected",
                            data.datao, pending.received
                        );
                    }
                    if pending.received + data.data.len() > pending.expected_in {
                        return format!(
                            "C2HData beyond the {} bytes command {:#x} reads",
                            pending.expected_in, data.cccid
                        );
                    }
                    if data.data_digest_error {
                        pending.damaged = true;
                        pending.received += data.data.len();
                    } else {
                        pending.add_data(&data.data);
                    }
                    let complete = pending.received == pending.expected_in;
                    if data.success && !queue.sq_flow_disabled {
                        return format!(
                            "C2HData with SUCCESS for command {:#x} while SQ flow control is on (its completion must say where the SQ head is)",
                            data.cccid
                        );
                    }
                    if data.success && !(complete && data.last) {
                        return format!(
                            "C2HData with SUCCESS for command {:#x} before all its data",
                            data.cccid
                        );
                    }
                    data.success
                };
                if finished && let Some(mut pending) = queue.take(data.cccid) {
                    let status = if pending.damaged {
                        Status::TRANSIENT_TRANSPORT_ERROR
                    } else {
                        Status::SUCCESS
                    };
                    let cqe = Cqe::new(data.cccid, queue.qid, 0, status, 0);
                    let data = pending.data();
                    let _ = pending.done.send(Ok(Completion { cqe, data }));
                }
            }
            Pdu::R2t(r2t) => {
                let answered = queue
                    .solicited(&r2t)
                    .and_then(|data| queue.answer_r2t(&r2t, data));
                if let Err(e) = answered {
                    return e;
                }
            }
            Pdu::C2HTermReq(t) => {
                return format!(
                    "target terminated the connection (FES {:#x}, FEI {:#x})",
                    t.fes, t.fei
                );
            }
            other => return format!("unexpected PDU type {:#x}", other.type_code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pdu::{CapsuleResp, HOST_TO_CONTROLLER};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A queue connected to a fake target that answers the ICReq, then answers the `n`th
    /// command it gets (command ID `cid`) with `answer(n, cid)`.
    async fn queue_against(answer: fn(usize, u16) -> Vec<Pdu>) -> Arc<HostQueue> {
        let address = fake_target(answer).await;
        HostQueue::open(&params_at(address), 8192, watch::channel(None).0)
            .await
            .unwrap()
    }

    fn params_at(address: SocketAddr) -> QueueParams {
        QueueParams {
            address,
            qid: 1,
            depth: 4,
            digests: Digests::NONE,
            connect_timeout: Duration::from_secs(5),
            sq_flow_disabled: true,
        }
    }

    #[tokio::test]
    async fn the_first_address_that_takes_a_connection_is_used() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let live = fake_target(|_, _| Vec::new()).await;
        let (chosen, _queue) =
            HostQueue::open_first(&[closed, live], params_at, 8192, watch::channel(None).0)
                .await
                .unwrap();
        assert_eq!(chosen, live);
        match HostQueue::open_first(&[closed], params_at, 8192, watch::channel(None).0).await {
            Err(HostError::Connect { address, .. }) => assert_eq!(address, closed),
            other => panic!("expected the connection error, got {:?}", other.err()),
        }
    }

    /// Accepts one connection on `listener` and answers its ICReq (no digests, MAXH2CDATA 1
    /// MiB).
    async fn accept_with_icresp(listener: &TcpListener) -> tokio::net::TcpStream {
        accept_with_icresp_digests(listener, Digests::NONE).await
    }

    /// [`accept_with_icresp`] with `digests` agreed.
    async fn accept_with_icresp_digests(
        listener: &TcpListener,
        digests: Digests,
    ) -> tokio::net::TcpStream {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut icreq = [0u8; 128];
        socket.read_exact(&mut icreq).await.unwrap();
        let ic = Pdu::IcResp(crate::wire::pdu::IcResp {
            pfv: 0,
            cpda: 0,
            dgst: digests,
            maxh2cdata: 1 << 20,
        });
        socket
            .write_all(&encode(&ic, Framing::INITIAL).to_bytes())
            .await
            .unwrap();
        socket
    }

    /// A fake target that answers the ICReq, then answers the `n`th command it gets (command
    /// ID `cid`) with `answer(n, cid)`.
    async fn fake_target(answer: fn(usize, u16) -> Vec<Pdu>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut socket = accept_with_icresp(&listener).await;
            let decoder = crate::wire::pdu::Decoder::new(HOST_TO_CONTROLLER, 1 << 20);
            let mut buf = bytes::BytesMut::new();
            let mut n = 0;
            loop {
                while let Ok(Some(pdu)) = decoder.decode(&mut buf) {
                    if let Pdu::CapsuleCmd(c) = pdu {
                        for pdu in answer(n, c.sqe.cid()) {
                            let frame = encode(&pdu, Framing::INITIAL).to_bytes();
                            if socket.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                        n += 1;
                    }
                }
                let mut tmp = [0u8; 4096];
                match socket.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(got) => buf.extend_from_slice(&tmp[..got]),
                }
            }
        });
        address
    }

    fn read_of_two_blocks() -> Sqe {
        let mut sqe = Sqe::new(crate::spec::opcode::io::READ, 0);
        sqe.set_sgl(8192, false);
        sqe
    }

    fn c2h(cid: u16, len: usize, last: bool, success: bool) -> Pdu {
        Pdu::C2HData(DataPdu {
            cccid: cid,
            ttag: 0,
            datao: 0,
            last,
            success,
            data: Bytes::from(vec![1u8; len]),
            data_digest_error: false,
        })
    }

    #[tokio::test]
    async fn a_read_answered_with_short_data_fails() {
        // SUCCESS after half the data.
        let queue = queue_against(|_, cid| vec![c2h(cid, 4096, true, true)]).await;
        let done = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(done.is_err(), "{done:?}");
        // A successful completion after half the data.
        let queue = queue_against(|_, cid| {
            vec![
                c2h(cid, 4096, true, false),
                Pdu::CapsuleResp(CapsuleResp {
                    cqe: Cqe::new(cid, 1, 0, Status::SUCCESS, 0),
                }),
            ]
        })
        .await;
        let done = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(done.is_err(), "{done:?}");
        // More data than the read asked for.
        let queue = queue_against(|_, cid| vec![c2h(cid, 12288, true, true)]).await;
        let done = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(done.is_err(), "{done:?}");
        // All of it: a read.
        let queue = queue_against(|_, cid| vec![c2h(cid, 8192, true, true)]).await;
        let done = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(done.data.len(), 8192);
    }

    /// With SQ flow control on, a read's completion comes in a CapsuleResp (it says where the
    /// SQ head is): a C2HData with SUCCESS is a protocol error, not a completion.
    #[tokio::test]
    async fn a_success_flag_with_sq_flow_control_on_is_refused() {
        let address = fake_target(|_, cid| vec![c2h(cid, 8192, true, true)]).await;
        let params = QueueParams {
            sq_flow_disabled: false,
            ..params_at(address)
        };
        let queue = HostQueue::open(&params, 8192, watch::channel(None).0)
            .await
            .unwrap();
        let done = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(done.is_err(), "{done:?}");
    }

    /// A C2HData whose data digest does not match fails its command with Data Transfer Error
    /// (as Linux's host does), and the connection goes on: the next read on it succeeds.
    #[tokio::test]
    async fn a_data_digest_mismatch_fails_its_command_not_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let digests = Digests {
            header: false,
            data: true,
        };
        tokio::spawn(async move {
            let mut socket = accept_with_icresp_digests(&listener, digests).await;
            let framing = Framing { digests, pda: 0 };
            let mut decoder = crate::wire::pdu::Decoder::new(HOST_TO_CONTROLLER, 1 << 20);
            decoder.framing = framing;
            let mut buf = bytes::BytesMut::new();
            let mut n = 0;
            loop {
                while let Ok(Some(pdu)) = decoder.decode(&mut buf) {
                    if let Pdu::CapsuleCmd(c) = pdu {
                        let mut frame = encode(&c2h(c.sqe.cid(), 8192, true, true), framing)
                            .to_bytes()
                            .to_vec();
                        if n == 0 {
                            // A byte of the data changed on the way: its digest no longer fits.
                            let last_data = frame.len() - 5;
                            frame[last_data] ^= 0xff;
                        }
                        n += 1;
                        if socket.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                }
                let mut tmp = [0u8; 4096];
                match socket.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(got) => buf.extend_from_slice(&tmp[..got]),
                }
            }
        });
        let mut params = params_at(address);
        params.digests = digests;
        let queue = HostQueue::open(&params, 8192, watch::channel(None).0)
            .await
            .unwrap();
        let damaged = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(damaged.cqe.status(), Status::TRANSIENT_TRANSPORT_ERROR);
        let next = queue
            .submit(read_of_two_blocks(), Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(next.cqe.status().is_success());
        assert_eq!(next.data, Bytes::from(vec![1u8; 8192]));
    }

    /// A completion that comes again, late, names a command no longer in flight: refused (the
    /// queue fails), never taken for the next command on the same queue entry.
    #[tokio::test]
    async fn a_stale_completion_does_not_complete_the_next_command() {
        let queue = queue_against(|n, cid| {
            let answered = if n == 0 {
                cid
            } else {
                STALE.load(std::sync::atomic::Ordering::SeqCst)
            };
            STALE.store(cid, std::sync::atomic::Ordering::SeqCst);
            vec![Pdu::CapsuleResp(CapsuleResp {
                cqe: Cqe::new(answered, 1, 0, Status::SUCCESS, 0),
            })]
        })
        .await;
        let flush = || Sqe::new(crate::spec::opcode::io::FLUSH, 0);
        queue
            .submit(flush(), Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        // The target answers the second command with the first one's ID again.
        let second = queue
            .submit(flush(), Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(
            second.is_err(),
            "a stale completion ended the second command: {second:?}"
        );
    }

    static STALE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

    fn r2t(cid: u16, r2to: u32, r2tl: u32) -> Pdu {
        Pdu::R2t(R2t {
            cccid: cid,
            ttag: 7,
            r2to,
            r2tl,
        })
    }

    fn success(cid: u16) -> Pdu {
        Pdu::CapsuleResp(CapsuleResp {
            cqe: Cqe::new(cid, 1, 0, Status::SUCCESS, 0),
        })
    }

    /// A write of `len` bytes (in its capsule up to 8 KiB, the queues' in-capsule limit here).
    async fn write(queue: &HostQueue, len: usize) -> Result<Completion, HostError> {
        let mut sqe = Sqe::new(crate::spec::opcode::io::WRITE, 0);
        sqe.set_sgl(len as u32, false);
        let data = Bytes::from(vec![3u8; len]);
        queue.submit(sqe, data, Duration::from_secs(5)).await
    }

    /// R2Ts that ask for data twice, out of order, beyond the command's data, or for data that
    /// went in the capsule are refused (the queue fails) rather than answered: the target is
    /// broken, and it must not get a write's data twice and then report success.
    #[tokio::test]
    async fn r2ts_must_ask_for_each_byte_once_in_order() {
        let twice =
            queue_against(|_, cid| vec![r2t(cid, 0, 16384), r2t(cid, 0, 16384), success(cid)])
                .await;
        assert!(write(&twice, 16384).await.is_err());
        let skipping = queue_against(|_, cid| vec![r2t(cid, 4096, 12288), success(cid)]).await;
        assert!(write(&skipping, 16384).await.is_err());
        let beyond =
            queue_against(|_, cid| vec![r2t(cid, 0, 16384), r2t(cid, 16384, 4096), success(cid)])
                .await;
        assert!(write(&beyond, 16384).await.is_err());
        let in_capsule = queue_against(|_, cid| vec![r2t(cid, 0, 4096), success(cid)]).await;
        assert!(write(&in_capsule, 4096).await.is_err());
        // A success before the target asked for all the data: not a write.
        let unasked = queue_against(|_, cid| vec![success(cid)]).await;
        assert!(write(&unasked, 16384).await.is_err());
        let half_asked = queue_against(|_, cid| vec![r2t(cid, 0, 8192), success(cid)]).await;
        assert!(write(&half_asked, 16384).await.is_err());
        // In two R2Ts, each byte once: a write.
        let halves =
            queue_against(|_, cid| vec![r2t(cid, 0, 8192), r2t(cid, 8192, 8192), success(cid)])
                .await;
        write(&halves, 16384).await.unwrap();
    }

    /// A target may not ask for more data by R2T while the data its last R2T asked for still
    /// waits to be sent (MAXR2T is 0): each such R2T would make the host hold more frames, and
    /// a task to send them, without end.
    #[tokio::test]
    async fn an_r2t_while_the_last_ones_data_waits_to_be_sent_is_refused() {
        // More 1 MiB frames than the writer's queue holds (16 here).
        const HALF: u32 = 24 << 20;
        let queue =
            queue_against(|_, cid| vec![r2t(cid, 0, HALF), r2t(cid, HALF, HALF), success(cid)])
                .await;
        match write(&queue, 2 * HALF as usize).await {
            Err(HostError::Disconnected(reason)) => assert!(reason.contains("MAXR2T"), "{reason}"),
            other => panic!("expected the queue to fail, got {other:?}"),
        }
    }

    /// A command in flight that reads `expected_in` bytes (its caller not waiting).
    fn pending(expected_in: usize) -> Pending {
        let (done, _) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Pending::new(
            done,
            permit,
            expected_in,
            Instant::now(),
            Bytes::new(),
            false,
        )
    }

    /// A command ID comes back to an entry only after every generation the ID's other bits
    /// can count: a shallow queue (one entry, after the fallback to SQ flow control with
    /// MAXCMD 2) gets thousands, not the 16 of a queue 4096 deep, so an answer that comes late
    /// is not taken for a later command's.
    #[test]
    fn a_shallow_queue_reuses_a_command_id_only_after_many_commands() {
        for (depth, distinct) in [(1usize, 1usize << 16), (32, 1 << 11), (4096, 16)] {
            let mut slots = Slots::new(depth);
            let mut last_use = std::collections::HashMap::new();
            for n in 0..(3 * distinct).min(200_000) {
                let cid = slots.insert(pending(0)).unwrap();
                if let Some(before) = last_use.insert(cid, n) {
                    // Every entry is used in turn: an ID comes back after `distinct` rounds.
                    assert_eq!(n - before, distinct * depth, "depth {depth}: {cid:#x}");
                }
                assert!(slots.remove(cid).is_some());
            }
        }
    }

    /// What a read receives: one large PDU holding all of it is kept as it came; smaller
    /// payloads (slices of a receive buffer other PDUs share) are copied together.
    #[test]
    fn small_read_payloads_are_copied_and_a_whole_large_one_is_kept() {
        let shared = Bytes::from(vec![9u8; 4 * crate::transport::LARGE_PDU]);
        let mut small = pending(4096);
        small.add_data(&shared.slice(0..1000));
        small.add_data(&shared.slice(1000..4096));
        let got = small.data();
        assert_eq!(got, shared.slice(0..4096));
        assert_ne!(
            got.as_ptr(),
            shared.as_ptr(),
            "copied out of the shared buffer"
        );
        let len = 2 * crate::transport::LARGE_PDU;
        let mut large = pending(len);
        large.add_data(&shared.slice(0..len));
        assert_eq!(large.data().as_ptr(), shared.as_ptr(), "kept as it came");
    }

    /// A target that stops reading: once the writer gives up on it, the queue fails, and the
    /// commands whose capsules it held fail then rather than at their own (far later) timeout.
    #[tokio::test(start_paused = true)]
    async fn a_target_that_stops_reading_fails_the_queue_when_the_writer_gives_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _socket = accept_with_icresp(&listener).await;
            // Nothing more is read.
            std::future::pending::<()>().await;
        });
        let queue = HostQueue::open(&params_at(address), 16 << 20, watch::channel(None).0)
            .await
            .unwrap();
        let writes = (0..4).map(|_| {
            let mut sqe = Sqe::new(crate::spec::opcode::io::WRITE, 0);
            sqe.set_sgl(16 << 20, false);
            queue.submit(
                sqe,
                Bytes::from(vec![3u8; 16 << 20]),
                Duration::from_secs(3600),
            )
        });
        let results = tokio::time::timeout(
            crate::transport::WRITE_STALL_LIMIT * 2,
            futures::future::join_all(writes),
        )
        .await
        .expect("the writes fail once the writer gives up");
        for result in results {
            assert!(
                matches!(result, Err(HostError::Disconnected(_))),
                "{result:?}"
            );
        }
    }

    /// Queues of one session share their failure: when one fails, a command another still
    /// waits for ends at once (while a session is being set up nothing else would end it).
    #[tokio::test]
    async fn a_failed_queue_ends_the_commands_of_the_others_in_its_session() {
        let (failed, _) = watch::channel(None);
        let silent = |_, _| Vec::new();
        let first = HostQueue::open(&params_at(fake_target(silent).await), 8192, failed.clone())
            .await
            .unwrap();
        let second = HostQueue::open(&params_at(fake_target(silent).await), 8192, failed)
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            let flush = Sqe::new(crate::spec::opcode::io::FLUSH, 0);
            second
                .submit(flush, Bytes::new(), Duration::from_secs(60))
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.fail("connection reset".into());
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the other queue's command still waits")
            .unwrap();
        assert!(
            matches!(ended, Err(HostError::Disconnected(_))),
            "{ended:?}"
        );
    }
}
