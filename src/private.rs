//! Files and directories under `state_dir` are private to berth's user: they hold task env
//! values (journal), task output (spools) and the admin token. Modes are set explicitly, not
//! left to the umask, so this holds outside systemd too, and state written by older versions
//! is tightened at start-up.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory berth creates under `state_dir`.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file berth creates under `state_dir`.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`], and tightens `dir` itself if it
/// already existed with a wider mode.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    tighten(dir, DIR_MODE)
}

/// Opens `path` for reading and writing, creating it with [`FILE_MODE`] (never truncating).
pub fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .create(create)
        .read(true)
        .write(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
}

/// Writes `bytes` to `path` (created with [`FILE_MODE`], replaced if it exists).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.write_all(bytes)?;
    tighten(path, FILE_MODE)
}

/// Replaces `path` with `bytes` atomically (a synced temporary file renamed over it), created
/// with [`FILE_MODE`]: a crash leaves the old content or the new, never half of either.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Removes group and other bits from `path` (a missing path is fine).
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Tightens `dir` and everything in it to [`DIR_MODE`] / [`FILE_MODE`] (start-up; sockets and
/// links are left alone: a socket's mode is the API's access control).
pub fn tighten_tree(dir: &Path) -> io::Result<()> {
    tighten(dir, DIR_MODE)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.filter_map(Result::ok) {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                tighten(&e.path(), DIR_MODE)?;
                stack.push(e.path());
            } else if t.is_file() {
                tighten(&e.path(), FILE_MODE)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn created_and_existing_paths_end_up_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        create_dir(&d).unwrap();
        assert_eq!((mode(&t.path().join("a")), mode(&d)), (0o700, 0o700));
        write(&d.join("f"), b"x").unwrap();
        drop(open_rw(&d.join("g"), true).unwrap());
        assert_eq!((mode(&d.join("f")), mode(&d.join("g"))), (0o600, 0o600));
        // Left by an older version with wide modes.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten_tree(t.path()).unwrap();
        assert_eq!((mode(&d), mode(&d.join("f"))), (0o700, 0o600));
        assert!(tighten(&t.path().join("missing"), FILE_MODE).is_ok());
    }
}
