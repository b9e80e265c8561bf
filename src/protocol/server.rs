//! What the control plane sends, decoded by the worker. (The server's encoder lives with the
//! only server that needs one, the embedded control plane: `devserver/encode.rs`.)

use serde::Deserialize;

use super::assignment::{TaskAssignment, check_assignment_ids};
use super::envelope::{DecodeError, Envelope, peek_task_id};

/// A message from the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `task_assignment` (oz/1).
    TaskAssignment(Box<TaskAssignment>),
    /// `task_cancellation` (oz/1).
    TaskCancellation {
        /// The run to cancel.
        task_id: String,
        /// Only this execution of it (PROTOCOL §7); every execution here when absent.
        execution_id: Option<String>,
    },
    /// `output_ack` (berth/1).
    OutputAck {
        /// Task of the acknowledged transcript.
        task_id: String,
        /// Execution of the acknowledged transcript.
        execution_id: String,
        /// Bytes `[0, offset)` are stored.
        offset: u64,
    },
    /// `ack` (berth/1).
    Ack {
        /// The acknowledged worker message.
        message_id: String,
    },
    /// `drain` (berth/1).
    Drain,
    /// `resume` (berth/1).
    Resume,
    /// `debug_archive_logs_requested` (PROTOCOL §8.4): never fails to decode, so a malformed
    /// request reaches its owner (who answers) and no one else (who stays silent).
    DebugArchiveLogsRequested(Box<super::ArchiveRequest>),
    /// A type this worker does not know; logged and ignored.
    Unknown(String),
}

#[derive(Deserialize)]
struct CancellationData {
    task_id: String,
    #[serde(default)]
    execution_id: Option<String>,
}

#[derive(Deserialize)]
struct OutputAckData {
    task_id: String,
    execution_id: String,
    offset: u64,
}

#[derive(Deserialize)]
struct AckData {
    message_id: String,
}

impl ServerMessage {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let env: Envelope = serde_json::from_str(text).map_err(DecodeError::NotEnvelope)?;
        let raw = env.data.as_ref().map(|d| d.get()).unwrap_or("null");
        let bad = |source: serde_json::Error| DecodeError::BadPayload {
            kind: env.kind.clone(),
            task_id: peek_task_id(raw),
            source,
        };
        Ok(match env.kind.as_str() {
            "task_assignment" => {
                let a: TaskAssignment = serde_json::from_str(raw).map_err(bad)?;
                if let Err(rule) = check_assignment_ids(&a) {
                    return Err(DecodeError::BadPayload {
                        kind: env.kind.clone(),
                        task_id: Some(a.task_id),
                        source: serde::de::Error::custom(rule),
                    });
                }
                ServerMessage::TaskAssignment(Box::new(a))
            }
            "task_cancellation" => {
                let d: CancellationData = serde_json::from_str(raw).map_err(bad)?;
                ServerMessage::TaskCancellation {
                    task_id: d.task_id,
                    execution_id: d.execution_id.filter(|e| !e.is_empty()),
                }
            }
            "output_ack" => {
                let d: OutputAckData = serde_json::from_str(raw).map_err(bad)?;
                ServerMessage::OutputAck {
                    task_id: d.task_id,
                    execution_id: d.execution_id,
                    offset: d.offset,
                }
            }
            "ack" => {
                let d: AckData = serde_json::from_str(raw).map_err(bad)?;
                ServerMessage::Ack {
                    message_id: d.message_id,
                }
            }
            "debug_archive_logs_requested" => {
                ServerMessage::DebugArchiveLogsRequested(Box::new(super::ArchiveRequest::peek(raw)))
            }
            "drain" => ServerMessage::Drain,
            "resume" => ServerMessage::Resume,
            other => ServerMessage::Unknown(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MAX_ID_LEN, Owner, check_id};

    fn assignment_frame(task_id: &str, execution_id: Option<&str>) -> String {
        let mut data = serde_json::json!({
            "task_id": task_id,
            "task": {"id": task_id, "title": "t", "task_definition": {"prompt": "p"},
                     "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                     "owner": {"Type": "USER", "Id": 1}},
        });
        if let Some(e) = execution_id {
            data["execution_id"] = serde_json::json!(e);
        }
        serde_json::json!({"type": "task_assignment", "data": data}).to_string()
    }

    #[test]
    fn hostile_ids_are_refused_at_decode_naming_the_field_and_the_rule() {
        let long = "a".repeat(10_000);
        let cases: [(&str, Option<&str>, &str); 9] = [
            ("", None, "task_id is empty"),
            ("../../../../tmp/x/t", None, "task_id contains '/'"),
            ("/tmp/x/abs", None, "task_id contains '/'"),
            ("a\0b", None, "task_id contains '\\0'"),
            ("line\nbreak", None, "task_id contains '\\n'"),
            (&long, None, "task_id is 10000 characters long"),
            ("..", None, "task_id starts with '.'"),
            (
                "t-1",
                Some("../../../../tmp/x/exec"),
                "execution_id contains '/'",
            ),
            ("t-1", Some("/tmp/x/abs"), "execution_id contains '/'"),
        ];
        for (task_id, exec, want) in cases {
            match ServerMessage::decode(&assignment_frame(task_id, exec)) {
                Err(DecodeError::BadPayload {
                    kind,
                    task_id: t,
                    source,
                }) => {
                    assert_eq!(kind, "task_assignment");
                    assert_eq!(t.as_deref(), Some(task_id));
                    let msg = source.to_string();
                    assert!(msg.contains(want), "{task_id:?}/{exec:?}: {msg}");
                    assert!(msg.contains("must be 1 to 128 characters"), "{msg}");
                }
                other => panic!("{task_id:?}/{exec:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn ordinary_ids_decode() {
        for (t, e) in [
            (
                "task-14a4f73408ba4316",
                Some("e51c9223-6e85-4172-840b-d53aa6e2768d"),
            ),
            ("01HZX:run_2.a", None),
            ("t", Some("")),
        ] {
            assert!(
                matches!(
                    ServerMessage::decode(&assignment_frame(t, e)),
                    Ok(ServerMessage::TaskAssignment(_))
                ),
                "{t}"
            );
        }
        assert!(check_id("task_id", &"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(check_id("task_id", &"a".repeat(MAX_ID_LEN + 1)).is_err());
    }
    use serde_json::{Value, json};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn full_oz_assignment_decodes_with_capitalised_owner_keys() {
        let frame = json!({"type": "task_assignment", "data": {
            "task_id": "t1", "execution_id": "e1",
            "task": {"id": "t1", "title": "Fix", "task_definition": {"prompt": "do"},
                     "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                     "owner": {"Type": "TEAM", "Id": 42},
                     "agent_config_snapshot": {"model_id": "m", "mcp_servers": {"b": {"x": 1}},
                        "harness": {"type": "claude"}, "inference_providers": {"aws": {"disabled": false, "role_arn": "r", "region": "eu"}},
                        "session_sharing": {"public_access": "VIEWER"}}},
            "docker_image": "ubuntu:22.04", "sidecar_image": "warpdotdev/warp-agent:latest",
            "env_vars": {"A": "1"}, "additional_sidecars": [{"image": "x", "mount_path": "/x", "read_write": true}],
            "additional_oz_args": ["--foo"], "instance_shape": {"vcpus": 2, "memory_gb": 4}
        }});
        let msg = ServerMessage::decode(&frame.to_string());
        let Ok(ServerMessage::TaskAssignment(a)) = msg else {
            panic!("expected assignment, got {msg:?}");
        };
        assert_eq!(a.task_id, "t1");
        let task = a.task.clone().unwrap_or_default();
        assert_eq!(
            task.owner,
            Some(Owner {
                kind: "TEAM".into(),
                id: 42
            })
        );
        assert_eq!(a.instance_shape.and_then(|s| s.memory_gb), Some(4));
        let snap = task.agent_config_snapshot.unwrap_or_default();
        assert_eq!(snap.harness.and_then(|h| h.kind).as_deref(), Some("claude"));
        // Round trip keeps the capitalised keys.
        let back = parse(&ServerMessage::TaskAssignment(a).encode());
        assert_eq!(
            back["data"]["task"]["owner"],
            json!({"Type": "TEAM", "Id": 42})
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_timestamps_may_be_missing() {
        let f = r#"{"type":"task_assignment","data":{"task_id":"t","surprise":1,"task":{"id":"t","new_field":[1]}}}"#;
        assert!(matches!(
            ServerMessage::decode(f),
            Ok(ServerMessage::TaskAssignment(_))
        ));
    }

    #[test]
    fn assignment_without_task_decodes_rather_than_failing() {
        let f = r#"{"type":"task_assignment","data":{"task_id":"t"}}"#;
        let Ok(ServerMessage::TaskAssignment(a)) = ServerMessage::decode(f) else {
            panic!("should decode");
        };
        assert!(a.task.is_none());
    }

    #[test]
    fn bad_payload_keeps_the_task_id_for_reporting() {
        let f = r#"{"type":"task_assignment","data":{"task_id":"t9","instance_shape":{"vcpus":"many"}}}"#;
        match ServerMessage::decode(f) {
            Err(DecodeError::BadPayload { task_id, kind, .. }) => {
                assert_eq!(task_id.as_deref(), Some("t9"));
                assert_eq!(kind, "task_assignment");
            }
            other => panic!("expected BadPayload, got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_unknown_types_are_distinguished() {
        assert!(matches!(
            ServerMessage::decode("not json"),
            Err(DecodeError::NotEnvelope(_))
        ));
        assert!(matches!(
            ServerMessage::decode(r#"{"data":{}}"#),
            Err(DecodeError::NotEnvelope(_))
        ));
        assert_eq!(
            ServerMessage::decode(r#"{"type":"heartbeat"}"#).ok(),
            Some(ServerMessage::Unknown("heartbeat".into()))
        );
        assert_eq!(
            ServerMessage::decode(r#"{"type":"drain"}"#).ok(),
            Some(ServerMessage::Drain)
        );
    }

    #[test]
    fn cancellation_and_acks_decode() {
        assert_eq!(
            ServerMessage::decode(r#"{"type":"task_cancellation","data":{"task_id":"a"}}"#).ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: "a".into(),
                execution_id: None,
            })
        );
        // PROTOCOL §7: execution-scoped; an empty id is the same as none.
        assert_eq!(
            ServerMessage::decode(
                r#"{"type":"task_cancellation","data":{"task_id":"a","execution_id":"e"}}"#
            )
            .ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: "a".into(),
                execution_id: Some("e".into()),
            })
        );
        assert_eq!(
            ServerMessage::decode(
                r#"{"type":"task_cancellation","data":{"task_id":"a","execution_id":""}}"#
            )
            .ok(),
            Some(ServerMessage::TaskCancellation {
                task_id: "a".into(),
                execution_id: None,
            })
        );
        assert_eq!(
            ServerMessage::decode(
                r#"{"type":"output_ack","data":{"task_id":"a","execution_id":"e","offset":7}}"#
            )
            .ok(),
            Some(ServerMessage::OutputAck {
                task_id: "a".into(),
                execution_id: "e".into(),
                offset: 7
            })
        );
    }
}
