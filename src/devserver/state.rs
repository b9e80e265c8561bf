//! The embedded control plane's task queue and worker table, and the dispatch rules.
//!
//! Plain data and synchronous methods: the HTTP and WebSocket layers lock it briefly, apply one
//! event, and send the frames it returns. Nothing here awaits.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::execution::ExecutionRecord;
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

/// A task as the HTTP API shows it: the run, its current (latest) execution's fields at the
/// top level, the earlier executions and the setup events the worker posted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task (run) id.
    pub id: String,
    /// Image asked for.
    pub image: Option<String>,
    /// Command asked for.
    pub command: Vec<String>,
    /// How often the task was assigned (every execution).
    pub assignments: u32,
    /// How often a worker rejected it.
    pub rejections: u32,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// The current execution.
    #[serde(flatten)]
    pub current: ExecutionRecord,
    /// Earlier executions, oldest first.
    #[serde(default)]
    pub earlier: Vec<ExecutionRecord>,
    /// Setup-phase events the worker posted (PROTOCOL §7).
    #[serde(default)]
    pub events: Vec<ClientEvent>,
    #[serde(skip)]
    assignment: Option<TaskAssignment>,
}

/// A task reads as its current execution (`record.state` is the latest execution's state):
/// most callers only ever look at that one.
impl std::ops::Deref for TaskRecord {
    type Target = ExecutionRecord;
    fn deref(&self) -> &ExecutionRecord {
        &self.current
    }
}

impl TaskRecord {
    /// Every execution, oldest first.
    pub fn executions(&self) -> impl Iterator<Item = &ExecutionRecord> {
        self.earlier.iter().chain(std::iter::once(&self.current))
    }

    /// One execution by id.
    pub fn execution(&self, execution_id: &str) -> Option<&ExecutionRecord> {
        self.executions().find(|e| e.execution_id == execution_id)
    }

    /// The execution a worker message is about: the one it names, else the current one (oz/1
    /// results name none).
    fn execution_mut(&mut self, execution_id: Option<&str>) -> &mut ExecutionRecord {
        match execution_id {
            Some(e) if e != self.current.execution_id => {
                match self.earlier.iter_mut().find(|x| x.execution_id == e) {
                    Some(x) => x,
                    None => &mut self.current,
                }
            }
            _ => &mut self.current,
        }
    }
}

/// A setup-phase event as the worker posted it (`POST /api/v1/agent/runs/{id}/client-events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEvent {
    pub event_uuid: String,
    pub event_name: String,
    pub timestamp: String,
    pub start_ts: String,
    pub finish_ts: String,
    pub latency_ms: u64,
    pub is_error: bool,
}

/// Why a posted client event was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// No such task.
    #[error("no such run")]
    NotFound,
    /// The headers do not carry the task's own tokens.
    #[error(
        "the Authorization bearer, X-Warp-Ambient-Workload-Token and X-Warp-Cloud-Agent-ID must be the run's WARP_API_KEY, WARP_WORKLOAD_TOKEN and id"
    )]
    Unauthorized,
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
    /// Its `X-Warp-Worker-Capabilities` on this connection.
    pub capabilities: Option<String>,
    #[serde(skip)]
    conn: u64,
}

/// What a worker's dial said about itself (PROTOCOL §7 handshake headers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handshake {
    /// `X-Warp-Worker-Version`.
    pub version: Option<String>,
    /// `X-Warp-Worker-Capabilities`.
    pub capabilities: Option<String>,
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

/// What a control plane keeps across restarts of `berth dev`: tasks, the queue and
/// transcripts (workers reconnect by themselves; their connections are not state).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    tasks: Vec<SavedTask>,
    queue: Vec<String>,
    transcripts: Vec<SavedTranscript>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTask {
    record: TaskRecord,
    assignment: Option<TaskAssignment>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTranscript {
    execution_id: String,
    bytes_b64: String,
    runs: Vec<(u64, Stream, u64)>,
}

impl State {
    /// Everything worth keeping, in submission order.
    pub fn save(&self) -> Saved {
        use base64::Engine;
        Saved {
            tasks: self
                .order
                .iter()
                .filter_map(|id| self.tasks.get(id))
                .map(|t| SavedTask {
                    record: t.clone(),
                    assignment: t.assignment.clone(),
                })
                .collect(),
            queue: self.queue.iter().cloned().collect(),
            transcripts: self
                .transcripts
                .iter()
                .map(|(e, t)| SavedTranscript {
                    execution_id: e.clone(),
                    bytes_b64: base64::engine::general_purpose::STANDARD.encode(&t.bytes),
                    runs: t.runs.clone(),
                })
                .collect(),
        }
    }

    /// A state as saved (no workers yet; a transcript whose runs do not match its bytes is
    /// dropped rather than served wrong).
    pub fn restored(saved: Saved) -> State {
        use base64::Engine;
        let mut s = State::default();
        for t in saved.tasks {
            let mut record = t.record;
            record.assignment = t.assignment;
            s.order.push(record.id.clone());
            s.tasks.insert(record.id.clone(), record);
        }
        s.queue = saved
            .queue
            .into_iter()
            .filter(|id| s.tasks.contains_key(id))
            .collect();
        for t in saved.transcripts {
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&t.bytes_b64) else {
                continue;
            };
            let covered: u64 = t.runs.iter().map(|r| r.2).sum();
            if covered != bytes.len() as u64 {
                continue;
            }
            s.transcripts.insert(
                t.execution_id,
                StoredTranscript {
                    bytes,
                    runs: t.runs,
                },
            );
        }
        s
    }
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
            image: req.image,
            command: req.command,
            assignments: 0,
            rejections: 0,
            created_at: now,
            current: ExecutionRecord::queued(execution_id),
            earlier: Vec::new(),
            events: Vec::new(),
            assignment: Some(assignment),
        };
        self.tasks.insert(id.clone(), rec);
        self.order.push(id.clone());
        self.queue.push_back(id.clone());
        self.version += 1;
        let out = self.dispatch();
        let rec = self.tasks.get(&id).cloned();
        (rec.unwrap_or_else(|| unreachable_record(&id)), out)
    }

    /// The stored transcript of a task's current execution.
    pub fn transcript(&self, id: &str) -> Option<&StoredTranscript> {
        let t = self.tasks.get(id)?;
        self.transcripts.get(&t.current.execution_id)
    }

    /// The stored transcript of one execution.
    pub fn execution_transcript(&self, execution_id: &str) -> Option<&StoredTranscript> {
        self.transcripts.get(execution_id)
    }

    /// Executes a run again with a new execution id, while earlier executions may still be
    /// running or being torn down (PROTOCOL §7).
    pub fn retry(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(TaskRecord, Vec<Outgoing>), CancelError> {
        let t = self.tasks.get_mut(id).ok_or(CancelError::NotFound)?;
        let execution_id = uuid::Uuid::new_v4().to_string();
        if let Some(a) = t.assignment.as_mut() {
            a.execution_id = Some(execution_id.clone());
            if let Some(task) = a.task.as_mut() {
                task.updated_at = Some(now.to_rfc3339());
            }
        }
        let previous = std::mem::replace(&mut t.current, ExecutionRecord::queued(execution_id));
        t.earlier.push(previous);
        self.queue.push_back(id.to_string());
        self.version += 1;
        let out = self.dispatch();
        let rec = self.tasks.get(id).cloned();
        Ok((rec.unwrap_or_else(|| unreachable_record(id)), out))
    }

    /// Stores a setup-phase event the worker posted for run `id`, checking that it carries
    /// the run's own tokens (as the Oz server would).
    pub fn client_event(
        &mut self,
        id: &str,
        headers: EventHeaders<'_>,
        event: ClientEvent,
    ) -> Result<(), EventError> {
        let t = self.tasks.get_mut(id).ok_or(EventError::NotFound)?;
        let env = t.assignment.as_ref().and_then(|a| a.env_vars.as_ref());
        let var = |k: &str| env.and_then(|e| e.get(k)).map(String::as_str);
        let ok = headers.bearer.is_some()
            && headers.bearer == var("WARP_API_KEY")
            && headers.workload.is_some()
            && headers.workload == var("WARP_WORKLOAD_TOKEN")
            && headers.agent_id == Some(id);
        if !ok {
            return Err(EventError::Unauthorized);
        }
        t.events.push(event);
        self.version += 1;
        Ok(())
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

    /// Records the version and capabilities headers a worker dialled with.
    pub fn set_handshake(&mut self, worker_id: &str, h: Handshake) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.version = h.version;
            w.capabilities = h.capabilities;
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
                capabilities: None,
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
            && t.current.state == TaskState::Assigned
        {
            t.current.state = TaskState::Queued;
            t.current.worker = None;
            self.queue.push_front(id.clone());
        }
    }

    fn running_on(&self, worker_id: &str) -> usize {
        self.tasks
            .values()
            .flat_map(|t| t.executions())
            .filter(|e| e.state == TaskState::Running && e.worker.as_deref() == Some(worker_id))
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
        let e = t.execution_mut(msg.execution_id());
        if let Some(x) = msg.ext() {
            e.terminal_received += 1;
            out.push(reply(ServerMessage::Ack {
                message_id: x.message_id.clone(),
            }));
            if !e.message_ids.insert(x.message_id.clone()) {
                self.version += 1;
                return out; // duplicate of a message already applied
            }
            e.terminal_distinct += 1;
            e.expected_transcript_bytes
                .get_or_insert(x.transcript_bytes);
            if e.usage.is_none() {
                e.usage = x.usage.as_deref().copied();
            }
        } else if matches!(
            msg,
            WorkerMessage::TaskCompleted { .. } | WorkerMessage::TaskFailed { .. }
        ) {
            e.terminal_received += 1;
            e.terminal_distinct += 1;
        }
        match msg {
            WorkerMessage::TaskClaimed { .. } => {
                e.claims += 1;
                if !e.state.is_terminal() {
                    e.state = TaskState::Running;
                    e.worker = Some(worker_id.to_string());
                    e.claimed_at.get_or_insert(now);
                }
                if let Some(w) = self.workers.get_mut(worker_id)
                    && w.in_flight.as_deref() == Some(&task_id)
                {
                    w.in_flight = None;
                }
            }
            WorkerMessage::TaskRejected { .. } => {
                if e.state == TaskState::Assigned {
                    e.state = TaskState::Queued;
                    e.worker = None;
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
                let cancelled = task_state.as_deref() == Some("CANCELLED");
                let state = if cancelled {
                    TaskState::Cancelled
                } else {
                    TaskState::Succeeded
                };
                if e.end(state, message, worker_id, now) && !cancelled {
                    e.exit_code = Some(0);
                }
                self.slot_freed(worker_id);
            }
            WorkerMessage::TaskFailed {
                message,
                failure_reason,
                exit_code,
                ..
            } => {
                if e.end(TaskState::Failed, message, worker_id, now) {
                    e.failure_reason = failure_reason.map(|r| r.as_str().to_string());
                    e.exit_code = exit_code;
                }
                self.slot_freed(worker_id);
            }
            WorkerMessage::TaskStarted(st) => {
                e.container_id = Some(st.container_id.clone());
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
                    .entry(e.execution_id.clone())
                    .or_default()
                    .store(offset, stream, &data);
                e.transcript_bytes = len;
                out.push(reply(ServerMessage::OutputAck {
                    task_id: task_id.clone(),
                    execution_id,
                    offset: len,
                }));
            }
            WorkerMessage::ExecutionClosed { .. } => {
                e.closed += 1;
                e.closed_at.get_or_insert(now);
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

    /// Cancels a task: a queued execution at once, running ones through their worker. The
    /// scope says which executions, and how the worker is asked (PROTOCOL §7).
    pub fn cancel(
        &mut self,
        id: &str,
        scope: CancelScope,
        now: DateTime<Utc>,
    ) -> Result<Vec<Outgoing>, CancelError> {
        let t = self.tasks.get_mut(id).ok_or(CancelError::NotFound)?;
        let current = t.current.execution_id.clone();
        let targets: Vec<String> = t
            .executions()
            .map(|e| e.execution_id.clone())
            .filter(|e| match &scope {
                CancelScope::Current => *e == current,
                CancelScope::Execution(x) => e == x,
                CancelScope::Run => true,
            })
            .collect();
        if targets.is_empty() {
            return Err(CancelError::NotFound);
        }
        // (worker, execution) of each target still running somewhere.
        let mut running: Vec<(String, String)> = Vec::new();
        let mut finished = None;
        for x in &targets {
            let e = t.execution_mut(Some(x));
            if e.state.is_terminal() {
                finished.get_or_insert(e.state);
                continue;
            }
            e.cancel_requested = true;
            if e.state == TaskState::Queued {
                e.state = TaskState::Cancelled;
                e.finished_at = Some(now);
                continue;
            }
            running.push((e.worker.clone().unwrap_or_default(), x.clone()));
        }
        if t.current.state == TaskState::Cancelled {
            self.queue.retain(|q| q != id);
        }
        self.version += 1;
        if running.is_empty() {
            return match finished {
                Some(st) if targets.len() == 1 => Err(CancelError::Finished(st)),
                _ => Ok(Vec::new()),
            };
        }
        let mut out = Vec::new();
        for (worker, execution_id) in running {
            let w = self.workers.get(&worker).ok_or(CancelError::WorkerGone)?;
            let execution_id = match scope {
                // Only the run's id: the worker cancels every execution of it (PROTOCOL §7).
                CancelScope::Run => None,
                _ => Some(execution_id).filter(|e| !e.is_empty()),
            };
            let frame = ServerMessage::TaskCancellation {
                task_id: id.to_string(),
                execution_id,
            }
            .encode();
            if !out
                .iter()
                .any(|o: &Outgoing| o.conn == w.conn && o.frame == frame)
            {
                out.push(Outgoing {
                    worker_id: worker,
                    conn: w.conn,
                    frame,
                });
            }
        }
        Ok(out)
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
            if t.current.state != TaskState::Queued {
                continue;
            }
            let Some(a) = &t.assignment else { continue };
            t.current.state = TaskState::Assigned;
            t.current.worker = Some(w.worker_id.clone());
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
            && t.current.state == TaskState::Assigned
            && a.execution_id.as_deref() == Some(t.current.execution_id.as_str())
        {
            t.current.state = TaskState::Queued;
            t.current.worker = None;
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
        image: None,
        command: Vec::new(),
        assignments: 0,
        rejections: 0,
        created_at: Utc::now(),
        current: ExecutionRecord::queued(String::new()),
        earlier: Vec::new(),
        events: Vec::new(),
        assignment: None,
    }
}

/// Which executions of a task a cancellation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelScope {
    /// The current execution, execution-scoped on the wire (what a current Oz server sends).
    Current,
    /// One execution by id, execution-scoped on the wire.
    Execution(String),
    /// Every execution: the worker gets only the run's id.
    Run,
}

/// The headers of a posted client event.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventHeaders<'a> {
    /// `Authorization: Bearer …`.
    pub bearer: Option<&'a str>,
    /// `X-Warp-Ambient-Workload-Token`.
    pub workload: Option<&'a str>,
    /// `X-Warp-Cloud-Agent-ID`.
    pub agent_id: Option<&'a str>,
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
        assert_eq!(t.and_then(|t| t.current.message).as_deref(), Some("first"));
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
        assert_eq!(s.cancel(&q.id, CancelScope::Current, now), Ok(vec![]));
        assert_eq!(s.task(&q.id).map(|t| t.state), Some(TaskState::Cancelled));
        assert_eq!(
            s.cancel(&q.id, CancelScope::Current, now),
            Err(CancelError::Finished(TaskState::Cancelled))
        );
        s.connect("w", 1, false, now);
        let (r, _) = s.submit(req(), now);
        let out = s
            .cancel(&r.id, CancelScope::Current, now)
            .unwrap_or_default();
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
        assert_eq!(
            s.cancel("nope", CancelScope::Current, now),
            Err(CancelError::NotFound)
        );
    }

    fn claimed(s: &mut State, id: &str, exec: &str) {
        s.on_message(
            "w",
            WorkerMessage::TaskClaimed {
                task_id: id.into(),
                worker_id: "w".into(),
                execution_id: Some(exec.into()),
            },
            Utc::now(),
        );
    }

    fn cancellations(out: &[Outgoing]) -> Vec<(String, Option<String>)> {
        out.iter()
            .filter_map(|o| match ServerMessage::decode(&o.frame) {
                Ok(ServerMessage::TaskCancellation {
                    task_id,
                    execution_id,
                }) => Some((task_id, execution_id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_retry_is_a_new_execution_and_each_execution_reports_for_itself() {
        let now = Utc::now();
        let mut s = State::default();
        s.connect("w", 1, true, now);
        let (a, _) = s.submit(req(), now);
        let first = a.execution_id.clone();
        claimed(&mut s, &a.id, &first);
        let (r, out) = s.retry(&a.id, now).unwrap_or_else(|_| panic!("retry"));
        let second = r.execution_id.clone();
        assert_ne!(first, second);
        let offered: Vec<Option<String>> = out
            .iter()
            .filter_map(|o| match ServerMessage::decode(&o.frame) {
                Ok(ServerMessage::TaskAssignment(a)) => Some(a.execution_id),
                _ => None,
            })
            .collect();
        assert_eq!(
            offered,
            vec![Some(second.clone())],
            "offered with the new id"
        );
        claimed(&mut s, &a.id, &second);
        // Output of each execution goes to its own transcript.
        for (exec, text) in [(&first, "one"), (&second, "two")] {
            s.on_message(
                "w",
                WorkerMessage::TaskOutput {
                    task_id: a.id.clone(),
                    execution_id: exec.clone(),
                    offset: 0,
                    stream: Stream::Stdout,
                    data: text.as_bytes().to_vec(),
                },
                now,
            );
        }
        assert_eq!(
            s.transcript(&a.id).map(|t| t.bytes.clone()),
            Some(b"two".to_vec())
        );
        assert_eq!(
            s.execution_transcript(&first).map(|t| t.bytes.clone()),
            Some(b"one".to_vec())
        );
        // Cancelling the first execution names it and leaves the current one alone.
        let out = s
            .cancel(&a.id, CancelScope::Execution(first.clone()), now)
            .unwrap_or_default();
        assert_eq!(
            cancellations(&out),
            vec![(a.id.clone(), Some(first.clone()))]
        );
        let ext = |exec: &str, m: &str| crate::protocol::TerminalExt {
            execution_id: exec.into(),
            message_id: m.into(),
            exit_code: None,
            duration_ms: 1,
            transcript_bytes: 3,
            transcript_lost_bytes: 0,
            usage: None,
        };
        s.on_message(
            "w",
            WorkerMessage::TaskCompleted {
                task_id: a.id.clone(),
                message: "cancelled".into(),
                task_state: Some("CANCELLED".into()),
                ext: Some(ext(&first, "m1")),
            },
            now,
        );
        for _ in 0..2 {
            s.on_message(
                "w",
                WorkerMessage::ExecutionClosed {
                    task_id: a.id.clone(),
                    execution_id: first.clone(),
                },
                now,
            );
        }
        let t = s.task(&a.id).cloned().unwrap_or_else(|| panic!("task"));
        assert_eq!(t.state, TaskState::Running, "the current execution runs on");
        let old = t
            .execution(&first)
            .cloned()
            .unwrap_or_else(|| panic!("first"));
        assert_eq!(
            (old.state, old.terminal_distinct, old.closed),
            (TaskState::Cancelled, 1, 2)
        );
        assert_eq!(t.closed, 0);
        s.on_message(
            "w",
            WorkerMessage::TaskCompleted {
                task_id: a.id.clone(),
                message: "ok".into(),
                task_state: None,
                ext: Some(ext(&second, "m2")),
            },
            now,
        );
        let t = s.task(&a.id).cloned().unwrap_or_else(|| panic!("task"));
        assert_eq!((t.state, t.terminal_distinct), (TaskState::Succeeded, 1));
        assert_eq!(t.executions().count(), 2);
        let json = serde_json::to_value(&t).unwrap_or_default();
        assert_eq!(json["execution_id"], second.as_str());
        assert_eq!(json["earlier"][0]["execution_id"], first.as_str());
    }

    #[test]
    fn a_run_scoped_cancel_names_no_execution_and_covers_every_one() {
        let now = Utc::now();
        let mut s = State::default();
        s.connect("w", 2, true, now);
        let (a, _) = s.submit(req(), now);
        claimed(&mut s, &a.id, &a.execution_id);
        let (r, _) = s.retry(&a.id, now).unwrap_or_else(|_| panic!("retry"));
        claimed(&mut s, &a.id, &r.execution_id);
        let out = s.cancel(&a.id, CancelScope::Run, now).unwrap_or_default();
        assert_eq!(
            cancellations(&out),
            vec![(a.id.clone(), None)],
            "one message per worker"
        );
        let t = s.task(&a.id).cloned().unwrap_or_else(|| panic!("task"));
        assert!(t.executions().all(|e| e.cancel_requested));
        assert_eq!(
            s.cancel(&a.id, CancelScope::Execution("nope".into()), now),
            Err(CancelError::NotFound)
        );
    }

    #[test]
    fn client_events_need_the_runs_own_tokens() {
        let now = Utc::now();
        let mut s = State::default();
        let mut r = req();
        r.env.insert("WARP_API_KEY".into(), "key-1".into());
        r.env.insert("WARP_WORKLOAD_TOKEN".into(), "wl-1".into());
        let (a, _) = s.submit(r, now);
        let ev = ClientEvent {
            event_uuid: "u".into(),
            event_name: "setup_worker_image_pull".into(),
            timestamp: now.to_rfc3339(),
            start_ts: now.to_rfc3339(),
            finish_ts: now.to_rfc3339(),
            latency_ms: 5,
            is_error: false,
        };
        let good = EventHeaders {
            bearer: Some("key-1"),
            workload: Some("wl-1"),
            agent_id: Some(&a.id),
        };
        for bad in [
            EventHeaders {
                bearer: Some("key-2"),
                ..good
            },
            EventHeaders {
                workload: None,
                ..good
            },
            EventHeaders {
                agent_id: Some("other"),
                ..good
            },
        ] {
            assert_eq!(
                s.client_event(&a.id, bad, ev.clone()),
                Err(EventError::Unauthorized)
            );
        }
        assert_eq!(
            s.client_event("nope", good, ev.clone()),
            Err(EventError::NotFound)
        );
        assert_eq!(s.client_event(&a.id, good, ev.clone()), Ok(()));
        assert_eq!(s.task(&a.id).map(|t| t.events.clone()), Some(vec![ev]));
    }
}
