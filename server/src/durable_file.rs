//! Small files the server keeps in its data directory (credentials, the admin token, the
//! targets a discovery controller listed), written so that a crash at any moment leaves
//! either the old file or the whole new one: never an empty or torn one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path` (creating its directory), readable and writable with `mode`:
/// into a temporary file beside it, synced, then renamed over `path`, and the directory
/// synced so that the rename lasts.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = dir.join(name);
    // One a crash left behind goes (an existing file would keep its own mode).
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_dir(dir)
}

/// Makes the entries of `dir` (a file created, renamed or removed in it) durable. An empty
/// path is the current directory (the parent of a bare relative name).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The directory `path` is an entry of: its parent, or the current directory for a bare
/// relative name (whose [`Path::parent`] is empty, not `None`) or the root.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("token");
        replace(&path, b"first\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        // A temporary file a crash left behind does not get in the way.
        std::fs::write(dir.path().join("sub").join("token.tmp"), b"torn").unwrap();
        replace(&path, b"second\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("sub").join("token.tmp").exists());
    }

    #[test]
    fn a_bare_relative_name_is_an_entry_of_the_current_directory() {
        assert_eq!(parent_dir(Path::new("zs-index")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/zs-index")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/zs-index")), Path::new("/"));
        sync_dir(parent_dir(Path::new("zs-index"))).unwrap();
        sync_dir(Path::new("")).unwrap();
    }
}
