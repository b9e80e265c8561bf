//! The one config path: raw file (strict, positions kept) → overrides from flags and
//! environment → the validated [`Config`]. `berth run` and `berth check-config` call the same
//! [`load`]; each section of the file is read by its own file beside this one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::admission::{AdmissionSettings, admission_section};
use super::api::{ApiSettings, api_section};
use super::collector::{Collector, ConfigError, ConfigErrors, yaml_problem};
use super::control_plane::{ControlPlane, control_plane_section};
use super::docker::{DockerBackend, docker_section};
use super::environments::environments_section;
use super::kubernetes::{BackendKind, KubernetesBackend, kind_of, kubernetes_section};
use super::log::log_level_of;
use super::overrides::Overrides;
use super::policy::policy_section;
use super::raw::{LogFormat, RawConfig, ShutdownMode};
use super::task_logs::{TaskLogSettings, task_logs_section};
use super::transcript::{TranscriptSettings, transcript_section};
use super::worker::{idle_on_complete_of, state_dir_of, worker_id_of};

/// Config file used by `berth run` when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.yaml";
/// Default concurrency.
pub const DEFAULT_MAX_CONCURRENT_TASKS: u32 = 4;

/// Default of `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the file came from, if any.
    pub source: Option<PathBuf>,
    /// This worker's id.
    pub worker_id: String,
    /// Concurrency slots; 0 = unlimited.
    pub max_concurrent_tasks: u32,
    /// Operator default for `--idle-on-complete`.
    pub idle_on_complete: Option<String>,
    /// Remove containers after they exit.
    pub cleanup: bool,
    /// Durable state directory.
    pub state_dir: PathBuf,
    pub control_plane: ControlPlane,
    /// Which engine runs the sandboxes (`backend.kind`).
    pub backend: BackendKind,
    /// Docker backend.
    pub docker: DockerBackend,
    /// Kubernetes backend (its defaults when `backend.kind` is docker).
    pub kubernetes: KubernetesBackend,
    /// What tasks may run and do, whatever the backend (`policy:`).
    pub policy: crate::spec::policy::Policy,
    /// Deprecations to tell the operator (`check-config` prints them, `berth run` logs them).
    pub notes: Vec<String>,
    /// Free-form labels reported to the server.
    pub labels: BTreeMap<String, String>,
    /// Log level / filter directive.
    pub log_level: String,
    pub log_format: LogFormat,
    /// What SIGTERM does to running tasks.
    pub shutdown_mode: ShutdownMode,
    /// How long shutdown waits, once no task runs, for the last results and transcript bytes
    /// to reach the control plane (they stay in the journal either way).
    pub shutdown_grace: Duration,
    /// Transcript capture.
    pub transcript: TranscriptSettings,
    /// Task-log export over OTLP (PROTOCOL §8.3).
    pub task_logs: TaskLogSettings,
    /// Resource-aware admission.
    pub admission: AdmissionSettings,
    /// Named environments, selected by `agent_config_snapshot.environment_id`.
    pub environments: BTreeMap<String, crate::spec::environment::Environment>,
    /// Environment used when a task names none (or an unknown one).
    pub default_environment: Option<String>,
    /// The local API.
    pub api: ApiSettings,
    /// Debug-archive snapshots (PROTOCOL §8.4).
    pub debug_log_capture: super::debug_log_capture::DebugLogCapture,
}

impl Config {
    /// Time between the polite and the forced stop of a task, on the configured backend.
    pub fn stop_grace_period(&self) -> Duration {
        match self.backend {
            BackendKind::Docker => self.docker.stop_grace_period,
            BackendKind::Kubernetes => self.kubernetes.stop_grace_period,
        }
    }
}

/// Reads the YAML file (if any), applies overrides and validates. `host_env` looks up host
/// environment variables (passed in so tests never touch the process environment).
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = match path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: "-".into(),
                location: None,
                problem: format!("cannot read config file {}: {e}", p.display()),
                fix: "check the path given to --config and that the berth user may read it".into(),
            }])
        })?),
        None => None,
    };
    load_str(text.as_deref(), path, overrides, host_env)
}

/// Like [`load`], from text already read (`path` is used in messages only).
pub fn load_str(
    text: Option<&str>,
    path: Option<&Path>,
    ov: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let display_path = path.unwrap_or(Path::new("<config>"));
    let mut raw: RawConfig = match text {
        None => RawConfig::default(),
        Some(t) => {
            let opts = serde_saphyr::options! { strict_booleans: true };
            match serde_saphyr::from_str_with_options::<Option<RawConfig>>(t, opts) {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    let location = e
                        .location()
                        .map(|l| (display_path.to_path_buf(), l.line(), l.column()));
                    return Err(ConfigErrors(vec![ConfigError {
                        key: "yaml".into(),
                        location,
                        problem: yaml_problem(&e.to_string(), display_path),
                        fix: "correct the file at that position; config.example.yaml documents every key and its format".into(),
                    }]));
                }
            }
        }
    };
    let mut c = Collector {
        file: path,
        errors: Vec::new(),
    };
    let cp = raw.control_plane.take().unwrap_or_default();
    let raw_backend = raw.backend.take().unwrap_or_default();
    let backend = kind_of(raw_backend.kind.as_ref(), &mut c);
    let mut docker = raw_backend.docker.unwrap_or_default();
    let kubernetes = match (backend, raw_backend.kubernetes) {
        (BackendKind::Kubernetes, k) => {
            kubernetes_section(k.unwrap_or_default(), ov, host_env, &mut c)
        }
        (BackendKind::Docker, Some(_)) => {
            c.at(
                "backend.kubernetes",
                raw_backend.kind.as_ref(),
                "is set, but backend.kind is docker".to_string(),
                "set backend.kind: kubernetes, or remove the backend.kubernetes section",
            );
            KubernetesBackend::default()
        }
        (BackendKind::Docker, None) => KubernetesBackend::default(),
    };
    let raw_api = raw.api.take().unwrap_or_default();
    let api = api_section(raw_api, ov, &mut c);
    let log = raw.log.take().unwrap_or_default();
    let worker_id = worker_id_of(ov, &raw, &mut c);
    let control_plane = control_plane_section(cp, ov, &mut c);
    let idle_on_complete = idle_on_complete_of(ov, &raw, &mut c);
    let state_dir = state_dir_of(ov, &raw, &mut c);
    let (policy, policy_note) = policy_section(raw.policy.take(), docker.policy.take(), &mut c);
    let docker = docker_section(docker, ov, host_env, &mut c);
    let log_level = log_level_of(ov, &log, &mut c);
    let admission = admission_section(raw.admission.take(), &mut c);
    let (environments, default_environment) = environments_section(&mut raw, &mut c);
    let transcript = transcript_section(raw.transcript.take(), &mut c);
    let task_logs = task_logs_section(raw.task_logs.take());
    let debug_log_capture =
        super::debug_log_capture::debug_log_capture_section(raw.debug_log_capture.take(), &mut c);
    let shutdown_grace = c.duration(
        "shutdown_grace",
        raw.shutdown_grace.as_ref(),
        DEFAULT_SHUTDOWN_GRACE,
        "use a duration such as 10s",
    );

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    let Some(control_plane) = control_plane else {
        return Err(ConfigErrors(c.errors));
    };
    Ok(Config {
        source: path.map(Path::to_path_buf),
        worker_id,
        max_concurrent_tasks: ov
            .max_concurrent_tasks
            .or(raw.max_concurrent_tasks)
            .unwrap_or(DEFAULT_MAX_CONCURRENT_TASKS),
        idle_on_complete,
        cleanup: !ov.no_cleanup && raw.cleanup.unwrap_or(true),
        state_dir,
        control_plane,
        backend,
        docker,
        kubernetes,
        policy,
        notes: policy_note.into_iter().collect(),
        labels: raw.labels.unwrap_or_default(),
        log_level,
        log_format: ov.log_format.or(log.format).unwrap_or(LogFormat::Text),
        shutdown_mode: ov
            .shutdown_mode
            .or(raw.shutdown_mode)
            .unwrap_or(ShutdownMode::Preserve),
        shutdown_grace,
        transcript,
        task_logs,
        admission,
        environments,
        default_environment,
        api,
        debug_log_capture,
    })
}

#[cfg(test)]
mod tests {
    use super::super::control_plane::{DEFAULT_SERVER_ROOT_URL, DEFAULT_URL};
    use super::super::raw::PullPolicy;
    use super::super::test_support::{load_yaml, no_env, with_key};
    use super::*;

    #[test]
    fn minimal_file_gets_every_default() {
        let c = load_yaml("worker_id: host-1\n", &with_key()).unwrap();
        assert_eq!(c.worker_id, "host-1");
        assert_eq!(c.max_concurrent_tasks, DEFAULT_MAX_CONCURRENT_TASKS);
        assert!(c.cleanup);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.control_plane.url.as_str(), DEFAULT_URL);
        assert_eq!(c.control_plane.server_root_url, DEFAULT_SERVER_ROOT_URL);
        assert_eq!(c.control_plane.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.control_plane.max_message_size, 16 << 20);
        assert_eq!(c.docker.default_image, "ubuntu:22.04");
        assert_eq!(c.docker.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(c.docker.stop_grace_period, Duration::from_secs(10));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.shutdown_mode, ShutdownMode::Preserve);
        assert_eq!(c.transcript.max_bytes, 256 << 20);
        assert_eq!(c.transcript.tail_bytes, 16 << 20);
        assert_eq!(c.transcript.retention, Duration::from_secs(86400));
        assert_eq!(c.transcript.full_disk_patience, Duration::from_secs(300));
        assert_eq!(c.transcript.anchor_every, 128 << 20);
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(c.transcript.redact.is_empty());
    }

    #[test]
    fn example_file_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../config.example.yaml");
        let c = load_str(
            Some(text),
            Some(Path::new("config.example.yaml")),
            &with_key(),
            &no_env,
        )
        .unwrap_or_else(|e| panic!("config.example.yaml is invalid:\n{e}"));
        let d = load_yaml(&format!("worker_id: {}\n", c.worker_id), &with_key()).unwrap();
        // The example documents defaults: loading it must equal loading nothing but the id
        // (apart from where it came from).
        assert_eq!(Config { source: None, ..c }, Config { source: None, ..d });
    }
}
