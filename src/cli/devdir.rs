//! Where `berth dev` keeps its state across runs, and how `status`, `logs`, `tasks` and
//! `cancel` find the dev worker without flags.
//!
//! One directory (default `$XDG_STATE_HOME/berth/dev`, else `~/.local/state/berth/dev`):
//! `worker/` is the dev worker's `state_dir` (journal, spools, admin token), so a task left
//! running by Ctrl-C is re-attached by the next `berth dev`; `control-plane.json` is the
//! embedded control plane's tasks and transcripts; `worker-api` holds the dev worker's local
//! API address while `berth dev` runs.

use std::path::{Path, PathBuf};

use berth::devserver::state::{Saved, State};
use tracing::warn;

/// The dev worker's local API address, while `berth dev` runs.
pub(super) const API_FILE: &str = "worker-api";
/// The embedded control plane's saved state.
pub(super) const CONTROL_PLANE_FILE: &str = "control-plane.json";
/// Directory under the dev root where the control plane keeps debug archives it received.
pub(super) const ARCHIVES_DIR: &str = "archives";

/// The default directory (pure): `$XDG_STATE_HOME/berth/dev`, else `$HOME/.local/state/berth/dev`,
/// else under the temporary directory.
pub(super) fn root_for(xdg_state_home: Option<&str>, home: Option<&str>, tmp: &Path) -> PathBuf {
    let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    match (nonempty(xdg_state_home), nonempty(home)) {
        (Some(x), _) => x.join("berth").join("dev"),
        (None, Some(h)) => h.join(".local/state/berth/dev"),
        (None, None) => tmp.join("berth-dev"),
    }
}

/// The default directory of this user.
pub(super) fn default_root() -> PathBuf {
    root_for(
        std::env::var("XDG_STATE_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
        &std::env::temp_dir(),
    )
}

/// The dev worker's `state_dir` under `root`.
pub(super) fn worker_state(root: &Path) -> PathBuf {
    root.join("worker")
}

/// The dev worker of the default directory: its address while `berth dev` runs, and its
/// state dir (for the spool) when the directory exists at all.
pub(super) fn find() -> (Option<String>, Option<PathBuf>) {
    let root = default_root();
    let api = std::fs::read_to_string(root.join(API_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let state = Some(worker_state(&root)).filter(|d| d.is_dir());
    (api, state)
}

/// The control plane's state of the last run; none on the first. An unreadable file is set
/// aside (never deleted) and the control plane starts empty.
pub(super) fn load_control_plane(path: &Path) -> State {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::default(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the dev control plane's state; starting empty");
            return State::default();
        }
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(saved) => State::restored(saved),
        Err(e) => {
            let aside = path.with_extension("json.unreadable");
            let _ = std::fs::rename(path, &aside);
            warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "the dev control plane's state is unreadable; set aside, starting empty");
            State::default()
        }
    }
}

/// Saves the control plane's state for the next run.
pub(super) fn save_control_plane(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let json = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    berth::private::write_atomic(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_dir_follows_xdg_then_home_then_tmp() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            root_for(Some("/x/state"), Some("/home/a"), tmp),
            Path::new("/x/state/berth/dev")
        );
        assert_eq!(
            root_for(Some(""), Some("/home/a"), tmp),
            Path::new("/home/a/.local/state/berth/dev")
        );
        assert_eq!(root_for(None, None, tmp), Path::new("/tmp/berth-dev"));
    }

    #[test]
    fn an_unreadable_control_plane_file_is_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CONTROL_PLANE_FILE);
        std::fs::write(&p, b"{not json").unwrap();
        let s = load_control_plane(&p);
        assert!(s.tasks().is_empty());
        assert!(dir.path().join("control-plane.json.unreadable").exists());
        assert!(load_control_plane(&p).tasks().is_empty(), "missing: empty");
    }
}
