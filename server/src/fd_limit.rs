//! The process's file descriptors: the soft limit is raised to the hard one at start (it is
//! often 1024), and shared out, so that clients opening connections cannot take the
//! descriptors the index and the drives' connections need.

/// The soft and hard limits on open files, if they can be read.
fn limits() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives for the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// The soft limit on open files now (1024 if it cannot be read).
pub fn current() -> u64 {
    limits().map_or(1024, |l| l.rlim_cur)
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit in effect.
pub fn raise() -> u64 {
    if let Some(limit) = limits().filter(|l| l.rlim_cur < l.rlim_max) {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "could not raise the open files limit"
            );
        }
    }
    current()
}

/// Most HTTP connections one listener serves at once: a quarter of the descriptors (the S3
/// and admin listeners, the index and the fabric share them), at least 64, at most 4096.
pub fn connection_cap() -> usize {
    usize::try_from(current() / 4)
        .unwrap_or(usize::MAX)
        .clamp(64, 4096)
}

/// Most table files the index keeps open: a quarter of the descriptors, at least 256, at
/// most 8192.
pub fn index_open_files() -> i32 {
    i32::try_from(current() / 4)
        .unwrap_or(i32::MAX)
        .clamp(256, 8192)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_the_hard_one_and_shared_out() {
        let soft = raise();
        assert!(soft >= 64);
        assert_eq!(soft, current());
        assert!((64..=4096).contains(&connection_cap()));
        assert!((256..=8192).contains(&index_open_files()));
    }
}
