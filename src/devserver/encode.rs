//! The server's side of the wire: encoding what a control plane sends. The worker only decodes
//! these messages, so the encoder lives with the one server berth embeds.

use crate::protocol::{ServerMessage, frame};

impl ServerMessage {
    /// Encodes the message as a frame.
    pub fn encode(&self) -> String {
        let (kind, data) = match self {
            ServerMessage::TaskAssignment(a) => ("task_assignment", serde_json::to_value(a).ok()),
            ServerMessage::TaskCancellation {
                task_id,
                execution_id,
            } => {
                let mut d = serde_json::json!({ "task_id": task_id });
                if let Some(e) = execution_id {
                    d["execution_id"] = serde_json::Value::String(e.clone());
                }
                ("task_cancellation", Some(d))
            }
            ServerMessage::OutputAck {
                task_id,
                execution_id,
                offset,
            } => (
                "output_ack",
                Some(
                    serde_json::json!({"task_id": task_id, "execution_id": execution_id, "offset": offset}),
                ),
            ),
            ServerMessage::Ack { message_id } => {
                ("ack", Some(serde_json::json!({ "message_id": message_id })))
            }
            ServerMessage::Drain => ("drain", None),
            ServerMessage::Resume => ("resume", None),
            ServerMessage::DebugArchiveLogsRequested(r) => {
                ("debug_archive_logs_requested", Some(r.data.clone()))
            }
            ServerMessage::Unknown(kind) => (kind.as_str(), None),
        };
        frame(kind, data)
    }
}
