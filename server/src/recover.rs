//! `zonestore recover --rebuild-index`: rebuilds the whole index from a scan of the zones, into
//! a new directory, then swaps it in and keeps the old index aside.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::engine::recovery::{self, RebuildReport};
use crate::engine::{DriveSpec, EngineError, registered_drives};
use crate::targets::{self, AttachError};

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The configuration is wrong.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// Drives could not be attached.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The rebuild failed.
    #[error("rebuild: {0}")]
    Engine(#[from] EngineError),
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

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "index".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.{suffix}"))
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
/// Returns what the scan found and where the old index was kept.
pub async fn rebuild_index(
    config: &Config,
    progress: impl Fn(&str),
) -> Result<(RebuildReport, Option<PathBuf>), RecoverError> {
    let checked = config.check()?;
    let index_dir = checked.index_dir.clone();
    let has_old = index_dir.join("CURRENT").exists();
    let names = if has_old {
        match registered_drives(&index_dir) {
            Ok(names) => names,
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
    progress("attaching drives");
    // Every drive must answer: the rebuild reads all of them.
    let mut attached =
        targets::attach_configured(config, &checked, &targets::KnownDrives::new()).await?;
    let specs = in_registry_order(std::mem::take(&mut attached.specs), &names);
    let building = sibling(&index_dir, "rebuilding");
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|source| RecoverError::Io {
            what: format!("removing the interrupted rebuild {}", building.display()),
            source,
        })?;
    }
    let result = recovery::rebuild(&building, specs, &progress).await;
    attached.close().await;
    let report = result?;
    let kept = if has_old {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let old = sibling(&index_dir, &format!("old-{secs}"));
        std::fs::rename(&index_dir, &old).map_err(|source| RecoverError::Io {
            what: format!("moving the old index to {}", old.display()),
            source,
        })?;
        Some(old)
    } else {
        None
    };
    std::fs::rename(&building, &index_dir).map_err(|source| RecoverError::Io {
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
