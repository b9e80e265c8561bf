//! Test fixtures shared by the state machine's unit tests: a small submit request, and readers
//! of the frames the state machine returns.

use chrono::Utc;

use super::tables::State;
use crate::devserver::task::SubmitRequest;
use crate::devserver::workers::Outgoing;
use crate::protocol::{ServerMessage, WorkerMessage};

pub(super) fn req() -> SubmitRequest {
    SubmitRequest {
        image: Some("busybox".into()),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    }
}

pub(super) fn assigned_ids(out: &[Outgoing]) -> Vec<String> {
    // Task ids of the assignment frames, in order.
    out.iter()
        .filter_map(|o| match ServerMessage::decode(&o.frame) {
            Ok(ServerMessage::TaskAssignment(a)) => Some(a.task_id),
            _ => None,
        })
        .collect()
}

pub(super) fn claimed(s: &mut State, id: &str, exec: &str) {
    s.on_message(
        "w",
        WorkerMessage::TaskClaimed {
            task_id: id.into(),
            worker_id: "w".into(),
            execution_id: Some(exec.into()),
        },
        Utc::now(),
    );
}

pub(super) fn cancellations(out: &[Outgoing]) -> Vec<(String, Option<String>)> {
    out.iter()
        .filter_map(|o| match ServerMessage::decode(&o.frame) {
            Ok(ServerMessage::TaskCancellation {
                task_id,
                execution_id,
            }) => Some((task_id, execution_id)),
            _ => None,
        })
        .collect()
}
