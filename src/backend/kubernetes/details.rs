//! `task_failed.failure_details.kubernetes` (schema 1, as the Go worker sends it: PROTOCOL.md
//! §8.1): the Job's and pod's conditions, the failing container's state, and the Warning (and
//! `Killing`) events — bounded (reasons ≤ 256 bytes, ≤ 16 conditions each, ≤ 10 events,
//! `truncated` when anything was cut) and without free text (no messages, namespace or node).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use serde_json::{Map, Value, json};

use super::names::TASK_CONTAINER;

const MAX_REASON: usize = 256;
const MAX_CONDITIONS: usize = 16;
const MAX_EVENTS: usize = 10;

/// Cuts `s` to [`MAX_REASON`] bytes on a character boundary; notes a cut in `truncated`.
fn bounded(s: &str, truncated: &mut bool) -> String {
    if s.len() <= MAX_REASON {
        return s.to_string();
    }
    *truncated = true;
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.into(), v);
    }
}

/// One condition: type, status, reason, last transition (no message, by design).
fn condition(
    kind: &str,
    status: &str,
    reason: Option<&str>,
    at: Option<String>,
    truncated: &mut bool,
) -> Value {
    let mut c = Map::new();
    c.insert("type".into(), json!(kind));
    c.insert("status".into(), json!(status));
    put(
        &mut c,
        "reason",
        reason.map(|r| json!(bounded(r, truncated))),
    );
    put(&mut c, "last_transition_time", at.map(Value::from));
    Value::Object(c)
}

fn cap(mut v: Vec<Value>, max: usize, truncated: &mut bool) -> Vec<Value> {
    if v.len() > max {
        *truncated = true;
        v.truncate(max);
    }
    v
}

fn job_part(job: &Job, truncated: &mut bool) -> Value {
    let conditions: Vec<Value> = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| matches!(c.type_.as_str(), "Complete" | "Failed" | "FailureTarget"))
        .map(|c| {
            let at = c.last_transition_time.as_ref().map(|t| t.0.to_string());
            condition(&c.type_, &c.status, c.reason.as_deref(), at, truncated)
        })
        .collect();
    let mut m = Map::new();
    put(&mut m, "name", job.metadata.name.clone().map(Value::from));
    put(&mut m, "uid", job.metadata.uid.clone().map(Value::from));
    if !conditions.is_empty() {
        m.insert(
            "conditions".into(),
            Value::Array(cap(conditions, MAX_CONDITIONS, truncated)),
        );
    }
    Value::Object(m)
}

fn pod_part(pod: &Pod, truncated: &mut bool) -> Value {
    let status = pod.status.as_ref();
    let conditions: Vec<Value> = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            let at = c.last_transition_time.as_ref().map(|t| t.0.to_string());
            condition(&c.type_, &c.status, c.reason.as_deref(), at, truncated)
        })
        .collect();
    let mut m = Map::new();
    put(&mut m, "name", pod.metadata.name.clone().map(Value::from));
    put(&mut m, "uid", pod.metadata.uid.clone().map(Value::from));
    put(
        &mut m,
        "phase",
        status.and_then(|s| s.phase.clone()).map(Value::from),
    );
    put(
        &mut m,
        "reason",
        status
            .and_then(|s| s.reason.as_deref())
            .map(|r| json!(bounded(r, truncated))),
    );
    put(
        &mut m,
        "deletion_timestamp",
        pod.metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| json!(t.0.to_string())),
    );
    if !conditions.is_empty() {
        m.insert(
            "conditions".into(),
            Value::Array(cap(conditions, MAX_CONDITIONS, truncated)),
        );
    }
    Value::Object(m)
}

/// The failing container: a failed or waiting init container first, else the task's.
fn container_part(pod: &Pod, truncated: &mut bool) -> Option<Value> {
    let status = pod.status.as_ref()?;
    let failing = |s: &&ContainerStatus| {
        let st = s.state.as_ref();
        st.and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0 || t.signal.unwrap_or(0) > 0)
            || st.and_then(|st| st.waiting.as_ref()).is_some_and(|w| {
                !matches!(
                    w.reason.as_deref(),
                    None | Some("PodInitializing" | "ContainerCreating")
                )
            })
    };
    let (kind, s) = status
        .init_container_statuses
        .iter()
        .flatten()
        .find(failing)
        .map(|s| ("init", s))
        .or_else(|| {
            status
                .container_statuses
                .iter()
                .flatten()
                .find(|c| {
                    c.name == TASK_CONTAINER
                        && (failing(c)
                            || c.state.as_ref().is_some_and(|st| st.terminated.is_some()))
                })
                .map(|s| ("regular", s))
        })?;
    let mut m = Map::new();
    m.insert("kind".into(), json!(kind));
    m.insert("name".into(), json!(s.name));
    let st = s.state.as_ref()?;
    if let Some(t) = &st.terminated {
        m.insert("state".into(), json!("terminated"));
        put(
            &mut m,
            "termination_reason",
            t.reason.as_deref().map(|r| json!(bounded(r, truncated))),
        );
        m.insert("raw_exit_code".into(), json!(t.exit_code));
        let signal = t.signal.filter(|s| *s > 0);
        m.insert(
            "normalized_exit_code".into(),
            json!(signal.map_or(i64::from(t.exit_code), |s| 128 + i64::from(s))),
        );
        put(&mut m, "signal", signal.map(Value::from));
        put(
            &mut m,
            "started_at",
            t.started_at.as_ref().map(|t| json!(t.0.to_string())),
        );
        put(
            &mut m,
            "finished_at",
            t.finished_at.as_ref().map(|t| json!(t.0.to_string())),
        );
    } else if let Some(w) = &st.waiting {
        m.insert("state".into(), json!("waiting"));
        put(
            &mut m,
            "waiting_reason",
            w.reason.as_deref().map(|r| json!(bounded(r, truncated))),
        );
    } else {
        return None;
    }
    Some(Value::Object(m))
}

fn events_part(events: &[Event], truncated: &mut bool) -> Vec<Value> {
    let last = |e: &Event| {
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let mut kept: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") || e.reason.as_deref() == Some("Killing"))
        .collect();
    kept.sort_by_key(|e| std::cmp::Reverse(last(e)));
    let out: Vec<Value> = kept
        .iter()
        .map(|e| {
            let mut m = Map::new();
            put(
                &mut m,
                "type",
                e.type_.as_deref().map(|t| json!(bounded(t, truncated))),
            );
            put(
                &mut m,
                "reason",
                e.reason.as_deref().map(|r| json!(bounded(r, truncated))),
            );
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .filter(|c| *c != 0);
            put(&mut m, "count", count.map(Value::from));
            let first = e
                .first_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            put(
                &mut m,
                "first_observed_at",
                first.map(|t| json!(t.to_string())),
            );
            put(
                &mut m,
                "last_observed_at",
                last(e).map(|t| json!(t.to_string())),
            );
            Value::Object(m)
        })
        .collect();
    cap(out, MAX_EVENTS, truncated)
}

/// The `failure_details` object (`{"kubernetes": {...}}`) for what was seen.
pub fn details(
    job: Option<&Job>,
    pod: Option<&Pod>,
    events: &[Event],
    source: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let mut truncated = false;
    let mut k = Map::new();
    k.insert("schema_version".into(), json!(1));
    k.insert("observation_source".into(), json!(source));
    k.insert(
        "observed_at".into(),
        json!(now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
    );
    put(&mut k, "job", job.map(|j| job_part(j, &mut truncated)));
    put(&mut k, "pod", pod.map(|p| pod_part(p, &mut truncated)));
    put(
        &mut k,
        "container",
        pod.and_then(|p| container_part(p, &mut truncated)),
    );
    let events = events_part(events, &mut truncated);
    if !events.is_empty() {
        k.insert("events".into(), Value::Array(events));
    }
    if truncated {
        k.insert("truncated".into(), json!(true));
    }
    json!({ "kubernetes": k })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-06T10:15:03.123456789Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default()
    }

    #[test]
    fn an_oom_killed_task_is_described_as_the_go_worker_does() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "berth-t-1", "uid": "j-uid"},
            "status": {"conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "no messages"},
                {"type": "Suspended", "status": "False"}]}
        }))
        .unwrap_or_default();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "berth-t-1-x7k2p", "uid": "p-uid", "namespace": "secret-ns"},
            "spec": {"nodeName": "node-a", "containers": []},
            "status": {"phase": "Failed", "message": "no messages", "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodFailed", "message": "no"}],
              "containerStatuses": [{"name": "task", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "no"}}}]}
        }))
        .unwrap_or_default();
        let events: Vec<Event> = [
            json!({"metadata": {"name": "a"}, "involvedObject": {}, "type": "Normal", "reason": "Scheduled", "message": "x"}),
            json!({"metadata": {"name": "b"}, "involvedObject": {}, "type": "Normal", "reason": "Killing", "count": 1, "message": "x"}),
        ]
        .into_iter()
        .filter_map(|e| serde_json::from_value(e).ok())
        .collect();
        let d = details(Some(&job), Some(&pod), &events, "pod_watch", at());
        let k = &d["kubernetes"];
        assert_eq!(k["schema_version"], 1);
        assert_eq!(k["observation_source"], "pod_watch");
        assert_eq!(k["observed_at"], "2026-12-06T10:15:03.123456789Z");
        assert_eq!(
            k["job"]["conditions"].as_array().map(Vec::len),
            Some(1),
            "Complete, Failed, FailureTarget only"
        );
        assert_eq!(k["pod"]["phase"], "Failed");
        assert_eq!(
            k["container"],
            json!({"kind": "regular", "name": "task", "state": "terminated", "termination_reason": "OOMKilled",
                   "raw_exit_code": 137, "normalized_exit_code": 137})
        );
        assert_eq!(
            k["events"].as_array().map(Vec::len),
            Some(1),
            "Warnings and Killing only"
        );
        assert!(k.get("truncated").is_none());
        let text = d.to_string();
        for private in ["no messages", "secret-ns", "node-a", "\"x\""] {
            assert!(!text.contains(private), "{private} leaked into {text}");
        }
    }

    #[test]
    fn long_reasons_and_many_events_are_cut_and_flagged() {
        let long = "é".repeat(200);
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": long}}),
        )
        .unwrap_or_default();
        let events: Vec<Event> = (0..12)
            .filter_map(|i| {
                serde_json::from_value(
                    json!({"metadata": {"name": format!("e{i}")}, "involvedObject": {},
                    "type": "Warning", "reason": "BackOff", "count": i}),
                )
                .ok()
            })
            .collect();
        let d = details(None, Some(&pod), &events, "safety_poll", at());
        let k = &d["kubernetes"];
        let reason = k["pod"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.len() <= MAX_REASON && reason.len() > 250,
            "{}",
            reason.len()
        );
        assert_eq!(k["events"].as_array().map(Vec::len), Some(MAX_EVENTS));
        assert_eq!(k["truncated"], true);
    }
}
