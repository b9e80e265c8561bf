//! The supervisor owns the task table and the slots: admission, idempotent claims,
//! cancellation routing, drain and shutdown. It knows nothing about sockets or Docker details:
//! it reads [`SessionEvent`]s, spawns task runs, and queues [`WorkerMessage`]s.

pub mod admission;
pub mod capacity;
pub mod closure;
pub mod one_shot;
pub mod reconcile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ShutdownMode;
use crate::control::session::SessionEvent;
use crate::control::shipper::{Acks, Link, Outbound, Shipper};
use crate::failure::FailureReason;
use crate::journal::{Closure, ExecRecord, ExecState};
use crate::protocol::{HeldTask, Hello, ServerMessage, TaskAssignment, WorkerMessage};
use crate::task::{self, Execution, RunEnd, StopReason, TaskControl, TaskEnv};
use crate::transcript::spool::Spool;
use crate::transcript::spool::{SharedSpool, lock};
use admission::{Admission, RejectReason, admit};
use closure::{Closing, Ended};

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

/// What the rest of the worker (the local API, reload) may ask of the supervisor. The control
/// plane's own drain/resume messages take the same path.
#[derive(Debug, Clone)]
pub enum Command {
    /// Stop accepting tasks; running ones finish.
    Drain,
    /// Accept tasks again.
    Resume,
    /// Apply reloaded settings.
    Reconfigure(Box<Reconfigure>),
    /// The operator on this host stops a task (`berth cancel`): reported as cancelled, like
    /// a control-plane cancellation, but no `execution_closed` is owed (none was asked for).
    Cancel {
        task_id: String,
        /// Only this execution (default: every execution of the task here).
        execution_id: Option<String>,
    },
}

/// Settings a reload may change while the worker runs.
#[derive(Debug, Clone)]
pub struct Reconfigure {
    /// Slots.
    pub max: u32,
    /// `worker_hello` labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Reservations and limits.
    pub policy: crate::spec::policy::Policy,
    /// Held back for the host.
    pub reserve: crate::spec::policy::Resources,
    /// Minimum free disk.
    pub min_free_disk: u64,
}

/// One execution in a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task_id: String,
    pub execution_id: String,
    /// `running` (holds a slot), `stopping` (asked to stop: cancel, time limit, shutdown; still
    /// holds its slot) or `delivering` (ended; transcript or result not yet acknowledged).
    pub state: &'static str,
    /// Image the assignment asked for (empty: the environment's or the default).
    pub image: String,
    /// When it was claimed.
    pub claimed_at: chrono::DateTime<chrono::Utc>,
    /// Live transcript length.
    pub output: watch::Receiver<crate::transcript::spool::SpoolState>,
    /// The running task's handle (its live resource usage); `None` once it ended.
    pub control: Option<Arc<TaskControl>>,
}

/// A snapshot of the supervisor's state for status reporting.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Tasks holding a slot.
    pub active: usize,
    /// Slot count (0 = unlimited).
    pub max: u32,
    /// Refusing new work because of shutdown.
    pub stopping: bool,
    /// Refusing new work because of drain.
    pub draining: bool,
    /// Executions whose transcript or result is not yet delivered.
    pub undelivered: usize,
    /// Cancelled executions whose `execution_closed` is still owed.
    pub closing: usize,
    /// Every execution held, running first.
    pub tasks: Vec<TaskView>,
}

/// One execution: a run (`task_id`) and one execution of it. The unit of the task table
/// (PROTOCOL §7): two executions of one run are two entries, and one's end never touches the
/// other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecKey {
    pub task_id: String,
    pub execution_id: String,
}

impl ExecKey {
    /// The key of `execution_id` of run `task_id`.
    pub fn new(task_id: &str, execution_id: &str) -> Self {
        ExecKey {
            task_id: task_id.to_string(),
            execution_id: execution_id.to_string(),
        }
    }

    /// Named by a cancellation: its run, and its execution unless none is given (PROTOCOL §7).
    pub fn named_by(&self, task_id: &str, execution_id: Option<&str>) -> bool {
        self.task_id == task_id && execution_id.is_none_or(|e| e == self.execution_id)
    }
}

struct Active {
    control: Arc<TaskControl>,
    reservation: crate::spec::policy::Resources,
    image: String,
    claimed_at: chrono::DateTime<chrono::Utc>,
}

struct Delivery {
    task_id: String,
    spool: SharedSpool,
    acks: watch::Sender<Acks>,
    terminal: watch::Sender<Option<WorkerMessage>>,
}

/// What a container found at start-up tells about a journaled execution.
#[derive(Debug, Clone)]
pub enum Found {
    /// Its container exists (running or exited).
    Container(String),
    /// No container carries its execution id.
    Vanished,
}

/// Static settings of the supervisor.
pub struct SupervisorConfig {
    /// Slots (0 = unlimited).
    pub max: u32,
    /// What SIGTERM does.
    pub shutdown_mode: ShutdownMode,
    /// How long shutdown waits, once no task runs, for the last results to be delivered.
    pub shutdown_grace: Duration,
    /// Where spools live.
    pub spool_dir: PathBuf,
    /// Transcript budget.
    pub max_bytes: u64,
    /// Kept tail.
    pub tail_bytes: u64,
    /// How long a full disk is waited for before output is counted as lost.
    pub full_disk_patience: std::time::Duration,
    /// Hello fields.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the host has.
    pub host: crate::supervisor::capacity::Host,
    /// Held back for the host.
    pub reserve: crate::spec::policy::Resources,
    /// Minimum free disk under `disk_paths`.
    pub min_free_disk: u64,
    /// `state_dir` and Docker's data dir.
    pub disk_paths: Vec<PathBuf>,
    /// For task reservations.
    pub policy: crate::spec::policy::Policy,
    /// `--one-shot`: one task, then stop with its status.
    pub one_shot: bool,
}

/// Owns every execution of this worker.
pub struct Supervisor {
    env: Arc<TaskEnv>,
    cfg: SupervisorConfig,
    tasks: HashMap<ExecKey, Active>,
    deliveries: HashMap<String, Delivery>,
    berth: bool,
    stopping: bool,
    draining: bool,
    outbox: mpsc::Sender<Outbound>,
    link: watch::Receiver<Link>,
    hello: watch::Sender<Hello>,
    done_tx: mpsc::Sender<(String, String, RunEnd)>,
    done_rx: mpsc::Receiver<(String, String, RunEnd)>,
    delivered_tx: mpsc::Sender<String>,
    delivered_rx: mpsc::Receiver<String>,
    runs: TaskTracker,
    shippers: TaskTracker,
    stop_shipping: CancellationToken,
    snapshot: watch::Sender<Snapshot>,
    unpersisted_acks: std::collections::HashSet<String>,
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
        let (delivered_tx, delivered_rx) = mpsc::channel(64);
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
        Supervisor {
            env,
            cfg,
            tasks: HashMap::new(),
            deliveries: HashMap::new(),
            berth: false,
            stopping: false,
            draining: false,
            outbox,
            link,
            hello,
            done_tx,
            done_rx,
            delivered_tx,
            delivered_rx,
            runs: TaskTracker::new(),
            shippers: TaskTracker::new(),
            stop_shipping: CancellationToken::new(),
            snapshot,
            unpersisted_acks: std::collections::HashSet::new(),
            beat: Arc::default(),
            commands_tx,
            commands_rx,
            one_shot: one_shot::OneShot::new(cfg_one_shot),
            one_shot_outcome: Arc::default(),
            memory: closure::Memory::default(),
            closures: HashMap::new(),
            proven_tx,
            proven_rx,
        }
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

    fn publish(&self) {
        let mut tasks: Vec<TaskView> = Vec::new();
        for (key, t) in &self.tasks {
            if let Some(d) = self.deliveries.get(&key.execution_id) {
                tasks.push(TaskView {
                    task_id: key.task_id.clone(),
                    execution_id: key.execution_id.clone(),
                    // A task asked to stop (cancel, time limit, shutdown) shows it until it ends.
                    state: if t.control.reason().is_some() {
                        "stopping"
                    } else {
                        "running"
                    },
                    image: t.image.clone(),
                    claimed_at: t.claimed_at,
                    output: lock(&d.spool).subscribe(),
                    control: Some(t.control.clone()),
                });
            }
        }
        for (execution_id, d) in &self.deliveries {
            if !self
                .tasks
                .contains_key(&ExecKey::new(&d.task_id, execution_id))
            {
                tasks.push(TaskView {
                    task_id: d.task_id.clone(),
                    execution_id: execution_id.clone(),
                    state: "delivering",
                    image: String::new(),
                    claimed_at: chrono::Utc::now(),
                    output: lock(&d.spool).subscribe(),
                    control: None,
                });
            }
        }
        tasks.sort_by(|a, b| {
            (a.state, a.claimed_at)
                .cmp(&(b.state, b.claimed_at))
                .reverse()
        });
        self.snapshot.send_replace(Snapshot {
            active: self.tasks.len(),
            max: self.cfg.max,
            stopping: self.stopping,
            draining: self.draining,
            undelivered: self.deliveries.len(),
            closing: self.closures.len(),
            tasks,
        });
        let mut held: Vec<HeldTask> = self
            .deliveries
            .iter()
            .map(|(execution_id, d)| HeldTask {
                task_id: d.task_id.clone(),
                execution_id: execution_id.clone(),
                state: if self
                    .tasks
                    .contains_key(&ExecKey::new(&d.task_id, execution_id))
                {
                    "running"
                } else {
                    "finished"
                }
                .to_string(),
                output_offset: lock(&d.spool).state().len,
            })
            .collect();
        held.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
        self.hello.send_modify(|h| h.tasks = held);
    }

    /// Writes acknowledged offsets received since the last call to the journal.
    fn persist_acks(&mut self) {
        for execution_id in std::mem::take(&mut self.unpersisted_acks) {
            let Some(d) = self.deliveries.get(&execution_id) else {
                continue;
            };
            let offset = d.acks.borrow().offset;
            if let Err(e) = self.env.journal.set_acked(&execution_id, offset) {
                warn!(error = %e, "cannot record an output acknowledgement");
            }
        }
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

    /// Starts delivering an execution's transcript and result.
    fn deliver(
        &mut self,
        task_id: &str,
        execution_id: &str,
        spool: SharedSpool,
        acked: u64,
        terminal: Option<WorkerMessage>,
    ) {
        let (acks, acks_rx) = watch::channel(Acks {
            offset: acked,
            terminal: false,
        });
        let (term_tx, term_rx) = watch::channel(terminal);
        let shipper = Shipper {
            task_id: task_id.to_string(),
            execution_id: execution_id.to_string(),
            spool: spool.clone(),
            link: self.link.clone(),
            acks: acks_rx,
            terminal: term_rx,
            outbox: self.outbox.clone(),
            journal: self.env.journal.clone(),
        };
        let stop = self.stop_shipping.clone();
        let done = self.delivered_tx.clone();
        let exec = execution_id.to_string();
        self.shippers.spawn(async move {
            if shipper.run(stop).await {
                let _ = done.send(exec).await;
            }
        });
        self.deliveries.insert(
            execution_id.to_string(),
            Delivery {
                task_id: task_id.to_string(),
                spool,
                acks,
                terminal: term_tx,
            },
        );
    }

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
                self.deliver(
                    &r.task_id,
                    &r.execution_id,
                    spool,
                    r.acked_offset,
                    r.terminal.clone(),
                );
                continue;
            }
            self.deliver(
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
            let done = self.done_tx.clone();
            let (task_id, execution_id) = (r.task_id.clone(), r.execution_id.clone());
            match found
                .get(&r.execution_id)
                .cloned()
                .unwrap_or(Found::Vanished)
            {
                Found::Container(id) if r.state == ExecState::Provisioning => {
                    warn!(%task_id, container = %id, "the task was being provisioned when berth stopped; ending it");
                    self.runs.spawn(async move {
                        let end = task::abandon(&env, &exec, &id, &control).await;
                        let _ = done.send((task_id, execution_id, end)).await;
                    });
                }
                Found::Container(id) => {
                    self.runs.spawn(async move {
                        let end = task::resume(env, exec, id, control).await;
                        let _ = done.send((task_id, execution_id, end)).await;
                    });
                }
                Found::Vanished => {
                    let detail = match r.container_id {
                        Some(id) => format!("the task's container {id} disappeared while berth was not running (removed by someone else, or lost by the Docker engine)"),
                        None => "berth stopped before the task's container was created; the task did not run, resubmit it".to_string(),
                    };
                    warn!(task_id = %task_id, %detail, "journaled task cannot continue");
                    self.runs.spawn(async move {
                        let end =
                            task::fail(&env, &exec, &control, FailureReason::ContainerWait, detail)
                                .await;
                        let _ = done.send((task_id, execution_id, end)).await;
                    });
                }
            }
        }
        self.publish();
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
                    self.deliveries
                        .values()
                        .filter(|d| d.terminal.borrow().is_some())
                        .count()
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
                            if let Some(d) = self.deliveries.get(&execution_id) {
                                d.terminal.send_replace(Some(msg));
                            }
                        }
                        RunEnd::Detached => info!(%task_id, "detached; the container keeps running"),
                    }
                    self.publish();
                }
                Some(execution_id) = self.delivered_rx.recv() => {
                    // The final offset must be durable: retention only deletes transcripts the
                    // journal shows as fully acknowledged.
                    self.persist_acks();
                    self.deliveries.remove(&execution_id);
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
                    self.persist_acks();
                }
            }
        };
        self.persist_acks();
        self.stop_shipping.cancel();
        self.runs.close();
        self.runs.wait().await;
        self.shippers.close();
        self.shippers.wait().await;
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
                } => {
                    if let Some(d) = self.deliveries.get(&execution_id) {
                        // Persisted in batches (see `persist_acks`): a stale offset after a
                        // crash only re-sends bytes the server de-duplicates.
                        self.unpersisted_acks.insert(execution_id.clone());
                        d.acks.send_if_modified(|a| {
                            let grew = offset > a.offset;
                            a.offset = a.offset.max(offset);
                            grew
                        });
                    }
                }
                ServerMessage::Ack { message_id } => {
                    for d in self.deliveries.values() {
                        let matches = d
                            .terminal
                            .borrow()
                            .as_ref()
                            .and_then(|t| t.ext())
                            .is_some_and(|e| e.message_id == message_id);
                        if matches {
                            d.acks.send_modify(|a| a.terminal = true);
                        }
                    }
                }
                ServerMessage::Unknown(_) => {}
            },
        }
    }

    /// A cancellation: with an execution id only that execution, with only the run's id every
    /// execution of it here (PROTOCOL §7). Each cancelled execution owes `execution_closed`
    /// once its sandbox is proven gone; one already closed is answered again from memory.
    async fn cancel(&mut self, task_id: &str, execution_id: Option<&str>) {
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
                    let delivered = !self.deliveries.contains_key(&key.execution_id);
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
    fn owe_closure(&mut self, key: &ExecKey, delivered: bool) {
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
    fn start_proof(&mut self, key: &ExecKey) {
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
            self.stop_shipping.clone(),
            self.proven_tx.clone(),
            self.env.metrics.clone(),
        ));
    }

    /// Sends `execution_closed` once the sandbox is proven gone and the result delivered.
    async fn try_close(&mut self, key: &ExecKey) {
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
    async fn send_closed(&self, key: &ExecKey, record: bool) {
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
            let stop = self.stop_shipping.clone();
            self.shippers.spawn(async move {
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

    /// What this worker holds of an assignment's execution.
    fn held(&self, a: &TaskAssignment) -> admission::Held {
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
    async fn ended_here(&mut self, a: &TaskAssignment) -> bool {
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
        if !self.deliveries.contains_key(e)
            && let Some(t) = r.terminal
        {
            self.send(t).await;
        }
        true
    }

    async fn assign(&mut self, a: TaskAssignment) {
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
            // A one-shot worker whose task is taken is on its way out.
            self.stopping || self.one_shot.refuses(),
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
    async fn reject(&mut self, task_id: String, reason: RejectReason) {
        if !matches!(reason, RejectReason::InsufficientResources(_)) {
            info!(%task_id, reason = %reason.wire(true), "rejecting task");
        }
        self.env.metrics.rejected(reason.kind());
        let reason = reason.wire(self.berth);
        self.send(WorkerMessage::TaskRejected { task_id, reason })
            .await;
    }

    async fn start(&mut self, a: TaskAssignment, reservation: crate::spec::policy::Resources) {
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
        self.deliver(&task_id, &execution_id, spool.clone(), 0, None);
        self.publish();
        info!(%task_id, %execution_id, berth = self.berth, "task claimed");
        let exec = Execution {
            assignment: a,
            execution_id: execution_id.clone(),
            berth: self.berth,
            spool,
            claimed_at: chrono::Utc::now(),
        };
        let env = self.env.clone();
        let done = self.done_tx.clone();
        self.runs.spawn(async move {
            let end = task::run(env, exec, control).await;
            let _ = done.send((task_id, execution_id, end)).await;
        });
    }

    /// What a task reserves: its shape › its environment's resources (a fetched environment
    /// counts from its cached copy; admission never waits for the network) › the defaults.
    fn reservation(&self, a: &TaskAssignment, berth: bool) -> crate::spec::policy::Resources {
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

    /// Why the Docker engine is considered down, if it is.
    fn engine_down(&self) -> Option<String> {
        let st = self.env.engine.state();
        (!st.reachable).then(|| st.error.unwrap_or_else(|| "no answer".into()))
    }

    /// Resource-aware admission: memory/CPU reservations and free disk.
    fn fits(&self, want: crate::spec::policy::Resources) -> Result<(), String> {
        // A task started now could only fail: let the server requeue it instead.
        if let Some(e) = self.engine_down() {
            return Err(format!("Docker engine unreachable ({e})"));
        }
        let running: Vec<crate::spec::policy::Resources> =
            self.tasks.values().map(|t| t.reservation).collect();
        crate::supervisor::capacity::fits(want, &running, self.cfg.host, self.cfg.reserve)?;
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
    fn claimed(&self, a: &TaskAssignment) -> WorkerMessage {
        WorkerMessage::TaskClaimed {
            task_id: a.task_id.clone(),
            worker_id: self.env.settings().worker_id.clone(),
            execution_id: a.execution_id.clone().filter(|e| !e.is_empty()),
        }
    }
}
