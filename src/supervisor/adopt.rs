//! Taking over the executions an earlier process journaled: results still owed are re-sent,
//! running containers re-attached, containers held for provisioning abandoned, vanished ones
//! failed, and owed closures resumed.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::closure::{Closing, Ended};
use super::{Active, ExecKey, Found, Supervisor, image_asked};
use crate::failure::FailureReason;
use crate::journal::{Closure, ExecRecord, ExecState};
use crate::task::{self, Execution, StopReason, TaskControl};
use crate::transcript::spool::lock;

impl Supervisor {
    /// Takes over executions recorded in the journal by an earlier process.
    pub fn adopt(&mut self, records: Vec<ExecRecord>, found: &HashMap<String, Found>) {
        for r in records {
            let spool = match self.open_spool(&r.execution_id) {
                Ok(s) => s,
                Err(e) => {
                    error!(execution_id = %r.execution_id, error = %e, "cannot open the transcript of a journaled task");
                    continue;
                }
            };
            let finished = r.state == ExecState::Finished;
            let transcript_done = !r.berth || r.acked_offset >= lock(&spool).state().len;
            let key = ExecKey::new(&r.task_id, &r.execution_id);
            match r.closure {
                Closure::Sent => self.memory.remember(key.clone(), Ended::Closed),
                // A cancellation asked for closure before the restart: resumed here.
                Closure::Wanted | Closure::Proven => {
                    self.closures.insert(
                        key.clone(),
                        Closing {
                            proven: r.closure == Closure::Proven,
                            delivered: finished && r.terminal_done && transcript_done,
                            proving: false,
                        },
                    );
                }
                Closure::None if finished => self.memory.remember(key.clone(), Ended::Completed),
                Closure::None => {}
            }
            if finished && r.closure == Closure::Wanted {
                self.start_proof(&key);
            }
            if finished {
                if r.terminal_done && transcript_done {
                    continue; // delivered; only retention keeps it
                }
                info!(task_id = %r.task_id, execution_id = %r.execution_id, "resending the result of a finished task");
                self.deliveries.start(
                    &r.task_id,
                    &r.execution_id,
                    spool,
                    r.acked_offset,
                    r.terminal.clone(),
                );
                continue;
            }
            self.deliveries.start(
                &r.task_id,
                &r.execution_id,
                spool.clone(),
                r.acked_offset,
                None,
            );
            let control = Arc::new(TaskControl::default());
            if r.closure.owed() {
                // Cancelled before the restart: the cancellation still holds.
                info!(task_id = %r.task_id, execution_id = %r.execution_id, "the task was cancelled before berth restarted; stopping it");
                control.stop(StopReason::User);
            }
            self.tasks.insert(
                ExecKey::new(&r.task_id, &r.execution_id),
                Active {
                    control: control.clone(),
                    reservation: self.reservation(&r.assignment, r.berth),
                    image: image_asked(&r.assignment),
                    claimed_at: chrono::DateTime::from_timestamp_millis(r.claimed_at_ms)
                        .unwrap_or_else(chrono::Utc::now),
                },
            );
            let exec = Execution {
                assignment: r.assignment.clone(),
                execution_id: r.execution_id.clone(),
                berth: r.berth,
                spool,
                claimed_at: chrono::DateTime::from_timestamp_millis(r.claimed_at_ms)
                    .unwrap_or_else(chrono::Utc::now),
            };
            let env = self.env.clone();
            let key = ExecKey::new(&r.task_id, &r.execution_id);
            let task_id = r.task_id.clone();
            match found
                .get(&r.execution_id)
                .cloned()
                .unwrap_or(Found::Vanished)
            {
                Found::Container(id) if r.state == ExecState::Provisioning => {
                    warn!(%task_id, container = %id, "the task was being provisioned when berth stopped; ending it");
                    self.spawn_run(key, async move {
                        task::abandon(&env, &exec, &id, &control).await
                    });
                }
                Found::Container(id) => {
                    self.spawn_run(key, task::resume(env, exec, id, control));
                }
                Found::Vanished => {
                    let detail = match r.container_id {
                        Some(id) => format!("the task's container {id} disappeared while berth was not running (removed by someone else, or lost by the Docker engine)"),
                        None => "berth stopped before the task's container was created; the task did not run, resubmit it".to_string(),
                    };
                    warn!(task_id = %task_id, %detail, "journaled task cannot continue");
                    self.spawn_run(key, async move {
                        task::fail(&env, &exec, &control, FailureReason::ContainerWait, detail)
                            .await
                    });
                }
            }
        }
        self.publish();
    }
}
