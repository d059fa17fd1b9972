//! Errors of zoned devices. Each kind corresponds to one NVMe status code (the fabric maps them
//! in one place, `fabric::status`), so a remote drive reports exactly what a local one does.

use crate::zone::{ZoneAction, ZoneState};

/// The kind of a [`ZoneError`], without context: what travels on the wire as a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneErrorKind {
    /// A write or append would cross the zone's writable capacity (Zone Boundary Error).
    ZoneBoundary,
    /// The zone is Full (Zone Is Full).
    ZoneIsFull,
    /// The zone is Read Only (Zone Is Read Only).
    ZoneIsReadOnly,
    /// The zone is Offline (Zone Is Offline).
    ZoneIsOffline,
    /// A write did not start at the write pointer (Zone Invalid Write).
    ZoneInvalidWrite,
    /// The active zone limit would be exceeded (Too Many Active Zones).
    TooManyActiveZones,
    /// The open zone limit would be exceeded (Too Many Open Zones).
    TooManyOpenZones,
    /// The action is not allowed from the zone's state (Invalid Zone State Transition).
    InvalidZoneStateTransition,
    /// The LBA range lies outside the namespace (LBA Out of Range).
    LbaOutOfRange,
    /// A field of the request is invalid: an append larger than the limit, an append not at a
    /// zone start, a length that is not whole blocks (Invalid Field in Command).
    InvalidField,
    /// A fault was injected for testing, or the medium failed (Internal Error / Data Transfer
    /// Error).
    MediaError,
    /// The drive could not be reached or stopped answering (transport or host path errors).
    /// The outcome of a command that changes the drive (write, append, write zeroes, zone
    /// management) is then unknown: it may have been carried out, even later, so the caller
    /// must treat it as in doubt, never as not done. (A write of several transfers may have
    /// moved the write pointer partway.)
    Unavailable,
}

/// An error from a [`crate::ZonedDevice`] operation, with the context that explains it.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// See [`ZoneErrorKind::ZoneBoundary`].
    #[error(
        "zone boundary error: {blocks} blocks at LBA {lba} cross the capacity of the zone at {zslba}"
    )]
    ZoneBoundary {
        /// First LBA of the request.
        lba: u64,
        /// Length of the request in blocks.
        blocks: u64,
        /// Start of the zone.
        zslba: u64,
    },
    /// See [`ZoneErrorKind::ZoneIsFull`].
    #[error("zone at LBA {zslba} is full")]
    ZoneIsFull {
        /// Start of the zone.
        zslba: u64,
    },
    /// See [`ZoneErrorKind::ZoneIsReadOnly`].
    #[error("zone at LBA {zslba} is read-only")]
    ZoneIsReadOnly {
        /// Start of the zone.
        zslba: u64,
    },
    /// See [`ZoneErrorKind::ZoneIsOffline`].
    #[error("zone at LBA {zslba} is offline")]
    ZoneIsOffline {
        /// Start of the zone.
        zslba: u64,
    },
    /// See [`ZoneErrorKind::ZoneInvalidWrite`].
    #[error("invalid zone write at LBA {lba}: not at the write pointer")]
    ZoneInvalidWrite {
        /// First LBA of the write.
        lba: u64,
    },
    /// See [`ZoneErrorKind::TooManyActiveZones`].
    #[error("too many active zones (zone at LBA {zslba} cannot become active)")]
    TooManyActiveZones {
        /// Start of the zone that could not become active.
        zslba: u64,
    },
    /// See [`ZoneErrorKind::TooManyOpenZones`].
    #[error("too many open zones (zone at LBA {zslba} cannot be opened)")]
    TooManyOpenZones {
        /// Start of the zone that could not be opened.
        zslba: u64,
    },
    /// See [`ZoneErrorKind::InvalidZoneStateTransition`].
    #[error("invalid zone state transition: cannot {action} the zone at LBA {zslba}{}",
        .state.map(|s| format!(" in state {s}")).unwrap_or_default())]
    InvalidZoneStateTransition {
        /// The action requested.
        action: ZoneAction,
        /// Start of the zone.
        zslba: u64,
        /// The zone's state, when known (a remote drive does not say).
        state: Option<ZoneState>,
    },
    /// See [`ZoneErrorKind::LbaOutOfRange`].
    #[error("LBA out of range: {blocks} blocks at LBA {lba}")]
    LbaOutOfRange {
        /// First LBA of the request.
        lba: u64,
        /// Length of the request in blocks.
        blocks: u64,
    },
    /// See [`ZoneErrorKind::InvalidField`].
    #[error("invalid request: {0}")]
    InvalidField(String),
    /// See [`ZoneErrorKind::MediaError`].
    #[error("media error: {0}")]
    MediaError(String),
    /// See [`ZoneErrorKind::Unavailable`].
    #[error("drive unavailable: {0}")]
    Unavailable(String),
    /// An I/O error of the backing store of an emulated drive.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ZoneError {
    /// The kind of this error: what a peer learns from its status code.
    pub fn kind(&self) -> ZoneErrorKind {
        match self {
            ZoneError::ZoneBoundary { .. } => ZoneErrorKind::ZoneBoundary,
            ZoneError::ZoneIsFull { .. } => ZoneErrorKind::ZoneIsFull,
            ZoneError::ZoneIsReadOnly { .. } => ZoneErrorKind::ZoneIsReadOnly,
            ZoneError::ZoneIsOffline { .. } => ZoneErrorKind::ZoneIsOffline,
            ZoneError::ZoneInvalidWrite { .. } => ZoneErrorKind::ZoneInvalidWrite,
            ZoneError::TooManyActiveZones { .. } => ZoneErrorKind::TooManyActiveZones,
            ZoneError::TooManyOpenZones { .. } => ZoneErrorKind::TooManyOpenZones,
            ZoneError::InvalidZoneStateTransition { .. } => {
                ZoneErrorKind::InvalidZoneStateTransition
            }
            ZoneError::LbaOutOfRange { .. } => ZoneErrorKind::LbaOutOfRange,
            ZoneError::InvalidField(_) => ZoneErrorKind::InvalidField,
            ZoneError::MediaError(_) | ZoneError::Io { .. } => ZoneErrorKind::MediaError,
            ZoneError::Unavailable(_) => ZoneErrorKind::Unavailable,
        }
    }

    /// Wraps an I/O error of a backing file with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ZoneError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of a zoned device operation.
pub type ZoneResult<T> = Result<T, ZoneError>;
