//! Attaching drives: the embedded default (emulated drives behind in-process NVMe/TCP targets,
//! reached through the NVMe/TCP host — the same path as a real deployment), remote targets by
//! NQN or through a discovery controller, and local `zns-file://` drives without the fabric.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric::host::discovery::discover;
use fabric::host::{HostConfig, HostError, NvmeTcpHost, TargetAddress};
use fabric::spec::logpage::subtype;
use zns::{EmulatedZns, Geometry, ZonedDevice};

use crate::config::TargetUrl;
use crate::discovered;
use crate::engine::DriveSpec;
use crate::storage_node::{StorageNode, StorageNodeConfig, StorageNodeError};

/// Why drives could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// An embedded drive the index knows cannot be opened.
    #[error(
        "embedded drive {index} in {dir} cannot be opened ({source}), yet the index knows it: is its filesystem mounted? (an empty drive in its place would hold none of its data)",
        dir = dir.display()
    )]
    KnownEmbeddedMissing {
        /// Drive index.
        index: usize,
        /// Its directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: zns::ZoneError,
    },
    /// An embedded drive the index knows was made with another geometry than the
    /// configuration now gives: a drive keeps the geometry it was made with.
    #[error(
        "embedded drive {index} in {} was made with [{found}], but embedded.zones and embedded.zone_size (--zones, --zone-size) now say [{configured}]: a drive keeps the geometry it was made with; set them back, or start with a new data directory",
        dir.display()
    )]
    EmbeddedGeometry {
        /// Drive index.
        index: usize,
        /// Its directory.
        dir: PathBuf,
        /// The geometry it has.
        found: Box<Geometry>,
        /// The geometry configured.
        configured: Box<Geometry>,
    },
    /// An embedded storage node did not start.
    #[error("embedded drive {index}: {source}")]
    Embedded {
        /// Drive index.
        index: usize,
        /// Cause.
        #[source]
        source: StorageNodeError,
    },
    /// The host NQN kept in the data directory could not be read or made.
    #[error("host NQN {path}: {source} (set host_nqn in the configuration)")]
    HostNqn {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A target could not be reached or used.
    #[error("target {target}: {reason}")]
    Target {
        /// The target URL.
        target: String,
        /// Why.
        reason: String,
    },
}

/// What was attached.
#[derive(Default)]
pub struct Attached {
    /// Drives for the engine.
    pub specs: Vec<DriveSpec>,
    /// NVMe/TCP connections, by drive name.
    pub hosts: Vec<(String, NvmeTcpHost)>,
    /// Embedded storage nodes.
    pub nodes: Vec<StorageNode>,
    /// Targets that could not be reached and were left out (see [`IfUnreachable::LeaveOut`]).
    pub left_out: Vec<String>,
    /// The names of the drives of the targets left out (as the index knows drives).
    pub left_out_drives: Vec<String>,
}

/// What to do with a target that cannot be reached and that the index does not know (a
/// drive the index knows is always attached to reconnect later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfUnreachable {
    /// Fail the attach.
    Fail,
    /// Attach the others and name it in [`Attached::left_out`].
    LeaveOut,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field(
                "drives",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The NQN of embedded drive `index`.
pub fn embedded_nqn(index: usize) -> String {
    format!("nqn.2026-01.io.zonestore:embedded-drive{index}")
}

/// How this server's NVMe/TCP host connects to every target: the NQN it connects as and how it
/// tells a stopped target from a slow one (`[fabric]`).
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// The host NQN.
    pub hostnqn: String,
    /// Silence on a queue with commands waiting before the target is probed (zero: never).
    pub probe_after: Duration,
    /// How long the probe may go unanswered before the connection is reset.
    pub probe_answer_within: Duration,
}

impl HostSettings {
    /// Settings for `hostnqn` with the probe timings of `section`.
    pub fn new(hostnqn: String, section: &crate::config::FabricSection) -> Self {
        HostSettings {
            hostnqn,
            probe_after: Duration::from_millis(section.probe_after_ms),
            probe_answer_within: Duration::from_millis(section.probe_answer_within_ms),
        }
    }

    /// The host configuration for subsystem `nqn` at `address`.
    fn host_config(&self, address: TargetAddress, nqn: &str) -> HostConfig {
        let mut c = HostConfig::new(address, nqn);
        c.hostnqn = self.hostnqn.clone();
        c.io_queues = 2;
        c.queue_depth = 128;
        c.probe_after = self.probe_after;
        c.probe_answer_within = self.probe_answer_within;
        c
    }
}

/// Geometries of drives the index already knows, by drive name (see
/// [`crate::engine::known_drives`]): such a drive may be unreachable at start, and another
/// drive answering in its place is refused.
pub type KnownDrives = HashMap<String, crate::engine::KnownDrive>;

async fn connect(
    address: TargetAddress,
    nqn: &str,
    host: &HostSettings,
    known: &KnownDrives,
    if_unreachable: IfUnreachable,
    attached: &mut Attached,
) -> Result<(), AttachError> {
    let name = drive_name(nqn);
    check_unique(attached, &name, &format!("nvme-tcp://{address}/{nqn}"))?;
    let mut config = host.host_config(address.clone(), nqn);
    config.expected_identity = known.get(&name).and_then(|k| k.identity);
    let host = match NvmeTcpHost::connect(config.clone()).await {
        Ok(host) => host,
        Err(
            e @ (HostError::Connect { .. }
            | HostError::Resolve { .. }
            | HostError::IdentityChanged { .. }
            | HostError::Timeout(_)
            | HostError::Disconnected(_)),
        ) if known.contains_key(&name) => {
            // A drive the index knows (its data has copies elsewhere): start without it and
            // keep trying to reach it.
            tracing::warn!(target = %format!("nvme-tcp://{address}/{nqn}"), "target unreachable ({e}); starting without it and reconnecting in the background");
            NvmeTcpHost::connect_later(config.clone(), known[&name].geometry)
        }
        Err(e) => {
            let target = format!("nvme-tcp://{address}/{nqn}");
            if if_unreachable == IfUnreachable::LeaveOut {
                tracing::warn!(%target, "target unreachable ({e}); leaving it out");
                attached.left_out.push(target);
                attached.left_out_drives.push(name);
                return Ok(());
            }
            return Err(AttachError::Target {
                target,
                reason: e.to_string(),
            });
        }
    };
    // A drive the index knows laid out otherwise (another disk exported under its NQN, told
    // apart by its geometry where it has no identity): not taken with that geometry, which
    // would then be the one the host holds every later session to, refusing the right drive.
    // The host keeps trying for a namespace laid out as recorded.
    let host = match known.get(&name) {
        Some(k) if !zns::ZonedDevice::geometry(&host).same_layout(&k.geometry) => {
            tracing::error!(
                target = %format!("nvme-tcp://{address}/{nqn}"),
                "a namespace of another geometry answers ({}; the index knows {}): starting without the drive, waiting for the right one",
                zns::ZonedDevice::geometry(&host),
                k.geometry
            );
            host.close().await;
            NvmeTcpHost::connect_later(config, k.geometry)
        }
        _ => host,
    };
    attached.specs.push(DriveSpec {
        name: name.clone(),
        device: Arc::new(host.clone()) as Arc<dyn ZonedDevice>,
    });
    attached.hosts.push((name, host));
    Ok(())
}

/// Starts `count` embedded drives under `data_dir/drives` and connects to each over NVMe/TCP.
/// Their targets admit one host NQN, made afresh for this process and never written down: the
/// loopback ports are open to every user of the machine, and NVMe/TCP has no other
/// authentication, so a host NQN anyone could work out (the machine id is world-readable)
/// would let any local user read or reset the drives past S3's signatures. A drive the index
/// registers (in `registered`) is opened, never created: one that is not there (its directory
/// removed, its disk not mounted) must not be replaced by an empty drive; with `local` only
/// opening and `if_unreachable` leaving out, one that cannot be opened is left out (a rebuild
/// told to go without missing drives).
#[allow(clippy::too_many_arguments)] // each is a separate decision of the caller's
pub async fn embedded(
    data_dir: &Path,
    count: usize,
    geometry: Geometry,
    direct_writes: bool,
    registered: &HashSet<String>,
    local: LocalDrives,
    if_unreachable: IfUnreachable,
    section: &crate::config::FabricSection,
) -> Result<Attached, AttachError> {
    let host = HostSettings::new(fabric::host::uuid_hostnqn(rand::random()), section);
    let mut attached = Attached::default();
    for index in 0..count {
        let nqn = embedded_nqn(index);
        let known = registered.contains(&drive_name(&nqn));
        let started = StorageNode::start(StorageNodeConfig {
            data_dir: data_dir.join("drives").join(format!("drive{index}")),
            geometry,
            nqn: nqn.clone(),
            allowed_hosts: vec![host.hostnqn.clone()],
            listen: "127.0.0.1:0".parse().expect("a valid literal address"),
            direct_writes,
            create: local == LocalDrives::OpenOrCreate && !known,
        })
        .await;
        let node = match started {
            Ok(node) => node,
            // Only opened (a rebuild) and allowed to go without drives that are missing: a
            // drive that cannot be opened is left out, as an unreachable target is.
            Err(StorageNodeError::Drive { dir, source })
                if local == LocalDrives::OpenOnly && if_unreachable == IfUnreachable::LeaveOut =>
            {
                let target = format!("embedded drive {index} ({})", dir.display());
                tracing::warn!(%target, "it cannot be opened ({source}); leaving it out");
                attached.left_out.push(target);
                attached.left_out_drives.push(drive_name(&nqn));
                continue;
            }
            Err(StorageNodeError::Drive { dir, source }) if known => {
                return Err(AttachError::KnownEmbeddedMissing { index, dir, source });
            }
            Err(source) => return Err(AttachError::Embedded { index, source }),
        };
        // Drives the index knows were opened as they are: one made with another geometry than
        // the configuration now gives is named, not taken silently (new drives would get the
        // new one).
        let found = node.drive.geometry();
        let layout = |g: &Geometry| (g.block_size, g.zone_size, g.zone_capacity, g.zone_count);
        if local == LocalDrives::OpenOrCreate && layout(&found) != layout(&geometry) {
            return Err(AttachError::EmbeddedGeometry {
                index,
                dir: data_dir.join("drives").join(format!("drive{index}")),
                found: Box::new(found),
                configured: Box::new(geometry),
            });
        }
        let address = node.local_addr();
        attached.nodes.push(node);
        connect(
            address.into(),
            &nqn,
            &host,
            &KnownDrives::new(),
            IfUnreachable::Fail,
            &mut attached,
        )
        .await?;
    }
    Ok(attached)
}

/// File in the data directory that keeps the host NQN made for a machine without a machine id.
const HOST_NQN_FILE: &str = "host-nqn";

/// The NQN this server connects as: the configured one, else the machine's, else one made once
/// and kept in the data directory. It must not change between starts: the storage nodes'
/// allow-lists name it.
fn host_nqn(config: &crate::config::Config) -> Result<String, AttachError> {
    match config
        .host_nqn
        .clone()
        .or_else(fabric::host::machine_hostnqn)
    {
        Some(nqn) => Ok(nqn),
        None => kept_host_nqn(&config.data_dir),
    }
}

/// The host NQN kept in `data_dir`, made (and kept) if there is none yet.
fn kept_host_nqn(data_dir: &Path) -> Result<String, AttachError> {
    let path = data_dir.join(HOST_NQN_FILE);
    let failed = |source| AttachError::HostNqn {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(kept) => {
            let kept = kept.trim().to_string();
            fabric::target::validate_nqn(&kept)
                .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            Ok(kept)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let nqn = fabric::host::uuid_hostnqn(rand::random());
            std::fs::create_dir_all(data_dir).map_err(failed)?;
            crate::durable_file::replace(&path, format!("{nqn}\n").as_bytes(), 0o644)
                .map_err(failed)?;
            tracing::info!(%nqn, "this machine has no machine id: made a host NQN, kept in {}", path.display());
            Ok(nqn)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Attaches the drives a configuration names: its targets, or the embedded default when it
/// names none. Targets in `known` that cannot be reached are attached to reconnect later.
pub async fn attach_configured(
    config: &crate::config::Config,
    checked: &crate::config::Checked,
    known: &KnownDrives,
    registered: &HashSet<String>,
    if_unreachable: IfUnreachable,
    local: LocalDrives,
) -> Result<Attached, AttachError> {
    let geometry = Geometry::new(config.embedded.zones, checked.embedded_zone_bytes);
    if checked.targets.is_empty() {
        embedded(
            &config.data_dir,
            config.embedded.drives,
            geometry,
            config.embedded.direct_writes,
            registered,
            local,
            if_unreachable,
            &config.fabric,
        )
        .await
    } else {
        let host = HostSettings::new(host_nqn(config)?, &config.fabric);
        attach(
            &checked.targets,
            geometry,
            config.embedded.direct_writes,
            &host,
            Known {
                reachable_later: known,
                registered,
                local,
            },
            if_unreachable,
            &config.data_dir,
        )
        .await
    }
}

impl Attached {
    /// Closes the fabric connections and stops the embedded targets, flushing their drives.
    pub async fn close(self) {
        // Together: each may wait on a target that answers nothing for its command timeouts.
        futures::future::join_all(self.hosts.iter().map(|(_, host)| host.close())).await;
        let stopping = self.nodes.into_iter().map(|node| async move {
            node.handle.shut_down(Duration::from_secs(10)).await;
            if let Err(e) = ZonedDevice::flush(&node.drive).await {
                tracing::warn!(nqn = %node.nqn, "flushing the drive failed: {e}");
            }
        });
        futures::future::join_all(stopping).await;
    }
}

/// What the index knows of the drives being attached.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Drives that may be unreachable now: attached to reconnect later.
    pub reachable_later: &'a KnownDrives,
    /// Names of every drive the index registers: a `zns-file://` one among them is opened,
    /// never created anew (a missing one is a disk not mounted, not a new drive).
    pub registered: &'a HashSet<String>,
    /// Whether local drives not there may be created at all.
    pub local: LocalDrives,
}

/// Whether local drives (embedded, `zns-file://`) that are not there are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDrives {
    /// Created (a first start; a drive added to the configuration).
    OpenOrCreate,
    /// Only opened: a rebuild of the index must read the drives that hold the data, and a
    /// missing one (a disk not mounted, a mistyped data directory) is missing, not new.
    OpenOnly,
}

/// Attaches configured targets; those in `known.reachable_later` that cannot be reached are
/// attached to reconnect later. What discovery controllers list is remembered in `data_dir`,
/// so that the subsystems of one that does not answer can still be attached that way.
pub async fn attach(
    targets: &[TargetUrl],
    geometry: Geometry,
    direct_writes: bool,
    host: &HostSettings,
    known_drives: Known<'_>,
    if_unreachable: IfUnreachable,
    data_dir: &Path,
) -> Result<Attached, AttachError> {
    let known = known_drives.reachable_later;
    let mut attached = Attached::default();
    let remembered = discovered::load(data_dir);
    let mut listed = Vec::new();
    for target in targets {
        match target {
            TargetUrl::NvmeTcp {
                address,
                nqn: Some(nqn),
            } => {
                connect(
                    address.clone(),
                    nqn,
                    host,
                    known,
                    if_unreachable,
                    &mut attached,
                )
                .await?
            }
            TargetUrl::NvmeTcp { address, nqn: None } => {
                let via = address.clone();
                let subsystems = match discover(via.clone(), &host.hostnqn, Duration::from_secs(10))
                    .await
                {
                    Ok(entries) => {
                        let via_ips: Vec<IpAddr> = match via.resolve().await {
                            Ok(found) => found.iter().map(|a| a.ip()).collect(),
                            Err(_) => Vec::new(),
                        };
                        entries
                            .iter()
                            .filter(|e| e.subtype == subtype::NVM)
                            // A name that is no NQN (a line break in it would corrupt the
                            // file the listed names are kept in) is not a subsystem of ours.
                            .filter(|e| match fabric::target::validate_nqn(&e.subnqn) {
                                Ok(()) => true,
                                Err(reason) => {
                                    tracing::warn!("{via} lists a subsystem left out: {reason}");
                                    false
                                }
                            })
                            .map(|e| discovered::Listed {
                                via: via.clone(),
                                address: listed_address(&via, &via_ips, &e.traddr, &e.trsvcid),
                                nqn: e.subnqn.clone(),
                            })
                            .collect::<Vec<_>>()
                    }
                    Err(e) => {
                        // Down: what it listed before, for drives the index knows (the
                        // rest stays remembered).
                        let before: Vec<_> = remembered.iter().filter(|l| l.via == via).collect();
                        listed.extend(
                            before
                                .iter()
                                .filter(|l| !known.contains_key(&drive_name(&l.nqn)))
                                .map(|l| (*l).clone()),
                        );
                        let before: Vec<_> = before
                            .into_iter()
                            .filter(|l| known.contains_key(&drive_name(&l.nqn)))
                            .cloned()
                            .collect();
                        if before.is_empty() {
                            let target = format!("nvme-tcp://{via}");
                            // Left out, it counts as every drive it listed before: missing
                            // drives are weighed against the write quorum.
                            let listed_here: Vec<String> = remembered
                                .iter()
                                .filter(|l| l.via == via)
                                .map(|l| format!("nvme-tcp://{}/{}", l.address, l.nqn))
                                .collect();
                            if if_unreachable == IfUnreachable::LeaveOut && !listed_here.is_empty()
                            {
                                tracing::warn!(%target, "discovery failed ({e}); leaving out the {} drive(s) it listed before", listed_here.len());
                                attached.left_out.extend(listed_here);
                                attached.left_out_drives.extend(
                                    remembered
                                        .iter()
                                        .filter(|l| l.via == via)
                                        .map(|l| drive_name(&l.nqn)),
                                );
                                continue;
                            }
                            if if_unreachable == IfUnreachable::LeaveOut {
                                return Err(AttachError::Target {
                                    target,
                                    reason: format!(
                                        "discovery failed ({e}), and it never listed its subsystems to this gateway, so how many drives are missing cannot be told: name them by NQN, or bring it back"
                                    ),
                                });
                            }
                            return Err(AttachError::Target {
                                target,
                                reason: format!("discovery failed: {e}"),
                            });
                        }
                        tracing::warn!(target = %format!("nvme-tcp://{via}"), "discovery failed ({e}); using the {} subsystem(s) it listed before", before.len());
                        before
                    }
                };
                if subsystems.is_empty() {
                    return Err(AttachError::Target {
                        target: format!("nvme-tcp://{via}"),
                        reason: "the discovery controller lists no subsystem for this host".into(),
                    });
                }
                // A subsystem reachable through several ports (multipath) is listed once per
                // port: it is one drive, attached through the first.
                let mut subsystems = subsystems;
                let mut seen = std::collections::HashSet::new();
                subsystems.retain(|l| seen.insert(l.nqn.clone()));
                for l in subsystems {
                    connect(
                        l.address.clone(),
                        &l.nqn,
                        host,
                        known,
                        if_unreachable,
                        &mut attached,
                    )
                    .await?;
                    listed.push(l);
                }
            }
            TargetUrl::ZnsFile(path) => {
                let target = format!("zns-file://{}", path.display());
                let name = zns_file_name(path);
                check_unique(&attached, &name, &target)?;
                // A drive the index knows is opened, never created: a missing one (a disk not
                // mounted) must not be replaced by an empty drive on another filesystem.
                let registered = known_drives.registered.contains(&name);
                let open_only = registered || known_drives.local == LocalDrives::OpenOnly;
                let opened = if open_only {
                    EmulatedZns::open(path).map_err(|e| {
                        let known = if registered {
                            "the index knows this drive, but "
                        } else {
                            ""
                        };
                        format!("{known}it cannot be opened ({e}): is its filesystem mounted?")
                    })
                } else {
                    EmulatedZns::open_or_create(path, geometry).map_err(|e| e.to_string())
                };
                let drive = match opened {
                    Ok(drive) => drive,
                    Err(reason) if open_only && if_unreachable == IfUnreachable::LeaveOut => {
                        tracing::warn!(%target, "{reason}; leaving it out");
                        attached.left_out.push(target);
                        attached.left_out_drives.push(zns_file_name(path));
                        continue;
                    }
                    Err(reason) => return Err(AttachError::Target { target, reason }),
                };
                drive.set_direct_writes(direct_writes);
                attached.specs.push(DriveSpec {
                    // As it is named now that it exists.
                    name: zns_file_name(path),
                    device: Arc::new(drive) as Arc<dyn ZonedDevice>,
                });
            }
        }
    }
    if !listed.is_empty()
        && listed != remembered
        && let Err(e) = discovered::save(data_dir, &listed)
    {
        tracing::warn!("remembering what discovery listed failed: {e}");
    }
    Ok(attached)
}

/// The engine's name of the emulated drive at `path`: its canonical path, or, while it does
/// not exist yet, its parent's and its own name (the same once it is created).
fn zns_file_name(path: &Path) -> String {
    let resolved = path.canonicalize().unwrap_or_else(|_| {
        match (
            path.parent().and_then(|p| p.canonicalize().ok()),
            path.file_name(),
        ) {
            (Some(parent), Some(file)) => parent.join(file),
            _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        }
    });
    format!("zns-file://{}", resolved.display())
}

/// Refuses a drive attached twice: two targets exporting the same subsystem NQN (storage
/// nodes left at the default `--nqn`), or one named twice, would be one drive to the engine,
/// and every record would have one copy whatever the replication factor says.
fn check_unique(attached: &Attached, name: &str, target: &str) -> Result<(), AttachError> {
    if attached.specs.iter().any(|s| s.name == name) {
        return Err(AttachError::Target {
            target: target.to_string(),
            reason: format!(
                "{name} is attached already through another target: every storage node needs its own subsystem NQN (`zonestore target --nqn`), and each target may be named once"
            ),
        });
    }
    Ok(())
}

/// Where a discovery log entry says its subsystem is served: its transport address and
/// service id, each falling back to the discovery controller's when unusable (a wildcard
/// address, as a target listening on every interface may report, says nothing of where). An
/// address the discovery controller's name resolves to (`via_ips`) is kept as that name, so
/// that it is resolved again at each connection.
fn listed_address(
    via: &TargetAddress,
    via_ips: &[IpAddr],
    traddr: &str,
    trsvcid: &str,
) -> TargetAddress {
    let host = match traddr.trim().parse::<IpAddr>() {
        Ok(ip) if via_ips.contains(&ip) => via.host().to_string(),
        Ok(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => via.host().to_string(),
    };
    TargetAddress::new(&host, trsvcid.trim().parse().unwrap_or(via.port()))
}

/// The engine's name of the drive a subsystem exports (stable across address changes).
fn drive_name(nqn: &str) -> String {
    format!("nqn:{nqn}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` new embedded drives of 8 zones under `dir`, reached with the probe of `section`.
    async fn embedded_drives(
        dir: &Path,
        count: usize,
        section: &crate::config::FabricSection,
    ) -> Attached {
        embedded(
            dir,
            count,
            Geometry::new(8, 1 << 20),
            false,
            &HashSet::new(),
            LocalDrives::OpenOrCreate,
            IfUnreachable::Fail,
            section,
        )
        .await
        .unwrap()
    }

    /// The embedded targets admit only this process's own host: not the machine's host NQN (a
    /// local user can work it out), nor one kept in the data directory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_targets_admit_no_host_nqn_another_local_user_could_know() {
        let dir = tempfile::tempdir().unwrap();
        let attached =
            embedded_drives(dir.path(), 1, &crate::config::FabricSection::default()).await;
        assert_eq!(attached.specs.len(), 1, "the engine's own connection works");
        let address = attached.nodes[0].local_addr();
        let guessable = fabric::host::machine_hostnqn()
            .unwrap_or_else(|| "nqn.2014-08.org.nvmexpress:uuid:guess".into());
        let section = crate::config::FabricSection::default();
        let mut config =
            HostSettings::new(guessable, &section).host_config(address.into(), &embedded_nqn(0));
        config.reconnect_wait = std::time::Duration::ZERO;
        let refused = fabric::host::NvmeTcpHost::connect(config).await;
        assert!(refused.is_err(), "a guessable host NQN was admitted");
        assert!(
            !dir.path().join(HOST_NQN_FILE).exists(),
            "no host NQN is written down"
        );
        attached.close().await;
    }

    /// `[fabric]`'s probe timings are the ones the hosts of the drives use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hosts_probe_targets_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let section = crate::config::FabricSection {
            probe_after_ms: 123,
            probe_answer_within_ms: 3456,
        };
        let attached = embedded_drives(dir.path(), 2, &section).await;
        assert_eq!(attached.hosts.len(), 2);
        for (name, host) in &attached.hosts {
            let config = host.config();
            assert_eq!(config.probe_after, Duration::from_millis(123), "{name}");
            assert_eq!(
                config.probe_answer_within,
                Duration::from_millis(3456),
                "{name}"
            );
        }
        attached.close().await;
    }

    #[test]
    fn listed_subsystems_keep_the_discovery_controllers_name_for_its_own_addresses() {
        let via: TargetAddress = "node1.example:8009".parse().unwrap();
        let own = ["10.0.0.7".parse().unwrap()];
        let at = |traddr: &str, trsvcid: &str| listed_address(&via, &own, traddr, trsvcid);
        assert_eq!(at("10.0.0.7", "4420").to_string(), "node1.example:4420");
        assert_eq!(at("10.0.0.8", "4421").to_string(), "10.0.0.8:4421");
        assert_eq!(at("0.0.0.0", "4420").to_string(), "node1.example:4420");
        assert_eq!(at("not an ip", "4420").to_string(), "node1.example:4420");
        assert_eq!(at("10.0.0.8", "port?").to_string(), "10.0.0.8:8009");
    }

    /// Without a configured NQN or a machine id, the NQN made at the first start is the one
    /// every later start connects as (storage nodes' allow-lists name it).
    #[test]
    fn a_host_nqn_made_for_a_machine_without_an_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = kept_host_nqn(&data).unwrap();
        fabric::target::validate_nqn(&first).unwrap();
        assert_eq!(kept_host_nqn(&data).unwrap(), first);
        assert_ne!(kept_host_nqn(&dir.path().join("other")).unwrap(), first);
        std::fs::write(data.join(HOST_NQN_FILE), "not an nqn\n").unwrap();
        let e = kept_host_nqn(&data).unwrap_err().to_string();
        assert!(e.contains("host_nqn") && e.contains("invalid NQN"), "{e}");
    }
}
