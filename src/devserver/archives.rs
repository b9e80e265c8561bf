//! Debug archives on the embedded control plane (PROTOCOL §8.4): it asks the worker that ran
//! an execution for an archive, serves the presigned-style upload target itself (plain HTTP on
//! loopback, which §8.4 allows), and keeps each request with its acknowledgement and the
//! object it received. `POST /v1/tasks/{id}/debug-archive` asks; `GET /v1/debug-archives`
//! lists them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::ControlPlane;
use crate::protocol::{ArchiveAck, ArchiveRequest, ServerMessage};

/// Route of the upload target (`{id}`: the archive id).
pub(super) const UPLOAD_ROUTE: &str = "/v1/debug-archive-uploads/{id}";
/// Largest object the target stores (§8.4's 64 MiB, plus room for multipart framing).
pub(super) const MAX_UPLOAD: usize = (64 << 20) + (1 << 20);
/// Requests remembered.
const KEEP: usize = 256;

/// One archive this server asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiveRecord {
    pub archive_id: String,
    pub request_id: String,
    pub task_id: String,
    pub execution_id: String,
    pub worker_id: String,
    pub requested_at: DateTime<Utc>,
    /// The worker's acknowledgement, once received (the latest, when replayed).
    pub ack: Option<ArchiveAck>,
    /// Acknowledgements received (a replayed duplicate counts again).
    pub acks: u32,
    /// Bytes the upload target received.
    pub received_bytes: Option<u64>,
    /// Where the object was written (when the server keeps archives on disk).
    pub path: Option<PathBuf>,
}

/// The archives asked for, newest last, and what arrived for them.
#[derive(Debug, Default)]
pub(super) struct Archives {
    records: BTreeMap<String, ArchiveRecord>,
    order: Vec<String>,
    objects: BTreeMap<String, Vec<u8>>,
}

impl Archives {
    fn insert(&mut self, r: ArchiveRecord) {
        if self.order.len() >= KEEP {
            let old = self.order.remove(0);
            self.records.remove(&old);
            self.objects.remove(&old);
        }
        self.order.push(r.archive_id.clone());
        self.records.insert(r.archive_id.clone(), r);
    }
}

/// Options of one request (the defaults ask for the whole output, 10 minutes to live).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArchiveOptions {
    /// Execution (default: the task's current one).
    #[serde(default)]
    pub execution_id: Option<String>,
    /// `max_bytes` (default 64 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Seconds until `expires_at` (default 600).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

impl ControlPlane {
    /// Asks the worker that ran the task's execution for a debug archive uploaded to this
    /// server. `None` when the task or its worker is unknown or not connected.
    pub fn request_archive(&self, task_id: &str, o: &ArchiveOptions) -> Option<ArchiveRecord> {
        let (execution_id, worker_id) = {
            let s = self.state();
            let t = s.task(task_id)?;
            let e = match &o.execution_id {
                Some(id) => t.executions().find(|e| &e.execution_id == id)?,
                None => &t.current,
            };
            (e.execution_id.clone(), e.worker.clone()?)
        };
        let archive_id = format!("arc-{}", uuid::Uuid::new_v4().simple());
        let request_id = format!("req-{}", uuid::Uuid::new_v4().simple());
        let now = Utc::now();
        let expires = now + chrono::Duration::seconds(o.ttl_secs.unwrap_or(600));
        let data = json!({
            "protocol_version": 1, "request_id": request_id, "archive_id": archive_id,
            "collection_id": "dev", "run_id": task_id, "execution_id": execution_id,
            "requested_format": "application/x-ndjson",
            "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "max_bytes": o.max_bytes.unwrap_or(64 << 20),
            "content_transformer": {"kind": "noop", "version": 1},
            "upload_target": {"url": self.upload_url(&archive_id), "method": "PUT", "headers": {}},
        });
        let frame = ServerMessage::DebugArchiveLogsRequested(Box::new(ArchiveRequest::peek(
            &data.to_string(),
        )))
        .encode();
        if !self.send_raw(&worker_id, &frame) {
            return None;
        }
        let rec = ArchiveRecord {
            archive_id,
            request_id,
            task_id: task_id.to_string(),
            execution_id,
            worker_id,
            requested_at: now,
            ack: None,
            acks: 0,
            received_bytes: None,
            path: None,
        };
        self.shared.archives.lock().insert(rec.clone());
        self.bump();
        Some(rec)
    }

    /// The upload target URL of an archive.
    pub fn upload_url(&self, archive_id: &str) -> String {
        format!(
            "{}{}",
            self.http_url(),
            UPLOAD_ROUTE.replace("{id}", archive_id)
        )
    }

    /// Every archive asked for, oldest first.
    pub fn archives(&self) -> Vec<ArchiveRecord> {
        let a = self.shared.archives.lock();
        a.order
            .iter()
            .filter_map(|id| a.records.get(id).cloned())
            .collect()
    }

    /// The object received for an archive.
    pub fn archive_object(&self, archive_id: &str) -> Option<Vec<u8>> {
        self.shared.archives.lock().objects.get(archive_id).cloned()
    }

    /// Stores an acknowledgement (also for requests sent with `send_raw`).
    pub(super) fn archive_acked(&self, worker_id: &str, ack: ArchiveAck) {
        {
            let mut a = self.shared.archives.lock();
            match a.records.get_mut(&ack.archive_id) {
                Some(r) => {
                    r.ack = Some(ack.clone());
                    r.acks += 1;
                }
                None => a.insert(ArchiveRecord {
                    archive_id: ack.archive_id.clone(),
                    request_id: ack.request_id.clone(),
                    task_id: ack.run_id.clone(),
                    execution_id: ack.execution_id.clone(),
                    worker_id: worker_id.to_string(),
                    requested_at: Utc::now(),
                    ack: Some(ack.clone()),
                    acks: 1,
                    received_bytes: None,
                    path: None,
                }),
            }
        }
        let path = self
            .archives()
            .into_iter()
            .find(|r| r.archive_id == ack.archive_id)
            .and_then(|r| r.path);
        match (&ack.reason_code[..], path) {
            ("", Some(p)) => {
                info!(task_id = %ack.run_id, archive_id = %ack.archive_id, bytes = ?ack.bytes, path = %p.display(), "debug archive uploaded")
            }
            _ => {
                info!(task_id = %ack.run_id, archive_id = %ack.archive_id, outcome = %ack.outcome, reason = %ack.reason_code, "debug archive answered")
            }
        }
        self.bump();
    }

    fn received(&self, archive_id: &str, body: Vec<u8>) {
        let path = self.shared.opts.archive_dir.as_ref().and_then(|dir| {
            let p = dir.join(format!("{archive_id}.ndjson"));
            crate::private::create_dir(dir)
                .and_then(|()| crate::private::write(&p, &body))
                .map_err(|e| warn!(error = %e, "cannot keep a debug archive on disk"))
                .ok()
                .map(|()| p)
        });
        let mut a = self.shared.archives.lock();
        if let Some(r) = a.records.get_mut(archive_id) {
            r.received_bytes = Some(body.len() as u64);
            r.path = path;
        } else {
            // An object for a request sent some other way (tests with send_raw).
            a.insert(ArchiveRecord {
                archive_id: archive_id.to_string(),
                request_id: String::new(),
                task_id: String::new(),
                execution_id: String::new(),
                worker_id: String::new(),
                requested_at: Utc::now(),
                ack: None,
                acks: 0,
                received_bytes: Some(body.len() as u64),
                path,
            });
        }
        a.objects.insert(archive_id.to_string(), body);
        drop(a);
        self.bump();
    }
}

/// `PUT /v1/debug-archive-uploads/{id}`: the upload target.
pub(super) async fn upload(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if crate::protocol::check_id("archive_id", &id).is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    cp.received(&id, body.to_vec());
    StatusCode::OK.into_response()
}

/// `POST /v1/tasks/{id}/debug-archive[?execution_id=E&max_bytes=N&ttl_secs=S]`.
pub(super) async fn request(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    Query(o): Query<ArchiveOptions>,
) -> Response {
    match cp.request_archive(&id, &o) {
        Some(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no execution of task {id} on a connected worker")})),
        )
            .into_response(),
    }
}

/// `GET /v1/debug-archives`.
pub(super) async fn list(State(cp): State<ControlPlane>) -> Response {
    Json(cp.archives()).into_response()
}
