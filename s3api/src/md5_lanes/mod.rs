//! The MD5 of request bodies — the ETag of single-part objects and of parts — computed for many
//! uploads at once. MD5 is a chain of dependent steps: one stream keeps a core busy at about
//! 600 MB/s while most of its execution units wait. Where the CPU has AVX-512, bodies of
//! [`LANED_FROM`] bytes or more hand (a copy of) their bytes to one hashing thread that runs up to 16
//! uploads side by side, one per vector lane ([`lanes`]); shorter bodies, and every body on other
//! CPUs, hash inline as before ([`INLINE_ENV`] makes every body hash inline). The digest is the
//! same either way.

mod lanes;
pub use lanes::INLINE_ENV;
#[cfg(target_arch = "x86_64")]
mod x86;

use bytes::Bytes;
use md5::{Digest, Md5};

/// MD5 works on 64-byte blocks.
const BLOCK: usize = 64;

/// MD5's initial state (RFC 1321).
const INITIAL: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Bodies at least this long (or of unknown length) hash in lanes; shorter ones hash inline,
/// where handing bytes to another thread would cost more than it saves.
pub const LANED_FROM: u64 = 128 << 10;

/// The hashing thread stopped (a bug, not an input): the digest of a stream it held is lost.
#[derive(Debug, thiserror::Error)]
#[error("the MD5 hashing thread stopped")]
pub struct HasherStopped;

/// The MD5 of one stream of bytes, fed in order with [`StreamMd5::update`].
pub struct StreamMd5 {
    inner: Inner,
}

enum Inner {
    Inline(Md5),
    Laned(lanes::LaneStream),
}

impl StreamMd5 {
    /// A digest for a body of `expected_len` bytes (`None`: unknown).
    pub fn new(expected_len: Option<u64>) -> StreamMd5 {
        let laned = expected_len.is_none_or(|len| len >= LANED_FROM);
        let inner = match laned.then(lanes::LaneStream::new).flatten() {
            Some(stream) => Inner::Laned(stream),
            None => Inner::Inline(Md5::new()),
        };
        StreamMd5 { inner }
    }

    /// Adds the next bytes of the stream. Never blocks: a laned stream queues a copy of them
    /// (see [`StreamMd5::caught_up`]).
    pub fn update(&mut self, data: &Bytes) {
        match &mut self.inner {
            Inner::Inline(md5) => md5.update(data),
            Inner::Laned(stream) => stream.update(data),
        }
    }

    /// Waits while the bytes queued for hashing exceed a small bound, so that a body is never
    /// held in memory for long because the hashing thread is behind.
    pub async fn caught_up(&self) {
        if let Inner::Laned(stream) = &self.inner {
            stream.caught_up().await;
        }
    }

    /// Whether the stream is hashed by the lanes' thread.
    #[cfg(test)]
    fn is_laned(&self) -> bool {
        matches!(self.inner, Inner::Laned(_))
    }

    /// The digest of everything added.
    pub async fn finish(self) -> Result<[u8; 16], HasherStopped> {
        match self.inner {
            Inner::Inline(md5) => Ok(md5.finalize().into()),
            Inner::Laned(stream) => stream.finish().await,
        }
    }
}

/// Runs the whole blocks of `bytes` into `state`, one after another (any bytes after the last
/// whole block are ignored: callers hand over whole blocks only).
fn compress_blocks(state: &mut [u32; 4], bytes: &[u8]) {
    md5::block_api::compress(state, bytes.as_chunks::<BLOCK>().0);
}

/// Completes a digest: `state` after every whole block, then `tail` (under one block) and the
/// padding for a stream of `total` bytes.
fn finalize(mut state: [u32; 4], tail: &[u8], total: u64) -> [u8; 16] {
    let mut last = [0u8; 2 * BLOCK];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] = 0x80;
    let end = if tail.len() < BLOCK - 8 {
        BLOCK
    } else {
        2 * BLOCK
    };
    last[end - 8..end].copy_from_slice(&total.wrapping_mul(8).to_le_bytes());
    compress_blocks(&mut state, &last[..end]);
    let mut digest = [0u8; 16];
    for (out, word) in digest.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&word.to_le_bytes());
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Unit tests run the lanes' thread on every CPU, unless the environment turns it off.
    fn lanes_on() -> bool {
        std::env::var_os(INLINE_ENV).is_none()
    }

    /// Adds `pieces` one after another as a body would, waiting whenever the stream is ahead.
    async fn feed(md5: &mut StreamMd5, pieces: impl Iterator<Item = &[u8]>) {
        for piece in pieces {
            md5.update(&Bytes::copy_from_slice(piece));
            md5.caught_up().await;
        }
    }

    async fn assert_digest(md5: StreamMd5, data: &[u8], stream: usize) {
        let digest = md5.finish().await.expect("digest");
        assert_eq!(digest, reference(data), "stream {stream}");
    }

    async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
        for task in tasks {
            task.await.expect("stream");
        }
    }

    fn reference(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    #[test]
    fn finalize_pads_like_md5_at_every_tail_length() {
        for len in 0..=3 * BLOCK {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let whole = len / BLOCK * BLOCK;
            let mut state = INITIAL;
            compress_blocks(&mut state, &data[..whole]);
            assert_eq!(
                finalize(state, &data[whole..], len as u64),
                reference(&data),
                "{len} bytes"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any split of any body into pieces, laned or inline, gives MD5 of the whole.
        #[test]
        fn pieces_give_the_md5_of_the_whole(
            data in proptest::collection::vec(any::<u8>(), 0..100_000),
            cuts in proptest::collection::vec(0usize..100_000, 0..12),
            laned in any::<bool>(),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let digest = runtime.block_on(async {
                let mut md5 = StreamMd5::new(if laned { None } else { Some(0) });
                assert_eq!(md5.is_laned(), laned && lanes_on());
                for pair in cuts.windows(2) {
                    md5.update(&Bytes::copy_from_slice(&data[pair[0]..pair[1]]));
                    md5.caught_up().await;
                }
                md5.finish().await.expect("digest")
            });
            prop_assert_eq!(digest, reference(&data));
        }
    }

    /// Many uploads hashing at once, more than there are lanes, each with its own pieces: every
    /// digest is its own body's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_streams_at_once_each_get_their_own_digest() {
        let mut tasks = Vec::new();
        for stream in 0..40usize {
            tasks.push(tokio::spawn(async move {
                let data: Vec<u8> = (0..(300_000 + stream * 4099))
                    .map(|i| (i * (stream + 1) + i / 1013) as u8)
                    .collect();
                let mut md5 = StreamMd5::new(Some(data.len() as u64));
                assert_eq!(md5.is_laned(), lanes_on());
                let mut at = 0;
                let mut piece = 1 + stream * 37;
                let pieces = std::iter::from_fn(|| {
                    let end = (at + piece).min(data.len());
                    let next = (at < end).then(|| &data[at..end]);
                    (at, piece) = (end, piece * 3 % 70_001 + 1);
                    next
                });
                feed(&mut md5, pieces).await;
                assert_digest(md5, &data, stream).await;
            }));
        }
        join(tasks).await;
    }

    /// Streams dropped part-way (requests that failed) leave the others' digests intact, and
    /// a stream that stays open without bytes does not keep the others from finishing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_and_idle_streams_leave_the_others_alone() {
        let idle = StreamMd5::new(None);
        assert_eq!(idle.is_laned(), lanes_on());
        let mut tasks = Vec::new();
        for stream in 0..12usize {
            tasks.push(tokio::spawn(async move {
                let data: Vec<u8> = (0..(1 << 20) + stream * 333)
                    .map(|i| (i * 3 + stream + i / 511) as u8)
                    .collect();
                let mut md5 = StreamMd5::new(None);
                if stream % 3 == 0 {
                    feed(&mut md5, data.chunks(10_007).take(40)).await;
                    return; // dropped with bytes queued
                }
                feed(&mut md5, data.chunks(10_007)).await;
                assert_digest(md5, &data, stream).await;
            }));
        }
        join(tasks).await;
        drop(idle);
    }
}
