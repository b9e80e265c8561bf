//! Shared harness for the integration tests: the embedded control plane over a real loopback
//! socket and an in-process worker, on real Docker with images built locally from a static
//! busybox (no registry) — or, for tests that do not exercise the engine, on the in-memory
//! fake backend ([`Env::start_fake`], [`start_fake_worker`]): no Docker call at all.
//!
//! Cleanup is by construction: every test holds an [`Env`] whose `Drop` removes the containers
//! of its worker id (also when the test panics); test images and sidecar volumes are
//! reference-counted and removed when the last test using them ends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod kubeapi;
pub mod otlp;
pub mod otlp_proto;
pub mod upload;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::backend::fake::FakeBackend;
use berth::config::{self, Overrides};
use berth::devserver::state::{SubmitRequest, TaskRecord};
use berth::devserver::{ControlPlane, ServerOptions};
use berth::runtime::docker::rootfs::{ExtraFile, rootfs_tar};
use berth::secret::Secret;
use berth::worker::{EngineFacts, Worker, WorkerHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Image with busybox (sh, sleep, tar, …).
pub const BUSYBOX: &str = "berth-test-busybox:latest";
/// Fake agent sidecar: busybox plus `/entrypoint.sh` that records argv, env and cwd.
pub const SIDECAR: &str = "berth-test-sidecar:latest";
/// busybox plus the host's git (built on demand by [`git_image`]).
pub const GIT: &str = "berth-test-git:latest";
/// Debian's git: the test image copies it and the libraries it links.
const HOST_GIT: &str = "/usr/bin/git";

static GIT_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Label on everything the tests create.
pub const TEST_LABEL: &str = "berth.test=true";

/// The fake Oz agent: writes what it was started with into /out (an operator volume).
pub const FAKE_ENTRYPOINT: &str = r#"#!/bin/sh
echo "fake agent ran with $# arguments"
for a in "$@"; do printf '%s\n' "$a"; done > /out/argv
env > /out/env
pwd > /out/cwd
if touch /agent/probe 2>/dev/null; then echo rw > /out/agent_mount; else echo ro > /out/agent_mount; fi
exit 0
"#;

static USERS: Mutex<usize> = Mutex::new(0);
static NEXT: AtomicU32 = AtomicU32::new(0);

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI must be installed for the integration tests")
}

fn import(name: &str, extra: &[ExtraFile]) {
    let busybox = std::fs::read(berth::runtime::docker::rootfs::DEFAULT_BUSYBOX)
        .expect("install Debian's busybox-static: the tests build their images from /bin/busybox");
    let tar = rootfs_tar(&busybox, extra).unwrap();
    let mut child = Command::new("docker")
        .args([
            "import",
            "--change",
            "WORKDIR /workspace",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "LABEL berth.test=true",
            "-",
            name,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "docker import {name} failed"
    );
}

/// The git-capable test image: busybox, `/bin/git` from the host and the shared libraries it
/// links (found with `ldd`), so repositories can be cloned inside task containers without a
/// registry. Built once per holder generation of [`Images`].
pub fn git_image(held: &Images) -> &'static str {
    assert!(held.held, "an Env on the fake backend has no test images");
    let _users = USERS.lock().unwrap_or_else(|p| p.into_inner());
    if !GIT_READY.load(Ordering::SeqCst) {
        let ldd = Command::new("ldd")
            .arg(HOST_GIT)
            .output()
            .expect("install Debian's git: the clone tests copy /usr/bin/git into an image");
        assert!(ldd.status.success(), "ldd {HOST_GIT} failed");
        let bin = std::fs::read(HOST_GIT).unwrap();
        // A local clone runs `git-upload-pack`, which git dispatches by its own name.
        let mut extra: Vec<ExtraFile> = ["/bin/git", "/bin/git-upload-pack"]
            .into_iter()
            .map(|path| ExtraFile {
                path: path.into(),
                contents: bin.clone(),
                mode: 0o755,
            })
            .collect();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            extra.push(ExtraFile {
                path: lib.to_string(),
                contents: std::fs::read(lib).unwrap(),
                mode: 0o755,
            });
        }
        import(GIT, &extra);
        GIT_READY.store(true, Ordering::SeqCst);
    }
    GIT
}

/// Keeps the test images alive while held.
pub struct Images {
    /// False for an [`Env`] on the fake backend, which never builds them.
    held: bool,
}

impl Images {
    /// Builds the images if this is the first holder.
    pub fn acquire() -> Images {
        let mut users = USERS.lock().unwrap_or_else(|p| p.into_inner());
        if *users == 0 {
            remove_untagged_test_images();
            import(BUSYBOX, &[]);
            import(
                SIDECAR,
                &[ExtraFile {
                    path: "/entrypoint.sh".into(),
                    contents: FAKE_ENTRYPOINT.as_bytes().to_vec(),
                    mode: 0o755,
                }],
            );
        }
        *users += 1;
        Images { held: true }
    }

    /// No images (an [`Env`] on the fake backend).
    fn none() -> Images {
        Images { held: false }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut users = USERS.lock().unwrap_or_else(|p| p.into_inner());
        *users -= 1;
        if *users == 0 {
            remove_test_artifacts();
        }
    }
}

/// Removes every container, sidecar volume and image the tests created.
pub fn remove_test_artifacts() {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=berth.managed=true",
        "--filter",
        "label=berth.worker_id",
    ]);
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let labels = docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"berth.worker_id\"}}",
            id,
        ]);
        if String::from_utf8_lossy(&labels.stdout).starts_with("t-") {
            docker(&["rm", "-f", "-v", id]);
        }
    }
    for image in [BUSYBOX, SIDECAR] {
        let full = format!("label=berth.sidecar_image=docker.io/library/{image}");
        let vols = docker(&["volume", "ls", "-q", "--filter", &full]);
        for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
            docker(&["volume", "rm", "-f", v]);
        }
    }
    // Sidecar copy helpers are removed by berth itself; sweep in case a test was killed.
    let helpers = docker(&["ps", "-aq", "--filter", "label=berth.sidecar=copy"]);
    for id in String::from_utf8_lossy(&helpers.stdout).split_whitespace() {
        docker(&["rm", "-f", id]);
    }
    docker(&["rmi", "-f", BUSYBOX, SIDECAR]);
    if GIT_READY.swap(false, Ordering::SeqCst) {
        docker(&["rmi", "-f", GIT]);
    }
    remove_untagged_test_images();
}

/// Removes earlier generations of the test images that lost their tag while a container still
/// used them (`rmi -f` refuses an image a running container uses; a worker killed mid-create
/// can leave one that appears after the sweep): they keep the `berth.test` label and would
/// outlive the run. Images still in use are left alone and swept by the next generation.
fn remove_untagged_test_images() {
    let out = docker(&[
        "images",
        "-q",
        "--filter",
        "dangling=true",
        "--filter",
        "label=berth.test=true",
    ]);
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        docker(&["rmi", id]);
    }
}

/// Containers of a worker (all states).
pub fn containers_of(worker_id: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=berth.worker_id={worker_id}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Containers of one task (all states).
pub fn containers_of_task(task_id: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=berth.task_id={task_id}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A unique worker id for one test (prefix `t-` marks test workers).
pub fn worker_id(name: &str) -> String {
    format!(
        "t-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options of one test environment.
pub struct EnvOptions {
    /// Slots.
    pub max_concurrent_tasks: u32,
    /// Server accepts berth/1.
    pub accept_berth: bool,
    /// Extra YAML appended to the worker config.
    pub yaml: String,
    /// Extra overrides (volumes, env).
    pub overrides: Overrides,
    /// `backend.docker.pull_policy` (tests cannot pull, so `never` by default).
    pub pull_policy: &'static str,
    /// Extra YAML under `backend.docker` (indented by 4 spaces).
    pub docker_yaml: String,
    /// Extra YAML under `control_plane` (indented by 2 spaces); `{http}` becomes the control
    /// plane's HTTP base URL.
    pub control_plane_yaml: String,
    /// How long capture may drain the engine's log after the container stopped, besides
    /// `full_disk_patience` (not a config key; `None`: berth's default).
    pub capture_drain: Option<Duration>,
    /// Whether the control plane asks for task-log export, and where (`berth dev --task-logs`).
    pub task_logs: berth::devserver::TaskLogs,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            max_concurrent_tasks: 4,
            accept_berth: true,
            yaml: String::new(),
            overrides: Overrides::default(),
            pull_policy: "never",
            docker_yaml: String::new(),
            control_plane_yaml: String::new(),
            capture_drain: None,
            task_logs: berth::devserver::TaskLogs::Off,
        }
    }
}

/// One control plane + one in-process worker + cleanup.
pub struct Env {
    pub cp: ControlPlane,
    pub worker_id: String,
    pub api_key: String,
    pub handle: WorkerHandle,
    shutdown: CancellationToken,
    worker: Option<JoinHandle<()>>,
    pub images: Images,
    /// The backend the worker runs on, when it is the fake one ([`Env::start_fake`]).
    fake: Option<FakeBackend>,
}

/// Starts a control plane on a free loopback port.
pub async fn control_plane(
    api_key: &str,
    accept_berth: bool,
    addr: Option<SocketAddr>,
) -> ControlPlane {
    ControlPlane::start(
        addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        ServerOptions {
            api_key: api_key.to_string(),
            accept_berth,
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap()
}

/// The worker configuration used by the tests.
pub fn worker_config(
    cp_url: &str,
    worker_id: &str,
    api_key: &str,
    opts: &EnvOptions,
) -> config::Config {
    let yaml = format!(
        "worker_id: {worker_id}\nmax_concurrent_tasks: {}\ncontrol_plane:\n  url: {cp_url}\n  heartbeat_interval: 2s\n{}backend:\n  docker:\n    default_image: {BUSYBOX}\n    pull_policy: {}\n    stop_grace_period: 2s\n{}{}",
        opts.max_concurrent_tasks,
        opts.control_plane_yaml,
        opts.pull_policy,
        opts.docker_yaml,
        opts.yaml
    );
    let ov = Overrides {
        api_key: Some(Secret::new(api_key)),
        // Many workers run at once: each takes a free port.
        api_listen: opts
            .overrides
            .api_listen
            .clone()
            .or_else(|| Some("127.0.0.1:0".into())),
        state_dir: opts
            .overrides
            .state_dir
            .clone()
            .or_else(|| Some(std::env::temp_dir().join(format!("berth-test-{worker_id}")))),
        ..opts.overrides.clone()
    };
    // The disk check is exercised by its own unit tests; machines here can be nearly full.
    let yaml = if opts.yaml.contains("admission:") {
        yaml
    } else {
        format!("{yaml}admission:\n  min_free_disk: 0\n")
    };
    config::load_str(Some(&yaml), Some(Path::new("test.yaml")), &ov, &|_| None)
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"))
}

/// A control plane and the configuration of a worker on it, before the worker starts.
struct Prepared {
    cp: ControlPlane,
    worker_id: String,
    api_key: String,
    cfg: config::Config,
}

impl Env {
    /// A worker on real Docker, with the test images built.
    pub async fn start(name: &str, opts: EnvOptions) -> Env {
        let images = Images::acquire();
        let p = Env::prepare(name, opts).await;
        let started = start_worker(p.cfg.clone()).await;
        Env::connected(p, started, images, None).await
    }

    /// A worker on the fake backend (the no-Docker tier): the same control plane, sockets,
    /// journal and local API, but sandboxes are scripted in memory (commands are read by
    /// [`berth::backend::fake::Script::interpret`]; [`Env::fake`] scripts and inspects them).
    /// Nothing here calls Docker.
    pub async fn start_fake(name: &str, opts: EnvOptions) -> Env {
        let fake = FakeBackend::new();
        let p = Env::prepare(name, opts).await;
        let started = start_fake_worker(p.cfg.clone(), &fake).await;
        Env::connected(p, started, Images::none(), Some(fake)).await
    }

    async fn prepare(name: &str, mut opts: EnvOptions) -> Prepared {
        // BERTH_TEST_LOG=debug (any filter) shows the in-process worker's log.
        if let Ok(filter) = std::env::var("BERTH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        berth::control::tls::install_default_provider();
        let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
        let cp = ControlPlane::start(
            "127.0.0.1:0".parse().unwrap(),
            ServerOptions {
                api_key: api_key.clone(),
                accept_berth: opts.accept_berth,
                task_logs: opts.task_logs.clone(),
                ..ServerOptions::default()
            },
        )
        .await
        .unwrap();
        opts.control_plane_yaml = opts.control_plane_yaml.replace("{http}", &cp.http_url());
        let worker_id = worker_id(name);
        let mut cfg = worker_config(&cp.ws_url(), &worker_id, &api_key, &opts);
        if let Some(d) = opts.capture_drain {
            cfg.transcript.capture_drain = d;
        }
        Prepared {
            cp,
            worker_id,
            api_key,
            cfg,
        }
    }

    async fn connected(
        p: Prepared,
        (shutdown, handle, join): (CancellationToken, WorkerHandle, JoinHandle<()>),
        images: Images,
        fake: Option<FakeBackend>,
    ) -> Env {
        let env = Env {
            cp: p.cp,
            worker_id: p.worker_id,
            api_key: p.api_key,
            handle,
            shutdown,
            worker: Some(join),
            images,
            fake,
        };
        env.until("worker connected", || !env.cp.workers().is_empty())
            .await;
        env
    }

    /// The fake backend of an [`Env::start_fake`] worker.
    pub fn fake(&self) -> &FakeBackend {
        self.fake
            .as_ref()
            .expect("this Env runs on Docker: start it with Env::start_fake")
    }

    pub fn submit(&self, command: &[&str]) -> TaskRecord {
        self.cp.submit(SubmitRequest {
            image: Some(BUSYBOX.into()),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..SubmitRequest::default()
        })
    }

    /// Submits `req` and returns its final record and whole transcript (as text).
    pub async fn run(&self, req: SubmitRequest) -> (TaskRecord, String) {
        let t = self.cp.submit(req);
        let done = self.finished(&t.id).await;
        until("transcript complete", || {
            self.cp.task(&t.id).is_some_and(|t| t.complete())
        })
        .await;
        let text = self.cp.transcript(&t.id).unwrap_or_default();
        (done, String::from_utf8_lossy(&text).into_owned())
    }

    /// Waits for the task's terminal state (panics after 90 s with the record).
    pub async fn finished(&self, id: &str) -> TaskRecord {
        let t = self.cp.wait(id, Duration::from_secs(90)).await.unwrap();
        assert!(t.state.is_terminal(), "task did not finish in time: {t:?}");
        t
    }

    /// Polls `cond` every 50 ms for up to 60 s.
    pub async fn until(&self, what: &str, cond: impl Fn() -> bool) {
        until(what, cond).await
    }

    /// The worker's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.handle.api.clone().unwrap());
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }

    /// One series of the worker's `/metrics`, named with its labels as exposed
    /// (`name{label="value"}`).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in /metrics"))
    }

    /// Stops the worker (shutdown signal) and waits for it.
    pub async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(w) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// Starts a worker on Docker in this runtime; returns its shutdown token, handles and join
/// handle.
pub async fn start_worker(
    cfg: config::Config,
) -> (CancellationToken, WorkerHandle, JoinHandle<()>) {
    run_worker(Worker::prepare(cfg, None).await.unwrap()).await
}

/// What the fake backend reports as its engine's version (status shows it).
pub const FAKE_ENGINE_VERSION: &str = "fake";

/// Starts a worker on `fake` in this runtime (no Docker); as [`start_worker`].
pub async fn start_fake_worker(
    cfg: config::Config,
    fake: &FakeBackend,
) -> (CancellationToken, WorkerHandle, JoinHandle<()>) {
    let facts = EngineFacts {
        version: FAKE_ENGINE_VERSION.to_string(),
        root_dir: None,
    };
    let worker = Worker::prepare_on(cfg, Arc::new(fake.clone()), facts)
        .await
        .unwrap();
    run_worker(worker).await
}

async fn run_worker(worker: Worker) -> (CancellationToken, WorkerHandle, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let token = stop.clone();
    let join = tokio::spawn(async move {
        worker
            .run(token, move |h| {
                let _ = tx.send(h);
            })
            .await;
    });
    (stop, rx.await.unwrap(), join)
}

/// Polls `cond` every 50 ms for up to 60 s.
pub async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Let the worker finish shutting down first (with its control plane still up, so its
        // last messages flush at once): a container it was creating at this instant would
        // otherwise appear after the sweep below and pin the test images.
        if let Some(w) = self.worker.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
                })
            });
        }
        self.cp.shutdown();
        // The fake backend's sandboxes go with it.
        if self.fake.is_none() {
            for id in containers_of(&self.worker_id) {
                docker(&["rm", "-f", "-v", &id]);
            }
        }
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("berth-test-{}", self.worker_id)),
        );
    }
}

/// The berth binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A worker process (the real binary) on `cp` with its state in `state`.
pub fn worker_process(cp: &ControlPlane, id: &str, state: &Path, extra: &[&str]) -> Child {
    worker_process_with(cp, id, state, extra, "")
}

/// [`worker_process`] with more YAML appended to its config file.
pub fn worker_process_with(
    cp: &ControlPlane,
    id: &str,
    state: &Path,
    extra: &[&str],
    yaml: &str,
) -> Child {
    let mut args = vec![
        "run".to_string(),
        "--worker-id".into(),
        id.into(),
        "--control-plane-url".into(),
        cp.ws_url(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    // Free-disk admission is unit-tested; machines here can be nearly full.
    let cfg = state.with_extension("yaml");
    std::fs::write(
        &cfg,
        format!(
            "worker_id: {id}\nadmission:\n  min_free_disk: 0\napi:\n  listen: 127.0.0.1:0\n{yaml}"
        ),
    )
    .unwrap();
    args.extend(["--config".to_string(), cfg.display().to_string()]);
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    Command::new(BIN)
        .args(&args)
        .env("BERTH_API_KEY", "proc-key")
        .env_remove("WARP_API_KEY")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A berth process, killed when dropped (a failing test leaves none running).
pub struct Berth(pub Child);

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a berth process now.
pub fn stop(w: Berth) {
    drop(w);
}

/// Removes a worker's containers when dropped.
pub struct Cleanup(pub String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in containers_of(&self.0) {
            let _ = Command::new("docker").args(["rm", "-f", "-v", &c]).output();
        }
    }
}

/// The engine socket the proxy forwards to.
fn upstream() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// A Unix-socket proxy in front of the engine; `stop` cuts every connection and removes the
/// socket, as an engine restart would. It can also refuse container removals (a 500 answer,
/// as an engine that fails to remove gives) while everything else goes through.
pub struct Proxy {
    path: PathBuf,
    stop: CancellationToken,
    /// Cancelled to stop accepting new connections only (a stopping dockerd's first step).
    accepting: CancellationToken,
    refuse_removals: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

/// The request in `chunk` is `DELETE /…/containers/…` (a container removal).
fn is_removal(chunk: &[u8]) -> bool {
    let line = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.starts_with("DELETE ") && line.contains("/containers/")
}

/// The answer to a refused removal.
fn refusal() -> Vec<u8> {
    let body = r#"{"message":"removal refused by the test's proxy"}"#;
    format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Proxy {
    pub fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let mut p = Proxy {
            path,
            stop: CancellationToken::new(),
            accepting: CancellationToken::new(),
            refuse_removals: Arc::new(AtomicBool::new(false)),
            _dir: dir,
        };
        p.serve();
        p
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// While on, every container removal is answered with a 500 and never reaches the engine.
    pub fn refuse_removals(&self, on: bool) {
        self.refuse_removals.store(on, Ordering::SeqCst);
    }

    fn serve(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        let stop = CancellationToken::new();
        self.stop = stop.clone();
        let accepting = stop.child_token();
        self.accepting = accepting.clone();
        let refuse = self.refuse_removals.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                    _ = accepting.cancelled() => return,
                };
                let stop = stop.clone();
                let refuse = refuse.clone();
                tokio::spawn(async move {
                    let Ok(engine) = tokio::net::UnixStream::connect(upstream()).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut er, mut ew) = engine.into_split();
                    // The client's requests, one chunk at a time (hyper writes a request's head
                    // in one go and never pipelines, so a chunk starts a request or continues a
                    // body); returns when a removal is refused.
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => {
                                    let _ = ew.shutdown().await;
                                    return std::future::pending::<()>().await;
                                }
                                Ok(n) => n,
                            };
                            if refuse.load(Ordering::SeqCst) && is_removal(&buf[..n]) {
                                return;
                            }
                            if ew.write_all(&buf[..n]).await.is_err() {
                                return std::future::pending::<()>().await;
                            }
                        }
                    };
                    let refused = tokio::select! {
                        _ = up => true,
                        _ = tokio::io::copy(&mut er, &mut cw) => false,
                        _ = stop.cancelled() => false,
                    };
                    if refused {
                        let _ = cw.write_all(&refusal()).await;
                        let _ = cw.shutdown().await;
                    }
                });
            }
        });
    }

    /// Refuses new connections while those open go on, as dockerd does when it starts to stop
    /// (it closes its API listener, then stops the containers, then exits).
    pub fn stop_accepting(&self) {
        self.accepting.cancel();
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn down(&self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn up(&mut self) {
        self.serve();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// Removes a worker's sealed network and its host firewall rules.
pub struct SealedCleanup(pub String);

impl Drop for SealedCleanup {
    fn drop(&mut self) {
        for c in containers_of(&self.0) {
            let _ = Command::new("docker").args(["rm", "-f", &c]).output();
        }
        for (net, bridge) in sealed_networks_of(&self.0) {
            let _ = Command::new("docker")
                .args(["network", "rm", &net])
                .output();
            berth::egress::firewall::unseal(&bridge);
        }
    }
}

/// The sealed networks berth made for `worker_id` (any instance), with their bridges.
pub fn sealed_networks_of(worker_id: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}", "--filter"])
        .arg(format!("label=berth.worker_id={worker_id}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|net| {
            let bridge = Command::new("docker")
                .args([
                    "network",
                    "inspect",
                    "-f",
                    "{{index .Options \"com.docker.network.bridge.name\"}}",
                    net,
                ])
                .output()
                .unwrap();
            (
                net.to_string(),
                String::from_utf8_lossy(&bridge.stdout).trim().to_string(),
            )
        })
        .collect()
}
