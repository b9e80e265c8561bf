//! core/v1 Events as the components record them.
//!
//! The kubelet and the Job controller use the legacy recorder: `source`, `firstTimestamp`,
//! `lastTimestamp`, `count` (an identical event again only counts up and moves
//! `lastTimestamp`), `eventTime` null. The scheduler uses the events.k8s.io recorder, which in
//! the core/v1 view has `eventTime` (microseconds), `action`, `reportingComponent` and null
//! `firstTimestamp`/`lastTimestamp`, no `count` and an empty `source`.

use serde_json::{Value, json};

use super::resources::Kind;
use super::state::{State, micro_now, now_rfc3339};
use super::store::meta;

/// Who records an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorder {
    Kubelet,
    JobController,
    Scheduler,
    Other(&'static str),
}

impl Recorder {
    fn component(self) -> &'static str {
        match self {
            Recorder::Kubelet => "kubelet",
            Recorder::JobController => "job-controller",
            Recorder::Scheduler => "default-scheduler",
            Recorder::Other(c) => c,
        }
    }
}

/// The object an event is about.
pub fn involved(obj: &Value, field_path: Option<&str>) -> Value {
    let mut o = json!({
        "kind": obj["kind"],
        "namespace": meta(obj, "namespace"),
        "name": meta(obj, "name"),
        "uid": meta(obj, "uid"),
        "apiVersion": obj["apiVersion"],
        "resourceVersion": meta(obj, "resourceVersion"),
    });
    if let Some(f) = field_path {
        o["fieldPath"] = json!(f);
    }
    o
}

impl State {
    /// Records an event about `obj` (Normal or Warning).
    pub fn event(
        &mut self,
        by: Recorder,
        obj: &Value,
        field_path: Option<&str>,
        etype: &str,
        reason: &str,
        message: &str,
    ) {
        let ns = meta(obj, "namespace").to_string();
        let inv = involved(obj, field_path);
        let host = self.node_name.clone();
        if by != Recorder::Scheduler {
            // The legacy recorder's aggregation: same source, object, reason, message, type.
            let same = self
                .store
                .iter(Kind::Event, Some(&ns))
                .find(|e| {
                    e["source"]["component"] == by.component()
                        && e["involvedObject"]["uid"] == inv["uid"]
                        && e["involvedObject"].get("fieldPath") == inv.get("fieldPath")
                        && e["reason"] == reason
                        && e["message"] == message
                        && e["type"] == etype
                })
                .cloned();
            if let Some(mut e) = same {
                let n = e["count"].as_i64().unwrap_or(1);
                e["count"] = json!(n + 1);
                e["lastTimestamp"] = json!(now_rfc3339());
                self.store.put(Kind::Event, e);
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            meta(obj, "name"),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) + self.store.rv() as i64
        );
        let mut e = json!({
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now_rfc3339(),
            },
            "involvedObject": inv,
            "reason": reason,
            "message": message,
            "type": etype,
        });
        match by {
            Recorder::Scheduler => {
                e["eventTime"] = json!(micro_now());
                e["firstTimestamp"] = Value::Null;
                e["lastTimestamp"] = Value::Null;
                e["source"] = json!({});
                e["action"] = json!(if reason == "Scheduled" {
                    "Binding"
                } else {
                    "Scheduling"
                });
                e["reportingComponent"] = json!("default-scheduler");
                e["reportingInstance"] = json!(format!("default-scheduler-{host}"));
            }
            _ => {
                let now = now_rfc3339();
                e["source"] = if by == Recorder::Kubelet {
                    json!({"component": by.component(), "host": host})
                } else {
                    json!({"component": by.component()})
                };
                e["firstTimestamp"] = json!(now);
                e["lastTimestamp"] = json!(now);
                e["count"] = json!(1);
                e["eventTime"] = Value::Null;
                e["reportingComponent"] = json!(if by == Recorder::Kubelet {
                    "kubelet"
                } else {
                    by.component()
                });
                e["reportingInstance"] = json!(if by == Recorder::Kubelet {
                    host.as_str()
                } else {
                    ""
                });
            }
        }
        self.store.create(Kind::Event, e);
    }
}
