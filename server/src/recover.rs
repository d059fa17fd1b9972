//! `zonestore recover --rebuild-index`: rebuilds the whole index from a scan of the zones, into
//! a new directory, then swaps it in and keeps the old index aside.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::engine::recovery::{self, RebuildReport};
use crate::engine::{
    DriveSpec, EngineError, carry_over, known_drives, registered_drives, replacement_floor,
    revoked_writes,
};
use crate::targets::{self, AttachError, IfUnreachable};

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The configuration is wrong.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// Drives could not be attached.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A target could not be reached.
    #[error("{0}; to rebuild from the drives that answer, add --allow-missing-drives")]
    Unreachable(#[source] AttachError),
    /// The rebuild failed.
    #[error("rebuild: {0}")]
    Engine(#[from] EngineError),
    /// The data directory is another process's (a server running on it), or cannot be locked.
    #[error(transparent)]
    Lock(#[from] crate::data_lock::LockError),
    /// The data directory is not there.
    #[error("there is no data directory at {}: nothing to rebuild from (check --data)", .0.display())]
    NoDataDir(PathBuf),
    /// The index is open in a running server.
    #[error(
        "the index in {0} is in use (is `zonestore serve` running? stop it first: a rebuild replaces the index)"
    )]
    InUse(PathBuf),
    /// Too many drives cannot be reached to rebuild without losing acknowledged writes.
    #[error(
        "{} of {total} drives cannot be reached ({}); with write quorum {quorum} an acknowledged write may have every copy on them, so the index is not rebuilt without them",
        missing.len(), missing.join(", ")
    )]
    TooManyMissing {
        /// The drives (targets) that cannot be reached.
        missing: Vec<String>,
        /// Drives configured.
        total: usize,
        /// Write quorum W.
        quorum: usize,
    },
    /// Drives the old index registers hold records but are not configured.
    #[error(
        "{} not configured but holding records the index names ({}): configure them again, or add --allow-missing-drives to rebuild without them",
        if .0.len() == 1 { "a drive is" } else { "drives are" },
        .0.join(", ")
    )]
    NotConfigured(Vec<String>),
    /// Moving index directories failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Puts the rebuilt index (`building`) in place at `index_dir`, the old one (if any) moving to
/// `old`. Where the file system can, the two directories trade places in one atomic exchange,
/// so that no crash or signal leaves `index_dir` missing (a server started then would find an
/// empty index); elsewhere, two renames. The parent directory is synced, so the swap survives a
/// crash once this returns.
fn swap_in(building: &Path, index_dir: &Path, old: Option<&Path>) -> std::io::Result<()> {
    let parent = crate::durable_file::parent_dir(index_dir);
    // From here on the rebuilt index is whole: should the swap be cut short, the next start
    // (or rebuild) finishes it rather than begin anew or rebuild again.
    let mark = rebuilt_mark(index_dir);
    std::fs::write(&mark, building.as_os_str().as_encoded_bytes())?;
    std::fs::File::open(&mark)?.sync_all()?;
    crate::durable_file::sync_dir(parent)?;
    match old {
        None => std::fs::rename(building, index_dir)?,
        Some(old) => match exchange(building, index_dir) {
            // `building` now holds the old index.
            Ok(()) => std::fs::rename(building, old)?,
            // A failed exchange changed nothing (no support in the file system, a sandbox
            // refusing the call...): two renames.
            Err(_) => {
                std::fs::rename(index_dir, old)?;
                std::fs::rename(building, index_dir)?;
            }
        },
    }
    crate::durable_file::sync_dir(parent)?;
    std::fs::remove_file(&mark)?;
    crate::durable_file::sync_dir(parent)
}

/// The file that says the rebuilt index beside `index_dir` is whole and being swapped in.
fn rebuilt_mark(index_dir: &Path) -> PathBuf {
    sibling(index_dir, "rebuilt")
}

/// Finishes swapping in a whole rebuilt index, should a crash have cut the swap short with
/// `index_dir` missing or empty (between the two renames where the file system cannot
/// exchange directories, or before the only one): the rebuilt index moves into place. Returns
/// whether it did. (A mark left once the swap was done is removed.)
pub(crate) fn finish_interrupted_swap(index_dir: &Path) -> std::io::Result<bool> {
    let mark = rebuilt_mark(index_dir);
    if !mark.exists() {
        return Ok(false);
    }
    let parent = crate::durable_file::parent_dir(index_dir);
    let building = sibling(index_dir, "rebuilding");
    let finished = !holds_anything(index_dir) && building.is_dir();
    if finished {
        std::fs::rename(&building, index_dir)?;
        crate::durable_file::sync_dir(parent)?;
    }
    std::fs::remove_file(&mark)?;
    crate::durable_file::sync_dir(parent)?;
    Ok(finished)
}

/// Exchanges two paths atomically (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `dir` exists and holds anything.
pub(crate) fn holds_anything(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// `dir`'s sibling named after it with `.suffix` (where a rebuild builds, and keeps aside).
pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "index".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// Refuses, before hours of scanning, an index directory the rebuilt index cannot trade places
/// with: one that is a mount point (renaming it fails), or not a directory.
fn check_swappable(index_dir: &Path) -> Result<(), RecoverError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(index_dir) else {
        return Ok(());
    };
    let refuse = |why: String| RecoverError::Io {
        what: format!("rebuilding the index in {}", index_dir.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    };
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let parent = crate::durable_file::parent_dir(index_dir);
    if std::fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev()) {
        return Err(refuse(format!(
            "it is a mount point: the rebuilt index is built beside it and renamed into its place, so set index_dir to a directory inside the mount (such as {})",
            index_dir.join("index").display()
        )));
    }
    Ok(())
}

/// Orders `specs` as the old index registered them, so that every drive keeps its id.
fn in_registry_order(mut specs: Vec<DriveSpec>, names: &[String]) -> Vec<DriveSpec> {
    specs.sort_by_key(|s| {
        names
            .iter()
            .position(|n| *n == s.name)
            .unwrap_or(usize::MAX)
    });
    specs
}

/// Rebuilds the index of `config` from its drives, reporting progress through `progress`.
/// With `allow_missing`, drives that cannot be reached are left out, as long as fewer are
/// missing than the write quorum. Returns what the scan found and where the old index was kept.
pub async fn rebuild_index(
    config: &Config,
    allow_missing: bool,
    progress: impl Fn(&str),
) -> Result<(RebuildReport, Option<PathBuf>), RecoverError> {
    let checked = config.check()?;
    // A rebuild reads what is there: a data directory that is not (a mistyped --data) is
    // named, not made.
    if !config.data_dir.is_dir() {
        return Err(RecoverError::NoDataDir(config.data_dir.clone()));
    }
    // Held until the new index is in place: no server may start on the old one meanwhile.
    let _lock = crate::data_lock::DataDirLock::acquire(&config.data_dir)?;
    let index_dir = checked.index_dir.clone();
    if finish_interrupted_swap(&index_dir).map_err(|source| RecoverError::Io {
        what: format!(
            "finishing the swap of a rebuilt index into {}",
            index_dir.display()
        ),
        source,
    })? {
        progress(&format!(
            "an earlier rebuild was stopped while swapping its index in: it is now in {}",
            index_dir.display()
        ));
    }
    check_swappable(&index_dir)?;
    // Anything in the index directory is the old index (damaged, perhaps: what recover is
    // for), kept aside whole when the new one takes its place; only read where RocksDB can
    // read it.
    let has_old = holds_anything(&index_dir);
    let names = if has_old {
        match registered_drives(&index_dir) {
            Ok(names) => names,
            // RocksDB locks an open database's LOCK file: a server is using this index.
            Err(e) if lock_held(&e.to_string()) => {
                return Err(RecoverError::InUse(index_dir));
            }
            Err(e) => {
                progress(&format!(
                    "the old index cannot be read ({e}); drive ids follow the configuration order"
                ));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    // Where the old index's drive ids can be read, what records say they replaced is read with
    // them, as far as the old index trusted it.
    let replacement_floor = if names.is_empty() {
        0
    } else {
        replacement_floor(&index_dir).unwrap_or(0)
    };
    progress("attaching drives");
    // A local drive the old index registers is opened, never created anew, whatever is allowed.
    let registered: std::collections::HashSet<String> = names.iter().cloned().collect();
    // Every drive must answer, unless missing ones are allowed: drives the old index knows
    // then stay registered (to reconnect when the server runs), others are left out.
    let recorded = if names.is_empty() {
        targets::KnownDrives::new()
    } else {
        known_drives(&index_dir).unwrap_or_default()
    };
    let (known, if_unreachable) = if allow_missing {
        (recorded.clone(), IfUnreachable::LeaveOut)
    } else {
        (targets::KnownDrives::new(), IfUnreachable::Fail)
    };
    let mut attached = match targets::attach_configured(
        config,
        &checked,
        &known,
        &registered,
        if_unreachable,
        targets::LocalDrives::OpenOnly,
    )
    .await
    {
        Ok(attached) => attached,
        Err(e @ (AttachError::Target { .. } | AttachError::KnownEmbeddedMissing { .. })) => {
            return Err(RecoverError::Unreachable(e));
        }
        Err(e) => return Err(e.into()),
    };
    let specs = in_registry_order(std::mem::take(&mut attached.specs), &names);
    // A drive must be the one the old index knew by its name: rebuilding from another (a node
    // started on an empty data directory) would lose the copies on the real one.
    for spec in &specs {
        let known = recorded.get(&spec.name).and_then(|k| k.identity);
        if let (Some(known), Some(found)) = (known, spec.device.identity())
            && known != found
        {
            attached.close().await;
            return Err(RecoverError::Engine(EngineError::WrongDrive {
                drive: spec.name.clone(),
                known: crate::engine::hex_encode(&known),
                found: crate::engine::hex_encode(&found),
            }));
        }
    }
    // Drives the old index registers that the configuration leaves out: one that holds records
    // is missing, as `serve` would refuse to run without it (weighed against the write quorum,
    // and only with --allow-missing-drives); one that holds nothing was drained and removed.
    let unconfigured: Vec<String> = names
        .iter()
        .filter(|name| {
            !specs.iter().any(|s| &s.name == *name) && !attached.left_out_drives.contains(name)
        })
        .cloned()
        .collect();
    let unconfigured = if unconfigured.is_empty() {
        unconfigured
    } else {
        match crate::engine::drives_holding_records(&index_dir) {
            Ok(holding) => unconfigured
                .into_iter()
                .filter(|name| holding.contains(name))
                .collect(),
            Err(e) => {
                progress(&format!(
                    "the old index cannot say what {} hold ({e}): counted as missing",
                    unconfigured.join(", ")
                ));
                unconfigured
            }
        }
    };
    if !unconfigured.is_empty() && !allow_missing {
        attached.close().await;
        return Err(RecoverError::NotConfigured(unconfigured));
    }
    let left_out: Vec<String> = std::mem::take(&mut attached.left_out)
        .into_iter()
        .chain(unconfigured.iter().cloned())
        .collect();
    let total = specs.len() + left_out.len();
    let unavailable = || {
        specs
            .iter()
            .filter(|s| !s.device.is_available())
            .map(|s| s.name.clone())
    };
    let missing: Vec<String> = left_out.into_iter().chain(unavailable()).collect();
    // The same drives as the index names them.
    let missing_drives: Vec<String> = std::mem::take(&mut attached.left_out_drives)
        .into_iter()
        .chain(unconfigured)
        .chain(unavailable())
        .collect();
    if !missing.is_empty() {
        let (_, configured) = config.replication_for(total)?;
        // Writes were acknowledged with the lowest quorum the server ever ran with, which may
        // be lower than the configuration's now.
        let quorum = match crate::engine::lowest_write_quorum(&index_dir) {
            Ok(Some(lowest)) => lowest.min(configured),
            Ok(None) => configured,
            Err(e) => {
                progress(&format!(
                    "the old index does not say what write quorum writes had ({e}): going by the configuration's, {configured}"
                ));
                configured
            }
        };
        if missing.len() >= quorum {
            attached.close().await;
            return Err(RecoverError::TooManyMissing {
                missing,
                total,
                quorum,
            });
        }
        progress(&format!(
            "rebuilding without {} of {total} drives ({}): every acknowledged write has a copy on the others; repair restores the copies once the server runs",
            missing.len(),
            missing.join(", ")
        ));
    }
    let building = sibling(&index_dir, "rebuilding");
    if building.exists() {
        // An interrupted rebuild, or (after a crash in the middle of the swap) the old index:
        // set aside, never deleted here.
        let aside = sibling(&index_dir, &format!("interrupted-{}", unix_seconds()));
        std::fs::rename(&building, &aside).map_err(|source| RecoverError::Io {
            what: format!("setting {} aside", building.display()),
            source,
        })?;
        progress(&format!(
            "an earlier rebuild was interrupted: what it left is in {} (delete it when done)",
            aside.display()
        ));
    }
    // Records of writes that failed stay dead, if the old index still says which.
    let revoked = if has_old {
        revoked_writes(&index_dir).unwrap_or_else(|e| {
            progress(&format!(
                "the old index's list of failed writes cannot be read ({e}): a failed write whose records are on the drives may come back"
            ));
            Default::default()
        })
    } else {
        Default::default()
    };
    let result = recovery::rebuild_keeping_ids(
        &building,
        &names,
        replacement_floor,
        &missing_drives,
        specs,
        &revoked,
        allow_missing,
        &progress,
    )
    .await;
    attached.close().await;
    let report = result?;
    // Drives the rebuild did not read (left out at the attach, or unreachable at the scan).
    let mut unread = missing_drives.clone();
    unread.extend(report.left_out.iter().cloned());
    unread.sort();
    unread.dedup();
    if has_old {
        match carry_over(&index_dir, &building, !names.is_empty(), &unread) {
            Ok(carried) if !carried.is_empty() => {
                progress(&format!("kept from the old index: {}", carried.join(", ")))
            }
            Ok(_) => {}
            Err(e) => progress(&format!(
                "the old index's drains, lowest write quorum, sequence numbers and refusals of drives as another gateway's could not be carried over ({e}): start drains again if one was running, and do not configure a drive the old index refused until it is emptied"
            )),
        }
    }
    let kept = has_old.then(|| sibling(&index_dir, &format!("old-{}", unix_seconds())));
    swap_in(&building, &index_dir, kept.as_deref()).map_err(|source| RecoverError::Io {
        what: format!("moving the rebuilt index to {}", index_dir.display()),
        source,
    })?;
    progress(&format!(
        "rebuilt index in {}: {} records verified, {} damaged, {} buckets, {} objects ({} incomplete skipped), {} multipart uploads{}",
        index_dir.display(),
        report.records,
        report.damaged,
        report.buckets,
        report.objects,
        report.incomplete_objects,
        report.uploads,
        kept.as_ref()
            .map(|k| format!("; old index kept in {}", k.display()))
            .unwrap_or_default()
    ));
    Ok((report, kept))
}

/// Whether RocksDB's `error` says another process holds the database's lock (not any error
/// that happens to say "lock": "block checksum mismatch", a path through "/mnt/block0").
fn lock_held(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("while lock file") || error.contains("lock hold by current process")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index a server holds is told from a damaged one, whose errors may say "block".
    #[test]
    fn an_index_in_use_is_told_from_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let _open = crate::engine::index::Index::open(dir.path()).unwrap();
        let e = registered_drives(dir.path()).unwrap_err().to_string();
        assert!(lock_held(&e), "{e}");
        for damaged in [
            "Corruption: block checksum mismatch: stored = 1, computed = 2 in /i/000012.sst",
            "IO error: While open a file for random read: /mnt/block0/i/MANIFEST-000005",
        ] {
            assert!(!lock_held(damaged), "{damaged}");
        }
    }

    fn mark(dir: &Path, what: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("which"), what).unwrap();
    }

    fn which(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("which")).unwrap()
    }

    #[test]
    fn an_index_dir_the_rebuilt_index_cannot_trade_places_with_is_refused_first() {
        let root = tempfile::tempdir().unwrap();
        assert!(check_swappable(&root.path().join("none yet")).is_ok());
        std::fs::create_dir(root.path().join("index")).unwrap();
        assert!(check_swappable(&root.path().join("index")).is_ok());
        let file = root.path().join("a file");
        std::fs::write(&file, "x").unwrap();
        let e = check_swappable(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        // /proc is a mount point wherever it is mounted.
        if std::path::Path::new("/proc/self").exists() {
            let e = check_swappable(std::path::Path::new("/proc"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("mount point"), "{e}");
        }
    }

    /// A swap cut short by a crash, with the index directory missing or empty beside a whole
    /// rebuilt index, is finished; without the mark (a rebuild stopped before it was whole)
    /// nothing moves.
    #[test]
    fn a_swap_cut_short_is_finished_only_for_a_whole_rebuilt_index() {
        let root = tempfile::tempdir().unwrap();
        let (index, building, old) = (
            root.path().join("index"),
            root.path().join("index.rebuilding"),
            root.path().join("index.old-1"),
        );
        mark(&building, "half");
        assert!(!finish_interrupted_swap(&index).unwrap());
        assert!(!index.exists() && which(&building) == "half");

        // Between the two renames: the old index aside, the new one not yet in place.
        mark(&building, "new");
        mark(&old, "old");
        std::fs::write(rebuilt_mark(&index), "").unwrap();
        assert!(finish_interrupted_swap(&index).unwrap());
        assert_eq!((which(&index), which(&old)), ("new".into(), "old".into()));
        assert!(!building.exists() && !rebuilt_mark(&index).exists());

        // A mark left after the swap was done moves nothing (here a rebuilt index's leftover
        // old one waits in `building`, as after an exchange).
        mark(&building, "older");
        std::fs::write(rebuilt_mark(&index), "").unwrap();
        assert!(!finish_interrupted_swap(&index).unwrap());
        assert_eq!(
            (which(&index), which(&building)),
            ("new".into(), "older".into())
        );
        assert!(!rebuilt_mark(&index).exists());
    }

    #[test]
    fn the_rebuilt_index_trades_places_with_the_old_one() {
        let root = tempfile::tempdir().unwrap();
        let (index, building, old) = (
            root.path().join("index"),
            root.path().join("index.rebuilding"),
            root.path().join("index.old-1"),
        );
        mark(&index, "old");
        mark(&building, "new");
        swap_in(&building, &index, Some(&old)).unwrap();
        assert_eq!((which(&index), which(&old)), ("new".into(), "old".into()));
        assert!(!building.exists());
        // The exchange itself, where the file system has it: contents traded.
        mark(&building, "newer");
        match exchange(&building, &index) {
            Ok(()) => assert_eq!(
                (which(&index), which(&building)),
                ("newer".into(), "new".into())
            ),
            Err(e) => eprintln!("no atomic exchange here ({e}); swap_in used two renames"),
        }
        // No old index: a plain move.
        let fresh = root.path().join("fresh");
        swap_in(&building, &fresh, None).unwrap();
        assert!(!building.exists() && fresh.join("which").exists());
    }
}
