//! A drive's writer thread: writes to the data file go through a queue served by a dedicated
//! thread, so that many appends in flight cost one hand-off per batch rather than a trip through
//! the general blocking pool each. The thread takes whatever is queued, and writes runs of
//! adjacent writes (appends to one zone) with one `pwritev`. (Buffered writes to one file
//! serialise on the inode lock anyway; more threads would only contend.)

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
    pub(crate) fn start(file: Arc<File>, threads: usize, name: &str) -> std::io::Result<Writers> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let file = file.clone();
            std::thread::Builder::new()
                .name(format!("{name}-w{i}"))
                .spawn(move || {
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
                        write_batch(&file, &mut batch);
                    }
                })?;
        }
        Ok(Writers { jobs })
    }

    /// Writes `data` at byte `offset` of the file.
    pub(crate) async fn write(&self, data: Bytes, offset: u64) -> std::io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { data, offset, done })
            .map_err(|_| std::io::Error::other("the drive's writer threads have stopped"))?;
        wait.await
            .map_err(|_| std::io::Error::other("a writer thread stopped mid-write"))?
    }
}

/// Most writes taken off the queue at once.
const MAX_BATCH: usize = 64;
/// Most buffers in one `pwritev` (well under IOV_MAX).
const MAX_IOVECS: usize = 64;

/// Writes every job of `batch`, merging runs of adjacent ones, and completes them.
fn write_batch(file: &File, batch: &mut Vec<Job>) {
    batch.sort_by_key(|j| j.offset);
    // Each run is drained from the front, so the next run always starts at 0.
    let start = 0;
    while start < batch.len() {
        let mut end = start + 1;
        let mut next = batch[start].offset + batch[start].data.len() as u64;
        while end < batch.len() && end - start < MAX_IOVECS && batch[end].offset == next {
            next += batch[end].data.len() as u64;
            end += 1;
        }
        let result = write_run(file, &batch[start..end]);
        for job in batch.drain(start..end) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = job.done.send(outcome);
        }
    }
}

/// Writes adjacent jobs with one `pwritev`, finishing any short write job by job.
fn write_run(file: &File, run: &[Job]) -> std::io::Result<()> {
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
    let total: usize = run.iter().map(|j| j.data.len()).sum();
    // SAFETY: every iovec points into a job's buffer, alive for the call; the fd is open.
    let written = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            iovecs.as_ptr(),
            iovecs.len() as libc::c_int,
            run[0].offset as libc::off_t,
        )
    };
    if written < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut written = written as usize;
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
