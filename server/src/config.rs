//! Configuration of `zonestore serve`: a TOML file, overridden by command-line flags. Every
//! key is checked; a bad value gets a message naming the key and the problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use fabric::host::TargetAddress;

use crate::engine::gc::Policy;
use crate::size::parse_size;

/// A user (access key and secret key).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

/// `[gc]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcSection {
    /// Whether GC runs.
    pub enabled: bool,
    /// Start below this fraction of free zones.
    pub low_watermark: f64,
    /// Stop at this fraction.
    pub high_watermark: f64,
    /// Relocation rate limit, MiB/s (0: unlimited).
    pub rate_mib_per_sec: u64,
    /// `cost-benefit` or `greedy`.
    pub policy: String,
}

impl Default for GcSection {
    fn default() -> Self {
        GcSection {
            enabled: true,
            low_watermark: 0.10,
            high_watermark: 0.20,
            rate_mib_per_sec: 256,
            policy: "cost-benefit".into(),
        }
    }
}

/// `[replication]`: repair and scrub.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Seconds a target may be unreachable before its copies are made again elsewhere.
    pub repair_grace_secs: u64,
    /// Repair copy rate limit, MiB/s (0: unlimited).
    pub repair_rate_mib_per_sec: u64,
    /// Hours between background scrub passes (0: only when asked).
    pub scrub_interval_hours: u64,
    /// Scrub read rate limit, MiB/s (0: unlimited).
    pub scrub_rate_mib_per_sec: u64,
    /// Milliseconds a read of one copy may take before another copy is read too.
    pub hedge_after_ms: u64,
    /// Milliseconds copies beyond the write quorum are waited for once it is stored (at least).
    pub slow_write_grace_ms: u64,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            repair_grace_secs: 120,
            repair_rate_mib_per_sec: 128,
            scrub_interval_hours: 168,
            scrub_rate_mib_per_sec: 64,
            hedge_after_ms: 500,
            slow_write_grace_ms: 1000,
        }
    }
}

/// `[multipart]`: uploads in progress.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MultipartSection {
    /// Hours after its initiation at which an upload still unfinished is aborted, its parts'
    /// space reclaimed (0: never).
    pub abort_after_hours: u64,
}

impl Default for MultipartSection {
    fn default() -> Self {
        MultipartSection {
            abort_after_hours: 7 * 24,
        }
    }
}

/// `[fabric]`: how this server's NVMe/TCP host tells a stopped target from a slow one.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FabricSection {
    /// Milliseconds an I/O command may wait with nothing heard from its target before the host
    /// sends it a Keep Alive as a probe (0: never probe; a stopped target is then found only by
    /// the 30 s command timeout).
    pub probe_after_ms: u64,
    /// Milliseconds that probe may go unanswered before the target counts as stopped: its
    /// connection is reset and the commands in flight fail over to other copies.
    pub probe_answer_within_ms: u64,
}

impl Default for FabricSection {
    fn default() -> Self {
        FabricSection {
            probe_after_ms: 500,
            probe_answer_within_ms: 1500,
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[embedded]`: the drives `serve` runs itself when no targets are configured.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSection {
    /// Number of emulated drives.
    pub drives: usize,
    /// Zones per drive.
    pub zones: u32,
    /// Zone size (e.g. "64M").
    pub zone_size: String,
    /// Whether the embedded and `zns-file://` drives write with `O_DIRECT`, bypassing the
    /// page cache as a real drive does (data is cached when it is read instead). Default off.
    pub direct_writes: bool,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        EmbeddedSection {
            drives: 3,
            zones: 256,
            zone_size: "64M".into(),
            direct_writes: false,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// S3 listen address.
    pub listen: String,
    /// Admin (metrics, health, admin API) listen address.
    pub admin_listen: Option<String>,
    /// Data directory (index, embedded drives).
    pub data_dir: PathBuf,
    /// RocksDB directory (default `<data_dir>/index`).
    pub index_dir: Option<PathBuf>,
    /// Region reported to clients.
    pub region: String,
    /// Replication factor R (default: 3 with at least 3 drives, else the number of drives).
    pub replication_factor: Option<usize>,
    /// Write quorum W (default: a majority of R).
    pub write_quorum: Option<usize>,
    /// Remote targets: `nvme-tcp://host:port/NQN`, `nvme-tcp://host:port` (ask its discovery
    /// controller), or `zns-file://PATH`. Empty: the embedded default.
    pub targets: Vec<String>,
    /// Host NQN this server connects to targets as.
    pub host_nqn: Option<String>,
    /// Users.
    pub users: Vec<User>,
    /// Base domains for virtual-hosted-style requests.
    pub domains: Vec<String>,
    /// GC.
    pub gc: GcSection,
    /// Repair and scrub.
    pub replication: ReplicationSection,
    /// The NVMe/TCP host's probe of silent targets.
    pub fabric: FabricSection,
    /// Uploads in progress.
    pub multipart: MultipartSection,
    /// HTTPS.
    pub tls: Option<TlsSection>,
    /// Embedded drives.
    pub embedded: EmbeddedSection,
    /// Seconds a copy (CopyObject, UploadPartCopy) runs before its 200 begins, kept alive with
    /// whitespace until the result follows (0: at once).
    pub copy_keep_alive_secs: u64,
    /// Most S3 connections one client address (an IPv4 address, an IPv6 /64) may hold at
    /// once, so that one client cannot take every connection from the others. Default: a
    /// quarter of what the server serves at once; 0: no such cap (behind a load balancer or
    /// NAT, whose connections all come from a few addresses).
    pub per_client_connections: Option<usize>,
    /// Whether requests signed with Signature Version 2 are taken (boto3 presigns URLs with it
    /// by default). SigV2 leaves some query parameters unsigned, among them a few that choose
    /// the operation: a captured request can be replayed as another. Off where no client
    /// needs it.
    pub sigv2: bool,
    /// Keys the command line set, each with its flag (never read from a file): a problem with
    /// one names the flag too.
    #[serde(skip)]
    pub set_by_flags: Vec<(String, String)>,
    /// The top-level keys the configuration file gave (none without a file): what the file
    /// says is not overridden by an environment variable.
    #[serde(skip)]
    pub file_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9000".into(),
            admin_listen: None,
            data_dir: PathBuf::from("./zonestore-data"),
            index_dir: None,
            region: "us-east-1".into(),
            replication_factor: None,
            write_quorum: None,
            targets: Vec::new(),
            host_nqn: None,
            users: Vec::new(),
            domains: vec!["localhost".into()],
            gc: GcSection::default(),
            replication: ReplicationSection::default(),
            fabric: FabricSection::default(),
            multipart: MultipartSection::default(),
            tls: None,
            embedded: EmbeddedSection::default(),
            copy_keep_alive_secs: 5,
            per_client_connections: None,
            sigv2: true,
            set_by_flags: Vec::new(),
            file_keys: Vec::new(),
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The key (or file).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// The dotted key (`gc.low_watermark`) of the `key = value` line holding byte `offset` of a
/// TOML `text`, with the table its line is in; None where that line is no such line (inside a
/// multi-line array, say).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (name, _) = line.split_once('=')?;
    let name = name.trim().trim_matches('"');
    let is_bare = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if !is_bare(name) {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(|l| {
        // A header may be followed by a comment (`[tls]   # or --tls-cert`).
        let l = l.split_once('#').map_or(l, |(header, _)| header).trim();
        l.strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .map(|t| t.trim_matches(['[', ']']).trim().to_string())
    });
    Some(match table {
        Some(table) if is_bare(&table) => format!("{table}.{name}"),
        _ => name.to_string(),
    })
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// A target to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    /// A subsystem over NVMe/TCP.
    NvmeTcp {
        /// Address (a host name is resolved at every connection attempt).
        address: TargetAddress,
        /// Subsystem NQN; `None`: every subsystem its discovery controller lists.
        nqn: Option<String>,
    },
    /// A local emulated drive, without the fabric.
    ZnsFile(PathBuf),
}

impl TargetUrl {
    /// Parses `nvme-tcp://host:port[/NQN]` or `zns-file://PATH`.
    pub fn parse(text: &str) -> Result<TargetUrl, String> {
        if let Some(rest) = text.strip_prefix("nvme-tcp://") {
            let (addr, nqn) = rest.split_once('/').map_or((rest, None), |(a, n)| {
                (a, Some(n.to_string()).filter(|n| !n.is_empty()))
            });
            let address: TargetAddress = addr.parse()?;
            if let Some(n) = &nqn {
                fabric::target::validate_nqn(n).map_err(|e| e.to_string())?;
            }
            Ok(TargetUrl::NvmeTcp { address, nqn })
        } else if let Some(path) = text.strip_prefix("zns-file://") {
            if path.is_empty() {
                return Err("zns-file:// needs a directory path".into());
            }
            Ok(TargetUrl::ZnsFile(PathBuf::from(path)))
        } else {
            Err(format!(
                "{text:?} is not a target URL (nvme-tcp://host:port/NQN, nvme-tcp://host:port or zns-file://PATH)"
            ))
        }
    }
}

/// Longest wait for a slow copy's read before another copy is read too
/// (`replication.hedge_after_ms`): below the engine's 10 s read timeout, past which the read
/// fails over anyway.
const MAX_HEDGE_AFTER_MS: u64 = 5_000;

/// Longest wait for a slow copy of a write (`replication.slow_write_grace_ms`): below the
/// NVMe/TCP host's 30 s command timeout, past which the command fails anyway.
const MAX_SLOW_WRITE_GRACE_MS: u64 = 20_000;

/// Longest a target may be silent before it is probed (`fabric.probe_after_ms`): the NVMe/TCP
/// host's 30 s command timeout fails the commands by then anyway.
const MAX_PROBE_AFTER_MS: u64 = 30_000;

/// Longest a probe may go unanswered (`fabric.probe_answer_within_ms`): the host's keep-alive
/// (every 2.5 s) resets a connection whose Keep Alive goes unanswered for 3.75 s anyway.
const MAX_PROBE_ANSWER_MS: u64 = 3_750;

/// Shortest repair grace accepted (`replication.repair_grace_secs`).
const MIN_REPAIR_GRACE_SECS: u64 = 10;

/// `path` made absolute with `..` taken away and symbolic links (of the part that exists)
/// followed, as the kernel would resolve it: two spellings of one directory compare equal.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = std::path::PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => {
                out.push(other);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
        }
    }
    out
}

/// Refuses an index directory that is the data directory or overlaps a drive's directory (the
/// embedded drives, a `zns-file` target): `recover --rebuild-index` moves the whole index
/// directory aside, and would carry the drives (and the credentials) with it.
fn check_index_dir(
    index_dir: &std::path::Path,
    data_dir: &std::path::Path,
    targets: &[TargetUrl],
) -> Result<(), ConfigError> {
    let absolute = resolved;
    let index = absolute(index_dir);
    let mut drives = vec![absolute(&data_dir.join("drives"))];
    for t in targets {
        if let TargetUrl::ZnsFile(path) = t {
            drives.push(absolute(path));
        }
    }
    if index == absolute(data_dir) {
        return Err(bad(
            "index_dir",
            "must not be the data directory itself (the default is <data_dir>/index)",
        ));
    }
    for drive in drives {
        if index.starts_with(&drive) || drive.starts_with(&index) {
            return Err(bad(
                "index_dir",
                format!(
                    "{} overlaps the drive directory {}",
                    index.display(),
                    drive.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Checked {
    /// S3 address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// Targets (empty: embedded).
    pub targets: Vec<TargetUrl>,
    /// Index directory.
    pub index_dir: PathBuf,
    /// Embedded zone size in bytes.
    pub embedded_zone_bytes: u64,
    /// GC policy.
    pub gc_policy: Policy,
}

/// Most emulated drives the embedded default runs (each with its in-process target).
const MAX_EMBEDDED_DRIVES: usize = 64;

impl Config {
    /// The replication factor R and write quorum W for `drive_count` drives: the configured
    /// values, or R = 3 with at least 3 drives (else the number of drives) and W = a majority
    /// of R.
    pub fn replication_for(&self, drive_count: usize) -> Result<(usize, usize), ConfigError> {
        let (mut replicas, mut quorum) = crate::engine::default_replication(drive_count);
        if let Some(r) = self.replication_factor {
            if r > drive_count {
                return Err(bad(
                    "replication_factor",
                    format!("{r} copies need at least {r} drives; {drive_count} are attached"),
                ));
            }
            replicas = r;
            quorum = crate::engine::majority(r);
        }
        if let Some(w) = self.write_quorum {
            if w > replicas {
                return Err(bad(
                    "write_quorum",
                    format!("{w} exceeds the replication factor {replicas}"),
                ));
            }
            quorum = w;
        }
        Ok((replicas, quorum))
    }

    /// For a gateway about to attach `targets`: too few for the copies and write quorum asked
    /// for is refused before any drive is made or connected, when each names one drive (one
    /// asking a discovery controller may stand for several: counted once attached). The error
    /// names the flag that set the value, if one did. (Not for `recover`, which counts the
    /// drives the old index knows too.)
    pub fn check_replication_before_attaching(
        &self,
        targets: &[TargetUrl],
    ) -> Result<(), ConfigError> {
        let one_drive_each = targets
            .iter()
            .all(|t| !matches!(t, TargetUrl::NvmeTcp { nqn: None, .. }));
        if !targets.is_empty() && one_drive_each {
            self.replication_for(targets.len())
                .map_err(|e| self.naming_the_flag(e))?;
        }
        Ok(())
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(&path.display().to_string(), format!("cannot read: {e}")))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    let at = format!("{} line {line}", path.display());
                    match key_at(&text, s.start) {
                        Some(key) => format!("{key} ({at})"),
                        None => at,
                    }
                })
                .unwrap_or_else(|| path.display().to_string());
            bad(&key, e.message().to_string())
        })?;
        // (The text parsed as a whole just now: it is a table.)
        if let Ok(table) = text.parse::<toml::Table>() {
            config.file_keys = table.keys().cloned().collect();
        }
        Ok(config)
    }

    /// Whether the configuration file gave the top-level key `key`.
    pub fn file_sets(&self, key: &str) -> bool {
        self.file_keys.iter().any(|k| k == key)
    }

    /// Checks every value.
    pub fn check(&self) -> Result<Checked, ConfigError> {
        self.check_values().map_err(|e| self.naming_the_flag(e))
    }

    /// `e`, its key followed by the command-line flag that set it, if one did.
    pub fn naming_the_flag(&self, mut e: ConfigError) -> ConfigError {
        let flag = self.set_by_flags.iter().find(|(key, _)| {
            e.key == *key
                || e.key
                    .strip_prefix(key.as_str())
                    .is_some_and(|i| i.starts_with('['))
        });
        if let Some((_, flag)) = flag {
            e.key = format!("{} ({flag})", e.key);
        }
        e
    }

    /// Notes that the command line's `flag` set `key`, so that a problem with it names the flag.
    pub fn set_by_flag(&mut self, key: &str, flag: &str) {
        self.set_by_flags.push((key.to_string(), flag.to_string()));
    }

    fn check_values(&self) -> Result<Checked, ConfigError> {
        if !is_region(&self.region) {
            return Err(bad(
                "region",
                format!(
                    "{:?} is not a region name (lower-case letters, digits and dashes, like us-east-1)",
                    self.region
                ),
            ));
        }
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            bad(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:9000", self.listen),
            )
        })?;
        let admin_listen = match &self.admin_listen {
            Some(a) => a.parse().map_err(|_| {
                bad(
                    "admin_listen",
                    format!("{a:?} is not an address like 127.0.0.1:9001"),
                )
            })?,
            // Loopback unless asked otherwise: the admin API is plain HTTP, and its token
            // starts drains and GC runs.
            None => match listen.port().checked_add(1) {
                Some(port) => SocketAddr::new(
                    if listen.is_ipv6() {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    },
                    port,
                ),
                None => {
                    return Err(bad(
                        "admin_listen",
                        "listen uses port 65535, so the admin port (the next one) must be given",
                    ));
                }
            },
        };
        // One port on overlapping addresses (the same, or either on all of the machine's)
        // cannot serve both: found now, not once the drives are attached.
        let overlapping = admin_listen.ip() == listen.ip()
            || admin_listen.ip().is_unspecified()
            || listen.ip().is_unspecified();
        if admin_listen.port() == listen.port() && overlapping && listen.port() != 0 {
            return Err(bad(
                "admin_listen",
                format!(
                    "{admin_listen} takes the S3 port on the S3 address ({listen}) too: give the admin API a port of its own"
                ),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty"));
        }
        if let Some(r) = self.replication_factor
            && r == 0
        {
            return Err(bad("replication_factor", "must be at least 1"));
        }
        if let (Some(w), r) = (self.write_quorum, self.replication_factor) {
            if w == 0 {
                return Err(bad("write_quorum", "must be at least 1"));
            }
            if let Some(r) = r
                && w > r
            {
                return Err(bad(
                    "write_quorum",
                    format!("{w} exceeds the replication factor {r}"),
                ));
            }
        }
        // The embedded drives are counted before any is made: too few for the copies asked for
        // is refused before their files are created.
        if self.targets.is_empty() {
            if self.embedded.drives == 0 {
                return Err(bad("embedded.drives", "needs at least 1 drive"));
            }
            self.replication_for(self.embedded.drives)?;
        }
        if let Some(nqn) = &self.host_nqn {
            fabric::target::validate_nqn(nqn).map_err(|e| bad("host_nqn", e.to_string()))?;
        }
        let mut targets = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            targets.push(TargetUrl::parse(t).map_err(|e| bad(&format!("targets[{i}]"), e))?);
        }
        for (i, u) in self.users.iter().enumerate() {
            if let Some(problem) = credentials_problem(&u.access_key, &u.secret_key) {
                return Err(bad(&format!("users[{i}]"), problem));
            }
            if self.users[..i].iter().any(|v| v.access_key == u.access_key) {
                return Err(bad(
                    &format!("users[{i}]"),
                    format!(
                        "access_key {} is given twice: each user needs a key of their own",
                        u.access_key
                    ),
                ));
            }
        }
        // Rates in MiB/s and intervals in hours are turned into bytes and seconds.
        for (key, value, max) in [
            ("gc.rate_mib_per_sec", self.gc.rate_mib_per_sec, 1 << 24),
            (
                "replication.repair_rate_mib_per_sec",
                self.replication.repair_rate_mib_per_sec,
                1 << 24,
            ),
            (
                "replication.scrub_rate_mib_per_sec",
                self.replication.scrub_rate_mib_per_sec,
                1 << 24,
            ),
            (
                "replication.scrub_interval_hours",
                self.replication.scrub_interval_hours,
                24 * 365 * 100,
            ),
            (
                "multipart.abort_after_hours",
                self.multipart.abort_after_hours,
                24 * 365 * 100,
            ),
        ] {
            if value > max {
                return Err(bad(
                    key,
                    format!("{value} is more than the most allowed, {max}"),
                ));
            }
        }
        let g = &self.gc;
        if !(0.0..1.0).contains(&g.low_watermark) {
            return Err(bad(
                "gc.low_watermark",
                "must be a fraction between 0 and 1",
            ));
        }
        if !(g.low_watermark..1.0).contains(&g.high_watermark) {
            return Err(bad(
                "gc.high_watermark",
                "must be at least gc.low_watermark and less than 1 (GC emptying every zone would move live data all the time)",
            ));
        }
        for (key, value, max, why) in [
            (
                "replication.hedge_after_ms",
                self.replication.hedge_after_ms,
                MAX_HEDGE_AFTER_MS,
                "a read fails over after 10 s anyway",
            ),
            (
                "replication.slow_write_grace_ms",
                self.replication.slow_write_grace_ms,
                MAX_SLOW_WRITE_GRACE_MS,
                "an NVMe/TCP command times out after 30 s anyway",
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err(bad(
                    key,
                    format!("{value} is not between 1 and {max} ms ({why})"),
                ));
            }
        }
        for (key, value, least, most, why) in [
            (
                "fabric.probe_after_ms",
                self.fabric.probe_after_ms,
                0,
                MAX_PROBE_AFTER_MS,
                "an NVMe/TCP command times out after 30 s anyway",
            ),
            (
                "fabric.probe_answer_within_ms",
                self.fabric.probe_answer_within_ms,
                1,
                MAX_PROBE_ANSWER_MS,
                "the keep-alive resets a connection whose Keep Alive goes unanswered for 3.75 s anyway",
            ),
        ] {
            if !(least..=most).contains(&value) {
                return Err(bad(
                    key,
                    format!("{value} is not between {least} and {most} ms ({why})"),
                ));
            }
        }
        if self.replication.repair_grace_secs < MIN_REPAIR_GRACE_SECS {
            return Err(bad(
                "replication.repair_grace_secs",
                format!(
                    "must be at least {MIN_REPAIR_GRACE_SECS}: a drive that reconnects after a blip would have all its copies made again"
                ),
            ));
        }
        for domain in &self.domains {
            let d = domain.trim_end_matches('.');
            if d.is_empty() || d.contains([':', '/']) || d.chars().any(char::is_whitespace) {
                return Err(bad(
                    "domains",
                    format!(
                        "{domain:?} is not a domain name (like s3.example.com, without a port)"
                    ),
                ));
            }
        }
        let gc_policy = g.policy.parse().map_err(|e: String| bad("gc.policy", e))?;
        let embedded_zone_bytes =
            parse_size(&self.embedded.zone_size).map_err(|e| bad("embedded.zone_size", e))?;
        if !embedded_zone_bytes.is_power_of_two() || embedded_zone_bytes < (1 << 20) {
            return Err(bad(
                "embedded.zone_size",
                "must be a power of two of at least 1M",
            ));
        }
        if self.embedded.zones < 8 {
            return Err(bad("embedded.zones", "a drive needs at least 8 zones"));
        }
        if self.embedded.drives > MAX_EMBEDDED_DRIVES {
            return Err(bad(
                "embedded.drives",
                format!("at most {MAX_EMBEDDED_DRIVES} drives"),
            ));
        }
        if self.embedded.zones > zns::MAX_ZONES {
            return Err(bad(
                "embedded.zones",
                format!("at most {} zones per drive", zns::MAX_ZONES),
            ));
        }
        // The drive as a whole (its size in bytes), before anything is made of it.
        zns::Geometry::new(self.embedded.zones, embedded_zone_bytes)
            .validate()
            .map_err(|e| bad("embedded.zones", format!("with embedded.zone_size: {e}")))?;
        if let Some(tls) = &self.tls {
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.exists() {
                    return Err(bad(key, format!("{} does not exist", path.display())));
                }
            }
        }
        let index_dir = self
            .index_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("index"));
        check_index_dir(&index_dir, &self.data_dir, &targets)?;
        Ok(Checked {
            listen,
            admin_listen,
            targets,
            index_dir,
            embedded_zone_bytes,
            gc_policy,
        })
    }
}

/// What is wrong with a user's credentials, if anything. An access key is sent in SigV4's
/// `Credential=KEY/date/region/s3/aws4_request`, so it cannot hold a `/` (nor a `,` or `=`, nor
/// spaces, which the header's syntax takes apart): letters, digits, `.`, `_` and `-`, as every
/// S3 client accepts. A secret key is printable ASCII without spaces at its ends (clients
/// read it from files and environment variables that would lose them).
pub fn credentials_problem(access_key: &str, secret_key: &str) -> Option<String> {
    if access_key.is_empty() || secret_key.is_empty() {
        return Some("access_key and secret_key must not be empty".into());
    }
    if access_key.len() > 128
        || !access_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some(format!(
            "access_key {access_key:?} must be at most 128 letters, digits, '.', '_' or '-' (it is sent in every request's signature scope, which '/', ',', '=' and spaces would break)"
        ));
    }
    if !secret_key
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ')
        || secret_key.trim() != secret_key
    {
        return Some("secret_key must be printable ASCII, with no spaces at its ends".into());
    }
    None
}

/// Whether `region` can be a SigV4 scope's region: lower-case letters, digits and dashes.
fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        assert_eq!(
            TargetUrl::parse("nvme-tcp://127.0.0.1:4420/nqn.2026-01.io.zonestore:d0").unwrap(),
            TargetUrl::NvmeTcp {
                address: "127.0.0.1:4420".parse().unwrap(),
                nqn: Some("nqn.2026-01.io.zonestore:d0".into())
            }
        );
        assert_eq!(
            TargetUrl::parse("nvme-tcp://127.0.0.1:8009").unwrap(),
            TargetUrl::NvmeTcp {
                address: "127.0.0.1:8009".parse().unwrap(),
                nqn: None
            }
        );
        // Names are resolved when connecting, not here: one that does not resolve yet is a
        // target unreachable for now, not a configuration error.
        assert_eq!(
            TargetUrl::parse("nvme-tcp://node7.invalid:4420/nqn.2026-01.io.zonestore:d7").unwrap(),
            TargetUrl::NvmeTcp {
                address: fabric::host::TargetAddress::new("node7.invalid", 4420),
                nqn: Some("nqn.2026-01.io.zonestore:d7".into())
            }
        );
        assert!(
            TargetUrl::parse("nvme-tcp://node 7:4420")
                .unwrap_err()
                .contains("not a host:port address")
        );
        assert_eq!(
            TargetUrl::parse("zns-file:///data/d0").unwrap(),
            TargetUrl::ZnsFile("/data/d0".into())
        );
        assert!(
            TargetUrl::parse("http://x")
                .unwrap_err()
                .contains("not a target URL")
        );
        for bad in ["bogus", "nqn.x y", &format!("nqn.{}", "x".repeat(220))] {
            assert!(
                TargetUrl::parse(&format!("nvme-tcp://127.0.0.1:4420/{bad}"))
                    .unwrap_err()
                    .contains("invalid NQN"),
                "{bad}"
            );
        }
    }

    #[test]
    fn direct_writes_is_off_unless_asked_for() {
        assert!(!Config::default().embedded.direct_writes);
        let c: Config = toml::from_str("[embedded]\ndirect_writes = true").unwrap();
        assert!(c.embedded.direct_writes);
        let e = toml::from_str::<Config>("[embedded]\ndirect_writes = \"yes\"").unwrap_err();
        assert!(e.to_string().contains("direct_writes"), "{e}");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e: Result<Config, _> = toml::from_str("listen = 5");
        assert!(e.is_err());
        let e: Result<Config, _> = toml::from_str("lisen = \"x\"");
        assert!(e.unwrap_err().to_string().contains("lisen"));
        let c: Config = toml::from_str(
            "listen = \"127.0.0.1:9000\"\ntargets = [\"ftp://x\"]\n[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"",
        )
        .unwrap();
        assert_eq!(c.check().unwrap_err().key, "targets[0]");
        let c: Config = toml::from_str(
            "[gc]\nlow_watermark = 2.0\n[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"",
        )
        .unwrap();
        assert_eq!(c.check().unwrap_err().key, "gc.low_watermark");
        let c: Config = toml::from_str("replication_factor = 2\nwrite_quorum = 3\n[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"").unwrap();
        assert_eq!(c.check().unwrap_err().key, "write_quorum");
        let c: Config = toml::from_str("listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"").unwrap();
        assert_eq!(c.check().unwrap_err().key, "admin_listen");
        let c: Config = toml::from_str("[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"\n[[users]]\naccess_key = \"a\"\nsecret_key = \"c\"").unwrap();
        let e = c.check().unwrap_err();
        assert_eq!(e.key, "users[1]");
        assert!(e.problem.contains("twice"), "{}", e.problem);
        // Credentials SigV4 could never carry, and a region no scope can name.
        for (access, secret, says) in [
            ("team/a", "s", "access_key"),
            ("AKIA KEY", "s", "access_key"),
            ("a,b", "s", "access_key"),
            ("a", " padded ", "secret_key"),
            ("a", "tab\\there", "secret_key"),
        ] {
            let c: Config = toml::from_str(&format!(
                "[[users]]\naccess_key = \"{access}\"\nsecret_key = \"{secret}\""
            ))
            .unwrap();
            let e = c.check().unwrap_err();
            assert_eq!(e.key, "users[0]", "{access:?} {secret:?}");
            assert!(e.problem.contains(says), "{}", e.problem);
        }
        let fine = credentials_problem("AKIA.team_a-1", "wJalr/XUtn+FEMI=K7MDENG");
        assert_eq!(fine, None);
        let c: Config = toml::from_str(
            "region = \"US East\"\n[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"",
        )
        .unwrap();
        assert_eq!(c.check().unwrap_err().key, "region");
        for (setting, key) in [
            ("zones = 4000000000", "embedded.zones"),
            ("zones = 7", "embedded.zones"),
            // Each a size allowed, together a drive larger than any file.
            ("zones = 1048576\nzone_size = \"16T\"", "embedded.zones"),
            ("drives = 100000", "embedded.drives"),
            // No drives at all is what is wrong, not the copies they cannot hold.
            ("drives = 0", "embedded.drives"),
        ] {
            let c: Config = toml::from_str(&format!(
                "[embedded]\n{setting}\n[[users]]\naccess_key = \"a\"\nsecret_key = \"b\""
            ))
            .unwrap();
            assert_eq!(c.check().unwrap_err().key, key, "{setting}");
        }
        // Set on the command line, a value is named by its flag too.
        let mut c = Config::default();
        c.embedded.zone_size = "3M".into();
        c.set_by_flag("embedded.zone_size", "--zone-size");
        c.targets = vec!["nowhere".into()];
        c.set_by_flag("targets", "--target");
        assert_eq!(c.check().unwrap_err().key, "targets[0] (--target)");
        c.targets.clear();
        assert_eq!(
            c.check().unwrap_err().key,
            "embedded.zone_size (--zone-size)"
        );
    }

    #[test]
    fn dangerous_values_and_overlapping_directories_are_named() {
        let users = "[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"\n";
        let key_of = |extra: &str| {
            let c: Config = toml::from_str(&format!("{extra}{users}")).unwrap();
            c.check().err().map(|e| e.key)
        };
        assert_eq!(key_of(""), None);
        assert_eq!(
            key_of("[gc]\nhigh_watermark = 1.0\n").as_deref(),
            Some("gc.high_watermark")
        );
        assert_eq!(
            key_of("[replication]\nrepair_grace_secs = 0\n").as_deref(),
            Some("replication.repair_grace_secs")
        );
        assert_eq!(key_of("[replication]\nrepair_grace_secs = 30\n"), None);
        for (key, max) in [("hedge_after_ms", 5_000), ("slow_write_grace_ms", 20_000)] {
            for bad in [0, max + 1] {
                assert_eq!(
                    key_of(&format!("[replication]\n{key} = {bad}\n")).as_deref(),
                    Some(format!("replication.{key}").as_str()),
                );
            }
            assert_eq!(key_of(&format!("[replication]\n{key} = 250\n")), None);
        }
        assert_eq!(
            key_of("[multipart]\nabort_after_hours = 876001\n").as_deref(),
            Some("multipart.abort_after_hours")
        );
        assert_eq!(key_of("[multipart]\nabort_after_hours = 0\n"), None);
        for (key, least, most) in [
            ("probe_after_ms", 0u64, 30_000),
            ("probe_answer_within_ms", 1, 3_750),
        ] {
            for bad in [least.checked_sub(1), Some(most + 1)].into_iter().flatten() {
                assert_eq!(
                    key_of(&format!("[fabric]\n{key} = {bad}\n")).as_deref(),
                    Some(format!("fabric.{key}").as_str()),
                );
            }
            for good in [least, most] {
                assert_eq!(key_of(&format!("[fabric]\n{key} = {good}\n")), None);
            }
        }
        for domain in ["s3.example.com:9000", "", "a b", "s3.example.com/x"] {
            assert_eq!(
                key_of(&format!("domains = [{domain:?}]\n")).as_deref(),
                Some("domains"),
                "{domain:?}"
            );
        }
        assert_eq!(key_of("domains = [\"S3.Example.com.\"]\n"), None);
        assert_eq!(key_of("host_nqn = \"gw1\"\n").as_deref(), Some("host_nqn"));
        assert_eq!(key_of("host_nqn = \"nqn.2026-01.io.example:gw1\"\n"), None);
        assert_eq!(key_of("data_dir = \"\"\n").as_deref(), Some("data_dir"));
        let dirs = |data: &str, index: &str, targets: &str| {
            key_of(&format!(
                "data_dir = {data:?}\nindex_dir = {index:?}\ntargets = [{targets}]\n"
            ))
        };
        assert_eq!(dirs("/srv/zs", "/srv/zs", "").as_deref(), Some("index_dir"));
        assert_eq!(
            dirs("/srv/zs", "/srv/zs/drives/d0/idx", "").as_deref(),
            Some("index_dir")
        );
        assert_eq!(
            dirs("/srv/zs", "/srv/d1/index", "\"zns-file:///srv/d1\"").as_deref(),
            Some("index_dir")
        );
        assert_eq!(
            dirs("/srv/zs", "/srv", "\"zns-file:///srv/d1\"").as_deref(),
            Some("index_dir")
        );
        assert_eq!(
            dirs("/srv/zs", "/fast/index", "\"zns-file:///srv/d1\""),
            None
        );
        // Other spellings of the same directories: `..`, and a symbolic link.
        assert_eq!(
            dirs("/srv/zs", "/srv/zs/../zs", "").as_deref(),
            Some("index_dir")
        );
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let (data, link) = (data.to_str().unwrap(), link.to_str().unwrap());
        assert_eq!(dirs(data, link, "").as_deref(), Some("index_dir"));
        assert_eq!(
            dirs(link, &format!("{data}/drives/x"), "").as_deref(),
            Some("index_dir")
        );
        assert_eq!(dirs(link, &format!("{data}/index"), ""), None);
    }

    #[test]
    fn rates_too_large_to_count_in_bytes_and_port_65535_are_named() {
        let users = "[[users]]\naccess_key = \"a\"\nsecret_key = \"b\"\n";
        let c: Config =
            toml::from_str(&format!("{users}[gc]\nrate_mib_per_sec = 17592186044416\n")).unwrap();
        assert_eq!(c.check().unwrap_err().key, "gc.rate_mib_per_sec");
        let c: Config = toml::from_str(&format!(
            "{users}[replication]\nscrub_interval_hours = 18446744073709551615\n"
        ))
        .unwrap();
        assert_eq!(
            c.check().unwrap_err().key,
            "replication.scrub_interval_hours"
        );
        let c: Config = toml::from_str(&format!("listen = \"127.0.0.1:65535\"\n{users}")).unwrap();
        assert_eq!(c.check().unwrap_err().key, "admin_listen");
    }

    #[test]
    fn a_bad_key_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nno_such_key = 1\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.key.ends_with("line 2)"), "{}", e.key);
        assert!(e.key.starts_with("no_such_key ("), "{}", e.key);
        // A value of the wrong type is named by its key too, with its table.
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n\n[gc]\nlow_watermark = \"0.1\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.key.starts_with("gc.low_watermark ("), "{}", e.key);
        assert!(e.key.ends_with("line 4)"), "{}", e.key);
        // A table header with a comment after it (as in the README's sample) names its table.
        std::fs::write(
            &path,
            "[gc]\nlow_watermark = 0.1\n# [tls]\n[embedded]   # the drives\nzones = \"256\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.key.starts_with("embedded.zones ("), "{}", e.key);
    }

    /// The README's sample configuration is one this binary reads: every key known, every
    /// value of its type.
    #[test]
    fn the_readme_sample_configuration_loads() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let (_, after) = readme.split_once("```toml\n").expect("a TOML sample");
        let (sample, _) = after.split_once("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zonestore.toml");
        std::fs::write(&path, sample).unwrap();
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {}", e.key, e.problem));
        assert_eq!((c.embedded.drives, c.targets.len()), (3, 3));
    }

    #[test]
    fn replication_defaults_to_three_copies_and_a_majority() {
        let mut c = Config::default();
        assert_eq!(c.replication_for(1).unwrap(), (1, 1));
        assert_eq!(c.replication_for(2).unwrap(), (2, 2));
        assert_eq!(c.replication_for(5).unwrap(), (3, 2));
        c.replication_factor = Some(5);
        assert_eq!(c.replication_for(5).unwrap(), (5, 3));
        assert_eq!(c.replication_for(4).unwrap_err().key, "replication_factor");
        c.write_quorum = Some(1);
        assert_eq!(c.replication_for(5).unwrap(), (5, 1));
    }

    /// Mistakes found before anything is made or bound: copies beyond the embedded drives, an
    /// admin port that the S3 listener takes on an overlapping address.
    #[test]
    fn checks_catch_what_would_fail_after_the_drives_are_made() {
        let mut c = Config {
            replication_factor: Some(4),
            ..Config::default()
        };
        assert_eq!(c.check().unwrap_err().key, "replication_factor");
        c.replication_factor = None;
        c.listen = "0.0.0.0:9000".into();
        c.admin_listen = Some("127.0.0.1:9000".into());
        assert_eq!(c.check().unwrap_err().key, "admin_listen");
        c.admin_listen = Some("127.0.0.1:9001".into());
        assert!(c.check().is_ok());
        // A gateway counts targets that each name one drive as it counts the embedded drives,
        // before any is made or connected, and names the flag; one asking a discovery
        // controller for its subsystems is counted once attached.
        c.targets = vec![
            "zns-file:///a".into(),
            "nvme-tcp://127.0.0.1:4420/nqn.2026-01.io.zonestore:x".into(),
        ];
        c.replication_factor = Some(3);
        c.set_by_flag("replication_factor", "--replicas");
        let checked = c.check().unwrap();
        let e = c
            .check_replication_before_attaching(&checked.targets)
            .unwrap_err();
        assert_eq!(e.key, "replication_factor (--replicas)");
        c.targets.push("nvme-tcp://127.0.0.1:8009".into());
        let checked = c.check().unwrap();
        assert!(
            c.check_replication_before_attaching(&checked.targets)
                .is_ok()
        );
    }

    /// A replication factor of 0 is named as the mistake, also beside a write quorum.
    #[test]
    fn zero_copies_is_the_replication_factors_mistake() {
        let c = Config {
            replication_factor: Some(0),
            write_quorum: Some(1),
            ..Config::default()
        };
        let e = c.check().unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.problem.as_str()),
            ("replication_factor", "must be at least 1")
        );
    }
}
