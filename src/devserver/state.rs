//! The embedded control plane's task queue and worker table, and the dispatch rules.
//!
//! Plain data and synchronous methods: the HTTP and WebSocket layers lock it briefly, apply one
//! event, and send the frames it returns. Nothing here awaits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::protocol::{
    AdditionalSidecar, AgentConfigSnapshot, InstanceShape, Owner, ServerMessage, Stream, Task,
    TaskAssignment, TaskDefinition, WorkerMessage,
};

/// How long a worker that rejected an assignment gets no new one (unless one of its tasks ends
/// sooner): a real server requeues with a delay too.
pub const RETRY_REJECTED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A task's transcript as stored by the server: bytes plus the stream of each run of bytes.
#[derive(Clone, Default)]
pub struct StoredTranscript {
    /// Every byte, in offset order.
    pub bytes: Vec<u8>,
    /// `(offset, stream, len)` runs.
    pub runs: Vec<(u64, Stream, u64)>,
}

impl std::fmt::Debug for StoredTranscript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredTranscript({} bytes, {} runs)",
            self.bytes.len(),
            self.runs.len()
        )
    }
}

impl StoredTranscript {
    /// Stores a chunk at `offset`, skipping bytes already held; returns the stored length.
    /// A chunk that starts past the end (a gap) is refused: the worker re-sends from the
    /// acknowledged offset.
    pub fn store(&mut self, offset: u64, stream: Stream, data: &[u8]) -> u64 {
        let have = self.bytes.len() as u64;
        if offset > have {
            return have;
        }
        let skip = (have - offset) as usize;
        if skip >= data.len() {
            return have;
        }
        let new = &data[skip..];
        match self.runs.last_mut() {
            Some((_, s, len)) if *s == stream => *len += new.len() as u64,
            _ => self.runs.push((have, stream, new.len() as u64)),
        }
        self.bytes.extend_from_slice(new);
        self.bytes.len() as u64
    }

    /// The runs that overlap `[from, ..)` as `(stream, bytes)`.
    pub fn since(&self, from: u64) -> Vec<(u64, Stream, &[u8])> {
        self.runs
            .iter()
            .filter(|(o, _, l)| o + l > from)
            .map(|(o, s, l)| {
                let start = (*o).max(from);
                (start, *s, &self.bytes[start as usize..(o + l) as usize])
            })
            .collect()
    }
}

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

/// `POST /v1/tasks` body: the common fields, plus Oz assignment fields for compatibility tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Image to run.
    #[serde(default)]
    pub image: Option<String>,
    /// argv (berth/1 `command`); empty runs the Oz agent entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// Agent sidecar image.
    #[serde(default)]
    pub sidecar_image: Option<String>,
    /// Extra sidecars.
    #[serde(default)]
    pub additional_sidecars: Vec<AdditionalSidecar>,
    /// Extra agent args.
    #[serde(default)]
    pub additional_oz_args: Vec<String>,
    /// Compute shape.
    #[serde(default)]
    pub instance_shape: Option<InstanceShape>,
    /// Owner (`{"Type": "TEAM", "Id": 1}`).
    #[serde(default)]
    pub owner: Option<Owner>,
    /// Agent configuration.
    #[serde(default)]
    pub agent_config_snapshot: Option<AgentConfigSnapshot>,
    /// berth/1 inline environment (`{image, env, workdir}`).
    #[serde(default)]
    pub environment: Option<serde_json::Value>,
}

/// A task as the HTTP API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Execution id sent to the worker.
    pub execution_id: String,
    pub state: TaskState,
    /// Image asked for.
    pub image: Option<String>,
    /// Command asked for.
    pub command: Vec<String>,
    /// Worker that claimed it.
    pub worker: Option<String>,
    /// Exit code (0 on success).
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
    /// Message from the worker's terminal message.
    pub message: Option<String>,
    /// How often the task was assigned.
    pub assignments: u32,
    /// How often a worker rejected it.
    pub rejections: u32,
    /// How many `task_claimed` messages arrived (a re-assignment is claimed again).
    pub claims: u32,
    /// Submission time.
    pub created_at: DateTime<Utc>,
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
    /// Terminal frames received, duplicates included.
    pub terminal_received: u32,
    /// Distinct terminal messages (by `message_id`; oz/1 messages count once each).
    pub terminal_distinct: u32,
    #[serde(skip)]
    assignment: Option<TaskAssignment>,
    #[serde(skip)]
    message_ids: HashSet<String>,
}

impl TaskRecord {
    /// The task ended and, for berth/1, its whole transcript is stored.
    pub fn complete(&self) -> bool {
        self.state.is_terminal()
            && self
                .expected_transcript_bytes
                .is_none_or(|n| self.transcript_bytes >= n)
    }
}

/// A connected worker as the HTTP API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    /// berth/1 negotiated.
    pub berth: bool,
    /// Connection time.
    pub connected_at: DateTime<Utc>,
    /// Tasks it runs.
    pub running: usize,
    /// Assignment awaiting claim/reject.
    pub in_flight: Option<String>,
    /// Rejected work recently; no assignments until a slot frees or
    /// [`RETRY_REJECTED_AFTER`] passes (a rejection for resources, draining or a Docker
    /// outage may end without any task ending).
    pub saturated: bool,
    #[serde(skip)]
    saturated_at: Option<DateTime<Utc>>,
    /// Executions the worker said it holds in its last `worker_hello`.
    pub held: usize,
    /// Its last `worker_status` (berth/1).
    pub status: Option<crate::protocol::WorkerStatus>,
    /// How many `worker_status` messages it sent on this connection.
    pub statuses: u64,
    /// Its `X-Warp-Worker-Version` on this connection.
    pub version: Option<String>,
    #[serde(skip)]
    conn: u64,
}

/// A frame to deliver to one worker connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub worker_id: String,
    /// Connection number (frames for a replaced connection are dropped).
    pub conn: u64,
    pub frame: String,
}

/// The whole server state.
#[derive(Debug, Default)]
pub struct State {
    tasks: HashMap<String, TaskRecord>,
    order: Vec<String>,
    queue: VecDeque<String>,
    workers: BTreeMap<String, WorkerRecord>,
    // Kept apart from the records so reading a record never copies a transcript.
    transcripts: HashMap<String, StoredTranscript>,
    unknown: VecDeque<(String, String, String)>,
    /// Bumped on every change, for long-polling waiters.
    pub version: u64,
}

impl State {
    /// Queues a new task and dispatches.
    pub fn submit(
        &mut self,
        req: SubmitRequest,
        now: DateTime<Utc>,
    ) -> (TaskRecord, Vec<Outgoing>) {
        let id = format!("task-{}", uuid::Uuid::new_v4().simple());
        let execution_id = uuid::Uuid::new_v4().to_string();
        let stamp = now.to_rfc3339();
        let assignment = TaskAssignment {
            task_id: id.clone(),
            execution_id: Some(execution_id.clone()),
            task: Some(Task {
                id: id.clone(),
                title: req.title.clone().unwrap_or_default(),
                task_definition: Some(TaskDefinition {
                    prompt: req.prompt.clone().unwrap_or_default(),
                }),
                created_at: Some(stamp.clone()),
                updated_at: Some(stamp),
                owner: Some(req.owner.clone().unwrap_or(Owner {
                    kind: "USER".into(),
                    id: 1,
                })),
                agent_config_snapshot: req.agent_config_snapshot.clone(),
                agent_conversation_id: None,
            }),
            docker_image: req.image.clone(),
            sidecar_image: req.sidecar_image.clone(),
            env_vars: (!req.env.is_empty()).then(|| req.env.clone()),
            additional_sidecars: (!req.additional_sidecars.is_empty())
                .then(|| req.additional_sidecars.clone()),
            additional_oz_args: (!req.additional_oz_args.is_empty())
                .then(|| req.additional_oz_args.clone()),
            instance_shape: req.instance_shape,
            command: (!req.command.is_empty()).then(|| req.command.clone()),
            environment: req.environment.clone(),
            timeout_secs: req.timeout_secs,
        };
        let rec = TaskRecord {
            id: id.clone(),
            execution_id,
            state: TaskState::Queued,
            image: req.image,
            command: req.command,
            worker: None,
            exit_code: None,
            failure_reason: None,
            message: None,
            assignments: 0,
            rejections: 0,
            claims: 0,
            created_at: now,
            claimed_at: None,
            finished_at: None,
            cancel_requested: false,
            container_id: None,
            transcript_bytes: 0,
            expected_transcript_bytes: None,
            terminal_received: 0,
            terminal_distinct: 0,
            assignment: Some(assignment),
            message_ids: HashSet::new(),
        };
        self.tasks.insert(id.clone(), rec);
        self.order.push(id.clone());
        self.queue.push_back(id.clone());
        self.version += 1;
        let out = self.dispatch();
        let rec = self.tasks.get(&id).cloned();
        (rec.unwrap_or_else(|| unreachable_record(&id)), out)
    }

    /// A task's stored transcript.
    pub fn transcript(&self, id: &str) -> Option<&StoredTranscript> {
        self.transcripts.get(id)
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

    /// Records the `X-Warp-Worker-Version` a worker dialled with.
    pub fn set_version(&mut self, worker_id: &str, version: Option<String>) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.version = version;
        }
    }

    /// Registers connection `conn`; a second connection of the same worker replaces the first.
    pub fn connect(
        &mut self,
        worker_id: &str,
        conn: u64,
        berth: bool,
        now: DateTime<Utc>,
    ) -> Vec<Outgoing> {
        if let Some(old) = self.workers.remove(worker_id) {
            self.requeue_in_flight(&old);
        }
        let running = self.running_on(worker_id);
        self.workers.insert(
            worker_id.to_string(),
            WorkerRecord {
                worker_id: worker_id.to_string(),
                berth,
                connected_at: now,
                running,
                in_flight: None,
                saturated: false,
                saturated_at: None,
                held: 0,
                status: None,
                statuses: 0,
                version: None,
                conn,
            },
        );
        self.version += 1;
        self.dispatch()
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

    /// Asks a worker to drain (stop accepting) or resume; resuming makes it eligible for
    /// assignments again at once.
    pub fn set_draining(&mut self, worker_id: &str, drain: bool) -> Vec<Outgoing> {
        let Some(w) = self.workers.get_mut(worker_id) else {
            return Vec::new();
        };
        let msg = if drain {
            ServerMessage::Drain
        } else {
            ServerMessage::Resume
        };
        let mut out = vec![Outgoing {
            worker_id: worker_id.to_string(),
            conn: w.conn,
            frame: msg.encode(),
        }];
        if !drain {
            w.saturated = false;
            out.extend(self.dispatch());
        }
        self.version += 1;
        out
    }

    /// The current connection number of a worker.
    pub fn conn_of(&self, worker_id: &str) -> Option<u64> {
        self.workers.get(worker_id).map(|w| w.conn)
    }

    /// Forgets a connection (if it is still the current one) and requeues its unclaimed task.
    pub fn disconnect(&mut self, worker_id: &str, conn: u64) -> Vec<Outgoing> {
        if self.workers.get(worker_id).is_some_and(|w| w.conn == conn)
            && let Some(w) = self.workers.remove(worker_id)
        {
            self.requeue_in_flight(&w);
            self.version += 1;
        }
        self.dispatch()
    }

    fn requeue_in_flight(&mut self, w: &WorkerRecord) {
        if let Some(id) = &w.in_flight
            && let Some(t) = self.tasks.get_mut(id)
            && t.state == TaskState::Assigned
        {
            t.state = TaskState::Queued;
            t.worker = None;
            self.queue.push_front(id.clone());
        }
    }

    fn running_on(&self, worker_id: &str) -> usize {
        self.tasks
            .values()
            .filter(|t| t.state == TaskState::Running && t.worker.as_deref() == Some(worker_id))
            .count()
    }

    /// Applies one worker message.
    pub fn on_message(
        &mut self,
        worker_id: &str,
        msg: WorkerMessage,
        now: DateTime<Utc>,
    ) -> Vec<Outgoing> {
        let conn = self.workers.get(worker_id).map(|w| w.conn).unwrap_or(0);
        let reply = |m: ServerMessage| Outgoing {
            worker_id: worker_id.to_string(),
            conn,
            frame: m.encode(),
        };
        if let WorkerMessage::WorkerHello(h) = &msg {
            if let Some(w) = self.workers.get_mut(worker_id) {
                w.held = h.tasks.len();
            }
            self.version += 1;
            return Vec::new();
        }
        if let WorkerMessage::WorkerStatus(st) = msg {
            if let Some(w) = self.workers.get_mut(worker_id) {
                w.status = Some(*st);
                w.statuses += 1;
            }
            self.version += 1;
            return Vec::new();
        }
        let task_id = msg.task_id().to_string();
        let Some(t) = self.tasks.get_mut(&task_id) else {
            // Kept (bounded) so operators and tests can see what workers said about tasks this
            // server never issued, e.g. failures of assignments it could not have sent.
            if self.unknown.len() >= 256 {
                self.unknown.pop_front();
            }
            let text = match &msg {
                WorkerMessage::TaskCompleted { message, .. }
                | WorkerMessage::TaskFailed { message, .. } => message.clone(),
                WorkerMessage::TaskRejected { reason, .. } => reason.clone(),
                _ => String::new(),
            };
            self.unknown
                .push_back((msg.kind().to_string(), task_id.clone(), text));
            self.version += 1;
            // Acknowledge anyway so the worker can let go of what this server will never store.
            return match &msg {
                WorkerMessage::TaskOutput {
                    execution_id,
                    offset,
                    data,
                    ..
                } => vec![reply(ServerMessage::OutputAck {
                    task_id,
                    execution_id: execution_id.clone(),
                    offset: offset + data.len() as u64,
                })],
                m => m
                    .ext()
                    .map(|e| {
                        vec![reply(ServerMessage::Ack {
                            message_id: e.message_id.clone(),
                        })]
                    })
                    .unwrap_or_default(),
            };
        };
        let mut out = Vec::new();
        if let Some(e) = msg.ext() {
            t.terminal_received += 1;
            out.push(reply(ServerMessage::Ack {
                message_id: e.message_id.clone(),
            }));
            if !t.message_ids.insert(e.message_id.clone()) {
                self.version += 1;
                return out; // duplicate of a message already applied
            }
            t.terminal_distinct += 1;
            t.expected_transcript_bytes
                .get_or_insert(e.transcript_bytes);
        } else if matches!(
            msg,
            WorkerMessage::TaskCompleted { .. } | WorkerMessage::TaskFailed { .. }
        ) {
            t.terminal_received += 1;
            t.terminal_distinct += 1;
        }
        match msg {
            WorkerMessage::TaskClaimed { .. } => {
                t.claims += 1;
                if !t.state.is_terminal() {
                    t.state = TaskState::Running;
                    t.worker = Some(worker_id.to_string());
                    t.claimed_at.get_or_insert(now);
                }
                if let Some(w) = self.workers.get_mut(worker_id)
                    && w.in_flight.as_deref() == Some(&task_id)
                {
                    w.in_flight = None;
                }
            }
            WorkerMessage::TaskRejected { .. } => {
                if t.state == TaskState::Assigned {
                    t.state = TaskState::Queued;
                    t.worker = None;
                    t.rejections += 1;
                    self.queue.push_front(task_id.clone());
                }
                if let Some(w) = self.workers.get_mut(worker_id) {
                    if w.in_flight.as_deref() == Some(&task_id) {
                        w.in_flight = None;
                    }
                    // Full (or draining): no more work until one of its tasks ends, or a while.
                    w.saturated = true;
                    w.saturated_at = Some(now);
                }
            }
            WorkerMessage::TaskCompleted {
                message,
                task_state,
                ..
            } => {
                // Terminal messages are de-duplicated: the first one wins.
                if !t.state.is_terminal() {
                    t.state = if task_state.as_deref() == Some("CANCELLED") {
                        TaskState::Cancelled
                    } else {
                        t.exit_code = Some(0);
                        TaskState::Succeeded
                    };
                    t.message = Some(message);
                    t.finished_at = Some(now);
                    t.worker.get_or_insert_with(|| worker_id.to_string());
                }
                self.slot_freed(worker_id);
            }
            WorkerMessage::TaskFailed {
                message,
                failure_reason,
                exit_code,
                ..
            } => {
                if !t.state.is_terminal() {
                    t.state = TaskState::Failed;
                    t.message = Some(message);
                    t.failure_reason = failure_reason.map(|r| r.as_str().to_string());
                    t.exit_code = exit_code;
                    t.finished_at = Some(now);
                    t.worker.get_or_insert_with(|| worker_id.to_string());
                }
                self.slot_freed(worker_id);
            }
            WorkerMessage::TaskStarted(st) => {
                t.container_id = Some(st.container_id.clone());
            }
            WorkerMessage::TaskOutput {
                execution_id,
                offset,
                stream,
                data,
                ..
            } => {
                let len = self
                    .transcripts
                    .entry(task_id.clone())
                    .or_default()
                    .store(offset, stream, &data);
                t.transcript_bytes = len;
                out.push(reply(ServerMessage::OutputAck {
                    task_id: task_id.clone(),
                    execution_id,
                    offset: len,
                }));
            }
            WorkerMessage::WorkerHello(_) | WorkerMessage::WorkerStatus(_) => {}
        }
        let running = self.running_on(worker_id);
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.running = running;
        }
        self.version += 1;
        out.extend(self.dispatch());
        out
    }

    /// Offers work again to workers that rejected some more than [`RETRY_REJECTED_AFTER`] ago.
    pub fn retry_rejected(&mut self, now: DateTime<Utc>) -> Vec<Outgoing> {
        let mut any = false;
        for w in self.workers.values_mut() {
            let due = w
                .saturated_at
                .is_some_and(|t| (now - t).to_std().unwrap_or_default() >= RETRY_REJECTED_AFTER);
            if w.saturated && due {
                w.saturated = false;
                w.saturated_at = None;
                any = true;
            }
        }
        if any { self.dispatch() } else { Vec::new() }
    }

    fn slot_freed(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.saturated = false;
        }
    }

    /// Cancels a task: queued ones at once, running ones through their worker.
    pub fn cancel(&mut self, id: &str, now: DateTime<Utc>) -> Result<Vec<Outgoing>, CancelError> {
        let t = self.tasks.get_mut(id).ok_or(CancelError::NotFound)?;
        if t.state.is_terminal() {
            return Err(CancelError::Finished(t.state));
        }
        t.cancel_requested = true;
        self.version += 1;
        if t.state == TaskState::Queued {
            t.state = TaskState::Cancelled;
            t.finished_at = Some(now);
            self.queue.retain(|q| q != id);
            return Ok(Vec::new());
        }
        let worker = t.worker.clone().unwrap_or_default();
        // Execution-scoped, as a current Oz server sends it (PROTOCOL §7).
        let execution_id = Some(t.execution_id.clone()).filter(|e| !e.is_empty());
        let w = self.workers.get(&worker).ok_or(CancelError::WorkerGone)?;
        Ok(vec![Outgoing {
            worker_id: worker,
            conn: w.conn,
            frame: ServerMessage::TaskCancellation {
                task_id: id.to_string(),
                execution_id,
            }
            .encode(),
        }])
    }

    /// Assigns queued tasks to workers with no assignment in flight and no recent rejection,
    /// least busy first; one assignment per worker at a time keeps admission orderly.
    pub fn dispatch(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(id) = self.queue.front().cloned() {
            let Some(w) = self
                .workers
                .values_mut()
                .filter(|w| w.in_flight.is_none() && !w.saturated)
                .min_by_key(|w| w.running)
            else {
                break;
            };
            self.queue.pop_front();
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            if t.state != TaskState::Queued {
                continue;
            }
            let Some(a) = &t.assignment else { continue };
            t.state = TaskState::Assigned;
            t.worker = Some(w.worker_id.clone());
            t.assignments += 1;
            w.in_flight = Some(id.clone());
            out.push(Outgoing {
                worker_id: w.worker_id.clone(),
                conn: w.conn,
                frame: ServerMessage::TaskAssignment(Box::new(a.clone())).encode(),
            });
            self.version += 1;
        }
        out
    }

    /// A frame could not be delivered: put the task back.
    pub fn undeliverable(&mut self, o: &Outgoing) {
        if let Ok(ServerMessage::TaskAssignment(a)) = ServerMessage::decode(&o.frame)
            && let Some(t) = self.tasks.get_mut(&a.task_id)
            && t.state == TaskState::Assigned
        {
            t.state = TaskState::Queued;
            t.worker = None;
            self.queue.push_front(a.task_id.clone());
            if let Some(w) = self.workers.get_mut(&o.worker_id) {
                w.in_flight = None;
            }
        }
    }
}

fn unreachable_record(id: &str) -> TaskRecord {
    TaskRecord {
        id: id.to_string(),
        execution_id: String::new(),
        state: TaskState::Queued,
        image: None,
        command: Vec::new(),
        worker: None,
        exit_code: None,
        failure_reason: None,
        message: None,
        assignments: 0,
        rejections: 0,
        claims: 0,
        created_at: Utc::now(),
        claimed_at: None,
        finished_at: None,
        cancel_requested: false,
        container_id: None,
        transcript_bytes: 0,
        expected_transcript_bytes: None,
        terminal_received: 0,
        terminal_distinct: 0,
        assignment: None,
        message_ids: HashSet::new(),
    }
}

/// Why a cancellation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CancelError {
    /// No such task.
    #[error("no such task")]
    NotFound,
    /// Already finished.
    #[error("task already finished ({0:?})")]
    Finished(TaskState),
    /// Its worker is not connected.
    #[error("the task's worker is not connected; retry when it reconnects")]
    WorkerGone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::REJECT_AT_CAPACITY;

    fn req() -> SubmitRequest {
        SubmitRequest {
            image: Some("busybox".into()),
            command: vec!["true".into()],
            ..SubmitRequest::default()
        }
    }

    #[test]
    fn a_worker_that_rejected_is_offered_work_again_after_a_while() {
        let now = Utc::now();
        let mut s = State::default();
        s.connect("w", 1, true, now);
        let (a, _) = s.submit(req(), now);
        s.on_message(
            "w",
            WorkerMessage::TaskRejected {
                task_id: a.id.clone(),
                reason: "insufficient resources: Docker engine unreachable".into(),
            },
            now,
        );
        let later = now + chrono::Duration::from_std(RETRY_REJECTED_AFTER).unwrap_or_default();
        assert_eq!(assigned_ids(&s.retry_rejected(later)), vec![a.id.clone()]);
        assert!(s.retry_rejected(later).is_empty(), "one offer in flight");
    }

    fn assigned_ids(out: &[Outgoing]) -> Vec<String> {
        // Task ids of the assignment frames, in order.
        out.iter()
            .filter_map(|o| match ServerMessage::decode(&o.frame) {
                Ok(ServerMessage::TaskAssignment(a)) => Some(a.task_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rejected_tasks_wait_until_a_slot_frees_then_go_first() {
        let now = Utc::now();
        let mut s = State::default();
        s.connect("w", 1, false, now);
        let (a, out) = s.submit(req(), now);
        assert_eq!(assigned_ids(&out), vec![a.id.clone()]);
        s.on_message(
            "w",
            WorkerMessage::TaskClaimed {
                task_id: a.id.clone(),
                worker_id: "w".into(),
                execution_id: None,
            },
            now,
        );
        let (b, out) = s.submit(req(), now);
        assert_eq!(assigned_ids(&out), vec![b.id.clone()]);
        let out = s.on_message(
            "w",
            WorkerMessage::TaskRejected {
                task_id: b.id.clone(),
                reason: REJECT_AT_CAPACITY.into(),
            },
            now,
        );
        assert!(out.is_empty(), "a saturated worker gets nothing");
        assert_eq!(
            s.task(&b.id).map(|t| (t.state, t.rejections)),
            Some((TaskState::Queued, 1))
        );
        assert!(
            s.retry_rejected(now + chrono::Duration::milliseconds(500))
                .is_empty(),
            "too early to offer again"
        );
        let out = s.on_message(
            "w",
            WorkerMessage::TaskCompleted {
                task_id: a.id.clone(),
                message: "ok".into(),
                task_state: None,
                ext: None,
            },
            now,
        );
        assert_eq!(
            assigned_ids(&out),
            vec![b.id.clone()],
            "requeued when a slot frees"
        );
        assert_eq!(
            s.task(&a.id).map(|t| (t.state, t.exit_code)),
            Some((TaskState::Succeeded, Some(0)))
        );
    }

    #[test]
    fn terminal_messages_are_deduplicated() {
        let now = Utc::now();
        let mut s = State::default();
        s.connect("w", 1, false, now);
        let (a, _) = s.submit(req(), now);
        let fail = WorkerMessage::TaskFailed {
            task_id: a.id.clone(),
            message: "first".into(),
            task_state: None,
            failure_reason: None,
            exit_code: Some(2),
            ext: None,
        };
        s.on_message("w", fail, now);
        s.on_message(
            "w",
            WorkerMessage::TaskCompleted {
                task_id: a.id.clone(),
                message: "second".into(),
                task_state: None,
                ext: None,
            },
            now,
        );
        let t = s.task(&a.id).cloned();
        assert_eq!(t.as_ref().map(|t| t.state), Some(TaskState::Failed));
        assert_eq!(t.and_then(|t| t.message).as_deref(), Some("first"));
    }

    #[test]
    fn disconnect_requeues_the_unclaimed_assignment() {
        let now = Utc::now();
        let mut s = State::default();
        s.connect("w", 1, false, now);
        let (a, _) = s.submit(req(), now);
        assert_eq!(s.task(&a.id).map(|t| t.state), Some(TaskState::Assigned));
        s.disconnect("w", 1);
        assert_eq!(s.task(&a.id).map(|t| t.state), Some(TaskState::Queued));
        let out = s.connect("w", 2, false, now);
        assert_eq!(assigned_ids(&out), vec![a.id.clone()]);
        assert_eq!(s.task(&a.id).map(|t| t.assignments), Some(2));
    }

    #[test]
    fn cancel_of_queued_is_immediate_and_of_running_goes_to_the_worker() {
        let now = Utc::now();
        let mut s = State::default();
        let (q, _) = s.submit(req(), now);
        assert_eq!(s.cancel(&q.id, now), Ok(vec![]));
        assert_eq!(s.task(&q.id).map(|t| t.state), Some(TaskState::Cancelled));
        assert_eq!(
            s.cancel(&q.id, now),
            Err(CancelError::Finished(TaskState::Cancelled))
        );
        s.connect("w", 1, false, now);
        let (r, _) = s.submit(req(), now);
        let out = s.cancel(&r.id, now).unwrap_or_default();
        let exec = s
            .task(&r.id)
            .map(|t| t.execution_id.clone())
            .unwrap_or_default();
        assert!(!exec.is_empty());
        assert_eq!(
            ServerMessage::decode(&out[0].frame).ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: r.id.clone(),
                execution_id: Some(exec),
            }),
            "the dev server cancels the execution it assigned"
        );
        assert_eq!(s.cancel("nope", now), Err(CancelError::NotFound));
    }
}
