//! One execution of a task as the embedded control plane records it (PROTOCOL §7): a run can
//! be executed more than once (`POST /v1/tasks/{id}/retry`), and every execution reports,
//! is cancelled and is closed on its own.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::task_state::TaskState;

/// One execution of a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Execution id sent to the worker.
    pub execution_id: String,
    pub state: TaskState,
    /// Worker that claimed it.
    pub worker: Option<String>,
    /// Exit code (0 on success).
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
    /// Message from the worker's terminal message.
    pub message: Option<String>,
    /// How many `task_claimed` messages arrived (a re-assignment is claimed again).
    pub claims: u32,
    /// Claim time.
    pub claimed_at: Option<DateTime<Utc>>,
    /// Terminal message time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Cancellation requested.
    pub cancel_requested: bool,
    /// Container (berth/1 `task_started`).
    pub container_id: Option<String>,
    /// Transcript bytes stored.
    pub transcript_bytes: u64,
    /// Transcript length announced by the terminal message (berth/1).
    pub expected_transcript_bytes: Option<u64>,
    /// What the execution used, from its terminal message (berth/1).
    #[serde(default)]
    pub usage: Option<crate::protocol::Usage>,
    /// The worker's structured account of a failure (`failure_details`), when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<serde_json::Value>,
    /// Terminal frames received, duplicates included.
    pub terminal_received: u32,
    /// Distinct terminal messages (by `message_id`; oz/1 messages count once each).
    pub terminal_distinct: u32,
    /// `execution_closed` messages received (the worker proved the sandbox gone).
    #[serde(default)]
    pub closed: u32,
    /// When the first `execution_closed` arrived.
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub(super) message_ids: HashSet<String>,
}

impl ExecutionRecord {
    /// A queued execution.
    pub fn queued(execution_id: String) -> Self {
        ExecutionRecord {
            execution_id,
            state: TaskState::Queued,
            worker: None,
            exit_code: None,
            failure_reason: None,
            message: None,
            claims: 0,
            claimed_at: None,
            finished_at: None,
            cancel_requested: false,
            container_id: None,
            transcript_bytes: 0,
            expected_transcript_bytes: None,
            usage: None,
            failure_details: None,
            terminal_received: 0,
            terminal_distinct: 0,
            closed: 0,
            closed_at: None,
            message_ids: HashSet::new(),
        }
    }

    /// The execution ended and, for berth/1, its whole transcript is stored.
    pub fn complete(&self) -> bool {
        self.state.is_terminal()
            && self
                .expected_transcript_bytes
                .is_none_or(|n| self.transcript_bytes >= n)
    }

    /// Still to end (queued, assigned or running).
    pub fn active(&self) -> bool {
        !self.state.is_terminal()
    }

    /// Records a final state; the first terminal message wins.
    pub(super) fn end(
        &mut self,
        state: TaskState,
        message: String,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        self.state = state;
        self.message = Some(message);
        self.finished_at = Some(now);
        self.worker.get_or_insert_with(|| worker_id.to_string());
        true
    }
}
