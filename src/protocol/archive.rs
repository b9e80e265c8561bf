//! Debug archives (PROTOCOL §8.4): the request as the server sends it and the worker's
//! acknowledgement. The request is kept raw: only its owner reads it, in §8.4's order, and a
//! malformed one must reach that owner undecided (everyone else stays silent).

use serde::{Deserialize, Serialize};

/// `debug_archive_logs_requested`: the two ids that say who owns it, peeked, and the payload
/// as received (unknown fields are ignored by the owner's validation, never by decoding).
#[derive(Clone, PartialEq)]
pub struct ArchiveRequest {
    /// `run_id` when it is a string, else empty (no process owns an empty id).
    pub run_id: String,
    /// `execution_id` when it is a string, else empty.
    pub execution_id: String,
    /// The whole `data` object (`Null` when it is not JSON).
    pub data: serde_json::Value,
}

/// The payload holds the upload URL, headers and fields (credentials): never printed.
impl std::fmt::Debug for ArchiveRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveRequest")
            .field("run_id", &self.run_id)
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

impl ArchiveRequest {
    /// Reads a payload without ever failing: what cannot be read leaves the ids empty.
    pub fn peek(raw: &str) -> Self {
        let data: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        let id = |k: &str| {
            data.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        ArchiveRequest {
            run_id: id("run_id"),
            execution_id: id("execution_id"),
            data,
        }
    }
}

/// `debug_archive_logs_uploaded`, in the field order and with the presence rules of §8.4:
/// `truncated`, `warning_codes`, `reason_code` and `message` always; the byte, checksum,
/// transformer and capture fields only with `uploaded` (the builder in `archive::ack` is the
/// only place that decides them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveAck {
    /// Always 1.
    pub protocol_version: u32,
    pub request_id: String,
    pub archive_id: String,
    pub collection_id: String,
    pub run_id: String,
    pub execution_id: String,
    /// `uploaded`, `unavailable` or `failed`.
    pub outcome: String,
    /// The owner's backend (`docker`, `kubernetes`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_kind: String,
    /// Exact size of the uploaded object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// CRC-32C of the object: 4 big-endian bytes, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    /// SHA-256 of the object, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A truncation record was written.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_transformer_version: Option<u32>,
    /// `complete`, or `partial` when a warning code is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_status: Option<String>,
    /// Deduplicated, sorted, at most 16.
    #[serde(default)]
    pub warning_codes: Vec<String>,
    /// `""` on upload.
    #[serde(default)]
    pub reason_code: String,
    /// Sanitized; never provider output, a URL, a header, a field, a path or a body.
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ServerMessage, WorkerMessage};

    #[test]
    fn a_request_always_decodes_and_unreadable_ids_stay_empty() {
        let f = r#"{"type":"debug_archive_logs_requested","data":{"run_id":"t","execution_id":"e","max_bytes":"x","new":1}}"#;
        let Ok(ServerMessage::DebugArchiveLogsRequested(r)) = ServerMessage::decode(f) else {
            panic!("should decode");
        };
        assert_eq!((r.run_id.as_str(), r.execution_id.as_str()), ("t", "e"));
        assert_eq!(r.data["new"], 1, "the payload is kept whole for the owner");
        let secret = ArchiveRequest::peek(
            r#"{"run_id":"t","upload_target":{"url":"https://x/?sig=S3CR3T"}}"#,
        );
        assert!(!format!("{secret:?}").contains("S3CR3T"));
        for f in [
            r#"{"type":"debug_archive_logs_requested","data":{"run_id":7,"execution_id":"e"}}"#,
            r#"{"type":"debug_archive_logs_requested","data":"nonsense"}"#,
            r#"{"type":"debug_archive_logs_requested"}"#,
        ] {
            let Ok(ServerMessage::DebugArchiveLogsRequested(r)) = ServerMessage::decode(f) else {
                panic!("{f} should decode");
            };
            assert!(r.run_id.is_empty(), "{f}");
        }
        // The embedded control plane's encoding reads back the same.
        let again = ServerMessage::DebugArchiveLogsRequested(r).encode();
        assert!(matches!(
            ServerMessage::decode(&again),
            Ok(ServerMessage::DebugArchiveLogsRequested(_))
        ));
    }

    #[test]
    fn the_acknowledgement_goes_to_oz_and_berth_servers_and_decodes_back() {
        let a = ArchiveAck {
            protocol_version: 1,
            request_id: "r".into(),
            archive_id: "a".into(),
            collection_id: "c".into(),
            run_id: "t".into(),
            execution_id: "e".into(),
            outcome: "failed".into(),
            backend_kind: "docker".into(),
            reason_code: "invalid_request".into(),
            message: "m".into(),
            ..ArchiveAck::default()
        };
        let m = WorkerMessage::DebugArchiveLogsUploaded(Box::new(a));
        for berth in [false, true] {
            let text = m.encode_for(berth).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "debug_archive_logs_uploaded");
            assert_eq!(v["data"]["truncated"], false);
            assert_eq!(v["data"]["warning_codes"], serde_json::json!([]));
            assert!(v["data"].get("bytes").is_none());
            assert_eq!(WorkerMessage::decode(&text).ok(), Some(m.clone()));
        }
        assert_eq!(m.task_id(), "t");
        assert_eq!(m.execution_id(), Some("e"));
    }
}
