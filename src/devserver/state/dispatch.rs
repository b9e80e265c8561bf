//! Dispatch: queued tasks go to workers one assignment at a time, least busy first; a worker
//! that rejected work waits until a slot frees or [`RETRY_REJECTED_AFTER`] passes.

use chrono::{DateTime, Utc};

use super::tables::State;
use crate::devserver::task_state::TaskState;
use crate::devserver::workers::{Outgoing, RETRY_REJECTED_AFTER};
use crate::protocol::ServerMessage;

impl State {
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

    pub(super) fn slot_freed(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.saturated = false;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::fixtures::{assigned_ids, req};
    use crate::protocol::{REJECT_AT_CAPACITY, WorkerMessage};

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
}
