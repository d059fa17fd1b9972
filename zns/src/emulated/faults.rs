//! Fault injection for tests: fail the next N I/Os. Zone degradation (read-only, offline) and
//! power loss live on the drive itself because they change zone state.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{ZoneError, ZoneResult};

/// Counts down injected I/O failures.
#[derive(Debug, Default)]
pub struct FaultPlan {
    fail_next: AtomicU32,
}

impl FaultPlan {
    /// Makes the next `n` reads, writes, appends and flushes fail with a media error.
    pub fn fail_next_ios(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Consumes one injected failure if any is pending.
    pub fn check(&self, op: &str) -> ZoneResult<()> {
        let took = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match took {
            Ok(_) => Err(ZoneError::MediaError(format!("injected failure of {op}"))),
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_exactly_n_times() {
        let plan = FaultPlan::default();
        plan.fail_next_ios(2);
        assert!(plan.check("read").is_err());
        assert!(plan.check("read").is_err());
        assert!(plan.check("read").is_ok());
    }
}
