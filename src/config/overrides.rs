//! What flags and environment variables say; they win over the file.

use std::path::PathBuf;

use super::raw::{LogFormat, ShutdownMode};
use crate::secret::Secret;

/// Values from flags and environment variables, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--worker-id`.
    pub worker_id: Option<String>,
    /// `--api-listen`.
    pub api_listen: Option<String>,
    /// `--api-key` / `BERTH_API_KEY` / `WARP_API_KEY`.
    pub api_key: Option<Secret>,
    /// `--api-key-file`.
    pub api_key_file: Option<PathBuf>,
    /// `--control-plane-url` / `BERTH_CONTROL_PLANE_URL`.
    pub control_plane_url: Option<String>,
    /// `--server-root-url`.
    pub server_root_url: Option<String>,
    /// `--max-concurrent-tasks`.
    pub max_concurrent_tasks: Option<u32>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `-e KEY[=VALUE]`.
    pub env: Vec<String>,
    /// `-v HOST:CONTAINER[:MODE]`.
    pub volumes: Vec<String>,
    /// `--no-cleanup`.
    pub no_cleanup: bool,
    /// `--idle-on-complete`.
    pub idle_on_complete: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), read for `api-key`.
    pub credentials_directory: Option<PathBuf>,
    /// `--shutdown-mode`.
    pub shutdown_mode: Option<ShutdownMode>,
    /// No API key anywhere is not an error (`check-config`: under the unit the key arrives as a
    /// credential only `berth run` sees); a key source that is set but unreadable still is.
    pub api_key_optional: bool,
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{load_yaml, with_key};
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let yaml = "worker_id: file-id\nmax_concurrent_tasks: 2\ncleanup: true\nlog:\n  level: warn\n  format: json\ncontrol_plane:\n  url: wss://file.example/ws\n";
        let c = load_yaml(yaml, &with_key()).unwrap();
        assert_eq!(
            (
                c.worker_id.as_str(),
                c.max_concurrent_tasks,
                c.log_level.as_str()
            ),
            ("file-id", 2, "warn")
        );
        let ov = Overrides {
            worker_id: Some("flag-id".into()),
            max_concurrent_tasks: Some(0),
            control_plane_url: Some("wss://flag.example/ws".into()),
            log_level: Some("debug".into()),
            log_format: Some(LogFormat::Text),
            no_cleanup: true,
            idle_on_complete: Some("5m".into()),
            ..with_key()
        };
        let c = load_yaml(yaml, &ov).unwrap();
        assert_eq!(c.worker_id, "flag-id");
        assert_eq!(c.max_concurrent_tasks, 0);
        assert_eq!(c.control_plane.url.as_str(), "wss://flag.example/ws");
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(!c.cleanup);
        assert_eq!(c.idle_on_complete.as_deref(), Some("5m"));
    }
}
