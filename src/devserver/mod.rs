//! The embedded control plane behind `berth dev`: a real server for the server side of
//! PROTOCOL.md (WebSocket endpoint for workers, in-memory queue, requeue on rejection) plus a
//! small JSON HTTP API. The CLI, the integration tests and the benchmarks all use this one.

mod archives;
pub use archives::{ArchiveOptions, ArchiveRecord};
mod encode;
mod environments;
mod events;
mod http;
pub use http::TranscriptLine;
pub mod execution;
pub mod otlp;
pub mod state;
mod stored_transcript;
mod task;
mod task_logs;
mod task_state;
pub use task_logs::TaskLogs;
mod workers;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use state::{Outgoing, State, SubmitRequest, TaskRecord};

/// A run of transcript bytes of one stream: `(offset, stream, bytes)`.
pub type Run = (u64, crate::protocol::Stream, Vec<u8>);

/// Path of the worker WebSocket endpoint (the Oz path).
pub const WS_PATH: &str = "/api/v1/selfhosted/worker/ws";

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Bearer key workers must present.
    pub api_key: String,
    /// Answer the berth/1 offer (false emulates a plain oz/1 server).
    pub accept_berth: bool,
    /// Largest inbound message.
    pub max_message_size: usize,
    /// Serve `wss://`/`https://` with this TLS configuration (may require client certificates).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Ask workers to export task logs (PROTOCOL §8.3), and where.
    pub task_logs: TaskLogs,
    /// Where uploaded debug archives are written (`None`: kept in memory only).
    pub archive_dir: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            api_key: String::new(),
            accept_berth: true,
            max_message_size: 16 << 20,
            tls: None,
            task_logs: TaskLogs::Off,
            archive_dir: None,
        }
    }
}

fn spawn_serve<L>(listener: L, app: axum::Router, stop: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            warn!(error = %e, "control plane server stopped with an error");
        }
    });
}

/// A TCP listener that terminates TLS; failed handshakes are logged and skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Handshakes run inline: this is a development server, not a front door.
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => warn!(%peer, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another berth dev running? pick another --listen)"
    )]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

struct Shared {
    opts: ServerOptions,
    state: Mutex<State>,
    conns: Mutex<HashMap<u64, mpsc::Sender<String>>>,
    changed: watch::Sender<u64>,
    next_conn: std::sync::atomic::AtomicU64,
    environments: Mutex<environments::Store>,
    /// The last text frames workers sent, as received: `(worker id, frame)`, at most
    /// [`FRAMES_KEPT`] of them and [`FRAMES_BYTES`] in all.
    frames: Mutex<(std::collections::VecDeque<(String, String)>, usize)>,
    task_logs: Mutex<task_logs::Store>,
    archives: Mutex<archives::Archives>,
}

/// Worker frames kept for [`ControlPlane::frames_from`].
pub const FRAMES_KEPT: usize = 4096;
/// Bytes of worker frames kept for [`ControlPlane::frames_from`] (transcript chunks are large).
pub const FRAMES_BYTES: usize = 4 << 20;

/// A handle on the running control plane (cheap to clone).
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl ControlPlane {
    /// Binds `addr` and serves until [`ControlPlane::shutdown`].
    pub async fn start(addr: SocketAddr, opts: ServerOptions) -> Result<Self, ServerError> {
        Self::start_with(addr, opts, State::default()).await
    }

    /// Like [`ControlPlane::start`], serving a state kept from an earlier run.
    pub async fn start_with(
        addr: SocketAddr,
        opts: ServerOptions,
        state: State,
    ) -> Result<Self, ServerError> {
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            opts,
            state: Mutex::new(state),
            conns: Mutex::new(HashMap::new()),
            changed,
            next_conn: std::sync::atomic::AtomicU64::new(0),
            environments: Mutex::new(environments::Store::default()),
            frames: Mutex::new((std::collections::VecDeque::new(), 0)),
            task_logs: Mutex::new(task_logs::Store::default()),
            archives: Mutex::new(archives::Archives::default()),
        });
        Self::listen(addr, shared).await
    }

    /// Simulates a restart of the control-plane process with durable state: every worker
    /// connection drops and the listener goes away, then a new one serves the same state on
    /// the same address.
    pub async fn restart(&self, down_for: Duration) -> Result<Self, ServerError> {
        self.shutdown();
        tokio::time::sleep(down_for).await;
        let mut last = None;
        for _ in 0..50 {
            match Self::listen(self.addr, self.shared.clone()).await {
                Ok(cp) => return Ok(cp),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or(ServerError::Bind {
            addr: self.addr,
            source: std::io::Error::other("cannot rebind"),
        }))
    }

    async fn listen(addr: SocketAddr, shared: Arc<Shared>) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let cp = ControlPlane {
            shared: shared.clone(),
            addr: local,
            stop: CancellationToken::new(),
        };
        // Workers that rejected work get offers again after a while.
        let retry = cp.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let (out, version) = {
                            let mut s = retry.state();
                            (s.retry_rejected(chrono::Utc::now()), s.version)
                        };
                        if !out.is_empty() {
                            retry.deliver(out);
                            retry.shared.changed.send_replace(version);
                        }
                    }
                    _ = retry.stop.cancelled() => return,
                }
            }
        });
        let app = http::router(cp.clone());
        let stop = cp.stop.clone();
        match shared.opts.tls.clone() {
            None => spawn_serve(listener, app, stop),
            Some(cfg) => spawn_serve(
                TlsListener {
                    tcp: listener,
                    acceptor: tokio_rustls::TlsAcceptor::from(cfg),
                },
                app,
                stop,
            ),
        }
        info!(%local, "control plane listening");
        Ok(cp)
    }

    fn environments(&self) -> MutexGuard<'_, environments::Store> {
        self.shared.environments.lock()
    }

    /// Defines (or replaces, with a new ETag) environment `id` served to workers.
    pub fn put_environment(&self, id: &str, def: serde_json::Value) {
        self.environments().put(id, def);
    }

    /// Makes the environments API answer 503 (an outage) or serve again.
    pub fn set_environments_down(&self, down: bool) {
        self.environments().set_down(down);
    }

    /// How many environment GETs were answered with `status`.
    pub fn environment_requests(&self, status: u16) -> u64 {
        self.environments()
            .answered
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// The `control_plane.environments_url` template for workers of this server.
    pub fn environments_url(&self) -> String {
        format!("{}{}", self.http_url(), environments::API_PATH)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn tls(&self) -> bool {
        self.shared.opts.tls.is_some()
    }

    /// `ws://addr/api/v1/selfhosted/worker/ws` (`wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls() { "wss" } else { "ws" };
        format!("{scheme}://{}{WS_PATH}", self.addr)
    }

    /// `http://addr` (`https://` with TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// What to keep for the next run (see [`State::save`]).
    pub fn saved(&self) -> state::Saved {
        self.state().save()
    }

    /// Stops listening and drops every worker connection.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Transcript runs of a task from `from` on, and whether the transcript is complete.
    pub fn transcript_since(&self, id: &str, from: u64) -> Option<(Vec<Run>, bool)> {
        let s = self.state();
        let t = s.task(id)?;
        let runs = s
            .transcript(id)
            .map(|tr| {
                tr.since(from)
                    .into_iter()
                    .map(|(o, st, b)| (o, st, b.to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Some((runs, t.complete()))
    }

    /// One execution's whole transcript.
    pub fn execution_transcript(&self, execution_id: &str) -> Option<Vec<u8>> {
        self.state()
            .execution_transcript(execution_id)
            .map(|t| t.bytes.clone())
    }

    /// A task's whole transcript.
    pub fn transcript(&self, id: &str) -> Option<Vec<u8>> {
        let s = self.state();
        s.task(id)?;
        Some(
            s.transcript(id)
                .map(|t| t.bytes.clone())
                .unwrap_or_default(),
        )
    }

    /// Notified on every state change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock()
    }

    /// Wakes waiters on [`ControlPlane::changes`] after a change outside the state.
    fn bump(&self) {
        let v = {
            let mut s = self.state();
            s.version += 1;
            s.version
        };
        self.shared.changed.send_replace(v);
    }

    /// Applies a change to the state and delivers the frames it produced.
    fn apply<R>(&self, f: impl FnOnce(&mut State) -> (R, Vec<Outgoing>)) -> R {
        let (r, out, version) = {
            let mut s = self.state();
            let (r, out) = f(&mut s);
            (r, out, s.version)
        };
        self.deliver(out);
        self.shared.changed.send_replace(version);
        r
    }

    fn deliver(&self, out: Vec<Outgoing>) {
        for o in out {
            let sent = {
                let conns = self.shared.conns.lock();
                conns
                    .get(&o.conn)
                    .is_some_and(|tx| tx.try_send(o.frame.clone()).is_ok())
            };
            if !sent {
                warn!(worker = %o.worker_id, "cannot deliver frame; requeueing");
                let more = {
                    let mut s = self.state();
                    s.undeliverable(&o);
                    s.dispatch()
                };
                // Frames produced by a retry go to other connections; one level is enough.
                if !more.is_empty() {
                    self.deliver_once(more);
                }
            }
        }
    }

    fn deliver_once(&self, out: Vec<Outgoing>) {
        let conns = self.shared.conns.lock();
        for o in out {
            if let Some(tx) = conns.get(&o.conn) {
                let _ = tx.try_send(o.frame);
            }
        }
    }

    /// Queues a task.
    pub fn submit(&self, mut req: SubmitRequest) -> TaskRecord {
        task_logs::fill(&self.shared.opts.task_logs, &self.http_url(), &mut req);
        self.apply(|s| s.submit(req, chrono::Utc::now()))
    }

    /// One task.
    pub fn task(&self, id: &str) -> Option<TaskRecord> {
        self.state().task(id).cloned()
    }

    /// All tasks.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.state().tasks()
    }

    /// The text frames a worker sent, byte for byte, oldest first (the last [`FRAMES_KEPT`]
    /// of all workers, at most [`FRAMES_BYTES`]): what a server sees on the wire.
    pub fn frames_from(&self, worker_id: &str) -> Vec<String> {
        self.shared
            .frames
            .lock()
            .0
            .iter()
            .filter(|(w, _)| w == worker_id)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn record_frame(&self, worker_id: &str, frame: &str) {
        let mut guard = self.shared.frames.lock();
        let (frames, bytes) = &mut *guard;
        frames.push_back((worker_id.to_string(), frame.to_string()));
        *bytes += frame.len();
        while frames.len() > FRAMES_KEPT || *bytes > FRAMES_BYTES {
            match frames.pop_front() {
                Some((_, f)) => *bytes -= f.len(),
                None => break,
            }
        }
    }

    /// Connected workers.
    pub fn workers(&self) -> Vec<state::WorkerRecord> {
        self.state().workers()
    }

    /// `(message type, task id)` of worker messages about tasks this server never had.
    pub fn unknown_task_messages(&self) -> Vec<(String, String)> {
        self.state().unknown_task_messages()
    }

    /// `(message type, task id, message text)` of those messages.
    pub fn unknown_task_results(&self) -> Vec<(String, String, String)> {
        self.state().unknown_task_results()
    }

    /// Sends `drain` (true) or `resume` (false) to a worker (berth/1).
    pub fn set_draining(&self, worker_id: &str, drain: bool) {
        self.apply(|s| ((), s.set_draining(worker_id, drain)));
    }

    /// Requests cancellation of the task's current execution (execution-scoped, as a current
    /// Oz server sends it).
    pub fn cancel(&self, id: &str) -> Result<(), state::CancelError> {
        self.cancel_scoped(id, state::CancelScope::Current)
    }

    /// Requests cancellation of the executions `scope` names.
    pub fn cancel_scoped(
        &self,
        id: &str,
        scope: state::CancelScope,
    ) -> Result<(), state::CancelError> {
        self.apply(|s| match s.cancel(id, scope, chrono::Utc::now()) {
            Ok(out) => (Ok(()), out),
            Err(e) => (Err(e), Vec::new()),
        })
    }

    /// Executes a run again with a new execution id (earlier executions keep running).
    pub fn retry(&self, id: &str) -> Result<TaskRecord, state::CancelError> {
        self.apply(|s| match s.retry(id, chrono::Utc::now()) {
            Ok((rec, out)) => (Ok(rec), out),
            Err(e) => (Err(e), Vec::new()),
        })
    }

    /// Stores a setup-phase event a worker posted.
    pub fn client_event(
        &self,
        id: &str,
        headers: state::EventHeaders<'_>,
        event: state::ClientEvent,
    ) -> Result<(), state::EventError> {
        self.apply(|s| (s.client_event(id, headers, event), Vec::new()))
    }

    /// Waits until the task is terminal or `timeout` passes; returns its latest record.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<TaskRecord> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.task(id)?;
            if rec.state.is_terminal() {
                return Some(rec);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.task(id),
            }
        }
    }

    /// Sends a raw text frame to a connected worker (debugging and fault-injection tests).
    pub fn send_raw(&self, worker_id: &str, frame: &str) -> bool {
        let conn = self.state().conn_of(worker_id);
        let conns = self.shared.conns.lock();
        conn.and_then(|c| conns.get(&c))
            .is_some_and(|tx| tx.try_send(frame.to_string()).is_ok())
    }
}
