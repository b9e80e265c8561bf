//! The bodies of what the worker sends: transcript streams, the terminal-message extension
//! with its usage, and the berth/1 hello / status / started payloads. Plain serde shapes; the
//! framing around them is in `worker.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// The engine's structured account of a failure (`failure_details`, sent on oz/1 and
    /// berth/1 alike: PROTOCOL.md §8.1); only the Kubernetes backend has one.
    #[serde(default)]
    pub failure_details: Option<Box<serde_json::Value>>,
    /// The server named this execution in its assignment: only then does oz/1 echo
    /// `execution_id` on the result (PROTOCOL.md §8.2); berth's own ids never reach an oz/1
    /// server. Not a wire field: the journal restores it from the stored assignment.
    #[serde(skip)]
    pub assigned: bool,
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
    /// The backend tasks run on (`docker`).
    pub backend: String,
    /// Slots (0 = unlimited).
    pub max_concurrent_tasks: u32,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Executions still held.
    pub tasks: Vec<HeldTask>,
}

/// The engine in `worker_status.host.engine`: the engine-neutral twin of `docker`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The backend (`docker`), as `worker_hello.backend` names it.
    pub backend: String,
    /// The engine answered its last ping.
    pub reachable: bool,
    /// Engine version (as checked at start-up).
    pub version: String,
}

/// The Docker engine in `worker_status.host` (kept for berth/1 servers that read it; the same
/// facts as `engine`).
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
    /// The engine (named `docker` whatever the backend: read `engine`).
    pub docker: DockerStatus,
    /// The engine, engine-neutral.
    #[serde(default)]
    pub engine: EngineStatus,
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
