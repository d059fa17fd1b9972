//! Admin commands a host sends over its admin queue: property access, the enable and shutdown
//! handshakes, Identify, Get Log Page, Set Features, Keep Alive.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::HostError;
use super::queue::{Completion, HostQueue};
use crate::spec::opcode::{self, admin, fctype};
use crate::spec::property;
use crate::wire::command::Sqe;

/// Runs `sqe` and fails unless it succeeded.
pub(crate) async fn run(
    queue: &HostQueue,
    what: &str,
    sqe: Sqe,
    data_out: Bytes,
    timeout: Duration,
) -> Result<Completion, HostError> {
    let done = queue.submit(sqe, data_out, timeout).await?;
    let status = done.cqe.status();
    if status.is_success() {
        Ok(done)
    } else {
        Err(HostError::Refused {
            what: what.to_string(),
            status,
            detail: done.cqe.result(),
        })
    }
}

/// Property Get of `offset` (8 bytes for CAP, else 4).
pub(crate) async fn property_get(
    queue: &HostQueue,
    offset: u32,
    timeout: Duration,
) -> Result<u64, HostError> {
    let mut sqe = Sqe::new(opcode::FABRICS, 0);
    sqe.put(4, &[fctype::PROPERTY_GET]);
    sqe.put(40, &[u8::from(offset == property::CAP)]);
    sqe.put(44, &offset.to_le_bytes());
    let done = run(queue, "Property Get", sqe, Bytes::new(), timeout).await?;
    Ok(done.cqe.result())
}

/// Property Set of a 4-byte property.
pub(crate) async fn property_set(
    queue: &HostQueue,
    offset: u32,
    value: u32,
    timeout: Duration,
) -> Result<(), HostError> {
    let mut sqe = Sqe::new(opcode::FABRICS, 0);
    sqe.put(4, &[fctype::PROPERTY_SET]);
    sqe.put(44, &offset.to_le_bytes());
    sqe.put(48, &u64::from(value).to_le_bytes());
    run(queue, "Property Set", sqe, Bytes::new(), timeout)
        .await
        .map(|_| ())
}

/// Enables the controller (CC.EN with all I/O command sets) and waits for CSTS.RDY within the
/// time CAP.TO allows; returns CAP.
pub(crate) async fn enable(queue: &HostQueue, timeout: Duration) -> Result<u64, HostError> {
    let cap = property_get(queue, property::CAP, timeout).await?;
    let ready_within = Duration::from_millis(500 * ((cap >> 24) & 0xFF).max(1));
    let cc = property::CC_CSS_ALL | property::CC_ENTRY_SIZES;
    property_set(queue, property::CC, cc, timeout).await?;
    property_set(queue, property::CC, cc | property::CC_EN, timeout).await?;
    let start = Instant::now();
    loop {
        let csts = property_get(queue, property::CSTS, timeout).await? as u32;
        if csts & property::CSTS_CFS != 0 {
            return Err(HostError::Protocol(
                "controller reports a fatal status while enabling".into(),
            ));
        }
        if csts & property::CSTS_RDY != 0 {
            return Ok(cap);
        }
        if start.elapsed() > ready_within {
            return Err(HostError::Timeout(
                "waiting for the controller to become ready".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Normal shutdown (CC.SHN) and wait for CSTS.SHST to report completion.
pub(crate) async fn shutdown(queue: &HostQueue, timeout: Duration) -> Result<(), HostError> {
    let cc = property_get(queue, property::CC, timeout).await? as u32;
    property_set(queue, property::CC, cc | (1 << 14), timeout).await?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let csts = property_get(queue, property::CSTS, timeout).await? as u32;
        if csts & property::CSTS_SHST_COMPLETE != 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(HostError::Timeout(
        "waiting for shutdown to complete".into(),
    ))
}

/// Identify with `cns`, `nsid` and `csi`; returns the 4096-byte structure.
pub(crate) async fn identify(
    queue: &HostQueue,
    cns: u8,
    nsid: u32,
    csi: u8,
    timeout: Duration,
) -> Result<Bytes, HostError> {
    let mut sqe = Sqe::new(admin::IDENTIFY, 0);
    sqe.set_nsid(nsid)
        .set_cdw(10, u32::from(cns))
        .set_cdw(11, u32::from(csi) << 24)
        .set_sgl(4096, false);
    let done = run(
        queue,
        &format!("Identify CNS {cns:#x}"),
        sqe,
        Bytes::new(),
        timeout,
    )
    .await?;
    if done.data.len() != 4096 {
        return Err(HostError::Protocol(format!(
            "Identify returned {} bytes",
            done.data.len()
        )));
    }
    Ok(done.data)
}

/// Get Log Page `lid` of `len` bytes from byte `offset`.
pub(crate) async fn get_log_page(
    queue: &HostQueue,
    lid: u8,
    len: usize,
    offset: u64,
    timeout: Duration,
) -> Result<Bytes, HostError> {
    let numd = (len / 4 - 1) as u32;
    let mut sqe = Sqe::new(admin::GET_LOG_PAGE, 0);
    sqe.set_cdw(10, u32::from(lid) | ((numd & 0xFFFF) << 16))
        .set_cdw(11, numd >> 16)
        .set_cdw(12, offset as u32)
        .set_cdw(13, (offset >> 32) as u32)
        .set_sgl(len as u32, false);
    let done = run(
        queue,
        &format!("Get Log Page {lid:#x}"),
        sqe,
        Bytes::new(),
        timeout,
    )
    .await?;
    Ok(done.data)
}

/// Set Features `fid` with `value` in CDW11; returns DW0 of the completion.
pub(crate) async fn set_features(
    queue: &HostQueue,
    fid: u8,
    value: u32,
    timeout: Duration,
) -> Result<u32, HostError> {
    let mut sqe = Sqe::new(admin::SET_FEATURES, 0);
    sqe.set_cdw(10, u32::from(fid)).set_cdw(11, value);
    let done = run(
        queue,
        &format!("Set Features {fid:#x}"),
        sqe,
        Bytes::new(),
        timeout,
    )
    .await?;
    Ok(done.cqe.dw0())
}

/// Keep Alive.
pub(crate) async fn keep_alive(queue: &HostQueue, timeout: Duration) -> Result<(), HostError> {
    let sqe = Sqe::new(admin::KEEP_ALIVE, 0);
    run(queue, "Keep Alive", sqe, Bytes::new(), timeout)
        .await
        .map(|_| ())
}
