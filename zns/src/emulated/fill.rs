//! Filling a read's buffer from the data file. The buffer is not zeroed before the reads land
//! in it: a large zeroed allocation costs the allocator an `madvise` to clear recycled memory
//! and the kernel a page fault and a page clearing on every 4 KiB the read then copies over
//! anyway (a tenth of the CPU a 64 MiB GET took through the fabric). Only the parts of the
//! buffer no segment covers (blocks never written) are set to zero.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use bytes::Bytes;

/// A part of a read: `len` bytes at `file_offset` in the data file go to `buffer_offset`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment {
    /// Where the bytes are in the data file.
    pub file_offset: u64,
    /// Where they go in the buffer.
    pub buffer_offset: usize,
    /// How many.
    pub len: usize,
}

/// How a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Only bytes the page cache holds (`preadv2(RWF_NOWAIT)`): gives up where a read would
    /// block, or where the kernel cannot tell.
    CachedOnly,
    /// Whatever it takes (on a thread that may block).
    Block,
}

/// A buffer of `len` bytes holding `segments` of `file` (in ascending buffer order, not
/// overlapping, within `len`) and zeros elsewhere; `None` when `wait` is
/// [`Wait::CachedOnly`] and some bytes are not in the page cache.
pub(super) fn fill(
    file: &File,
    len: usize,
    segments: &[Segment],
    wait: Wait,
) -> std::io::Result<Option<Bytes>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let spare = &mut buf.spare_capacity_mut()[..len];
    let mut next = 0usize;
    for s in segments {
        let end = s.buffer_offset + s.len;
        if s.buffer_offset < next || end > len {
            return Err(std::io::Error::other(format!(
                "read segment {}..{end} out of order or beyond {len} bytes",
                s.buffer_offset
            )));
        }
        spare[next..s.buffer_offset].fill(MaybeUninit::new(0));
        if !read_into(file, &mut spare[s.buffer_offset..end], s.file_offset, wait)? {
            return Ok(None);
        }
        next = end;
    }
    spare[next..].fill(MaybeUninit::new(0));
    // SAFETY: every byte of 0..len was written above: the segments by reads that filled them
    // wholly (or the function returned), the gaps between and after them with zeros.
    unsafe { buf.set_len(len) };
    Ok(Some(Bytes::from(buf)))
}

/// Reads all of `dst` from `file` at `offset`: `Ok(false)` when `wait` is
/// [`Wait::CachedOnly`] and the read would block; an error at the end of the file.
fn read_into(
    file: &File,
    dst: &mut [MaybeUninit<u8>],
    offset: u64,
    wait: Wait,
) -> std::io::Result<bool> {
    let mut done = 0usize;
    while done < dst.len() {
        let rest = &mut dst[done..];
        let at = (offset + done as u64) as libc::off_t;
        // SAFETY: the pointer and length describe `rest`, writable memory that outlives the
        // call (the kernel only writes into it); the descriptor is open.
        let n = unsafe {
            match wait {
                Wait::CachedOnly => {
                    let iov = libc::iovec {
                        iov_base: rest.as_mut_ptr().cast(),
                        iov_len: rest.len(),
                    };
                    libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT)
                }
                Wait::Block => {
                    libc::pread(file.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at)
                }
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match (wait, e.raw_os_error()) {
                (_, Some(libc::EINTR)) => continue,
                (
                    Wait::CachedOnly,
                    Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS),
                ) => Ok(false),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n as usize;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn data_file(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, File::open(&path).unwrap())
    }

    #[test]
    fn segments_are_read_and_the_rest_is_zero() {
        let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
        let (_dir, file) = data_file(&content);
        let segments = [
            Segment {
                file_offset: 100,
                buffer_offset: 10,
                len: 50,
            },
            Segment {
                file_offset: 4000,
                buffer_offset: 60,
                len: 3000,
            },
        ];
        for wait in [Wait::Block, Wait::CachedOnly] {
            // (The file was just written: its pages are cached.)
            let got = fill(&file, 4000, &segments, wait).unwrap().unwrap();
            let mut want = vec![0u8; 4000];
            want[10..60].copy_from_slice(&content[100..150]);
            want[60..3060].copy_from_slice(&content[4000..7000]);
            assert_eq!(&got[..], &want[..], "{wait:?}");
        }
        let none = fill(&file, 512, &[], Wait::Block).unwrap().unwrap();
        assert_eq!(&none[..], &[0u8; 512][..]);
    }

    #[test]
    fn a_read_past_the_end_or_a_bad_segment_is_an_error() {
        let (_dir, file) = data_file(&[1u8; 100]);
        let past_end = Segment {
            file_offset: 50,
            buffer_offset: 0,
            len: 100,
        };
        assert!(fill(&file, 100, &[past_end], Wait::Block).is_err());
        let beyond = Segment {
            file_offset: 0,
            buffer_offset: 50,
            len: 60,
        };
        assert!(fill(&file, 100, &[beyond], Wait::Block).is_err());
    }
}
