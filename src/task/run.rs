//! One execution's run context: what every phase of it reads, built once per run instead of
//! handed to each phase as six or seven parameters.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Execution, TaskControl, TaskEnv, TaskSettings};
use crate::control::setup_events::{RunEvents, Timed};
use crate::tasklogs::exporter::Handle as TaskLogs;

/// One execution's run: the worker's task environment, the execution, its controls, and the
/// operator settings it started with (a reload does not change a running task).
pub(super) struct Run<'a> {
    pub env: &'a TaskEnv,
    pub exec: &'a Execution,
    pub control: &'a TaskControl,
    pub settings: Arc<TaskSettings>,
    /// Poster of this run's setup-phase timings (PROTOCOL §7), when the run reports them.
    events: Option<RunEvents>,
    /// This execution's task-log exporter (PROTOCOL §8.3), when it exports.
    pub logs: Option<TaskLogs>,
}

/// Where a setup phase's end is reported: the control plane's events endpoint and the
/// task-log export, each when the run has it.
#[derive(Clone, Copy)]
pub(super) struct SetupSink<'a> {
    events: Option<&'a RunEvents>,
    logs: Option<&'a TaskLogs>,
}

impl SetupSink<'_> {
    /// Reports one phase to both (never waits).
    pub fn post(&self, t: Timed) {
        if let Some(l) = self.logs {
            l.setup_phase(&t);
        }
        if let Some(e) = self.events {
            e.post(t);
        }
    }
}

impl<'a> Run<'a> {
    /// A run with the current operator settings and no setup events (a resumed run is past
    /// its setup).
    pub fn new(env: &'a TaskEnv, exec: &'a Execution, control: &'a TaskControl) -> Self {
        Run {
            env,
            exec,
            control,
            settings: env.settings(),
            events: None,
            logs: None,
        }
    }

    /// The same run, posting its setup-phase timings where the worker can.
    pub fn with_setup_events(mut self) -> Self {
        let a = &self.exec.assignment;
        self.events = self.env.setup_events.as_ref().and_then(|p| {
            p.for_run(
                &self.settings.agent.server_root_url,
                &a.task_id,
                a.env_vars.as_ref(),
            )
        });
        self
    }

    /// Fires when the task is asked to stop.
    pub fn token(&self) -> &CancellationToken {
        &self.control.token
    }

    /// The task was asked to stop, or the worker detached from it.
    pub fn stopped(&self) -> bool {
        self.control.token.is_cancelled() || self.env.detach.is_cancelled()
    }

    /// Where setup phases are reported.
    pub fn events(&self) -> SetupSink<'_> {
        SetupSink {
            events: self.events.as_ref(),
            logs: self.logs.as_ref(),
        }
    }

    /// The task's time limit (policy and assignment), from its claim.
    pub fn timeout(&self) -> Option<Duration> {
        self.settings
            .policy
            .timeout(self.exec.assignment.timeout_secs, self.exec.berth)
    }

    /// The byte strings redacted from this task's transcript and from the log.
    pub fn secrets(&self) -> Vec<Vec<u8>> {
        super::secrets_of(&self.settings, &self.exec.assignment)
    }
}
