//! Admission: whether an assignment is claimed, reclaimed, rejected (the server requeues it)
//! or failed, and the one vocabulary of rejection reasons for the wire and the metrics.

use crate::metrics::RejectKind;
use crate::protocol::{REJECT_AT_CAPACITY, TaskAssignment};

/// Wire text of a rejection while the worker shuts down (the Go worker's, PROTOCOL.md §8.2).
pub const REJECT_SHUTTING_DOWN: &str = "worker is shutting down";
/// Wire text of a rejection by a one-shot worker that took its task (PROTOCOL.md §8.2).
pub const REJECT_ONE_SHOT: &str = "one-shot worker has already accepted a task";
/// Wire text of a rejection while draining.
pub const REJECT_DRAINING: &str = "draining";

/// Why an assignment is refused; the server requeues it either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Every slot is taken.
    AtCapacity,
    /// Drained by the server or the operator.
    Draining,
    /// The worker is shutting down.
    ShuttingDown,
    /// A one-shot worker already took its one task.
    OneShotTaken,
    /// It does not fit now (memory, CPU, disk, the engine, state_dir); says what.
    InsufficientResources(String),
    /// This worker cannot honour what the task requires (a refused lifecycle-hook context,
    /// PROTOCOL.md §8.5); the text is the refusal.
    IncompatibleTask(String),
}

impl RejectReason {
    /// The `reason` sent in `task_rejected`: an oz/1 server knows only the capacity text, so
    /// a resource shortage is phrased as that for it.
    pub fn wire(&self, berth: bool) -> String {
        match self {
            RejectReason::AtCapacity => REJECT_AT_CAPACITY.to_string(),
            RejectReason::Draining => REJECT_DRAINING.to_string(),
            RejectReason::ShuttingDown => REJECT_SHUTTING_DOWN.to_string(),
            RejectReason::OneShotTaken => REJECT_ONE_SHOT.to_string(),
            RejectReason::InsufficientResources(why) if berth => {
                format!("insufficient resources: {why}")
            }
            RejectReason::InsufficientResources(_) => REJECT_AT_CAPACITY.to_string(),
            RejectReason::IncompatibleTask(why) => why.clone(),
        }
    }

    /// The `reason` label of `oz_worker_tasks_rejected_total`.
    pub fn kind(&self) -> RejectKind {
        match self {
            RejectReason::AtCapacity => RejectKind::AtCapacity,
            RejectReason::Draining => RejectKind::Draining,
            RejectReason::ShuttingDown => RejectKind::ShuttingDown,
            RejectReason::OneShotTaken => RejectKind::OneShotComplete,
            RejectReason::InsufficientResources(_) => RejectKind::InsufficientResources,
            RejectReason::IncompatibleTask(_) => RejectKind::IncompatibleTask,
        }
    }
}

/// Admission decision for one assignment (pure; see [`admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Already running here: claim again, start nothing.
    Reclaim,
    /// Refuse with this reason; the server requeues.
    Reject(RejectReason),
    /// The assignment cannot run at all.
    Fail(String),
    /// Claim and start.
    Accept,
}

/// What this worker already holds of an assignment's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Nothing of this run.
    Nothing,
    /// This very execution (a duplicate assignment). Another execution of the same run is
    /// `Nothing`: it runs as its own execution (PROTOCOL §7).
    ThisExecution,
}

/// Decides what to do with an assignment given the worker's state.
pub fn admit(
    a: &TaskAssignment,
    held: Held,
    running: usize,
    max: u32,
    stopping: bool,
    one_shot_taken: bool,
    draining: bool,
) -> Admission {
    if held == Held::ThisExecution {
        return Admission::Reclaim;
    }
    if stopping {
        return Admission::Reject(RejectReason::ShuttingDown);
    }
    if one_shot_taken {
        return Admission::Reject(RejectReason::OneShotTaken);
    }
    if draining {
        return Admission::Reject(RejectReason::Draining);
    }
    if max > 0 && running >= max as usize {
        return Admission::Reject(RejectReason::AtCapacity);
    }
    if a.task.is_none() {
        return Admission::Fail(
            "the task assignment has no task object; this is a control-plane bug, report it with the task id".into(),
        );
    }
    Admission::Accept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Task;

    fn a() -> TaskAssignment {
        TaskAssignment {
            task_id: "t".into(),
            task: Some(Task::default()),
            ..TaskAssignment::default()
        }
    }

    #[test]
    fn admission_rules_in_order() {
        // (active, running, max, stopping, draining) → decision
        let cases = [
            ((true, 5, 1, true, true), Admission::Reclaim),
            (
                (false, 0, 1, true, false),
                Admission::Reject(RejectReason::ShuttingDown),
            ),
            (
                (false, 0, 1, false, true),
                Admission::Reject(RejectReason::Draining),
            ),
            (
                (false, 1, 1, false, false),
                Admission::Reject(RejectReason::AtCapacity),
            ),
            (
                (false, 2, 1, false, false),
                Admission::Reject(RejectReason::AtCapacity),
            ),
            ((false, 0, 1, false, false), Admission::Accept),
            ((false, 1000, 0, false, false), Admission::Accept),
        ];
        for ((active, running, max, stopping, draining), want) in cases {
            let held = if active {
                Held::ThisExecution
            } else {
                Held::Nothing
            };
            assert_eq!(
                admit(&a(), held, running, max, stopping, false, draining),
                want
            );
        }
        // A one-shot worker that took its task: after a shutdown, before anything else.
        assert_eq!(
            admit(&a(), Held::Nothing, 0, 1, false, true, true),
            Admission::Reject(RejectReason::OneShotTaken)
        );
        assert_eq!(
            admit(&a(), Held::Nothing, 0, 1, true, true, false),
            Admission::Reject(RejectReason::ShuttingDown)
        );
        let no_task = TaskAssignment { task: None, ..a() };
        assert!(matches!(
            admit(&no_task, Held::Nothing, 0, 1, false, false, false),
            Admission::Fail(_)
        ));
        assert_eq!(REJECT_AT_CAPACITY, "worker at maximum concurrency");
    }

    #[test]
    fn each_rejection_has_one_wire_text_and_one_metric_label() {
        let short = RejectReason::InsufficientResources("memory: 1 GiB free".into());
        assert_eq!(
            short.wire(true),
            "insufficient resources: memory: 1 GiB free"
        );
        assert_eq!(
            short.wire(false),
            REJECT_AT_CAPACITY,
            "oz/1 knows only the capacity text"
        );
        assert_eq!(short.kind(), RejectKind::InsufficientResources);
        for (r, text, kind) in [
            (
                RejectReason::AtCapacity,
                REJECT_AT_CAPACITY,
                RejectKind::AtCapacity,
            ),
            (RejectReason::Draining, "draining", RejectKind::Draining),
            (
                RejectReason::ShuttingDown,
                "worker is shutting down",
                RejectKind::ShuttingDown,
            ),
            (
                RejectReason::OneShotTaken,
                "one-shot worker has already accepted a task",
                RejectKind::OneShotComplete,
            ),
            (
                RejectReason::IncompatibleTask("oz_lifecycle_hooks.required must be true".into()),
                "oz_lifecycle_hooks.required must be true",
                RejectKind::IncompatibleTask,
            ),
        ] {
            assert_eq!(r.wire(true), text);
            assert_eq!(r.wire(false), text);
            assert_eq!(r.kind(), kind);
        }
    }
}
