//! One task execution: prepare (image, sidecars) → create → start → wait → report → cleanup.
//!
//! The run returns exactly one terminal message; turning an [`Outcome`] into that message is a
//! pure function ([`terminal_message`]) so every classification rule is unit-tested.

pub mod capture;
pub mod engine_stop;
mod logs;
mod outcome;
mod phases;
pub mod provision;
mod run;
mod supervise;
pub mod usage;

pub use outcome::{Outcome, RunEnd, terminal_message};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use outcome::summary_line;
use run::Run;
use supervise::{Supervised, cleanup};

use crate::backend::Backend;
use crate::config::PullPolicy;
use crate::control::shipper::Outbound;
use crate::failure::FailureReason;
use crate::journal::Journal;
use crate::protocol::{Stream, TaskAssignment, TerminalExt, WorkerMessage};
use crate::secret::Secret;
use crate::spec::AgentSettings;
use crate::transcript;
use crate::transcript::spool::{SharedSpool, append_retrying, lock};

/// Operator settings every task run needs.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    pub worker_id: String,
    /// Agent argv settings.
    pub agent: AgentSettings,
    /// Image when the assignment names none.
    pub default_image: String,
    pub pull_policy: PullPolicy,
    pub operator_env: Vec<(String, String)>,
    /// Operator binds.
    pub operator_volumes: Vec<String>,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace_period: Duration,
    /// Remove containers after they exit.
    pub cleanup: bool,
    /// The API key (redacted from transcripts).
    pub api_key: Secret,
    /// Operator literals redacted from transcripts.
    pub redact: Vec<Secret>,
    /// What tasks may run and do.
    pub policy: crate::spec::policy::Policy,
    /// Named environments.
    pub environments: std::collections::BTreeMap<String, crate::spec::environment::Environment>,
    /// Environment for tasks that name none.
    pub default_environment: Option<String>,
    /// Live output bytes between transcript resume anchors (0: never).
    pub anchor_every: u64,
    /// How long capture may drain the engine's log after the container stopped, besides
    /// `full_disk_patience`.
    pub capture_drain: Duration,
    /// Task-log export (PROTOCOL §8.3).
    pub task_logs: crate::config::TaskLogSettings,
}

/// Why a task was asked to stop before it finished on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `task_cancellation` from the control plane.
    User,
    /// The worker is shutting down.
    Shutdown,
    /// The task's time limit expired.
    Timeout,
}

/// The handle through which the supervisor stops a running task.
#[derive(Debug, Default)]
pub struct TaskControl {
    token: CancellationToken,
    reason: OnceLock<StopReason>,
    /// Resource use so far, folded from the samples taken while it runs.
    usage: parking_lot::Mutex<crate::protocol::Usage>,
}

impl TaskControl {
    /// Asks the task to stop; the first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Folds one statistics sample into the task's usage.
    pub fn record_usage(&self, s: &crate::backend::UsageSample) {
        self.usage.lock().fold(s);
    }

    /// The task's usage so far.
    pub fn usage(&self) -> crate::protocol::Usage {
        *self.usage.lock()
    }

    /// Why the task was asked to stop, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }
}

/// What every task run shares.
pub struct TaskEnv {
    /// The engine.
    pub backend: Arc<dyn Backend>,
    /// Operator settings; replaced on reload (a task keeps the settings it started with).
    pub settings: parking_lot::RwLock<Arc<TaskSettings>>,
    /// Durable state.
    pub journal: Arc<Journal>,
    /// Queue for `task_started` (berth/1).
    pub outbox: mpsc::Sender<Outbound>,
    /// Fires when the worker shuts down in `preserve` mode.
    pub detach: CancellationToken,
    /// The control plane's environments API, when configured.
    pub catalog: Option<Arc<crate::control::catalog::Catalog>>,
    /// The engine's health (told when a call fails).
    pub engine: Arc<crate::backend::health::Engine>,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The way out for tasks whose egress is `allowlist` (opened on first use).
    pub gate: Option<Arc<crate::egress::Gate>>,
    /// Poster of setup-phase timings (PROTOCOL §7); `None` when it could not be built.
    pub setup_events: Option<Arc<crate::control::setup_events::SetupEvents>>,
    /// The HTTP client of task-log export (PROTOCOL §8.3); `None` when it could not be built.
    pub task_logs: Option<reqwest::Client>,
}

impl TaskEnv {
    /// The current operator settings.
    pub fn settings(&self) -> Arc<TaskSettings> {
        self.settings.read().clone()
    }

    /// Replaces the operator settings (reload); tasks already running keep theirs.
    pub fn set_settings(&self, s: TaskSettings) {
        *self.settings.write() = Arc::new(s);
    }

    /// Whose the sandboxes this worker creates are: its worker id and instance.
    pub fn owner(&self) -> crate::spec::owner::Owner {
        crate::spec::owner::Owner::new(&self.settings().worker_id, self.journal.instance())
    }
}

/// One execution's identity and transcript.
pub struct Execution {
    pub assignment: TaskAssignment,
    pub execution_id: String,
    /// berth/1 negotiated when it was claimed.
    pub berth: bool,
    pub spool: SharedSpool,
    /// Claim time (for `duration_ms`).
    pub claimed_at: chrono::DateTime<chrono::Utc>,
}

/// The transcript line announcing a stop and its grace period.
pub fn stopping_line(reason: Option<StopReason>, grace: Duration) -> String {
    let why = match reason {
        Some(StopReason::User) => "cancelled",
        Some(StopReason::Shutdown) => "the worker is shutting down",
        Some(StopReason::Timeout) => "time limit reached",
        None => "stop requested",
    };
    format!(
        "stopping ({why}): SIGTERM, SIGKILL in {}",
        humantime::format_duration(grace)
    )
}

/// Writes one `system` line into the transcript.
pub async fn system_line(spool: &SharedSpool, text: &str) {
    let resume = lock(spool).last_resume();
    let line = format!("[berth] {text}\n");
    append_retrying(spool, Stream::System, line.as_bytes(), resume).await;
}

fn secrets_of(settings: &TaskSettings, a: &TaskAssignment) -> Vec<Vec<u8>> {
    let values: Vec<&str> = a
        .env_vars
        .iter()
        .flatten()
        .map(|(_, v)| v.as_str())
        .collect();
    let op: Vec<&str> = settings.redact.iter().map(|s| s.expose()).collect();
    transcript::secrets(values, settings.api_key.expose(), op)
}

/// Runs one execution to its terminal message. Never leaves its container running unless
/// the worker detaches (`preserve` shutdown).
pub async fn run(env: Arc<TaskEnv>, exec: Execution, control: Arc<TaskControl>) -> RunEnd {
    let span =
        info_span!("task", task_id = %exec.assignment.task_id, execution_id = %exec.execution_id);
    async move {
        // Task env values never reach the log, whatever its level (bollard's debug output
        // carries the container body).
        let mut run = Run::new(&env, &exec, &control).with_setup_events();
        run.logs = logs::start(&run, 0);
        let _secrets = crate::transcript::redaction::register(run.secrets());
        let outcome = phases::execute(&run).await;
        let task_logs = run.logs.take();
        finish(&env, &exec, &control, outcome, task_logs).await
    }
    .instrument(span)
    .await
}

/// Continues an execution found in the journal after a restart: re-attaches to its container
/// (running or exited while berth was down) and finishes it.
pub async fn resume(
    env: Arc<TaskEnv>,
    exec: Execution,
    container_id: String,
    control: Arc<TaskControl>,
) -> RunEnd {
    let span =
        info_span!("task", task_id = %exec.assignment.task_id, execution_id = %exec.execution_id);
    async move {
        let mut run = Run::new(&env, &exec, &control);
        // Task-log export resumes where the previous worker recorded it got to.
        let exported = env.journal.exported(&exec.execution_id).unwrap_or(0);
        run.logs = logs::start(&run, exported);
        logs::name_container(&run, &container_id).await;
        let _secrets = crate::transcript::redaction::register(run.secrets());
        info!(container = %container_id, "re-attaching to the task's container after a restart");
        // A worker killed while it held the container frozen for a resume anchor left it
        // paused: thaw it, or the task would never go on.
        if let Some(live) = env.backend.live() {
            capture::thaw(live, &container_id).await;
        }
        let timeout = run.timeout().map(|t| {
            let elapsed = (chrono::Utc::now() - exec.claimed_at)
                .to_std()
                .unwrap_or_default();
            t.saturating_sub(elapsed)
        });
        let outcome = supervise::supervise(&run, &container_id, timeout, None).await;
        let task_logs = run.logs.take();
        if matches!(outcome, Supervised::Detached) {
            if let Some(l) = task_logs {
                l.detach(crate::tasklogs::exporter::FLUSH_BOUND).await;
            }
            return RunEnd::Detached;
        }
        let outcome = cleanup(&run, &container_id, outcome).await;
        finish(&env, &exec, &control, outcome, task_logs).await
    }
    .instrument(span)
    .await
}

/// Ends an execution that cannot run (e.g. its container vanished while berth was down).
pub async fn fail(
    env: &TaskEnv,
    exec: &Execution,
    control: &TaskControl,
    reason: FailureReason,
    detail: String,
) -> RunEnd {
    finish(
        env,
        exec,
        control,
        Some(Outcome::Failed { reason, detail }),
        None,
    )
    .await
}

/// Ends an execution whose container was still held for provisioning when the previous worker
/// stopped: the steps cannot be resumed half-way (a setup command may not be repeatable), so
/// the container is removed before the task's command ever ran.
pub async fn abandon(
    env: &TaskEnv,
    exec: &Execution,
    container_id: &str,
    control: &TaskControl,
) -> RunEnd {
    let outcome = Outcome::Failure(crate::failure::Failure {
        reason: FailureReason::WorkspaceSetup,
        detail: "berth restarted while the task's environment was being provisioned; the container was removed before the task's command ran. Resubmit the task".into(),
        exit_code: None,
        details: None,
    });
    let run = Run::new(env, exec, control);
    let outcome = cleanup(&run, container_id, Supervised::Done(outcome)).await;
    finish(env, exec, control, outcome, None).await
}

/// Records the end: exit line, final transcript marker, the task logs flushed (bounded),
/// terminal message in the journal.
async fn finish(
    env: &TaskEnv,
    exec: &Execution,
    control: &TaskControl,
    outcome: Option<Outcome>,
    task_logs: Option<crate::tasklogs::exporter::Handle>,
) -> RunEnd {
    let bound = crate::tasklogs::exporter::FLUSH_BOUND;
    let Some(outcome) = outcome else {
        if let Some(l) = task_logs {
            l.detach(bound).await;
        }
        return RunEnd::Detached;
    };
    let task_id = &exec.assignment.task_id;
    let mut msg = terminal_message(task_id, &outcome, control.reason());
    system_line(&exec.spool, &summary_line(&outcome, &msg)).await;
    // What it used is the transcript's last word (sampled while it ran).
    let usage = Some(control.usage()).filter(|u| u.samples > 0);
    if let Some(u) = &usage {
        system_line(&exec.spool, &u.summary()).await;
        env.metrics.usage(u);
    }
    let (len, loss) = {
        let mut sp = lock(&exec.spool);
        if let Err(e) = sp.finish() {
            error!(error = %e, "cannot finish the transcript");
        }
        (sp.state().len, sp.loss())
    };
    if let Some(note) = loss.note() {
        error!(
            lost_bytes = loss.bytes,
            at_least = loss.at_least,
            "the transcript is incomplete: {note}"
        );
        // berth/1 only: an oz/1 server gets no transcript, and its messages are fixed text.
        if exec.berth
            && let WorkerMessage::TaskCompleted { message, .. }
            | WorkerMessage::TaskFailed { message, .. } = &mut msg
        {
            message.push_str(&format!(" ({note})"));
        }
    }
    let lost = loss.bytes;
    let exit_code = outcome.exit_code();
    let ext = TerminalExt {
        execution_id: exec.execution_id.clone(),
        message_id: uuid::Uuid::new_v4().to_string(),
        exit_code,
        duration_ms: (chrono::Utc::now() - exec.claimed_at)
            .num_milliseconds()
            .max(0) as u64,
        transcript_bytes: len,
        transcript_lost_bytes: lost,
        usage: usage.map(Box::new),
        failure_details: match &outcome {
            Outcome::Failure(f) => f.details.clone(),
            _ => None,
        },
        assigned: exec
            .assignment
            .execution_id
            .as_deref()
            .is_some_and(|e| !e.is_empty()),
    };
    match &mut msg {
        WorkerMessage::TaskCompleted { ext: e, .. } | WorkerMessage::TaskFailed { ext: e, .. } => {
            *e = Some(ext)
        }
        _ => {}
    }
    // PROTOCOL §8.3: every exported record precedes the terminal message, which waits for
    // them at most `bound`.
    if let Some(l) = task_logs {
        l.finish(bound).await;
    }
    // The durable outbox: once this is written the result cannot be lost. The cleanup grace
    // (debug archives, PROTOCOL §8.4) starts in the same write, before the message is queued.
    let idle_minutes = exec
        .assignment
        .task
        .as_ref()
        .and_then(|t| t.agent_config_snapshot.as_ref())
        .and_then(|s| s.idle_timeout_minutes);
    let grace = crate::archive::grace::grace(
        idle_minutes,
        env.settings().agent.idle_on_complete.as_deref(),
    );
    if let Err(e) = env
        .journal
        .finish_with_grace(&exec.execution_id, &msg, grace)
    {
        error!(error = %e, "cannot record the task result in the journal");
    }
    RunEnd::Finished(Box::new(msg))
}

/// Sleeps for `t`, or forever when there is no limit.
async fn sleep_or_forever(t: Option<Duration>) {
    match t {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stopping_line_names_the_reason_and_the_grace_period() {
        let g = Duration::from_secs(10);
        assert_eq!(
            stopping_line(Some(StopReason::User), g),
            "stopping (cancelled): SIGTERM, SIGKILL in 10s"
        );
        assert_eq!(
            stopping_line(Some(StopReason::Timeout), Duration::from_millis(2500)),
            "stopping (time limit reached): SIGTERM, SIGKILL in 2s 500ms"
        );
        assert!(stopping_line(Some(StopReason::Shutdown), g).contains("shutting down"));
        assert!(stopping_line(None, g).starts_with("stopping (stop requested)"));
    }

    #[test]
    fn first_stop_reason_wins() {
        let c = TaskControl::default();
        assert_eq!(c.reason(), None);
        c.stop(StopReason::User);
        c.stop(StopReason::Shutdown);
        assert_eq!(c.reason(), Some(StopReason::User));
        assert!(c.token.is_cancelled());
    }
}
