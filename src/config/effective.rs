//! What `check-config` prints: the effective configuration, secrets and env values redacted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::load::Config;
use super::raw::{LogFormat, PullPolicy, ShutdownMode};

/// The effective configuration as printed by `check-config`: secrets and env values redacted.
#[derive(Debug, Serialize)]
pub struct Effective {
    worker_id: String,
    max_concurrent_tasks: u32,
    idle_on_complete: Option<String>,
    cleanup: bool,
    state_dir: String,
    control_plane: EffectiveControlPlane,
    backend: EffectiveBackend,
    policy: EffectivePolicy,
    labels: BTreeMap<String, String>,
    log: EffectiveLog,
    api: EffectiveApi,
    shutdown_mode: ShutdownMode,
    shutdown_grace: String,
    transcript: EffectiveTranscript,
    task_logs: EffectiveTaskLogs,
    admission: EffectiveAdmission,
    debug_log_capture: EffectiveDebugLogCapture,
}

#[derive(Debug, Serialize)]
struct EffectiveDebugLogCapture {
    /// "" = the system temp dir.
    directory: String,
    max_total_bytes: u64,
    max_execution_bytes: u64,
    max_concurrent_uploads: u32,
    /// Why archive capture is off, when it is.
    disabled: Option<String>,
}

#[derive(Debug, Serialize)]
struct EffectiveTaskLogs {
    enabled: bool,
    allow_insecure: bool,
}

#[derive(Debug, Serialize)]
struct EffectiveApi {
    listen: String,
    socket_group: Option<String>,
}

#[derive(Debug, Serialize)]
struct EffectiveAdmission {
    reserve_cpus: Option<f64>,
    reserve_memory: Option<u64>,
    min_free_disk: u64,
}

#[derive(Debug, Serialize)]
struct EffectiveTranscript {
    max_bytes: u64,
    tail_bytes: u64,
    redact: Vec<String>,
    retention: String,
    full_disk_patience: String,
    anchor_every: u64,
}

#[derive(Debug, Serialize)]
struct EffectiveControlPlane {
    url: String,
    server_root_url: String,
    api_key: String,
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    allow_insecure: bool,
    heartbeat_interval: String,
    max_message_size: u64,
    session_sharing_server_url: Option<String>,
    environments_url: Option<String>,
    environments_ttl: String,
    status_interval: String,
}

#[derive(Debug, Serialize)]
struct EffectiveBackend {
    kind: super::kubernetes::BackendKind,
    docker: EffectiveDocker,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct EffectiveDocker {
    host: String,
    default_image: String,
    pull_policy: PullPolicy,
    volumes: Vec<String>,
    environment: Vec<String>,
    stop_grace_period: String,
    auth_config: Option<String>,
}

#[derive(Debug, Serialize)]
struct EffectivePolicy {
    allowed_images: Vec<String>,
    no_new_privileges: bool,
    cap_drop: Vec<String>,
    cap_add: Vec<String>,
    pids_limit: Option<i64>,
    read_only_rootfs: bool,
    user: Option<String>,
    runtime: Option<String>,
    allowed_runtimes: Vec<String>,
    network: String,
    profile: &'static str,
    egress_mode: &'static str,
    egress_allow: usize,
    egress_proxy_port: u16,
    default_cpus: Option<f64>,
    default_memory: Option<u64>,
    max_cpus: Option<f64>,
    max_memory: Option<u64>,
    timeout: String,
}

#[derive(Debug, Serialize)]
struct EffectiveLog {
    level: String,
    format: LogFormat,
}

impl Config {
    /// A printable view with the API key and env values redacted.
    pub fn effective(&self) -> Effective {
        let p = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        Effective {
            worker_id: self.worker_id.clone(),
            max_concurrent_tasks: self.max_concurrent_tasks,
            idle_on_complete: self.idle_on_complete.clone(),
            cleanup: self.cleanup,
            state_dir: self.state_dir.display().to_string(),
            control_plane: EffectiveControlPlane {
                url: crate::transcript::redaction::display_url(self.control_plane.url.as_str()),
                server_root_url: crate::transcript::redaction::display_url(
                    &self.control_plane.server_root_url,
                ),
                api_key: if self.control_plane.api_key_source.is_empty() {
                    "(none configured: `berth run` needs one)".to_string()
                } else {
                    format!("[REDACTED] (from {})", self.control_plane.api_key_source)
                },
                ca_file: p(&self.control_plane.ca_file),
                client_cert_file: p(&self.control_plane.client_cert_file),
                client_key_file: p(&self.control_plane.client_key_file),
                allow_insecure: self.control_plane.allow_insecure,
                heartbeat_interval: humantime::format_duration(
                    self.control_plane.heartbeat_interval,
                )
                .to_string(),
                max_message_size: self.control_plane.max_message_size,
                session_sharing_server_url: self
                    .control_plane
                    .session_sharing_server_url
                    .as_deref()
                    .map(crate::transcript::redaction::display_url),
                environments_url: self
                    .control_plane
                    .environments_url
                    .as_deref()
                    .map(crate::transcript::redaction::display_url),
                environments_ttl: humantime::format_duration(self.control_plane.environments_ttl)
                    .to_string(),
                status_interval: humantime::format_duration(self.control_plane.status_interval)
                    .to_string(),
            },
            backend: EffectiveBackend {
                kind: self.backend,
                kubernetes: (self.backend == super::kubernetes::BackendKind::Kubernetes)
                    .then(|| self.kubernetes.effective()),
                docker: EffectiveDocker {
                    host: self
                        .docker
                        .host
                        .clone()
                        .unwrap_or_else(|| "(DOCKER_HOST or unix:///var/run/docker.sock)".into()),
                    default_image: self.docker.default_image.clone(),
                    pull_policy: self.docker.pull_policy,
                    volumes: self.docker.volumes.clone(),
                    environment: self
                        .docker
                        .environment
                        .iter()
                        .map(|(k, _)| format!("{k}=[REDACTED]"))
                        .collect(),
                    stop_grace_period: humantime::format_duration(self.docker.stop_grace_period)
                        .to_string(),
                    auth_config: self
                        .docker
                        .auth_config
                        .as_ref()
                        .map(|p| p.display().to_string()),
                },
            },
            policy: {
                let p = &self.policy;
                EffectivePolicy {
                    allowed_images: p.allowed_images.clone(),
                    no_new_privileges: p.security.no_new_privileges,
                    cap_drop: p.security.cap_drop.clone(),
                    cap_add: p.security.cap_add.clone(),
                    pids_limit: p.security.pids_limit,
                    read_only_rootfs: p.security.read_only_rootfs,
                    user: p.security.user.clone(),
                    runtime: p.security.runtime.clone(),
                    allowed_runtimes: p.allowed_runtimes.clone(),
                    network: p.security.network.clone(),
                    profile: match p.profile {
                        crate::spec::policy::Profile::Default => "default",
                        crate::spec::policy::Profile::Strict => "strict",
                    },
                    egress_mode: p.egress.mode.as_str(),
                    egress_allow: p.egress.allow.len(),
                    egress_proxy_port: p.egress_proxy_port,
                    default_cpus: p.default_resources.cpus,
                    default_memory: p.default_resources.memory,
                    max_cpus: p.max_resources.cpus,
                    max_memory: p.max_resources.memory,
                    timeout: humantime::format_duration(p.timeout).to_string(),
                }
            },
            labels: self.labels.clone(),
            log: EffectiveLog {
                level: self.log_level.clone(),
                format: self.log_format,
            },
            shutdown_mode: self.shutdown_mode,
            shutdown_grace: humantime::format_duration(self.shutdown_grace).to_string(),
            api: EffectiveApi {
                listen: self
                    .api
                    .listen
                    .as_ref()
                    .map_or_else(|| "off".to_string(), ToString::to_string),
                socket_group: self.api.socket_group.clone(),
            },
            admission: EffectiveAdmission {
                reserve_cpus: self.admission.reserve.cpus,
                reserve_memory: self.admission.reserve.memory,
                min_free_disk: self.admission.min_free_disk,
            },
            transcript: EffectiveTranscript {
                max_bytes: self.transcript.max_bytes,
                tail_bytes: self.transcript.tail_bytes,
                redact: self
                    .transcript
                    .redact
                    .iter()
                    .map(|_| "[REDACTED]".to_string())
                    .collect(),
                retention: humantime::format_duration(self.transcript.retention).to_string(),
                full_disk_patience: humantime::format_duration(self.transcript.full_disk_patience)
                    .to_string(),
                anchor_every: self.transcript.anchor_every,
            },
            task_logs: EffectiveTaskLogs {
                enabled: self.task_logs.enabled,
                allow_insecure: self.task_logs.allow_insecure,
            },
            debug_log_capture: EffectiveDebugLogCapture {
                directory: self
                    .debug_log_capture
                    .directory
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                max_total_bytes: self.debug_log_capture.max_total_bytes,
                max_execution_bytes: self.debug_log_capture.max_execution_bytes,
                max_concurrent_uploads: self.debug_log_capture.max_concurrent_uploads,
                disabled: self.debug_log_capture.disabled.clone(),
            },
        }
    }

    /// The effective configuration as YAML.
    pub fn effective_yaml(&self) -> String {
        serde_saphyr::to_string(&self.effective())
            .unwrap_or_else(|e| format!("# cannot render effective config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::overrides::Overrides;
    use super::super::test_support::load_yaml;
    use crate::secret::Secret;

    #[test]
    fn effective_config_never_prints_secrets() {
        let ov = Overrides {
            api_key: Some(Secret::new("supersecretkey")),
            env: vec!["TOKEN=hunter2hunter2".into()],
            ..Overrides::default()
        };
        let c = load_yaml("worker_id: w\n", &ov).unwrap();
        let y = c.effective_yaml();
        assert!(
            !y.contains("supersecretkey") && !y.contains("hunter2"),
            "{y}"
        );
        assert!(y.contains("TOKEN=[REDACTED]"), "{y}");
        assert!(!format!("{c:?}").contains("supersecretkey"));
        let c = load_yaml(
            "worker_id: w\ncontrol_plane:\n  url: ws://ops:urlpa55word@127.0.0.1:9/ws\n  environments_url: http://u:envpa55word@127.0.0.1:9/env/{id}\n",
            &ov,
        )
        .unwrap();
        let y = c.effective_yaml();
        assert!(
            !y.contains("urlpa55word") && !y.contains("envpa55word"),
            "{y}"
        );
        assert!(y.contains("ws://ops:[REDACTED]@127.0.0.1:9/ws"), "{y}");
    }
}
