//! The environments API of the embedded control plane: `GET /api/v1/environments/{id}` for
//! workers (bearer key, `ETag` / `If-None-Match`), `PUT /v1/environments/{id}` to define one.
//! An outage switch makes the API answer 503, so tests can exercise a worker's cached copy.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ControlPlane;

/// Path template of the worker-facing endpoint (`{id}` is the environment id).
pub const API_PATH: &str = "/api/v1/environments/{id}";

/// Defined environments and request counters.
#[derive(Debug, Default)]
pub(super) struct Store {
    defs: HashMap<String, (serde_json::Value, u64)>,
    version: u64,
    down: bool,
    /// GETs answered, by status code.
    pub(super) answered: HashMap<u16, u64>,
}

impl Store {
    pub(super) fn put(&mut self, id: &str, def: serde_json::Value) {
        self.version += 1;
        self.defs.insert(id.to_string(), (def, self.version));
    }

    pub(super) fn set_down(&mut self, down: bool) {
        self.down = down;
    }
}

fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

pub(super) async fn get(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let authorized = auth == format!("Bearer {}", cp.shared.opts.api_key);
    let mut store = cp.environments();
    let (status, resp) = if !authorized {
        (StatusCode::UNAUTHORIZED, None)
    } else if store.down {
        (StatusCode::SERVICE_UNAVAILABLE, None)
    } else {
        match store.defs.get(&id) {
            None => (StatusCode::NOT_FOUND, None),
            Some((def, v)) => {
                let tag = etag(*v);
                let same = headers
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t == tag);
                if same {
                    (StatusCode::NOT_MODIFIED, Some((tag, None)))
                } else {
                    (StatusCode::OK, Some((tag, Some(def.clone()))))
                }
            }
        }
    };
    *store.answered.entry(status.as_u16()).or_default() += 1;
    drop(store);
    match resp {
        Some((tag, Some(def))) => (status, [(header::ETAG, tag)], Json(def)).into_response(),
        Some((tag, None)) => (status, [(header::ETAG, tag)]).into_response(),
        None => status.into_response(),
    }
}

pub(super) async fn put(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Json(def): Json<serde_json::Value>,
) -> Response {
    cp.put_environment(&id, def);
    StatusCode::NO_CONTENT.into_response()
}
