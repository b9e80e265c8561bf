//! The JSON HTTP API for people and scripts.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::state::{CancelError, CancelScope, SubmitRequest};
use super::{ControlPlane, WS_PATH};

pub(super) fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/", get(index))
        .route(WS_PATH, get(super::ws::upgrade))
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/tasks/{id}/wait", get(wait))
        .route("/v1/tasks/{id}/transcript", get(transcript))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/retry", post(retry))
        .route(
            "/v1/tasks/{id}/debug-archive",
            post(super::archives::request),
        )
        .route("/v1/debug-archives", get(super::archives::list))
        .route(
            super::archives::UPLOAD_ROUTE,
            axum::routing::put(super::archives::upload).layer(
                axum::extract::DefaultBodyLimit::max(super::archives::MAX_UPLOAD),
            ),
        )
        .route(super::events::API_PATH, post(super::events::post))
        .route(
            super::task_logs::IDENTITY_PATH,
            post(super::task_logs::identity),
        )
        .route(super::task_logs::LOGS_PATH, post(super::task_logs::logs))
        .route("/v1/tasks/{id}/logs", get(super::task_logs::list))
        .route("/v1/workers", get(workers))
        .route("/v1/workers/{id}/drain", post(drain))
        .route("/v1/workers/{id}/resume", post(resume))
        .route(super::environments::API_PATH, get(super::environments::get))
        .route(
            "/v1/environments/{id}",
            axum::routing::put(super::environments::put),
        )
        .with_state(cp)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn index(State(cp): State<ControlPlane>) -> Json<serde_json::Value> {
    Json(json!({
        "service": "berth embedded control plane",
        "worker_endpoint": cp.ws_url(),
        "endpoints": [
            "POST /v1/tasks", "GET /v1/tasks", "GET /v1/tasks/{id}",
            "GET /v1/tasks/{id}/wait?timeout_secs=N", "GET /v1/tasks/{id}/transcript?follow=true&format=raw|jsonl",
            "POST /v1/tasks/{id}/cancel[?execution_id=E|?scope=run]", "POST /v1/tasks/{id}/retry",
            "POST /v1/tasks/{id}/debug-archive[?execution_id=E&max_bytes=N&ttl_secs=S]", "GET /v1/debug-archives",
            "GET /v1/workers",
            "PUT /v1/environments/{id}", "GET /api/v1/environments/{id} (workers; bearer key)",
            "POST /api/v1/agent/runs/{id}/client-events (workers; the run's tokens)"
        ]
    }))
}

async fn submit(
    State(cp): State<ControlPlane>,
    body: Result<Json<SubmitRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid task: {e}")),
    };
    if req.command.is_empty() && req.sidecar_image.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "a task needs a command (berth/1) or a sidecar_image holding the Oz agent",
        );
    }
    let rec = cp.submit(req);
    (StatusCode::CREATED, Json(rec)).into_response()
}

async fn list(State(cp): State<ControlPlane>) -> Response {
    Json(cp.tasks()).into_response()
}

async fn task(State(cp): State<ControlPlane>, Path(id): Path<String>) -> Response {
    match cp.task(&id) {
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no task {id}")),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    timeout_secs: Option<u64>,
}

async fn wait(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    let timeout = Duration::from_secs(q.timeout_secs.unwrap_or(30).min(600));
    match cp.wait(&id, timeout).await {
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no task {id}")),
    }
}

#[derive(Deserialize)]
struct CancelQuery {
    /// One execution (default: the current one).
    #[serde(default)]
    execution_id: Option<String>,
    /// `run`: every execution, the worker told only the run's id.
    #[serde(default)]
    scope: Option<String>,
}

async fn cancel(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<CancelQuery>,
) -> Response {
    let scope = match (q.scope.as_deref(), q.execution_id) {
        (Some("run"), None) => CancelScope::Run,
        (None, Some(e)) => CancelScope::Execution(e),
        (None, None) => CancelScope::Current,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "use either ?execution_id=E (one execution) or ?scope=run (every execution), or neither (the current one)",
            );
        }
    };
    match cp.cancel_scoped(&id, scope) {
        Ok(()) => (StatusCode::ACCEPTED, Json(cp.task(&id))).into_response(),
        Err(CancelError::NotFound) => error(StatusCode::NOT_FOUND, format!("no task {id}")),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn retry(State(cp): State<ControlPlane>, Path(id): Path<String>) -> Response {
    match cp.retry(&id) {
        Ok(rec) => (StatusCode::CREATED, Json(rec)).into_response(),
        Err(_) => error(StatusCode::NOT_FOUND, format!("no task {id}")),
    }
}

async fn drain(State(cp): State<ControlPlane>, Path(id): Path<String>) -> Response {
    cp.set_draining(&id, true);
    StatusCode::ACCEPTED.into_response()
}

async fn resume(State(cp): State<ControlPlane>, Path(id): Path<String>) -> Response {
    cp.set_draining(&id, false);
    StatusCode::ACCEPTED.into_response()
}

async fn workers(State(cp): State<ControlPlane>) -> Response {
    Json(cp.workers()).into_response()
}

#[derive(Deserialize)]
struct TranscriptQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    format: Option<String>,
}

/// One line of the `jsonl` transcript format.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct TranscriptLine {
    /// Offset of the first byte.
    pub offset: u64,
    pub stream: crate::protocol::Stream,
    /// Bytes, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Bytes, base64, otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl TranscriptLine {
    /// A line for `bytes` at `offset`: as text when UTF-8, else base64.
    pub fn new(offset: u64, stream: crate::protocol::Stream, bytes: Vec<u8>) -> Self {
        let (data, data_b64) = match String::from_utf8(bytes) {
            Ok(t) => (Some(t), None),
            Err(e) => {
                use base64::Engine;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
                )
            }
        };
        TranscriptLine {
            offset,
            stream,
            data,
            data_b64,
        }
    }
}

fn render(runs: Vec<super::Run>, jsonl: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, stream, bytes) in runs {
        if jsonl {
            let line = TranscriptLine::new(offset, stream, bytes);
            out.extend(serde_json::to_vec(&line).unwrap_or_default());
            out.push(b'\n');
        } else {
            out.extend(bytes);
        }
    }
    out
}

async fn transcript(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(q): Query<TranscriptQuery>,
) -> Response {
    let jsonl = q.format.as_deref() == Some("jsonl");
    let content_type = if jsonl {
        "application/x-ndjson"
    } else {
        "application/octet-stream"
    };
    let Some((runs, _)) = cp.transcript_since(&id, 0) else {
        return error(StatusCode::NOT_FOUND, format!("no task {id}"));
    };
    if !q.follow {
        return (
            [(axum::http::header::CONTENT_TYPE, content_type)],
            render(runs, jsonl),
        )
            .into_response();
    }
    // Streams until the task has ended and its whole transcript is stored.
    let changes = cp.changes();
    let stream = futures_util::stream::unfold(
        (cp, id, 0u64, changes, false),
        move |(cp, id, from, mut changes, done)| async move {
            if done {
                return None;
            }
            loop {
                let (runs, complete) = cp.transcript_since(&id, from)?;
                let next = runs.last().map_or(from, |(o, _, b)| o + b.len() as u64);
                if !runs.is_empty() || complete {
                    let body = render(runs, jsonl);
                    return Some((
                        Ok::<_, std::io::Error>(body),
                        (cp, id, next, changes, complete),
                    ));
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
