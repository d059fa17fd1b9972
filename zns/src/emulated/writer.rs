//! A drive's writer thread: writes to the data file go through a queue served by a dedicated
//! thread, so that many appends in flight cost one hand-off per batch rather than a trip through
//! the general blocking pool each. The thread takes whatever is queued, and writes runs of
//! adjacent writes (appends to one zone) with one `pwritev`. (Buffered writes to one file
//! serialise on the inode lock anyway; more threads would only contend.)
//!
//! Writes marked direct (data not expected to be read soon, or a drive set to write everything
//! so) whose offset and length are multiples of [`DIRECT_ALIGN`] go through a second file
//! descriptor opened with `O_DIRECT`, as a real drive takes data by DMA:
//! the bytes are copied once into a reused, aligned buffer and handed to the disk instead of
//! into page-cache pages, so that written data does not fill the page cache (with R copies on
//! one machine, R - 1 of them are never read) and costs no page allocation; data enters the
//! cache when it is read. Where the file system refuses `O_DIRECT`, or a write is not aligned,
//! the write is buffered; the kernel keeps the page cache coherent with direct writes, so reads
//! see either.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

struct Job {
    data: Bytes,
    offset: u64,
    /// Whether to bypass the page cache if the file system allows.
    direct: bool,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Hands writes to the drive's writer threads.
#[derive(Debug)]
pub(crate) struct Writers {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("offset", &self.offset).finish()
    }
}

impl Writers {
    /// Starts `threads` writer threads for `file`. They end when the `Writers` is dropped.
    /// `direct`, if given, is the same file opened with `O_DIRECT`, for writes marked direct.
    pub(crate) fn start(
        file: Arc<File>,
        direct: Option<Arc<File>>,
        threads: usize,
        name: &str,
    ) -> std::io::Result<Writers> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let file = file.clone();
            let direct = direct.clone();
            std::thread::Builder::new()
                .name(format!("{name}-w{i}"))
                .spawn(move || {
                    let mut target = Target {
                        file,
                        direct: direct.map(|file| DirectWriter {
                            file,
                            bounce: Vec::new(),
                        }),
                    };
                    let mut batch = Vec::with_capacity(MAX_BATCH);
                    loop {
                        {
                            let Ok(rx) = rx.lock() else { return };
                            match rx.recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => return,
                            }
                            while batch.len() < MAX_BATCH {
                                match rx.try_recv() {
                                    Ok(job) => batch.push(job),
                                    Err(_) => break,
                                }
                            }
                        }
                        write_batch(&mut target, &mut batch);
                    }
                })?;
        }
        Ok(Writers { jobs })
    }

    /// Hands `data` for byte `offset` of the file to the writer threads, to be written
    /// bypassing the page cache if `direct` (and the write is aligned and the file system
    /// allows): it is written whether or not the returned receiver is awaited, which tells how
    /// it ended.
    pub(crate) fn submit(
        &self,
        data: Bytes,
        offset: u64,
        direct: bool,
    ) -> std::io::Result<oneshot::Receiver<std::io::Result<()>>> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job {
                data,
                offset,
                direct,
                done,
            })
            .map_err(|_| std::io::Error::other("the drive's writer threads have stopped"))?;
        Ok(wait)
    }
}

/// Most writes taken off the queue at once.
const MAX_BATCH: usize = 64;
/// Most buffers in one `pwritev` (well under IOV_MAX).
const MAX_IOVECS: usize = 64;

/// Alignment (of file offset, length and memory) that `O_DIRECT` writes keep: the largest
/// logical block size of the disks under the file.
pub(crate) const DIRECT_ALIGN: usize = 4096;
/// Most bytes one direct `pwrite` carries (the size of the bounce buffer).
const DIRECT_CHUNK: usize = 2 << 20;

/// Where a writer thread writes: the file, and the file opened with `O_DIRECT` while the file
/// system accepts it (for writes marked direct).
struct Target {
    file: Arc<File>,
    direct: Option<DirectWriter>,
}

/// Direct writes through an aligned buffer the thread keeps.
struct DirectWriter {
    file: Arc<File>,
    bounce: Vec<u8>,
}

impl DirectWriter {
    /// Writes `run` (adjacent, starting at an aligned offset, of an aligned total length) in
    /// chunks copied into the bounce buffer.
    fn write(&mut self, run: &[Job]) -> std::io::Result<()> {
        if self.bounce.is_empty() {
            self.bounce = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
        }
        let pad = self.bounce.as_ptr().align_offset(DIRECT_ALIGN);
        if pad > DIRECT_ALIGN {
            // No aligned window in this buffer: let the caller write buffered.
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let window = &mut self.bounce[pad..pad + DIRECT_CHUNK];
        let mut offset = run[0].offset;
        let mut parts = run.iter().map(|j| &j.data[..]);
        let mut part: &[u8] = &[];
        loop {
            let mut filled = 0;
            while filled < DIRECT_CHUNK {
                if part.is_empty() {
                    match parts.next() {
                        Some(next) => part = next,
                        None => break,
                    }
                }
                let n = part.len().min(DIRECT_CHUNK - filled);
                window[filled..filled + n].copy_from_slice(&part[..n]);
                part = &part[n..];
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            self.file.write_all_at(&window[..filled], offset)?;
            offset += filled as u64;
        }
    }
}

/// Writes every job of `batch`, merging runs of adjacent ones, and completes them.
fn write_batch(target: &mut Target, batch: &mut Vec<Job>) {
    batch.sort_by_key(|j| j.offset);
    // Each run is drained from the front, so the next run always starts at 0.
    let start = 0;
    while start < batch.len() {
        let mut end = start + 1;
        let mut next = batch[start].offset + batch[start].data.len() as u64;
        while end < batch.len()
            && end - start < MAX_IOVECS
            && batch[end].offset == next
            && batch[end].direct == batch[start].direct
        {
            next += batch[end].data.len() as u64;
            end += 1;
        }
        let result = write_run(target, &batch[start..end]);
        for job in batch.drain(start..end) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = job.done.send(outcome);
        }
    }
}

/// Writes adjacent jobs: directly if they are aligned and the file system allows, otherwise
/// with one buffered `pwritev`.
fn write_run(target: &mut Target, run: &[Job]) -> std::io::Result<()> {
    let total: usize = run.iter().map(|j| j.data.len()).sum();
    let aligned =
        run[0].offset.is_multiple_of(DIRECT_ALIGN as u64) && total.is_multiple_of(DIRECT_ALIGN);
    if aligned
        && run[0].direct
        && let Some(direct) = &mut target.direct
    {
        match direct.write(run) {
            Ok(()) => return Ok(()),
            // The file system takes no direct I/O (or not at this alignment): stop trying.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!("direct writes refused ({e}); writing through the page cache");
                target.direct = None;
            }
            Err(e) => return Err(e),
        }
    }
    write_buffered(&target.file, run, total)
}

/// Writes adjacent jobs with one `pwritev`, finishing any short write job by job.
fn write_buffered(file: &File, run: &[Job], total: usize) -> std::io::Result<()> {
    if run.len() == 1 {
        return file.write_all_at(&run[0].data, run[0].offset);
    }
    let iovecs: Vec<libc::iovec> = run
        .iter()
        .map(|j| libc::iovec {
            iov_base: j.data.as_ptr() as *mut libc::c_void,
            iov_len: j.data.len(),
        })
        .collect();
    // SAFETY: every iovec points into a job's buffer, alive for the call; the fd is open.
    let written = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            iovecs.as_ptr(),
            iovecs.len() as libc::c_int,
            run[0].offset as libc::off_t,
        )
    };
    // Interrupted before writing anything (a signal): nothing was written, and the job-by-job
    // path below writes it all (retrying interruptions itself).
    let written = if written < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
        0
    } else {
        written as usize
    };
    let mut written = written;
    if written == total {
        return Ok(());
    }
    // Short write: complete the rest job by job.
    for job in run {
        let len = job.data.len();
        if written >= len {
            written -= len;
            continue;
        }
        file.write_all_at(&job.data[written..], job.offset + written as u64)?;
        written = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// Jobs of odd sizes (multiples of 512) totalling an aligned length over twice the bounce
    /// buffer, so that parts straddle chunk boundaries; returns them and the bytes they carry.
    fn jobs(
        start: u64,
    ) -> (
        Vec<Job>,
        Vec<u8>,
        Vec<oneshot::Receiver<std::io::Result<()>>>,
    ) {
        let mut jobs = Vec::new();
        let mut bytes = Vec::new();
        let mut waits = Vec::new();
        let mut offset = start;
        let mut i = 0usize;
        while bytes.len() < 2 * DIRECT_CHUNK + DIRECT_ALIGN || bytes.len() % DIRECT_ALIGN != 0 {
            let len = 512 * (1 + (i * 37) % 300);
            let data: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8)).collect();
            bytes.extend_from_slice(&data);
            let (done, wait) = oneshot::channel();
            jobs.push(Job {
                data: Bytes::from(data),
                offset,
                direct: true,
                done,
            });
            waits.push(wait);
            offset += len as u64;
            i += 1;
        }
        (jobs, bytes, waits)
    }

    #[test]
    fn runs_longer_than_the_bounce_buffer_land_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        file.set_len(64 << 20).unwrap();
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok()
            .map(|file| DirectWriter {
                file: Arc::new(file),
                bounce: Vec::new(),
            });
        let mut target = Target {
            file: file.clone(),
            direct,
        };
        let start = 3 * DIRECT_ALIGN as u64;
        let (mut batch, bytes, waits) = jobs(start);
        // Out of order, as the queue may hand them over.
        batch.reverse();
        write_batch(&mut target, &mut batch);
        for wait in waits {
            wait.blocking_recv().unwrap().unwrap();
        }
        let mut back = vec![0u8; bytes.len() + 2 * DIRECT_ALIGN];
        file.read_exact_at(&mut back, start - DIRECT_ALIGN as u64)
            .unwrap();
        assert!(
            back[..DIRECT_ALIGN].iter().all(|&b| b == 0),
            "nothing before the run"
        );
        assert!(
            back[DIRECT_ALIGN..DIRECT_ALIGN + bytes.len()] == bytes[..],
            "the run, exactly"
        );
        assert!(
            back[DIRECT_ALIGN + bytes.len()..].iter().all(|&b| b == 0),
            "nothing after"
        );
    }
}
