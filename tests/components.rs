//! Component tests on the fake runtime: the real supervisor, task runs, capture, spools and
//! journal, with the engine scripted and every engine call recorded. No Docker needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth::backend::Backend;
use berth::backend::docker::DockerBackend;
use berth::config::{self, Overrides};
use berth::control::session::SessionEvent;
use berth::control::shipper::{Link, Outbound};
use berth::failure::FailureReason;
use berth::journal::Journal;
use berth::protocol::{
    REJECT_AT_CAPACITY, ServerMessage, Stream, TASK_STATE_CANCELLED, Task, TaskAssignment,
    WorkerMessage,
};
use berth::runtime::fake::{ExecScript, FakeRuntime, Op, Script};
use berth::runtime::{ExitStatus, LogEntry, Runtime, RuntimeError};
use berth::secret::Secret;
use berth::spec::owner::Owner;
use berth::supervisor::reconcile::{ReconcileError, reconcile};
use berth::supervisor::{Command, Found, Supervisor};
use berth::task::TaskEnv;
use berth::transcript::spool::Spool;
use proptest::prelude::*;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WORKER: &str = "w-fake";
const IMAGE: &str = "berth-test/fake:1";

/// One supervisor on a fake engine, with the session replaced by channels the test drives:
/// it reads what the worker sends, acknowledges it like a server, and injects messages.
struct Harness {
    fake: FakeRuntime,
    events: mpsc::Sender<SessionEvent>,
    out: mpsc::Receiver<Outbound>,
    commands: mpsc::Sender<Command>,
    slots: watch::Receiver<berth::supervisor::Snapshot>,
    shutdown: CancellationToken,
    join: Option<JoinHandle<tokio::time::Instant>>,
    _link: watch::Sender<Link>,
    journal: Arc<Journal>,
    /// Every message received, in order.
    seen: Vec<WorkerMessage>,
    /// Transcript bytes per execution (all streams, in offset order).
    transcripts: HashMap<String, Vec<u8>>,
    /// The latest execution of each task that sent output.
    latest: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, max: u32, yaml: &str) -> config::Config {
    let text = format!(
        "worker_id: {WORKER}\nmax_concurrent_tasks: {max}\ncontrol_plane:\n  url: ws://127.0.0.1:9/ws\nbackend:\n  docker:\n    default_image: {IMAGE}\n    pull_policy: never\n    stop_grace_period: 1s\nadmission:\n  min_free_disk: 0\n{yaml}"
    );
    let ov = Overrides {
        api_key: Some(Secret::new("key-for-tests")),
        state_dir: Some(dir.to_path_buf()),
        ..Overrides::default()
    };
    config::load_str(Some(&text), Some(Path::new("test.yaml")), &ov, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The Docker backend over the recording fake engine.
fn docker(fake: &FakeRuntime) -> DockerBackend {
    DockerBackend::new(Arc::new(fake.clone()))
}

fn env_on(
    fake: &FakeRuntime,
    cfg: &config::Config,
    journal: Arc<Journal>,
) -> (Arc<TaskEnv>, mpsc::Receiver<Outbound>) {
    let (out_tx, out_rx) = mpsc::channel(32);
    let backend: Arc<dyn Backend> = Arc::new(docker(fake));
    let env = Arc::new(TaskEnv {
        engine: berth::backend::health::Engine::new(backend.clone()),
        backend,
        settings: parking_lot::RwLock::new(Arc::new(berth::worker::task_settings(cfg))),
        journal,
        outbox: out_tx,
        detach: CancellationToken::new(),
        catalog: None,
        metrics: Arc::new(berth::metrics::Metrics::default()),
        setup_events: None,
        task_logs: None,
        gate: None,
    });
    (env, out_rx)
}

impl Harness {
    async fn start(max: u32, yaml: &str) -> Harness {
        let fake = FakeRuntime::new();
        fake.add_image(IMAGE, &[]);
        Self::start_on(fake, tempfile::tempdir().unwrap(), max, yaml).await
    }

    async fn start_on(fake: FakeRuntime, dir: tempfile::TempDir, max: u32, yaml: &str) -> Harness {
        if let Ok(filter) = std::env::var("BERTH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let cfg = config(dir.path(), max, yaml);
        let journal = Arc::new(Journal::open(dir.path()).unwrap());
        let (env, out) = env_on(&fake, &cfg, journal.clone());
        let (link_tx, link_rx) = watch::channel(Link::default());
        let out_tx = env.outbox.clone();
        let mut sup = Supervisor::new(
            env,
            berth::worker::supervisor_config(&cfg, None),
            out_tx,
            link_rx,
        );
        let (records, found) = reconcile(
            &docker(&fake),
            &journal,
            WORKER,
            cfg.cleanup,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        sup.adopt(records, &found);
        let commands = sup.commands();
        let slots = sup.subscribe();
        let (events, ev_rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(sup.run(ev_rx, shutdown.clone()));
        // A berth/1 connection is up.
        link_tx.send_replace(Link {
            epoch: 1,
            connected: true,
            berth: true,
        });
        events
            .send(SessionEvent::Connected { berth: true })
            .await
            .unwrap();
        Harness {
            fake,
            events,
            out,
            commands,
            slots,
            shutdown,
            join: Some(join),
            _link: link_tx,
            journal,
            seen: Vec::new(),
            transcripts: HashMap::new(),
            latest: HashMap::new(),
            _dir: dir,
        }
    }

    /// Sends a command and waits until the supervisor shows its drain state.
    async fn command(&mut self, c: Command, draining: bool) {
        self.commands.send(c).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            self.slots.wait_for(|s| s.draining == draining),
        )
        .await
        .unwrap()
        .unwrap();
    }

    async fn send(&self, m: ServerMessage) {
        self.events.send(SessionEvent::Message(m)).await.unwrap();
    }

    async fn assign(&self, a: TaskAssignment) {
        self.send(ServerMessage::TaskAssignment(Box::new(a))).await;
    }

    async fn cancel(&self, task_id: &str) {
        self.send(ServerMessage::TaskCancellation {
            task_id: task_id.into(),
            execution_id: None,
        })
        .await;
    }

    async fn cancel_execution(&self, task_id: &str, execution_id: &str) {
        self.send(ServerMessage::TaskCancellation {
            task_id: task_id.into(),
            execution_id: Some(execution_id.into()),
        })
        .await;
    }

    /// Cancels a running task and waits until the supervisor shows it no longer running
    /// (stopping, or already ended).
    async fn cancel_seen(&mut self, task_id: &str) {
        self.cancel(task_id).await;
        let shows = |s: &berth::supervisor::Snapshot| {
            !s.tasks
                .iter()
                .any(|t| t.task_id == task_id && t.state == "running")
        };
        tokio::time::timeout(Duration::from_secs(30), self.slots.wait_for(shows))
            .await
            .unwrap()
            .unwrap();
    }

    /// What was sent so far, one line per message (transcript as text).
    fn summary(&self) -> String {
        self.seen
            .iter()
            .map(|m| match m {
                WorkerMessage::TaskOutput { task_id, data, .. } => {
                    format!(
                        "\n  task_output {task_id}: {:?}",
                        String::from_utf8_lossy(data)
                    )
                }
                m => format!("\n  {m:?}"),
            })
            .collect()
    }

    /// Receives one message, acknowledging it as a server would.
    async fn pump(&mut self) -> WorkerMessage {
        let o = tokio::time::timeout(Duration::from_secs(60), self.out.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing sent for 60 s; seen so far: {}", self.summary()))
            .expect("outbox closed");
        self.handle(o).await
    }

    /// Records a message and acknowledges it as a server would.
    async fn handle(&mut self, o: Outbound) -> WorkerMessage {
        if let Some(w) = o.written {
            let _ = w.send(());
        }
        let m = o.msg;
        match &m {
            WorkerMessage::TaskOutput {
                task_id,
                execution_id,
                offset,
                data,
                ..
            } => {
                self.latest.insert(task_id.clone(), execution_id.clone());
                let t = self.transcripts.entry(execution_id.clone()).or_default();
                // Re-sends start at an offset already held: keep what is new only.
                let skip = (t.len() as u64).saturating_sub(*offset) as usize;
                if *offset <= t.len() as u64 && skip < data.len() {
                    t.extend_from_slice(&data[skip..]);
                }
                let ack = ServerMessage::OutputAck {
                    task_id: task_id.clone(),
                    execution_id: execution_id.clone(),
                    offset: t.len() as u64,
                };
                let _ = self.events.send(SessionEvent::Message(ack)).await;
            }
            WorkerMessage::TaskCompleted { ext: Some(e), .. }
            | WorkerMessage::TaskFailed { ext: Some(e), .. } => {
                let ack = ServerMessage::Ack {
                    message_id: e.message_id.clone(),
                };
                let _ = self.events.send(SessionEvent::Message(ack)).await;
            }
            _ => {}
        }
        self.seen.push(m.clone());
        m
    }

    /// Pumps until `pick` matches a message.
    async fn until<T>(&mut self, mut pick: impl FnMut(&WorkerMessage) -> Option<T>) -> T {
        for m in &self.seen {
            if let Some(t) = pick(m) {
                return t;
            }
        }
        loop {
            let m = self.pump().await;
            if let Some(t) = pick(&m) {
                return t;
            }
        }
    }

    async fn claimed(&mut self, task: &str) {
        self.until(|m| {
            matches!(m, WorkerMessage::TaskClaimed { task_id, .. } if task_id == task).then_some(())
        })
        .await
    }

    async fn rejected(&mut self, task: &str) -> String {
        self.until(|m| match m {
            WorkerMessage::TaskRejected { task_id, reason } if task_id == task => {
                Some(reason.clone())
            }
            _ => None,
        })
        .await
    }

    /// The task's terminal message, once its whole transcript arrived too.
    async fn result(&mut self, task: &str) -> WorkerMessage {
        self.result_of(task, None).await
    }

    /// The terminal message of one execution of `task` (any, when `None`), once its whole
    /// transcript arrived too.
    async fn result_of(&mut self, task: &str, execution: Option<&str>) -> WorkerMessage {
        let m = self
            .until(|m| match m {
                WorkerMessage::TaskCompleted { task_id, ext, .. }
                | WorkerMessage::TaskFailed { task_id, ext, .. }
                    if task_id == task
                        && execution
                            .is_none_or(|x| ext.as_ref().is_some_and(|e| e.execution_id == x)) =>
                {
                    Some(m.clone())
                }
                _ => None,
            })
            .await;
        if let Some(e) = m.ext() {
            while (self.execution_transcript(&e.execution_id).len() as u64) < e.transcript_bytes {
                self.pump().await;
            }
        }
        m
    }

    fn execution_transcript(&self, execution: &str) -> String {
        String::from_utf8_lossy(
            self.transcripts
                .get(execution)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )
        .into_owned()
    }

    /// The transcript of the task's latest execution that sent output.
    fn transcript(&self, task: &str) -> String {
        self.latest
            .get(task)
            .map(|e| self.execution_transcript(e))
            .unwrap_or_default()
    }

    /// Terminal messages of one execution received so far.
    fn terminals_of(&self, execution: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.ext().is_some_and(|e| e.execution_id == execution))
            .count()
    }

    /// The id of the container created for `task` (from the journal, once it is recorded).
    async fn container_for(&mut self, task: &str) -> String {
        for _ in 0..600 {
            if let Some(id) = self
                .journal
                .by_task(task)
                .unwrap()
                .into_iter()
                .find_map(|r| r.container_id)
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no container for {task} within 30 s; engine calls: {:?}; sent: {}",
            self.fake.calls(),
            self.summary()
        )
    }

    /// Shuts the supervisor down, acknowledging what it still sends; returns the messages
    /// sent meanwhile.
    async fn stop(mut self) -> Vec<WorkerMessage> {
        self.shutdown.cancel();
        let seen = self.seen.len();
        let mut join = self.join.take().unwrap();
        loop {
            tokio::select! {
                r = &mut join => {
                    r.unwrap();
                    return self.seen.split_off(seen);
                }
                o = self.out.recv() => match o {
                    Some(o) => { self.handle(o).await; }
                    None => {
                        let r = (&mut join).await;
                        r.unwrap();
                        return self.seen.split_off(seen);
                    }
                },
            }
        }
    }
}

fn assignment(task_id: &str, command: &[&str]) -> TaskAssignment {
    TaskAssignment {
        task_id: task_id.into(),
        execution_id: Some(format!("{task_id}-e1")),
        task: Some(Task {
            id: task_id.into(),
            title: "component test".into(),
            ..Task::default()
        }),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        ..TaskAssignment::default()
    }
}

fn reason_of(m: &WorkerMessage) -> Option<FailureReason> {
    match m {
        WorkerMessage::TaskFailed { failure_reason, .. } => *failure_reason,
        _ => None,
    }
}

fn message_of(m: &WorkerMessage) -> &str {
    match m {
        WorkerMessage::TaskFailed { message, .. }
        | WorkerMessage::TaskCompleted { message, .. } => message,
        _ => "",
    }
}

fn api_error(op: &'static str) -> RuntimeError {
    RuntimeError::Api {
        op,
        reason: "injected by the test (HTTP 500)".into(),
    }
}

fn cancelled(m: &WorkerMessage) -> bool {
    matches!(m, WorkerMessage::TaskCompleted { task_state: Some(s), .. } if s == TASK_STATE_CANCELLED)
}

// ---- the supervisor ---------------------------------------------------------------------

#[tokio::test]
async fn a_full_worker_rejects_and_claims_again_once_a_slot_is_free() {
    let mut h = Harness::start(1, "").await;
    h.fake
        .script_next(Script::runs().prints(Stream::Stdout, "one\n"));
    h.assign(assignment("t1", &["run"])).await;
    h.claimed("t1").await;
    h.assign(assignment("t2", &["run"])).await;
    assert_eq!(h.rejected("t2").await, REJECT_AT_CAPACITY);
    assert_eq!(
        h.fake.count(Op::Create),
        1,
        "a rejected task creates nothing"
    );
    let c1 = h.container_for("t1").await;
    h.fake.exit(&c1, 0);
    assert!(matches!(
        h.result("t1").await,
        WorkerMessage::TaskCompleted { .. }
    ));
    assert!(h.transcript("t1").contains("one\n"));
    h.assign(assignment("t2", &["run"])).await;
    h.claimed("t2").await;
    assert!(matches!(
        h.result("t2").await,
        WorkerMessage::TaskCompleted { .. }
    ));
    h.stop().await;
}

#[tokio::test]
async fn a_second_assignment_of_a_running_task_is_claimed_again_and_starts_nothing() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_next(Script::runs());
    h.assign(assignment("dup", &["run"])).await;
    h.claimed("dup").await;
    let c = h.container_for("dup").await;
    h.assign(assignment("dup", &["run"])).await;
    let claims = |seen: &[WorkerMessage]| {
        seen.iter()
            .filter(|m| matches!(m, WorkerMessage::TaskClaimed { task_id, .. } if task_id == "dup"))
            .count()
    };
    while claims(&h.seen) < 2 {
        h.pump().await;
    }
    // Both claims name the server's execution (PROTOCOL §7).
    for m in &h.seen {
        if let WorkerMessage::TaskClaimed {
            task_id,
            execution_id,
            ..
        } = m
            && task_id == "dup"
        {
            assert_eq!(execution_id.as_deref(), Some("dup-e1"));
        }
    }
    h.fake.exit(&c, 0);
    assert!(matches!(
        h.result("dup").await,
        WorkerMessage::TaskCompleted { .. }
    ));
    assert_eq!(h.fake.count(Op::Create), 1, "one container for both claims");
    assert_eq!(h.fake.count(Op::Start), 1);
    h.stop().await;
}

/// A second execution of `task` (PROTOCOL §7: the server re-executes a run).
fn second(task: &str) -> TaskAssignment {
    TaskAssignment {
        execution_id: Some(format!("{task}-e2")),
        ..assignment(task, &["run"])
    }
}

#[tokio::test]
async fn two_executions_of_one_run_run_at_once_and_an_execution_scoped_cancel_stops_one() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("run", &["run"])).await;
    let c1 = h.container_for("run").await;
    h.fake.called(Op::Wait, 1).await;
    // A new execution of a run still active here runs as its own execution.
    h.assign(second("run")).await;
    h.until(|m| {
        matches!(m, WorkerMessage::TaskClaimed { execution_id: Some(e), .. } if e == "run-e2")
            .then_some(())
    })
    .await;
    h.fake.called(Op::Wait, 2).await;
    let containers: Vec<String> = h.fake.containers().into_iter().map(|(id, _)| id).collect();
    assert_eq!(containers.len(), 2, "one container per execution");
    let c2 = containers.into_iter().find(|c| *c != c1).unwrap();
    assert_eq!(h.slots.borrow().active, 2, "each execution holds a slot");
    // A cancellation of an execution this worker does not have stops nothing.
    h.cancel_execution("run", "run-e3").await;
    h.assign(assignment("marker", &["run"])).await;
    h.claimed("marker").await;
    assert_eq!(h.fake.count(Op::Stop), 0, "{:?}", h.fake.ops());
    h.cancel_execution("run", "run-e1").await;
    let r = h.result_of("run", Some("run-e1")).await;
    assert!(cancelled(&r), "{r:?}");
    assert_eq!(
        h.fake.targets(Op::Stop),
        vec![c1],
        "only the named execution's container is stopped"
    );
    assert!(
        h.fake
            .containers()
            .iter()
            .any(|(id, running)| *id == c2 && *running),
        "the other execution runs on"
    );
    h.fake.exit(&c2, 0);
    let r = h.result_of("run", Some("run-e2")).await;
    assert!(
        matches!(
            r,
            WorkerMessage::TaskCompleted {
                task_state: None,
                ..
            }
        ),
        "{r:?}"
    );
    // Each execution reported once, and nothing more arrives for either.
    assert_eq!((h.terminals_of("run-e1"), h.terminals_of("run-e2")), (1, 1));
    let seen = h.stop().await;
    assert!(
        seen.iter().all(|m| m.ext().is_none()),
        "no late result: {seen:?}"
    );
}

#[tokio::test]
async fn a_cancellation_naming_only_the_run_cancels_every_execution_of_it() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("run", &["run"])).await;
    h.container_for("run").await;
    h.fake.called(Op::Wait, 1).await;
    h.assign(second("run")).await;
    h.fake.called(Op::Wait, 2).await;
    h.cancel("run").await;
    for e in ["run-e1", "run-e2"] {
        let r = h.result_of("run", Some(e)).await;
        assert!(cancelled(&r), "{e}: {r:?}");
    }
    assert_eq!(h.fake.count(Op::Stop), 2, "{:?}", h.fake.ops());
    assert!(h.fake.containers().is_empty(), "both removed");
    h.stop().await;
}

#[tokio::test]
async fn cancellation_reaches_only_its_task() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("keep", &["run"])).await;
    h.assign(assignment("stop", &["run"])).await;
    let keep = h.container_for("keep").await;
    let stop = h.container_for("stop").await;
    h.fake.called(Op::Wait, 2).await;
    h.cancel("nobody-has-this").await;
    h.cancel("stop").await;
    let r = h.result("stop").await;
    assert!(cancelled(&r), "{r:?}");
    let stops = h.fake.targets(Op::Stop);
    assert_eq!(
        stops,
        std::slice::from_ref(&stop),
        "only the cancelled task's container is stopped"
    );
    assert!(
        h.fake
            .containers()
            .iter()
            .any(|(id, running)| *id == keep && *running)
    );
    assert!(
        !h.fake.containers().iter().any(|(id, _)| *id == stop),
        "removed"
    );
    h.fake.exit(&keep, 0);
    assert!(matches!(
        h.result("keep").await,
        WorkerMessage::TaskCompleted {
            task_state: None,
            ..
        }
    ));
    h.stop().await;
}

/// Pumps until `execution_closed` for `execution` arrives; returns how many were seen.
async fn closed(h: &mut Harness, execution: &str) -> usize {
    h.until(|m| {
        matches!(m, WorkerMessage::ExecutionClosed { execution_id, .. } if execution_id == execution)
            .then_some(())
    })
    .await;
    closures(h, execution)
}

fn closures(h: &Harness, execution: &str) -> usize {
    h.seen
        .iter()
        .filter(|m| matches!(m, WorkerMessage::ExecutionClosed { execution_id, .. } if execution_id == execution))
        .count()
}

#[tokio::test]
async fn a_cancelled_execution_is_closed_after_its_result_and_a_repeated_cancel_replays_it_from_memory()
 {
    let mut h = Harness::start(4, "").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("c", &["run"])).await;
    let c = h.container_for("c").await;
    h.fake.called(Op::Wait, 1).await;
    h.cancel_execution("c", "c-e1").await;
    assert_eq!(closed(&mut h, "c-e1").await, 1);
    let at =
        |h: &Harness, pick: &dyn Fn(&WorkerMessage) -> bool| h.seen.iter().position(pick).unwrap();
    let result = at(&h, &|m| m.ext().is_some());
    let close = at(&h, &|m| matches!(m, WorkerMessage::ExecutionClosed { .. }));
    assert!(
        result < close,
        "closure never overtakes the result: {}",
        h.summary()
    );
    assert!(h.fake.containers().is_empty(), "proven gone: nothing left");
    assert!(h.fake.targets(Op::Remove).contains(&c));
    assert_eq!(h.slots.borrow().closing, 0);
    // Repeated (execution-scoped, then run-scoped): answered again, the engine untouched.
    let calls = h.fake.calls().len();
    h.cancel_execution("c", "c-e1").await;
    while closures(&h, "c-e1") < 2 {
        h.pump().await;
    }
    h.cancel("c").await;
    while closures(&h, "c-e1") < 3 {
        h.pump().await;
    }
    assert_eq!(h.fake.calls().len(), calls, "no engine call for a replay");
    assert_eq!(
        h.terminals_of("c-e1"),
        1,
        "the result itself is never repeated"
    );
    let r = h.journal.get("c-e1").unwrap().unwrap();
    assert_eq!(r.closure, berth::journal::Closure::Sent);
    h.stop().await;
}

#[tokio::test]
async fn a_failing_removal_delays_execution_closed_and_is_retried_on_the_same_container() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("r", &["run"])).await;
    let c = h.container_for("r").await;
    h.fake.called(Op::Wait, 1).await;
    // The task's own cleanup and the first two proofs fail.
    for _ in 0..3 {
        h.fake.fail_next(Op::Remove, api_error("container remove"));
    }
    h.cancel_execution("r", "r-e1").await;
    let r = h.result_of("r", Some("r-e1")).await;
    assert!(cancelled(&r), "{r:?}");
    assert_eq!(closures(&h, "r-e1"), 0, "nothing is closed before proof");
    assert_eq!(closed(&mut h, "r-e1").await, 1);
    let removes = h.fake.targets(Op::Remove);
    assert!(removes.len() >= 4, "{removes:?}");
    assert!(
        removes.iter().all(|t| *t == c),
        "always the exact container: {removes:?}"
    );
    assert!(h.fake.containers().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_late_cancel_of_a_completed_execution_closes_it_once_and_an_unknown_one_is_ignored() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_next(Script::exits(0));
    h.assign(assignment("done", &["run"])).await;
    assert!(matches!(
        h.result("done").await,
        WorkerMessage::TaskCompleted {
            task_state: None,
            ..
        }
    ));
    h.cancel_execution("done", "done-e1").await;
    assert_eq!(closed(&mut h, "done-e1").await, 1);
    h.cancel_execution("nobody", "x").await;
    h.cancel_execution("done", "done-e9").await;
    // A marker proves both were handled (the loop is ordered) and answered nothing.
    h.assign(assignment("marker", &["run"])).await;
    h.claimed("marker").await;
    assert!(
        !h.seen.iter().any(|m| matches!(m, WorkerMessage::ExecutionClosed { execution_id, .. } if execution_id != "done-e1")),
        "{}",
        h.summary()
    );
    h.stop().await;
}

#[tokio::test]
async fn an_ended_execution_assigned_again_is_not_run_twice() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_next(Script::exits(0));
    h.assign(assignment("once", &["run"])).await;
    h.result("once").await;
    h.assign(assignment("once", &["run"])).await;
    let claims = |seen: &[WorkerMessage]| {
        seen.iter()
            .filter(
                |m| matches!(m, WorkerMessage::TaskClaimed { task_id, .. } if task_id == "once"),
            )
            .count()
    };
    while claims(&h.seen) < 2 {
        h.pump().await;
    }
    assert_eq!(h.fake.count(Op::Create), 1, "one run only");
    // The same execution id under another run is refused for good, naming the field.
    h.assign(TaskAssignment {
        execution_id: Some("once-e1".into()),
        ..assignment("thief", &["run"])
    })
    .await;
    let r = h.result("thief").await;
    assert!(message_of(&r).contains("execution_id"), "{r:?}");
    assert_eq!(h.fake.count(Op::Create), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_drained_worker_rejects_new_tasks_and_lets_running_ones_finish() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_next(Script::runs());
    h.assign(assignment("running", &["run"])).await;
    let c = h.container_for("running").await;
    h.command(Command::Drain, true).await;
    h.assign(assignment("late", &["run"])).await;
    assert_eq!(h.rejected("late").await, "draining");
    // The server's drain takes the same path.
    h.command(Command::Resume, false).await;
    h.send(ServerMessage::Drain).await;
    h.assign(assignment("later", &["run"])).await;
    assert_eq!(h.rejected("later").await, "draining");
    h.fake.exit(&c, 0);
    assert!(matches!(
        h.result("running").await,
        WorkerMessage::TaskCompleted { .. }
    ));
    h.send(ServerMessage::Resume).await;
    h.assign(assignment("after", &["run"])).await;
    h.claimed("after").await;
    assert!(matches!(
        h.result("after").await,
        WorkerMessage::TaskCompleted { .. }
    ));
    h.stop().await;
}

// ---- one task run: each phase -----------------------------------------------------------

/// An environment that provisions: one setup command before the task's command runs.
const SETUP_ENV: &str =
    "environments:\n  dev:\n    setup: [\"make deps\"]\ndefault_environment: dev\n";

struct Case {
    name: &'static str,
    yaml: &'static str,
    prepare: fn(&FakeRuntime, &mut TaskAssignment),
    reason: FailureReason,
    says: &'static str,
    exit_code: Option<i64>,
}

#[tokio::test]
async fn each_phase_failure_is_reported_with_its_reason() {
    let cases = [
        Case {
            name: "image missing under pull_policy never",
            yaml: "",
            prepare: |_, a| a.docker_image = Some("berth-test/absent:1".into()),
            reason: FailureReason::ImagePull,
            says: "not present locally and pull_policy is never",
            exit_code: None,
        },
        Case {
            name: "image inspect fails",
            yaml: "",
            prepare: |f, _| f.fail_next(Op::EnsureImage, api_error("image inspect")),
            reason: FailureReason::ImagePull,
            says: "Docker image inspect failed: injected",
            exit_code: None,
        },
        Case {
            name: "sidecar preparation fails",
            yaml: "",
            prepare: |f, a| {
                a.sidecar_image = Some(IMAGE.into());
                f.fail_next(
                    Op::EnsureSidecar,
                    RuntimeError::Sidecar {
                        image: IMAGE.into(),
                        volume: "v".into(),
                        reason: "tar exited with 2".into(),
                    },
                );
            },
            reason: FailureReason::SidecarPrep,
            says: "tar exited with 2",
            exit_code: None,
        },
        Case {
            name: "create fails",
            yaml: "",
            prepare: |f, _| f.fail_next(Op::Create, api_error("container create")),
            reason: FailureReason::ContainerCreate,
            says: "Docker container create failed",
            exit_code: None,
        },
        Case {
            name: "start fails",
            yaml: "",
            prepare: |f, _| f.fail_next(Op::Start, api_error("container start")),
            reason: FailureReason::ContainerStart,
            says: "Docker container start failed",
            exit_code: None,
        },
        Case {
            name: "setup command exits 3",
            yaml: SETUP_ENV,
            prepare: |f, _| {
                f.exec_next(ExecScript {
                    output: vec![(Stream::Stderr, b"make: *** no rule\n".to_vec())],
                    code: 3,
                })
            },
            reason: FailureReason::SetupCommand,
            says: "exited with status 3",
            exit_code: Some(3),
        },
        Case {
            name: "setup command cannot be run",
            yaml: SETUP_ENV,
            prepare: |f, _| f.fail_next(Op::Exec, api_error("exec create")),
            reason: FailureReason::SetupCommand,
            says: "could not be run",
            exit_code: None,
        },
        Case {
            name: "container exits 2",
            yaml: "",
            prepare: |f, _| f.script_next(Script::exits(2).prints(Stream::Stdout, "bye\n")),
            reason: FailureReason::ContainerExit,
            says: "container exited with non-zero status: 2",
            exit_code: Some(2),
        },
        Case {
            name: "out of memory",
            yaml: "",
            prepare: |f, _| f.script_next(Script::runs().oom()),
            reason: FailureReason::ContainerOom,
            says: "out-of-memory killer",
            exit_code: Some(137),
        },
    ];
    for case in cases {
        let mut h = Harness::start(2, case.yaml).await;
        let mut a = assignment("phase", &["run"]);
        (case.prepare)(&h.fake, &mut a);
        h.assign(a).await;
        let r = h.result("phase").await;
        assert_eq!(reason_of(&r), Some(case.reason), "{}: {r:?}", case.name);
        assert!(
            message_of(&r).contains(case.says),
            "{}: {:?} does not say {:?}",
            case.name,
            message_of(&r),
            case.says
        );
        let code = match &r {
            WorkerMessage::TaskFailed { exit_code, .. } => *exit_code,
            _ => None,
        };
        assert_eq!(code, case.exit_code, "{}", case.name);
        // Whatever failed, the transcript ends saying so, and nothing is left running.
        let last = match case.exit_code.filter(|_| {
            matches!(
                case.reason,
                FailureReason::ContainerExit | FailureReason::ContainerOom
            )
        }) {
            Some(code) => format!("container exited with status {code}"),
            None => case.says.to_string(),
        };
        let t = h.transcript("phase");
        let tail = t.lines().last().unwrap_or_default();
        assert!(
            tail.contains(&last),
            "{}: last line {tail:?}, want {last:?}",
            case.name
        );
        assert!(
            h.fake.containers().is_empty(),
            "{}: left {:?}",
            case.name,
            h.fake.containers()
        );
        if case.reason == FailureReason::SetupCommand {
            assert_eq!(
                h.fake.count(Op::Signal),
                0,
                "{}: the task's command was released",
                case.name
            );
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn a_provisioned_task_runs_its_setup_then_its_command() {
    let mut h = Harness::start(2, SETUP_ENV).await;
    h.fake.exec_next(ExecScript {
        output: vec![(Stream::Stdout, b"deps ok\n".to_vec())],
        code: 0,
    });
    h.fake
        .script_next(Script::exits(0).prints(Stream::Stdout, "task ran\n"));
    h.assign(assignment("prov", &["run"])).await;
    let r = h.result("prov").await;
    assert!(matches!(r, WorkerMessage::TaskCompleted { .. }), "{r:?}");
    let t = h.transcript("prov");
    let (deps, ran) = (t.find("deps ok").unwrap(), t.find("task ran").unwrap());
    assert!(deps < ran, "setup output precedes the task's: {t}");
    let calls = h.fake.calls();
    let exec = calls.iter().position(|c| c.op == Op::Exec).unwrap();
    let release = calls.iter().position(|c| c.op == Op::Signal).unwrap();
    assert!(exec < release);
    assert_eq!(calls[exec].target, "/bin/sh -c make deps");
    assert!(calls[release].target.ends_with("SIGUSR1"));
    h.stop().await;
}

/// Cancels the task while the fake holds `op`, and checks it ends cancelled with nothing left.
async fn cancel_during(op: Op, yaml: &str, a: TaskAssignment) -> (FakeRuntime, String) {
    let mut h = Harness::start(2, yaml).await;
    h.fake.script_all(Script::runs());
    if op != Op::Wait {
        h.fake.block(op);
    }
    let task = a.task_id.clone();
    h.assign(a).await;
    h.fake.called(op, 1).await;
    h.cancel_seen(&task).await;
    // Calls that are never abandoned (a sidecar copy, a create) finish first.
    h.fake.unblock(op);
    let r = h.result(&task).await;
    assert!(cancelled(&r), "cancel during {op:?}: {r:?}");
    assert!(
        h.fake.containers().is_empty(),
        "cancel during {op:?} left {:?}",
        h.fake.containers()
    );
    // Closed in every phase, also where no container was ever made (the engine's list of the
    // worker's containers is the proof then).
    assert_eq!(
        closed(&mut h, &format!("{task}-e1")).await,
        1,
        "cancel during {op:?}"
    );
    let t = h.transcript(&task);
    let fake = h.fake.clone();
    h.stop().await;
    (fake, t)
}

#[tokio::test]
async fn a_cancel_in_any_phase_ends_the_task_cancelled_with_nothing_left() {
    let (f, _) = cancel_during(Op::EnsureImage, "", assignment("c-img", &["run"])).await;
    assert_eq!(
        f.count(Op::Create),
        0,
        "a task cancelled while its image is prepared creates nothing"
    );
    let mut side = assignment("c-side", &["run"]);
    side.sidecar_image = Some(IMAGE.into());
    let (f, _) = cancel_during(Op::EnsureSidecar, "", side).await;
    assert_eq!(f.count(Op::Create), 0);
    let (f, _) = cancel_during(Op::Create, "", assignment("c-create", &["run"])).await;
    assert_eq!(f.count(Op::Start), 0, "created, never started, removed");
    assert_eq!(
        f.count(Op::Remove),
        2,
        "removed, then proven gone (answered 404)"
    );
    let (f, _) = cancel_during(Op::Exec, SETUP_ENV, assignment("c-setup", &["run"])).await;
    assert_eq!(f.count(Op::Signal), 0, "the task's command never ran");
    let (f, _) = cancel_during(Op::Wait, "", assignment("c-run", &["run"])).await;
    assert_eq!(f.count(Op::Stop), 1);
}

// ---- engine outages ----------------------------------------------------------------------

#[tokio::test]
async fn a_task_preparing_its_image_waits_for_the_engine_and_goes_on() {
    let mut h = Harness::start(2, "").await;
    h.fake.set_reachable(false);
    h.assign(assignment("o-img", &["run"])).await;
    h.fake.called(Op::Ping, 2).await;
    h.fake.set_reachable(true);
    let r = h.result("o-img").await;
    assert!(matches!(r, WorkerMessage::TaskCompleted { .. }), "{r:?}");
    let t = h.transcript("o-img");
    assert!(
        t.contains("Docker engine unreachable while preparing the image; waiting for it"),
        "{t}"
    );
    assert!(t.contains("Docker engine reachable again; retrying"), "{t}");
    h.stop().await;
}

#[tokio::test]
async fn a_running_task_rides_out_an_outage() {
    let mut h = Harness::start(4, "").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("o-ok", &["run"])).await;
    h.assign(assignment("o-killed", &["run"])).await;
    h.assign(assignment("o-lost", &["run"])).await;
    let ok = h.container_for("o-ok").await;
    let killed = h.container_for("o-killed").await;
    let lost = h.container_for("o-lost").await;
    h.fake.called(Op::Wait, 3).await;
    h.fake.set_reachable(false);
    let inspects = h.fake.count(Op::Inspect);
    h.fake.called(Op::Inspect, inspects + 3).await;
    // While the engine is away: one exits on its own, one dies with it, one vanishes.
    h.fake.exit(&ok, 0);
    h.fake.exit(&killed, 137);
    h.fake.lose(&lost);
    h.fake.set_reachable(true);
    let r = h.result("o-ok").await;
    assert!(matches!(r, WorkerMessage::TaskCompleted { .. }), "{r:?}");
    let r = h.result("o-killed").await;
    // The engine's doing, not the task's own exit (issue 21.7).
    assert_eq!(reason_of(&r), Some(FailureReason::ContainerWait));
    assert!(
        message_of(&r).contains("the Docker engine was unreachable from")
            && message_of(&r).contains("received SIGKILL (exit status 137)"),
        "{r:?}"
    );
    let r = h.result("o-lost").await;
    assert_eq!(reason_of(&r), Some(FailureReason::ContainerWait));
    assert!(
        message_of(&r).contains("disappeared while the Docker engine was unreachable"),
        "{r:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_container_removed_by_someone_else_fails_its_task() {
    let mut h = Harness::start(2, "").await;
    h.fake.script_next(Script::runs());
    h.assign(assignment("gone", &["run"])).await;
    let c = h.container_for("gone").await;
    h.fake.called(Op::Wait, 1).await;
    h.fake.lose(&c);
    let r = h.result("gone").await;
    assert_eq!(reason_of(&r), Some(FailureReason::ContainerWait));
    assert!(
        message_of(&r).contains("was removed by someone else"),
        "{r:?}"
    );
    h.stop().await;
}

// ---- reconcile ---------------------------------------------------------------------------

fn journal_in(dir: &Path) -> Journal {
    Journal::open(dir).unwrap()
}

/// This worker as the instance owning `journal`'s state dir.
fn owner_of(journal: &Journal) -> Owner {
    Owner::new(WORKER, journal.instance())
}

#[tokio::test]
async fn reconcile_removes_orphans_and_finished_containers_and_finds_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_in(dir.path());
    let fake = FakeRuntime::new();
    let live_a = assignment("live", &["run"]);
    journal.claim("live-e1", &live_a, true).unwrap();
    let done_a = assignment("done", &["run"]);
    journal.claim("done-e1", &done_a, true).unwrap();
    let done_msg = WorkerMessage::TaskCompleted {
        task_id: "done".into(),
        message: "Task completed successfully".into(),
        task_state: None,
        ext: None,
    };
    journal.finish("done-e1", &done_msg).unwrap();
    journal
        .claim("vanished-e1", &assignment("vanished", &["run"]), true)
        .unwrap();
    let exited = Some(ExitStatus {
        code: 0,
        oom_killed: false,
    });
    let live = fake.add_container(&owner_of(&journal), "live", "live-e1", true, vec![], None);
    let done = fake.add_container(
        &owner_of(&journal),
        "done",
        "done-e1",
        false,
        vec![],
        exited,
    );
    let orphan = fake.add_container(
        &owner_of(&journal),
        "orphan",
        "orphan-e1",
        true,
        vec![],
        None,
    );
    let other = fake.add_container(
        &Owner::new("another-worker", "x"),
        "x",
        "x-e1",
        true,
        vec![],
        None,
    );
    let (records, found) = reconcile(
        &docker(&fake),
        &journal,
        WORKER,
        true,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(records.len(), 3);
    assert!(matches!(found.get("live-e1"), Some(Found::Container(id)) if *id == live));
    assert!(
        !found.contains_key("vanished-e1"),
        "the supervisor declares it vanished"
    );
    let left: Vec<String> = fake.containers().into_iter().map(|(id, _)| id).collect();
    assert!(left.contains(&live) && left.contains(&other), "{left:?}");
    assert!(!left.contains(&done) && !left.contains(&orphan), "{left:?}");
    let stops: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Stop)
        .map(|c| c.target)
        .collect();
    assert_eq!(stops, [orphan], "only the running orphan is stopped");

    // With cleanup off, a finished task's container is kept for inspection.
    let done2 = fake.add_container(
        &owner_of(&journal),
        "done",
        "done-e1",
        false,
        vec![],
        exited,
    );
    reconcile(
        &docker(&fake),
        &journal,
        WORKER,
        false,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert!(fake.containers().iter().any(|(id, _)| *id == done2));
}

#[tokio::test]
async fn reconcile_never_touches_what_another_berth_instance_made_for_the_same_worker_id() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_in(dir.path());
    let fake = FakeRuntime::new();
    // Another berth with this worker id and its own state_dir runs a task here.
    let theirs = fake.add_container(
        &Owner::new(WORKER, "another-instance"),
        "a",
        "a-e1",
        true,
        vec![],
        None,
    );
    // Containers of a berth before instance labels: ours only where our journal knows them.
    journal
        .claim("old-e1", &assignment("old", &["run"]), true)
        .unwrap();
    let unlabelled = Owner::new(WORKER, "");
    let known = fake.add_container(&unlabelled, "old", "old-e1", true, vec![], None);
    let stray = fake.add_container(&unlabelled, "stray", "stray-e1", true, vec![], None);
    let (_, found) = reconcile(
        &docker(&fake),
        &journal,
        WORKER,
        true,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert!(matches!(found.get("old-e1"), Some(Found::Container(id)) if *id == known));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        fake.count(Op::Stop) + fake.count(Op::Remove),
        0,
        "{:?}",
        fake.calls()
    );
    let running: Vec<String> = fake
        .containers()
        .into_iter()
        .filter(|(_, r)| *r)
        .map(|(id, _)| id)
        .collect();
    assert!(
        running.contains(&theirs) && running.contains(&stray),
        "{running:?}"
    );
    // The instance is this state_dir's own, and stays across restarts.
    let again = Journal::open(dir.path()).unwrap();
    assert_eq!(again.instance(), journal.instance());
    assert_ne!(
        journal_in(tempfile::tempdir().unwrap().path()).instance(),
        journal.instance()
    );
}

#[tokio::test]
async fn reconcile_touches_nothing_when_either_side_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_in(dir.path());
    let fake = FakeRuntime::new();
    let orphan = fake.add_container(
        &owner_of(&journal),
        "orphan",
        "orphan-e1",
        true,
        vec![],
        None,
    );
    // The engine cannot list: no list means no orphans.
    fake.fail_next(Op::ListManaged, api_error("container list"));
    let r = reconcile(
        &docker(&fake),
        &journal,
        WORKER,
        true,
        Duration::from_secs(1),
    )
    .await;
    assert!(matches!(r, Err(ReconcileError::Listing(_))), "{r:?}");
    // The journal holds a record it cannot read: nothing may be taken for an orphan.
    journal
        .claim("odd-e1", &assignment("odd", &["run"]), true)
        .unwrap();
    let db = rusqlite::Connection::open(journal.path()).unwrap();
    db.execute(
        "UPDATE executions SET state = 'exploded' WHERE execution_id = 'odd-e1'",
        [],
    )
    .unwrap();
    drop(db);
    let r = reconcile(
        &docker(&fake),
        &journal,
        WORKER,
        true,
        Duration::from_secs(1),
    )
    .await;
    assert!(matches!(r, Err(ReconcileError::Journal(_))), "{r:?}");
    assert_eq!(
        fake.count(Op::Stop) + fake.count(Op::Remove),
        0,
        "{:?}",
        fake.calls()
    );
    assert!(
        fake.containers()
            .iter()
            .any(|(id, running)| *id == orphan && *running)
    );
}

// ---- capture and resume ------------------------------------------------------------------

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_767_225_600 * SEC;

/// Two interleaved streams of short lines, stamped like the engine stamps them: each stream's
/// stamps grow, the streams are out of order by up to a millisecond, some entries share a
/// stamp, and there are pauses of seconds (so `since` matters on resume).
fn engine_log() -> impl Strategy<Value = Vec<LogEntry>> {
    proptest::collection::vec((any::<bool>(), 0u8..6, 0u8..10, 0i64..1_000_000), 1..60).prop_map(
        |items| {
            let mut now = T0;
            let mut last = [0i64; 2];
            items
                .into_iter()
                .enumerate()
                .map(|(i, (err, len, gap, jitter))| {
                    let slot = usize::from(err);
                    match gap {
                        0 => {}
                        1 => now += 2 * SEC,
                        _ => now += i64::from(gap) * 1_000,
                    }
                    let ts = if gap == 0 && last[slot] > 0 {
                        last[slot]
                    } else {
                        (now - jitter).max(last[slot] + 1)
                    };
                    last[slot] = ts;
                    let mut bytes = format!("{}{i}", if err { "e" } else { "o" }).into_bytes();
                    bytes.extend(std::iter::repeat_n(b'x', usize::from(len)));
                    bytes.push(b'\n');
                    LogEntry {
                        stream: if err { Stream::Stderr } else { Stream::Stdout },
                        ts,
                        bytes: bytes.into(),
                    }
                })
                .collect()
        },
    )
}

/// What the spool at `dir` holds for the execution, per stream.
fn spooled(dir: &Path) -> [Vec<u8>; 2] {
    let t = Spool::read_all(&Spool::path_for(dir, "cap-e1")).unwrap();
    let mut out = [Vec::new(), Vec::new()];
    for (stream, bytes) in t.pieces {
        match stream {
            Stream::Stdout => out[0].extend(bytes),
            Stream::Stderr => out[1].extend(bytes),
            Stream::System => {}
        }
    }
    out
}

fn open_spool(dir: &Path) -> berth::transcript::spool::SharedSpool {
    Arc::new(parking_lot::Mutex::new(
        Spool::open(dir, "cap-e1", 256 << 20, 1 << 20).unwrap(),
    ))
}

/// Captures the container's whole log, killed after each of `kills` entries — at once (what
/// it had not spooled yet is lost) or once its batch timer spooled what it read — and
/// restarted from the spool every time.
async fn capture_with_kills(
    fake: &FakeRuntime,
    id: &str,
    dir: &Path,
    kills: &[(usize, bool)],
    secrets: &[Vec<u8>],
) {
    for &(n, flushed) in kills {
        fake.cut_logs_after(Some(n));
        let spool = open_spool(dir);
        {
            let backend = docker(fake);
            let capture =
                berth::task::capture::capture(&backend, id, &spool, secrets.to_vec(), None);
            tokio::pin!(capture);
            tokio::select! {
                r = &mut capture => { r.unwrap(); }
                _ = fake.cut_reached() => if flushed {
                    // The stream hangs at the cut: the batch timer (20 ms) spools what was read.
                    let _ = tokio::time::timeout(Duration::from_millis(60), &mut capture).await;
                },
            }
        }
        // The process died: its spool handle is gone, the file is what is left.
        drop(spool);
    }
    fake.cut_logs_after(None);
    let spool = open_spool(dir);
    berth::task::capture::capture(&docker(fake), id, &spool, secrets.to_vec(), None)
        .await
        .unwrap();
}

/// Each stream of `log`, verbatim.
fn raw_streams(log: &[LogEntry]) -> [Vec<u8>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for e in log {
        out[usize::from(e.stream != Stream::Stdout)].extend_from_slice(&e.bytes);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn live_capture_cut_anywhere_hands_over_to_the_log_with_every_byte_once(
        log in engine_log(),
        cut in proptest::option::of(0usize..60),
        kills in proptest::collection::vec((0usize..40, any::<bool>()), 0..3),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fake = FakeRuntime::new();
            let id = fake.add_container(&Owner::new(WORKER, "capture"), "cap", "cap-e1", true, Vec::new(), None);
            // The attach connection drops after `cut` pieces (never, with `None`).
            fake.cut_attach_after(cut);
            let live = berth::backend::Live::attach(&docker(&fake), &id).await.unwrap();
            for e in &log {
                fake.print(&id, e.stream, &e.bytes);
            }
            fake.exit(&id, 0);
            let dir = tempfile::tempdir().unwrap();
            {
                let spool = open_spool(dir.path());
                let metrics = berth::metrics::Metrics::default();
                // Anchors off: this property is about the handover alone.
                let ops = docker(&fake);
                let live = berth::task::capture::Live { stream: live, ops: &ops, anchor_every: 0, metrics: &metrics };
                berth::task::capture::capture(&docker(&fake), &id, &spool, Vec::new(), Some(live))
                    .await
                    .unwrap();
            }
            // A complete live capture leaves nothing to read; one cut short was finished from
            // the log. Either way, restarts after it add nothing.
            let handed_over = fake.count(Op::Logs) > 0;
            assert_eq!(handed_over, cut.is_some_and(|n| n < log.len()), "handover when and only when the live stream was cut");
            capture_with_kills(&fake, &id, dir.path(), &kills, &[]).await;
            assert_eq!(spooled(dir.path()), raw_streams(&fake.log_of(&id)));
        });
    }

    #[test]
    fn live_capture_with_resume_anchors_killed_anywhere_resumes_with_every_byte_once(
        log in engine_log(),
        every in 1u64..600,
        kill_after in proptest::option::of(0usize..60),
        secret in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fake = FakeRuntime::new();
            let id = fake.add_container(&Owner::new(WORKER, "capture"), "cap", "cap-e1", true, Vec::new(), None);
            let secrets = if secret { vec![b"xx\no".to_vec(), b"xxxx".to_vec()] } else { vec![] };
            let live = berth::backend::Live::attach(&docker(&fake), &id).await.unwrap();
            // The task prints entry by entry and, like a frozen cgroup, not while paused.
            let printed = std::sync::atomic::AtomicUsize::new(0);
            let printer = async {
                for e in &log {
                    while fake.is_paused(&id) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    fake.print_entry(&id, e.clone());
                    printed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                fake.exit(&id, 0);
            };
            let metrics = berth::metrics::Metrics::default();
            let dir = tempfile::tempdir().unwrap();
            {
                let spool = open_spool(dir.path());
                let ops = docker(&fake);
                let live = berth::task::capture::Live { stream: live, ops: &ops, anchor_every: every, metrics: &metrics };
                let capture = berth::task::capture::capture(&ops, &id, &spool, secrets.clone(), Some(live));
                tokio::pin!(capture);
                tokio::pin!(printer);
                let mut printer_done = false;
                // SIGKILL once `kill_after` entries were printed: the capture is dropped.
                loop {
                    tokio::select! {
                        r = &mut capture => { r.unwrap(); break; }
                        _ = &mut printer, if !printer_done => printer_done = true,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {
                            if kill_after.is_some_and(|k| printed.load(std::sync::atomic::Ordering::SeqCst) >= k) {
                                break;
                            }
                        }
                    }
                }
                if !printer_done {
                    // The killed worker froze nothing for good: the task goes on.
                    fake.unpause(&id).await.unwrap();
                    printer.await;
                }
            }
            assert!(!fake.is_paused(&id), "a container left frozen");
            // The restarted worker resumes from the spool's resume point through the log.
            let spool = open_spool(dir.path());
            berth::task::capture::capture(&docker(&fake), &id, &spool, secrets.clone(), None).await.unwrap();
            drop(spool);
            let got = spooled(dir.path());
            let once = tempfile::tempdir().unwrap();
            capture_with_kills(&fake, &id, once.path(), &[], &secrets).await;
            let want = spooled(once.path());
            if !secret {
                prop_assert_eq!(&want, &raw_streams(&fake.log_of(&id)));
            }
            for slot in 0..2 {
                prop_assert_eq!(
                    String::from_utf8_lossy(&got[slot]),
                    String::from_utf8_lossy(&want[slot]),
                    "stream {} (anchor every {} bytes, killed after {:?} entries, {} anchors)",
                    slot, every, kill_after, metrics.render(&Default::default()).lines()
                        .find(|l| l.starts_with("berth_transcript_resume_anchors_total")).unwrap_or("")
                );
            }
            Ok(())
        })?;
    }

    #[test]
    fn a_capture_killed_anywhere_and_restarted_spools_every_byte_once(
        log in engine_log(),
        kills in proptest::collection::vec((0usize..40, any::<bool>()), 0..5),
        secret in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fake = FakeRuntime::new();
            let id = fake.add_container(&Owner::new(WORKER, "capture"), "cap", "cap-e1", false, log.clone(),
                Some(ExitStatus { code: 0, oom_killed: false }));
            // A secret that straddles entries makes the redactor hold bytes back, so resume
            // points fall inside held-back output.
            let secrets = if secret { vec![b"xx\no".to_vec(), b"xxxx".to_vec()] } else { vec![] };
            let once = tempfile::tempdir().unwrap();
            capture_with_kills(&fake, &id, once.path(), &[], &secrets).await;
            let want = spooled(once.path());
            let dir = tempfile::tempdir().unwrap();
            capture_with_kills(&fake, &id, dir.path(), &kills, &secrets).await;
            let got = spooled(dir.path());
            if !secret {
                // Without secrets, the uninterrupted capture is each stream verbatim.
                for (slot, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
                    let raw: Vec<u8> = log.iter().filter(|e| e.stream == stream)
                        .flat_map(|e| e.bytes.to_vec()).collect();
                    prop_assert_eq!(&want[slot], &raw, "{:?}", stream);
                }
            }
            for slot in 0..2 {
                prop_assert_eq!(
                    String::from_utf8_lossy(&got[slot]),
                    String::from_utf8_lossy(&want[slot]),
                    "stream {} after kills at {:?}", slot, kills
                );
            }
            Ok(())
        })?;
    }

    #[test]
    fn a_capture_dropped_anywhere_leaves_a_count_that_adds_up_to_the_whole_transcript(
        log in engine_log(),
        stop_after in 0usize..70,
        flushed in any::<bool>(),
        secret in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fake = FakeRuntime::new();
            let id = fake.add_container(&Owner::new(WORKER, "capture"), "cap", "cap-e1", false, log.clone(),
                Some(ExitStatus { code: 0, oom_killed: false }));
            let secrets = if secret { vec![b"xx\no".to_vec(), b"xxxx".to_vec()] } else { vec![] };
            let once = tempfile::tempdir().unwrap();
            capture_with_kills(&fake, &id, once.path(), &[], &secrets).await;
            let want: usize = spooled(once.path()).iter().map(Vec::len).sum();
            // Capture is dropped wherever its bound ran out (as `supervise` drops it), ...
            let dir = tempfile::tempdir().unwrap();
            let spool = open_spool(dir.path());
            fake.cut_logs_after(Some(stop_after));
            {
                let backend = docker(&fake);
                let capture = berth::task::capture::capture(&backend, &id, &spool, secrets.clone(), None);
                tokio::pin!(capture);
                tokio::select! {
                    r = &mut capture => r.unwrap(),
                    _ = fake.cut_reached() => if flushed {
                        let _ = tokio::time::timeout(Duration::from_millis(60), &mut capture).await;
                    },
                }
            }
            fake.cut_logs_after(None);
            // ... and the rest is counted from the spool's resume point, storing nothing.
            let from = berth::transcript::spool::lock(&spool).last_resume();
            let mut tally = berth::task::capture::Tally::new(from, secrets.clone());
            berth::task::capture::count_rest(&docker(&fake), &id, &mut tally).await.unwrap();
            let (counted, _) = tally.counted();
            let stored: usize = spooled(dir.path()).iter().map(Vec::len).sum();
            prop_assert_eq!(stored as u64 + counted, want as u64, "stored {} + counted {}", stored, counted);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn counting_a_log_that_stops_answering_keeps_what_it_counted_as_a_lower_bound() {
    let fake = FakeRuntime::new();
    let log: Vec<LogEntry> = (0..10)
        .map(|i| LogEntry {
            stream: Stream::Stdout,
            ts: T0 + i * SEC,
            bytes: format!("line {i}\n").into_bytes().into(),
        })
        .collect();
    let id = fake.add_container(
        &Owner::new(WORKER, "capture"),
        "cnt",
        "cnt-e1",
        false,
        log,
        Some(ExitStatus {
            code: 0,
            oom_killed: false,
        }),
    );
    // The log hangs after 4 entries: the caller's deadline ends the count.
    fake.cut_logs_after(Some(4));
    let mut tally = berth::task::capture::Tally::new(Default::default(), Vec::new());
    let backend = docker(&fake);
    let counting = berth::task::capture::count_rest(&backend, &id, &mut tally);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), counting)
            .await
            .is_err()
    );
    assert_eq!(tally.counted().0, 4 * "line 0\n".len() as u64);
    // Gone with its container, the log fails at once, with nothing more counted.
    fake.cut_logs_after(None);
    fake.fail_next(
        Op::Logs,
        RuntimeError::Api {
            op: "container logs",
            reason: "No such container (HTTP 404)".into(),
        },
    );
    fake.lose(&id);
    let mut tally = berth::task::capture::Tally::new(Default::default(), Vec::new());
    let r = berth::task::capture::count_rest(&docker(&fake), &id, &mut tally).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(tally.counted().0, 0);
}

// ---- shutdown -----------------------------------------------------------------------------

#[tokio::test]
async fn a_cancel_mode_shutdown_stops_running_tasks_and_delivers_their_results() {
    let mut h = Harness::start(2, "shutdown_mode: cancel\n").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("s1", &["run"])).await;
    let c = h.container_for("s1").await;
    h.fake.called(Op::Wait, 1).await;
    let fake = h.fake.clone();
    let sent = tokio::time::timeout(Duration::from_secs(60), h.stop())
        .await
        .unwrap();
    let r = sent
        .iter()
        .find(|m| matches!(m, WorkerMessage::TaskFailed { task_id, .. } if task_id == "s1"))
        .unwrap_or_else(|| panic!("no result during shutdown: {sent:?}"));
    assert_eq!(reason_of(r), Some(FailureReason::GracefulShutdown));
    assert!(
        fake.calls()
            .iter()
            .any(|k| k.op == Op::Stop && k.target == c)
    );
    assert!(fake.containers().is_empty());
}

#[tokio::test]
async fn a_preserve_mode_shutdown_leaves_running_tasks_alone() {
    let mut h = Harness::start(2, "shutdown_mode: preserve\n").await;
    h.fake.script_all(Script::runs());
    h.assign(assignment("p1", &["run"])).await;
    let c = h.container_for("p1").await;
    h.fake.called(Op::Wait, 1).await;
    let fake = h.fake.clone();
    let sent = tokio::time::timeout(Duration::from_secs(60), h.stop())
        .await
        .unwrap();
    assert!(
        !sent.iter().any(|m| matches!(
            m,
            WorkerMessage::TaskFailed { .. } | WorkerMessage::TaskCompleted { .. }
        )),
        "{sent:?}"
    );
    assert_eq!(fake.count(Op::Stop), 0);
    assert!(
        fake.containers()
            .iter()
            .any(|(id, running)| *id == c && *running)
    );
}
