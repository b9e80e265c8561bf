//! The setup-phase events endpoint of the embedded control plane (PROTOCOL §7):
//! `POST /api/v1/agent/runs/{id}/client-events`, authorised by the run's own tokens, stored
//! on the task and shown by `GET /v1/tasks/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ControlPlane;
use super::state::{ClientEvent, EventError, EventHeaders};

/// Path template (`{id}` is the run's task id).
pub const API_PATH: &str = "/api/v1/agent/runs/{id}/client-events";

/// The body as the Go worker sends it.
#[derive(Deserialize)]
pub(super) struct Body {
    event_uuid: String,
    event_name: String,
    timestamp: String,
    payload: Payload,
}

#[derive(Deserialize)]
pub(super) struct Payload {
    start_ts: String,
    finish_ts: String,
    latency_ms: u64,
    is_error: bool,
}

pub(super) async fn post(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Body>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid client event: {e}"),
            )
                .into_response();
        }
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = text(header::AUTHORIZATION.as_str()).and_then(|a| a.strip_prefix("Bearer "));
    let event = ClientEvent {
        event_uuid: b.event_uuid,
        event_name: b.event_name,
        timestamp: b.timestamp,
        start_ts: b.payload.start_ts,
        finish_ts: b.payload.finish_ts,
        latency_ms: b.payload.latency_ms,
        is_error: b.payload.is_error,
    };
    let headers = EventHeaders {
        bearer,
        workload: text("x-warp-ambient-workload-token"),
        agent_id: text("x-warp-cloud-agent-id"),
    };
    match cp.client_event(&id, headers, event) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ EventError::NotFound) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e @ EventError::Unauthorized) => {
            (StatusCode::UNAUTHORIZED, e.to_string()).into_response()
        }
    }
}
