//! A storage node: one emulated ZNS drive in a data directory, exported over NVMe/TCP (what
//! `zonestore target` runs, and what the embedded default runs in-process for each drive).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fabric::target::{Target, TargetConfig, TargetHandle};
use zns::{EmulatedZns, Geometry, ZonedDevice};

/// What a storage node serves.
#[derive(Debug, Clone)]
pub struct StorageNodeConfig {
    /// Directory holding the drive's files.
    pub data_dir: PathBuf,
    /// Geometry of the drive (used when the drive is created; an existing drive must match).
    pub geometry: Geometry,
    /// Subsystem NQN.
    pub nqn: String,
    /// Host NQNs allowed to connect (empty: any).
    pub allowed_hosts: Vec<String>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Whether the drive writes with `O_DIRECT` (see [`EmulatedZns::set_direct_writes`]).
    pub direct_writes: bool,
    /// Whether a drive not there is created (else starting fails).
    pub create: bool,
}

/// Why a storage node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StorageNodeError {
    /// The drive could not be opened or created.
    #[error("drive in {dir}: {source}")]
    Drive {
        /// The data directory.
        dir: PathBuf,
        /// The drive's error.
        #[source]
        source: zns::ZoneError,
    },
    /// The subsystem could not be exported.
    #[error(transparent)]
    Export(#[from] fabric::target::TargetError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// A running storage node.
#[derive(Debug)]
pub struct StorageNode {
    /// The drive.
    pub drive: EmulatedZns,
    /// The target exporting it.
    pub target: Target,
    /// The listener.
    pub handle: TargetHandle,
    /// The subsystem NQN.
    pub nqn: String,
}

impl StorageNode {
    /// Opens (or creates) the drive and starts exporting it.
    pub async fn start(config: StorageNodeConfig) -> Result<StorageNode, StorageNodeError> {
        let target = Target::new(TargetConfig::default());
        let drive = if config.create {
            // What cannot be exported is refused before a drive is made of it: a retry with
            // the mistake mended would otherwise meet a drive of the old geometry.
            target.check_exportable(&config.nqn, &config.geometry, &config.allowed_hosts)?;
            open_drive(&config.data_dir, config.geometry)?
        } else {
            EmulatedZns::open(&config.data_dir).map_err(|source| StorageNodeError::Drive {
                dir: config.data_dir.clone(),
                source,
            })?
        };
        drive.set_direct_writes(config.direct_writes);
        target.add_subsystem(
            &config.nqn,
            Arc::new(drive.clone()) as Arc<dyn ZonedDevice>,
            config.allowed_hosts.clone(),
        )?;
        let handle =
            target
                .listen(config.listen)
                .await
                .map_err(|source| StorageNodeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok(StorageNode {
            drive,
            target,
            handle,
            nqn: config.nqn,
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
}

/// Opens the drive in `dir`, or creates it with `geometry`.
pub fn open_drive(dir: &Path, geometry: Geometry) -> Result<EmulatedZns, StorageNodeError> {
    EmulatedZns::open_or_create(dir, geometry).map_err(|source| StorageNodeError::Drive {
        dir: dir.to_path_buf(),
        source,
    })
}
