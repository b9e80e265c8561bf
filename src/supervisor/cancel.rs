//! Cancellations and the closures they owe (PROTOCOL §7): which executions a cancellation
//! names, the durable record that `execution_closed` is owed, the proof, and the message.

use tracing::{info, warn};

use super::closure::{self, Closing, Ended};
use super::{ExecKey, Supervisor};
use crate::control::shipper::Outbound;
use crate::protocol::WorkerMessage;
use crate::task::StopReason;

impl Supervisor {
    /// A cancellation: with an execution id only that execution, with only the run's id every
    /// execution of it here (PROTOCOL §7). Each cancelled execution owes `execution_closed`
    /// once its sandbox is proven gone; one already closed is answered again from memory.
    pub(super) async fn cancel(&mut self, task_id: &str, execution_id: Option<&str>) {
        let execution_id = execution_id.filter(|e| !e.is_empty());
        let mut any = false;
        let running: Vec<ExecKey> = self
            .tasks
            .keys()
            .filter(|k| k.named_by(task_id, execution_id))
            .cloned()
            .collect();
        for key in running {
            info!(%task_id, execution_id = %key.execution_id, "cancellation requested");
            self.owe_closure(&key, false);
            if let Some(t) = self.tasks.get(&key) {
                t.control.stop(StopReason::User);
            }
            any = true;
        }
        let ended = match execution_id {
            Some(e) => {
                let key = ExecKey::new(task_id, e);
                self.memory
                    .get(&key)
                    .map(|x| vec![(key, x)])
                    .unwrap_or_default()
            }
            None => self.memory.of_run(task_id),
        };
        for (key, ended) in ended {
            any = true;
            match ended {
                Ended::Closed => {
                    info!(%task_id, execution_id = %key.execution_id, "repeated cancellation of a closed execution; execution_closed sent again");
                    self.send_closed(&key, false).await;
                }
                Ended::Completed => {
                    info!(%task_id, execution_id = %key.execution_id, "late cancellation of an ended execution; closing it once its container is proven gone");
                    let delivered = !self.deliveries.contains(&key.execution_id);
                    self.owe_closure(&key, delivered);
                    self.start_proof(&key);
                }
            }
        }
        // Closures already under way answer this one too, once proven.
        any |= self
            .closures
            .keys()
            .any(|k| k.named_by(task_id, execution_id));
        if any {
            self.publish();
        } else {
            info!(%task_id, execution_id = execution_id.unwrap_or(""), "cancellation for an execution this worker does not have; ignored");
        }
    }

    /// Records (durably first) that `execution_closed` is owed for an execution.
    pub(super) fn owe_closure(&mut self, key: &ExecKey, delivered: bool) {
        if self.closures.contains_key(key) {
            return;
        }
        if let Err(e) = self.env.journal.want_closure(&key.execution_id) {
            warn!(execution_id = %key.execution_id, error = %e, "cannot record the owed closure; it is still sent unless berth restarts first");
        }
        self.closures.insert(
            key.clone(),
            Closing {
                delivered,
                ..Closing::default()
            },
        );
    }

    /// Starts proving an ended execution's sandbox gone (once at a time).
    pub(super) fn start_proof(&mut self, key: &ExecKey) {
        let Some(c) = self.closures.get_mut(key) else {
            return;
        };
        if c.proving || c.proven {
            return;
        }
        c.proving = true;
        // The exact container the execution had, kept for every retry.
        let container = match self.env.journal.get(&key.execution_id) {
            Ok(r) => r.and_then(|r| r.container_id),
            Err(e) => {
                warn!(execution_id = %key.execution_id, error = %e, "cannot read the execution's container from the journal; looking for it by its label only");
                None
            }
        };
        self.runs.spawn(closure::prove(
            self.env.backend.clone(),
            self.env.owner(),
            key.clone(),
            container,
            self.deliveries.stop_token(),
            self.proven_tx.clone(),
            self.env.metrics.clone(),
        ));
    }

    /// Sends `execution_closed` once the sandbox is proven gone and the result delivered.
    pub(super) async fn try_close(&mut self, key: &ExecKey) {
        if !self.closures.get(key).is_some_and(Closing::ready) {
            return;
        }
        self.closures.remove(key);
        self.send_closed(key, true).await;
        self.memory.remember(key.clone(), Ended::Closed);
        self.env.metrics.execution_closed();
        info!(task_id = %key.task_id, execution_id = %key.execution_id, "execution closed: its container is proven gone");
    }

    /// Queues `execution_closed`; `record` marks it sent in the journal once it was written.
    pub(super) async fn send_closed(&self, key: &ExecKey, record: bool) {
        let (written, was_written) = tokio::sync::oneshot::channel();
        let msg = Outbound {
            msg: WorkerMessage::ExecutionClosed {
                task_id: key.task_id.clone(),
                execution_id: key.execution_id.clone(),
            },
            epoch: None,
            written: Some(written),
        };
        if self.outbox.send(msg).await.is_err() {
            warn!("outbox closed; execution_closed dropped (sent by the next start)");
            return;
        }
        if record {
            let journal = self.env.journal.clone();
            let exec = key.execution_id.clone();
            let stop = self.deliveries.stop_token();
            self.deliveries.spawn(async move {
                // At shutdown the frame may stay unwritten: the journal still owes it then,
                // and the next start sends it.
                let written = tokio::select! {
                    r = was_written => r.is_ok(),
                    _ = stop.cancelled() => false,
                };
                if written && let Err(e) = journal.closure_sent(&exec) {
                    warn!(execution_id = %exec, error = %e, "cannot record that execution_closed was sent; a restart sends it again");
                }
            });
        }
    }
}
