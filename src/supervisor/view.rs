//! What the supervisor shows of itself: the [`Snapshot`] status views read, and the executions
//! `worker_hello` says it still holds.

use std::sync::Arc;

use tokio::sync::watch;

use super::{ExecKey, Supervisor};
use crate::protocol::HeldTask;
use crate::task::TaskControl;
use crate::transcript::spool::lock;

/// One execution in a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task_id: String,
    pub execution_id: String,
    /// `running` (holds a slot), `stopping` (asked to stop: cancel, time limit, shutdown; still
    /// holds its slot) or `delivering` (ended; transcript or result not yet acknowledged).
    pub state: &'static str,
    /// Image the assignment asked for (empty: the environment's or the default).
    pub image: String,
    /// When it was claimed.
    pub claimed_at: chrono::DateTime<chrono::Utc>,
    /// Live transcript length.
    pub output: watch::Receiver<crate::transcript::spool::SpoolState>,
    /// The running task's handle (its live resource usage); `None` once it ended.
    pub control: Option<Arc<TaskControl>>,
}

/// A snapshot of the supervisor's state for status reporting.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Tasks holding a slot.
    pub active: usize,
    /// Slot count (0 = unlimited).
    pub max: u32,
    /// Refusing new work because of shutdown.
    pub stopping: bool,
    /// Refusing new work because of drain.
    pub draining: bool,
    /// Executions whose transcript or result is not yet delivered.
    pub undelivered: usize,
    /// Cancelled executions whose `execution_closed` is still owed.
    pub closing: usize,
    /// Every execution held, running first.
    pub tasks: Vec<TaskView>,
}

impl Supervisor {
    /// Publishes the snapshot (status views) and the `worker_hello` tasks from the table.
    pub(super) fn publish(&self) {
        let mut tasks: Vec<TaskView> = Vec::new();
        for (key, t) in &self.tasks {
            if let Some(d) = self.deliveries.get(&key.execution_id) {
                tasks.push(TaskView {
                    task_id: key.task_id.clone(),
                    execution_id: key.execution_id.clone(),
                    // A task asked to stop (cancel, time limit, shutdown) shows it until it ends.
                    state: if t.control.reason().is_some() {
                        "stopping"
                    } else {
                        "running"
                    },
                    image: t.image.clone(),
                    claimed_at: t.claimed_at,
                    output: lock(&d.spool).subscribe(),
                    control: Some(t.control.clone()),
                });
            }
        }
        for (execution_id, d) in self.deliveries.iter() {
            if !self
                .tasks
                .contains_key(&ExecKey::new(&d.task_id, execution_id))
            {
                tasks.push(TaskView {
                    task_id: d.task_id.clone(),
                    execution_id: execution_id.clone(),
                    state: "delivering",
                    image: String::new(),
                    claimed_at: chrono::Utc::now(),
                    output: lock(&d.spool).subscribe(),
                    control: None,
                });
            }
        }
        tasks.sort_by(|a, b| {
            (a.state, a.claimed_at)
                .cmp(&(b.state, b.claimed_at))
                .reverse()
        });
        self.snapshot.send_replace(Snapshot {
            active: self.tasks.len(),
            max: self.cfg.max,
            stopping: self.stopping,
            draining: self.draining,
            undelivered: self.deliveries.len(),
            closing: self.closures.len(),
            tasks,
        });
        let mut held: Vec<HeldTask> = self
            .deliveries
            .iter()
            .map(|(execution_id, d)| HeldTask {
                task_id: d.task_id.clone(),
                execution_id: execution_id.clone(),
                state: if self
                    .tasks
                    .contains_key(&ExecKey::new(&d.task_id, execution_id))
                {
                    "running"
                } else {
                    "finished"
                }
                .to_string(),
                output_offset: lock(&d.spool).state().len,
            })
            .collect();
        held.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
        self.hello.send_modify(|h| h.tasks = held);
    }
}
