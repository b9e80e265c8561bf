//! How an execution ended, and the one terminal message that says so: a pure function
//! ([`terminal_message`]) so every classification rule is unit-tested.

use super::StopReason;
use crate::backend::ExitStatus;
use crate::failure::FailureReason;
use crate::protocol::{
    MSG_CANCELLED, MSG_COMPLETED, MSG_INTERRUPTED, MSG_TIMEOUT, TASK_STATE_CANCELLED, WorkerMessage,
};

/// How an execution ended, before it is phrased for the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The container ran and exited.
    Exited(ExitStatus),
    /// A phase failed.
    Failed {
        /// The phase's reason.
        reason: FailureReason,
        /// What went wrong, for a user.
        detail: String,
    },
    /// Stopped before the container ran.
    Interrupted,
    /// A failure with an exit status or a detail of its own (a provisioning step, a container
    /// lost to an engine outage).
    Failure(crate::failure::Failure),
}

fn failed(
    task_id: &str,
    message: String,
    reason: FailureReason,
    code: Option<i64>,
) -> WorkerMessage {
    WorkerMessage::TaskFailed {
        task_id: task_id.to_string(),
        message,
        task_state: None,
        failure_reason: Some(reason),
        exit_code: code,
        ext: None,
    }
}

fn stopped(task_id: &str, why: StopReason, code: Option<i64>) -> WorkerMessage {
    match why {
        StopReason::User => WorkerMessage::TaskCompleted {
            task_id: task_id.to_string(),
            message: MSG_CANCELLED.to_string(),
            task_state: Some(TASK_STATE_CANCELLED.to_string()),
            ext: None,
        },
        StopReason::Shutdown => failed(
            task_id,
            MSG_INTERRUPTED.to_string(),
            FailureReason::GracefulShutdown,
            code,
        ),
        StopReason::Timeout => failed(
            task_id,
            MSG_TIMEOUT.to_string(),
            FailureReason::TaskTimeout,
            code,
        ),
    }
}

/// The one terminal message for an outcome (PROTOCOL.md §3 classification order: time limit,
/// then cancellation whatever the phase, then the phase's own reason).
pub fn terminal_message(
    task_id: &str,
    outcome: &Outcome,
    stop: Option<StopReason>,
) -> WorkerMessage {
    match (outcome, stop) {
        // Exit 0 is success even when a stop was requested.
        (Outcome::Exited(st), _) if st.code == 0 => WorkerMessage::TaskCompleted {
            task_id: task_id.to_string(),
            message: MSG_COMPLETED.to_string(),
            task_state: None,
            ext: None,
        },
        (Outcome::Exited(st), Some(why)) => stopped(task_id, why, Some(st.code)),
        (Outcome::Exited(st), None) if st.oom_killed => failed(
            task_id,
            format!(
                "Failed to execute task: container was killed by the out-of-memory killer (exit status {}); give the task more memory (instance_shape.memory_gb) or make it use less",
                st.code
            ),
            FailureReason::ContainerOom,
            Some(st.code),
        ),
        (Outcome::Exited(st), None) => failed(
            task_id,
            format!(
                "Failed to execute task: container exited with non-zero status: {}",
                st.code
            ),
            FailureReason::ContainerExit,
            Some(st.code),
        ),
        (Outcome::Failed { .. } | Outcome::Interrupted | Outcome::Failure(_), Some(why)) => {
            stopped(task_id, why, None)
        }
        (Outcome::Failure(f), None) => failed(
            task_id,
            format!("Failed to execute task: {}", f.detail),
            f.reason,
            f.exit_code,
        ),
        (Outcome::Failed { reason, detail }, None) => failed(
            task_id,
            format!("Failed to execute task: {detail}"),
            *reason,
            None,
        ),
        // Interrupted without a reason cannot happen; report it honestly rather than guess.
        (Outcome::Interrupted, None) => failed(
            task_id,
            "Failed to execute task: the task was interrupted before its container started".into(),
            FailureReason::TaskCancelled,
            None,
        ),
    }
}

impl Outcome {
    /// The exit code the terminal message carries, where the outcome has one.
    pub fn exit_code(&self) -> Option<i64> {
        match self {
            Outcome::Exited(st) => Some(st.code),
            Outcome::Failure(f) => f.exit_code,
            _ => None,
        }
    }
}

/// The transcript's closing line for an outcome and its terminal message.
pub fn summary_line(outcome: &Outcome, msg: &WorkerMessage) -> String {
    match (outcome, msg) {
        (Outcome::Exited(st), _) => format!(
            "container exited with status {}{}",
            st.code,
            if st.oom_killed { " (OOM killed)" } else { "" }
        ),
        (_, WorkerMessage::TaskFailed { message, .. }) => message.clone(),
        (_, m) => m.kind().to_string(),
    }
}

/// How a task run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The terminal message, already recorded in the journal.
    Finished(Box<WorkerMessage>),
    /// The worker is shutting down in `preserve` mode: the container keeps running and a
    /// restarted worker re-attaches to it.
    Detached,
}

/// A phase's failure with its reason, from the detail.
pub(super) fn phase(reason: FailureReason) -> impl Fn(String) -> Outcome {
    move |detail| Outcome::Failed { reason, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i64, oom: bool) -> Outcome {
        Outcome::Exited(ExitStatus {
            code,
            oom_killed: oom,
        })
    }

    fn reason(m: &WorkerMessage) -> Option<FailureReason> {
        match m {
            WorkerMessage::TaskFailed { failure_reason, .. } => *failure_reason,
            _ => None,
        }
    }

    #[test]
    fn exit_zero_is_success_even_after_a_stop_request() {
        for stop in [
            None,
            Some(StopReason::User),
            Some(StopReason::Shutdown),
            Some(StopReason::Timeout),
        ] {
            let m = terminal_message("t", &exited(0, false), stop);
            assert_eq!(
                m,
                WorkerMessage::TaskCompleted {
                    task_id: "t".into(),
                    message: MSG_COMPLETED.into(),
                    task_state: None,
                    ext: None,
                },
                "{stop:?}"
            );
        }
        // OOMKilled with exit 0 (a child was killed) is still success.
        assert_eq!(
            terminal_message("t", &exited(0, true), None).kind(),
            "task_completed"
        );
    }

    #[test]
    fn non_zero_exit_and_oom() {
        let m = terminal_message("t", &exited(3, false), None);
        assert_eq!(reason(&m), Some(FailureReason::ContainerExit));
        assert!(
            matches!(&m, WorkerMessage::TaskFailed { message, exit_code: Some(3), .. }
            if message == "Failed to execute task: container exited with non-zero status: 3")
        );
        let m = terminal_message("t", &exited(137, true), None);
        assert_eq!(reason(&m), Some(FailureReason::ContainerOom));
    }

    #[test]
    fn stops_are_classified_before_phase_reasons() {
        let pull = Outcome::Failed {
            reason: FailureReason::ImagePull,
            detail: "x".into(),
        };
        for outcome in [
            exited(143, false),
            exited(137, true),
            pull,
            Outcome::Interrupted,
        ] {
            let user = terminal_message("t", &outcome, Some(StopReason::User));
            assert!(
                matches!(&user, WorkerMessage::TaskCompleted { message, task_state: Some(s), .. }
                if message == MSG_CANCELLED && s == "CANCELLED"),
                "{outcome:?}"
            );
            let down = terminal_message("t", &outcome, Some(StopReason::Shutdown));
            assert_eq!(
                reason(&down),
                Some(FailureReason::GracefulShutdown),
                "{outcome:?}"
            );
            assert!(
                matches!(&down, WorkerMessage::TaskFailed { message, .. } if message == MSG_INTERRUPTED)
            );
            let late = terminal_message("t", &outcome, Some(StopReason::Timeout));
            assert_eq!(
                reason(&late),
                Some(FailureReason::TaskTimeout),
                "{outcome:?}"
            );
            assert!(
                matches!(&late, WorkerMessage::TaskFailed { message, .. } if message == MSG_TIMEOUT)
            );
        }
    }

    #[test]
    fn phase_failures_keep_their_reason_and_say_what_went_wrong() {
        for r in [
            FailureReason::ImagePull,
            FailureReason::SidecarPrep,
            FailureReason::ContainerCreate,
            FailureReason::ContainerStart,
            FailureReason::ContainerWait,
            FailureReason::InvalidImage,
        ] {
            let m = terminal_message(
                "t",
                &Outcome::Failed {
                    reason: r,
                    detail: "the detail".into(),
                },
                None,
            );
            assert_eq!(reason(&m), Some(r));
            assert!(
                matches!(&m, WorkerMessage::TaskFailed { message, exit_code: None, .. }
                if message == "Failed to execute task: the detail")
            );
        }
    }

    #[test]
    fn the_summary_line_says_how_the_container_ended_or_why_the_task_failed() {
        let done = terminal_message("t", &exited(0, false), None);
        assert_eq!(
            summary_line(&exited(0, false), &done),
            "container exited with status 0"
        );
        let oom = exited(137, true);
        let m = terminal_message("t", &oom, None);
        assert_eq!(
            summary_line(&oom, &m),
            "container exited with status 137 (OOM killed)"
        );
        let failed = phase(FailureReason::ImagePull)("no such image".into());
        let m = terminal_message("t", &failed, None);
        assert_eq!(
            summary_line(&failed, &m),
            "Failed to execute task: no such image"
        );
        let m = terminal_message("t", &Outcome::Interrupted, Some(StopReason::User));
        assert_eq!(summary_line(&Outcome::Interrupted, &m), "task_completed");
        assert_eq!(oom.exit_code(), Some(137));
        assert_eq!(failed.exit_code(), None);
    }
}
