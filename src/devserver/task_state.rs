//! Where a task (one execution of it) is in its life on the server: the one small type both the
//! execution record and the state machine use, kept apart so neither has to import the other.

use serde::{Deserialize, Serialize};

/// Where a task is in its life on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Sent to a worker, not yet claimed or rejected.
    Assigned,
    /// Claimed by a worker.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with a failure.
    Failed,
    Cancelled,
}

impl TaskState {
    /// The task has its final result.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}
