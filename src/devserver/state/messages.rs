//! Applying what a worker says: claims, rejections, output chunks (stored by offset and acked),
//! terminal results (de-duplicated by `message_id`, the first one wins), `execution_closed`,
//! and messages about tasks this server never issued.

use chrono::{DateTime, Utc};

use super::tables::State;
use crate::devserver::task_state::TaskState;
use crate::devserver::workers::Outgoing;
use crate::protocol::{ServerMessage, WorkerMessage};

impl State {
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
        // Debug archives are the server's own records (`devserver/archives.rs`).
        if let WorkerMessage::DebugArchiveLogsUploaded(_) = msg {
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
            if e.failure_details.is_none() {
                e.failure_details = x.failure_details.as_deref().cloned();
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
            WorkerMessage::TaskRejected { reason, .. } => {
                if e.state == TaskState::Assigned {
                    e.state = TaskState::Queued;
                    e.worker = None;
                    t.rejections += 1;
                    t.last_rejection = Some(reason.clone());
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
            WorkerMessage::WorkerHello(_)
            | WorkerMessage::WorkerStatus(_)
            | WorkerMessage::DebugArchiveLogsUploaded(_) => {}
        }
        let running = self.running_on(worker_id);
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.running = running;
        }
        self.version += 1;
        out.extend(self.dispatch());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::fixtures::req;

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
}
