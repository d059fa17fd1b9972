//! Asking a discovery controller which subsystems an address serves (NVMe over Fabrics §5.3):
//! connect to the well-known discovery NQN, read the Discovery log page, disconnect.

use std::time::Duration;

use tokio::sync::watch;

use super::queue::{HostQueue, QueueParams};
use super::{HostError, TargetAddress, admin};
use crate::spec::DISCOVERY_NQN;
use crate::spec::connect::{CNTLID_DYNAMIC, Connect};
use crate::spec::logpage::{self, DiscoveryEntry};
use crate::spec::opcode::log;
use crate::wire::digest::Digests;

/// The subsystems a discovery controller at `address` lists for `hostnqn`.
pub async fn discover(
    address: impl Into<TargetAddress>,
    hostnqn: &str,
    timeout: Duration,
) -> Result<Vec<DiscoveryEntry>, HostError> {
    let (failed, _) = watch::channel(None);
    let address = address.into();
    let candidates = tokio::time::timeout(timeout, address.resolve())
        .await
        .map_err(|_| HostError::Timeout(format!("resolving {address}")))??;
    // 32 entries with SQ flow control on (cattr 0): full at 31 in flight.
    let params = |address| QueueParams {
        address,
        qid: 0,
        depth: 31,
        digests: Digests::NONE,
        connect_timeout: timeout,
        sq_flow_disabled: false,
    };
    let (_, queue) = HostQueue::open_first(&candidates, params, 8192, failed).await?;
    let connect = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 0,
        hostid: *b"zonestore-host\0\0",
        cntlid: CNTLID_DYNAMIC,
        subnqn: DISCOVERY_NQN.to_string(),
        hostnqn: hostnqn.to_string(),
    };
    queue.connect(&connect, timeout).await?;
    admin::enable(&queue, timeout).await?;
    let entries =
        consistent_log(|len| admin::get_log_page(&queue, log::DISCOVERY, len, 0, timeout)).await;
    let _ = admin::shutdown(&queue, timeout).await;
    queue.fail("discovery done".into());
    entries
}

/// Times the Discovery log is read again when it changes while it is read.
const LOG_READS: usize = 8;

/// Most records read of a Discovery log.
const MOST_RECORDS: usize = 1024;

/// The entries of the Discovery log `read` gives (`read(len)`: its first `len` bytes): its
/// header, for how many records there are, then the whole page; read again if the log changed
/// in between (its generation counter moved, or it grew), as the specification asks of hosts.
async fn consistent_log<F, Fut>(mut read: F) -> Result<Vec<DiscoveryEntry>, HostError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<bytes::Bytes, HostError>>,
{
    let short = || HostError::Protocol("short discovery log page".into());
    for _ in 0..LOG_READS {
        let header = read(1024).await?;
        let (genctr, _) = logpage::parse_discovery(&header).ok_or_else(short)?;
        let records = logpage::discovery_record_count(&header)
            .unwrap_or(0)
            .min(MOST_RECORDS as u64) as usize;
        let page = read(1024 * (1 + records)).await?;
        let (page_genctr, entries) = logpage::parse_discovery(&page).ok_or_else(short)?;
        let page_records = logpage::discovery_record_count(&page).unwrap_or(0);
        // (A log of more records than are ever read is taken as far as it goes.)
        if page_genctr == genctr && (page_records <= records as u64 || records == MOST_RECORDS) {
            return Ok(entries);
        }
    }
    Err(HostError::Protocol(format!(
        "the discovery log changed each of the {LOG_READS} times it was read"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn entry(nqn: &str) -> DiscoveryEntry {
        DiscoveryEntry {
            subtype: 2,
            portid: 1,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: nqn.into(),
            traddr: "127.0.0.1".into(),
            adrfam: 1,
        }
    }

    /// A log that changes between its header and its page (a subsystem added) is read again,
    /// not taken with the new subsystem cut off or the old count.
    #[tokio::test]
    async fn a_log_that_changes_while_read_is_read_again() {
        let before = logpage::discovery(1, &[entry("nqn.a")], false);
        let after = logpage::discovery(2, &[entry("nqn.a"), entry("nqn.b")], false);
        let reads = Mutex::new(0);
        let entries = consistent_log(|len| {
            let mut n = reads.lock().unwrap();
            *n += 1;
            // The first header is of the log before; everything after, of the log after.
            let log = if *n == 1 { &before } else { &after };
            let bytes = bytes::Bytes::copy_from_slice(&log[..len.min(log.len())]);
            async move { Ok(bytes) }
        })
        .await
        .unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(*reads.lock().unwrap(), 4, "read again once");
    }
}
