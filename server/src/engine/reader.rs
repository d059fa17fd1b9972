//! Reading: an object's bytes are streamed extent by extent, a few extents ahead, each read from
//! one copy and checked (its header says it is the extent wanted, its CRCs match) — whole, or,
//! when a range wants less than half of it, just its header and the chunks the range covers;
//! on an error, a timeout or a mismatch the next copy is tried, so a client never sees the
//! fault. Memory per reader is bounded by the read-ahead.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, FuturesOrdered, FuturesUnordered, StreamExt};

use super::EngineInner;
use super::drives::Drive;
use super::error::{EngineError, EngineResult};
use super::gate::Ticket;
use super::index::IndexSnapshot;
use super::model::{Extent, Location, ObjectMeta};
use super::record::{self, Kind};
use super::writer::BUDGET_UNIT;
use tokio::sync::OwnedSemaphorePermit;

/// Extents read ahead of the one being sent.
const READ_AHEAD: usize = 4;
/// Record bytes all reads together may hold in memory (read ahead, or sent but not yet
/// written to the client): memory does not grow with the number of downloads beyond this.
pub(crate) const READ_BUDGET: usize = 64 << 20;

/// Times a piece's copies are looked up in the index (GC may move them while they are read).
const PIECE_LOOKUPS: usize = 4;
/// How long one copy may take before the next is tried.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Hedges being read at once, in all reads of the process: their reads are not charged to the
/// read budget, so this bounds the memory they take (a record is at most a couple of MiB), and
/// how much a machine that is slow because it is loaded adds to its load.
static HEDGES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);
/// Reads in flight by which a record's first copy's drive may exceed another copy's before
/// reads go to the other copy.
const PRIMARY_SLACK: i64 = 16;

/// A chunk holding its share of the read budget.
struct Budgeted {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Pieces are read in parts no larger than this when the read budget is under pressure.
const PART_UNDER_PRESSURE: usize = 256 << 10;

/// The state of one read stream (see [`EngineInner::read_stream`]).
struct ReadAhead {
    engine: Arc<EngineInner>,
    pieces: BoxStream<'static, EngineResult<Piece>>,
    /// Pieces planned and not yet started (parts of a split piece, or one waiting for budget).
    queued: VecDeque<Piece>,
    /// Reads started, in order.
    reads: FuturesOrdered<BoxFuture<'static, EngineResult<Bytes>>>,
    planned_all: bool,
    /// A planning error, reported once the reads before it are sent.
    error: Option<EngineError>,
    ended: bool,
    /// Keeps GC from resetting the zones the pieces were planned in while the stream lives.
    ticket: Arc<Ticket>,
}

impl ReadAhead {
    /// Starts the reads the budget allows: the piece needed now (waiting for budget when none
    /// is in flight), then read-ahead while at least half the budget stays free.
    async fn start_reads(&mut self) {
        let budget = self.engine.read_budget.clone();
        let total = READ_BUDGET / BUDGET_UNIT;
        let record_limit = self.engine.record_limit as usize;
        while self.reads.len() < READ_AHEAD && self.error.is_none() {
            let under_pressure = budget.available_permits() * 2 < total;
            let piece = match self.queued.pop_front() {
                Some(piece) => piece,
                None if self.planned_all => return,
                None => match self.pieces.next().await {
                    None => {
                        self.planned_all = true;
                        return;
                    }
                    Some(Err(e)) => {
                        self.error = Some(e);
                        return;
                    }
                    Some(Ok(piece)) if under_pressure && piece.want.len() > PART_UNDER_PRESSURE => {
                        self.queued.extend(piece.parts(PART_UNDER_PRESSURE));
                        continue;
                    }
                    Some(Ok(piece)) => piece,
                },
            };
            let units = read_cost(&piece, record_limit)
                .div_ceil(BUDGET_UNIT)
                .clamp(1, total) as u32;
            let permit = if self.reads.is_empty() {
                // Needed now: wait (bounded, as for write budget; see `writer::BUDGET_WAIT`).
                match tokio::time::timeout(
                    super::writer::BUDGET_WAIT,
                    budget.clone().acquire_many_owned(units),
                )
                .await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => {
                        self.error = Some(EngineError::Unavailable(
                            "the engine is shutting down".into(),
                        ));
                        return;
                    }
                    Err(_) => {
                        self.error = Some(EngineError::Unavailable(
                            "the server is too busy to read more data now".into(),
                        ));
                        return;
                    }
                }
            } else {
                // Read ahead only with budget to spare, never waiting for it.
                let spare = budget.available_permits().saturating_sub(units as usize) * 2 >= total;
                match spare
                    .then(|| budget.clone().try_acquire_many_owned(units).ok())
                    .flatten()
                {
                    Some(permit) => permit,
                    None => {
                        self.queued.push_front(piece);
                        return;
                    }
                }
            };
            let engine = self.engine.clone();
            let ticket = self.ticket.clone();
            let read = async move {
                let bytes = engine.read_piece(piece, &ticket).await?;
                // The budget comes back when the chunk is dropped (sent to the client).
                Ok(Bytes::from_owner(Budgeted {
                    bytes,
                    _permit: permit,
                }))
            };
            if self.reads.is_empty() {
                // Awaited at once: it runs while the stream is polled for it.
                self.reads.push_back(read.boxed());
            } else {
                self.reads.push_back(ReadAheadTask::spawn(read).boxed());
            }
        }
    }
}

/// A read ahead, running as a task of its own: it goes on while the client is slow to take
/// what comes before it. (Polled only with the stream, a read waiting for a queue slot when
/// the client stopped reading would send its command only once the client came back, and
/// then time out at once: its timeout counted the client's slowness, and the drive would be
/// taken for down.) Dropping it (the stream dropped) stops the read.
struct ReadAheadTask(tokio::task::JoinHandle<EngineResult<Bytes>>);

impl ReadAheadTask {
    fn spawn(read: impl Future<Output = EngineResult<Bytes>> + Send + 'static) -> Self {
        ReadAheadTask(tokio::spawn(read))
    }
}

impl Future for ReadAheadTask {
    type Output = EngineResult<Bytes>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(EngineError::Unavailable(format!(
                    "a read ahead task ended: {e}"
                )))
            })
        })
    }
}

impl Drop for ReadAheadTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One extent to read and the part of its payload wanted.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    stream_id: u64,
    offset: u64,
    extent: Extent,
    want: Range<usize>,
}

impl Piece {
    /// This piece as consecutive pieces wanting at most `size` bytes each.
    fn parts(self, size: usize) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut start = self.want.start;
        while start < self.want.end {
            let end = (start + size).min(self.want.end);
            out.push(Piece {
                want: start..end,
                ..self.clone()
            });
            start = end;
        }
        out
    }
}

/// A stream of body chunks.
pub type BodyStream = BoxStream<'static, EngineResult<Bytes>>;

/// Extents looked up at a time while a read goes on.
const PLAN_WINDOW: usize = 64;

/// The pieces that make up `range` of the object `meta` describes, looked up in `snapshot` a
/// window at a time as the read goes on (memory does not grow with the object's size). Ends
/// with an error if the index does not hold every byte of the range.
pub(crate) fn plan(
    meta: ObjectMeta,
    range: Range<u64>,
    snapshot: Arc<IndexSnapshot>,
) -> impl futures::Stream<Item = EngineResult<Piece>> + Send + 'static {
    let planner = Planner {
        meta,
        range,
        snapshot,
        stream: 0,
        stream_start: 0,
        resume: None,
        planned: 0,
        finished: false,
    };
    stream::unfold(planner, |mut p| async move {
        let window = p.next_window()?;
        Some((stream::iter(window), p))
    })
    .flatten()
}

/// Walks an object's streams and their extents for one range.
struct Planner {
    meta: ObjectMeta,
    range: Range<u64>,
    snapshot: Arc<IndexSnapshot>,
    /// The stream being planned, and where it starts in the object.
    stream: usize,
    stream_start: u64,
    /// Where in the current stream the next window starts (None: at the range's start).
    resume: Option<u64>,
    /// Bytes planned so far.
    planned: u64,
    finished: bool,
}

impl Planner {
    /// The next pieces, or None when the range is covered.
    fn next_window(&mut self) -> Option<Vec<EngineResult<Piece>>> {
        if self.finished {
            return None;
        }
        while let Some(s) = self.meta.streams.get(self.stream) {
            let (id, length) = (s.stream_id, s.length);
            let stream_end = self.stream_start + length;
            if stream_end <= self.range.start || self.stream_start >= self.range.end {
                self.next_stream(stream_end);
                continue;
            }
            let from = self
                .resume
                .unwrap_or(self.range.start.saturating_sub(self.stream_start));
            let to = (self.range.end - self.stream_start).min(length);
            let extents = match self.snapshot.stream_extents(id, from, PLAN_WINDOW) {
                Ok(extents) => extents,
                Err(e) => {
                    self.finished = true;
                    return Some(vec![Err(e.into())]);
                }
            };
            let mut pieces = Vec::new();
            let mut reached = extents.len() < PLAN_WINDOW;
            // The first byte still to plan: an extent starting after it is a hole in the
            // index, reported before any byte after it could go out at the wrong offset.
            let mut needed = from;
            for (offset, extent) in extents {
                let end = offset + u64::from(extent.length);
                if offset >= to {
                    reached = true;
                    break;
                }
                if offset > needed {
                    self.finished = true;
                    pieces.push(Err(EngineError::Corrupt(format!(
                        "the index has no extent for bytes {needed}..{offset} of stream {id}"
                    ))));
                    return Some(pieces);
                }
                // From the first byte not yet planned: extents that overlap (a damaged
                // index) never send a byte twice.
                let start = needed.max(offset);
                needed = needed.max(end);
                self.resume = Some(needed);
                reached |= end >= to;
                if start >= to.min(end) {
                    continue;
                }
                let want = (start - offset) as usize..(to.min(end) - offset) as usize;
                self.planned += want.len() as u64;
                pieces.push(Ok(Piece {
                    stream_id: id,
                    offset,
                    extent,
                    want,
                }));
            }
            if reached && needed < to {
                // The stream's extents end before its bytes do: the next stream's bytes must
                // not go out in their place.
                self.finished = true;
                pieces.push(Err(EngineError::Corrupt(format!(
                    "the index has no extent for bytes {needed}..{to} of stream {id}"
                ))));
                return Some(pieces);
            }
            if reached {
                self.next_stream(stream_end);
            }
            if !pieces.is_empty() {
                return Some(pieces);
            }
        }
        self.finished = true;
        let asked = self.range.end - self.range.start;
        (self.planned != asked).then(|| {
            vec![Err(EngineError::Corrupt(format!(
                "the index holds {} of the {asked} bytes asked for",
                self.planned
            )))]
        })
    }

    fn next_stream(&mut self, stream_end: u64) {
        self.stream += 1;
        self.stream_start = stream_end;
        self.resume = None;
    }
}

impl EngineInner {
    /// Streams `pieces`; `ticket` keeps GC from resetting the zones they were planned in.
    ///
    /// The read budget is shared fairly: the piece a stream needs now waits for budget (in
    /// order with every other stream's); pieces read ahead take it only while at least half of
    /// it is free, never waiting. So a download whose client reads slowly (or not at all) holds
    /// at most the piece it is sending once the budget is in demand, and read-ahead never takes
    /// the half other streams need to make progress. Under that pressure a large piece is read
    /// in parts of [`PART_UNDER_PRESSURE`] bytes (its header and the chunks they cover), so a
    /// stalled client pins less.
    pub(crate) fn read_stream(
        self: &Arc<Self>,
        pieces: impl futures::Stream<Item = EngineResult<Piece>> + Send + 'static,
        ticket: Arc<Ticket>,
    ) -> BodyStream {
        let state = ReadAhead {
            engine: self.clone(),
            pieces: pieces.boxed(),
            queued: VecDeque::new(),
            reads: FuturesOrdered::new(),
            planned_all: false,
            error: None,
            ended: false,
            ticket,
        };
        futures::stream::unfold(state, |mut st| async move {
            if st.ended {
                return None;
            }
            st.start_reads().await;
            let Some(chunk) = st.reads.next().await else {
                // Nothing in flight: everything was sent, or planning failed.
                st.ended = true;
                return st.error.take().map(|e| (Err(e), st));
            };
            if chunk.is_err() {
                st.ended = true;
            }
            Some((chunk, st))
        })
        .boxed()
    }

    /// Copies ordered by preference: drives that are up first, and of those the ones not just
    /// found slow (see [`Drive::note_slow_read`]); among them the first copy (the one written to
    /// be read: the others were hinted as rarely read, so a drive may not cache them) unless its
    /// drive has [`PRIMARY_SLACK`] more reads in flight than another's; then the least busy,
    /// ties broken at random so that reads spread over the copies.
    fn order(&self, replicas: &[Location]) -> Vec<Location> {
        let mut v: Vec<((bool, bool), i64, u32, Location)> = replicas
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match self.drives.of(l) {
                // A drive found to be another drive than the one holding the copy (see
                // EngineError::WrongDrive) is no last resort: what it returns is not the copy.
                Some(d) if d.foreign.load(Ordering::Relaxed) => None,
                Some(d) => {
                    let busy = d.in_flight.load(Ordering::Relaxed);
                    let (busy, tie) = if i == 0 {
                        (busy.saturating_sub(PRIMARY_SLACK), 0)
                    } else {
                        (busy, 1 + rand::random::<u32>() / 2)
                    };
                    Some(((!d.is_up(), d.is_slow_for_reads()), busy, tie, *l))
                }
                None => Some(((true, true), i64::MAX, 0, *l)),
            })
            .collect();
        v.sort_by_key(|(down, busy, tie, _)| (*down, *busy, *tie));
        v.into_iter().map(|(.., l)| l).collect()
    }

    async fn read_piece(&self, mut piece: Piece, ticket: &Ticket) -> EngineResult<Bytes> {
        let mut last_error = String::new();
        // Whether a copy tried before failed: a piece then served counts one failover.
        let mut failed_over = false;
        let served = |bytes: Bytes, failed_over: bool| {
            if failed_over {
                self.stats.read_failovers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(bytes)
        };
        // Whether the last copy tried had been moved by GC while it was read.
        let mut moved = false;
        for attempt in 0..PIECE_LOOKUPS {
            // Held while this attempt's hedge is being read (see [`HEDGES`]).
            let mut hedge_permit = None;
            let order = self.order(&piece.extent.replicas);
            let mut next = 0;
            // Copies read at once: one, two once one was slow (a hedge), and as many again
            // after each that fails while another is still being read.
            let mut racing = 1;
            let mut reading = FuturesUnordered::new();
            let mut started: Vec<Location> = Vec::new();
            loop {
                while reading.len() < racing {
                    let Some(location) = order.get(next).copied() else {
                        break;
                    };
                    next += 1;
                    // A copy on a drive that is down is not waited for (its host would hold
                    // the read until the drive is back, or gives up after seconds): with no
                    // copy on a drive that is up, the read fails at once, a 503 the client
                    // retries.
                    if self.drives.of(&location).is_none_or(|d| !d.is_up()) {
                        last_error = format!("drive {} is down", location.drive);
                        moved = false;
                        continue;
                    }
                    if !reading.is_empty() {
                        self.stats.read_hedges.fetch_add(1, Ordering::Relaxed);
                    }
                    started.push(location);
                    let piece = &piece;
                    reading.push(async move {
                        (location, self.try_copy(piece, location, ticket).await)
                    });
                }
                if reading.is_empty() {
                    break;
                }
                // A second copy is read once the one being read is slow, if a hedge may be
                // taken (they are not charged to the read budget, so few run at once).
                let spare = order[next..]
                    .iter()
                    .any(|l| self.drives.of(l).is_some_and(|d| d.is_up()));
                let hedging = racing == 1 && spare;
                // A drive that hangs (a target stopped without closing its connections, which
                // its host takes a moment or two to tell from a slow one) holds a read up no
                // longer than this; far above what a read takes, so that a hedge costs a second
                // read only when something is wrong.
                let hedge_after = self.config.patience.hedge_after;
                let hedge = async move {
                    if hedging {
                        tokio::time::sleep(hedge_after).await;
                        // (Never closed: acquiring only waits for a hedge to end.)
                        if let Ok(permit) = HEDGES.acquire().await {
                            return permit;
                        }
                    }
                    std::future::pending().await
                };
                tokio::select! {
                    // A copy that answered is taken before a hedge is started.
                    biased;
                    Some((location, outcome)) = reading.next() => match outcome {
                        Ok(bytes) => {
                            // Copies started before this one and still being read were slower:
                            // their drives are passed over by reads for a moment. (One started
                            // after it, a hedge just begun, says nothing of its drive.)
                            let winner = started.iter().position(|l| *l == location);
                            for slow in &started[..winner.unwrap_or(0)] {
                                if let Some(d) = self.drives.of(slow) {
                                    d.note_slow_read();
                                }
                            }
                            return served(bytes, failed_over);
                        }
                        Err(failed) => {
                            started.retain(|l| *l != location);
                            failed_over = true;
                            moved = failed.moved;
                            last_error = failed.why;
                        }
                    },
                    permit = hedge => {
                        racing = 2;
                        hedge_permit = Some(permit);
                    }
                }
            }
            drop(reading);
            drop(hedge_permit);
            if attempt + 1 < PIECE_LOOKUPS {
                // GC may have moved it since the lookup: look again (and again, should GC
                // move the new copies too while they are read).
                match self.index.extent(piece.stream_id, piece.offset)? {
                    Some(e) if e.replicas != piece.extent.replicas => piece.extent = e,
                    Some(_) => break,
                    // The version being read was overwritten or deleted since the read began,
                    // and GC reclaimed its space (the read outlasted GC's wait for it): not
                    // damage, and a read begun again finds what is there now.
                    None => {
                        return Err(EngineError::Unavailable(format!(
                            "stream {} was overwritten or deleted while it was read; read it again",
                            piece.stream_id
                        )));
                    }
                }
            }
        }
        let what = format!(
            "no readable copy of stream {} offset {}: {last_error}",
            piece.stream_id, piece.offset
        );
        // A copy on a drive that is down may be whole (the others found damaged): an outage
        // to wait out (503), not damage known to be beyond repair. Nor is a copy GC moved again
        // and again while it was read: a read begun again finds where it is.
        if moved
            || piece
                .extent
                .replicas
                .iter()
                .any(|l| self.drives.of(l).is_none_or(|d| !d.is_up()))
        {
            return Err(EngineError::Unavailable(what));
        }
        Err(EngineError::Corrupt(what))
    }

    /// Reads the piece from the copy at `location`, checked: see [`EngineInner::read_copy`].
    /// What passed the record's checks counts only if GC did not go on without the read, or the
    /// index still names the copy now that it has been read (GC may have reset the zone and
    /// written it again: see [`super::gate`]).
    async fn try_copy(
        &self,
        piece: &Piece,
        location: Location,
        ticket: &Ticket,
    ) -> Result<Bytes, CopyFailed> {
        match self.read_copy(piece, location).await {
            Ok(bytes)
                if self
                    .drives
                    .zone_of(&location)
                    .is_some_and(|zone| !ticket.given_up_on(zone))
                    || self.still_names(piece, location) =>
            {
                Ok(bytes)
            }
            Ok(_) => Err(CopyFailed {
                why: "the copy was moved while it was read".into(),
                moved: true,
            }),
            Err(why) => {
                tracing::warn!(
                    drive = location.drive,
                    lba = location.lba,
                    "read of an extent copy failed, trying another: {why}"
                );
                Err(CopyFailed { why, moved: false })
            }
        }
    }

    /// Whether the index still names `location` as a copy of the piece's extent (not if the
    /// index cannot say: the read goes on to the other copies).
    fn still_names(&self, piece: &Piece, location: Location) -> bool {
        self.index
            .extent(piece.stream_id, piece.offset)
            .ok()
            .flatten()
            .is_some_and(|e| e.replicas.contains(&location))
    }

    async fn read_copy(&self, piece: &Piece, location: Location) -> Result<Bytes, String> {
        let drive = self.drives.of(&location).ok_or("unknown drive")?;
        if piece.want.len() * 2 < piece.extent.length as usize
            && let Some(bytes) = self.read_part(drive, piece, location).await?
        {
            return Ok(bytes);
        }
        let bytes = read_blocks(drive, location.lba, location.blocks).await?;
        let parsed = record::parse(&bytes, drive.block_size() as usize)
            .map_err(|e| self.record_error(e, piece, location))?;
        check_identity(&parsed.header, piece)
            .map_err(|e| self.bad_copy(e, false, piece, location))?;
        let payload =
            parsed.payload.start + piece.want.start..parsed.payload.start + piece.want.end;
        if payload.end > parsed.payload.end {
            return Err(self.bad_copy(
                "extent shorter than the index says",
                false,
                piece,
                location,
            ));
        }
        if piece.want.len() * 2 < piece.extent.length as usize {
            // A small part of a record that could only be checked whole: the read budget
            // counted the part (see [`read_cost`]), so the part is kept, not the record.
            return Ok(Bytes::copy_from_slice(&bytes[payload]));
        }
        Ok(bytes.slice(payload))
    }

    /// Reads only the header and the chunks covering the wanted part of a record (in one
    /// read, or two at once when they lie apart). `None`: the record can only be checked
    /// whole (written without chunk CRCs, or a header longer than the usual bound).
    async fn read_part(
        &self,
        drive: &Drive,
        piece: &Piece,
        location: Location,
    ) -> Result<Option<Bytes>, String> {
        let block = drive.block_size() as usize;
        let record_bytes = location.blocks as usize * block;
        // The chunk table is sized for the most a record can hold, which a short record (an
        // object's last) can be far below.
        let largest = record_bytes.max(self.record_limit as usize);
        let bound = record::header_bound(largest).min(record_bytes);
        let head_blocks = bound.div_ceil(block);
        // The chunks wanted lie somewhere after the fixed header, and before the bound.
        let chunk = record::CHUNK;
        let first = piece.want.start / chunk * chunk;
        let end = (piece.want.end.div_ceil(chunk) * chunk).min(piece.extent.length as usize);
        let lo = (record::FIXED_HEADER + first) / block;
        let hi = (bound + end).div_ceil(block).min(location.blocks as usize);
        if hi <= lo {
            return Ok(None);
        }
        let (head, body, body_at) = if lo <= head_blocks {
            let all = read_blocks(drive, location.lba, hi as u32).await?;
            (all.clone(), all, 0)
        } else {
            let (head, body) = futures::try_join!(
                read_blocks(drive, location.lba, head_blocks as u32),
                read_blocks(drive, location.lba + lo as u64, (hi - lo) as u32),
            )?;
            (head, body, lo * block)
        };
        let view = match record::parse_header(&head, block) {
            Ok(Some(view)) => view,
            Ok(None) | Err(record::RecordError::Truncated(_)) => return Ok(None),
            Err(e) => return Err(self.record_error(e, piece, location)),
        };
        check_identity(&view.header, piece)
            .map_err(|e| self.bad_copy(e, false, piece, location))?;
        if piece.want.end > view.length {
            return Err(self.bad_copy(
                "extent shorter than the index says",
                false,
                piece,
                location,
            ));
        }
        if view.chunk() != chunk {
            // Written with another chunk size: where its chunks lie was not read.
            return Ok(None);
        }
        let chunks = view.chunks_covering(&piece.want);
        let Some(span_start) = (view.header_len + chunks.start).checked_sub(body_at) else {
            return Ok(None);
        };
        let span = span_start..span_start + chunks.len();
        let Some(data) = body.get(span.clone()) else {
            return Ok(None);
        };
        view.check(&chunks, data)
            .map_err(|e| self.record_error(e, piece, location))?;
        let from = span.start + piece.want.start - chunks.start;
        Ok(Some(body.slice(from..from + piece.want.len())))
    }

    /// A record read for `piece` at `location` is not valid: see [`EngineInner::bad_copy`].
    fn record_error(&self, e: record::RecordError, piece: &Piece, location: Location) -> String {
        self.bad_copy(&e, e.is_damage(), piece, location)
    }

    /// What was read for `piece` at `location` is not what the index says is there (a CRC
    /// mismatch, counted when `crc`; a damaged header, zeros, another record): the copy is
    /// handed to repair, which checks again that the index still names it and that it is bad
    /// (a read of a location GC has since reset costs nothing more), and makes it anew from a
    /// good copy. Says what is wrong.
    fn bad_copy(
        &self,
        why: impl std::fmt::Display,
        crc: bool,
        piece: &Piece,
        location: Location,
    ) -> String {
        // (Counted only while the index still names the copy: a read GC went on without may
        // have found its zone reset and written again, which is no damage.)
        if crc && self.still_names(piece, location) {
            self.stats.crc_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.repair.suspect(piece.stream_id, piece.offset, location);
        why.to_string()
    }
}

/// Why a copy of a piece could not be served.
struct CopyFailed {
    why: String,
    /// GC moved the copy while it was read (a lookup finds where it went).
    moved: bool,
}

/// Counts a read in flight on a drive while it lives (also when the read is dropped unfinished).
struct InFlight<'a>(&'a Drive);

impl<'a> InFlight<'a> {
    fn new(drive: &'a Drive) -> Self {
        drive.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(drive)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes reading `piece` holds until it is sent: its whole record, or for a small part of a
/// record (see [`EngineInner::read_copy`]) at most the header's bound and the chunks covering
/// the part, read in one piece or two. (A small range of a large object, a Parquet footer,
/// does not hold a whole record's worth of the read budget.)
fn read_cost(piece: &Piece, record_limit: usize) -> usize {
    let whole = piece.extent.length as usize;
    if piece.want.len() * 2 >= whole {
        return whole;
    }
    let bound = record::header_bound(record_limit);
    (piece.want.len() + 2 * bound + 2 * record::CHUNK).min(whole)
}

/// Reads `blocks` blocks at `lba` from `drive`, within the read timeout.
async fn read_blocks(drive: &Drive, lba: u64, blocks: u32) -> Result<Bytes, String> {
    let counted = InFlight::new(drive);
    let result = tokio::time::timeout(READ_TIMEOUT, drive.device.read(lba, blocks)).await;
    drop(counted);
    match result {
        Ok(r) => {
            drive.note(&r);
            r.map_err(|e| e.to_string())
        }
        Err(_) => {
            // A drive that takes this long is as good as down: reads (and writes) go to the
            // others for a moment instead of each waiting this long for it again.
            let timed_out = format!("timed out after {READ_TIMEOUT:?}");
            drive.note::<()>(&Err(zns::ZoneError::Unavailable(timed_out.clone())));
            Err(timed_out)
        }
    }
}

/// Whether the record read is the extent the piece wants.
fn check_identity(h: &record::Header, piece: &Piece) -> Result<(), String> {
    if h.kind != Kind::Data || h.id != piece.stream_id || h.offset != piece.offset {
        return Err("the record there is not the extent wanted (moved or overwritten)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::index::{Index, cf, extent_key};
    use crate::engine::model::{Extent, StreamRef};
    use futures::StreamExt;

    #[test]
    fn a_small_range_of_a_large_record_costs_little_read_budget() {
        let limit = 2 << 20;
        let piece = |length: u32, want: Range<usize>| Piece {
            stream_id: 1,
            offset: 0,
            extent: Extent {
                length,
                replicas: Vec::new(),
            },
            want,
        };
        // A 4 KiB range of a 1 MiB record: its chunks and the header, not the record.
        let small = read_cost(&piece(1 << 20, 500_000..504_096), limit);
        assert!(small < 128 << 10, "{small}");
        assert!(small >= 4096 + 2 * record::CHUNK);
        // Half a record or more is read whole.
        assert_eq!(read_cost(&piece(1 << 20, 0..(1 << 19)), limit), 1 << 20);
        assert_eq!(read_cost(&piece(4096, 0..100), limit), 4096);
    }

    /// An index in `dir` holding 100-byte extents at (stream, offset) `extents`.
    fn index_with_extents(dir: &std::path::Path, extents: &[(u64, u64)]) -> Arc<Index> {
        let index = Arc::new(Index::open(dir).unwrap());
        let mut batch = rocksdb::WriteBatch::default();
        for &(stream, offset) in extents {
            let extent = Extent {
                length: 100,
                replicas: vec![Location {
                    drive: 0,
                    lba: offset,
                    blocks: 1,
                }],
            };
            batch.put_cf(
                index.cf(cf::EXTENTS),
                extent_key(stream, offset),
                extent.encode(),
            );
        }
        index.write(batch, false).unwrap();
        index
    }

    /// A hole in a stream's extents is reported before any byte after it is planned (it would
    /// go out at the wrong offset).
    #[tokio::test]
    async fn a_hole_in_the_extents_stops_the_read_at_the_hole() {
        let dir = tempfile::tempdir().unwrap();
        // Stream 9: bytes 0..100 and 200..300; 100..200 are missing.
        let index = index_with_extents(dir.path(), &[(9, 0), (9, 200)]);
        let meta = ObjectMeta {
            size: 300,
            streams: vec![StreamRef {
                stream_id: 9,
                length: 300,
            }],
            ..ObjectMeta::default()
        };
        let pieces: Vec<_> = plan(meta, 0..300, Arc::new(index.snapshot()))
            .collect()
            .await;
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[0].as_ref().unwrap().offset, 0);
        assert!(
            matches!(&pieces[1], Err(EngineError::Corrupt(m)) if m.contains("100..200")),
            "{pieces:?}"
        );
    }

    /// A part whose last extents are missing (or that has none) stops the read where its bytes
    /// end: the next part's bytes must not go out at their offset.
    #[tokio::test]
    async fn missing_extents_at_the_end_of_a_part_stop_the_read_there() {
        let dir = tempfile::tempdir().unwrap();
        // Part 1 (stream 5, 200 bytes) has only 0..100; part 2 (stream 6, 100 bytes) is whole;
        // part 3 (stream 7, 100 bytes) has no extent at all.
        let index = index_with_extents(dir.path(), &[(5, 0), (6, 0)]);
        let meta = |streams: &[(u64, u64)]| ObjectMeta {
            size: streams.iter().map(|s| s.1).sum(),
            streams: streams
                .iter()
                .map(|&(stream_id, length)| StreamRef { stream_id, length })
                .collect(),
            ..ObjectMeta::default()
        };
        let snapshot = Arc::new(index.snapshot());
        let pieces: Vec<_> = plan(meta(&[(5, 200), (6, 100)]), 0..300, snapshot.clone())
            .collect()
            .await;
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[0].as_ref().unwrap().stream_id, 5);
        assert!(
            matches!(&pieces[1], Err(EngineError::Corrupt(m)) if m.contains("100..200")),
            "{pieces:?}"
        );
        let pieces: Vec<_> = plan(meta(&[(7, 100), (6, 100)]), 0..200, snapshot)
            .collect()
            .await;
        assert_eq!(pieces.len(), 1, "{pieces:?}");
        assert!(
            matches!(&pieces[0], Err(EngineError::Corrupt(m)) if m.contains("0..100")),
            "{pieces:?}"
        );
    }
}
