//! The local API for monitoring and people (`api.listen`): `/healthz`, `/readyz`, `/metrics`,
//! `/v1/status`, `/v1/tasks`, and the mutating `POST /v1/drain` and `POST /v1/resume`.
//!
//! Reading is open to whoever reaches the address. Mutating is refused unless the request came
//! over the Unix socket (mode 0660, owned by `api.socket_group`: file permissions are the
//! access control) or carries `Authorization: Bearer <token>` with the admin token berth keeps
//! in `state_dir/admin-token` (mode 0600, created at start-up).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::shedding::{Admission, Answering, ConnId, Registry, ShedLog, Table, TrackedBody};
use crate::admin::status::Live;
use crate::config::Listen;
use crate::supervisor::Command;

/// File under `state_dir` holding the admin token.
pub const TOKEN_FILE: &str = "admin-token";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The address or socket could not be bound.
    #[error("local API: cannot listen on {addr}: {reason} (change api.listen, or set it to off)")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// The admin token could not be created or read.
    #[error("local API: admin token {path}: {reason} (check permissions under state_dir)")]
    Token {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

#[derive(Clone)]
struct Ctx {
    live: Arc<Live>,
    commands: mpsc::Sender<Command>,
    token: Arc<String>,
    /// Requests arrive over the Unix socket: already authorised by its permissions.
    trusted: bool,
}

/// Reads the admin token, creating it (0600) on first use.
pub fn admin_token(state_dir: &Path) -> Result<String, ApiError> {
    let path = state_dir.join(TOKEN_FILE);
    let err = |reason: String| ApiError::Token {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    crate::private::write_atomic(&path, token.as_bytes()).map_err(|e| err(e.to_string()))?;
    Ok(token)
}

fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/tasks", get(tasks))
        .route("/v1/tasks/{id}/transcript", get(transcript))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/history", get(history))
        .route("/v1/drain", post(drain))
        .route("/v1/resume", post(resume))
        .with_state(ctx)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(c): State<Ctx>) -> Response {
    match c.live.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(c): State<Ctx>) -> Response {
    let body = c.live.metrics.render(&c.live.gauges());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn status(State(c): State<Ctx>) -> Json<crate::admin::status::Status> {
    Json(c.live.status())
}

async fn tasks(State(c): State<Ctx>) -> Json<Vec<crate::admin::status::TaskRow>> {
    Json(c.live.status().tasks)
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// Recent executions from the journal (no secrets: ids, states, exit codes, images).
async fn history(
    State(c): State<Ctx>,
    axum::extract::Query(q): axum::extract::Query<Limit>,
) -> Response {
    let journal = c.live.journal.clone();
    let limit = q.limit.unwrap_or(crate::admin::history::DEFAULT_LIMIT);
    let read = tokio::task::spawn_blocking(move || journal.all()).await;
    match read {
        Ok(Ok(records)) => {
            let now = chrono::Utc::now().timestamp_millis();
            Json(crate::admin::history::recent(&records, now, limit)).into_response()
        }
        Ok(Err(e)) => error_json(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error_json(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error_json(status: StatusCode, error: String) -> Response {
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

#[derive(serde::Deserialize)]
struct Execution {
    execution_id: Option<String>,
}

/// What `POST /v1/tasks/{id}/cancel` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cancelled {
    pub task_id: String,
    /// The executions asked to stop.
    pub execution_ids: Vec<String>,
}

/// Stops a running task (admin, like drain). 404 when none of its executions runs here.
async fn cancel(
    State(c): State<Ctx>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<Execution>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&c, &headers) {
        return refused();
    }
    let named = |t: &crate::supervisor::TaskView| {
        t.task_id == id
            && q.execution_id
                .as_deref()
                .is_none_or(|e| e == t.execution_id)
    };
    let running: Vec<String> = c
        .live
        .slots
        .borrow()
        .tasks
        .iter()
        .filter(|t| named(t) && t.state != "delivering")
        .map(|t| t.execution_id.clone())
        .collect();
    if running.is_empty() {
        return error_json(
            StatusCode::NOT_FOUND,
            format!("task {id} is not running on this worker (berth tasks lists what ran here)"),
        );
    }
    let command = Command::Cancel {
        task_id: id.clone(),
        execution_id: q.execution_id.clone(),
    };
    if c.commands.send(command).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "worker is stopping\n").into_response();
    }
    Json(Cancelled {
        task_id: id,
        execution_ids: running,
    })
    .into_response()
}

#[derive(serde::Deserialize)]
struct From {
    #[serde(default)]
    from: u64,
    /// One execution of the run (default: its latest).
    #[serde(default)]
    execution_id: Option<String>,
}

/// Transcripts are task output: admin only (socket or token), like drain.
async fn transcript(
    State(c): State<Ctx>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<From>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&c, &headers) {
        return refused();
    }
    match c.live.transcript(&id, q.execution_id.as_deref(), q.from) {
        Some(part) => Json(part).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": match &q.execution_id {
                    Some(e) => format!("no transcript for execution {e} of task {id} on this worker (finished transcripts are kept for transcript.retention)"),
                    None => format!("no transcript for task {id} on this worker (finished transcripts are kept for transcript.retention)"),
                }
            })),
        )
            .into_response(),
    }
}

fn authorised(c: &Ctx, headers: &HeaderMap) -> bool {
    if c.trusted {
        return true;
    }
    let want = format!("Bearer {}", c.token);
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // Length first, then every byte: no early exit on the first difference.
        .is_some_and(|got| {
            got.len() == want.len()
                && got
                    .bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({
            "error": "drain, resume, cancel and transcripts need the Unix socket (api.listen: /path) or the admin token: Authorization: Bearer $(cat <state_dir>/admin-token)"
        })),
    )
        .into_response()
}

async fn set_draining(c: Ctx, headers: HeaderMap, drain: bool) -> Response {
    if !authorised(&c, &headers) {
        return refused();
    }
    let command = if drain {
        Command::Drain
    } else {
        Command::Resume
    };
    if c.commands.send(command).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "worker is stopping\n").into_response();
    }
    info!(drain, "drain state changed through the local API");
    // The supervisor applies it on its next turn; report the state once it shows.
    let mut slots = c.live.slots.clone();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        slots.wait_for(|s| s.draining == drain),
    )
    .await;
    Json(c.live.status()).into_response()
}

async fn drain(State(c): State<Ctx>, headers: HeaderMap) -> Response {
    set_draining(c, headers, true).await
}

async fn resume(State(c): State<Ctx>, headers: HeaderMap) -> Response {
    set_draining(c, headers, false).await
}

/// A bound, not yet serving, local API (bound at start-up so a taken port fails fast).
pub struct Bound {
    listener: Listener,
    token: Arc<String>,
    /// What it listens on (`127.0.0.1:9464`, or the socket path).
    pub address: String,
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds `listen` (restricting a Unix socket to 0660 and `socket_group`) and prepares the
/// admin token under `state_dir`.
pub async fn bind(
    listen: &Listen,
    socket_group: Option<&str>,
    state_dir: &Path,
) -> Result<Bound, ApiError> {
    let token = Arc::new(admin_token(state_dir)?);
    let bind = |reason: String| ApiError::Bind {
        addr: listen.to_string(),
        reason,
    };
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| bind(e.to_string()))?;
            let local = l.local_addr().map_err(|e| bind(e.to_string()))?;
            Ok(Bound {
                listener: Listener::Tcp(l),
                token,
                address: local.to_string(),
            })
        }
        Listen::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| bind(e.to_string()))?;
            }
            // A socket left by a killed process would make bind fail.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            let l = tokio::net::UnixListener::bind(path).map_err(|e| bind(e.to_string()))?;
            restrict_socket(path, socket_group).map_err(bind)?;
            Ok(Bound {
                listener: Listener::Unix(l, path.clone()),
                token,
                address: path.display().to_string(),
            })
        }
    }
}

impl Bound {
    /// Serves until `stop` (a Unix socket is removed afterwards), as a task of `tracker`.
    pub fn serve(
        self,
        tracker: &tokio_util::task::TaskTracker,
        live: Arc<Live>,
        commands: mpsc::Sender<Command>,
        stop: CancellationToken,
    ) {
        let address = self.address.clone();
        let metrics = live.metrics.clone();
        let ctx = |trusted| Ctx {
            live,
            commands,
            token: self.token,
            trusted,
        };
        match self.listener {
            Listener::Tcp(l) => spawn_server(tracker, l, router(ctx(false)), metrics, stop, None),
            Listener::Unix(l, path) => {
                spawn_server(tracker, l, router(ctx(true)), metrics, stop, Some(path))
            }
        }
        info!(%address, "local API listening");
    }
}

/// Longest time a client may take to send a request's headers, counted from the connection's
/// start or the end of the previous response: a connection that sends nothing (half-open,
/// idle keep-alive) is closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. At the cap the one that has waited longest for a request head is
/// closed to admit the next (see [`crate::admin::shedding`]).
pub const MAX_CONNECTIONS: usize = 256;
/// At most one warning about shed connections per this interval.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `app` on `l` until `stop`, then removes `socket` (a Unix socket file) if given.
/// Accepts continuously and keeps at most [`MAX_CONNECTIONS`], each bound by
/// [`HEADER_READ_TIMEOUT`], so a misbehaving local client can neither exhaust berth's file
/// descriptors nor, by holding every slot with idle sockets, keep a complete request out.
fn spawn_server<L>(
    tracker: &tokio_util::task::TaskTracker,
    mut l: L,
    app: Router,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
    socket: Option<PathBuf>,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tracker.spawn(async move {
        let registry: Arc<Registry> = Arc::new(Mutex::new(Table::new(MAX_CONNECTIONS)));
        let mut shed_log = ShedLog::new(SHED_LOG_INTERVAL);
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            // Counts held back by the log's interval are reported when it ends, even if the
            // flood has stopped by then.
            let report_at = shed_log
                .due(Instant::now())
                .map(tokio::time::Instant::from_std);
            let (io, _) = tokio::select! {
                c = l.accept() => c,
                _ = tokio::time::sleep_until(report_at.unwrap_or_else(tokio::time::Instant::now)),
                    if report_at.is_some() => {
                    report_shed(&mut shed_log);
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            let closer = CancellationToken::new();
            let admission = registry.lock().admit(closer.clone(), Instant::now());
            let id = match admission {
                Admission::Admitted { id, shed } => {
                    if let Some(oldest) = shed {
                        oldest.cancel();
                        metrics.api_connection_shed(true);
                        shed_log.count(true);
                        report_shed(&mut shed_log);
                    }
                    id
                }
                Admission::Refused => {
                    // Every slot is answering a request: dropping the socket closes it now.
                    drop(io);
                    metrics.api_connection_shed(false);
                    shed_log.count(false);
                    report_shed(&mut shed_log);
                    continue;
                }
            };
            let svc = tracked_service(app.clone(), registry.clone(), id);
            let stop = stop.clone();
            let registry = registry.clone();
            conns.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    // Shed to make room: it has no complete request, so dropping it loses nothing.
                    _ = closer.cancelled() => {}
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
                registry.lock().remove(id);
            });
        }
        conns.close();
        conns.wait().await;
        if let Some(p) = socket {
            let _ = std::fs::remove_file(p);
        }
    });
}

/// `app` for connection `id`, marking it answering from a complete request head until its
/// response body is written, so it is never shed mid-request.
fn tracked_service(
    app: Router,
    registry: Arc<Registry>,
    id: ConnId,
) -> impl hyper::service::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::http::Response<TrackedBody>,
    Error = std::convert::Infallible,
    Future: Send,
> {
    let inner = hyper_util::service::TowerToHyperService::new(app);
    hyper::service::service_fn(move |req| {
        let answering = Answering::begin(&registry, id);
        let response = hyper::service::Service::call(&inner, req);
        async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody::new(body, answering)))
        }
    })
}

/// Logs the connections shed since the last warning, when one is due.
fn report_shed(log: &mut ShedLog) {
    if let Some((idle, busy)) = log.take(Instant::now()) {
        if busy == 0 {
            warn!("local API: {idle} idle connections shed (cap {MAX_CONNECTIONS})");
        } else {
            warn!(
                "local API: {idle} idle connections shed and {busy} new ones refused with every connection answering a request (cap {MAX_CONNECTIONS})"
            );
        }
    }
}

/// Mode 0660 and, when configured, the group allowed to use the socket.
fn restrict_socket(path: &Path, group: Option<&str>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| e.to_string())?;
    if let Some(name) = group {
        let g = nix::unistd::Group::from_name(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("group {name:?} does not exist (api.socket_group)"))?;
        nix::unistd::chown(path, None, Some(g.gid)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
