//! I/O commands of the Zoned Namespace: Read, Write, Write Zeroes, Flush, Zone Append, Zone
//! Management Send and Receive, executed on the subsystem's [`zns::ZonedDevice`]. Every zone
//! error the drive reports travels as its NVMe status code.

use std::sync::Arc;

use bytes::Bytes;
use zns::{ReportFilter, WriteHint, ZoneAction, ZoneError, ZoneSelect, ZonedDevice};

use super::queue::{QueueCtx, Reply};
use crate::spec::opcode::io;
use crate::spec::zns as report;
use crate::wire::command::Sqe;
use crate::wire::status::Status;

/// The one namespace ID a subsystem exports.
const NSID: u32 = 1;

/// Force Unit Access (CDW12 bit 30 of Write, Write Zeroes and Zone Append): the data must be
/// on stable media before the command completes. With a volatile write cache (which the
/// controller reports), hosts rely on it for journal commits instead of sending a Flush.
const FUA: u32 = 1 << 30;

/// The reply to a write that succeeded with `reply`, once its data is durable when the
/// command asked for Force Unit Access.
async fn after_write(device: &Arc<dyn ZonedDevice>, sqe: &Sqe, reply: Reply) -> Reply {
    if sqe.cdw(12) & FUA == 0 {
        return reply;
    }
    match device.flush().await {
        Ok(()) => reply,
        Err(e) => failed(e, sqe),
    }
}

/// The reply to `sqe` that failed with `error`: a media error as the spec names it for the
/// command (a read's data cannot be recovered; a write did not reach the media), which the
/// Linux host reports as a medium error rather than a generic I/O error.
fn failed(error: ZoneError, sqe: &Sqe) -> Reply {
    use crate::spec::opcode::io;
    let status = match (error.kind(), sqe.opcode()) {
        (zns::ZoneErrorKind::MediaError, io::READ) => Status::UNRECOVERED_READ_ERROR,
        (zns::ZoneErrorKind::MediaError, io::WRITE | io::WRITE_ZEROES | io::ZONE_APPEND) => {
            Status::WRITE_FAULT
        }
        _ => Status::from_zone_error(&error),
    };
    tracing::debug!("command failed: {error} ({status})");
    Reply::error(status)
}

/// The status a Write or Zone Append must fail with before the target asks for its data
/// with an R2T (as the Linux target parses a command before it moves data): a controller
/// that is not ready, a namespace that is not there, or a transfer that is not the blocks the
/// command names. `None` when its data is worth receiving.
pub(crate) fn refused_before_data(ctx: &QueueCtx, sqe: &Sqe) -> Option<Status> {
    let device = match ready_device(ctx) {
        Ok(device) => device,
        Err(status) => return Some(status),
    };
    if sqe.nsid() != NSID {
        return Some(Status::INVALID_NAMESPACE);
    }
    let bytes = command_bytes(sqe, &device);
    transfer_status(bytes, ctx, u64::from(sqe.sgl_length()))
}

/// The drive behind a controller that is ready for I/O commands.
fn ready_device(ctx: &QueueCtx) -> Result<Arc<dyn ZonedDevice>, Status> {
    if !ctx.controller.is_ready() {
        return Err(Status::COMMAND_SEQUENCE_ERROR);
    }
    ctx.subsystem().device.clone().ok_or(Status::INVALID_OPCODE)
}

/// The bytes of the blocks a Read, Write or Zone Append names (NLB in CDW12, 0's based).
fn command_bytes(sqe: &Sqe, device: &Arc<dyn ZonedDevice>) -> u64 {
    let nlb = (sqe.cdw(12) & 0xFFFF) + 1;
    u64::from(nlb) * u64::from(device.geometry().block_size)
}

/// Why a transfer of `len` bytes cannot carry a command naming `bytes`: larger than the
/// target moves at once, or not the same length.
fn transfer_status(bytes: u64, ctx: &QueueCtx, len: u64) -> Option<Status> {
    if bytes > u64::from(ctx.target.config.max_transfer) {
        Some(Status::INVALID_FIELD)
    } else if len != bytes {
        Some(Status::SGL_LENGTH_INVALID)
    } else {
        None
    }
}

/// Runs one I/O-queue command.
pub(crate) async fn execute(ctx: &Arc<QueueCtx>, sqe: &Sqe, data: Bytes) -> Reply {
    let _running = ctx.controller.io_begun();
    let device = match ready_device(ctx) {
        Ok(device) => device,
        Err(status) => return Reply::error(status),
    };
    if sqe.opcode() == crate::spec::opcode::FABRICS {
        // Only Connect (handled before any queue runs commands) belongs on an I/O queue: the
        // rest (Property Get/Set) go to the admin queue, and Disconnect is optional (OFCS bit
        // 0, clear here: a queue is deleted by closing its connection), Invalid Command Opcode
        // as the Linux target answers. (FCTYPE sits where an NSID would.)
        return Reply::error(Status::INVALID_OPCODE);
    }
    let nsid = sqe.nsid();
    let flush_all = sqe.opcode() == io::FLUSH && nsid == 0xFFFF_FFFF;
    if nsid != NSID && !flush_all {
        return Reply::error(Status::INVALID_NAMESPACE);
    }
    // Commands that move no data, described with some: refused before they run (as the
    // Linux target does), not run with the data ignored.
    if matches!(
        sqe.opcode(),
        io::FLUSH | io::WRITE_ZEROES | io::ZONE_MGMT_SEND
    ) && sqe.sgl_length() != 0
    {
        return Reply::error(Status::SGL_LENGTH_INVALID);
    }
    let slba = sqe.slba();
    let nlb = (sqe.cdw(12) & 0xFFFF) + 1;
    let bytes = command_bytes(sqe, &device);
    let max_transfer = u64::from(ctx.target.config.max_transfer);
    let transfer_ok = |len: u64| match transfer_status(bytes, ctx, len) {
        Some(status) => Err(Reply::error(status)),
        None => Ok(()),
    };
    match sqe.opcode() {
        io::READ => {
            if let Err(reply) = transfer_ok(u64::from(sqe.sgl_length())) {
                return reply;
            }
            match device.read(slba, nlb).await {
                Ok(data) if data.len() as u64 == bytes => Reply::data(data),
                Ok(data) => {
                    // A drive answering with the wrong length must not become a C2HData the
                    // host cannot accept.
                    tracing::error!(
                        slba,
                        nlb,
                        got = data.len(),
                        "the drive returned the wrong amount of data for a read"
                    );
                    Reply::error(Status::INTERNAL_ERROR)
                }
                Err(e) => failed(e, sqe),
            }
        }
        io::WRITE => {
            if let Err(reply) = transfer_ok(data.len() as u64) {
                return reply;
            }
            match device.write(slba, data).await {
                Ok(()) => after_write(&device, sqe, Reply::ok()).await,
                Err(e) => failed(e, sqe),
            }
        }
        io::ZONE_APPEND => {
            if let Err(reply) = transfer_ok(data.len() as u64) {
                return reply;
            }
            let hint = WriteHint::from_dsm(sqe.cdw(13) as u8);
            match device.append_hinted(slba, data, hint).await {
                Ok(lba) => after_write(&device, sqe, Reply::result(lba)).await,
                Err(e) => failed(e, sqe),
            }
        }
        io::WRITE_ZEROES => match device.write_zeroes(slba, nlb).await {
            Ok(()) => after_write(&device, sqe, Reply::ok()).await,
            Err(e) => failed(e, sqe),
        },
        io::FLUSH => match device.flush().await {
            Ok(()) => Reply::ok(),
            Err(e) => failed(e, sqe),
        },
        io::ZONE_MGMT_SEND => {
            let cdw13 = sqe.cdw(13);
            let Some(action) = ZoneAction::from_code(cdw13 as u8) else {
                return Reply::error(Status::INVALID_FIELD);
            };
            let select = if cdw13 & (1 << 8) != 0 {
                ZoneSelect::All
            } else {
                ZoneSelect::Zone(slba)
            };
            match device.manage_zones(action, select).await {
                Ok(()) => Reply::ok(),
                Err(e) => failed(e, sqe),
            }
        }
        io::ZONE_MGMT_RECV => {
            let len = (u64::from(sqe.cdw(12)) + 1) * 4;
            if len != u64::from(sqe.sgl_length()) {
                return Reply::error(Status::SGL_LENGTH_INVALID);
            }
            if len < report::ENTRY_LEN as u64 || len > max_transfer {
                return Reply::error(Status::INVALID_FIELD);
            }
            let cdw13 = sqe.cdw(13);
            if cdw13 as u8 != report::zra::REPORT_ZONES {
                return Reply::error(Status::INVALID_FIELD);
            }
            let Some(filter) = ReportFilter::from_code((cdw13 >> 8) as u8) else {
                return Reply::error(Status::INVALID_FIELD);
            };
            let partial = cdw13 & (1 << 16) != 0;
            let len = len as usize;
            match device
                .report_zones(slba, filter, report::capacity(len))
                .await
            {
                Ok(zones) => Reply::data(Bytes::from(report::encode_report(&zones, partial, len))),
                Err(e) => failed(e, sqe),
            }
        }
        _ => Reply::error(Status::INVALID_OPCODE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use zns::{EmulatedZns, Geometry};

    /// A write asking for Force Unit Access completes only after a flush; others do not wait
    /// for one.
    #[tokio::test]
    async fn a_write_with_fua_is_flushed_before_it_completes() {
        let dir = tempfile::tempdir().unwrap();
        let inner = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        let drive = zns::testing::Intercepted::new(Arc::new(inner));
        let flushes = drive.flushes.clone();
        let device: Arc<dyn ZonedDevice> = Arc::new(drive);
        let mut sqe = Sqe::new(io::WRITE, 1);
        sqe.set_cdw(12, 7);
        assert!(matches!(
            after_write(&device, &sqe, Reply::ok()).await,
            Reply::Done { status, .. } if status == Status::SUCCESS
        ));
        assert_eq!(flushes.load(Ordering::Relaxed), 0);
        sqe.set_cdw(12, FUA | 7);
        let reply = after_write(&device, &sqe, Reply::result(42)).await;
        assert!(matches!(
            reply,
            Reply::Done { status, result: 42, .. } if status == Status::SUCCESS
        ));
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
    }
}
