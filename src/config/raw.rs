//! The file's schema as serde reads it: strict (unknown keys rejected), positions kept
//! (`Spanned`) so a later problem can name its line. Keyword values (pull policy, shutdown mode,
//! log format) are checked by serde itself, so their enums are both the schema and the result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// How images are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull on every task; a failed pull falls back to a local copy with a warning.
    Always,
    /// Pull only when the image is missing locally.
    IfNotPresent,
    /// Never pull; a missing image fails the task.
    Never,
}

/// What SIGTERM does to running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Leave task containers running; a restarted worker re-attaches to them.
    Preserve,
    /// Stop every task container and report `graceful_shutdown`.
    Cancel,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (journald / log shippers).
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) worker_id: Option<Spanned<String>>,
    pub(super) max_concurrent_tasks: Option<u32>,
    pub(super) idle_on_complete: Option<Spanned<String>>,
    pub(super) cleanup: Option<bool>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) control_plane: Option<RawControlPlane>,
    pub(super) backend: Option<RawBackend>,
    pub(super) policy: Option<RawPolicy>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) log: Option<RawLog>,
    pub(super) api: Option<RawApi>,
    pub(super) shutdown_mode: Option<ShutdownMode>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) transcript: Option<RawTranscript>,
    pub(super) task_logs: Option<RawTaskLogs>,
    pub(super) admission: Option<RawAdmission>,
    pub(super) environments: Option<BTreeMap<String, RawEnvironment>>,
    pub(super) default_environment: Option<Spanned<String>>,
    pub(super) debug_log_capture: Option<super::debug_log_capture::RawDebugLogCapture>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub(super) image: Option<Spanned<String>>,
    pub(super) env: Option<BTreeMap<String, String>>,
    pub(super) workdir: Option<Spanned<String>>,
    pub(super) repos: Option<Spanned<Vec<crate::spec::environment::Repo>>>,
    pub(super) setup: Option<Spanned<Vec<String>>>,
    pub(super) resources: Option<RawResources>,
    pub(super) runtime: Option<String>,
    pub(super) egress: Option<Spanned<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) socket_group: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmission {
    pub(super) reserve: Option<RawResources>,
    pub(super) min_free_disk: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTaskLogs {
    pub(super) enabled: Option<bool>,
    pub(super) allow_insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTranscript {
    pub(super) max_bytes: Option<Spanned<String>>,
    pub(super) tail_bytes: Option<Spanned<String>>,
    pub(super) redact: Option<Vec<String>>,
    pub(super) retention: Option<Spanned<String>>,
    pub(super) full_disk_patience: Option<Spanned<String>>,
    pub(super) anchor_every: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControlPlane {
    pub(super) url: Option<Spanned<String>>,
    pub(super) server_root_url: Option<Spanned<String>>,
    pub(super) api_key_file: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) client_cert_file: Option<Spanned<String>>,
    pub(super) client_key_file: Option<Spanned<String>>,
    pub(super) allow_insecure: Option<bool>,
    pub(super) heartbeat_interval: Option<Spanned<String>>,
    pub(super) max_message_size: Option<Spanned<String>>,
    pub(super) session_sharing_server_url: Option<Spanned<String>>,
    pub(super) environments_url: Option<Spanned<String>>,
    pub(super) environments_ttl: Option<Spanned<String>>,
    pub(super) status_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    /// `docker` (the default) or `kubernetes`.
    pub(super) kind: Option<Spanned<String>>,
    pub(super) docker: Option<RawDocker>,
    pub(super) kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) namespace: Option<Spanned<String>>,
    pub(super) kubeconfig: Option<Spanned<String>>,
    pub(super) context: Option<Spanned<String>>,
    pub(super) owner: Option<Spanned<String>>,
    pub(super) default_image: Option<Spanned<String>>,
    pub(super) image_pull_policy: Option<Spanned<String>>,
    pub(super) pod_template: Option<Spanned<serde_json::Value>>,
    pub(super) environment: Option<Vec<RawEnvEntry>>,
    pub(super) stop_grace_period: Option<Spanned<String>>,
    pub(super) active_deadline: Option<Spanned<String>>,
    pub(super) ttl_after_finished: Option<Spanned<String>>,
    pub(super) unschedulable_timeout: Option<Spanned<String>>,
    pub(super) proxy_service: Option<Spanned<String>>,
    pub(super) extra_labels: Option<BTreeMap<String, Spanned<String>>>,
    pub(super) extra_annotations: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    pub(super) host: Option<Spanned<String>>,
    pub(super) default_image: Option<Spanned<String>>,
    pub(super) pull_policy: Option<PullPolicy>,
    pub(super) volumes: Option<Vec<Spanned<String>>>,
    pub(super) environment: Option<Vec<RawEnvEntry>>,
    pub(super) stop_grace_period: Option<Spanned<String>>,
    pub(super) policy: Option<RawPolicy>,
    pub(super) auth_config: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) allowed_images: Option<Vec<Spanned<String>>>,
    pub(super) egress: Option<RawEgress>,
    pub(super) security: Option<RawSecurity>,
    pub(super) default_resources: Option<RawResources>,
    pub(super) max_resources: Option<RawResources>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) allow: Option<Vec<Spanned<String>>>,
    pub(super) proxy_port: Option<Spanned<u16>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) no_new_privileges: Option<bool>,
    pub(super) cap_drop: Option<Vec<Spanned<String>>>,
    pub(super) cap_add: Option<Vec<Spanned<String>>>,
    pub(super) pids_limit: Option<i64>,
    pub(super) read_only_rootfs: Option<bool>,
    pub(super) user: Option<String>,
    pub(super) runtime: Option<Spanned<String>>,
    pub(super) allowed_runtimes: Option<Vec<Spanned<String>>>,
    pub(super) network: Option<Spanned<String>>,
    pub(super) profile: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    pub(super) cpus: Option<Spanned<f64>>,
    pub(super) memory: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvEntry {
    pub(super) name: Spanned<String>,
    pub(super) value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<Spanned<String>>,
    pub(super) format: Option<LogFormat>,
}

#[cfg(test)]
mod tests {
    use super::super::test_support::one_error;
    use std::path::PathBuf;

    #[test]
    fn unknown_keys_are_reported_with_line_column_and_expected_keys() {
        let e = one_error("worker_id: w\ncontrol_plane:\n  urll: wss://x\n");
        assert_eq!(e.location, Some((PathBuf::from("c.yaml"), 3, 3)));
        assert!(e.problem.contains("unknown field `urll`"), "{}", e.problem);
        assert!(e.problem.contains("url"), "{}", e.problem);
    }
}
