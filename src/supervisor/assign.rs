//! Assignments: whether this worker holds the execution already, whether it ran here before,
//! admission (slots, drain, resources, free disk, the engine's health), the claim — journaled
//! before anything starts — and the run.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::admission::{self, Admission, RejectReason, admit};
use super::{Active, ExecKey, Supervisor, image_asked};
use crate::failure::FailureReason;
use crate::protocol::{TaskAssignment, WorkerMessage};
use crate::task::{self, Execution, TaskControl};

impl Supervisor {
    /// What this worker holds of an assignment's execution.
    pub(super) fn held(&self, a: &TaskAssignment) -> admission::Held {
        match a.execution_id.as_deref().filter(|e| !e.is_empty()) {
            Some(e) if self.tasks.contains_key(&ExecKey::new(&a.task_id, e)) => {
                admission::Held::ThisExecution
            }
            Some(e) => {
                if let Some(k) = self.tasks.keys().find(|k| k.task_id == a.task_id) {
                    info!(task_id = %a.task_id, active = %k.execution_id, offered = %e, "a new execution of a run still active here; it runs as its own execution");
                }
                admission::Held::Nothing
            }
            // An assignment without an execution id (oz/1 servers that send none) is the same
            // run offered again.
            None if self.tasks.keys().any(|k| k.task_id == a.task_id) => {
                admission::Held::ThisExecution
            }
            None => admission::Held::Nothing,
        }
    }

    /// An assignment of an execution that already ended here (or whose id another run holds)
    /// is answered without starting anything: an execution runs once. `true` when handled.
    pub(super) async fn ended_here(&mut self, a: &TaskAssignment) -> bool {
        let Some(e) = a.execution_id.as_deref().filter(|e| !e.is_empty()) else {
            return false;
        };
        if self.tasks.contains_key(&ExecKey::new(&a.task_id, e)) {
            return false;
        }
        let r = match self.env.journal.get(e) {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(err) => {
                warn!(execution_id = %e, error = %err, "cannot read the journal; rejecting the assignment so the server offers it again");
                self.reject(
                    a.task_id.clone(),
                    RejectReason::InsufficientResources(format!("journal unreadable ({err})")),
                )
                .await;
                return true;
            }
        };
        if r.task_id != a.task_id {
            warn!(task_id = %a.task_id, execution_id = %e, owner = %r.task_id, "execution id already used by another run here");
            self.send(WorkerMessage::TaskFailed {
                task_id: a.task_id.clone(),
                message: format!(
                    "Failed to execute task: execution_id {e:?} already belongs to run {:?} on this worker; a control plane must give every execution its own id",
                    r.task_id
                ),
                task_state: None,
                failure_reason: Some(FailureReason::Unknown),
                exit_code: None,
                ext: None,
            })
            .await;
            return true;
        }
        info!(task_id = %a.task_id, execution_id = %e, "this execution already ran here; claiming it again and re-sending its result instead of running it twice");
        self.send(self.claimed(a)).await;
        if !self.deliveries.contains(e)
            && let Some(t) = r.terminal
        {
            self.send(t).await;
        }
        true
    }

    pub(super) async fn assign(&mut self, a: TaskAssignment) {
        if self.ended_here(&a).await {
            return;
        }
        let task_id = a.task_id.clone();
        let held = self.held(&a);
        let decision = admit(
            &a,
            held,
            self.tasks.len(),
            self.cfg.max,
            self.stopping,
            // A one-shot worker whose task is taken is on its way out.
            self.one_shot.refuses(),
            self.draining,
        );
        match decision {
            Admission::Reclaim => {
                info!(%task_id, "task is already running here; claiming again without a second start");
                self.send(self.claimed(&a)).await;
            }
            Admission::Reject(reason) => self.reject(task_id, reason).await,
            Admission::Fail(why) => {
                warn!(%task_id, %why, "cannot run task");
                self.send(WorkerMessage::TaskFailed {
                    task_id,
                    message: format!("Failed to execute task: {why}"),
                    task_state: None,
                    failure_reason: Some(FailureReason::Unknown),
                    exit_code: None,
                    ext: None,
                })
                .await;
            }
            Admission::Accept => {
                // Before any claim, so the server requeues it for a worker that can honour it.
                let own_command = crate::spec::berth_command(&a, self.berth).is_some();
                if let Err(refusal) = crate::spec::lifecycle_hooks::check(&a, own_command) {
                    let why = refusal.to_string();
                    self.reject(task_id, RejectReason::IncompatibleTask(why))
                        .await;
                    return;
                }
                // Decided once: admission and the running-task table use the same figure.
                let want = self.reservation(&a, self.berth);
                if let Err(why) = self.fits(want) {
                    info!(%task_id, %why, "rejecting task: it does not fit on this host now");
                    self.reject(task_id, RejectReason::InsufficientResources(why))
                        .await;
                    return;
                }
                self.start(a, want).await
            }
        }
    }

    /// Refuses an assignment (counted; the server requeues it).
    pub(super) async fn reject(&mut self, task_id: String, reason: RejectReason) {
        if !matches!(reason, RejectReason::InsufficientResources(_)) {
            info!(%task_id, reason = %reason.wire(true), "rejecting task");
        }
        self.env.metrics.rejected(reason.kind());
        let reason = reason.wire(self.berth);
        self.send(WorkerMessage::TaskRejected { task_id, reason })
            .await;
    }

    pub(super) async fn start(
        &mut self,
        a: TaskAssignment,
        reservation: crate::spec::policy::Resources,
    ) {
        let task_id = a.task_id.clone();
        let execution_id = a
            .execution_id
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        // Durable before anything is started or claimed.
        let spool = match self
            .env
            .journal
            .claim(&execution_id, &a, self.berth)
            .map_err(|e| e.to_string())
            .and_then(|()| self.open_spool(&execution_id).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                error!(%task_id, error = %e, "cannot record the task durably; rejecting it so the server requeues it");
                let why = format!("state_dir not writable ({e})");
                self.reject(task_id, RejectReason::InsufficientResources(why))
                    .await;
                return;
            }
        };
        // Claim before anything is started (PROTOCOL.md §3).
        self.one_shot.claimed(&execution_id);
        self.send(self.claimed(&a)).await;
        self.env.metrics.claimed();
        let control = Arc::new(TaskControl::default());
        self.tasks.insert(
            ExecKey::new(&task_id, &execution_id),
            Active {
                control: control.clone(),
                reservation,
                image: image_asked(&a),
                claimed_at: chrono::Utc::now(),
            },
        );
        self.deliveries
            .start(&task_id, &execution_id, spool.clone(), 0, None);
        self.publish();
        info!(%task_id, %execution_id, berth = self.berth, "task claimed");
        let exec = Execution {
            assignment: a,
            execution_id: execution_id.clone(),
            berth: self.berth,
            spool,
            claimed_at: chrono::Utc::now(),
        };
        let key = ExecKey::new(&task_id, &execution_id);
        self.spawn_run(key, task::run(self.env.clone(), exec, control));
    }

    /// What a task reserves: its shape › its environment's resources (a fetched environment
    /// counts from its cached copy; admission never waits for the network) › the defaults.
    pub(super) fn reservation(
        &self,
        a: &TaskAssignment,
        berth: bool,
    ) -> crate::spec::policy::Resources {
        use crate::spec::environment::{Choice, choose};
        let s = &self.env.settings();
        let catalog = self.env.catalog.as_deref();
        let env = match choose(
            a,
            berth,
            &s.environments,
            s.default_environment.as_deref(),
            catalog.is_some(),
        ) {
            Ok(Choice::Ready(e)) => Some(e.resources),
            Ok(Choice::Fetch(id)) => catalog.and_then(|c| c.peek(&id)).map(|e| e.resources),
            Ok(Choice::None) | Err(_) => None,
        };
        self.cfg.policy.reservation(a.instance_shape, env.as_ref())
    }

    /// Why the Docker engine is considered down, if it is.
    pub(super) fn engine_down(&self) -> Option<String> {
        let st = self.env.engine.state();
        (!st.reachable).then(|| st.error.unwrap_or_else(|| "no answer".into()))
    }

    /// Resource-aware admission: memory/CPU reservations and free disk.
    pub(super) fn fits(&self, want: crate::spec::policy::Resources) -> Result<(), String> {
        // A task started now could only fail: let the server requeue it instead.
        if let Some(e) = self.engine_down() {
            return Err(format!(
                "{} unreachable ({e})",
                self.env.backend.engine_name()
            ));
        }
        let running: Vec<crate::spec::policy::Resources> =
            self.tasks.values().map(|t| t.reservation).collect();
        if let Some(host) = self.cfg.host {
            crate::supervisor::capacity::fits(want, &running, host, self.cfg.reserve)?;
        }
        if self.cfg.min_free_disk > 0 {
            let free: Vec<(String, Option<u64>)> = self
                .cfg
                .disk_paths
                .iter()
                .map(|p| {
                    (
                        p.display().to_string(),
                        crate::supervisor::capacity::free_disk(p),
                    )
                })
                .collect();
            let view: Vec<(&str, Option<u64>)> =
                free.iter().map(|(p, f)| (p.as_str(), *f)).collect();
            crate::supervisor::capacity::disk_ok(&view, self.cfg.min_free_disk)?;
        }
        Ok(())
    }

    /// `task_claimed` for an assignment, with the server's execution id (PROTOCOL §7).
    pub(super) fn claimed(&self, a: &TaskAssignment) -> WorkerMessage {
        WorkerMessage::TaskClaimed {
            task_id: a.task_id.clone(),
            worker_id: self.env.settings().worker_id.clone(),
            execution_id: a.execution_id.clone().filter(|e| !e.is_empty()),
        }
    }
}
