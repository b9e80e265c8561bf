//! `--one-shot`: run exactly one task, then stop with its status (PROTOCOL §7).

use std::sync::{Arc, OnceLock};

use crate::protocol::WorkerMessage;

/// The process exit status for a task's terminal message: 0 when it succeeded, the
/// container's exit code when it ran and exited non-zero (1–255), else 1 (a cancelled task
/// included: oz/1 reports it as completed with `task_state: CANCELLED`).
pub fn exit_status(terminal: &WorkerMessage) -> u8 {
    match terminal {
        WorkerMessage::TaskCompleted {
            task_state: None, ..
        } => 0,
        WorkerMessage::TaskCompleted { .. } => 1,
        WorkerMessage::TaskFailed { exit_code, ext, .. } => exit_code
            .or_else(|| ext.as_ref().and_then(|e| e.exit_code))
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(1),
        _ => 1,
    }
}

/// Where a one-shot worker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneShot {
    /// Not a one-shot worker.
    Off,
    /// Waiting for its task.
    Waiting,
    /// Its task is this execution; `status` once its result is known.
    Taken {
        /// The execution it runs.
        execution_id: String,
        /// Exit status for the result, once there is one.
        status: Option<u8>,
    },
}

impl OneShot {
    /// The state of a worker started with (`true`) or without `--one-shot`.
    pub fn new(on: bool) -> Self {
        if on { OneShot::Waiting } else { OneShot::Off }
    }

    /// Whether new work must be refused: the one task is taken.
    pub fn refuses(&self) -> bool {
        matches!(self, OneShot::Taken { .. })
    }

    /// A task was claimed as `execution_id`.
    pub fn claimed(&mut self, execution_id: &str) {
        if *self == OneShot::Waiting {
            *self = OneShot::Taken {
                execution_id: execution_id.to_string(),
                status: None,
            };
        }
    }

    /// An execution ended with `terminal`.
    pub fn finished(&mut self, execution_id: &str, terminal: &WorkerMessage) {
        if let OneShot::Taken {
            execution_id: mine,
            status,
        } = self
            && mine == execution_id
        {
            *status = Some(exit_status(terminal));
        }
    }

    /// An execution's result was delivered: the status to stop with, when it was the one.
    pub fn delivered(&self, execution_id: &str) -> Option<u8> {
        match self {
            OneShot::Taken {
                execution_id: mine,
                status: Some(s),
            } if mine == execution_id => Some(*s),
            _ => None,
        }
    }
}

/// The exit status a one-shot run ended with, set once.
pub type Outcome = Arc<OnceLock<u8>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureReason;

    fn failed(exit_code: Option<i64>) -> WorkerMessage {
        WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            failure_reason: Some(FailureReason::Unknown),
            exit_code,
            ext: None,
        }
    }

    #[test]
    fn the_exit_status_follows_the_result() {
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: "Task completed successfully".into(),
            task_state: None,
            ext: None,
        };
        assert_eq!(exit_status(&ok), 0);
        let cancelled = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: "Task cancelled".into(),
            task_state: Some("CANCELLED".into()),
            ext: None,
        };
        assert_eq!(exit_status(&cancelled), 1);
        for (code, want) in [
            (Some(3), 3),
            (Some(255), 255),
            (Some(0), 1),
            (Some(256), 1),
            (Some(-1), 1),
            (None, 1),
        ] {
            assert_eq!(exit_status(&failed(code)), want, "{code:?}");
        }
    }

    #[test]
    fn only_the_first_claim_is_the_one_and_only_its_delivery_stops() {
        let mut s = OneShot::new(true);
        assert!(!s.refuses());
        s.claimed("e1");
        assert!(s.refuses());
        s.claimed("e2");
        s.finished("e2", &failed(Some(9)));
        assert_eq!(s.delivered("e1"), None, "no result yet");
        s.finished("e1", &failed(Some(4)));
        assert_eq!(s.delivered("e2"), None);
        assert_eq!(s.delivered("e1"), Some(4));
        let mut off = OneShot::new(false);
        off.claimed("e1");
        assert!(!off.refuses());
        assert_eq!(off.delivered("e1"), None);
    }
}
