//! Worker connections: connecting (a second connection replaces the first), the handshake,
//! drain/resume, and disconnecting, which puts an unclaimed assignment back on the queue.

use chrono::{DateTime, Utc};

use super::tables::State;
use crate::devserver::task_state::TaskState;
use crate::devserver::workers::{Handshake, Outgoing, WorkerRecord};
use crate::protocol::ServerMessage;

impl State {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::fixtures::{assigned_ids, req};

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
}
