//! NVMe completion status (NVMe Base Specification 2.0, §4.6.1 "Status Field Definition";
//! ZNS Command Set 1.1, §3.3 "Command Specific Status Values"), and the one place where zone
//! errors and NVMe status codes map onto each other, in both directions.
//!
//! Status field, CQE bytes 14..16: bit 0 phase (0 on fabrics), 8:1 SC, 11:9 SCT, 13:12 CRD,
//! 14 More, 15 DNR.

use zns::{ZoneError, ZoneErrorKind};

/// A completion status: status code type, status code and Do Not Retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    /// Status Code Type: 0 generic, 1 command specific, 2 media and data integrity, 3 path.
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

/// Status code type: generic command status.
pub const SCT_GENERIC: u8 = 0;
/// Status code type: command specific status.
pub const SCT_COMMAND: u8 = 1;
/// Status code type: media and data integrity errors.
pub const SCT_MEDIA: u8 = 2;
/// Status code type: path related status.
pub const SCT_PATH: u8 = 3;

const fn generic(sc: u8) -> Status {
    Status {
        sct: SCT_GENERIC,
        sc,
        dnr: true,
    }
}

const fn specific(sc: u8) -> Status {
    Status {
        sct: SCT_COMMAND,
        sc,
        dnr: true,
    }
}

impl Status {
    /// Whether this is `other`'s status (type and code), whether or not Do Not Retry is set.
    pub fn is(self, other: Status) -> bool {
        self.sct == other.sct && self.sc == other.sc
    }

    /// Successful Completion.
    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        dnr: false,
    };
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = generic(0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = generic(0x02);
    /// Command ID Conflict: the command's identifier is that of one still in flight on the
    /// queue.
    pub const COMMAND_ID_CONFLICT: Status = generic(0x03);
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = generic(0x04);
    /// Internal Error.
    pub const INTERNAL_ERROR: Status = generic(0x06);
    /// Aborted: SQ Deletion (commands in flight when a queue goes away).
    pub const ABORTED_SQ_DELETION: Status = Status {
        sct: 0,
        sc: 0x08,
        dnr: false,
    };
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = generic(0x0B);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = generic(0x0C);
    /// SGL Data Block Granularity Invalid / Invalid SGL Offset: in-capsule data too large.
    pub const SGL_INVALID_OFFSET: Status = generic(0x16);
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: Status = generic(0x0F);
    /// SGL Descriptor Type Invalid.
    pub const SGL_TYPE_INVALID: Status = generic(0x11);
    /// Keep Alive Timeout Invalid.
    pub const KEEP_ALIVE_INVALID: Status = generic(0x1A);
    /// Transient Transport Error (a data digest error, §3.6.1.4 of NVMe/TCP).
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status {
        sct: 0,
        sc: 0x22,
        dnr: false,
    };
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = generic(0x80);
    /// Namespace Not Ready (retryable).
    pub const NAMESPACE_NOT_READY: Status = Status {
        sct: 0,
        sc: 0x82,
        dnr: false,
    };
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_ID: Status = specific(0x01);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = specific(0x05);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = specific(0x09);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = specific(0x0D);
    /// Connect Incompatible Format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = specific(0x80);
    /// Connect Controller Busy.
    pub const CONNECT_CONTROLLER_BUSY: Status = specific(0x81);
    /// Connect Invalid Parameters.
    pub const CONNECT_INVALID_PARAMETERS: Status = specific(0x82);
    /// Connect Invalid Host.
    pub const CONNECT_INVALID_HOST: Status = specific(0x84);
    /// Zone Boundary Error.
    pub const ZONE_BOUNDARY_ERROR: Status = specific(0xB8);
    /// Zone Is Full.
    pub const ZONE_IS_FULL: Status = specific(0xB9);
    /// Zone Is Read Only.
    pub const ZONE_IS_READ_ONLY: Status = specific(0xBA);
    /// Zone Is Offline.
    pub const ZONE_IS_OFFLINE: Status = specific(0xBB);
    /// Zone Invalid Write.
    pub const ZONE_INVALID_WRITE: Status = specific(0xBC);
    /// Too Many Active Zones.
    pub const TOO_MANY_ACTIVE_ZONES: Status = specific(0xBD);
    /// Too Many Open Zones.
    pub const TOO_MANY_OPEN_ZONES: Status = specific(0xBE);
    /// Invalid Zone State Transition.
    pub const INVALID_ZONE_STATE_TRANSITION: Status = specific(0xBF);
    /// Unrecovered Read Error (media).
    pub const UNRECOVERED_READ_ERROR: Status = Status {
        sct: SCT_MEDIA,
        sc: 0x81,
        dnr: true,
    };
    /// Write Fault (media).
    pub const WRITE_FAULT: Status = Status {
        sct: SCT_MEDIA,
        sc: 0x80,
        dnr: true,
    };

    /// Decodes the 16-bit status field of a CQE.
    pub fn from_field(field: u16) -> Self {
        Status {
            sc: ((field >> 1) & 0xFF) as u8,
            sct: ((field >> 9) & 0x7) as u8,
            dnr: field & 0x8000 != 0,
        }
    }

    /// Encodes the 16-bit status field (phase 0, as fabrics require).
    pub fn to_field(self) -> u16 {
        (u16::from(self.sc) << 1)
            | (u16::from(self.sct & 0x7) << 9)
            | if self.dnr { 0x8000 } else { 0 }
    }

    /// Whether the command succeeded.
    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// Same status without Do Not Retry.
    pub fn retryable(self) -> Self {
        Status { dnr: false, ..self }
    }

    /// The status a drive error travels as.
    pub fn from_zone_error(error: &ZoneError) -> Self {
        match error.kind() {
            ZoneErrorKind::ZoneBoundary => Status::ZONE_BOUNDARY_ERROR,
            ZoneErrorKind::ZoneIsFull => Status::ZONE_IS_FULL,
            ZoneErrorKind::ZoneIsReadOnly => Status::ZONE_IS_READ_ONLY,
            ZoneErrorKind::ZoneIsOffline => Status::ZONE_IS_OFFLINE,
            ZoneErrorKind::ZoneInvalidWrite => Status::ZONE_INVALID_WRITE,
            ZoneErrorKind::TooManyActiveZones => Status::TOO_MANY_ACTIVE_ZONES,
            ZoneErrorKind::TooManyOpenZones => Status::TOO_MANY_OPEN_ZONES,
            ZoneErrorKind::InvalidZoneStateTransition => Status::INVALID_ZONE_STATE_TRANSITION,
            ZoneErrorKind::LbaOutOfRange => Status::LBA_OUT_OF_RANGE,
            ZoneErrorKind::InvalidField => Status::INVALID_FIELD,
            ZoneErrorKind::MediaError => Status::INTERNAL_ERROR,
            ZoneErrorKind::Unavailable => Status::NAMESPACE_NOT_READY,
        }
    }

    /// The kind of drive error a failed status stands for (the inverse of
    /// [`Status::from_zone_error`]). Statuses that say the command did not run to its end
    /// for a passing reason (aborted, interrupted, a transport error, a namespace not ready,
    /// any path error) are `Unavailable`: the command may be tried again, as the Linux host
    /// retries them; so is any other status outside the media type whose Do Not Retry bit is
    /// clear (an Internal Error a target answers when it runs short of memory, say): the target
    /// says the same command may succeed again, which a damaged drive would not. Other statuses
    /// with no zone meaning are media errors.
    pub fn zone_error_kind(self) -> ZoneErrorKind {
        match (self.sct, self.sc) {
            (SCT_COMMAND, 0xB8) => ZoneErrorKind::ZoneBoundary,
            (SCT_COMMAND, 0xB9) => ZoneErrorKind::ZoneIsFull,
            (SCT_COMMAND, 0xBA) => ZoneErrorKind::ZoneIsReadOnly,
            (SCT_COMMAND, 0xBB) => ZoneErrorKind::ZoneIsOffline,
            (SCT_COMMAND, 0xBC) => ZoneErrorKind::ZoneInvalidWrite,
            (SCT_COMMAND, 0xBD) => ZoneErrorKind::TooManyActiveZones,
            (SCT_COMMAND, 0xBE) => ZoneErrorKind::TooManyOpenZones,
            (SCT_COMMAND, 0xBF) => ZoneErrorKind::InvalidZoneStateTransition,
            (SCT_GENERIC, 0x80) => ZoneErrorKind::LbaOutOfRange,
            (SCT_GENERIC, 0x02) => ZoneErrorKind::InvalidField,
            // Aborted due to Power Loss Notification (a target going down), Command Abort
            // Requested, Aborted due to SQ Deletion, Invalid Namespace or Format (the namespace
            // is gone from the controller), Command Sequence Error (the controller is not
            // ready for it), Command Interrupted, Transient Transport Error, Namespace Not
            // Ready, Format In Progress: the drive is not there to answer, not damaged.
            (SCT_GENERIC, 0x05 | 0x07 | 0x08 | 0x0B | 0x0C | 0x21 | 0x22 | 0x82 | 0x84)
            | (SCT_PATH, _) => ZoneErrorKind::Unavailable,
            (sct, _) if !self.dnr && sct != SCT_MEDIA => ZoneErrorKind::Unavailable,
            _ => ZoneErrorKind::MediaError,
        }
    }

    /// Rebuilds a drive error from a failed status and the command's parameters (a remote drive
    /// reports only the status).
    pub fn to_zone_error(self, what: &str, lba: u64, blocks: u64, zone_size: u64) -> ZoneError {
        let zslba = lba - lba % zone_size.max(1);
        match self.zone_error_kind() {
            ZoneErrorKind::ZoneBoundary => ZoneError::ZoneBoundary { lba, blocks, zslba },
            ZoneErrorKind::ZoneIsFull => ZoneError::ZoneIsFull { zslba },
            ZoneErrorKind::ZoneIsReadOnly => ZoneError::ZoneIsReadOnly { zslba },
            ZoneErrorKind::ZoneIsOffline => ZoneError::ZoneIsOffline { zslba },
            ZoneErrorKind::ZoneInvalidWrite => ZoneError::ZoneInvalidWrite { lba },
            ZoneErrorKind::TooManyActiveZones => ZoneError::TooManyActiveZones { zslba },
            ZoneErrorKind::TooManyOpenZones => ZoneError::TooManyOpenZones { zslba },
            ZoneErrorKind::InvalidZoneStateTransition => ZoneError::InvalidZoneStateTransition {
                action: zns::ZoneAction::Open,
                zslba,
                state: None,
            },
            ZoneErrorKind::LbaOutOfRange => ZoneError::LbaOutOfRange { lba, blocks },
            ZoneErrorKind::InvalidField => {
                ZoneError::InvalidField(format!("{what} at LBA {lba}: {self}"))
            }
            ZoneErrorKind::Unavailable => {
                ZoneError::Unavailable(format!("{what} at LBA {lba}: {self}"))
            }
            ZoneErrorKind::MediaError => {
                ZoneError::MediaError(format!("{what} at LBA {lba}: {self}"))
            }
        }
    }
}

impl Status {
    /// The specification's name of the status, for messages (None for codes we never use).
    pub fn name(&self) -> Option<&'static str> {
        Some(match (self.sct, self.sc) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x06) => "Internal Error",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x0C) => "Command Sequence Error",
            (0, 0x0F) => "Data SGL Length Invalid",
            (0, 0x11) => "SGL Descriptor Type Invalid",
            (0, 0x16) => "Invalid SGL Offset",
            (0, 0x1A) => "Keep Alive Timeout Invalid",
            (0, 0x22) => "Transient Transport Error",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x82) => "Namespace Not Ready",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (1, 0x09) => "Invalid Log Page",
            (1, 0x0D) => "Feature Identifier Not Saveable",
            (1, 0x80) => "Connect Incompatible Format",
            (1, 0x81) => "Connect Controller Busy",
            (1, 0x82) => "Connect Invalid Parameters",
            (1, 0x84) => "Connect Invalid Host",
            (1, 0xB8) => "Zone Boundary Error",
            (1, 0xB9) => "Zone Is Full",
            (1, 0xBA) => "Zone Is Read Only",
            (1, 0xBB) => "Zone Is Offline",
            (1, 0xBC) => "Zone Invalid Write",
            (1, 0xBD) => "Too Many Active Zones",
            (1, 0xBE) => "Too Many Open Zones",
            (1, 0xBF) => "Invalid Zone State Transition",
            (2, 0x81) => "Unrecovered Read Error",
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NVMe status SCT {:#x} SC {:#04x}{}",
            self.sct,
            self.sc,
            if self.dnr { " DNR" } else { "" }
        )?;
        match self.name() {
            Some(name) => write!(f, " ({name})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_match_the_linux_constants() {
        assert_eq!(Status::INTERNAL_ERROR.to_field(), 0x800c);
        assert_eq!(Status::CONNECT_INVALID_PARAMETERS.to_field(), 0x8304);
        assert_eq!(Status::CONNECT_INVALID_HOST.to_field(), 0x8308);
        assert_eq!(Status::INVALID_OPCODE.to_field(), 0x8002);
        assert_eq!(Status::ZONE_BOUNDARY_ERROR.to_field(), 0x8370);
        assert_eq!(Status::INVALID_ZONE_STATE_TRANSITION.to_field(), 0x837e);
        assert_eq!(Status::from_field(0x837c), Status::TOO_MANY_OPEN_ZONES);
    }

    #[test]
    fn every_zone_error_survives_the_wire() {
        let errors = [
            ZoneError::ZoneBoundary {
                lba: 40,
                blocks: 8,
                zslba: 32,
            },
            ZoneError::ZoneIsFull { zslba: 32 },
            ZoneError::ZoneIsReadOnly { zslba: 32 },
            ZoneError::ZoneIsOffline { zslba: 32 },
            ZoneError::ZoneInvalidWrite { lba: 40 },
            ZoneError::TooManyActiveZones { zslba: 32 },
            ZoneError::TooManyOpenZones { zslba: 32 },
            ZoneError::InvalidZoneStateTransition {
                action: zns::ZoneAction::Reset,
                zslba: 32,
                state: None,
            },
            ZoneError::LbaOutOfRange { lba: 40, blocks: 8 },
            ZoneError::InvalidField("f".into()),
            ZoneError::MediaError("m".into()),
            ZoneError::Unavailable("u".into()),
        ];
        for error in errors {
            let status = Status::from_field(Status::from_zone_error(&error).to_field());
            let back = status.to_zone_error("test", 40, 8, 16);
            assert_eq!(back.kind(), error.kind(), "{error}");
        }
    }

    #[test]
    fn statuses_of_commands_cut_short_may_be_retried() {
        for status in [
            Status::TRANSIENT_TRANSPORT_ERROR,
            Status::ABORTED_SQ_DELETION,
            generic(0x21),
            generic(0x07),
            Status::NAMESPACE_NOT_READY,
            // Power loss abort, namespace gone, controller not ready, format in progress.
            generic(0x05),
            generic(0x0B),
            generic(0x0C),
            generic(0x84),
        ] {
            assert_eq!(
                Status::from_field(status.to_field()).zone_error_kind(),
                ZoneErrorKind::Unavailable,
                "{status:?}"
            );
        }
        for status in [
            Status::INTERNAL_ERROR,
            Status::DATA_TRANSFER_ERROR,
            Status::UNRECOVERED_READ_ERROR,
            Status {
                dnr: false,
                ..Status::UNRECOVERED_READ_ERROR
            },
        ] {
            assert_eq!(status.zone_error_kind(), ZoneErrorKind::MediaError);
        }
        // What a target says may succeed if sent again is no damage (outside the media type).
        for status in [Status::INTERNAL_ERROR, Status::DATA_TRANSFER_ERROR] {
            let retryable = Status {
                dnr: false,
                ..status
            };
            assert_eq!(
                Status::from_field(retryable.to_field()).zone_error_kind(),
                ZoneErrorKind::Unavailable,
                "{retryable:?}"
            );
        }
        let vendor = Status {
            sct: 7,
            sc: 0x10,
            dnr: false,
        };
        assert_eq!(vendor.zone_error_kind(), ZoneErrorKind::Unavailable);
    }

    #[test]
    fn a_status_is_its_type_and_code_whatever_do_not_retry_says() {
        let retryable = Status {
            dnr: false,
            ..Status::CONNECT_INVALID_PARAMETERS
        };
        assert!(retryable.is(Status::CONNECT_INVALID_PARAMETERS));
        assert!(!Status::CONNECT_INVALID_HOST.is(Status::CONNECT_INVALID_PARAMETERS));
        assert!(!generic(0x82).is(Status::CONNECT_INVALID_PARAMETERS));
    }
}
