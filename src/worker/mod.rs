//! Wiring of one worker process: Docker check, orphan sweep, session, supervisor, shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use std::collections::HashMap;
use std::path::PathBuf;

use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::control::session::{self, SessionIo, SessionSettings, SessionStats};
use crate::control::shipper::Link;
use crate::control::tls::{self, TlsError};
use crate::journal::{ExecState, Journal, JournalError};
use crate::runtime::docker::Docker;
use crate::spec::AgentSettings;
use crate::supervisor::{Found, Snapshot, Supervisor, SupervisorConfig};
use crate::task::{TaskEnv, TaskSettings};
use crate::transcript::spool::Spool;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Docker is unreachable or unsuitable.
    #[error(transparent)]
    Docker(#[from] BackendError),
    /// TLS trust could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The journal cannot be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The environments API client cannot be built.
    #[error("control_plane.environments_url: cannot build the HTTP client ({0})")]
    Catalog(String),
    /// The local API cannot listen.
    #[error(transparent)]
    Api(#[from] crate::admin::api::ApiError),
    /// The policy names an OCI runtime the engine does not have (never a silent fallback).
    #[error(
        "policy: OCI runtime {runtime:?} is not registered with the Docker engine (it has: {registered}); register it in /etc/docker/daemon.json under \"runtimes\" and reload dockerd (kill -HUP $(pidof dockerd)), or remove it from the policy. berth never runs a task under another runtime than the policy says"
    )]
    RuntimeNotRegistered {
        /// The runtime the policy names.
        runtime: String,
        /// What the engine has.
        registered: String,
    },
    /// The journal and the engine could not be matched: berth does not start rather than
    /// guess which containers are its tasks.
    #[error(transparent)]
    Reconcile(#[from] crate::supervisor::reconcile::ReconcileError),
}

/// Fails closed unless every OCI runtime the policy may use is registered with the engine.
pub(crate) async fn check_runtimes(
    runtime: &dyn Backend,
    policy: &crate::spec::policy::Policy,
) -> Result<(), WorkerError> {
    if policy.runtimes().iter().all(Option::is_none) {
        return Ok(());
    }
    let registered = runtime.runtimes().await?;
    match crate::spec::policy::unregistered(policy, &registered) {
        None => Ok(()),
        Some(r) => Err(WorkerError::RuntimeNotRegistered {
            runtime: r.to_string(),
            registered: if registered.is_empty() {
                "none listed".to_string()
            } else {
                registered.join(", ")
            },
        }),
    }
}

/// The first reconciliation: container listings are retried a few times; a journal that
/// cannot be read is an error at once (nothing is touched either way).
async fn reconcile_at_start(
    runtime: &dyn Backend,
    journal: &Journal,
    c: &Config,
) -> Result<(Vec<crate::journal::ExecRecord>, HashMap<String, Found>), WorkerError> {
    let mut backoff = crate::backoff::Backoff::capped(Duration::from_secs(8));
    let mut tries = 0;
    loop {
        tries += 1;
        match crate::supervisor::reconcile::reconcile(
            runtime,
            journal,
            &c.worker_id,
            c.cleanup,
            c.stop_grace_period(),
        )
        .await
        {
            Ok(r) => return Ok(r),
            Err(e @ crate::supervisor::reconcile::ReconcileError::Listing(_))
                if tries < START_RECONCILE_TRIES =>
            {
                warn!(error = %e, "retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

mod archive;
pub mod preflight;
mod reload;

pub use crate::transcript::spool::spool_dir;

/// Handles to a running worker, for status and tests.
#[derive(Clone)]
pub struct WorkerHandle {
    /// Session counters.
    pub session: Arc<SessionStats>,
    /// Slot usage.
    pub slots: watch::Receiver<Snapshot>,
    /// Where the local API listens, if it does.
    pub api: Option<String>,
    /// Everything the status views read.
    pub live: Arc<crate::admin::status::Live>,
    /// Turns of the supervisor's loop (for the systemd watchdog).
    pub heartbeat: Arc<std::sync::atomic::AtomicU64>,
    /// Applies a re-read configuration (SIGHUP).
    pub reload: mpsc::Sender<Config>,
    /// The worker's task tracker: tasks the caller adds (signal handlers, systemd notify) are
    /// waited for at shutdown like the worker's own, so they must observe the root token.
    pub tasks: tokio_util::task::TaskTracker,
}

/// What berth learnt of its engine at start-up (shown in status; its data dir counts in the
/// free-disk check).
#[derive(Debug, Clone, Default)]
pub struct EngineFacts {
    /// Engine version.
    pub version: String,
    /// The engine's data directory, when it shares this host's disks.
    pub root_dir: Option<PathBuf>,
}

/// Everything needed to start a worker.
pub struct Worker {
    config: Config,
    backend: Arc<dyn Backend>,
    tls: Arc<rustls::ClientConfig>,
    journal: Arc<Journal>,
    docker_root: Option<PathBuf>,
    catalog: Option<Arc<crate::control::catalog::Catalog>>,
    setup_events: Option<Arc<crate::control::setup_events::SetupEvents>>,
    task_logs: Option<reqwest::Client>,
    docker_version: String,
    api: Option<crate::admin::api::Bound>,
    /// The journal as read at start-up and what reconciliation found of it.
    start: (Vec<crate::journal::ExecRecord>, HashMap<String, Found>),
    /// `--one-shot`.
    one_shot: bool,
}

/// Container listings tried at start-up before berth gives up (the engine just answered, so
/// a failure is most likely passing).
const START_RECONCILE_TRIES: u32 = 5;

impl Worker {
    /// Connects to Docker (checked), builds TLS trust. Fails fast with an actionable error.
    pub async fn prepare(
        config: Config,
        docker_host_env: Option<&str>,
    ) -> Result<Self, WorkerError> {
        if config.backend == crate::config::BackendKind::Kubernetes {
            return Self::prepare_kubernetes(config).await;
        }
        let home = std::env::var("HOME").ok();
        let docker_config = std::env::var("DOCKER_CONFIG").ok();
        let docker = Docker::connect(config.docker.host.as_deref(), docker_host_env)
            .map_err(BackendError::from)?
            .with_auth_config(config.docker.auth_config.clone().or_else(|| {
                crate::runtime::docker::credentials::default_path(
                    docker_config.as_deref(),
                    home.as_deref(),
                )
            }));
        let engine = docker.check().await.map_err(BackendError::from)?;
        info!(version = %engine.version, api = %engine.api_version, platform = %engine.platform, "Docker engine reachable");
        let facts = EngineFacts {
            version: engine.version,
            root_dir: engine.root_dir.map(PathBuf::from),
        };
        let backend = crate::backend::docker::DockerBackend::new(Arc::new(docker));
        Self::prepare_on(config, Arc::new(backend), facts).await
    }

    /// Connects to the cluster's API server (checked) and prepares on it.
    async fn prepare_kubernetes(config: Config) -> Result<Self, WorkerError> {
        let backend =
            crate::backend::kubernetes::KubernetesBackend::connect(config.kubernetes.clone())
                .await?;
        let version = match tokio::time::timeout(
            Duration::from_secs(10),
            backend.client().apiserver_version(),
        )
        .await
        {
            Ok(Ok(v)) => v.git_version,
            Ok(Err(e)) => {
                return Err(BackendError::Unreachable {
                    engine: crate::backend::kubernetes::client::ENGINE,
                    at: backend.url().to_string(),
                    reason: format!(
                        "{e}; check backend.kubernetes.kubeconfig and that the cluster is up"
                    ),
                }
                .into());
            }
            Err(_) => {
                return Err(BackendError::Unreachable {
                    engine: crate::backend::kubernetes::client::ENGINE,
                    at: backend.url().to_string(),
                    reason: "no answer within 10 s".into(),
                }
                .into());
            }
        };
        info!(version = %version, url = %backend.url(), namespace = %backend.namespace(), "Kubernetes API server reachable");
        let facts = EngineFacts {
            version,
            root_dir: None,
        };
        Self::prepare_on(config, Arc::new(backend), facts).await
    }

    /// Everything but connecting to the engine: TLS trust, the journal, the local API, and the
    /// first reconciliation against `backend`.
    pub async fn prepare_on(
        config: Config,
        backend: Arc<dyn Backend>,
        engine: EngineFacts,
    ) -> Result<Self, WorkerError> {
        check_runtimes(backend.as_ref(), &config.policy).await?;
        let cp = &config.control_plane;
        let tls = tls::client_config(
            cp.ca_file.as_deref(),
            cp.client_cert_file.as_deref(),
            cp.client_key_file.as_deref(),
        )?;
        // State written by older versions (or copied in) is tightened before it is used.
        if config.state_dir.exists()
            && let Err(e) = crate::private::tighten_tree(&config.state_dir)
        {
            warn!(state_dir = %config.state_dir.display(), error = %e, "cannot make everything under state_dir private (0700/0600)");
        }
        let mut journal = Journal::open(&config.state_dir)?;
        if config.backend == crate::config::BackendKind::Kubernetes
            && let Some(owner) = &config.kubernetes.owner
        {
            // The owner label the operator chose stands for this instance on the cluster.
            journal = journal.with_instance(owner.clone());
        }
        let catalog = match &cp.environments_url {
            Some(t) => Some(Arc::new(
                crate::control::catalog::Catalog::new(
                    t.clone(),
                    cp.api_key.clone(),
                    cp.environments_ttl,
                    tls.clone(),
                )
                .map_err(|e| WorkerError::Catalog(e.to_string()))?,
            )),
            None => None,
        };
        // Best effort like the events themselves: a client that cannot be built costs the
        // control plane its timing view, never a task.
        let setup_events = match crate::control::setup_events::SetupEvents::new(tls.clone()) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                warn!(error = %e, "cannot build the setup-events client; setup timings are not reported");
                None
            }
        };
        // Task-log export (PROTOCOL §8.3) is best effort too: without its client no execution
        // exports, and every task runs as it would.
        let task_logs = match crate::tasklogs::transport::client(tls.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "cannot build the task-log export client; task logs are not exported");
                None
            }
        };
        let api = match &config.api.listen {
            Some(l) => Some(
                crate::admin::api::bind(l, config.api.socket_group.as_deref(), &config.state_dir)
                    .await?,
            ),
            None => None,
        };
        let start = reconcile_at_start(backend.as_ref(), &journal, &config).await?;
        Ok(Worker {
            start,
            catalog,
            setup_events,
            task_logs,
            api,
            docker_version: engine.version,
            config,
            backend,
            tls,
            journal: Arc::new(journal),
            docker_root: engine.root_dir,
            one_shot: false,
        })
    }

    /// Where the local API listens (`127.0.0.1:9464`, a socket path), if it does.
    pub fn api_address(&self) -> Option<&str> {
        self.api.as_ref().map(|b| b.address.as_str())
    }

    /// One task only: once its result is delivered the worker stops (it cancels `shutdown`)
    /// and [`Worker::run`] returns the task's exit status.
    pub fn one_shot(mut self, on: bool) -> Self {
        self.one_shot = on;
        self
    }

    /// Runs until `shutdown` is cancelled and every task has reported (or the flush deadline
    /// passed). `on_start` receives handles once the worker is live. Returns the exit status of
    /// a one-shot run's task (`None` otherwise, or when it stopped before its result was
    /// delivered).
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        on_start: impl FnOnce(WorkerHandle),
    ) -> Option<u8> {
        let (records, found) = std::mem::take(&mut self.start);
        let c = &self.config;
        let settings = task_settings(c);
        // Small on purpose: transcript chunks are up to 64 KiB each, and the spool (not this
        // queue) is where output waits for a slow link.
        let (out_tx, out_rx) = mpsc::channel(32);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let (link_tx, link_rx) = watch::channel(Link::default());
        let status_outbox = out_tx.clone();
        let status_link = link_rx.clone();
        let stats = Arc::new(SessionStats::default());
        let abort = CancellationToken::new();
        let engine = crate::backend::health::Engine::new(self.backend.clone());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        // The egress proxy lives as long as this run (tasks draining at shutdown keep it).
        let gate_stop = CancellationToken::new();
        let _gate_stop = gate_stop.clone().drop_guard();
        let owner = crate::spec::owner::Owner::new(&c.worker_id, self.journal.instance());
        // What an earlier run left (a SIGKILL, a one-shot run of an older berth): this
        // instance's sealed networks that no container uses, with their firewall chains.
        match crate::egress::sweep(self.backend.as_ref(), &owner, false).await {
            Ok(swept) if !swept.removed.is_empty() => {
                info!(networks = ?swept.removed, "removed sealed egress networks left by an earlier run")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot list sealed egress networks left by an earlier run")
            }
        }
        let gate = Arc::new(crate::egress::Gate::new(
            self.backend.clone(),
            owner,
            c.policy.egress_proxy_port,
            metrics.clone(),
            gate_stop,
        ));
        if c.policy.egress.mode == crate::spec::egress::Mode::Allowlist
            && let Err(e) = gate.open().await
        {
            error!(error = %e, "egress allowlist cannot be enforced; tasks that need it will fail until it can");
        }
        let gate_for_close = gate.clone();
        let env = Arc::new(TaskEnv {
            gate: Some(gate),
            metrics: metrics.clone(),
            engine: engine.clone(),
            backend: self.backend.clone(),
            settings: parking_lot::RwLock::new(Arc::new(settings)),
            journal: self.journal.clone(),
            outbox: out_tx.clone(),
            detach: CancellationToken::new(),
            catalog: self.catalog.clone(),
            setup_events: self.setup_events.clone(),
            task_logs: self.task_logs.clone(),
        });
        let env_for_reload = env.clone();
        let (archive, archive_rx, archive_tx) = archive::service(
            c,
            self.backend.kind(),
            self.journal.clone(),
            out_tx.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let mut supervisor = Supervisor::new(
            env,
            SupervisorConfig {
                one_shot: self.one_shot,
                ..supervisor_config(c, self.docker_root.clone())
            },
            out_tx,
            link_rx,
        );
        let one_shot = supervisor.one_shot_outcome();
        supervisor.adopt(records, &found);
        supervisor.archive_to(archive_tx);
        let session_settings = SessionSettings {
            url: c.control_plane.url.clone(),
            worker_id: c.worker_id.clone(),
            api_key: c.control_plane.api_key.clone(),
            tls: self.tls.clone(),
            heartbeat_interval: c.control_plane.heartbeat_interval,
            max_message_size: usize::try_from(c.control_plane.max_message_size)
                .unwrap_or(usize::MAX),
        };
        let io = SessionIo {
            outbox: out_rx,
            events: ev_tx,
            link: link_tx,
            hello: supervisor.hello(),
        };
        // Every task the worker starts is owned here and observes `shutdown`; none is aborted.
        let tracker = tokio_util::task::TaskTracker::new();
        let session = tracker.spawn(session::run(
            session_settings,
            io,
            stats.clone(),
            abort.clone(),
        ));
        tracker.spawn(engine.clone().monitor(shutdown.clone()));
        tracker.spawn(resync_after_outages(
            engine.clone(),
            self.backend.clone(),
            self.journal.clone(),
            c.worker_id.clone(),
            c.cleanup,
            c.stop_grace_period(),
            shutdown.clone(),
        ));
        tracker.spawn(archive.run(archive_rx));
        tracker.spawn(janitor(
            self.journal.clone(),
            spool_dir(&c.state_dir),
            c.transcript.retention,
            shutdown.clone(),
        ));
        let live = Arc::new(crate::admin::status::Live::new(
            c.worker_id.clone(),
            c.state_dir.clone(),
            stats.clone(),
            supervisor.subscribe(),
            engine.clone(),
            self.docker_version.clone(),
            self.backend.clone(),
            metrics,
            self.journal.clone(),
        ));
        let api = self.api.map(|bound| {
            let address = bound.address.clone();
            bound.serve(
                &tracker,
                live.clone(),
                supervisor.commands(),
                shutdown.clone(),
            );
            address
        });
        let (reload_tx, reload_rx) = mpsc::channel::<Config>(2);
        tracker.spawn(reload::apply_reloads(
            c.clone(),
            reload_rx,
            env_for_reload,
            live.reloads.clone(),
            supervisor.commands(),
            shutdown.clone(),
        ));
        tracker.spawn(crate::admin::status::report(
            live.clone(),
            status_outbox,
            status_link,
            c.control_plane.status_interval,
            shutdown.clone(),
        ));
        on_start(WorkerHandle {
            session: stats,
            slots: supervisor.subscribe(),
            api,
            live,
            heartbeat: supervisor.heartbeat(),
            reload: reload_tx,
            tasks: tracker.clone(),
        });
        info!(worker_id = %c.worker_id, max_concurrent_tasks = c.max_concurrent_tasks, shutdown_mode = ?c.shutdown_mode, "worker running");
        let deadline = supervisor.run(ev_rx, shutdown).await;
        // Every task has ended or detached: what no container uses any more goes.
        gate_for_close.close().await;
        // The supervisor dropped its senders: the session flushes the queue and closes, or
        // gives up at the same deadline the supervisor waited for.
        let session_done = CancellationToken::new();
        let give_up = {
            let (abort, done) = (abort.clone(), session_done.clone());
            async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        warn!("control plane unreachable during shutdown; unsent messages stay in the journal");
                        abort.cancel();
                    }
                    _ = done.cancelled() => {}
                }
            }
        };
        tracker.spawn(give_up);
        let _ = session.await;
        session_done.cancel();
        tracker.close();
        tracker.wait().await;
        info!("worker stopped");
        one_shot.get().copied()
    }
}

/// The supervisor's settings from the configuration (`engine_root`: the engine's data dir,
/// checked for free disk beside `state_dir`).
pub fn supervisor_config(c: &Config, engine_root: Option<PathBuf>) -> SupervisorConfig {
    SupervisorConfig {
        max: c.max_concurrent_tasks,
        shutdown_mode: c.shutdown_mode,
        shutdown_grace: c.shutdown_grace,
        spool_dir: spool_dir(&c.state_dir),
        max_bytes: c.transcript.max_bytes,
        tail_bytes: c.transcript.tail_bytes,
        full_disk_patience: c.transcript.full_disk_patience,
        labels: c.labels.clone(),
        host: match c.backend {
            BackendKind::Docker => Some(crate::supervisor::capacity::Host::read()),
            BackendKind::Kubernetes => None,
        },
        reserve: c.admission.reserve,
        min_free_disk: c.admission.min_free_disk,
        disk_paths: std::iter::once(c.state_dir.clone())
            .chain(engine_root)
            .collect(),
        policy: c.policy.clone(),
        one_shot: false,
    }
}

use crate::config::BackendKind;

/// The operator settings every task run reads (rebuilt on reload).
pub fn task_settings(c: &Config) -> TaskSettings {
    TaskSettings {
        worker_id: c.worker_id.clone(),
        agent: AgentSettings {
            server_root_url: c.control_plane.server_root_url.clone(),
            idle_on_complete: c.idle_on_complete.clone(),
            session_sharing_server_url: c.control_plane.session_sharing_server_url.clone(),
        },
        default_image: match c.backend {
            BackendKind::Docker => c.docker.default_image.clone(),
            BackendKind::Kubernetes => c.kubernetes.default_image.clone(),
        },
        pull_policy: c.docker.pull_policy,
        operator_env: match c.backend {
            BackendKind::Docker => c.docker.environment.clone(),
            BackendKind::Kubernetes => c.kubernetes.environment.clone(),
        },
        // The operator's mounts on Kubernetes are the pod template's.
        operator_volumes: match c.backend {
            BackendKind::Docker => c.docker.volumes.clone(),
            BackendKind::Kubernetes => Vec::new(),
        },
        stop_grace_period: c.stop_grace_period(),
        cleanup: c.cleanup,
        api_key: c.control_plane.api_key.clone(),
        redact: c.transcript.redact.clone(),
        policy: c.policy.clone(),
        environments: c.environments.clone(),
        default_environment: c.default_environment.clone(),
        anchor_every: c.transcript.anchor_every,
        capture_drain: c.transcript.capture_drain,
        task_logs: c.task_logs,
    }
}

/// Whenever the engine comes back after an outage, sweeps what the outage may have left:
/// containers of finished tasks whose removal failed, and orphans.
async fn resync_after_outages(
    engine: Arc<crate::backend::health::Engine>,
    runtime: Arc<dyn Backend>,
    journal: Arc<Journal>,
    worker_id: String,
    cleanup: bool,
    grace: Duration,
    stop: CancellationToken,
) {
    let mut state = engine.subscribe();
    let mut was_reachable = state.borrow().reachable;
    loop {
        tokio::select! {
            r = state.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let reachable = state.borrow_and_update().reachable;
        if reachable && !was_reachable {
            info!("Docker engine is back: reconciling containers with the journal");
            let mut backoff = crate::backoff::Backoff::capped(Duration::from_secs(60));
            // Retried while the engine stays up; a failed attempt touches nothing.
            while let Err(e) = crate::supervisor::reconcile::reconcile(
                runtime.as_ref(),
                &journal,
                &worker_id,
                cleanup,
                grace,
            )
            .await
            {
                warn!(error = %e, "reconciliation skipped; nothing was stopped or removed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
                if !state.borrow().reachable {
                    break;
                }
            }
        }
        was_reachable = reachable;
    }
}

/// Removes delivered transcripts (and their journal rows) once `retention` has passed.
async fn janitor(
    journal: Arc<Journal>,
    dir: PathBuf,
    retention: Duration,
    stop: CancellationToken,
) {
    let every = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let cutoff = chrono::Utc::now().timestamp_millis()
            - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let records = match journal.all() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "retention skipped: nothing is deleted while the journal cannot be read");
                Vec::new()
            }
        };
        for r in records {
            // An owed execution_closed keeps its record (its container id, its state).
            let expired = r.state == ExecState::Finished
                && r.terminal_done
                && !r.closure.owed()
                && r.finished_at_ms.is_some_and(|t| t < cutoff);
            if !expired {
                continue;
            }
            // A debug archive may still be asked for during the cleanup grace (PROTOCOL
            // §8.4): the spool is its capture. Unknown counts as in grace (kept, retried).
            if journal
                .in_grace(&r.execution_id, chrono::Utc::now().timestamp_millis())
                .unwrap_or(true)
            {
                continue;
            }
            if r.berth {
                // Never delete bytes the server has not stored.
                // An unreadable spool is kept: it is not known to be delivered.
                let Ok(len) =
                    Spool::open(&dir, &r.execution_id, u64::MAX, 1 << 12).map(|s| s.state().len)
                else {
                    continue;
                };
                if r.acked_offset < len {
                    continue;
                }
            }
            Spool::remove(&dir, &r.execution_id);
            // The record goes only once the spool is gone: a failed deletion is retried.
            if Spool::path_for(&dir, &r.execution_id).exists() {
                warn!(task_id = %r.task_id, execution_id = %r.execution_id, "cannot remove an expired transcript; retrying");
                continue;
            }
            if let Err(e) = journal.remove(&r.execution_id) {
                warn!(error = %e, "cannot remove an expired journal record");
            }
            info!(task_id = %r.task_id, execution_id = %r.execution_id, "transcript retention expired; removed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
