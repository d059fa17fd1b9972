//! Admin and Fabrics commands of the target's controllers: Property Get/Set, Identify, Get Log
//! Page, Set/Get Features, Asynchronous Event Request, Keep Alive. Unsupported opcodes are
//! answered with Invalid Command Opcode.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::controller::HeldAer;
use super::queue::{QueueCtx, Reply};
use crate::spec::identify::{self, ControllerInfo, ControllerType, cns};
use crate::spec::logpage::{self, DiscoveryEntry, HealthCounters};
use crate::spec::opcode::{admin, csi, fctype, feature, log};
use crate::spec::{DISCOVERY_NQN, property};
use crate::wire::command::Sqe;
use crate::wire::status::Status;

/// Asynchronous Event Request Limit, 0's based (AERL in Identify Controller).
const AERL: usize = 3;
/// Error log entries (ELPE + 1).
const ERROR_LOG_ENTRIES: usize = 64;

/// Runs one admin-queue command.
pub(crate) async fn execute(ctx: &Arc<QueueCtx>, sqe: &Sqe, _data: Bytes) -> Reply {
    if sqe.opcode() == crate::spec::opcode::FABRICS {
        return fabrics(ctx, sqe).await;
    }
    if !ctx.controller.is_ready() {
        return Reply::error(Status::COMMAND_SEQUENCE_ERROR);
    }
    let discovery = ctx.subsystem().is_discovery();
    match sqe.opcode() {
        admin::IDENTIFY => identify(ctx, sqe),
        admin::GET_LOG_PAGE => get_log_page(ctx, sqe),
        admin::SET_FEATURES => set_features(ctx, sqe),
        admin::GET_FEATURES => get_features(ctx, sqe),
        admin::ASYNC_EVENT_REQUEST => hold_aer(ctx, sqe),
        admin::KEEP_ALIVE => {
            if ctx.controller.kato_ms() == 0 {
                Reply::error(Status::KEEP_ALIVE_INVALID)
            } else {
                Reply::ok()
            }
        }
        // Abort: nothing is ever aborted (DW0 bit 0 set: "not aborted").
        admin::ABORT if !discovery => Reply::result(1),
        _ => Reply::error(Status::INVALID_OPCODE),
    }
}

async fn fabrics(ctx: &Arc<QueueCtx>, sqe: &Sqe) -> Reply {
    let controller = &ctx.controller;
    let attrib_8_bytes = sqe.byte(40) & 0x7 == 1;
    let offset = sqe.u32_field(44);
    match sqe.fctype() {
        fctype::PROPERTY_GET => {
            let value = match (offset, attrib_8_bytes) {
                (property::CAP, true) => {
                    property::capabilities(ctx.target.config.max_queue_entries)
                }
                (property::VS, false) => u64::from(property::VERSION_1_4),
                (property::CC, false) => u64::from(controller.cc()),
                (property::CSTS, false) => u64::from(controller.csts()),
                _ => return Reply::error(Status::INVALID_FIELD),
            };
            Reply::result(value)
        }
        fctype::PROPERTY_SET => {
            if offset != property::CC || attrib_8_bytes {
                return Reply::error(Status::INVALID_FIELD);
            }
            controller
                .write_cc(sqe.u64_field(48) as u32, &ctx.target)
                .await;
            Reply::ok()
        }
        // Disconnect is optional (OFCS bit 0, clear here), and a queue is deleted by closing
        // its connection: Invalid Command Opcode, as the Linux target answers.
        _ => Reply::error(Status::INVALID_OPCODE),
    }
}

/// Pads or cuts `data` to the transfer length the host asked for.
fn fit(mut data: Vec<u8>, len: usize) -> Reply {
    data.resize(len, 0);
    Reply::data(Bytes::from(data))
}

/// Bytes every Identify data structure has.
const IDENTIFY_LEN: usize = 4096;

fn identify(ctx: &Arc<QueueCtx>, sqe: &Sqe) -> Reply {
    // Exactly one data structure, as the Linux target insists: a host cannot make a 64-byte
    // command cost megabytes of padding.
    let len = sqe.sgl_length() as usize;
    if len != IDENTIFY_LEN {
        return Reply::error(Status::SGL_LENGTH_INVALID);
    }
    let subsystem = ctx.subsystem();
    let cns_value = sqe.cdw(10) as u8;
    let csi_value = (sqe.cdw(11) >> 24) as u8;
    let nsid = sqe.nsid();
    let config = &ctx.target.config;
    if cns_value == cns::CONTROLLER {
        let io = !subsystem.is_discovery();
        let info = ControllerInfo {
            kind: if io {
                ControllerType::Io
            } else {
                ControllerType::Discovery
            },
            cntlid: ctx.controller.cntlid,
            serial: subsystem.serial.clone(),
            model: config.model.clone(),
            firmware: env!("CARGO_PKG_VERSION").to_string(),
            subnqn: subsystem.nqn.clone(),
            mdts: identify::pages_log2(u64::from(config.max_transfer)),
            maxcmd: config.max_queue_entries,
            ioccsz: (64 + config.in_capsule_data) / 16,
            kas: if io { 10 } else { 0 },
            nn: u32::from(io),
            // Namespace attribute notices (a namespace never changes, so none is due); no
            // discovery log change notices: the target does not send them, so a persistent
            // discovery host must not wait for them.
            oaes: supported_events(ctx),
        };
        return fit(identify::controller(&info), len);
    }
    let Some(device) = &subsystem.device else {
        return Reply::error(Status::INVALID_FIELD);
    };
    let geometry = device.geometry();
    let active = nsid == 1;
    match cns_value {
        cns::NAMESPACE => match nsid {
            1 => fit(
                identify::namespace(&geometry, geometry.total_blocks(), subsystem.nguid),
                len,
            ),
            // One namespace (NN = 1): any other NSID is not a valid one.
            _ => Reply::error(Status::INVALID_NAMESPACE),
        },
        cns::ACTIVE_NAMESPACES if nsid < 0xFFFF_FFFE => {
            fit(identify::active_namespaces(&[1], nsid), len)
        }
        cns::NS_DESCRIPTORS if active => fit(
            identify::ns_descriptors(subsystem.uuid, subsystem.nguid, csi::ZNS),
            len,
        ),
        cns::CSI_NAMESPACE if active && csi_value == csi::ZNS => {
            fit(identify::zns_namespace(&geometry), len)
        }
        cns::CSI_NAMESPACE if active && csi_value == csi::NVM => fit(Vec::new(), len),
        // The namespace exists; the command set asked about does not.
        cns::CSI_NAMESPACE if active => Reply::error(Status::INVALID_FIELD),
        cns::CSI_CONTROLLER if csi_value == csi::ZNS => fit(
            identify::zns_controller(identify::zasl_for(geometry.max_append_bytes())),
            len,
        ),
        cns::CSI_CONTROLLER if csi_value == csi::NVM => fit(Vec::new(), len),
        cns::COMMAND_SET => fit(identify::command_sets(), len),
        cns::ACTIVE_NAMESPACES | cns::NS_DESCRIPTORS | cns::CSI_NAMESPACE => {
            Reply::error(Status::INVALID_NAMESPACE)
        }
        _ => Reply::error(Status::INVALID_FIELD),
    }
}

fn get_log_page(ctx: &Arc<QueueCtx>, sqe: &Sqe) -> Reply {
    let lid = sqe.cdw(10) as u8;
    let numd = ((u64::from(sqe.cdw(11) & 0xFFFF) << 16) | u64::from(sqe.cdw(10) >> 16)) + 1;
    let len = (numd * 4) as usize;
    if len != sqe.sgl_length() as usize {
        return Reply::error(Status::SGL_LENGTH_INVALID);
    }
    let offset = u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32);
    if offset % 4 != 0 {
        return Reply::error(Status::INVALID_FIELD);
    }
    let subsystem = ctx.subsystem();
    let page = if subsystem.is_discovery() {
        match lid {
            log::DISCOVERY => discovery_log(ctx),
            _ => return Reply::error(Status::INVALID_LOG_PAGE),
        }
    } else {
        match lid {
            log::ERROR_INFORMATION => logpage::error_information(ERROR_LOG_ENTRIES),
            log::SMART_HEALTH => {
                let stats = ctx.target.stats.snapshot();
                logpage::smart_health(&HealthCounters {
                    bytes_read: stats.bytes_read,
                    bytes_written: stats.bytes_written,
                    read_commands: 0,
                    write_commands: 0,
                    media_errors: stats.media_errors,
                })
            }
            log::CHANGED_NAMESPACES => logpage::changed_namespaces(),
            log::COMMANDS_EFFECTS => match (sqe.cdw(14) >> 24) as u8 {
                c @ (csi::NVM | csi::ZNS) => logpage::commands_effects(c),
                _ => return Reply::error(Status::INVALID_LOG_PAGE),
            },
            _ => return Reply::error(Status::INVALID_LOG_PAGE),
        }
    };
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| page.get(o..)) else {
        return Reply::error(Status::INVALID_FIELD);
    };
    fit(rest.to_vec(), len)
}

/// The discovery log: this discovery subsystem, then every subsystem the host may connect to,
/// at the address the host reached us on.
fn discovery_log(ctx: &Arc<QueueCtx>) -> Vec<u8> {
    // An IPv4 host on a dual-stack listener is told the IPv4 address, not its mapped IPv6 form.
    let (traddr, adrfam) = match ctx.local.ip().to_canonical() {
        IpAddr::V4(ip) => (ip.to_string(), 1),
        IpAddr::V6(ip) => (ip.to_string(), 2),
    };
    let trsvcid = ctx.local.port().to_string();
    let entry = |subtype, nqn: &str| DiscoveryEntry {
        subtype,
        portid: 1,
        asqsz: 32,
        trsvcid: trsvcid.clone(),
        subnqn: nqn.to_string(),
        traddr: traddr.clone(),
        adrfam,
    };
    let host = &ctx.controller.hostnqn;
    let mut entries = vec![entry(logpage::subtype::CURRENT_DISCOVERY, DISCOVERY_NQN)];
    let mut nqns: Vec<String> = ctx
        .target
        .subsystems
        .read()
        .values()
        .filter(|s| !s.is_discovery() && s.allows(host))
        .map(|s| s.nqn.clone())
        .collect();
    nqns.sort();
    entries.extend(nqns.iter().map(|n| entry(logpage::subtype::NVM, n)));
    logpage::discovery(
        ctx.target.genctr.load(Ordering::SeqCst),
        &entries,
        ctx.target.config.sq_flow_control_disable,
    )
}

fn set_features(ctx: &Arc<QueueCtx>, sqe: &Sqe) -> Reply {
    let controller = &ctx.controller;
    if sqe.cdw(10) & (1 << 31) != 0 {
        return Reply::error(Status::FEATURE_NOT_SAVEABLE);
    }
    let value = sqe.cdw(11);
    match sqe.cdw(10) as u8 {
        feature::NUMBER_OF_QUEUES => {
            let (nsqr, ncqr) = (value & 0xFFFF, value >> 16);
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Reply::error(Status::INVALID_FIELD);
            }
            // Set before any I/O queue is created (NVMe Base §5.27.1.5): a grant below the
            // queues connected would not bind them. (Granted with the queues locked: a Connect
            // checks its QID against the grant under the same lock.)
            let queues = controller.io_queues.lock();
            if !queues.is_empty() {
                return Reply::error(Status::COMMAND_SEQUENCE_ERROR);
            }
            let max = u32::from(ctx.target.config.max_io_queues.saturating_sub(1));
            let granted = (ncqr.min(max) << 16) | nsqr.min(max);
            let previous = controller
                .queues_granted
                .compare_exchange(u32::MAX, granted, Ordering::SeqCst, Ordering::SeqCst)
                .unwrap_or_else(|current| current);
            drop(queues);
            let granted = if previous == u32::MAX {
                granted
            } else {
                previous
            };
            Reply::result(u64::from(granted))
        }
        feature::ASYNC_EVENT_CONFIG => {
            // SMART / health critical warnings (bits 7:0), and the notices the controller can
            // send (OAES): nothing else can be turned on.
            let value = value & (0xFF | supported_events(ctx));
            controller.aec.store(value, Ordering::Relaxed);
            Reply::result(u64::from(value))
        }
        feature::KEEP_ALIVE_TIMER => {
            controller.set_kato_ms(value);
            Reply::ok()
        }
        _ => Reply::error(Status::INVALID_FIELD),
    }
}

fn get_features(ctx: &Arc<QueueCtx>, sqe: &Sqe) -> Reply {
    let controller = &ctx.controller;
    let select = (sqe.cdw(10) >> 8) & 0x7;
    let fid = sqe.cdw(10) as u8;
    if select == 3 {
        // Supported capabilities: none saveable or namespace specific; changeable unless
        // fixed (the volatile write cache is always on).
        return match fid {
            feature::NUMBER_OF_QUEUES | feature::ASYNC_EVENT_CONFIG | feature::KEEP_ALIVE_TIMER => {
                Reply::result(1 << 2)
            }
            feature::VOLATILE_WRITE_CACHE => Reply::result(0),
            _ => Reply::error(Status::INVALID_FIELD),
        };
    }
    let value = match fid {
        feature::NUMBER_OF_QUEUES => match controller.queues_granted.load(Ordering::SeqCst) {
            u32::MAX => {
                let max = u32::from(ctx.target.config.max_io_queues.saturating_sub(1));
                (max << 16) | max
            }
            granted => granted,
        },
        feature::ASYNC_EVENT_CONFIG => controller.aec.load(Ordering::Relaxed),
        feature::KEEP_ALIVE_TIMER => controller.kato_ms(),
        feature::VOLATILE_WRITE_CACHE => 1,
        _ => return Reply::error(Status::INVALID_FIELD),
    };
    Reply::result(u64::from(value))
}

/// The asynchronous event notices the controller may send (its OAES): namespace attribute
/// notices on an I/O controller, none on a discovery controller.
fn supported_events(ctx: &Arc<QueueCtx>) -> u32 {
    if ctx.subsystem().is_discovery() {
        0
    } else {
        1 << 8
    }
}

fn hold_aer(ctx: &Arc<QueueCtx>, sqe: &Sqe) -> Reply {
    // As Identify Controller says: AERL is 0 (one request) on a discovery controller.
    let limit = if ctx.subsystem().is_discovery() {
        0
    } else {
        AERL
    };
    let mut aers = ctx.controller.aers.lock();
    if aers.len() > limit {
        return Reply::error(Status::AER_LIMIT_EXCEEDED);
    }
    aers.push(HeldAer {
        cid: sqe.cid(),
        queue: Arc::downgrade(ctx),
    });
    Reply::Held
}
