//! The server's tables (tasks in submission order, the queue, connected workers, transcripts) and
//! the reads on them. The fields are `pub(super)` so the files of `state/` that change them can;
//! nothing outside `state/` sees them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::devserver::stored_transcript::StoredTranscript;
use crate::devserver::task::TaskRecord;
use crate::devserver::task_state::TaskState;
use crate::devserver::workers::WorkerRecord;

/// The whole server state.
#[derive(Debug, Default)]
pub struct State {
    pub(super) tasks: HashMap<String, TaskRecord>,
    pub(super) order: Vec<String>,
    pub(super) queue: VecDeque<String>,
    pub(super) workers: BTreeMap<String, WorkerRecord>,
    // Kept apart from the records so reading a record never copies a transcript.
    pub(super) transcripts: HashMap<String, StoredTranscript>,
    pub(super) unknown: VecDeque<(String, String, String)>,
    /// Bumped on every change, for long-polling waiters.
    pub version: u64,
}

impl State {
    /// The stored transcript of a task's current execution.
    pub fn transcript(&self, id: &str) -> Option<&StoredTranscript> {
        let t = self.tasks.get(id)?;
        self.transcripts.get(&t.current.execution_id)
    }

    /// The stored transcript of one execution.
    pub fn execution_transcript(&self, execution_id: &str) -> Option<&StoredTranscript> {
        self.transcripts.get(execution_id)
    }

    /// One task.
    pub fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    /// Every task, in submission order.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.order
            .iter()
            .filter_map(|id| self.tasks.get(id).cloned())
            .collect()
    }

    /// Every connected worker.
    pub fn workers(&self) -> Vec<WorkerRecord> {
        self.workers.values().cloned().collect()
    }

    /// `(message type, task id)` of recent worker messages about tasks this server never had.
    pub fn unknown_task_messages(&self) -> Vec<(String, String)> {
        self.unknown
            .iter()
            .map(|(k, t, _)| (k.clone(), t.clone()))
            .collect()
    }

    /// `(message type, task id, message text)` of those messages (text empty when none).
    pub fn unknown_task_results(&self) -> Vec<(String, String, String)> {
        self.unknown.iter().cloned().collect()
    }

    /// The current connection number of a worker.
    pub fn conn_of(&self, worker_id: &str) -> Option<u64> {
        self.workers.get(worker_id).map(|w| w.conn)
    }

    pub(super) fn running_on(&self, worker_id: &str) -> usize {
        self.tasks
            .values()
            .flat_map(|t| t.executions())
            .filter(|e| e.state == TaskState::Running && e.worker.as_deref() == Some(worker_id))
            .count()
    }
}
