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
    let dir = path.parent().unwrap_or(Path::new("."));
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

/// Makes the entries of `dir` (a file created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
}
