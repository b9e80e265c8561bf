//! Putting work on the queue: a new run, or a run executed again as a new execution.

use chrono::{DateTime, Utc};

use super::cancel::CancelError;
use super::tables::State;
use crate::devserver::execution::ExecutionRecord;
use crate::devserver::task::{SubmitRequest, TaskRecord};
use crate::devserver::workers::Outgoing;
use crate::protocol::{Owner, Task, TaskAssignment, TaskDefinition};

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
            telemetry_collection: req.telemetry_collection.clone(),
            oz_lifecycle_hooks: req.oz_lifecycle_hooks.clone(),
        };
        let rec = TaskRecord {
            id: id.clone(),
            image: req.image,
            command: req.command,
            assignments: 0,
            rejections: 0,
            last_rejection: None,
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
}

fn unreachable_record(id: &str) -> TaskRecord {
    TaskRecord {
        id: id.to_string(),
        image: None,
        command: Vec::new(),
        assignments: 0,
        rejections: 0,
        last_rejection: None,
        created_at: Utc::now(),
        current: ExecutionRecord::queued(String::new()),
        earlier: Vec::new(),
        events: Vec::new(),
        assignment: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::cancel::CancelScope;
    use crate::devserver::state::fixtures::{cancellations, claimed, req};
    use crate::devserver::task_state::TaskState;
    use crate::protocol::{ServerMessage, Stream, WorkerMessage};

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
            failure_details: None,
            assigned: false,
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
}
