//! The supervisor's vocabulary: its commands, its static settings, and the key of its table.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ShutdownMode;

/// What the rest of the worker (the local API, reload) may ask of the supervisor. The control
/// plane's own drain/resume messages take the same path.
#[derive(Debug, Clone)]
pub enum Command {
    /// Stop accepting tasks; running ones finish.
    Drain,
    /// Accept tasks again.
    Resume,
    /// Apply reloaded settings.
    Reconfigure(Box<Reconfigure>),
    /// The operator on this host stops a task (`berth cancel`): reported as cancelled, like
    /// a control-plane cancellation, but no `execution_closed` is owed (none was asked for).
    Cancel {
        task_id: String,
        /// Only this execution (default: every execution of the task here).
        execution_id: Option<String>,
    },
}

/// Settings a reload may change while the worker runs.
#[derive(Debug, Clone)]
pub struct Reconfigure {
    /// Slots.
    pub max: u32,
    /// `worker_hello` labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Reservations and limits.
    pub policy: crate::spec::policy::Policy,
    /// Held back for the host.
    pub reserve: crate::spec::policy::Resources,
    /// Minimum free disk.
    pub min_free_disk: u64,
}

/// One execution: a run (`task_id`) and one execution of it. The unit of the task table
/// (PROTOCOL §7): two executions of one run are two entries, and one's end never touches the
/// other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecKey {
    pub task_id: String,
    pub execution_id: String,
}

impl ExecKey {
    /// The key of `execution_id` of run `task_id`.
    pub fn new(task_id: &str, execution_id: &str) -> Self {
        ExecKey {
            task_id: task_id.to_string(),
            execution_id: execution_id.to_string(),
        }
    }

    /// Named by a cancellation: its run, and its execution unless none is given (PROTOCOL §7).
    pub fn named_by(&self, task_id: &str, execution_id: Option<&str>) -> bool {
        self.task_id == task_id && execution_id.is_none_or(|e| e == self.execution_id)
    }
}

/// What a container found at start-up tells about a journaled execution.
#[derive(Debug, Clone)]
pub enum Found {
    /// Its container exists (running or exited).
    Container(String),
    /// No container carries its execution id.
    Vanished,
}

/// Static settings of the supervisor.
pub struct SupervisorConfig {
    /// Slots (0 = unlimited).
    pub max: u32,
    /// What SIGTERM does.
    pub shutdown_mode: ShutdownMode,
    /// How long shutdown waits, once no task runs, for the last results to be delivered.
    pub shutdown_grace: Duration,
    /// Where spools live.
    pub spool_dir: PathBuf,
    /// Transcript budget.
    pub max_bytes: u64,
    /// Kept tail.
    pub tail_bytes: u64,
    /// How long a full disk is waited for before output is counted as lost.
    pub full_disk_patience: std::time::Duration,
    /// Hello fields.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the host has, when tasks run on it (`None`: a cluster's scheduler places them,
    /// and only the slots bound what this berth takes).
    pub host: Option<crate::supervisor::capacity::Host>,
    /// Held back for the host.
    pub reserve: crate::spec::policy::Resources,
    /// Minimum free disk under `disk_paths`.
    pub min_free_disk: u64,
    /// `state_dir` and Docker's data dir.
    pub disk_paths: Vec<PathBuf>,
    /// For task reservations.
    pub policy: crate::spec::policy::Policy,
    /// `--one-shot`: one task, then stop with its status.
    pub one_shot: bool,
}
