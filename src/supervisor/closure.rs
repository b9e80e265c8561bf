//! Proven closure of cancelled executions (PROTOCOL §7): `execution_closed` is sent only once
//! the engine has shown that nothing of the execution is left (its container removed, or the
//! engine answering that no container carries its id), after its result was delivered. A
//! failed removal is retried with backoff against the exact container; a repeated cancellation
//! of a closed execution is answered from memory, without touching the engine.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ExecKey;
use crate::backend::{Backend, ExecutionRef};
use crate::spec::owner::Owner;

/// Ended executions remembered for late or repeated cancellations (as many as the Go worker).
pub const REMEMBERED: usize = 4096;

/// Longest wait between two attempts to prove a sandbox gone.
const RETRY_CAP: Duration = Duration::from_secs(30);

/// What is remembered of an ended execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `execution_closed` was sent: a repeated cancellation replays it.
    Closed,
    /// It ended without a cancellation: a late one proves its sandbox gone, then closes it.
    Completed,
}

/// A bounded memory of ended executions; the oldest is forgotten first.
#[derive(Debug)]
pub struct Memory {
    bound: usize,
    order: VecDeque<ExecKey>,
    ended: HashMap<ExecKey, Ended>,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::with_bound(REMEMBERED)
    }
}

impl Memory {
    /// A memory of at most `bound` executions.
    pub fn with_bound(bound: usize) -> Self {
        Memory {
            bound: bound.max(1),
            order: VecDeque::new(),
            ended: HashMap::new(),
        }
    }

    /// Records (or updates) what is known of an ended execution.
    pub fn remember(&mut self, key: ExecKey, ended: Ended) {
        if self.ended.insert(key.clone(), ended).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.bound {
            if let Some(old) = self.order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    /// What is known of one execution.
    pub fn get(&self, key: &ExecKey) -> Option<Ended> {
        self.ended.get(key).copied()
    }

    /// The remembered executions of a run, oldest first.
    pub fn of_run(&self, task_id: &str) -> Vec<(ExecKey, Ended)> {
        self.order
            .iter()
            .filter(|k| k.task_id == task_id)
            .filter_map(|k| self.ended.get(k).map(|e| (k.clone(), *e)))
            .collect()
    }

    /// How many executions are remembered.
    pub fn len(&self) -> usize {
        self.ended.len()
    }

    /// Nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ended.is_empty()
    }
}

/// A closure in progress: both halves must hold before `execution_closed` is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closing {
    /// The sandbox is proven gone.
    pub proven: bool,
    /// The execution's transcript and result are delivered (the closure never overtakes them).
    pub delivered: bool,
    /// A proof is running (one at a time per execution).
    pub proving: bool,
}

impl Closing {
    /// `execution_closed` may be sent now.
    pub fn ready(&self) -> bool {
        self.proven && self.delivered
    }
}

/// Proves the sandbox gone, retrying with a capped backoff until the engine answers (or the
/// worker stops: the owed closure stays in the journal and the next start resumes it).
pub async fn prove(
    backend: Arc<dyn Backend>,
    owner: Owner,
    key: ExecKey,
    container: Option<String>,
    stop: CancellationToken,
    proven: mpsc::Sender<ExecKey>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut backoff = crate::backoff::Backoff::capped(RETRY_CAP);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let execution = ExecutionRef {
            task_id: &key.task_id,
            execution_id: &key.execution_id,
        };
        match backend.gone(&owner, execution, container.as_deref()).await {
            Ok(()) => {
                if attempts > 1 {
                    info!(task_id = %key.task_id, execution_id = %key.execution_id, attempts, "the cancelled execution's container is gone at last");
                }
                let _ = proven.send(key).await;
                return;
            }
            Err(e) => {
                metrics.closure_retry();
                let wait = backoff.next_delay();
                warn!(task_id = %key.task_id, execution_id = %key.execution_id, container = container.as_deref().unwrap_or(""), error = %e, retry_in_ms = wait.as_millis() as u64, "cannot prove the cancelled execution's container gone; execution_closed waits and the removal is retried");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(t: &str, e: &str) -> ExecKey {
        ExecKey::new(t, e)
    }

    #[test]
    fn memory_forgets_the_oldest_beyond_its_bound_and_updates_in_place() {
        let mut m = Memory::with_bound(3);
        for e in ["e1", "e2", "e3"] {
            m.remember(k("t", e), Ended::Completed);
        }
        // An update keeps its place in line.
        m.remember(k("t", "e1"), Ended::Closed);
        assert_eq!(m.get(&k("t", "e1")), Some(Ended::Closed));
        assert_eq!(m.len(), 3);
        m.remember(k("u", "e4"), Ended::Completed);
        assert_eq!(m.get(&k("t", "e1")), None, "the oldest is forgotten first");
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.of_run("t"),
            vec![
                (k("t", "e2"), Ended::Completed),
                (k("t", "e3"), Ended::Completed)
            ]
        );
        assert!(m.of_run("nobody").is_empty());
        // The same execution id under another run is another execution.
        m.remember(k("v", "e3"), Ended::Closed);
        assert_eq!(m.get(&k("t", "e3")), Some(Ended::Completed));
        assert_eq!(m.get(&k("v", "e3")), Some(Ended::Closed));
    }

    #[test]
    fn the_default_bound_is_the_go_workers() {
        let mut m = Memory::default();
        for i in 0..(REMEMBERED + 10) {
            m.remember(k("t", &i.to_string()), Ended::Closed);
        }
        assert_eq!(m.len(), REMEMBERED);
        assert_eq!(m.get(&k("t", "9")), None);
        assert_eq!(m.get(&k("t", "10")), Some(Ended::Closed));
    }

    #[test]
    fn a_closure_is_ready_only_when_proven_and_delivered() {
        for (proven, delivered, ready) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (true, true, true),
        ] {
            let c = Closing {
                proven,
                delivered,
                proving: false,
            };
            assert_eq!(c.ready(), ready, "{c:?}");
        }
    }
}
