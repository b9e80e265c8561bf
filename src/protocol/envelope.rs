//! The frame every message travels in, and what both directions share to read and write it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The outer JSON object of every frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Message type, e.g. `task_assignment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Payload; absent for payload-less types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// Why a frame from the server could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not a JSON object with a `type`.
    #[error("frame is not a protocol envelope: {0}")]
    NotEnvelope(serde_json::Error),
    /// The `data` of a known type did not decode; `task_id` is kept when it could be read so a
    /// task failure can still be reported.
    #[error("{kind} payload does not decode: {source}")]
    BadPayload {
        /// Message type whose payload failed.
        kind: String,
        /// The task the payload named, if any.
        task_id: Option<String>,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// Best effort: the `task_id` string of a payload that otherwise failed to decode.
pub(super) fn peek_task_id(raw: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()?
        .get("task_id")?
        .as_str()
        .map(str::to_string)
}

/// A `{"type", "data"}` frame; `data` is left out when `None` (payload-less types).
pub(crate) fn frame(kind: &str, data: Option<serde_json::Value>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), serde_json::Value::String(kind.into()));
    if let Some(d) = data {
        obj.insert("data".into(), d);
    }
    serde_json::Value::Object(obj).to_string()
}
