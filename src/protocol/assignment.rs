//! The schema of a `task_assignment`: the work the server hands out (oz/1 fields plus the
//! optional berth/1 ones). Kept apart from the other messages because most of the worker
//! (spec, supervisor, journal, task run) reads it and nothing else of the protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::check_id;

/// The ids of an assignment, checked ([`check_id`]); an empty `execution_id` means "none".
pub(super) fn check_assignment_ids(a: &TaskAssignment) -> Result<(), String> {
    check_id("task_id", &a.task_id)?;
    match a.execution_id.as_deref() {
        None | Some("") => Ok(()),
        Some(e) => check_id("execution_id", e),
    }
}

/// `task_assignment` payload (oz/1 fields plus optional berth/1 fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// Identifies the run.
    pub task_id: String,
    /// One concrete execution of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The task object; required by the protocol, but its absence must not crash the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Image resolved from the run's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    /// Image holding the agent runtime, mounted at `/agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    /// Environment variables for the task; values are secrets and never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Extra sidecar volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_sidecars: Option<Vec<AdditionalSidecar>>,
    /// Appended verbatim to the agent argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_oz_args: Option<Vec<String>>,
    /// Compute size of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
    /// berth/1: argv to run instead of the agent entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// berth/1: inline environment definition (provisioning arrives with the environments work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<serde_json::Value>,
    /// berth/1: hard wall-clock limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// PROTOCOL §8.3: export this execution's logs over OTLP. Absent: nothing is exported
    /// and nothing about the run changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry_collection: Option<TelemetryCollection>,
    /// Trust data for the Oz CLI's lifecycle hooks (PROTOCOL.md §8.5), kept as received: it is
    /// decoded strictly at admission, where a bad one refuses the task instead of failing the
    /// whole message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oz_lifecycle_hooks: Option<RawJson>,
}

/// `telemetry_collection` (PROTOCOL §8.3): where and whether to export the execution's logs.
/// Only `bootstrap_token` is optional on the wire; the other members are always sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryCollection {
    /// OTLP/HTTP base URL; records go to `{endpoint}/v1/logs`.
    #[serde(default)]
    pub endpoint: String,
    /// Export logs.
    #[serde(default)]
    pub logging_enabled: bool,
    /// Export traces (berth exports no traces).
    #[serde(default)]
    pub tracing_enabled: bool,
    /// A secret berth never uses for logs; registered for redaction only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<BootstrapToken>,
}

/// `telemetry_collection.bootstrap_token`; its `Debug` never shows the token.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootstrapToken {
    /// The secret.
    #[serde(default)]
    pub token: String,
    /// RFC 3339, kept as text (berth never interprets it).
    #[serde(default)]
    pub expires_at: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The `task` object of an assignment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Task id (goes into `TASK_ID` and `--task-id`).
    #[serde(default)]
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// The prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<TaskDefinition>,
    /// RFC 3339; kept as text because the worker never interprets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Who owns the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Agent configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config_snapshot: Option<AgentConfigSnapshot>,
    /// Conversation to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_conversation_id: Option<String>,
}

/// `task.task_definition`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskDefinition {
    /// The prompt text.
    #[serde(default)]
    pub prompt: String,
}

/// `task.owner`; note the capitalised keys of the Go encoding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    /// `USER` or `TEAM`.
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// Numeric owner id.
    #[serde(rename = "Id", default)]
    pub id: i64,
}

/// `task.agent_config_snapshot`; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfigSnapshot {
    /// Named environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spec: Option<String>,
    /// MCP servers: name → arbitrary JSON, kept as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<BTreeMap<String, RawJson>>,
    /// Computer use switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use_enabled: Option<bool>,
    /// Idle timeout after completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<i64>,
    /// Agent harness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<Harness>,
    /// Harness secrets (names only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_auth_secrets: Option<serde_json::Value>,
    /// Inference provider settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_providers: Option<InferenceProviders>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sharing: Option<SessionSharing>,
    /// Disable snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_disabled: Option<bool>,
    /// Snapshot upload timeout (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_upload_timeout_secs: Option<i64>,
    /// Snapshot script timeout (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_script_timeout_secs: Option<i64>,
    /// The model computer use runs on (PROTOCOL.md §8.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use_model_id: Option<String>,
    /// Which head of which repository to check out (PROTOCOL.md §8.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_head_overrides: Option<Vec<RepositoryHeadOverride>>,
}

/// One `repository_head_overrides` entry; field order is the argv JSON's (PROTOCOL.md §8.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepositoryHeadOverride {
    #[serde(default)]
    pub code_forge: String,
    #[serde(default)]
    pub repo_owner: String,
    #[serde(default)]
    pub repo_name: String,
    #[serde(default)]
    pub head: RepositoryHead,
    /// Clone from another repository (a fork's upstream); omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_from: Option<CloneFrom>,
    /// Keep the `origin` remote; omitted when unset or false.
    #[serde(default, skip_serializing_if = "not_true")]
    pub preserve_origin: Option<bool>,
}

fn not_true(b: &Option<bool>) -> bool {
    *b != Some(true)
}

/// `head`: `{type: COMMIT_SHA | BRANCH, value}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepositoryHead {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub value: String,
}

/// `clone_from`: `{code_forge, owner, repo}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloneFrom {
    #[serde(default)]
    pub code_forge: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub repo: String,
}

/// A JSON value kept exactly as received (the agent argv re-emits it compacted, not re-ordered).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// The JSON text as received.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// `harness: {type}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Harness {
    /// Harness type; absent, `""` or `oz` mean the Oz harness.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `inference_providers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceProviders {
    /// AWS Bedrock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsInference>,
}

/// `inference_providers.aws`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AwsInference {
    /// Provider disabled.
    #[serde(default)]
    pub disabled: bool,
    /// Role to assume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `session_sharing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSharing {
    /// `VIEWER` or `EDITOR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access: Option<String>,
}

/// One `additional_sidecars` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdditionalSidecar {
    /// Image whose filesystem becomes the volume.
    #[serde(default)]
    pub image: String,
    /// Where it is mounted.
    #[serde(default)]
    pub mount_path: String,
    /// Mounted writable when true.
    #[serde(default)]
    pub read_write: bool,
}

/// `instance_shape`; a non-positive or absent axis means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceShape {
    /// CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i64>,
    /// Memory in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<i64>,
}
