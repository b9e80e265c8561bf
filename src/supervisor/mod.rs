//! The supervisor owns the task table and the slots: admission, idempotent claims,
//! cancellation routing, drain and shutdown. It knows nothing about sockets or Docker details:
//! it reads [`SessionEvent`]s, spawns task runs, and queues [`WorkerMessage`]s.

pub mod admission;
mod adopt;
mod assign;
mod cancel;
pub mod capacity;
pub mod closure;
mod deliveries;
pub mod one_shot;
pub mod reconcile;
mod types;
mod view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ShutdownMode;
use crate::control::session::SessionEvent;
use crate::control::shipper::{Link, Outbound};
use crate::failure::FailureReason;
use crate::protocol::{Hello, ServerMessage, TaskAssignment, WorkerMessage};
use crate::task::{RunEnd, StopReason, TaskControl, TaskEnv};
use crate::transcript::spool::SharedSpool;
use crate::transcript::spool::Spool;
use closure::{Closing, Ended};
use deliveries::Deliveries;
pub use types::{Command, ExecKey, Found, Reconfigure, SupervisorConfig};
pub use view::{Snapshot, TaskView};

/// The image an assignment names (inline environment, then `docker_image`), for status views.
fn image_asked(a: &TaskAssignment) -> String {
    a.environment
        .as_ref()
        .and_then(|e| e.get("image"))
        .and_then(|i| i.as_str())
        .or(a.docker_image.as_deref())
        .unwrap_or_default()
        .to_string()
}

struct Active {
    control: Arc<TaskControl>,
    reservation: crate::spec::policy::Resources,
    image: String,
    claimed_at: chrono::DateTime<chrono::Utc>,
}

/// Owns every execution of this worker.
pub struct Supervisor {
    env: Arc<TaskEnv>,
    cfg: SupervisorConfig,
    tasks: HashMap<ExecKey, Active>,
    deliveries: Deliveries,
    berth: bool,
    stopping: bool,
    draining: bool,
    outbox: mpsc::Sender<Outbound>,
    hello: watch::Sender<Hello>,
    done_tx: mpsc::Sender<(String, String, RunEnd)>,
    done_rx: mpsc::Receiver<(String, String, RunEnd)>,
    runs: TaskTracker,
    snapshot: watch::Sender<Snapshot>,
    beat: Arc<std::sync::atomic::AtomicU64>,
    commands_tx: mpsc::Sender<Command>,
    commands_rx: mpsc::Receiver<Command>,
    one_shot: one_shot::OneShot,
    one_shot_outcome: one_shot::Outcome,
    /// Ended executions, for late and repeated cancellations.
    memory: closure::Memory,
    /// Cancelled executions whose `execution_closed` is owed.
    closures: HashMap<ExecKey, Closing>,
    proven_tx: mpsc::Sender<ExecKey>,
    proven_rx: mpsc::Receiver<ExecKey>,
    /// Where debug-archive requests go (PROTOCOL §8.4); `None`: they are ignored.
    archive: Option<mpsc::Sender<crate::protocol::ArchiveRequest>>,
}

impl Supervisor {
    /// A supervisor sending on `outbox`.
    pub fn new(
        env: Arc<TaskEnv>,
        cfg: SupervisorConfig,
        outbox: mpsc::Sender<Outbound>,
        link: watch::Receiver<Link>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::channel(64);
        let cfg_one_shot = cfg.one_shot;
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let (proven_tx, proven_rx) = mpsc::channel(64);
        let (snapshot, _) = watch::channel(Snapshot {
            max: cfg.max,
            ..Snapshot::default()
        });
        let (hello, _) = watch::channel(Hello {
            worker_id: env.settings().worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: env.backend.kind().to_string(),
            max_concurrent_tasks: cfg.max,
            labels: cfg.labels.clone(),
            tasks: Vec::new(),
        });
        let deliveries = Deliveries::new(link, outbox.clone(), env.journal.clone());
        Supervisor {
            env,
            cfg,
            tasks: HashMap::new(),
            deliveries,
            berth: false,
            stopping: false,
            draining: false,
            outbox,
            hello,
            done_tx,
            done_rx,
            runs: TaskTracker::new(),
            snapshot,
            beat: Arc::default(),
            commands_tx,
            commands_rx,
            one_shot: one_shot::OneShot::new(cfg_one_shot),
            one_shot_outcome: Arc::default(),
            memory: closure::Memory::default(),
            closures: HashMap::new(),
            proven_tx,
            proven_rx,
            archive: None,
        }
    }

    /// Hands debug-archive requests to the archive service.
    pub fn archive_to(&mut self, requests: mpsc::Sender<crate::protocol::ArchiveRequest>) {
        self.archive = Some(requests);
    }

    /// Where a one-shot run leaves the exit status of its task (set once it was delivered).
    pub fn one_shot_outcome(&self) -> one_shot::Outcome {
        self.one_shot_outcome.clone()
    }

    /// Counts turns of the main loop (at least 4 a second while it is healthy): the systemd
    /// watchdog is only fed while this moves.
    pub fn heartbeat(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.beat.clone()
    }

    /// Where commands (drain, resume, reloaded settings) are sent.
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.commands_tx.clone()
    }

    /// Live view of the slot usage.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    /// The `worker_hello` the session sends on every berth/1 connection.
    pub fn hello(&self) -> watch::Receiver<Hello> {
        self.hello.subscribe()
    }

    /// Runs one execution as a tracked task that reports its end to the main loop.
    fn spawn_run(
        &self,
        key: ExecKey,
        run: impl std::future::Future<Output = RunEnd> + Send + 'static,
    ) {
        let done = self.done_tx.clone();
        self.runs.spawn(async move {
            let end = run.await;
            let _ = done.send((key.task_id, key.execution_id, end)).await;
        });
    }

    async fn send(&self, m: WorkerMessage) {
        if self.outbox.send(Outbound::durable(m)).await.is_err() {
            warn!("outbox closed; message dropped");
        }
    }

    fn open_spool(
        &self,
        execution_id: &str,
    ) -> Result<SharedSpool, crate::transcript::spool::SpoolError> {
        // Room for announcing losses if the disk fills (re-made once space is back).
        Spool::ensure_reserve(&self.cfg.spool_dir);
        Spool::open(
            &self.cfg.spool_dir,
            execution_id,
            self.cfg.max_bytes,
            self.cfg.tail_bytes,
        )
        .map(|s| {
            Arc::new(parking_lot::Mutex::new(
                s.with_full_disk_patience(self.cfg.full_disk_patience),
            ))
        })
    }

    /// Runs until `shutdown` fires and every task has reported (cancel mode) or detached
    /// (preserve mode), then until the results are delivered or `shutdown_grace` passed.
    /// Returns that same deadline: the session flushes what is queued until then, so the
    /// whole shutdown waits for the control plane once, not twice.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SessionEvent>,
        shutdown: CancellationToken,
    ) -> tokio::time::Instant {
        let mut events_open = true;
        let mut flush_deadline: Option<tokio::time::Instant> = None;
        // Persists acknowledgements and re-checks the shutdown deadline, however busy the loop.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = loop {
            if self.stopping && self.tasks.is_empty() {
                let deadline = *flush_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.cfg.shutdown_grace);
                // Both modes wait (up to shutdown_grace) for the results of tasks that ended:
                // one that finished before the stop is owed now, not at the next start. A
                // detached task (preserve) has no result yet and its output ships from the
                // next start, so it holds nothing up; nor do owed closures, which that start
                // proves.
                let preserve = self.cfg.shutdown_mode == ShutdownMode::Preserve;
                let owed = if preserve {
                    self.deliveries.owed_results()
                } else {
                    self.deliveries.len()
                };
                if owed == 0 && (preserve || self.closures.is_empty()) {
                    if self.deliveries.is_empty() {
                        info!("shutdown: every result delivered");
                    } else {
                        info!(
                            detached = self.deliveries.len(),
                            "shutdown: every result delivered; detached tasks keep running and the next start re-attaches them"
                        );
                    }
                    break deadline;
                }
                if tokio::time::Instant::now() >= deadline {
                    warn!(
                        undelivered = owed,
                        closures_owed = self.closures.len(),
                        "shutdown deadline (shutdown_grace) hit with undelivered results or owed closures; they stay in the journal and are sent by the next start"
                    );
                    break deadline;
                }
            }
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => events_open = false,
                },
                Some((task_id, execution_id, end)) = self.done_rx.recv() => {
                    // The slot is freed once the result is in the durable outbox.
                    let key = ExecKey::new(&task_id, &execution_id);
                    self.tasks.remove(&key);
                    match end {
                        RunEnd::Finished(msg) => {
                            if self.closures.contains_key(&key) {
                                self.start_proof(&key);
                            } else {
                                self.memory.remember(key, Ended::Completed);
                            }
                            self.one_shot.finished(&execution_id, &msg);
                            let (secs, bytes) = msg
                                .ext()
                                .map(|e| (e.duration_ms as f64 / 1000.0, e.transcript_bytes))
                                .unwrap_or_default();
                            self.env.metrics.finished(&msg, secs, bytes);
                            self.deliveries.result(&execution_id, *msg);
                        }
                        RunEnd::Detached => info!(%task_id, "detached; the container keeps running"),
                    }
                    self.publish();
                }
                Some(execution_id) = self.deliveries.next_done() => {
                    self.deliveries.finish(&execution_id);
                    let owed: Vec<ExecKey> = self
                        .closures
                        .keys()
                        .filter(|k| k.execution_id == execution_id)
                        .cloned()
                        .collect();
                    for key in owed {
                        if let Some(c) = self.closures.get_mut(&key) {
                            c.delivered = true;
                        }
                        self.try_close(&key).await;
                    }
                    self.publish();
                    if let Some(status) = self.one_shot.delivered(&execution_id) {
                        info!(%execution_id, status, "one-shot: the task's result is delivered; stopping");
                        let _ = self.one_shot_outcome.set(status);
                        shutdown.cancel();
                    }
                }
                _ = shutdown.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    match self.cfg.shutdown_mode {
                        ShutdownMode::Cancel => {
                            info!(running = self.tasks.len(), "shutting down: stopping running tasks");
                            for t in self.tasks.values() {
                                t.control.stop(StopReason::Shutdown);
                            }
                        }
                        ShutdownMode::Preserve => {
                            if self.tasks.is_empty() {
                                info!("shutting down: no task running");
                            } else {
                                info!(running = self.tasks.len(), "shutting down: task containers keep running and are re-attached by the next start");
                            }
                            self.env.detach.cancel();
                        }
                    }
                    self.publish();
                }
                Some(key) = self.proven_rx.recv() => {
                    if let Err(e) = self.env.journal.closure_proven(&key.execution_id) {
                        warn!(error = %e, "cannot record a proven closure; it is proven again after a restart");
                    }
                    if let Some(c) = self.closures.get_mut(&key) {
                        c.proven = true;
                        c.proving = false;
                    }
                    self.try_close(&key).await;
                    self.publish();
                }
                Some(c) = self.commands_rx.recv() => self.command(c),
                _ = tick.tick() => {
                    self.beat.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.deliveries.persist_acks();
                }
            }
        };
        self.deliveries.persist_acks();
        self.deliveries.stop_token().cancel();
        self.runs.close();
        self.runs.wait().await;
        self.deliveries.shutdown().await;
        deadline
    }

    async fn on_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Connected { berth } => self.berth = berth,
            SessionEvent::Disconnected => {}
            SessionEvent::BadAssignment { task_id, error } => {
                if self.tasks.keys().any(|k| k.task_id == task_id) {
                    warn!(%task_id, "undecodable re-assignment of an active task ignored");
                    return;
                }
                let failed = WorkerMessage::TaskFailed {
                    task_id,
                    message: format!(
                        "Failed to execute task: the task assignment could not be decoded ({error}); the control plane sent a malformed assignment"
                    ),
                    task_state: None,
                    failure_reason: Some(FailureReason::Unknown),
                    exit_code: None,
                    ext: None,
                };
                self.env.metrics.finished(&failed, 0.0, 0);
                self.send(failed).await;
            }
            SessionEvent::Message(m) => match m {
                ServerMessage::TaskAssignment(a) => self.assign(*a).await,
                ServerMessage::TaskCancellation {
                    task_id,
                    execution_id,
                } => self.cancel(&task_id, execution_id.as_deref()).await,
                ServerMessage::Drain => self.command(Command::Drain),
                ServerMessage::Resume => self.command(Command::Resume),
                ServerMessage::OutputAck {
                    execution_id,
                    offset,
                    ..
                } => self.deliveries.output_ack(&execution_id, offset),
                ServerMessage::Ack { message_id } => self.deliveries.ack(&message_id),
                // Never waits: a full queue drops the request without a word (only its owner
                // may speak, and the owner is decided by the service).
                ServerMessage::DebugArchiveLogsRequested(r) => {
                    if let Some(tx) = &self.archive {
                        let _ = tx.try_send(*r);
                    }
                }
                ServerMessage::Unknown(_) => {}
            },
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Drain => {
                info!("drain requested: finishing running tasks, rejecting new ones");
                self.draining = true;
                self.publish();
            }
            Command::Resume => {
                info!("resume requested: accepting tasks again");
                self.draining = false;
                self.publish();
            }
            Command::Reconfigure(r) => self.reconfigure(*r),
            Command::Cancel {
                task_id,
                execution_id,
            } => {
                for (key, t) in &self.tasks {
                    if key.named_by(&task_id, execution_id.as_deref()) {
                        info!(%task_id, execution_id = %key.execution_id, "cancelled through the local API");
                        t.control.stop(StopReason::User);
                    }
                }
                self.publish();
            }
        }
    }

    fn reconfigure(&mut self, r: Reconfigure) {
        info!(
            max_concurrent_tasks = r.max,
            "configuration reloaded: slots, labels, policy and admission updated"
        );
        self.cfg.max = r.max;
        self.cfg.policy = r.policy;
        self.cfg.reserve = r.reserve;
        self.cfg.min_free_disk = r.min_free_disk;
        self.hello.send_modify(|h| {
            h.max_concurrent_tasks = r.max;
            h.labels = r.labels.clone();
        });
        self.cfg.labels = r.labels;
        self.publish();
    }
}
