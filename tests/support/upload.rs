//! A presigned-style upload target for debug-archive tests: plain HTTP on loopback (PROTOCOL
//! §8.4 allows `http` to 127.*). It records every request (method, path, headers, body) and
//! answers from a script (statuses, a `Location`, a delay), then 200.

use std::collections::VecDeque;

use berth::devserver::ControlPlane;
use berth::devserver::state::TaskRecord;
use berth::protocol::ArchiveAck;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names (lowercase) and values, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            location: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    script: VecDeque<Answer>,
}

/// The target; stops when dropped.
pub struct UploadTarget {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

impl UploadTarget {
    pub async fn start() -> UploadTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let app = axum::Router::new()
            .fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let state = state.clone();
                    async move { answer(state, method, uri, headers, body).await }
                },
            )
            .layer(axum::extract::DefaultBodyLimit::max(80 << 20));
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        UploadTarget { addr, inner, stop }
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers for the next requests, in order (then 200).
    pub fn script(&self, answers: Vec<Answer>) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// What was received at `path`.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for UploadTarget {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    state: Arc<Mutex<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let next = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        });
        s.script.pop_front()
    };
    let a = next.unwrap_or(Answer::status(200));
    tokio::time::sleep(a.delay).await;
    let status = StatusCode::from_u16(a.status).unwrap();
    match a.location {
        Some(l) => (status, [("location", l)], "moved").into_response(),
        None => (status, "answer body the worker must not keep").into_response(),
    }
}

/// The parts of a `multipart/form-data` body: `(name, filename, content)` in order.
pub fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1).unwrap().trim();
    let delim = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    // Skip the preamble up to the first delimiter.
    let start = find(rest, &delim).unwrap();
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break; // the closing delimiter
        }
        rest = rest.strip_prefix(b"\r\n").unwrap();
        let head_end = find(rest, b"\r\n\r\n").unwrap();
        let head = String::from_utf8(rest[..head_end].to_vec()).unwrap();
        let content_start = head_end + 4;
        let mut next = delim.clone();
        next.splice(0..0, b"\r\n".iter().copied());
        let end = content_start + find(&rest[content_start..], &next).unwrap();
        let name = attr(&head, "name").unwrap();
        parts.push((
            name,
            attr(&head, "filename"),
            rest[content_start..end].to_vec(),
        ));
        rest = &rest[end + next.len()..];
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn attr(head: &str, key: &str) -> Option<String> {
    let pat = format!("; {key}=\"");
    let at = head.find(&pat)? + pat.len();
    let end = head[at..].find('"')? + at;
    Some(head[at..end].to_string())
}

/// A request frame; `data` fields override the defaults.
pub fn request(t: &TaskRecord, archive_id: &str, target: Value, over: Value) -> String {
    let expires = chrono::Utc::now() + chrono::Duration::minutes(5);
    let mut data = json!({
        "protocol_version": 1, "request_id": format!("req-{archive_id}"), "archive_id": archive_id,
        "collection_id": "col", "run_id": t.id, "execution_id": t.execution_id,
        "requested_format": "application/x-ndjson",
        "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "max_bytes": 1 << 20,
        "content_transformer": {"kind": "noop", "version": 1},
        "upload_target": target,
    });
    for (k, v) in over.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({"type": "debug_archive_logs_requested", "data": data}).to_string()
}

/// The acknowledgement of an archive, once the control plane has it.
pub async fn ack_of(cp: &ControlPlane, archive_id: &str) -> ArchiveAck {
    let find = || {
        cp.archives()
            .into_iter()
            .find(|r| r.archive_id == archive_id)
            .and_then(|r| r.ack)
    };
    super::until("the archive is acknowledged", || find().is_some()).await;
    find().unwrap()
}

/// No acknowledgement for `archive_id` within a few seconds.
pub async fn silent(cp: &ControlPlane, archive_id: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cp.archives().iter().all(|r| r.archive_id != archive_id),
        "the worker answered a request it does not own"
    );
}
