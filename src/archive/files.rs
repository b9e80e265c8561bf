//! The capture directory `<directory>/oz-agent-worker/debug-logs` (PROTOCOL §8.4): mode 0700,
//! owned by berth's user, no symlink anywhere berth creates; snapshot files with random names,
//! created exclusively with mode 0600.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Older than any request can live (`expires_at` is at most 30 minutes after receipt): a
/// file this old is a left-over of a process that stopped mid-request.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(31 * 60);

/// The directory under the configured (or temp) one.
pub const SUBDIR: [&str; 2] = ["oz-agent-worker", "debug-logs"];

/// Why the capture directory cannot be used (archive capture is then off; tasks are not).
/// The messages never name the path (a local capture path is never logged); the operator
/// knows it from `debug_log_capture.directory`.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(
        "the debug archive directory (debug_log_capture.directory, or the system temp dir, under oz-agent-worker/debug-logs): {source}"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the debug archive directory (debug_log_capture.directory, or the system temp dir, under oz-agent-worker/debug-logs) is a symlink or is not owned by berth's user; remove it or set debug_log_capture.directory"
    )]
    Unsafe { path: PathBuf },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a symlink, a non-directory, or another user's directory.
fn check_dir(path: &Path) -> Result<(), FilesError> {
    let m = std::fs::symlink_metadata(path).map_err(io(path))?;
    let mine = m.uid() == nix::unistd::geteuid().as_raw();
    if m.file_type().is_symlink() || !m.is_dir() || !mine {
        return Err(FilesError::Unsafe {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The capture directory, checked.
#[derive(Debug, Clone)]
pub struct CaptureDir {
    path: PathBuf,
}

impl CaptureDir {
    /// Creates (or checks) the directory under `base` (`None`: the system temp dir) and
    /// proves it writable.
    pub fn prepare(base: Option<&Path>) -> Result<CaptureDir, FilesError> {
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let mut path = base;
        for part in SUBDIR {
            path.push(part);
            if !path.exists() {
                crate::private::create_dir(&path).map_err(io(&path))?;
            }
            check_dir(&path)?;
        }
        crate::private::tighten(&path, crate::private::DIR_MODE).map_err(io(&path))?;
        let dir = CaptureDir { path };
        let (probe, _) = dir.create()?;
        std::fs::remove_file(&probe).map_err(io(&probe))?;
        Ok(dir)
    }

    /// The directory (never logged by archive code: it is a local capture path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new file with a random name, created exclusively (an existing name or a symlink
    /// there fails) with mode 0600.
    pub fn create(&self) -> Result<(PathBuf, File), FilesError> {
        let path = self
            .path
            .join(format!("{}.ndjson", uuid::Uuid::new_v4().simple()));
        let f = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(crate::private::FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        Ok((path, f))
    }

    /// Deletes files last written more than `age` ago. Snapshot files live only for one
    /// request, so the journal owns none of them (captures of executions in their grace are the
    /// transcript spools under `state_dir`, which this never touches); a file younger than a
    /// request can live may be another berth's on the same host (the default directory is the
    /// shared temp dir), so callers pass [`LEFTOVER_AGE`]. Returns how many were removed.
    pub fn sweep(&self, age: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return 0;
        };
        let old = |e: &std::fs::DirEntry| {
            e.path()
                .symlink_metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|a| a >= age)
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
            .filter(old)
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_directory_and_files_are_private_and_names_random() {
        let base = tempfile::tempdir().unwrap();
        let d = CaptureDir::prepare(Some(base.path())).unwrap();
        assert_eq!(d.path(), base.path().join("oz-agent-worker/debug-logs"));
        assert_eq!(mode(d.path()), 0o700);
        let (a, _) = d.create().unwrap();
        let (b, _) = d.create().unwrap();
        assert_ne!(a, b);
        assert_eq!(mode(&a), 0o600);
        assert_eq!(
            d.sweep(LEFTOVER_AGE),
            0,
            "young files may be another berth's"
        );
        assert_eq!(d.sweep(std::time::Duration::ZERO), 2);
        assert!(!a.exists() && !b.exists());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("oz-agent-worker")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path(),
            base.path().join("oz-agent-worker/debug-logs"),
        )
        .unwrap();
        assert!(matches!(
            CaptureDir::prepare(Some(base.path())),
            Err(FilesError::Unsafe { .. })
        ));
    }

    #[test]
    fn an_unwritable_base_is_an_error_that_does_not_name_the_path() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = CaptureDir::prepare(Some(&file)).unwrap_err().to_string();
        assert!(!e.contains(&base.path().display().to_string()), "{e}");
        assert!(e.contains("debug_log_capture.directory"), "{e}");
    }
}
