//! What the worker sends: `WorkerMessage`, the exact oz/1 texts it carries, and its encoding
//! for an oz/1 or a berth/1 connection; also its decoder (the embedded control plane reads the
//! worker with it, the journal reads its stored results back).

use serde::{Deserialize, Serialize};

use super::envelope::{DecodeError, Envelope, frame, peek_task_id};
use super::payloads::{Hello, Started, Stream, TerminalExt, Usage, WorkerStatus};
use crate::failure::FailureReason;

/// Rejection reason when every concurrency slot is taken (exact oz/1 text).
pub const REJECT_AT_CAPACITY: &str = "worker at maximum concurrency";
/// `task_completed.message` on success (exact oz/1 text).
pub const MSG_COMPLETED: &str = "Task completed successfully";
/// `task_completed.message` after a user cancellation (exact oz/1 text).
pub const MSG_CANCELLED: &str = "Task cancelled by user request.";
/// `task_failed.message` when the time limit expired (exact oz/1 text).
pub const MSG_TIMEOUT: &str = "The task exceeded its maximum allowed execution time and was terminated. Consider breaking the task into smaller steps or increasing the timeout.";
/// `task_failed.message` when worker shutdown interrupted the task (exact oz/1 text).
pub const MSG_INTERRUPTED: &str = "The task was interrupted due to an infrastructure issue (context canceled). This is typically transient — please try again.";
/// `task_state` value of a cancelled task.
pub const TASK_STATE_CANCELLED: &str = "CANCELLED";

/// A message from the worker to the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerMessage {
    /// `task_claimed`.
    TaskClaimed {
        task_id: String,
        worker_id: String,
        /// The server's execution id (PROTOCOL §7); omitted when empty.
        execution_id: Option<String>,
    },
    /// `task_rejected`.
    TaskRejected {
        task_id: String,
        /// Why; `worker at maximum concurrency` for capacity.
        reason: String,
    },
    /// `task_completed`.
    TaskCompleted {
        task_id: String,
        /// Fixed oz/1 text.
        message: String,
        /// `CANCELLED` after a user cancellation.
        task_state: Option<String>,
        /// berth/1 extension fields (encoded only on berth/1 connections).
        ext: Option<TerminalExt>,
    },
    /// `task_failed`.
    TaskFailed {
        task_id: String,
        /// User-facing text.
        message: String,
        /// Optional task state.
        task_state: Option<String>,
        /// Bounded failure vocabulary.
        failure_reason: Option<FailureReason>,
        /// Exit status; omitted when 0 or unknown.
        exit_code: Option<i64>,
        /// berth/1 extension fields (encoded only on berth/1 connections).
        ext: Option<TerminalExt>,
    },
    /// `worker_hello` (berth/1).
    WorkerHello(Box<Hello>),
    /// `worker_status` (berth/1).
    WorkerStatus(Box<WorkerStatus>),
    /// `task_started` (berth/1).
    TaskStarted(Box<Started>),
    /// `task_output` (berth/1).
    TaskOutput {
        task_id: String,
        execution_id: String,
        /// Transcript position of the first byte.
        offset: u64,
        stream: Stream,
        /// Raw bytes (sent as `data` when UTF-8, else `data_b64`).
        data: Vec<u8>,
    },
    /// `execution_closed` (PROTOCOL §7): a cancelled execution's sandbox is proven gone.
    ExecutionClosed {
        task_id: String,
        execution_id: String,
    },
    /// `debug_archive_logs_uploaded` (PROTOCOL §8.4), on oz/1 and berth/1 alike.
    DebugArchiveLogsUploaded(Box<super::ArchiveAck>),
}

#[derive(Serialize)]
struct TerminalData<'a> {
    task_id: &'a str,
    /// oz/1 only (berth/1 carries it in the extension): the server's own execution id.
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_id: Option<&'a str>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    /// oz/1 and berth/1 alike (the Go worker sends it on its Kubernetes backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_details: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    ext: Option<ExtData<'a>>,
}

#[derive(Serialize)]
struct ExtData<'a> {
    execution_id: &'a str,
    message_id: &'a str,
    duration_ms: u64,
    transcript_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    transcript_lost_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl WorkerMessage {
    /// The wire `type` of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerMessage::TaskClaimed { .. } => "task_claimed",
            WorkerMessage::TaskRejected { .. } => "task_rejected",
            WorkerMessage::TaskCompleted { .. } => "task_completed",
            WorkerMessage::TaskFailed { .. } => "task_failed",
            WorkerMessage::WorkerHello(_) => "worker_hello",
            WorkerMessage::WorkerStatus(_) => "worker_status",
            WorkerMessage::TaskStarted(_) => "task_started",
            WorkerMessage::TaskOutput { .. } => "task_output",
            WorkerMessage::ExecutionClosed { .. } => "execution_closed",
            WorkerMessage::DebugArchiveLogsUploaded(_) => "debug_archive_logs_uploaded",
        }
    }

    /// The task the message is about (empty for `worker_hello`).
    pub fn task_id(&self) -> &str {
        match self {
            WorkerMessage::TaskClaimed { task_id, .. }
            | WorkerMessage::TaskRejected { task_id, .. }
            | WorkerMessage::TaskCompleted { task_id, .. }
            | WorkerMessage::TaskFailed { task_id, .. }
            | WorkerMessage::TaskOutput { task_id, .. }
            | WorkerMessage::ExecutionClosed { task_id, .. } => task_id,
            WorkerMessage::TaskStarted(s) => &s.task_id,
            WorkerMessage::DebugArchiveLogsUploaded(a) => &a.run_id,
            WorkerMessage::WorkerHello(_) | WorkerMessage::WorkerStatus(_) => "",
        }
    }

    /// The execution the message names, if it names one (oz/1 results do not).
    pub fn execution_id(&self) -> Option<&str> {
        match self {
            WorkerMessage::TaskClaimed { execution_id, .. } => execution_id.as_deref(),
            WorkerMessage::TaskOutput { execution_id, .. }
            | WorkerMessage::ExecutionClosed { execution_id, .. } => Some(execution_id),
            WorkerMessage::TaskStarted(s) => Some(&s.execution_id),
            WorkerMessage::DebugArchiveLogsUploaded(a) => Some(&a.execution_id),
            m => m.ext().map(|e| e.execution_id.as_str()),
        }
    }

    /// True for the types only a berth/1 server may see.
    pub fn is_berth_only(&self) -> bool {
        matches!(
            self,
            WorkerMessage::WorkerHello(_)
                | WorkerMessage::WorkerStatus(_)
                | WorkerMessage::TaskStarted(_)
                | WorkerMessage::TaskOutput { .. }
        )
    }

    /// The terminal extension, if this is a terminal message carrying one.
    pub fn ext(&self) -> Option<&TerminalExt> {
        match self {
            WorkerMessage::TaskCompleted { ext, .. } | WorkerMessage::TaskFailed { ext, .. } => {
                ext.as_ref()
            }
            _ => None,
        }
    }

    /// Encodes the message for a connection; `berth` says whether berth/1 was negotiated.
    /// Returns `None` for berth/1-only types on an oz/1 connection: they are never sent there.
    pub fn encode_for(&self, berth: bool) -> Option<String> {
        if self.is_berth_only() && !berth {
            return None;
        }
        let data = match self {
            WorkerMessage::TaskClaimed {
                task_id,
                worker_id,
                execution_id,
            } => {
                let mut v = serde_json::json!({ "task_id": task_id, "worker_id": worker_id });
                if let Some(e) = execution_id.as_deref().filter(|e| !e.is_empty()) {
                    v["execution_id"] = serde_json::Value::String(e.to_string());
                }
                v
            }
            WorkerMessage::TaskRejected { task_id, reason } => {
                serde_json::json!({ "task_id": task_id, "reason": reason })
            }
            WorkerMessage::TaskCompleted {
                task_id,
                message,
                task_state,
                ext,
            } => serde_json::to_value(TerminalData {
                task_id,
                execution_id: oz_execution_id(ext.as_ref(), berth),
                message,
                task_state: task_state.as_deref(),
                failure_reason: None,
                exit_code: ext.as_ref().filter(|_| berth).and_then(|e| e.exit_code),
                failure_details: None,
                ext: ext.as_ref().filter(|_| berth).map(ext_data),
            })
            .unwrap_or_default(),
            WorkerMessage::TaskFailed {
                task_id,
                message,
                task_state,
                failure_reason,
                exit_code,
                ext,
            } => {
                let berth_ext = ext.as_ref().filter(|_| berth);
                serde_json::to_value(TerminalData {
                    task_id,
                    execution_id: oz_execution_id(ext.as_ref(), berth),
                    message,
                    task_state: task_state.as_deref(),
                    failure_reason: failure_reason.map(FailureReason::as_str),
                    // oz/1 omits 0; berth/1 always carries the status.
                    exit_code: match berth_ext {
                        Some(e) => e.exit_code,
                        None => exit_code.filter(|c| *c != 0),
                    },
                    failure_details: ext.as_ref().and_then(|e| e.failure_details.as_deref()),
                    ext: berth_ext.map(ext_data),
                })
                .unwrap_or_default()
            }
            WorkerMessage::WorkerHello(h) => serde_json::to_value(h).unwrap_or_default(),
            WorkerMessage::WorkerStatus(st) => serde_json::to_value(st).unwrap_or_default(),
            WorkerMessage::TaskStarted(s) => serde_json::to_value(s).unwrap_or_default(),
            WorkerMessage::TaskOutput {
                task_id,
                execution_id,
                offset,
                stream,
                data,
            } => return Some(output_frame(task_id, execution_id, *offset, *stream, data)),
            WorkerMessage::ExecutionClosed {
                task_id,
                execution_id,
            } => serde_json::json!({ "task_id": task_id, "execution_id": execution_id }),
            WorkerMessage::DebugArchiveLogsUploaded(a) => {
                serde_json::to_value(a).unwrap_or_default()
            }
        };
        Some(frame(self.kind(), Some(data)))
    }

    /// Encodes for an oz/1 connection (what the Go worker would send).
    pub fn encode(&self) -> String {
        self.encode_for(false).unwrap_or_default()
    }

    /// Decodes a worker frame (the embedded control plane reads the worker with it; the journal
    /// reads its stored results back).
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Any {
            #[serde(default)]
            task_id: String,
            #[serde(default)]
            worker_id: String,
            #[serde(default)]
            reason: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            task_state: Option<String>,
            #[serde(default)]
            failure_reason: Option<String>,
            #[serde(default)]
            exit_code: Option<i64>,
            #[serde(default)]
            execution_id: Option<String>,
            #[serde(default)]
            message_id: Option<String>,
            #[serde(default)]
            duration_ms: Option<u64>,
            #[serde(default)]
            transcript_bytes: Option<u64>,
            #[serde(default)]
            transcript_lost_bytes: u64,
            #[serde(default)]
            usage: Option<Usage>,
            #[serde(default)]
            failure_details: Option<serde_json::Value>,
            #[serde(default)]
            offset: u64,
            #[serde(default)]
            stream: Option<Stream>,
            #[serde(default)]
            data: Option<String>,
            #[serde(default)]
            data_b64: Option<String>,
        }
        let env: Envelope = serde_json::from_str(text).map_err(DecodeError::NotEnvelope)?;
        let raw = env.data.as_ref().map(|d| d.get()).unwrap_or("null");
        let bad = |source: serde_json::Error| DecodeError::BadPayload {
            kind: env.kind.clone(),
            task_id: peek_task_id(raw),
            source,
        };
        match env.kind.as_str() {
            "worker_hello" => {
                return Ok(WorkerMessage::WorkerHello(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            "task_started" => {
                return Ok(WorkerMessage::TaskStarted(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            "worker_status" => {
                return Ok(WorkerMessage::WorkerStatus(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            "debug_archive_logs_uploaded" => {
                return Ok(WorkerMessage::DebugArchiveLogsUploaded(Box::new(
                    serde_json::from_str(raw).map_err(bad)?,
                )));
            }
            _ => {}
        }
        let d: Any = serde_json::from_str(raw).map_err(bad)?;
        let ext = match (&d.execution_id, &d.message_id) {
            (Some(e), Some(m)) => Some(TerminalExt {
                execution_id: e.clone(),
                message_id: m.clone(),
                exit_code: d.exit_code,
                duration_ms: d.duration_ms.unwrap_or(0),
                transcript_bytes: d.transcript_bytes.unwrap_or(0),
                transcript_lost_bytes: d.transcript_lost_bytes,
                usage: d.usage.map(Box::new),
                failure_details: d.failure_details.map(Box::new),
                assigned: false,
            }),
            _ => None,
        };
        Ok(match env.kind.as_str() {
            "task_claimed" => WorkerMessage::TaskClaimed {
                task_id: d.task_id,
                worker_id: d.worker_id,
                execution_id: d.execution_id.filter(|e| !e.is_empty()),
            },
            "execution_closed" => WorkerMessage::ExecutionClosed {
                task_id: d.task_id,
                execution_id: d.execution_id.unwrap_or_default(),
            },
            "task_rejected" => WorkerMessage::TaskRejected {
                task_id: d.task_id,
                reason: d.reason,
            },
            "task_completed" => WorkerMessage::TaskCompleted {
                task_id: d.task_id,
                message: d.message,
                task_state: d.task_state,
                ext,
            },
            "task_failed" => WorkerMessage::TaskFailed {
                task_id: d.task_id,
                message: d.message,
                task_state: d.task_state,
                failure_reason: d.failure_reason.as_deref().and_then(FailureReason::parse),
                exit_code: d.exit_code,
                ext,
            },
            "task_output" => {
                let data = match (d.data, d.data_b64) {
                    (Some(t), None) => t.into_bytes(),
                    (None, Some(b)) => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|e| bad(serde::de::Error::custom(e)))?
                    }
                    _ => {
                        return Err(bad(serde::de::Error::custom(
                            "exactly one of data and data_b64 must be present",
                        )));
                    }
                };
                WorkerMessage::TaskOutput {
                    task_id: d.task_id,
                    execution_id: d.execution_id.unwrap_or_default(),
                    offset: d.offset,
                    stream: d.stream.unwrap_or(Stream::System),
                    data,
                }
            }
            other => {
                return Err(DecodeError::BadPayload {
                    kind: other.to_string(),
                    task_id: Some(d.task_id),
                    source: serde::de::Error::custom("unknown worker message type"),
                });
            }
        })
    }
}

/// The `execution_id` an oz/1 result carries: the server's, when its assignment named one.
fn oz_execution_id(ext: Option<&TerminalExt>, berth: bool) -> Option<&str> {
    ext.filter(|e| !berth && e.assigned && !e.execution_id.is_empty())
        .map(|e| e.execution_id.as_str())
}

fn ext_data(e: &TerminalExt) -> ExtData<'_> {
    ExtData {
        execution_id: &e.execution_id,
        message_id: &e.message_id,
        duration_ms: e.duration_ms,
        transcript_bytes: e.transcript_bytes,
        transcript_lost_bytes: e.transcript_lost_bytes,
        usage: e.usage.as_deref(),
    }
}

/// Encodes a `task_output` frame straight from borrowed fields: it is the one message sent
/// per 64 KiB of transcript, so it skips the `Value` tree, the copy of the text into it and
/// serde_json's byte-at-a-time escaping. Same fields, order and bytes as serde_json writes.
fn output_frame(
    task_id: &str,
    execution_id: &str,
    offset: u64,
    stream: Stream,
    data: &[u8],
) -> String {
    let mut f = String::with_capacity(data.len() + data.len() / 3 + 160);
    f.push_str(r#"{"type":"task_output","data":{"task_id":"#);
    crate::jsonstr::push(task_id, &mut f);
    f.push_str(r#","execution_id":"#);
    crate::jsonstr::push(execution_id, &mut f);
    f.push_str(r#","offset":"#);
    f.push_str(&offset.to_string());
    f.push_str(r#","stream":"#);
    crate::jsonstr::push(stream.as_str(), &mut f);
    match std::str::from_utf8(data) {
        Ok(text) => {
            f.push_str(r#","data":"#);
            crate::jsonstr::push(text, &mut f);
        }
        Err(_) => {
            use base64::Engine;
            f.push_str(r#","data_b64":""#);
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut f);
            f.push('"');
        }
    }
    f.push_str("}}");
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn claimed_and_rejected_have_exact_shapes() {
        let c = WorkerMessage::TaskClaimed {
            task_id: "t".into(),
            worker_id: "w".into(),
            execution_id: None,
        };
        assert_eq!(
            parse(&c.encode()),
            json!({"type": "task_claimed", "data": {"task_id": "t", "worker_id": "w"}})
        );
        // PROTOCOL §7: the execution id rides along on oz/1 too, and is omitted when empty.
        for (execution_id, want) in [
            (
                Some("e-1"),
                json!({"task_id": "t", "worker_id": "w", "execution_id": "e-1"}),
            ),
            (Some(""), json!({"task_id": "t", "worker_id": "w"})),
        ] {
            let c = WorkerMessage::TaskClaimed {
                task_id: "t".into(),
                worker_id: "w".into(),
                execution_id: execution_id.map(str::to_string),
            };
            for berth in [false, true] {
                assert_eq!(
                    parse(&c.encode_for(berth).unwrap_or_default()),
                    json!({"type": "task_claimed", "data": want})
                );
            }
        }
        // execution_closed: both ids, on oz/1 and berth/1 alike.
        let closed = WorkerMessage::ExecutionClosed {
            task_id: "t".into(),
            execution_id: "e-1".into(),
        };
        for berth in [false, true] {
            let text = closed.encode_for(berth).unwrap_or_default();
            assert_eq!(
                parse(&text),
                json!({"type": "execution_closed", "data": {"task_id": "t", "execution_id": "e-1"}})
            );
            assert_eq!(WorkerMessage::decode(&text).ok(), Some(closed.clone()));
        }
        let r = WorkerMessage::TaskRejected {
            task_id: "t".into(),
            reason: REJECT_AT_CAPACITY.into(),
        };
        assert_eq!(
            parse(&r.encode()),
            json!({"type": "task_rejected", "data": {"task_id": "t", "reason": "worker at maximum concurrency"}})
        );
    }

    #[test]
    fn terminal_messages_omit_empty_optional_fields() {
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: None,
        };
        assert_eq!(
            parse(&ok.encode()),
            json!({"type": "task_completed", "data": {"task_id": "t", "message": "Task completed successfully"}})
        );
        let cancelled = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_CANCELLED.into(),
            task_state: Some(TASK_STATE_CANCELLED.into()),
            ext: None,
        };
        assert_eq!(
            parse(&cancelled.encode())["data"]["task_state"],
            json!("CANCELLED")
        );
        let failed = WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "Failed to execute task: x".into(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(3),
            ext: None,
        };
        assert_eq!(
            parse(&failed.encode()),
            json!({"type": "task_failed", "data": {"task_id": "t", "message": "Failed to execute task: x", "failure_reason": "container_exit", "exit_code": 3}})
        );
        let zero = WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            failure_reason: None,
            exit_code: Some(0),
            ext: None,
        };
        assert_eq!(
            parse(&zero.encode()),
            json!({"type": "task_failed", "data": {"task_id": "t", "message": "m"}})
        );
    }

    #[test]
    fn worker_messages_round_trip_through_the_server_decoder() {
        let msgs = [
            WorkerMessage::TaskClaimed {
                task_id: "t".into(),
                worker_id: "w".into(),
                execution_id: Some("e".into()),
            },
            WorkerMessage::TaskFailed {
                task_id: "t".into(),
                message: "m".into(),
                task_state: None,
                failure_reason: Some(FailureReason::ContainerOom),
                exit_code: Some(137),
                ext: None,
            },
        ];
        for m in msgs {
            assert_eq!(WorkerMessage::decode(&m.encode()).ok(), Some(m));
        }
    }

    fn ext() -> TerminalExt {
        TerminalExt {
            execution_id: "e".into(),
            message_id: "m".into(),
            exit_code: Some(0),
            duration_ms: 12,
            transcript_bytes: 34,
            transcript_lost_bytes: 0,
            usage: None,
            failure_details: None,
            assigned: false,
        }
    }

    #[test]
    fn failure_details_go_out_on_oz1_and_berth1_and_only_when_present() {
        let details = json!({"kubernetes": {"schema_version": 1, "observed_at": "t"}});
        let failed = |d: Option<serde_json::Value>| WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "Failed to execute task: x".into(),
            task_state: None,
            failure_reason: Some(FailureReason::Unschedulable),
            exit_code: None,
            ext: Some(TerminalExt {
                failure_details: d.map(Box::new),
                ..ext()
            }),
        };
        for berth in [false, true] {
            let with = parse(
                &failed(Some(details.clone()))
                    .encode_for(berth)
                    .unwrap_or_default(),
            );
            assert_eq!(with["data"]["failure_details"], details, "berth/1: {berth}");
            assert_eq!(with["data"]["failure_reason"], "unschedulable");
            let without = parse(&failed(None).encode_for(berth).unwrap_or_default());
            assert!(
                without["data"].get("failure_details").is_none(),
                "omitted when absent"
            );
        }
        // Round trip (the embedded control plane decodes what berth sends).
        let text = failed(Some(details.clone()))
            .encode_for(true)
            .unwrap_or_default();
        let back = WorkerMessage::decode(&text).ok();
        let got = back
            .as_ref()
            .and_then(|m| m.ext())
            .and_then(|e| e.failure_details.as_deref());
        assert_eq!(got, Some(&details));
    }

    #[test]
    fn oz1_results_echo_the_servers_execution_id_and_nothing_when_it_gave_none() {
        let completed = |assigned: bool| WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: Some(TerminalExt { assigned, ..ext() }),
        };
        let failed = |assigned: bool| WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "Failed to execute task: x".into(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(2),
            ext: Some(TerminalExt { assigned, ..ext() }),
        };
        assert_eq!(
            completed(true).encode(),
            r#"{"data":{"execution_id":"e","message":"Task completed successfully","task_id":"t"},"type":"task_completed"}"#
        );
        assert_eq!(
            parse(&failed(true).encode())["data"],
            json!({"task_id": "t", "execution_id": "e", "message": "Failed to execute task: x",
                   "failure_reason": "container_exit", "exit_code": 2})
        );
        // No execution from the server: today's bytes exactly (berth's own id never goes out).
        assert_eq!(
            completed(false).encode(),
            r#"{"data":{"message":"Task completed successfully","task_id":"t"},"type":"task_completed"}"#
        );
        assert_eq!(
            parse(&failed(false).encode())["data"].get("execution_id"),
            None
        );
        // berth/1 carries it once, in the extension.
        let b = completed(true).encode_for(true).unwrap_or_default();
        assert_eq!(b.matches(r#""execution_id""#).count(), 1, "{b}");
    }

    #[test]
    fn terminal_extension_is_encoded_only_for_berth() {
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: Some(ext()),
        };
        assert_eq!(
            parse(&ok.encode()),
            json!({"type": "task_completed", "data": {"task_id": "t", "message": "Task completed successfully"}})
        );
        assert_eq!(
            parse(&ok.encode_for(true).unwrap_or_default())["data"],
            json!({"task_id": "t", "message": "Task completed successfully", "execution_id": "e",
                   "message_id": "m", "exit_code": 0, "duration_ms": 12, "transcript_bytes": 34})
        );
        // Usage (berth/1 only) has a fixed shape and round-trips; oz/1 never sees it.
        let used = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
            ext: Some(TerminalExt {
                usage: Some(Box::new(Usage {
                    cpu_ms: 1500,
                    peak_memory_bytes: 2048,
                    read_bytes: 1,
                    write_bytes: 2,
                    network_rx_bytes: 3,
                    network_tx_bytes: 4,
                    samples: 5,
                })),
                ..ext()
            }),
        };
        let wire = used.encode_for(true).unwrap_or_default();
        assert_eq!(
            parse(&wire)["data"]["usage"],
            json!({"cpu_ms": 1500, "peak_memory_bytes": 2048, "read_bytes": 1, "write_bytes": 2,
                   "network_rx_bytes": 3, "network_tx_bytes": 4, "samples": 5})
        );
        assert_eq!(WorkerMessage::decode(&wire).ok(), Some(used.clone()));
        assert_eq!(parse(&used.encode())["data"].get("usage"), None);
        let failed = WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(2),
            ext: Some(TerminalExt {
                exit_code: Some(2),
                ..ext()
            }),
        };
        assert_eq!(parse(&failed.encode())["data"].get("message_id"), None);
        assert_eq!(
            parse(&failed.encode_for(true).unwrap_or_default())["data"]["exit_code"],
            json!(2)
        );
        assert_eq!(
            WorkerMessage::decode(&failed.encode_for(true).unwrap_or_default()).ok(),
            Some(failed)
        );
    }

    #[test]
    fn berth_only_messages_are_never_encoded_for_oz() {
        let out = WorkerMessage::TaskOutput {
            task_id: "t".into(),
            execution_id: "e".into(),
            offset: 5,
            stream: Stream::Stderr,
            data: b"hi".to_vec(),
        };
        assert_eq!(out.encode_for(false), None);
        assert_eq!(out.encode(), "");
        assert_eq!(
            parse(&out.encode_for(true).unwrap_or_default()),
            json!({"type": "task_output", "data": {"task_id": "t", "execution_id": "e", "offset": 5, "stream": "stderr", "data": "hi"}})
        );
    }

    proptest::proptest! {
        #[test]
        fn any_output_frame_is_the_json_serde_would_write_and_decodes_back(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            text in "[ -~\\n\\t\"\\\\é✓\u{1}]{0,120}",
            task_id in "[a-z0-9\"\\\\]{1,12}",
            offset in proptest::prelude::any::<u64>(),
        ) {
            for bytes in [data.clone(), text.clone().into_bytes()] {
                let m = WorkerMessage::TaskOutput {
                    task_id: task_id.clone(),
                    execution_id: "e-1".into(),
                    offset,
                    stream: Stream::Stdout,
                    data: bytes.clone(),
                };
                let wire = m.encode_for(true).unwrap_or_default();
                let mut want = json!({"task_id": task_id, "execution_id": "e-1", "offset": offset, "stream": "stdout"});
                match std::str::from_utf8(&bytes) {
                    Ok(t) => want["data"] = json!(t),
                    Err(_) => {
                        use base64::Engine;
                        want["data_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
                    }
                }
                let want = json!({"type": "task_output", "data": want});
                proptest::prop_assert_eq!(parse(&wire), want);
                proptest::prop_assert_eq!(WorkerMessage::decode(&wire).ok(), Some(m));
            }
        }
    }

    #[test]
    fn output_that_is_not_utf8_travels_as_base64_and_round_trips() {
        for bytes in [
            vec![0xff, 0xfe, 0x00, b'a'],
            vec![0u8; 3],
            "é✓".as_bytes().to_vec(),
            vec![0xe2, 0x9c],
        ] {
            let m = WorkerMessage::TaskOutput {
                task_id: "t".into(),
                execution_id: "e".into(),
                offset: 0,
                stream: Stream::Stdout,
                data: bytes.clone(),
            };
            let f = parse(&m.encode_for(true).unwrap_or_default());
            let utf8 = std::str::from_utf8(&bytes).is_ok();
            assert_eq!(f["data"].get("data").is_some(), utf8);
            assert_eq!(f["data"].get("data_b64").is_some(), !utf8);
            assert_eq!(
                WorkerMessage::decode(&m.encode_for(true).unwrap_or_default()).ok(),
                Some(m)
            );
        }
    }

    #[test]
    fn interrupted_message_uses_an_em_dash() {
        assert!(MSG_INTERRUPTED.contains("transient \u{2014} please"));
    }
}
