//! Wire types of the control-plane protocol (PROTOCOL.md): `oz/1` exactly, plus `berth/1`.
//!
//! Every frame is one JSON object `{"type": "...", "data": {...}}`. Decoding is lenient the way
//! the Go worker is (unknown fields ignored, missing timestamps fine); encoding omits empty
//! optional fields so an oz/1 server sees exactly the fields it knows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::failure::FailureReason;

/// Request header with which berth offers, and a server accepts, the berth/1 extensions.
pub const BERTH_PROTOCOL_HEADER: &str = "X-Berth-Protocol";
/// The only berth/1 protocol version.
pub const BERTH_PROTOCOL_VERSION: &str = "1";
/// Request header naming the worker's version on every dial (PROTOCOL §7).
pub const WORKER_VERSION_HEADER: &str = "X-Warp-Worker-Version";
/// The most bytes of [`WORKER_VERSION_HEADER`] a server keeps.
pub const WORKER_VERSION_MAX: usize = 128;
/// Request header listing the protocol capabilities the worker has (PROTOCOL §7).
pub const WORKER_CAPABILITIES_HEADER: &str = "X-Warp-Worker-Capabilities";
/// berth's capabilities: execution-scoped cancellation and `execution_closed`.
pub const WORKER_CAPABILITIES: &str = "execution-scoped-cancellation-v1";

/// What berth sends as [`WORKER_VERSION_HEADER`]: `berth/<crate version>`, cut to the limit.
pub fn worker_version() -> String {
    let mut v = format!("berth/{}", env!("CARGO_PKG_VERSION"));
    v.truncate(WORKER_VERSION_MAX);
    v
}

/// Rejection reason when every concurrency slot is taken (exact oz/1 text).
pub const REJECT_AT_CAPACITY: &str = "worker at maximum concurrency";
/// `task_completed.message` on success (exact oz/1 text).
pub const MSG_COMPLETED: &str = "Task completed successfully";
/// `task_completed.message` after a user cancellation (exact oz/1 text).
pub const MSG_CANCELLED: &str = "Task cancelled by user request.";
/// `task_failed.message` when the time limit expired (exact oz/1 text).
pub const MSG_TIMEOUT: &str = "The task exceeded its maximum allowed execution time and was terminated. Consider breaking the task into smaller steps or increasing the timeout.";
/// `task_failed.message` when worker shutdown interrupted the task (exact oz/1 text).
pub const MSG_INTERRUPTED: &str = "The task was interrupted due to an infrastructure issue (context canceled). This is typically transient — please try again.";
/// `task_state` value of a cancelled task.
pub const TASK_STATE_CANCELLED: &str = "CANCELLED";

/// The outer JSON object of every frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Message type, e.g. `task_assignment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Payload; absent for payload-less types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// Why a frame from the server could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not a JSON object with a `type`.
    #[error("frame is not a protocol envelope: {0}")]
    NotEnvelope(serde_json::Error),
    /// The `data` of a known type did not decode; `task_id` is kept when it could be read so a
    /// task failure can still be reported.
    #[error("{kind} payload does not decode: {source}")]
    BadPayload {
        /// Message type whose payload failed.
        kind: String,
        /// The task the payload named, if any.
        task_id: Option<String>,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// Longest `task_id` or `execution_id` accepted from a control plane.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id from the control plane: 1 to [`MAX_ID_LEN`] characters from `A-Z a-z 0-9 . _ :
/// -`, not starting with `.`. Ids name files, log fields and container labels; anything else
/// (a path, NUL, a newline, 10 000 characters) is refused as permanent bad input.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    let rule = format!(
        "{field} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : - and must not start with '.'"
    );
    if id.is_empty() {
        return Err(format!("{field} is empty; {rule}"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("{field} is {} characters long; {rule}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!("{field} contains {c:?}; {rule}"));
    }
    if id.starts_with('.') {
        return Err(format!("{field} starts with '.'; {rule}"));
    }
    Ok(())
}

/// The ids of an assignment, checked ([`check_id`]); an empty `execution_id` means "none".
fn check_assignment_ids(a: &TaskAssignment) -> Result<(), String> {
    check_id("task_id", &a.task_id)?;
    match a.execution_id.as_deref() {
        None | Some("") => Ok(()),
        Some(e) => check_id("execution_id", e),
    }
}

/// A message from the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `task_assignment` (oz/1).
    TaskAssignment(Box<TaskAssignment>),
    /// `task_cancellation` (oz/1).
    TaskCancellation {
        /// The run to cancel.
        task_id: String,
        /// Only this execution of it (PROTOCOL §7); every execution here when absent.
        execution_id: Option<String>,
    },
    /// `output_ack` (berth/1).
    OutputAck {
        /// Task of the acknowledged transcript.
        task_id: String,
        /// Execution of the acknowledged transcript.
        execution_id: String,
        /// Bytes `[0, offset)` are stored.
        offset: u64,
    },
    /// `ack` (berth/1).
    Ack {
        /// The acknowledged worker message.
        message_id: String,
    },
    /// `drain` (berth/1).
    Drain,
    /// `resume` (berth/1).
    Resume,
    /// A type this worker does not know; logged and ignored.
    Unknown(String),
}

#[derive(Deserialize)]
struct CancellationData {
    task_id: String,
    #[serde(default)]
    execution_id: Option<String>,
}

#[derive(Deserialize)]
struct OutputAckData {
    task_id: String,
    execution_id: String,
    offset: u64,
}

#[derive(Deserialize)]
struct AckData {
    message_id: String,
}

impl ServerMessage {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let env: Envelope = serde_json::from_str(text).map_err(DecodeError::NotEnvelope)?;
        let raw = env.data.as_ref().map(|d| d.get()).unwrap_or("null");
        let bad = |source: serde_json::Error| DecodeError::BadPayload {
            kind: env.kind.clone(),
            task_id: peek_task_id(raw),
            source,
        };
        Ok(match env.kind.as_str() {
            "task_assignment" => {
                let a: TaskAssignment = serde_json::from_str(raw).map_err(bad)?;
                if let Err(rule) = check_assignment_ids(&a) {
                    return Err(DecodeError::BadPayload {
                        kind: env.kind.clone(),
                        task_id: Some(a.task_id),
                        source: serde::de::Error::custom(rule),
                    });
                }
                ServerMessage::TaskAssignment(Box::new(a))
            }
            "task_cancellation" => {
                let d: CancellationData = serde_json::from_str(raw).map_err(bad)?;
                ServerMessage::TaskCancellation {
                    task_id: d.task_id,
                    execution_id: d.execution_id.filter(|e| !e.is_empty()),
                }
            }
            "output_ack" => {
                let d: OutputAckData = serde_json::from_str(raw).map_err(bad)?;
                ServerMessage::OutputAck {
                    task_id: d.task_id,
                    execution_id: d.execution_id,
                    offset: d.offset,
                }
            }
            "ack" => {
                let d: AckData = serde_json::from_str(raw).map_err(bad)?;
                ServerMessage::Ack {
                    message_id: d.message_id,
                }
            }
            "drain" => ServerMessage::Drain,
            "resume" => ServerMessage::Resume,
            other => ServerMessage::Unknown(other.to_string()),
        })
    }

    /// Encodes the message as a frame (used by the embedded control plane).
    pub fn encode(&self) -> String {
        let (kind, data) = match self {
            ServerMessage::TaskAssignment(a) => ("task_assignment", serde_json::to_value(a).ok()),
            ServerMessage::TaskCancellation {
                task_id,
                execution_id,
            } => {
                let mut d = serde_json::json!({ "task_id": task_id });
                if let Some(e) = execution_id {
                    d["execution_id"] = serde_json::Value::String(e.clone());
                }
                ("task_cancellation", Some(d))
            }
            ServerMessage::OutputAck {
                task_id,
                execution_id,
                offset,
            } => (
                "output_ack",
                Some(
                    serde_json::json!({"task_id": task_id, "execution_id": execution_id, "offset": offset}),
                ),
            ),
            ServerMessage::Ack { message_id } => {
                ("ack", Some(serde_json::json!({ "message_id": message_id })))
            }
            ServerMessage::Drain => ("drain", None),
            ServerMessage::Resume => ("resume", None),
            ServerMessage::Unknown(kind) => (kind.as_str(), None),
        };
        frame(kind, data)
    }
}

/// Best effort: the `task_id` string of a payload that otherwise failed to decode.
fn peek_task_id(raw: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()?
        .get("task_id")?
        .as_str()
        .map(str::to_string)
}

/// Encodes a `task_output` frame straight from borrowed fields: it is the one message sent
/// per 64 KiB of transcript, so it skips the `Value` tree, the copy of the text into it and
/// serde_json's byte-at-a-time escaping. Same fields, order and bytes as serde_json writes.
fn output_frame(
    task_id: &str,
    execution_id: &str,
    offset: u64,
    stream: Stream,
    data: &[u8],
) -> String {
    let mut f = String::with_capacity(data.len() + data.len() / 3 + 160);
    f.push_str(r#"{"type":"task_output","data":{"task_id":"#);
    crate::jsonstr::push(task_id, &mut f);
    f.push_str(r#","execution_id":"#);
    crate::jsonstr::push(execution_id, &mut f);
    f.push_str(r#","offset":"#);
    f.push_str(&offset.to_string());
    f.push_str(r#","stream":"#);
    crate::jsonstr::push(stream.as_str(), &mut f);
    match std::str::from_utf8(data) {
        Ok(text) => {
            f.push_str(r#","data":"#);
            crate::jsonstr::push(text, &mut f);
        }
        Err(_) => {
            use base64::Engine;
            f.push_str(r#","data_b64":""#);
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut f);
            f.push('"');
        }
    }
    f.push_str("}}");
    f
}

fn frame(kind: &str, data: Option<serde_json::Value>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), serde_json::Value::String(kind.into()));
    if let Some(d) = data {
        obj.insert("data".into(), d);
    }
    serde_json::Value::Object(obj).to_string()
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

/// Transcript stream of a `task_output` chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
    /// Lines berth writes itself (pull, start, exit status, truncation).
    System,
}

impl Stream {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }

    /// One-byte code used in the on-disk spool.
    pub fn code(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
            Stream::System => 3,
        }
    }

    /// Inverse of [`Stream::code`].
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            3 => Some(Stream::System),
            _ => None,
        }
    }
}

/// berth/1 fields added to `task_completed` / `task_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalExt {
    /// The execution this result belongs to.
    pub execution_id: String,
    /// Unique per message; the server acknowledges it with `ack`.
    pub message_id: String,
    /// Process exit status (0 on success; 128+N for signal N); `None` when no process ran.
    pub exit_code: Option<i64>,
    /// Claim to result.
    pub duration_ms: u64,
    /// Total transcript length.
    pub transcript_bytes: u64,
    /// Output bytes that could not be stored (a full `state_dir`), each gap announced by a
    /// `system` line; 0 (and absent on the wire) when nothing was lost.
    #[serde(default)]
    pub transcript_lost_bytes: u64,
    /// What the execution used (berth/1; absent when no sample was taken).
    #[serde(default)]
    pub usage: Option<Box<Usage>>,
}

/// A task's resource use so far (berth/1 terminal `usage`, the local API, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, user and system, in milliseconds.
    pub cpu_ms: u64,
    /// Highest memory use seen (the cgroup's own high-water mark where the engine reports
    /// one, else the highest sample).
    pub peak_memory_bytes: u64,
    /// Block-device bytes read and written (0 where the storage driver reports none).
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Network bytes received and sent, all interfaces.
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
    /// Samples folded in.
    pub samples: u32,
}

/// One execution a worker still holds (`worker_hello.tasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTask {
    pub task_id: String,
    pub execution_id: String,
    /// `running` or `finished`.
    pub state: String,
    /// Transcript bytes the worker has for it.
    pub output_offset: u64,
}

/// `worker_hello` payload (berth/1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub worker_id: String,
    /// berth version.
    pub version: String,
    /// Always `docker`.
    pub backend: String,
    /// Slots (0 = unlimited).
    pub max_concurrent_tasks: u32,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Executions still held.
    pub tasks: Vec<HeldTask>,
}

/// The Docker engine in `worker_status.host`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerStatus {
    /// The engine answered its last ping.
    pub reachable: bool,
    /// Engine version (as checked at start-up).
    pub version: String,
}

/// Host capacity in `worker_status.host`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub cpus: f64,
    /// 1-minute load average.
    pub load_1m: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Free disk under `state_dir`.
    pub disk_free_bytes: u64,
    /// The engine.
    pub docker: DockerStatus,
}

/// `worker_status` payload (berth/1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Tasks holding a slot.
    pub active_tasks: usize,
    /// Slots (0 = unlimited).
    pub max_concurrent_tasks: u32,
    /// New assignments would be considered (not draining, not stopping, engine reachable).
    pub accepting: bool,
    /// Drained.
    pub draining: bool,
    /// Seconds since the worker started.
    pub uptime_secs: u64,
    /// Host capacity.
    pub host: HostStatus,
}

/// `task_started` payload (berth/1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub task_id: String,
    pub execution_id: String,
    pub container_id: String,
    /// Image reference.
    pub image: String,
    pub image_id: String,
    /// RFC 3339.
    pub started_at: String,
}

/// A message from the worker to the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerMessage {
    /// `task_claimed`.
    TaskClaimed {
        task_id: String,
        worker_id: String,
        /// The server's execution id (PROTOCOL §7); omitted when empty.
        execution_id: Option<String>,
    },
    /// `task_rejected`.
    TaskRejected {
        task_id: String,
        /// Why; `worker at maximum concurrency` for capacity.
        reason: String,
    },
    /// `task_completed`.
    TaskCompleted {
        task_id: String,
        /// Fixed oz/1 text.
        message: String,
        /// `CANCELLED` after a user cancellation.
        task_state: Option<String>,
        /// berth/1 extension fields (encoded only on berth/1 connections).
        ext: Option<TerminalExt>,
    },
    /// `task_failed`.
    TaskFailed {
        task_id: String,
        /// User-facing text.
        message: String,
        /// Optional task state.
        task_state: Option<String>,
        /// Bounded failure vocabulary.
        failure_reason: Option<FailureReason>,
        /// Exit status; omitted when 0 or unknown.
        exit_code: Option<i64>,
        /// berth/1 extension fields (encoded only on berth/1 connections).
        ext: Option<TerminalExt>,
    },
    /// `worker_hello` (berth/1).
    WorkerHello(Box<Hello>),
    /// `worker_status` (berth/1).
    WorkerStatus(Box<WorkerStatus>),
    /// `task_started` (berth/1).
    TaskStarted(Box<Started>),
    /// `task_output` (berth/1).
    TaskOutput {
        task_id: String,
        execution_id: String,
        /// Transcript position of the first byte.
        offset: u64,
        stream: Stream,
        /// Raw bytes (sent as `data` when UTF-8, else `data_b64`).
        data: Vec<u8>,
    },
    /// `execution_closed` (PROTOCOL §7): a cancelled execution's sandbox is proven gone.
    ExecutionClosed {
        task_id: String,
        execution_id: String,
    },
}

#[derive(Serialize)]
struct TerminalData<'a> {
    task_id: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    ext: Option<ExtData<'a>>,
}

#[derive(Serialize)]
struct ExtData<'a> {
    execution_id: &'a str,
    message_id: &'a str,
    duration_ms: u64,
    transcript_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    transcript_lost_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl WorkerMessage {
    /// The wire `type` of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerMessage::TaskClaimed { .. } => "task_claimed",
            WorkerMessage::TaskRejected { .. } => "task_rejected",
            WorkerMessage::TaskCompleted { .. } => "task_completed",
            WorkerMessage::TaskFailed { .. } => "task_failed",
            WorkerMessage::WorkerHello(_) => "worker_hello",
            WorkerMessage::WorkerStatus(_) => "worker_status",
            WorkerMessage::TaskStarted(_) => "task_started",
            WorkerMessage::TaskOutput { .. } => "task_output",
            WorkerMessage::ExecutionClosed { .. } => "execution_closed",
        }
    }

    /// The task the message is about (empty for `worker_hello`).
    pub fn task_id(&self) -> &str {
        match self {
            WorkerMessage::TaskClaimed { task_id, .. }
            | WorkerMessage::TaskRejected { task_id, .. }
            | WorkerMessage::TaskCompleted { task_id, .. }
            | WorkerMessage::TaskFailed { task_id, .. }
            | WorkerMessage::TaskOutput { task_id, .. }
            | WorkerMessage::ExecutionClosed { task_id, .. } => task_id,
            WorkerMessage::TaskStarted(s) => &s.task_id,
            WorkerMessage::WorkerHello(_) | WorkerMessage::WorkerStatus(_) => "",
        }
    }

    /// The execution the message names, if it names one (oz/1 results do not).
    pub fn execution_id(&self) -> Option<&str> {
        match self {
            WorkerMessage::TaskClaimed { execution_id, .. } => execution_id.as_deref(),
            WorkerMessage::TaskOutput { execution_id, .. }
            | WorkerMessage::ExecutionClosed { execution_id, .. } => Some(execution_id),
            WorkerMessage::TaskStarted(s) => Some(&s.execution_id),
            m => m.ext().map(|e| e.execution_id.as_str()),
        }
    }

    /// True for the types only a berth/1 server may see.
    pub fn is_berth_only(&self) -> bool {
        matches!(
            self,
            WorkerMessage::WorkerHello(_)
                | WorkerMessage::WorkerStatus(_)
                | WorkerMessage::TaskStarted(_)
                | WorkerMessage::TaskOutput { .. }
        )
    }

    /// The terminal extension, if this is a terminal message carrying one.
    pub fn ext(&self) -> Option<&TerminalExt> {
        match self {
            WorkerMessage::TaskCompleted { ext, .. } | WorkerMessage::TaskFailed { ext, .. } => {
                ext.as_ref()
            }
            _ => None,
        }
    }

    /// Encodes the message for a connection; `berth` says whether berth/1 was negotiated.
    /// Returns `None` for berth/1-only types on an oz/1 connection: they are never sent there.
    pub fn encode_for(&self, berth: bool) -> Option<String> {
        if self.is_berth_only() && !berth {
            return None;
        }
        let data = match self {
            WorkerMessage::TaskClaimed {
                task_id,
                worker_id,
                execution_id,
            } => {
                let mut v = serde_json::json!({ "task_id": task_id, "worker_id": worker_id });
                if let Some(e) = execution_id.as_deref().filter(|e| !e.is_empty()) {
                    v["execution_id"] = serde_json::Value::String(e.to_string());
                }
                v
            }
            WorkerMessage::TaskRejected { task_id, reason } => {
                serde_json::json!({ "task_id": task_id, "reason": reason })
            }
            WorkerMessage::TaskCompleted {
                task_id,
                message,
                task_state,
                ext,
            } => serde_json::to_value(TerminalData {
                task_id,
                message,
                task_state: task_state.as_deref(),
                failure_reason: None,
                exit_code: ext.as_ref().filter(|_| berth).and_then(|e| e.exit_code),
                ext: ext.as_ref().filter(|_| berth).map(ext_data),
            })
            .unwrap_or_default(),
            WorkerMessage::TaskFailed {
                task_id,
                message,
                task_state,
                failure_reason,
                exit_code,
                ext,
            } => {
                let berth_ext = ext.as_ref().filter(|_| berth);
                serde_json::to_value(TerminalData {
                    task_id,
                    message,
                    task_state: task_state.as_deref(),
                    failure_reason: failure_reason.map(FailureReason::as_str),
                    // oz/1 omits 0; berth/1 always carries the status.
                    exit_code: match berth_ext {
                        Some(e) => e.exit_code,
                        None => exit_code.filter(|c| *c != 0),
                    },
                    ext: berth_ext.map(ext_data),
                })
                .unwrap_or_default()
            }
            WorkerMessage::WorkerHello(h) => serde_json::to_value(h).unwrap_or_default(),
            WorkerMessage::WorkerStatus(st) => serde_json::to_value(st).unwrap_or_default(),
            WorkerMessage::TaskStarted(s) => serde_json::to_value(s).unwrap_or_default(),
            WorkerMessage::TaskOutput {
                task_id,
                execution_id,
                offset,
                stream,
                data,
            } => return Some(output_frame(task_id, execution_id, *offset, *stream, data)),
            WorkerMessage::ExecutionClosed {
                task_id,
                execution_id,
            } => serde_json::json!({ "task_id": task_id, "execution_id": execution_id }),
        };
        Some(frame(self.kind(), Some(data)))
    }

    /// Encodes for an oz/1 connection (what the Go worker would send).
    pub fn encode(&self) -> String {
        self.encode_for(false).unwrap_or_default()
    }

    /// Decodes a worker frame (used by the embedded control plane).
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Any {
            #[serde(default)]
            task_id: String,
            #[serde(default)]
            worker_id: String,
            #[serde(default)]
            reason: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            task_state: Option<String>,
            #[serde(default)]
            failure_reason: Option<String>,
            #[serde(default)]
            exit_code: Option<i64>,
            #[serde(default)]
            execution_id: Option<String>,
            #[serde(default)]
            message_id: Option<String>,
            #[serde(default)]
            duration_ms: Option<u64>,
            #[serde(default)]
            transcript_bytes: Option<u64>,
            #[serde(default)]
            transcript_lost_bytes: u64,
            #[serde(default)]
            usage: Option<Usage>,
            #[serde(default)]
            offset: u64,
            #[serde(default)]
            stream: Option<Stream>,
            #[serde(default)]
            data: Option<String>,
            #[serde(default)]
            data_b64: Option<String>,
        }
        let env: Envelope = serde_json::from_str(text).map_err(DecodeError::NotEnvelope)?;
        let raw = env.data.as_ref().map(|d| d.get()).unwrap_or("null");
        let bad = |source: serde_json::Error| DecodeError::BadPayload {
            kind: env.kind.clone(),
            task_id: peek_task_id(raw),
            source,
        };
        match env.kind.as_str() {
            "worker_hello" => {
                return Ok(WorkerMessage::WorkerHello(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            "task_started" => {
                return Ok(WorkerMessage::TaskStarted(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            "worker_status" => {
                return Ok(WorkerMessage::WorkerStatus(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            _ => {}
        }
        let d: Any = serde_json::from_str(raw).map_err(bad)?;
        let ext = match (&d.execution_id, &d.message_id) {
            (Some(e), Some(m)) => Some(TerminalExt {
                execution_id: e.clone(),
                message_id: m.clone(),
                exit_code: d.exit_code,
                duration_ms: d.duration_ms.unwrap_or(0),
                transcript_bytes: d.transcript_bytes.unwrap_or(0),
                transcript_lost_bytes: d.transcript_lost_bytes,
                usage: d.usage.map(Box::new),
            }),
            _ => None,
        };
        Ok(match env.kind.as_str() {
            "task_claimed" => WorkerMessage::TaskClaimed {
                task_id: d.task_id,
                worker_id: d.worker_id,
                execution_id: d.execution_id.filter(|e| !e.is_empty()),
            },
            "execution_closed" => WorkerMessage::ExecutionClosed {
                task_id: d.task_id,
                execution_id: d.execution_id.unwrap_or_default(),
            },
            "task_rejected" => WorkerMessage::TaskRejected {
                task_id: d.task_id,
                reason: d.reason,
            },
            "task_completed" => WorkerMessage::TaskCompleted {
                task_id: d.task_id,
                message: d.message,
                task_state: d.task_state,
                ext,
            },
            "task_failed" => WorkerMessage::TaskFailed {
                task_id: d.task_id,
                message: d.message,
                task_state: d.task_state,
                failure_reason: d.failure_reason.as_deref().and_then(FailureReason::parse),
                exit_code: d.exit_code,
                ext,
            },
            "task_output" => {
                let data = match (d.data, d.data_b64) {
                    (Some(t), None) => t.into_bytes(),
                    (None, Some(b)) => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|e| bad(serde::de::Error::custom(e)))?
                    }
                    _ => {
                        return Err(bad(serde::de::Error::custom(
                            "exactly one of data and data_b64 must be present",
                        )));
                    }
                };
                WorkerMessage::TaskOutput {
                    task_id: d.task_id,
                    execution_id: d.execution_id.unwrap_or_default(),
                    offset: d.offset,
                    stream: d.stream.unwrap_or(Stream::System),
                    data,
                }
            }
            other => {
                return Err(DecodeError::BadPayload {
                    kind: other.to_string(),
                    task_id: Some(d.task_id),
                    source: serde::de::Error::custom("unknown worker message type"),
                });
            }
        })
    }
}

fn ext_data(e: &TerminalExt) -> ExtData<'_> {
    ExtData {
        execution_id: &e.execution_id,
        message_id: &e.message_id,
        duration_ms: e.duration_ms,
        transcript_bytes: e.transcript_bytes,
        transcript_lost_bytes: e.transcript_lost_bytes,
        usage: e.usage.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment_frame(task_id: &str, execution_id: Option<&str>) -> String {
        let mut data = serde_json::json!({
            "task_id": task_id,
            "task": {"id": task_id, "title": "t", "task_definition": {"prompt": "p"},
                     "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                     "owner": {"Type": "USER", "Id": 1}},
        });
        if let Some(e) = execution_id {
            data["execution_id"] = serde_json::json!(e);
        }
        serde_json::json!({"type": "task_assignment", "data": data}).to_string()
    }

    #[test]
    fn hostile_ids_are_refused_at_decode_naming_the_field_and_the_rule() {
        let long = "a".repeat(10_000);
        let cases: [(&str, Option<&str>, &str); 9] = [
            ("", None, "task_id is empty"),
            ("../../../../tmp/x/t", None, "task_id contains '/'"),
            ("/tmp/x/abs", None, "task_id contains '/'"),
            ("a\0b", None, "task_id contains '\\0'"),
            ("line\nbreak", None, "task_id contains '\\n'"),
            (&long, None, "task_id is 10000 characters long"),
            ("..", None, "task_id starts with '.'"),
            (
                "t-1",
                Some("../../../../tmp/x/exec"),
                "execution_id contains '/'",
            ),
            ("t-1", Some("/tmp/x/abs"), "execution_id contains '/'"),
        ];
        for (task_id, exec, want) in cases {
            match ServerMessage::decode(&assignment_frame(task_id, exec)) {
                Err(DecodeError::BadPayload {
                    kind,
                    task_id: t,
                    source,
                }) => {
                    assert_eq!(kind, "task_assignment");
                    assert_eq!(t.as_deref(), Some(task_id));
                    let msg = source.to_string();
                    assert!(msg.contains(want), "{task_id:?}/{exec:?}: {msg}");
                    assert!(msg.contains("must be 1 to 128 characters"), "{msg}");
                }
                other => panic!("{task_id:?}/{exec:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn ordinary_ids_decode() {
        for (t, e) in [
            (
                "task-14a4f73408ba4316",
                Some("e51c9223-6e85-4172-840b-d53aa6e2768d"),
            ),
            ("01HZX:run_2.a", None),
            ("t", Some("")),
        ] {
            assert!(
                matches!(
                    ServerMessage::decode(&assignment_frame(t, e)),
                    Ok(ServerMessage::TaskAssignment(_))
                ),
                "{t}"
            );
        }
        assert!(check_id("task_id", &"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(check_id("task_id", &"a".repeat(MAX_ID_LEN + 1)).is_err());
    }
    use serde_json::{Value, json};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn full_oz_assignment_decodes_with_capitalised_owner_keys() {
        let frame = json!({"type": "task_assignment", "data": {
            "task_id": "t1", "execution_id": "e1",
            "task": {"id": "t1", "title": "Fix", "task_definition": {"prompt": "do"},
                     "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                     "owner": {"Type": "TEAM", "Id": 42},
                     "agent_config_snapshot": {"model_id": "m", "mcp_servers": {"b": {"x": 1}},
                        "harness": {"type": "claude"}, "inference_providers": {"aws": {"disabled": false, "role_arn": "r", "region": "eu"}},
                        "session_sharing": {"public_access": "VIEWER"}}},
            "docker_image": "ubuntu:22.04", "sidecar_image": "warpdotdev/warp-agent:latest",
            "env_vars": {"A": "1"}, "additional_sidecars": [{"image": "x", "mount_path": "/x", "read_write": true}],
            "additional_oz_args": ["--foo"], "instance_shape": {"vcpus": 2, "memory_gb": 4}
        }});
        let msg = ServerMessage::decode(&frame.to_string());
        let Ok(ServerMessage::TaskAssignment(a)) = msg else {
            panic!("expected assignment, got {msg:?}");
        };
        assert_eq!(a.task_id, "t1");
        let task = a.task.clone().unwrap_or_default();
        assert_eq!(
            task.owner,
            Some(Owner {
                kind: "TEAM".into(),
                id: 42
            })
        );
        assert_eq!(a.instance_shape.and_then(|s| s.memory_gb), Some(4));
        let snap = task.agent_config_snapshot.unwrap_or_default();
        assert_eq!(snap.harness.and_then(|h| h.kind).as_deref(), Some("claude"));
        // Round trip keeps the capitalised keys.
        let back = parse(&ServerMessage::TaskAssignment(a).encode());
        assert_eq!(
            back["data"]["task"]["owner"],
            json!({"Type": "TEAM", "Id": 42})
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_timestamps_may_be_missing() {
        let f = r#"{"type":"task_assignment","data":{"task_id":"t","surprise":1,"task":{"id":"t","new_field":[1]}}}"#;
        assert!(matches!(
            ServerMessage::decode(f),
            Ok(ServerMessage::TaskAssignment(_))
        ));
    }

    #[test]
    fn assignment_without_task_decodes_rather_than_failing() {
        let f = r#"{"type":"task_assignment","data":{"task_id":"t"}}"#;
        let Ok(ServerMessage::TaskAssignment(a)) = ServerMessage::decode(f) else {
            panic!("should decode");
        };
        assert!(a.task.is_none());
    }

    #[test]
    fn bad_payload_keeps_the_task_id_for_reporting() {
        let f = r#"{"type":"task_assignment","data":{"task_id":"t9","instance_shape":{"vcpus":"many"}}}"#;
        match ServerMessage::decode(f) {
            Err(DecodeError::BadPayload { task_id, kind, .. }) => {
                assert_eq!(task_id.as_deref(), Some("t9"));
                assert_eq!(kind, "task_assignment");
            }
            other => panic!("expected BadPayload, got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_unknown_types_are_distinguished() {
        assert!(matches!(
            ServerMessage::decode("not json"),
            Err(DecodeError::NotEnvelope(_))
        ));
        assert!(matches!(
            ServerMessage::decode(r#"{"data":{}}"#),
            Err(DecodeError::NotEnvelope(_))
        ));
        assert_eq!(
            ServerMessage::decode(r#"{"type":"heartbeat"}"#).ok(),
            Some(ServerMessage::Unknown("heartbeat".into()))
        );
        assert_eq!(
            ServerMessage::decode(r#"{"type":"drain"}"#).ok(),
            Some(ServerMessage::Drain)
        );
    }

    #[test]
    fn cancellation_and_acks_decode() {
        assert_eq!(
            ServerMessage::decode(r#"{"type":"task_cancellation","data":{"task_id":"a"}}"#).ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: "a".into(),
                execution_id: None,
            })
        );
        // PROTOCOL §7: execution-scoped; an empty id is the same as none.
        assert_eq!(
            ServerMessage::decode(
                r#"{"type":"task_cancellation","data":{"task_id":"a","execution_id":"e"}}"#
            )
            .ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: "a".into(),
                execution_id: Some("e".into()),
            })
        );
        assert_eq!(
            ServerMessage::decode(
                r#"{"type":"task_cancellation","data":{"task_id":"a","execution_id":""}}"#
            )
            .ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: "a".into(),
                execution_id: None,
            })
        );
        assert_eq!(
            ServerMessage::decode(
                r#"{"type":"output_ack","data":{"task_id":"a","execution_id":"e","offset":7}}"#
            )
            .ok(),
            Some(ServerMessage::OutputAck {
                task_id: "a".into(),
                execution_id: "e".into(),
                offset: 7
            })
        );
    }

    #[test]
    fn claimed_and_rejected_have_exact_shapes() {
        let c = WorkerMessage::TaskClaimed {
            task_id: "t".into(),
            worker_id: "w".into(),
            execution_id: None,
        };
        assert_eq!(
            parse(&c.encode()),
            json!({"type": "task_claimed", "data": {"task_id": "t", "worker_id": "w"}})
        );
        // PROTOCOL §7: the execution id rides along on oz/1 too, and is omitted when empty.
        for (execution_id, want) in [
            (
                Some("e-1"),
                json!({"task_id": "t", "worker_id": "w", "execution_id": "e-1"}),
            ),
            (Some(""), json!({"task_id": "t", "worker_id": "w"})),
        ] {
            let c = WorkerMessage::TaskClaimed {
                task_id: "t".into(),
                worker_id: "w".into(),
                execution_id: execution_id.map(str::to_string),
            };
            for berth in [false, true] {
                assert_eq!(
                    parse(&c.encode_for(berth).unwrap_or_default()),
                    json!({"type": "task_claimed", "data": want})
                );
            }
        }
        // execution_closed: both ids, on oz/1 and berth/1 alike.
        let closed = WorkerMessage::ExecutionClosed {
            task_id: "t".into(),
            execution_id: "e-1".into(),
        };
        for berth in [false, true] {
            let text = closed.encode_for(berth).unwrap_or_default();
            assert_eq!(
                parse(&text),
                json!({"type": "execution_closed", "data": {"task_id": "t", "execution_id": "e-1"}})
            );
            assert_eq!(WorkerMessage::decode(&text).ok(), Some(closed.clone()));
        }
        let r = WorkerMessage::TaskRejected {
            task_id: "t".into(),
            reason: REJECT_AT_CAPACITY.into(),
        };
        assert_eq!(
            parse(&r.encode()),
            json!({"type": "task_rejected", "data": {"task_id": "t", "reason": "worker at maximum concurrency"}})
        );
    }

    #[test]
    fn terminal_messages_omit_empty_optional_fields() {
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: None,
        };
        assert_eq!(
            parse(&ok.encode()),
            json!({"type": "task_completed", "data": {"task_id": "t", "message": "Task completed successfully"}})
        );
        let cancelled = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_CANCELLED.into(),
            task_state: Some(TASK_STATE_CANCELLED.into()),
            ext: None,
        };
        assert_eq!(
            parse(&cancelled.encode())["data"]["task_state"],
            json!("CANCELLED")
        );
        let failed = WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "Failed to execute task: x".into(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(3),
            ext: None,
        };
        assert_eq!(
            parse(&failed.encode()),
            json!({"type": "task_failed", "data": {"task_id": "t", "message": "Failed to execute task: x", "failure_reason": "container_exit", "exit_code": 3}})
        );
        let zero = WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            failure_reason: None,
            exit_code: Some(0),
            ext: None,
        };
        assert_eq!(
            parse(&zero.encode()),
            json!({"type": "task_failed", "data": {"task_id": "t", "message": "m"}})
        );
    }

    #[test]
    fn worker_messages_round_trip_through_the_server_decoder() {
        let msgs = [
            WorkerMessage::TaskClaimed {
                task_id: "t".into(),
                worker_id: "w".into(),
                execution_id: Some("e".into()),
            },
            WorkerMessage::TaskFailed {
                task_id: "t".into(),
                message: "m".into(),
                task_state: None,
                failure_reason: Some(FailureReason::ContainerOom),
                exit_code: Some(137),
                ext: None,
            },
        ];
        for m in msgs {
            assert_eq!(WorkerMessage::decode(&m.encode()).ok(), Some(m));
        }
    }

    fn ext() -> TerminalExt {
        TerminalExt {
            execution_id: "e".into(),
            message_id: "m".into(),
            exit_code: Some(0),
            duration_ms: 12,
            transcript_bytes: 34,
            transcript_lost_bytes: 0,
            usage: None,
        }
    }

    #[test]
    fn terminal_extension_is_encoded_only_for_berth() {
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: Some(ext()),
        };
        assert_eq!(
            parse(&ok.encode()),
            json!({"type": "task_completed", "data": {"task_id": "t", "message": "Task completed successfully"}})
        );
        assert_eq!(
            parse(&ok.encode_for(true).unwrap_or_default())["data"],
            json!({"task_id": "t", "message": "Task completed successfully", "execution_id": "e",
                   "message_id": "m", "exit_code": 0, "duration_ms": 12, "transcript_bytes": 34})
        );
        // Usage (berth/1 only) has a fixed shape and round-trips; oz/1 never sees it.
        let used = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: Some(TerminalExt {
                usage: Some(Box::new(Usage {
                    cpu_ms: 1500,
                    peak_memory_bytes: 2048,
                    read_bytes: 1,
                    write_bytes: 2,
                    network_rx_bytes: 3,
                    network_tx_bytes: 4,
                    samples: 5,
                })),
                ..ext()
            }),
        };
        let wire = used.encode_for(true).unwrap_or_default();
        assert_eq!(
            parse(&wire)["data"]["usage"],
            json!({"cpu_ms": 1500, "peak_memory_bytes": 2048, "read_bytes": 1, "write_bytes": 2,
                   "network_rx_bytes": 3, "network_tx_bytes": 4, "samples": 5})
        );
        assert_eq!(WorkerMessage::decode(&wire).ok(), Some(used.clone()));
        assert_eq!(parse(&used.encode())["data"].get("usage"), None);
        let failed = WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(2),
            ext: Some(TerminalExt {
                exit_code: Some(2),
                ..ext()
            }),
        };
        assert_eq!(parse(&failed.encode())["data"].get("message_id"), None);
        assert_eq!(
            parse(&failed.encode_for(true).unwrap_or_default())["data"]["exit_code"],
            json!(2)
        );
        assert_eq!(
            WorkerMessage::decode(&failed.encode_for(true).unwrap_or_default()).ok(),
            Some(failed)
        );
    }

    #[test]
    fn berth_only_messages_are_never_encoded_for_oz() {
        let out = WorkerMessage::TaskOutput {
            task_id: "t".into(),
            execution_id: "e".into(),
            offset: 5,
            stream: Stream::Stderr,
            data: b"hi".to_vec(),
        };
        assert_eq!(out.encode_for(false), None);
        assert_eq!(out.encode(), "");
        assert_eq!(
            parse(&out.encode_for(true).unwrap_or_default()),
            json!({"type": "task_output", "data": {"task_id": "t", "execution_id": "e", "offset": 5, "stream": "stderr", "data": "hi"}})
        );
    }

    proptest::proptest! {
        #[test]
        fn any_output_frame_is_the_json_serde_would_write_and_decodes_back(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            text in "[ -~\\n\\t\"\\\\é✓\u{1}]{0,120}",
            task_id in "[a-z0-9\"\\\\]{1,12}",
            offset in proptest::prelude::any::<u64>(),
        ) {
            for bytes in [data.clone(), text.clone().into_bytes()] {
                let m = WorkerMessage::TaskOutput {
                    task_id: task_id.clone(),
                    execution_id: "e-1".into(),
                    offset,
                    stream: Stream::Stdout,
                    data: bytes.clone(),
                };
                let wire = m.encode_for(true).unwrap_or_default();
                let mut want = json!({"task_id": task_id, "execution_id": "e-1", "offset": offset, "stream": "stdout"});
                match std::str::from_utf8(&bytes) {
                    Ok(t) => want["data"] = json!(t),
                    Err(_) => {
                        use base64::Engine;
                        want["data_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
                    }
                }
                let want = json!({"type": "task_output", "data": want});
                proptest::prop_assert_eq!(parse(&wire), want);
                proptest::prop_assert_eq!(WorkerMessage::decode(&wire).ok(), Some(m));
            }
        }
    }

    #[test]
    fn the_worker_version_names_berth_and_fits_the_header_limit() {
        let v = worker_version();
        assert_eq!(v, format!("berth/{}", env!("CARGO_PKG_VERSION")));
        assert!(v.len() <= WORKER_VERSION_MAX);
    }

    #[test]
    fn output_that_is_not_utf8_travels_as_base64_and_round_trips() {
        for bytes in [
            vec![0xff, 0xfe, 0x00, b'a'],
            vec![0u8; 3],
            "é✓".as_bytes().to_vec(),
            vec![0xe2, 0x9c],
        ] {
            let m = WorkerMessage::TaskOutput {
                task_id: "t".into(),
                execution_id: "e".into(),
                offset: 0,
                stream: Stream::Stdout,
                data: bytes.clone(),
            };
            let f = parse(&m.encode_for(true).unwrap_or_default());
            let utf8 = std::str::from_utf8(&bytes).is_ok();
            assert_eq!(f["data"].get("data").is_some(), utf8);
            assert_eq!(f["data"].get("data_b64").is_some(), !utf8);
            assert_eq!(
                WorkerMessage::decode(&m.encode_for(true).unwrap_or_default()).ok(),
                Some(m)
            );
        }
    }

    #[test]
    fn interrupted_message_uses_an_em_dash() {
        assert!(MSG_INTERRUPTED.contains("transient \u{2014} please"));
    }
}
