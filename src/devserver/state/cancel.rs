//! Cancelling executions: a queued one at once, running ones through their worker, scoped to
//! one execution or the whole run (PROTOCOL §7).

use chrono::{DateTime, Utc};

use super::tables::State;
use crate::devserver::task_state::TaskState;
use crate::devserver::workers::Outgoing;
use crate::protocol::ServerMessage;

impl State {
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
    use crate::devserver::state::fixtures::{cancellations, claimed, req};

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
}
