//! The hashing thread: streams hand it their bytes in pieces of [`PIECE`] bytes and it hashes up
//! to [`LANES`] streams in lockstep, one per vector lane. A stream keeps its partial last piece
//! and its length itself and finishes its digest once the thread has caught up with it.
//!
//! A stream copies its bytes into pieces of its own, which the thread gives back once hashed
//! (up to [`MAX_SPARE`]) and the stream fills again. Handing over the request
//! body's own buffers (or fresh pieces that the thread then freed) let memory allocated on one
//! thread be freed on another, which the allocator keeps per thread: with a hundred uploads at
//! once the server's peak memory grew by some 50 MiB. The copy costs a small fraction of the
//! hashing it feeds.
//!
//! Lanes are only cheap when they are full, and uploads arrive a piece at a time: hashing each
//! piece as it comes would mostly run one lane. So the thread gathers: it runs a pass when every
//! live stream has bytes waiting, or 16 do, or one of them is in a hurry (its owner is waiting
//! for the digest, or has half of its bound queued, or too much is queued overall), or a waiting
//! piece was handed over [`GATHER`] ago. The digest is not needed before the body ends, so
//! waiting costs nothing but a little memory, bounded per stream and overall.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{BLOCK, HasherStopped, INITIAL, finalize};

/// Streams hashed side by side (the lanes of a 512-bit vector of 32-bit words).
const LANES: usize = 16;

/// Bytes a stream hands over at once (a whole number of blocks).
const PIECE: usize = 32 << 10;

/// Hashed pieces a stream keeps to fill again.
const MAX_SPARE: usize = 2;

/// Most bytes one stream may have waiting for the thread before its producer waits (it may
/// pass it by the last piece of input it was given).
const MAX_QUEUED: usize = 4 * PIECE;

/// Queued bytes from which a stream is in a hurry: its producer will soon wait.
const HURRY_QUEUED: usize = MAX_QUEUED / 2;

/// Most bytes all streams together may have waiting: beyond it, a producer waits until its own
/// stream's queue is empty (and beyond half of it, the thread stops gathering).
const MAX_TOTAL_QUEUED: usize = 8 << 20;

/// Most blocks per lane in one pass, so that newly arrived streams join soon.
const MAX_PASS_BLOCKS: usize = 256;

/// Longest a piece waits for other streams to fill the lanes.
const GATHER: Duration = Duration::from_millis(10);

/// One stream as the thread and its owner share it.
struct Lane {
    shared: Mutex<Shared>,
    /// Signalled whenever the thread finishes a piece of this stream.
    changed: Notify,
    /// Bytes waiting: the sum of `Shared::queue` and the piece the thread holds, readable
    /// without the lock.
    queued: AtomicUsize,
    /// The owner waits for the digest.
    finishing: AtomicBool,
    /// The owner is gone: the rest of the queue is dropped unhashed.
    cancelled: AtomicBool,
}

struct Shared {
    /// MD5 state after every block the thread has finished (valid while not `scheduled`).
    state: [u32; 4],
    /// Pieces (whole blocks) waiting, each with when it was handed over.
    queue: VecDeque<(Vec<u8>, Instant)>,
    /// Pieces the thread has hashed, for the owner to fill again.
    spare: Vec<Vec<u8>>,
    /// Handed to the thread, which holds it until `queue` is empty.
    scheduled: bool,
    /// The thread stopped while it held this stream.
    failed: bool,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the stream's bytes should be hashed now rather than wait for company.
    fn in_a_hurry(&self) -> bool {
        self.finishing.load(Ordering::Relaxed)
            || self.queued.load(Ordering::Relaxed) >= HURRY_QUEUED
    }

    /// Counts `bytes` more (or fewer) waiting, here and overall.
    fn add_queued(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        TOTAL_QUEUED.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove_queued(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        TOTAL_QUEUED.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What the thread is told.
enum Message {
    /// A stream has blocks waiting (sent when it was not already handed over).
    Scheduled(Arc<Lane>),
    /// A handed-over stream is now in a hurry.
    Hurry,
}

/// The thread's mailbox.
struct Hasher {
    sender: mpsc::Sender<Message>,
}

/// Streams alive (created and not dropped): when all of them are waiting, no other is coming.
static LIVE_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Bytes waiting in every stream's queue.
static TOTAL_QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Set when the thread has stopped: new streams hash inline.
static STOPPED: AtomicBool = AtomicBool::new(false);

fn kernels_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::x86::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Set (to anything) in the environment, every stream hashes inline: for comparing, or as an
/// escape hatch.
pub const INLINE_ENV: &str = "ZONESTORE_MD5_INLINE";

/// The hashing thread, started on first use; `None` where the CPU lacks the vector kernels (or
/// the thread could not start, or [`INLINE_ENV`] is set), and then every stream hashes inline.
/// Unit tests run the thread everywhere (one stream at a time where the kernels are missing).
fn hasher() -> Option<&'static Hasher> {
    static HASHER: OnceLock<Option<Hasher>> = OnceLock::new();
    HASHER
        .get_or_init(|| {
            let wanted =
                (kernels_supported() || cfg!(test)) && std::env::var_os(INLINE_ENV).is_none();
            if !wanted {
                return None;
            }
            let (sender, receiver) = mpsc::channel();
            std::thread::Builder::new()
                .name("md5-lanes".into())
                .spawn(move || run(receiver))
                .ok()?;
            Some(Hasher { sender })
        })
        .as_ref()
        .filter(|_| !STOPPED.load(Ordering::SeqCst))
}

/// The owner's side of one stream.
pub(super) struct LaneStream {
    lane: Arc<Lane>,
    hasher: &'static Hasher,
    /// Bytes not yet handed over (less than a piece).
    filling: Vec<u8>,
    total: u64,
}

impl LaneStream {
    /// A new stream, or `None` when there is no hashing thread.
    pub(super) fn new() -> Option<LaneStream> {
        let hasher = hasher()?;
        let shared = Shared {
            state: INITIAL,
            queue: VecDeque::new(),
            spare: Vec::new(),
            scheduled: false,
            failed: false,
        };
        LIVE_STREAMS.fetch_add(1, Ordering::Relaxed);
        Some(LaneStream {
            lane: Arc::new(Lane {
                shared: Mutex::new(shared),
                changed: Notify::new(),
                queued: AtomicUsize::new(0),
                finishing: AtomicBool::new(false),
                cancelled: AtomicBool::new(false),
            }),
            hasher,
            filling: Vec::new(),
            total: 0,
        })
    }

    pub(super) fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.filling.capacity() == 0 {
                self.filling = self.lane.lock().spare.pop().unwrap_or_default();
                self.filling.reserve_exact(PIECE);
            }
            let take = (PIECE - self.filling.len()).min(data.len());
            self.filling.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.filling.len() == PIECE {
                let piece = std::mem::take(&mut self.filling);
                self.hand_over(piece);
            }
        }
    }

    fn hand_over(&self, blocks: Vec<u8>) {
        let message = {
            let mut shared = self.lane.lock();
            if shared.failed {
                return;
            }
            let before = self.lane.queued.load(Ordering::Relaxed);
            self.lane.add_queued(blocks.len());
            let after = before + blocks.len();
            shared.queue.push_back((blocks, Instant::now()));
            if !std::mem::replace(&mut shared.scheduled, true) {
                Some(Message::Scheduled(self.lane.clone()))
            } else {
                (before < HURRY_QUEUED && after >= HURRY_QUEUED).then_some(Message::Hurry)
            }
        };
        if let Some(message) = message {
            self.tell(message);
        }
    }

    /// Sends `message` to the thread; if the thread is gone (or stopping, when the message may
    /// be dropped unread), this stream fails rather than wait for it.
    fn tell(&self, message: Message) {
        if self.hasher.sender.send(message).is_err() || STOPPED.load(Ordering::SeqCst) {
            self.lane.lock().failed = true;
            self.lane.changed.notify_waiters();
        }
    }

    pub(super) async fn caught_up(&self) {
        self.wait_until(|lane, s| {
            let queued = lane.queued.load(Ordering::Relaxed);
            let room = queued == 0 || TOTAL_QUEUED.load(Ordering::Relaxed) <= MAX_TOTAL_QUEUED;
            (queued <= MAX_QUEUED && room) || s.failed
        })
        .await;
    }

    pub(super) async fn finish(mut self) -> Result<[u8; 16], HasherStopped> {
        let whole = self.filling.len() / BLOCK * BLOCK;
        if whole > 0 {
            let tail = self.filling.split_off(whole);
            let blocks = std::mem::replace(&mut self.filling, tail);
            self.hand_over(blocks);
        }
        self.lane.finishing.store(true, Ordering::Relaxed);
        if self.lane.lock().scheduled {
            self.tell(Message::Hurry);
        }
        self.wait_until(|_, s| !s.scheduled || s.failed).await;
        let shared = self.lane.lock();
        if shared.failed {
            return Err(HasherStopped);
        }
        Ok(finalize(shared.state, &self.filling, self.total))
    }

    async fn wait_until(&self, done: impl Fn(&Lane, &Shared) -> bool) {
        loop {
            let mut changed = pin!(self.lane.changed.notified());
            changed.as_mut().enable();
            if done(&self.lane, &self.lane.lock()) {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for LaneStream {
    fn drop(&mut self) {
        LIVE_STREAMS.fetch_sub(1, Ordering::Relaxed);
        self.lane.cancelled.store(true, Ordering::Relaxed);
        let mut shared = self.lane.lock();
        shared.queue.clear();
        shared.spare.clear();
        let queued = self.lane.queued.swap(0, Ordering::Relaxed);
        TOTAL_QUEUED.fetch_sub(queued, Ordering::Relaxed);
    }
}

/// A stream the thread is hashing: its current piece and its state so far.
struct Active {
    lane: Arc<Lane>,
    piece: Vec<u8>,
    at: usize,
    state: [u32; 4],
    /// When the current piece was handed over.
    since: Instant,
}

impl Active {
    /// Takes up `lane`, or releases it when it has nothing (left) to hash.
    fn start(lane: Arc<Lane>) -> Option<Active> {
        let mut shared = lane.lock();
        let next = match lane.cancelled.load(Ordering::Relaxed) {
            false => shared.queue.pop_front(),
            true => None,
        };
        let (piece, since) = match next {
            Some(next) => next,
            None => {
                shared.scheduled = false;
                drop(shared);
                lane.changed.notify_waiters();
                return None;
            }
        };
        let state = shared.state;
        drop(shared);
        Some(Active {
            lane,
            piece,
            at: 0,
            state,
            since,
        })
    }

    fn remaining_blocks(&self) -> usize {
        (self.piece.len() - self.at) / BLOCK
    }

    /// After its piece is hashed: goes on with the stream's next piece (true), or gives the
    /// stream back: to `waiting` when others wait for a lane, else released as idle.
    fn next_piece(&mut self, waiting: &mut VecDeque<Arc<Lane>>) -> bool {
        let mut shared = self.lane.lock();
        shared.state = self.state;
        let cancelled = self.lane.cancelled.load(Ordering::Relaxed);
        if !cancelled {
            let mut done = std::mem::take(&mut self.piece);
            self.lane.remove_queued(done.len());
            if shared.spare.len() < MAX_SPARE {
                done.clear();
                shared.spare.push(done);
            }
        }
        let next = match cancelled || !waiting.is_empty() {
            true => None,
            false => shared.queue.pop_front(),
        };
        let keep = match next {
            Some((piece, since)) => {
                self.piece = piece;
                self.since = since;
                self.at = 0;
                true
            }
            None if !cancelled && !shared.queue.is_empty() => {
                waiting.push_back(self.lane.clone());
                false
            }
            None => {
                shared.scheduled = false;
                false
            }
        };
        drop(shared);
        self.lane.changed.notify_waiters();
        keep
    }

    /// Gives up a stream whose owner is gone.
    fn release(&self) {
        self.lane.lock().scheduled = false;
        self.lane.changed.notify_waiters();
    }
}

/// What the thread holds; if the thread panics, every stream in it is failed rather than left
/// waiting forever.
struct Work {
    receiver: mpsc::Receiver<Message>,
    active: Vec<Active>,
    waiting: VecDeque<Arc<Lane>>,
}

impl Drop for Work {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        STOPPED.store(true, Ordering::SeqCst);
        let held = self.active.drain(..).map(|a| a.lane);
        let queued: Vec<Arc<Lane>> = self
            .receiver
            .try_iter()
            .filter_map(|m| match m {
                Message::Scheduled(lane) => Some(lane),
                Message::Hurry => None,
            })
            .collect();
        for lane in held.chain(self.waiting.drain(..)).chain(queued) {
            lane.lock().failed = true;
            lane.changed.notify_waiters();
        }
    }
}

impl Work {
    fn take(&mut self, message: Message) {
        if let Message::Scheduled(lane) = message {
            self.waiting.push_back(lane);
        }
    }

    /// Drops streams whose owners are gone, then moves waiting streams into free lanes.
    fn fill_lanes(&mut self) {
        self.active.retain(|a| {
            let gone = a.lane.cancelled.load(Ordering::Relaxed);
            if gone {
                a.release();
            }
            !gone
        });
        while self.active.len() < LANES
            && let Some(lane) = self.waiting.pop_front()
        {
            self.active.extend(Active::start(lane));
        }
    }

    /// How long to wait for more streams before the next pass (`None`: run it now).
    fn gather_for(&self) -> Option<Duration> {
        let oldest = self.active.iter().map(|a| a.since).min()?;
        let company_possible =
            self.active.len() < LANES && self.active.len() < LIVE_STREAMS.load(Ordering::Relaxed);
        let hurry = TOTAL_QUEUED.load(Ordering::Relaxed) > MAX_TOTAL_QUEUED / 2
            || self.active.iter().any(|a| a.lane.in_a_hurry());
        if !company_possible || hurry {
            return None;
        }
        GATHER.checked_sub(oldest.elapsed())
    }
}

fn run(receiver: mpsc::Receiver<Message>) {
    let mut work = Work {
        receiver,
        active: Vec::with_capacity(LANES),
        waiting: VecDeque::new(),
    };
    loop {
        if work.active.is_empty() && work.waiting.is_empty() {
            match work.receiver.recv() {
                Ok(message) => work.take(message),
                Err(_) => return,
            }
        }
        while let Ok(message) = work.receiver.try_recv() {
            work.take(message);
        }
        work.fill_lanes();
        if let Some(wait) = work.gather_for() {
            match work.receiver.recv_timeout(wait) {
                Ok(message) => work.take(message),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        let Some(blocks) = work.active.iter().map(Active::remaining_blocks).min() else {
            continue;
        };
        let blocks = blocks.min(MAX_PASS_BLOCKS);
        compress(&mut work.active, blocks);
        let Work {
            active, waiting, ..
        } = &mut work;
        active.retain_mut(|a| {
            a.at += blocks * BLOCK;
            a.at < a.piece.len() || a.next_piece(waiting)
        });
    }
}
/// Hashes the next `blocks` blocks of every active stream.
fn compress(active: &mut [Active], blocks: usize) {
    let mut states = [[0u32; 4]; LANES];
    let mut inputs: [&[u8]; LANES] = [&[]; LANES];
    let n = active.len();
    for ((state, input), a) in states.iter_mut().zip(&mut inputs).zip(active.iter()) {
        *state = a.state;
        *input = &a.piece[a.at..a.at + blocks * BLOCK];
    }
    compress_streams(&mut states[..n], &inputs[..n]);
    for (a, state) in active.iter_mut().zip(states) {
        a.state = state;
    }
}

/// Runs each input (whole blocks) into its state: side by side where the CPU can.
fn compress_streams(states: &mut [[u32; 4]], inputs: &[&[u8]]) {
    #[cfg(target_arch = "x86_64")]
    if states.len() > 1 {
        super::x86::compress_streams(states, inputs);
        return;
    }
    for (state, input) in states.iter_mut().zip(inputs) {
        super::compress_blocks(state, input);
    }
}
