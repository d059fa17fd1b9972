//! What each configured discovery controller listed the last time it answered, kept in the data
//! directory, so that a gateway can still start (and reconnect in the background) while a
//! storage node's discovery controller is unreachable.

use std::path::{Path, PathBuf};

use fabric::host::TargetAddress;

/// One subsystem a discovery controller listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The discovery controller's address (as configured).
    pub via: TargetAddress,
    /// Where the subsystem is served.
    pub address: TargetAddress,
    /// Its NQN.
    pub nqn: String,
}

fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("discovered-targets")
}

/// What was remembered (nothing if the file is missing; lines that do not parse are skipped).
pub fn load(data_dir: &Path) -> Vec<Listed> {
    let Ok(text) = std::fs::read_to_string(file(data_dir)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            Some(Listed {
                via: fields.next()?.parse().ok()?,
                address: fields.next()?.parse().ok()?,
                nqn: fields.next()?.to_string(),
            })
        })
        .collect()
}

/// Replaces what is remembered with `listed` (whole, durably: see [`crate::durable_file`]).
pub fn save(data_dir: &Path, listed: &[Listed]) -> std::io::Result<()> {
    let text: String = listed
        .iter()
        .map(|l| format!("{} {} {}\n", l.via, l.address, l.nqn))
        .collect();
    crate::durable_file::replace(&file(data_dir), text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_saved_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        let listed = vec![
            Listed {
                via: "10.0.0.1:8009".parse().unwrap(),
                address: "10.0.0.1:4420".parse().unwrap(),
                nqn: "nqn.2026-01.io.example:a".into(),
            },
            Listed {
                via: "10.0.0.1:8009".parse().unwrap(),
                address: "[fe80::1]:4421".parse().unwrap(),
                nqn: "nqn.2026-01.io.example:b".into(),
            },
        ];
        save(dir.path(), &listed).unwrap();
        assert_eq!(load(dir.path()), listed);
        std::fs::write(file(dir.path()), "garbage\n").unwrap();
        assert!(load(dir.path()).is_empty());
    }
}
