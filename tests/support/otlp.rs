//! A loopback OTLP/HTTP logs receiver and GraphQL identity endpoint in one server, for the
//! task-log export tests (PROTOCOL §8.3). It decodes every batch with `prost` types declared
//! from the official field numbers ([`super::otlp_proto`]), checks the identity request's
//! headers and body, issues tokens, checks the collector's bearer token against them, and can
//! be scripted: identity failures, redirects (same origin or elsewhere), collector down.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::otlp_proto::{self, ExportLogsServiceRequest, Val};

/// The task env values the identity endpoint expects.
pub const API_KEY: &str = "warp-api-key-for-tests";
pub const WORKLOAD: &str = "workload-token-for-tests";

/// How the identity endpoint answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// A token valid for three hours.
    Issue,
    /// This HTTP status, no token.
    Fail(u16),
    /// 307 to this location (absolute or relative).
    Redirect(String),
}

/// One decoded record with its resource, and when it arrived.
#[derive(Debug, Clone)]
pub struct Rec {
    pub body: String,
    pub severity_number: i32,
    pub severity_text: String,
    pub attrs: Vec<(String, Val)>,
    pub resource: Vec<(String, Val)>,
    pub scope: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl Rec {
    /// A string attribute.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| match v {
                Val::Str(s) => Some(s.clone()),
                _ => None,
            })
    }

    /// Any attribute.
    pub fn value(&self, key: &str) -> Option<Val> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// A string resource attribute.
    pub fn resource(&self, key: &str) -> Option<String> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| match v {
                Val::Str(s) => Some(s.clone()),
                _ => None,
            })
    }
}

/// One identity request as received.
#[derive(Debug, Clone)]
pub struct IdentityRequest {
    pub path: String,
    /// The headers and body were exactly PROTOCOL §8.3's.
    pub valid: bool,
    pub task_id: String,
}

#[derive(Default)]
struct Inner {
    records: Vec<Rec>,
    batches: usize,
    /// Batches refused (down, or a bad token).
    refused: usize,
    /// Raw bodies, to search for unredacted bytes.
    raw: Vec<Vec<u8>>,
    identity: Vec<IdentityRequest>,
    mode: Option<Identity>,
    down: bool,
    tokens: Vec<String>,
    /// Any request at all (setup events included).
    requests: usize,
}

/// The receiver; stops serving when dropped.
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            inner: Arc::new(Mutex::new(Inner {
                mode: Some(Identity::Issue),
                ..Inner::default()
            })),
            addr,
            stop: CancellationToken::new(),
        };
        let app = axum::Router::new()
            .route("/otlp/v1/logs", post(logs))
            .route("/root/graphql/v2", post(identity))
            .route("/moved/graphql/v2", post(identity))
            .fallback(any_other)
            .with_state(r.clone_inner());
        let stop = r.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        r
    }

    fn clone_inner(&self) -> Shared {
        Shared {
            inner: self.inner.clone(),
        }
    }

    /// `telemetry_collection.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/otlp", self.addr)
    }

    /// `control_plane.server_root_url` (identity at `/root/graphql/v2`).
    pub fn root(&self) -> String {
        format!("http://{}/root", self.addr)
    }

    pub fn set_identity(&self, m: Identity) {
        self.inner.lock().mode = Some(m);
    }

    pub fn set_down(&self, down: bool) {
        self.inner.lock().down = down;
    }

    pub fn records(&self) -> Vec<Rec> {
        self.inner.lock().records.clone()
    }

    pub fn batches(&self) -> usize {
        self.inner.lock().batches
    }

    pub fn refused(&self) -> usize {
        self.inner.lock().refused
    }

    pub fn identity_requests(&self) -> Vec<IdentityRequest> {
        self.inner.lock().identity.clone()
    }

    /// Every request received, of any kind.
    pub fn requests(&self) -> usize {
        self.inner.lock().requests
    }

    /// Whether `needle` occurs in any raw batch body.
    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        self.inner
            .lock()
            .raw
            .iter()
            .any(|b| b.windows(needle.len()).any(|w| w == needle))
    }

    /// Records of one run.
    pub fn records_of(&self, run_id: &str) -> Vec<Rec> {
        self.records()
            .into_iter()
            .filter(|r| r.resource("run_id").as_deref() == Some(run_id))
            .collect()
    }
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
}

fn header_is(h: &HeaderMap, name: &str, want: &str) -> bool {
    h.get(name).and_then(|v| v.to_str().ok()) == Some(want)
}

async fn identity(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let b: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let task_id = h
        .get("x-warp-cloud-agent-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let valid = header_is(&h, "content-type", "application/json")
        && header_is(&h, "authorization", &format!("Bearer {API_KEY}"))
        && header_is(&h, "x-warp-ambient-workload-token", WORKLOAD)
        && !task_id.is_empty()
        && b["variables"]["input"]
            == serde_json::json!({"audience": "warp-cloud-agent-otel", "requestedDurationSeconds": 10800})
        && b["query"].as_str().is_some_and(|q| {
            q.starts_with("mutation WorkerLogToken($input: IssueTaskIdentityTokenInput!)")
                && q.contains("issueTaskIdentityToken(requestContext: {osContext: {}, clientContext: {}}, input: $input)")
        });
    let mut inner = s.inner.lock();
    inner.requests += 1;
    inner.identity.push(IdentityRequest {
        path: uri.path().to_string(),
        valid,
        task_id,
    });
    if !valid {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match inner.mode.clone().unwrap_or(Identity::Issue) {
        Identity::Fail(code) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Identity::Redirect(to) if uri.path() != "/moved/graphql/v2" => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
        _ => {
            let token = format!("otel-token-{}", uuid::Uuid::new_v4().simple());
            inner.tokens.push(token.clone());
            let expires = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
            axum::Json(serde_json::json!({"data": {"issueTaskIdentityToken": {
                "__typename": "IssueTaskIdentityTokenOutput", "token": token, "expiresAt": expires}}}))
            .into_response()
        }
    }
}

async fn logs(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let now = chrono::Utc::now();
    let mut inner = s.inner.lock();
    inner.requests += 1;
    let authorised = inner
        .tokens
        .iter()
        .any(|t| header_is(&h, "authorization", &format!("Bearer {t}")));
    if inner.down || !authorised || !header_is(&h, "content-type", "application/x-protobuf") {
        inner.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Ok(req) = ExportLogsServiceRequest::decode(body.as_ref()) else {
        inner.refused += 1;
        return StatusCode::BAD_REQUEST.into_response();
    };
    inner.batches += 1;
    inner.raw.push(body.to_vec());
    for rl in &req.resource_logs {
        let resource = rl
            .resource
            .as_ref()
            .map(|r| otlp_proto::attrs(&r.attributes))
            .unwrap_or_default();
        for sl in &rl.scope_logs {
            let scope = sl
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for r in &sl.log_records {
                inner.records.push(Rec {
                    body: otlp_proto::body(r).unwrap_or_default(),
                    severity_number: r.severity_number,
                    severity_text: r.severity_text.clone(),
                    attrs: otlp_proto::attrs(&r.attributes),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    received_at: now,
                });
            }
        }
    }
    StatusCode::OK.into_response()
}

async fn any_other(State(s): State<Shared>) -> StatusCode {
    s.inner.lock().requests += 1;
    StatusCode::NOT_FOUND
}
