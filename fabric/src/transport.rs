//! Moving PDUs over a TCP connection, for both the target and the host: a reader that decodes
//! PDUs from the stream (never assuming one read is one PDU), and a writer task that sends
//! encoded frames in order, coalescing small ones into one write and never copying large data.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::wire::pdu::{Decoder, Frame, Pdu, PduError};

/// Frames at most this large are copied into one write buffer with their neighbours.
const COALESCE_LIMIT: usize = 16 << 10;
/// A write batch is sent once it holds this many bytes.
const BATCH_LIMIT: usize = 256 << 10;

/// Why reading a PDU failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a PDU that cannot be accepted.
    #[error(transparent)]
    Pdu(#[from] PduError),
    /// The peer closed the connection in the middle of a PDU.
    #[error("connection closed in the middle of a PDU")]
    Truncated,
}

/// Remaining bytes of a PDU above which it is read on its own, into a buffer of its exact
/// size. Payloads of PDUs read otherwise share a buffer with the PDUs around them, of about
/// this size plus what the PDU still lacked: a receiver that keeps a payload smaller than this
/// for long copies it out (see [`owned_payload`]); a larger one keeps at most about twice its
/// own size alive.
pub const LARGE_PDU: usize = 64 << 10;

/// The buffer PDUs that are not large are read into.
const READ_BUFFER: usize = 64 << 10;

/// A payload to keep while more PDUs are read: one below [`LARGE_PDU`] shares its receive
/// buffer with other PDUs and would keep that whole buffer alive (so that a peer sending many
/// small payloads makes the receiver hold many times what it counted), so it is copied; a
/// larger one owns its buffer, or shares one at most about twice its size (see
/// [`LARGE_PDU`]), and is kept as it is.
pub fn owned_payload(data: Bytes) -> Bytes {
    if data.len() < LARGE_PDU {
        Bytes::copy_from_slice(&data)
    } else {
        data
    }
}

/// Decodes PDUs from the read half of a connection.
#[derive(Debug)]
pub struct PduReader<R> {
    rd: R,
    buf: BytesMut,
    /// Whether `buf` is a buffer of a large PDU's exact size, holding only that PDU.
    exact: bool,
    /// The decoder, whose framing is updated once ICReq/ICResp negotiated digests.
    pub decoder: Decoder,
}

impl<R: AsyncRead + Unpin> PduReader<R> {
    /// A reader over `rd`.
    pub fn new(rd: R, decoder: Decoder) -> Self {
        PduReader {
            rd,
            buf: BytesMut::with_capacity(READ_BUFFER),
            exact: false,
            decoder,
        }
    }

    /// Whether bytes received wait to be decoded.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next PDU, or `None` when the peer closed the connection between PDUs.
    pub async fn next(&mut self) -> Result<Option<Pdu>, ReadError> {
        loop {
            if let Some(pdu) = self.decoder.decode(&mut self.buf)? {
                if self.exact {
                    // The next PDUs go to a buffer of the usual size: the large one's
                    // allocation, once its payload is dropped, must not come back as the
                    // buffer many small payloads share (each would keep all of it alive).
                    self.exact = false;
                    self.buf = BytesMut::with_capacity(READ_BUFFER);
                }
                return Ok(Some(pdu));
            }
            // Make room for the rest of the PDU in one go once its length is known. A large
            // PDU (data) is read alone into a buffer of its exact size: the payload handed on
            // then pins no bytes of the PDUs after it, so what is held stays what was asked
            // for. The buffer holds nothing but the start of this PDU here (a whole PDU would
            // have been decoded above).
            let want = self.decoder.frame_len(&self.buf)?.unwrap_or(0);
            let missing = want.saturating_sub(self.buf.len());
            let n = if missing > LARGE_PDU || self.exact {
                if !self.exact {
                    let mut exact = BytesMut::with_capacity(want);
                    exact.extend_from_slice(&self.buf);
                    self.buf = exact;
                    self.exact = true;
                }
                (&mut self.rd)
                    .take(missing as u64)
                    .read_buf(&mut self.buf)
                    .await?
            } else {
                self.buf.reserve(missing.max(16 << 10));
                self.rd.read_buf(&mut self.buf).await?
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }
}

/// Sends frames to a writer task; cloning gives another sender on the same connection.
pub type FrameSender = mpsc::Sender<Frame>;

/// Starts the task that writes every frame sent on the returned channel to `wr`, in order.
/// `backlog` tells it when more frames are on their way. The task ends when all senders are
/// dropped or the connection fails.
pub fn spawn_writer<W>(
    wr: W,
    depth: usize,
    backlog: Arc<Backlog>,
) -> (FrameSender, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(depth.max(8));
    let task = tokio::spawn(write_frames(wr, rx, backlog));
    (tx, task)
}

/// The work in progress on a connection whose frames are still to come, kept by the
/// connection's owner for its writer. A writer holding frames waits one scheduler turn for more
/// only when some are on their way: with many commands in flight the frames of those completing
/// or being submitted then share one write (one system call instead of one each), and a lone
/// command pays no extra turn on its round trip.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Commands begun and not yet ended.
    commands: AtomicUsize,
    /// Whether received bytes wait to be decoded (more commands are coming).
    input: AtomicBool,
}

impl Backlog {
    /// A command has begun: it will send a frame.
    pub fn begin(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    /// A command has ended.
    pub fn end(&self) {
        self.commands.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether received bytes wait to be decoded.
    pub fn set_input_pending(&self, pending: bool) {
        self.input.store(pending, Ordering::Relaxed);
    }

    /// Whether more frames are expected than the `queued` ones in hand.
    fn expects_more(&self, queued: usize) -> bool {
        self.commands.load(Ordering::Relaxed) > queued || self.input.load(Ordering::Relaxed)
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Frame>,
    backlog: Arc<Backlog>,
) {
    let mut batch = BytesMut::with_capacity(BATCH_LIMIT);
    // Frames in the previous write: several mean a busy connection, where waiting pays.
    let mut last_batch = 0;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut yielded = false;
        let mut frames = 0;
        while let Some(frame) = next.take() {
            frames += 1;
            if frame.data.len() <= COALESCE_LIMIT {
                batch.extend_from_slice(&frame.head);
                batch.extend_from_slice(&frame.data);
                if let Some(d) = frame.ddgst {
                    batch.extend_from_slice(&d);
                }
                batch.extend_from_slice(&frame.tail);
            } else {
                // Large data: header (after whatever is batched), data and digest in one
                // vectored write, without copying the data.
                batch.extend_from_slice(&frame.head);
                let ddgst = frame.ddgst.unwrap_or_default();
                let tail = if frame.ddgst.is_some() {
                    &ddgst[..]
                } else {
                    &[][..]
                };
                let parts = &mut [&batch[..], &frame.data[..], tail, &frame.tail[..]];
                if write_all_vectored(&mut wr, parts).await.is_err() {
                    return;
                }
                batch.clear();
            }
            if batch.len() >= BATCH_LIMIT {
                break;
            }
            next = rx.try_recv().ok();
            if next.is_none() && !yielded && (last_batch > 1 || backlog.expects_more(frames)) {
                // Let the tasks that are ready to run (commands completing, callers
                // submitting) queue their frames first: under load one write then carries
                // many PDUs instead of one system call each.
                yielded = true;
                tokio::task::yield_now().await;
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if write_all_vectored(&mut wr, &mut [&batch[..]])
                .await
                .is_err()
            {
                return;
            }
            batch.clear();
        }
        last_batch = frames;
    }
    let _ = wr.shutdown().await;
}

/// The longest the writer waits for the peer to take any bytes: a peer that leaves its
/// receive window closed this long is not reading, and its connection is given up (rather
/// than holding the frames, and the memory of every command queued behind them, for ever). A
/// slow peer that keeps taking some is waited for, however long a large frame then takes.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// Writes all of `parts` with as few system calls as the socket allows; fails when the peer
/// takes nothing for [`WRITE_STALL_LIMIT`].
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    parts: &mut [&[u8]],
) -> std::io::Result<()> {
    let mut index = 0;
    while index < parts.len() {
        let slices: Vec<IoSlice<'_>> = parts[index..]
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p))
            .collect();
        if slices.is_empty() {
            return Ok(());
        }
        // A write the socket takes at once needs no timer (the common case, and cheaper).
        let mut written = match wr.write_vectored(&slices).now_or_never() {
            Some(written) => written?,
            None => tokio::time::timeout(WRITE_STALL_LIMIT, wr.write_vectored(&slices))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < parts.len() && written >= parts[index].len() {
            written -= parts[index].len();
            index += 1;
        }
        if index < parts.len() {
            let mut part = parts[index];
            part.advance(written);
            parts[index] = part;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::command::Cqe;
    use crate::wire::pdu::{
        CONTROLLER_TO_HOST, CapsuleResp, DataPdu, Framing, HOST_TO_CONTROLLER, encode,
    };
    use crate::wire::status::Status;
    use bytes::Bytes;

    /// A C2HData PDU of `len` bytes of data.
    fn data_pdu(len: usize) -> Pdu {
        Pdu::C2HData(DataPdu {
            cccid: 1,
            ttag: 0,
            datao: 0,
            last: true,
            success: false,
            data: Bytes::from(vec![7u8; len]),
            data_digest_error: false,
        })
    }

    /// A peer that never reads: the writer gives up after the stall limit, and senders see the
    /// connection closed instead of waiting for room for ever.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_given_up_after_the_stall_limit() {
        let (client, _server_never_read) = tokio::io::duplex(4096);
        let (tx, task) = spawn_writer(client, 8, Arc::default());
        let pdu = data_pdu(100_000);
        for _ in 0..4 {
            tx.send(encode(&pdu, Framing::INITIAL)).await.unwrap();
        }
        tokio::time::sleep(WRITE_STALL_LIMIT - Duration::from_secs(1)).await;
        assert!(!task.is_finished(), "still waiting within the limit");
        tokio::time::timeout(Duration::from_secs(2), tx.closed())
            .await
            .expect("the writer gave up at the limit");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the writer task ended")
            .unwrap();
    }

    /// A slow peer that keeps taking some bytes is waited for, though a large frame then takes
    /// longer than the stall limit to go out.
    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_that_keeps_reading_is_waited_for() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(4096);
        let (tx, task) = spawn_writer(client, 8, Arc::default());
        let pdu = data_pdu(100_000);
        tx.send(encode(&pdu, Framing::INITIAL)).await.unwrap();
        let mut got = 0;
        let mut chunk = [0u8; 4096];
        // 4 KiB every 10 s: the frame takes minutes.
        while got < 100_000 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(!task.is_finished(), "given up after {got} bytes");
            got += server.read(&mut chunk).await.unwrap();
        }
        assert!(!task.is_finished());
    }

    #[tokio::test]
    async fn frames_arrive_in_order_whatever_their_size() {
        let (client, server) = tokio::io::duplex(4096);
        let (tx, _task) = spawn_writer(client, 16, Arc::default());
        let mut sent = Vec::new();
        let mut frames = Vec::new();
        for i in 0..50u32 {
            let len = if i % 7 == 0 { 100_000 } else { 4096 };
            let pdu = Pdu::C2HData(DataPdu {
                cccid: i as u16,
                ttag: 0,
                datao: 0,
                last: true,
                success: false,
                data: Bytes::from(vec![i as u8; len]),
                data_digest_error: false,
            });
            frames.push(encode(&pdu, Framing::INITIAL));
            sent.push(pdu);
            let resp = Pdu::CapsuleResp(CapsuleResp {
                cqe: Cqe::new(i as u16, 1, 0, Status::SUCCESS, 0),
            });
            frames.push(encode(&resp, Framing::INITIAL));
            sent.push(resp);
        }
        // Send from another task: the pipe is small, so the reader must run concurrently.
        tokio::spawn(async move {
            for frame in frames {
                tx.send(frame).await.unwrap();
            }
        });
        let mut reader = PduReader::new(server, Decoder::new(CONTROLLER_TO_HOST, 1 << 20));
        for want in sent {
            assert_eq!(reader.next().await.unwrap().unwrap(), want);
        }
        assert!(reader.next().await.unwrap().is_none());
    }

    /// After a large PDU the reader goes back to a buffer of the usual size: the large one's
    /// allocation, freed by its receiver, must not become the buffer that small payloads (kept
    /// by a receiver as slices) share, each then keeping all of it alive.
    #[tokio::test]
    async fn a_large_pdu_leaves_no_large_buffer_behind() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let data_pdu = |cccid: u16, len: usize| {
            Pdu::C2HData(DataPdu {
                cccid,
                ttag: 0,
                datao: 0,
                last: true,
                success: false,
                data: Bytes::from(vec![cccid as u8; len]),
                data_digest_error: false,
            })
        };
        let sent = vec![
            data_pdu(1, 1 << 20),
            data_pdu(2, 100),
            data_pdu(3, 20 << 10),
        ];
        let frames: Vec<Frame> = sent.iter().map(|p| encode(p, Framing::INITIAL)).collect();
        let (tx, _task) = spawn_writer(client, 16, Arc::default());
        tokio::spawn(async move {
            for frame in frames {
                tx.send(frame).await.unwrap();
            }
        });
        let mut reader = PduReader::new(server, Decoder::new(CONTROLLER_TO_HOST, 2 << 20));
        for want in sent {
            let got = reader.next().await.unwrap().unwrap();
            assert_eq!(got, want);
            drop(got);
            assert!(
                reader.buf.capacity() <= 2 * READ_BUFFER,
                "the read buffer holds {} bytes after a PDU",
                reader.buf.capacity()
            );
        }
    }

    /// Payloads below the large size are copied out of the shared buffer; larger ones are kept.
    #[test]
    fn only_payloads_sharing_a_buffer_are_copied() {
        let mut buffer = BytesMut::from(&vec![5u8; 4 * LARGE_PDU][..]);
        let small = buffer.split_to(100).freeze();
        let kept = owned_payload(small.clone());
        assert_eq!(kept, small);
        assert_ne!(kept.as_ptr(), small.as_ptr(), "a small payload is copied");
        let large = buffer.split_to(LARGE_PDU).freeze();
        assert_eq!(owned_payload(large.clone()).as_ptr(), large.as_ptr());
    }

    #[tokio::test]
    async fn truncated_pdu_is_an_error() {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(&[0x04, 0, 72, 0, 72, 0, 0, 0, 1, 2, 3])
            .await
            .unwrap();
        drop(client);
        let mut reader = PduReader::new(server, Decoder::new(HOST_TO_CONTROLLER, 8192));
        assert!(matches!(reader.next().await, Err(ReadError::Truncated)));
    }
}
