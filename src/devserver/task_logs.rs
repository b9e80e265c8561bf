//! `berth dev`'s side of task-log export (PROTOCOL §8.3): it can put `telemetry_collection`
//! in the assignments it hands out, answer the worker's GraphQL identity request (only with
//! the run's own tokens, as the Oz server would), and receive the OTLP/HTTP batches itself on
//! loopback, so a newcomer sees what a worker exports (`GET /v1/tasks/{id}/logs`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::ControlPlane;
use super::otlp::{ReceivedRecord, decode};
use super::state::{EventHeaders, SubmitRequest};
use crate::protocol::TelemetryCollection;

/// Where the identity mutation is answered (under the server root).
pub const IDENTITY_PATH: &str = "/graphql/v2";
/// Where the server's own collector takes batches (`{http}/otlp` is the endpoint).
pub const LOGS_PATH: &str = "/otlp/v1/logs";
/// Records kept per run; later ones are counted, not kept.
const KEPT_PER_RUN: usize = 100_000;
/// How long an issued token lives.
const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::hours(3);

/// Whether and where the server asks workers to export task logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TaskLogs {
    /// Assignments carry no `telemetry_collection` (unless a submit gives one).
    #[default]
    Off,
    /// To this server's own receiver.
    Own,
    /// To this collector endpoint (the server still answers the identity request).
    Endpoint(String),
}

/// Issued tokens and received records.
#[derive(Default)]
pub(super) struct Store {
    /// Token → run id.
    tokens: HashMap<String, String>,
    records: HashMap<String, Vec<ReceivedRecord>>,
    counts: HashMap<String, u64>,
}

/// Fills in a submit's `telemetry_collection` (and the run tokens export needs) when the
/// server is asked to and the submit gives none.
pub(super) fn fill(mode: &TaskLogs, http_url: &str, req: &mut SubmitRequest) {
    let endpoint = match mode {
        TaskLogs::Off => return,
        TaskLogs::Own => format!("{http_url}/otlp"),
        TaskLogs::Endpoint(e) => e.clone(),
    };
    if req.telemetry_collection.is_some() {
        return;
    }
    for k in ["WARP_API_KEY", "WARP_WORKLOAD_TOKEN"] {
        req.env
            .entry(k.to_string())
            .or_insert_with(|| format!("dev-{}", uuid::Uuid::new_v4().simple()));
    }
    req.telemetry_collection = Some(TelemetryCollection {
        endpoint,
        logging_enabled: true,
        tracing_enabled: false,
        bootstrap_token: None,
    });
}

fn text<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /graphql/v2`: the `WorkerLogToken` mutation, answered with a token for the run whose
/// own tokens the request carries.
pub(super) async fn identity(State(cp): State<ControlPlane>, h: HeaderMap) -> Response {
    let bearer = text(&h, header::AUTHORIZATION.as_str()).and_then(|a| a.strip_prefix("Bearer "));
    let Some(run) = text(&h, "x-warp-cloud-agent-id") else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let headers = EventHeaders {
        bearer,
        workload: text(&h, "x-warp-ambient-workload-token"),
        agent_id: Some(run),
    };
    if cp.state().check_run_tokens(run, headers).is_err() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let token = format!("dev-otel-{}", uuid::Uuid::new_v4().simple());
    cp.shared
        .task_logs
        .lock()
        .tokens
        .insert(token.clone(), run.to_string());
    let expires = (chrono::Utc::now() + TOKEN_LIFETIME).to_rfc3339();
    Json(serde_json::json!({"data": {"issueTaskIdentityToken": {
        "__typename": "IssueTaskIdentityTokenOutput", "token": token, "expiresAt": expires}}}))
    .into_response()
}

/// `POST /otlp/v1/logs`: a batch, with a token this server issued.
pub(super) async fn logs(State(cp): State<ControlPlane>, h: HeaderMap, body: Bytes) -> Response {
    let bearer = text(&h, header::AUTHORIZATION.as_str()).and_then(|a| a.strip_prefix("Bearer "));
    let mut store = cp.shared.task_logs.lock();
    let Some(run) = bearer.and_then(|t| store.tokens.get(t)).cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Ok(records) = decode(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // A token is for one run: records naming another are refused whole.
    if records.iter().any(|r| r.run_id != run) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let n = records.len();
    let total = {
        let c = store.counts.entry(run.clone()).or_default();
        *c += n as u64;
        *c
    };
    let kept = store.records.entry(run.clone()).or_default();
    let room = KEPT_PER_RUN.saturating_sub(kept.len());
    kept.extend(records.into_iter().take(room));
    info!(task_id = %run, records = n, total, "task logs received");
    StatusCode::OK.into_response()
}

/// `GET /v1/tasks/{id}/logs`: the records received for a run.
pub(super) async fn list(State(cp): State<ControlPlane>, Path(id): Path<String>) -> Response {
    Json(cp.task_logs(&id)).into_response()
}

impl ControlPlane {
    /// The task-log records received for run `id` (the first 100,000).
    pub fn task_logs(&self, id: &str) -> Vec<ReceivedRecord> {
        self.shared
            .task_logs
            .lock()
            .records
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filling_adds_telemetry_and_run_tokens_only_when_asked_and_absent() {
        let mut r = SubmitRequest::default();
        fill(&TaskLogs::Off, "http://h", &mut r);
        assert!(r.telemetry_collection.is_none() && r.env.is_empty());
        fill(&TaskLogs::Own, "http://h", &mut r);
        let t = r.telemetry_collection.clone().unwrap();
        assert_eq!(t.endpoint, "http://h/otlp");
        assert!(t.logging_enabled);
        assert!(r.env.contains_key("WARP_API_KEY") && r.env.contains_key("WARP_WORKLOAD_TOKEN"));
        // A submit's own telemetry and tokens are kept.
        let mut r = SubmitRequest::default();
        r.env.insert("WARP_API_KEY".into(), "mine".into());
        fill(&TaskLogs::Endpoint("https://c".into()), "http://h", &mut r);
        assert_eq!(r.env["WARP_API_KEY"], "mine");
        assert_eq!(r.telemetry_collection.unwrap().endpoint, "https://c");
    }
}
