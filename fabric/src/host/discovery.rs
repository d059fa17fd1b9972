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
    let header = admin::get_log_page(&queue, log::DISCOVERY, 1024, 0, timeout).await?;
    let records = logpage::discovery_record_count(&header)
        .unwrap_or(0)
        .min(1024) as usize;
    let page =
        admin::get_log_page(&queue, log::DISCOVERY, 1024 * (1 + records), 0, timeout).await?;
    let (_, entries) = logpage::parse_discovery(&page)
        .ok_or_else(|| HostError::Protocol("short discovery log page".into()))?;
    let _ = admin::shutdown(&queue, timeout).await;
    queue.fail("discovery done".into());
    Ok(entries)
}
