//! Assignment + operator policy → [`SandboxSpec`], engine-neutral: a pure function, tested
//! without any engine (each backend says it in its own terms).
//!
//! Everything here follows PROTOCOL.md §5 to the letter; it is what makes a berth container
//! indistinguishable from one the Oz worker would have started.

pub mod dns;
pub mod egress;
pub mod environment;
pub mod holder;
pub mod image;
pub mod owner;
pub mod policy;

mod argv;
pub mod lifecycle_hooks;
pub use argv::{agent_argv, mcp_json};

use std::collections::BTreeMap;

use crate::failure::FailureReason;
use crate::protocol::TaskAssignment;
use crate::spec::image::{ImageRef, ImageRefError};
pub use crate::spec::owner::LABEL_INSTANCE;

/// Where the agent sidecar is mounted.
pub const AGENT_MOUNT: &str = "/agent";
/// Working directory of every task container.
pub const WORKDIR: &str = "/workspace";
/// Label every berth container carries.
pub const LABEL_MANAGED: &str = "berth.managed";
/// Label naming the worker that owns a container.
pub const LABEL_WORKER: &str = "berth.worker_id";
/// Label naming the task.
pub const LABEL_TASK: &str = "berth.task_id";
/// Label naming the execution.
pub const LABEL_EXECUTION: &str = "berth.execution_id";
/// The Go worker's labels (PROTOCOL.md §8.2), so operator scripts written for it keep working:
/// the run, and the server's execution id (absent when the server gave none).
pub const LABEL_OZ_TASK: &str = "oz-task-id";
/// See [`LABEL_OZ_TASK`].
pub const LABEL_OZ_EXECUTION: &str = "oz-execution-id";

/// Operator settings that shape the agent argv and env.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSettings {
    /// `--server-root-url` and `WARP_SERVER_ROOT_URL`.
    pub server_root_url: String,
    /// Operator default for `--idle-on-complete` (kept as written, e.g. `10m`).
    pub idle_on_complete: Option<String>,
    /// `--session-sharing-server-url`, when configured.
    pub session_sharing_server_url: Option<String>,
}

/// A task input that cannot become a container.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The image reference is not valid.
    #[error("{0}")]
    InvalidImage(#[from] ImageRefError),
    /// The assignment has no `task` object.
    #[error("task assignment has no task object; the control plane must send one")]
    MissingTask,
    /// A sidecar entry is unusable.
    #[error("{0}")]
    Sidecar(String),
    /// An environment variable name Docker cannot carry.
    #[error(
        "environment variable name {0:?} is invalid: names must be non-empty and contain no '=' or NUL"
    )]
    InvalidEnvName(String),
}

impl SpecError {
    /// The protocol failure reason for this error.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            SpecError::InvalidImage(_) => FailureReason::InvalidImage,
            SpecError::MissingTask => FailureReason::Unknown,
            SpecError::Sidecar(_) => FailureReason::SidecarPrep,
            SpecError::InvalidEnvName(_) => FailureReason::ContainerCreate,
        }
    }
}

/// The image a task runs: its environment's image (inline on berth/1, or a named one) ›
/// `docker_image` › operator default.
pub fn resolve_image(
    a: &TaskAssignment,
    environment_image: Option<&str>,
    default_image: &str,
) -> Result<ImageRef, SpecError> {
    let chosen = environment_image
        .filter(|s| !s.trim().is_empty())
        .or(a.docker_image.as_deref().filter(|s| !s.trim().is_empty()))
        .unwrap_or(default_image);
    Ok(ImageRef::parse(chosen)?)
}

/// One sidecar volume to prepare and mount.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarMount {
    /// Image whose filesystem fills the volume.
    pub image: ImageRef,
    /// Mount point in the task container.
    pub mount_path: String,
    /// Writable mount.
    pub read_write: bool,
}

/// The sidecars of an assignment in mount order: `sidecar_image` at `/agent`, then every
/// `additional_sidecars` entry. Empty images, empty or duplicate mount paths are refused.
pub fn plan_sidecars(a: &TaskAssignment) -> Result<Vec<SidecarMount>, SpecError> {
    let mut out: Vec<SidecarMount> = Vec::new();
    if let Some(img) = a.sidecar_image.as_deref().filter(|s| !s.trim().is_empty()) {
        out.push(SidecarMount {
            image: ImageRef::parse(img)
                .map_err(|e| SpecError::Sidecar(format!("sidecar image: {e}")))?,
            mount_path: AGENT_MOUNT.to_string(),
            read_write: false,
        });
    }
    for s in a.additional_sidecars.iter().flatten() {
        if s.image.trim().is_empty() {
            return Err(SpecError::Sidecar(
                "additional sidecar has empty image".into(),
            ));
        }
        if s.mount_path.trim().is_empty() {
            return Err(SpecError::Sidecar(format!(
                "additional sidecar {:?} has empty mount path",
                s.image
            )));
        }
        if let Err(why) = check_mount_path(&s.mount_path) {
            return Err(SpecError::Sidecar(format!(
                "additional sidecar {:?} has mount path {:?}: {why}; use an absolute path of its own such as /opt/tools",
                s.image, s.mount_path
            )));
        }
        if out.iter().any(|m| m.mount_path == s.mount_path) {
            return Err(SpecError::Sidecar(format!(
                "additional sidecar {:?} uses mount path {:?}, which is already mounted",
                s.image, s.mount_path
            )));
        }
        out.push(SidecarMount {
            image: ImageRef::parse(&s.image)
                .map_err(|e| SpecError::Sidecar(format!("additional sidecar: {e}")))?,
            mount_path: s.mount_path.clone(),
            read_write: s.read_write,
        });
    }
    Ok(out)
}

/// Directories a sidecar must not cover: the root, the image's system directories (the
/// container would not start, or would run with the sidecar's files in their place).
const SYSTEM_DIRS: [&str; 14] = [
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr", "/var",
];

/// Why a sidecar mount path is refused before anything is pulled (Docker would refuse most of
/// these only at create time, or mount over the image's own files).
pub fn check_mount_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("it is not absolute");
    }
    if p.contains(':') || p.contains(',') {
        return Err("':' and ',' are separators in Docker's mount syntax");
    }
    if p.chars().any(char::is_control) {
        return Err("it contains control characters");
    }
    if p.len() > 1024 {
        return Err("it is longer than 1024 characters");
    }
    if p == "/" {
        return Err("it would cover the container's whole filesystem");
    }
    if p.split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("it is not a plain path (empty, '.' or '..' components, or a trailing '/')");
    }
    let under = |d: &str| p == d || p.strip_prefix(d).is_some_and(|r| r.starts_with('/'));
    if ["/proc", "/sys", "/dev"].iter().any(|d| under(d)) {
        return Err("it lies in a kernel filesystem (/proc, /sys, /dev)");
    }
    if SYSTEM_DIRS.contains(&p) {
        return Err("it would hide a system directory of the image");
    }
    Ok(())
}

/// Who a container is, as its well-known variables tell it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity<'a> {
    /// The run (`task_id`).
    pub task_id: &'a str,
    /// The execution (may be empty: oz/1 servers that send none).
    pub execution_id: &'a str,
    /// `--server-root-url` (may be empty).
    pub server_root_url: &'a str,
    /// The resolved image.
    pub image: &'a str,
    /// The backend the task runs on (`OZ_WORKER_BACKEND`: `docker`).
    pub backend: &'a str,
}

/// Prefix of assignment variables the operator's environment never overrides.
const METADATA_PREFIX: &str = "WARP_METADATA_";

/// The container environment, in contract order with later entries winning on the same name
/// (each name appears once, at its first position, with its last value). The newer Oz worker
/// sets each well-known variable under both its `OZ_` and its `WARP_` name (PROTOCOL §7).
pub fn container_env(
    id: Identity<'_>,
    environment: Option<&BTreeMap<String, String>>,
    env_vars: Option<&BTreeMap<String, String>>,
    operator: &[(String, String)],
) -> Result<Vec<String>, SpecError> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| -> Result<(), SpecError> {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(SpecError::InvalidEnvName(k.to_string()));
        }
        if values.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
        Ok(())
    };
    set("TASK_ID", id.task_id)?;
    set("GIT_TERMINAL_PROMPT", "0")?;
    set("GH_PROMPT_DISABLED", "1")?;
    let pairs = [
        ("RUN_ID", id.task_id),
        ("EXECUTION_ID", id.execution_id),
        ("WORKER_BACKEND", id.backend),
        ("SERVER_ROOT_URL", id.server_root_url),
        ("DOCKER_IMAGE", id.image),
    ];
    for (name, value) in pairs.into_iter().filter(|(_, v)| !v.is_empty()) {
        set(&format!("OZ_{name}"), value)?;
        set(&format!("WARP_{name}"), value)?;
    }
    // The environment's variables, then the task's own (which win), then the operator's —
    // except over the assignment's WARP_METADATA_* variables, which describe the run.
    for (k, v) in environment.into_iter().flatten() {
        set(k, v)?;
    }
    for (k, v) in env_vars.into_iter().flatten() {
        set(k, v)?;
    }
    let metadata = |k: &str| {
        k.starts_with(METADATA_PREFIX) && env_vars.is_some_and(|vars| vars.contains_key(k))
    };
    for (k, v) in operator.iter().filter(|(k, _)| !metadata(k)) {
        set(k, v)?;
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = values.get(&k).cloned().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect())
}

/// A sidecar as the sandbox mounts it: what the backend prepared for it (`source`: a Docker
/// volume name; a backend that mounts images directly may hand back the image) at its path.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub mount: SidecarMount,
    /// What [`crate::backend::Backend::prepare_sidecar`] returned for its image.
    pub source: String,
}

/// Where the sandbox's traffic may go, as decided by its egress.
#[derive(Debug, Clone, PartialEq)]
pub enum Network {
    /// The engine's own network, by name (`bridge`, or an operator's named network): egress
    /// open.
    Engine(String),
    /// No network at all (egress `none`).
    None,
    /// A sealed network whose only way out is berth's proxy on `gateway` (egress `allowlist`).
    Sealed {
        /// The engine's name for it.
        name: String,
        /// Where the proxy listens; nothing else there answers (DNS included).
        gateway: std::net::IpAddr,
    },
}

/// What one execution's sandbox is, engine-neutral: the task run hands it to its backend,
/// which says it in its own terms (Docker: a container; see `backend::docker::translate`).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// Normalised image reference.
    pub image: String,
    /// The command, after the image's own entrypoint.
    pub command: Vec<String>,
    /// The image's entrypoint, when the command starts held until in-place provisioning ends
    /// (the backend wraps the start; see `spec::holder`).
    pub hold: Option<Vec<String>>,
    /// `KEY=VALUE` entries, in Oz's order.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// berth's labels: owner (worker id, instance), task, execution.
    pub labels: BTreeMap<String, String>,
    /// CPU and memory, limits equal to requests.
    pub limits: crate::spec::policy::Limits,
    /// Sidecars, in mount order.
    pub sidecars: Vec<Sidecar>,
    /// The operator's volumes, `HOST:CONTAINER[:MODE]` (validated by the config).
    pub volumes: Vec<String>,
    /// Security settings, hardened by the profile (their `network` is the policy's default,
    /// decided into [`SandboxSpec::network`]: read that).
    pub security: crate::spec::policy::Security,
    /// Where its traffic may go.
    pub network: Network,
    /// Provisioning run before the task's command, in its image and workdir, by a backend
    /// that cannot provision inside the held sandbox (Kubernetes: init containers). Empty
    /// where provisioning runs in place (Docker).
    pub steps: Vec<InitStep>,
}

/// A provisioning step a backend runs before the task's command (an init container).
#[derive(Debug, Clone, PartialEq)]
pub struct InitStep {
    /// Announced in the transcript, and named in the failure (secrets in URLs masked).
    pub title: String,
    /// argv, replacing the image's entrypoint.
    pub argv: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// What a failure of this step is reported as (`workspace_setup` for a clone,
    /// `setup_command` for a setup command).
    pub reason: crate::failure::FailureReason,
}

/// Inputs of [`sandbox_spec`] that are not in the assignment.
#[derive(Debug, Clone)]
pub struct SpecContext<'a> {
    /// Worker id and berth instance, for the labels.
    pub owner: &'a crate::spec::owner::Owner,
    /// The backend's name (`OZ_WORKER_BACKEND`).
    pub backend: &'a str,
    /// The execution being started.
    pub execution_id: &'a str,
    /// berth/1 negotiated on the connection that delivered the assignment.
    pub berth: bool,
    /// Resolved image.
    pub image: &'a ImageRef,
    /// The prepared sidecars, in mount order.
    pub sidecars: Vec<Sidecar>,
    /// Agent argv settings.
    pub agent: &'a AgentSettings,
    /// Operator env (config entries, then `-e` flags), already resolved.
    pub operator_env: &'a [(String, String)],
    /// Operator volumes (config entries, then `-v` flags).
    pub operator_volumes: &'a [String],
    /// CPU and memory limits decided by the policy.
    pub limits: crate::spec::policy::Limits,
    /// Operator security settings, hardened by the profile.
    pub security: &'a crate::spec::policy::Security,
    /// Where its traffic may go.
    pub network: Network,
    /// The task's environment, if any.
    pub environment: Option<&'a crate::spec::environment::Environment>,
    /// The image's entrypoint, when the environment provisions inside the container: the
    /// container then starts held and runs this plus the cmd once released.
    pub hold: Option<&'a [String]>,
}

/// The berth/1 `command` when it applies: only on berth/1 connections, only when non-empty.
pub fn berth_command(a: &TaskAssignment, berth: bool) -> Option<&[String]> {
    a.command.as_deref().filter(|c| berth && !c.is_empty())
}

/// Builds the sandbox spec for one task execution.
pub fn sandbox_spec(a: &TaskAssignment, ctx: &SpecContext<'_>) -> Result<SandboxSpec, SpecError> {
    let task = a.task.as_ref().ok_or(SpecError::MissingTask)?;
    let task_id = if task.id.is_empty() {
        &a.task_id
    } else {
        &task.id
    };
    let cmd = match berth_command(a, ctx.berth) {
        Some(c) => c.to_vec(),
        None => agent_argv(a, ctx.agent),
    };
    let image = ctx.image.to_string();
    let env = container_env(
        Identity {
            task_id,
            // The server's id only: one berth made up for an oz/1 server that sent none
            // means nothing to the task.
            execution_id: a.execution_id.as_deref().unwrap_or_default(),
            server_root_url: &ctx.agent.server_root_url,
            image: &image,
            backend: ctx.backend,
        },
        ctx.environment.map(|e| &e.env),
        a.env_vars.as_ref(),
        ctx.operator_env,
    )?;
    let mut labels = ctx.owner.labels();
    labels.insert(LABEL_TASK.to_string(), a.task_id.clone());
    labels.insert(LABEL_EXECUTION.to_string(), ctx.execution_id.to_string());
    labels.insert(LABEL_OZ_TASK.to_string(), a.task_id.clone());
    if let Some(e) = a.execution_id.as_deref().filter(|e| !e.is_empty()) {
        labels.insert(LABEL_OZ_EXECUTION.to_string(), e.to_string());
    }
    Ok(SandboxSpec {
        image,
        command: cmd,
        hold: ctx.hold.map(<[String]>::to_vec),
        env,
        workdir: ctx
            .environment
            .and_then(|e| e.workdir.clone())
            .unwrap_or_else(|| WORKDIR.to_string()),
        labels,
        limits: ctx.limits,
        sidecars: ctx.sidecars.clone(),
        volumes: ctx.operator_volumes.to_vec(),
        security: ctx.security.clone(),
        network: ctx.network.clone(),
        steps: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    pub(super) fn settings() -> AgentSettings {
        AgentSettings {
            server_root_url: "https://app.warp.dev".into(),
            idle_on_complete: None,
            session_sharing_server_url: None,
        }
    }

    pub(super) fn assignment(snap: Option<AgentConfigSnapshot>) -> TaskAssignment {
        TaskAssignment {
            task_id: "run-1".into(),
            task: Some(Task {
                id: "t-1".into(),
                agent_config_snapshot: snap,
                ..Task::default()
            }),
            ..TaskAssignment::default()
        }
    }

    pub(super) fn argv_tail(a: &TaskAssignment, s: &AgentSettings) -> Vec<String> {
        agent_argv(a, s)[3..].to_vec()
    }

    pub(super) fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    pub(super) const BASE: [&str; 5] = [
        "--task-id",
        "t-1",
        "--sandboxed",
        "--server-root-url",
        "https://app.warp.dev",
    ];

    pub(super) fn raw(s: &str) -> RawJson {
        serde_json::from_str(s).unwrap()
    }

    fn ident<'a>(task_id: &'a str, server_root_url: &'a str) -> Identity<'a> {
        Identity {
            task_id,
            execution_id: "",
            server_root_url,
            image: "",
            backend: "docker",
        }
    }

    #[test]
    fn env_order_and_later_entries_win() {
        let vars = BTreeMap::from([
            ("GIT_TERMINAL_PROMPT".to_string(), "1".to_string()),
            ("SECRET".to_string(), "s".to_string()),
        ]);
        let op = vec![
            ("SECRET".to_string(), "operator".to_string()),
            ("HOSTVAL".to_string(), "".to_string()),
        ];
        let env =
            container_env(ident("t-1", "https://x"), None, Some(&vars), &op).unwrap_or_default();
        assert_eq!(
            env,
            strs(&[
                "TASK_ID=t-1",
                "GIT_TERMINAL_PROMPT=1",
                "GH_PROMPT_DISABLED=1",
                "OZ_RUN_ID=t-1",
                "WARP_RUN_ID=t-1",
                "OZ_WORKER_BACKEND=docker",
                "WARP_WORKER_BACKEND=docker",
                "OZ_SERVER_ROOT_URL=https://x",
                "WARP_SERVER_ROOT_URL=https://x",
                "SECRET=operator",
                "HOSTVAL=",
            ])
        );
        let env = container_env(ident("t", ""), None, None, &[]).unwrap_or_default();
        assert_eq!(
            env,
            strs(&[
                "TASK_ID=t",
                "GIT_TERMINAL_PROMPT=0",
                "GH_PROMPT_DISABLED=1",
                "OZ_RUN_ID=t",
                "WARP_RUN_ID=t",
                "OZ_WORKER_BACKEND=docker",
                "WARP_WORKER_BACKEND=docker",
            ])
        );
        let environment = BTreeMap::from([
            ("FROM_ENV".to_string(), "e".to_string()),
            ("SECRET".to_string(), "env-value".to_string()),
        ]);
        let env =
            container_env(ident("t", ""), Some(&environment), Some(&vars), &[]).unwrap_or_default();
        assert_eq!(
            &env[env.len() - 2..],
            strs(&["FROM_ENV=e", "SECRET=s"]).as_slice()
        );
        assert_eq!(env[1], "GIT_TERMINAL_PROMPT=1");
        let bad = BTreeMap::from([("A=B".to_string(), "x".to_string())]);
        assert!(matches!(
            container_env(ident("t", ""), None, Some(&bad), &[]),
            Err(SpecError::InvalidEnvName(_))
        ));
    }

    #[test]
    fn every_well_known_variable_is_set_under_both_names_when_it_has_a_value() {
        let full = Identity {
            task_id: "run-1",
            execution_id: "exec-2",
            server_root_url: "https://oz.example",
            image: "docker.io/library/ubuntu:24.04",
            backend: "docker",
        };
        let env = container_env(full, None, None, &[]).unwrap_or_default();
        for (name, value) in [
            ("RUN_ID", "run-1"),
            ("EXECUTION_ID", "exec-2"),
            ("WORKER_BACKEND", "docker"),
            ("SERVER_ROOT_URL", "https://oz.example"),
            ("DOCKER_IMAGE", "docker.io/library/ubuntu:24.04"),
        ] {
            for prefix in ["OZ_", "WARP_"] {
                let want = format!("{prefix}{name}={value}");
                assert!(env.contains(&want), "{want} missing from {env:?}");
            }
        }
        // Empty values are left out under both names.
        let env = container_env(ident("t", ""), None, None, &[]).unwrap_or_default();
        assert!(!env.iter().any(|e| e.contains("EXECUTION_ID")
            || e.contains("SERVER_ROOT_URL")
            || e.contains("DOCKER_IMAGE")));
    }

    #[test]
    fn the_operator_never_overrides_the_assignments_metadata() {
        let vars = BTreeMap::from([
            ("WARP_METADATA_REPO".to_string(), "from-run".to_string()),
            ("OTHER".to_string(), "task".to_string()),
        ]);
        let op = vec![
            (
                "WARP_METADATA_REPO".to_string(),
                "from-operator".to_string(),
            ),
            (
                "WARP_METADATA_HOST".to_string(),
                "operator-only".to_string(),
            ),
            ("OTHER".to_string(), "operator".to_string()),
        ];
        let env = container_env(ident("t", ""), None, Some(&vars), &op).unwrap_or_default();
        assert!(
            env.contains(&"WARP_METADATA_REPO=from-run".to_string()),
            "{env:?}"
        );
        // Metadata the assignment does not carry may come from the operator; other names
        // follow the usual rule (the operator wins).
        assert!(env.contains(&"WARP_METADATA_HOST=operator-only".to_string()));
        assert!(env.contains(&"OTHER=operator".to_string()));
    }

    #[test]
    fn sidecars_are_planned_in_order_and_validated() {
        let mut a = assignment(None);
        a.sidecar_image = Some("warpdotdev/warp-agent:latest".into());
        a.additional_sidecars = Some(vec![
            AdditionalSidecar {
                image: "tools:1".into(),
                mount_path: "/tools".into(),
                read_write: false,
            },
            AdditionalSidecar {
                image: "cache:1".into(),
                mount_path: "/cache".into(),
                read_write: true,
            },
        ]);
        let plan = plan_sidecars(&a).unwrap_or_default();
        let mounts: Vec<(&str, bool)> = plan
            .iter()
            .map(|m| (m.mount_path.as_str(), m.read_write))
            .collect();
        assert_eq!(
            mounts,
            [("/agent", false), ("/tools", false), ("/cache", true)]
        );
        let bad = |image: &str, path: &str| {
            let mut a = a.clone();
            a.additional_sidecars = Some(vec![AdditionalSidecar {
                image: image.into(),
                mount_path: path.into(),
                read_write: false,
            }]);
            plan_sidecars(&a)
        };
        assert_eq!(
            bad("", "/x"),
            Err(SpecError::Sidecar(
                "additional sidecar has empty image".into()
            ))
        );
        assert!(
            matches!(bad("x", ""), Err(SpecError::Sidecar(m)) if m.contains("empty mount path"))
        );
        assert!(
            matches!(bad("x", "/agent"), Err(SpecError::Sidecar(m)) if m.contains("already mounted"))
        );
        assert!(matches!(bad("Bad Image", "/x"), Err(SpecError::Sidecar(_))));
        // Refused before any pull, with what is wrong and the fix (issue 8).
        for (path, why) in [
            ("/", "whole filesystem"),
            ("/etc", "system directory"),
            ("/usr", "system directory"),
            ("/proc", "kernel filesystem"),
            ("/proc/self", "kernel filesystem"),
            ("/sys/fs", "kernel filesystem"),
            ("relative/dir", "not absolute"),
            ("/a:/b", "separators"),
            ("/x/../etc", "not a plain path"),
            ("/x/", "not a plain path"),
            ("/x\ny", "control characters"),
        ] {
            assert!(
                matches!(bad("x", path), Err(SpecError::Sidecar(m)) if m.contains(why) && m.contains("/opt/tools")),
                "{path:?} → {:?}",
                bad("x", path)
            );
        }
        for ok in [
            "/opt/tools",
            "/usr/local/tool",
            "/etc-tools",
            "/workspace/.cache",
            "/devtools",
        ] {
            assert!(bad("x", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn image_precedence() {
        let mut a = assignment(None);
        let img = |a: &TaskAssignment, env: Option<&str>| {
            resolve_image(a, env, "ubuntu:22.04").map(|i| i.to_string())
        };
        assert_eq!(
            img(&a, None).as_deref(),
            Ok("docker.io/library/ubuntu:22.04")
        );
        a.docker_image = Some("alpine:3".into());
        assert_eq!(img(&a, None).as_deref(), Ok("docker.io/library/alpine:3"));
        assert_eq!(
            img(&a, Some("busybox:1")).as_deref(),
            Ok("docker.io/library/busybox:1")
        );
        assert_eq!(
            img(&a, Some(" ")).as_deref(),
            Ok("docker.io/library/alpine:3")
        );
        a.docker_image = Some("NOPE".into());
        assert!(matches!(img(&a, None), Err(SpecError::InvalidImage(_))));
    }

    #[test]
    fn spec_has_limits_labels_mounts_and_the_right_command() {
        let mut a = assignment(None);
        a.instance_shape = Some(InstanceShape {
            vcpus: Some(2),
            memory_gb: Some(3),
        });
        a.command = Some(strs(&["echo", "hi"]));
        let image = ImageRef::parse("busybox").unwrap();
        let s = settings();
        let vols = strs(&["/host:/data:ro"]);
        let policy = crate::spec::policy::Policy::default();
        let limits = policy.limits(a.instance_shape, None).unwrap_or_default();
        let owner = crate::spec::owner::Owner::new("w1", "i1");
        let agent = Sidecar {
            mount: SidecarMount {
                image: ImageRef::parse("agent:1").unwrap(),
                mount_path: "/agent".into(),
                read_write: false,
            },
            source: "agentvol".into(),
        };
        let ctx = SpecContext {
            owner: &owner,
            backend: "docker",
            execution_id: "e1",
            berth: true,
            image: &image,
            sidecars: vec![agent.clone()],
            agent: &s,
            operator_env: &[],
            operator_volumes: &vols,
            limits,
            security: &policy.security,
            network: Network::Engine("bridge".into()),
            environment: None,
            hold: None,
        };
        let spec = sandbox_spec(&a, &ctx).unwrap();
        assert_eq!(spec.command, strs(&["echo", "hi"]));
        assert!(spec.security.no_new_privileges);
        assert_eq!(spec.sidecars, [agent]);
        assert_eq!(spec.volumes, vols);
        assert_eq!(spec.limits.nano_cpus, Some(2_000_000_000));
        assert_eq!(spec.limits.memory_bytes, Some(3 << 30));
        assert_eq!(spec.workdir, "/workspace");
        assert_eq!(spec.network, Network::Engine("bridge".into()));
        for (label, value) in [
            ("berth.managed", "true"),
            ("berth.task_id", "run-1"),
            ("berth.execution_id", "e1"),
            // berth touches only what its own instance created.
            ("berth.instance", "i1"),
            ("berth.worker_id", "w1"),
            ("oz-task-id", "run-1"),
        ] {
            assert_eq!(spec.labels.get(label).map(String::as_str), Some(value));
        }
        // berth's own execution id is not the server's: the Go worker's label stays off.
        assert_eq!(spec.labels.get("oz-execution-id"), None);
        let mut given = a.clone();
        given.execution_id = Some("srv-e".into());
        let spec_given = sandbox_spec(&given, &ctx).unwrap();
        assert_eq!(
            spec_given.labels.get("oz-execution-id").map(String::as_str),
            Some("srv-e")
        );
        assert_eq!(spec.env[0], "TASK_ID=t-1");
        // On an oz/1 connection the command is ignored and the agent runs.
        let oz = SpecContext {
            berth: false,
            ..ctx.clone()
        };
        let spec = sandbox_spec(&a, &oz).unwrap();
        assert_eq!(spec.command[0], "/agent/entrypoint.sh");
        // Non-positive axes mean no limit.
        let none = policy
            .limits(
                Some(InstanceShape {
                    vcpus: Some(0),
                    memory_gb: Some(-1),
                }),
                None,
            )
            .unwrap_or_default();
        let ctx = SpecContext {
            limits: none,
            ..ctx
        };
        let spec = sandbox_spec(&a, &ctx).unwrap();
        assert_eq!(
            (spec.limits.nano_cpus, spec.limits.memory_bytes),
            (None, None)
        );
        assert_eq!(
            spec.hold, None,
            "not held: the image's entrypoint runs the command"
        );
        // Held for in-place provisioning: the image's entrypoint travels with the spec.
        let image_ep = strs(&["/init"]);
        let held = SpecContext {
            hold: Some(&image_ep),
            ..ctx.clone()
        };
        let spec = sandbox_spec(&a, &held).unwrap();
        assert_eq!(spec.hold, Some(image_ep));
        assert_eq!(spec.command, strs(&["echo", "hi"]));
        a.task = None;
        assert_eq!(sandbox_spec(&a, &ctx), Err(SpecError::MissingTask));
    }
}
