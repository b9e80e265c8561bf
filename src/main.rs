//! The `berth` command line: argument parsing, logging, signals and exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use berth::config::{self, Config, LogFormat, Overrides, Secret};
use berth::devserver::state::{SubmitRequest, TaskRecord, TaskState};
use berth::devserver::{ControlPlane, ServerOptions};
use berth::worker::Worker;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Exit status for configuration errors.
const EXIT_CONFIG: u8 = 2;
/// Default listen address of `berth dev` (and server of `berth submit`).
const DEV_LISTEN: &str = "127.0.0.1:8780";
/// Image of the demo task when built from the host's static busybox.
const DEMO_IMAGE: (&str, &str) = ("berth-demo", "latest");

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Self-hosted worker daemon: runs control-plane tasks in Docker containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker daemon.
    Run(RunArgs),
    /// Validate the configuration and print the effective settings (secrets redacted).
    CheckConfig(RunArgs),
    /// Start the embedded control plane and a worker connected to it (try berth locally).
    Dev(DevArgs),
    /// Submit a task to a control plane's HTTP API, stream its transcript, wait for its outcome.
    Submit(SubmitArgs),
    /// Print a task's transcript from this host's spool (works while the daemon is down).
    Logs(LogsArgs),
    /// Show the running daemon's connection, slots, host and tasks (local API).
    Status(AdminArgs),
    /// Stop accepting tasks; running ones finish. With --wait, return once none is left.
    Drain(DrainArgs),
    /// Accept tasks again after a drain.
    Resume(AdminArgs),
    /// Print the version.
    Version,
    /// Write the man pages (berth.1, berth-run.1, …) into a directory (used by packaging).
    #[command(hide = true)]
    Manpages {
        /// Output directory.
        dir: PathBuf,
    },
    /// Write shell completions to stdout (used by packaging).
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Config file (default /etc/berth/config.yaml when it exists).
    #[arg(long, alias = "config-file", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Worker id (overrides worker_id).
    #[arg(long)]
    worker_id: Option<String>,
    /// API key (also BERTH_API_KEY, or WARP_API_KEY for Oz compatibility).
    #[arg(long, env = "BERTH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the API key.
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// Control-plane WebSocket URL.
    #[arg(long, env = "BERTH_CONTROL_PLANE_URL")]
    control_plane_url: Option<String>,
    /// Root URL handed to the agent.
    #[arg(long)]
    server_root_url: Option<String>,
    /// Concurrency slots (0 = unlimited).
    #[arg(long)]
    max_concurrent_tasks: Option<u32>,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Env var for every task container: KEY=VALUE, or KEY to pass the host's value.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Bind for every task container: HOST:CONTAINER[:MODE].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:MODE]")]
    volume: Vec<String>,
    /// Keep task containers after they exit.
    #[arg(long)]
    no_cleanup: bool,
    /// Default for the agent's --idle-on-complete (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    idle_on_complete: Option<String>,
    /// State directory.
    #[arg(long, value_name = "PATH")]
    state_dir: Option<PathBuf>,
    /// What SIGTERM does to running tasks (preserve: leave them running; cancel: stop them).
    #[arg(long, value_enum)]
    shutdown_mode: Option<config::ShutdownMode>,
    /// Local API address: host:port, an absolute Unix socket path, or off.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
}

#[derive(Args)]
struct DevArgs {
    /// Address of the control plane (WebSocket + HTTP API).
    #[arg(long, default_value = DEV_LISTEN)]
    listen: SocketAddr,
    /// Concurrency slots of the local worker.
    #[arg(long, default_value_t = 4)]
    max_concurrent_tasks: u32,
    /// Worker id of the local worker.
    #[arg(long, default_value = "dev-worker")]
    worker_id: String,
    /// Behave as a plain oz/1 server (do not accept the berth/1 extensions).
    #[arg(long)]
    oz_only: bool,
    /// Start only the control plane, no local worker (the worker key is printed).
    #[arg(long)]
    no_worker: bool,
    /// Bearer key workers must present (default: a random one).
    #[arg(long, env = "BERTH_DEV_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Run one sample task end to end, print its outcome, and exit with its status.
    #[arg(long)]
    demo: bool,
    /// Static busybox used to build the demo image locally (no registry needed).
    #[arg(long, default_value = berth::rootfs::DEFAULT_BUSYBOX)]
    busybox: PathBuf,
    /// Log level.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Args, Clone)]
struct AdminArgs {
    /// The daemon's local API: host:port or a Unix socket path (default: api.listen of the
    /// config, else 127.0.0.1:9464).
    #[arg(long, env = "BERTH_API", value_name = "ADDR")]
    api: Option<String>,
    /// Config file (to find api.listen and state_dir, where the admin token is).
    #[arg(long, alias = "config-file", value_name = "PATH")]
    config: Option<PathBuf>,
    /// State directory holding the admin token (overrides the config).
    #[arg(long, value_name = "PATH")]
    state_dir: Option<PathBuf>,
    /// Print the raw JSON status.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DrainArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Wait until no task is running and every result is delivered (the upgrade procedure).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (e.g. 2h); default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", requires = "wait")]
    timeout: Option<String>,
}

#[derive(Args)]
struct LogsArgs {
    /// The task.
    task_id: String,
    /// Keep printing until the transcript is finished.
    #[arg(short, long)]
    follow: bool,
    /// The daemon's local API (default: api.listen of the config, else 127.0.0.1:9464).
    #[arg(long, env = "BERTH_API", value_name = "ADDR")]
    api: Option<String>,
    /// Read the spool under state_dir directly, without asking the daemon.
    #[arg(long)]
    local: bool,
    /// Config file (to find api.listen and state_dir).
    #[arg(long, alias = "config-file", value_name = "PATH")]
    config: Option<PathBuf>,
    /// State directory (overrides the config).
    #[arg(long, value_name = "PATH")]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SubmitArgs {
    /// Control plane HTTP API.
    #[arg(long, env = "BERTH_SERVER", default_value = "http://127.0.0.1:8780")]
    server: String,
    /// Image to run.
    #[arg(long)]
    image: String,
    /// Env var for the task: KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Wall-clock limit in seconds.
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Return after submitting, without waiting.
    #[arg(long)]
    no_wait: bool,
    /// The command to run.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn host_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn overrides(a: &RunArgs) -> Overrides {
    let api_key = a
        .api_key
        .clone()
        .or_else(|| host_env("WARP_API_KEY"))
        .filter(|k| !k.is_empty())
        .map(Secret::new);
    Overrides {
        worker_id: a.worker_id.clone(),
        api_key,
        api_key_file: a.api_key_file.clone(),
        control_plane_url: a.control_plane_url.clone(),
        server_root_url: a.server_root_url.clone(),
        max_concurrent_tasks: a.max_concurrent_tasks,
        log_level: a.log_level.clone(),
        log_format: a.log_format,
        env: a.env.clone(),
        volumes: a.volume.clone(),
        no_cleanup: a.no_cleanup,
        idle_on_complete: a.idle_on_complete.clone(),
        state_dir: a.state_dir.clone(),
        api_listen: a.api_listen.clone(),
        credentials_directory: host_env("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        shutdown_mode: a.shutdown_mode,
    }
}

fn load_config(a: &RunArgs) -> Result<Config, config::ConfigErrors> {
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    let path = a
        .config
        .clone()
        .or_else(|| default.exists().then(|| default.to_path_buf()));
    config::load(path.as_deref(), &overrides(a), &host_env)
}

/// Handle to change the log filter at runtime (reload).
type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(level: &str, format: LogFormat) -> LogFilter {
    use tracing_subscriber::prelude::*;
    let filter = berth::redaction::log_filter(level);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Every line is scrubbed of registered secrets, whatever the level (issue 8.5).
    let fmt = tracing_subscriber::fmt::layer().with_writer(berth::redaction::ScrubbedStderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    handle
}

/// On SIGHUP: re-reads the configuration (same flags); a valid one is applied (log level
/// here, the rest by the worker), an invalid one is logged in full and the running one kept.
fn reload_on_sighup(
    args: RunArgs,
    log: LogFilter,
    apply: tokio::sync::mpsc::Sender<Config>,
    notifier: Option<berth::notify::Notifier>,
) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            error!("cannot install the SIGHUP handler; reload is unavailable");
            return;
        };
        while hup.recv().await.is_some() {
            match load_config(&args) {
                Ok(cfg) => {
                    info!(config = ?cfg.source, "reloading the configuration");
                    if tracing_subscriber::EnvFilter::try_new(&cfg.log_level).is_ok() {
                        let f = berth::redaction::log_filter(&cfg.log_level);
                        let _ = log.modify(|current| *current = f);
                    }
                    if apply.send(cfg).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error!("reload refused, the running configuration is kept:\n{e}");
                    if let Some(n) = &notifier {
                        n.send("STATUS=reload refused: invalid configuration (see the log)");
                    }
                }
            }
        }
    });
}

/// Cancels the token on SIGTERM or SIGINT (a second signal exits at once).
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutdown requested");
        t.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        error!("second signal: exiting immediately");
        std::process::exit(130);
    });
    token
}

fn main() -> ExitCode {
    berth::tls::install_default_provider();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Version => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => {
            use clap::CommandFactory;
            let r = std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: cannot write man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::CheckConfig(a) => match load_config(&a) {
            Ok(c) => {
                if let Some(p) = &c.source {
                    println!("# {}: configuration is valid", p.display());
                } else {
                    println!(
                        "# no config file: configuration from flags, environment and defaults is valid"
                    );
                }
                print!("{}", c.effective_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berth: invalid configuration:\n{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run(a) => {
            let cfg = match load_config(&a) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: invalid configuration:\n{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Whatever berth creates is private to its user, also outside systemd (the unit
            // sets UMask=0077 too); modes under state_dir are also set explicitly.
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            // The API key and the operator's redact literals never reach the log.
            let cp = &cfg.control_plane;
            let url_passwords = [
                Some(cp.url.as_str()),
                Some(cp.server_root_url.as_str()),
                cp.environments_url.as_deref(),
                cp.session_sharing_server_url.as_deref(),
            ]
            .into_iter()
            .flatten()
            .filter_map(berth::redaction::url_password)
            .map(String::into_bytes);
            let _secrets = berth::redaction::register(
                std::iter::once(cp.api_key.expose().as_bytes().to_vec())
                    .chain(
                        cfg.transcript
                            .redact
                            .iter()
                            .map(|s| s.expose().as_bytes().to_vec()),
                    )
                    .chain(url_passwords),
            );
            let log = init_logging(&cfg.log_level, cfg.log_format);
            rt.block_on(async move {
                let shutdown = shutdown_on_signals();
                let worker = match Worker::prepare(cfg, host_env("DOCKER_HOST").as_deref()).await {
                    Ok(w) => w,
                    Err(e) => {
                        error!("{e}");
                        eprintln!("berth: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let notifier = berth::notify::Notifier::from_env(&host_env, std::process::id());
                let stop = shutdown.clone();
                worker
                    .run(shutdown, move |h| {
                        reload_on_sighup(a, log, h.reload.clone(), notifier.clone());
                        if let Some(n) = notifier {
                            tokio::spawn(berth::notify::run(n, h.live, h.heartbeat, stop));
                        }
                    })
                    .await;
                ExitCode::SUCCESS
            })
        }
        Command::Dev(a) => {
            let _ = init_logging(&a.log_level, LogFormat::Text);
            match rt.block_on(dev(a)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Logs(a) => match rt.block_on(logs(a)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status(a) => admin_command(&rt, admin_status(a)),
        Command::Drain(a) => admin_command(&rt, admin_drain(a)),
        Command::Resume(a) => admin_command(&rt, admin_resume(a)),
        Command::Submit(a) => match rt.block_on(submit(a)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn admin_command(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's config as far as the admin commands need it (leniently: a placeholder id and
/// key, and defaults when there is no file).
fn admin_config(config: Option<&Path>) -> Option<Config> {
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    let path = config
        .map(Path::to_path_buf)
        .or_else(|| default.exists().then(|| default.to_path_buf()));
    let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
    let ov = Overrides {
        worker_id: Some("admin".into()),
        api_key: Some(Secret::new("unused")),
        ..Overrides::default()
    };
    config::load_str(text.as_deref(), path.as_deref(), &ov, &host_env).ok()
}

fn admin_client(a: &AdminArgs) -> anyhow::Result<berth::client::Client> {
    let cfg = admin_config(a.config.as_deref());
    let listen = match &a.api {
        Some(addr) => config::parse_listen(addr)
            .map_err(anyhow::Error::msg)?
            .context("--api off: there is nothing to talk to")?,
        None => cfg
            .as_ref()
            .and_then(|c| c.api.listen.clone())
            .or_else(|| {
                config::parse_listen(config::DEFAULT_API_LISTEN)
                    .ok()
                    .flatten()
            })
            .context("api.listen is off in the config: the daemon has no local API")?,
    };
    let state_dir = a.state_dir.clone().or_else(|| cfg.map(|c| c.state_dir));
    Ok(berth::client::Client::new(&listen, state_dir.as_deref())?)
}

fn print_status(s: &berth::status::Status, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
    } else {
        print!("{}", berth::client::render(s));
    }
}

async fn admin_status(a: AdminArgs) -> anyhow::Result<ExitCode> {
    let s = admin_client(&a)?.status().await?;
    print_status(&s, a.json);
    Ok(ExitCode::SUCCESS)
}

async fn admin_resume(a: AdminArgs) -> anyhow::Result<ExitCode> {
    let s = admin_client(&a)?.set_draining(false).await?;
    print_status(&s, a.json);
    Ok(ExitCode::SUCCESS)
}

async fn admin_drain(a: DrainArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(&a.admin)?;
    let deadline = match &a.timeout {
        Some(t) => Some(
            tokio::time::Instant::now()
                + config::parse_duration(t).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?,
        ),
        None => None,
    };
    let mut s = client.set_draining(true).await?;
    if !a.wait {
        print_status(&s, a.admin.json);
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = None;
    loop {
        let left = (s.worker.active_tasks, s.undelivered);
        if left == (0, 0) {
            eprintln!("drained: no task running, every result delivered");
            print_status(&s, a.admin.json);
            return Ok(ExitCode::SUCCESS);
        }
        if last != Some(left) {
            eprintln!(
                "waiting: {} task(s) running, {} execution(s) not yet acknowledged",
                left.0, left.1
            );
            last = Some(left);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            eprintln!("berth: still {} task(s) running after --timeout", left.0);
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        s = client.status().await?;
    }
}

async fn dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let api_key = a
        .api_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let cp = ControlPlane::start(
        a.listen,
        ServerOptions {
            api_key: api_key.clone(),
            accept_berth: !a.oz_only,
            ..ServerOptions::default()
        },
    )
    .await?;
    println!("berth dev: embedded control plane");
    println!("  worker endpoint  {}", cp.ws_url());
    println!("  HTTP API         {}/v1/tasks", cp.http_url());
    println!(
        "  submit a task    berth submit --server {} --image busybox -- echo hello",
        cp.http_url()
    );
    let shutdown = shutdown_on_signals();
    let worker_task = if a.no_worker {
        println!("  worker API key   {api_key}");
        println!(
            "  run a worker     BERTH_API_KEY={api_key} berth run --worker-id my-worker --control-plane-url {}",
            cp.ws_url()
        );
        None
    } else {
        let state_dir = std::env::temp_dir().join(format!("berth-dev-{}", std::process::id()));
        let ov = Overrides {
            worker_id: Some(a.worker_id.clone()),
            api_key: Some(Secret::new(api_key)),
            control_plane_url: Some(cp.ws_url()),
            max_concurrent_tasks: Some(a.max_concurrent_tasks),
            state_dir: Some(state_dir),
            // Never collides with an installed berth service on the default port.
            api_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let cfg = config::load_str(None, None, &ov, &host_env)
            .map_err(|e| anyhow::anyhow!("invalid dev configuration:\n{e}"))?;
        let worker = Worker::prepare(cfg, host_env("DOCKER_HOST").as_deref()).await?;
        let token = shutdown.clone();
        println!(
            "  local worker     {} ({} slots)",
            a.worker_id, a.max_concurrent_tasks
        );
        Some(tokio::spawn(async move { worker.run(token, |_| {}).await }))
    };
    let code = if a.demo {
        let r = demo(&cp, &a).await;
        shutdown.cancel();
        r?
    } else {
        shutdown.cancelled().await;
        ExitCode::SUCCESS
    };
    if let Some(w) = worker_task {
        let _ = w.await;
    }
    cp.shutdown();
    Ok(code)
}

async fn demo(cp: &ControlPlane, a: &DevArgs) -> anyhow::Result<ExitCode> {
    let image = if a.busybox.exists() {
        let docker = bollard::Docker::connect_with_local_defaults()?;
        berth::rootfs::import_busybox_image(
            &docker,
            &a.busybox,
            DEMO_IMAGE.0,
            DEMO_IMAGE.1,
            &[],
            &[("berth.demo", "true")],
        )
        .await?;
        format!("{}:{}", DEMO_IMAGE.0, DEMO_IMAGE.1)
    } else {
        println!(
            "  ({} not found: the demo pulls busybox:1.36 instead)",
            a.busybox.display()
        );
        "busybox:1.36".to_string()
    };
    let rec = cp.submit(SubmitRequest {
        image: Some(image.clone()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"hello from task $TASK_ID\"; ls /workspace >/dev/null".into(),
        ],
        title: Some("berth demo".into()),
        ..SubmitRequest::default()
    });
    println!("demo: submitted {} ({image}: sh -c 'echo hello …')", rec.id);
    let done = loop {
        match cp.wait(&rec.id, Duration::from_secs(120)).await {
            Some(t) if t.state.is_terminal() => break t,
            Some(t) => println!("demo: still {:?} …", t.state),
            None => bail!("demo task vanished"),
        }
    };
    // The result follows the transcript on the wire; wait until all of it is stored.
    let mut changes = cp.changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cp.task(&rec.id).is_some_and(|t| t.complete()) {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    println!("demo: transcript as stored by the control plane:");
    for line in String::from_utf8_lossy(&cp.transcript(&rec.id).unwrap_or_default()).lines() {
        println!("  | {line}");
    }
    println!("demo: {}", outcome_line(&done));
    Ok(exit_code_of(&done))
}

fn outcome_line(t: &TaskRecord) -> String {
    let took = match (t.finished_at, Some(t.created_at)) {
        (Some(f), Some(c)) => format!(" in {:.2}s", (f - c).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    };
    let worker = t.worker.as_deref().unwrap_or("-");
    match t.state {
        TaskState::Succeeded => format!("{} succeeded on {worker}{took} (exit 0)", t.id),
        TaskState::Cancelled => format!("{} was cancelled{took}", t.id),
        _ => format!(
            "{} failed on {worker}{took}: {} [failure_reason={}, exit_code={}]",
            t.id,
            t.message.as_deref().unwrap_or("-"),
            t.failure_reason.as_deref().unwrap_or("-"),
            t.exit_code.map_or("-".to_string(), |c| c.to_string()),
        ),
    }
}

fn exit_code_of(t: &TaskRecord) -> ExitCode {
    match t.state {
        TaskState::Succeeded => ExitCode::SUCCESS,
        TaskState::Cancelled => ExitCode::from(130),
        _ => ExitCode::from(
            t.exit_code
                .filter(|c| (1..=255).contains(c))
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        ),
    }
}

async fn submit(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut env = std::collections::BTreeMap::new();
    for e in &a.env {
        let (k, v) = config::parse_env_flag(e, &host_env).map_err(anyhow::Error::msg)?;
        env.insert(k, v);
    }
    let base = a.server.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(700))
        .build()?;
    let req = SubmitRequest {
        image: Some(a.image.clone()),
        command: a.command.clone(),
        env,
        timeout_secs: a.timeout_secs,
        ..SubmitRequest::default()
    };
    let resp = http
        .post(format!("{base}/v1/tasks"))
        .json(&req)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the control plane at {base} (is `berth dev` running?)")
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("control plane refused the task ({status}): {body}");
    }
    let rec: TaskRecord = resp.json().await?;
    eprintln!("submitted {}", rec.id);
    if a.no_wait {
        println!("{}", rec.id);
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = shutdown_on_signals();
    let streamer = tokio::spawn(stream_transcript(
        http.clone(),
        base.clone(),
        rec.id.clone(),
    ));
    let mut cancel_sent = false;
    loop {
        let wait = http
            .get(format!("{base}/v1/tasks/{}/wait?timeout_secs=5", rec.id))
            .send();
        let t: TaskRecord = tokio::select! {
            r = wait => r?.error_for_status()?.json().await?,
            _ = cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                eprintln!("cancelling {} …", rec.id);
                let _ = http.post(format!("{base}/v1/tasks/{}/cancel", rec.id)).send().await;
                continue;
            }
        };
        if t.state.is_terminal() {
            // Let the transcript catch up (it ends once the server holds all of it).
            let _ = tokio::time::timeout(Duration::from_secs(10), streamer).await;
            println!("{}", outcome_line(&t));
            return Ok(exit_code_of(&t));
        }
    }
}

/// Prints a task's transcript as it arrives: stdout to stdout, stderr to stderr, berth's own
/// lines to stderr (dimmed on a terminal).
async fn stream_transcript(http: reqwest::Client, base: String, id: String) {
    use futures_util::StreamExt;
    use std::io::{IsTerminal, Write};
    let url = format!("{base}/v1/tasks/{id}/transcript?follow=true&format=jsonl");
    let Ok(resp) = http.get(url).send().await else {
        return;
    };
    let dim = std::io::stderr().is_terminal();
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(l) = serde_json::from_slice::<berth::devserver::TranscriptLine>(&line) else {
                continue;
            };
            let bytes = match (l.data, l.data_b64) {
                (Some(d), _) => d.into_bytes(),
                (None, Some(b)) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .unwrap_or_default()
                }
                _ => Vec::new(),
            };
            match l.stream {
                berth::protocol::Stream::Stdout => {
                    let _ = std::io::stdout().write_all(&bytes);
                    let _ = std::io::stdout().flush();
                }
                berth::protocol::Stream::Stderr => {
                    let _ = std::io::stderr().write_all(&bytes);
                }
                berth::protocol::Stream::System => {
                    let text = String::from_utf8_lossy(&bytes);
                    if dim {
                        eprint!("\x1b[2m{text}\x1b[0m");
                    } else {
                        eprint!("{text}");
                    }
                }
            }
        }
    }
}

/// Writes transcript bytes to the terminal: stdout to stdout, stderr and berth's own lines to
/// stderr.
fn print_piece(stream: berth::protocol::Stream, bytes: &[u8]) {
    use std::io::Write;
    match stream {
        berth::protocol::Stream::Stderr | berth::protocol::Stream::System => {
            let _ = std::io::stderr().write_all(bytes);
        }
        berth::protocol::Stream::Stdout => {
            let _ = std::io::stdout().write_all(bytes);
        }
    }
}

/// `berth logs`: through the daemon's local API; when it does not answer (stopped), or with
/// `--local`, straight from the spool under state_dir.
async fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    use berth::client::ClientError;
    use std::io::Write;
    if !a.local {
        let admin = AdminArgs {
            api: a.api.clone(),
            config: a.config.clone(),
            state_dir: a.state_dir.clone(),
            json: false,
        };
        let client = admin_client(&admin)?;
        let mut from = 0;
        loop {
            match client.transcript(&a.task_id, from).await {
                Ok(part) => {
                    for p in &part.pieces {
                        use base64::Engine;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(&p.data_b64)
                            .context("the daemon sent an undecodable transcript piece")?;
                        print_piece(p.stream, &bytes);
                    }
                    let _ = std::io::stdout().flush();
                    let more = part.next > from;
                    from = part.next;
                    if part.finished || (!a.follow && !more) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    if !more {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                Err(ClientError::Refused {
                    status: 404, body, ..
                }) => {
                    bail!(
                        "{}",
                        serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_string))
                            .unwrap_or(body)
                    );
                }
                // The daemon is down or will not serve us: the spool may still be readable.
                Err(e) if from == 0 => {
                    info!(error = %e, "local API unavailable; reading the spool directly");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let state_dir = match &a.state_dir {
        Some(d) => d.clone(),
        // Only state_dir matters here.
        None => admin_config(a.config.as_deref())
            .map(|c| c.state_dir)
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR)),
    };
    let journal = berth::journal::Journal::open_read_only(&state_dir)?;
    let Some(rec) = journal.by_task(&a.task_id)?.into_iter().next() else {
        bail!(
            "no transcript for task {} under {} (finished transcripts are kept for transcript.retention)",
            a.task_id,
            state_dir.display()
        );
    };
    let path =
        berth::spool::Spool::path_for(&berth::worker::spool_dir(&state_dir), &rec.execution_id);
    let mut printed = 0usize;
    loop {
        let t = berth::spool::Spool::read_all(&path)?;
        let mut seen = 0usize;
        for (stream, bytes) in &t.pieces {
            let end = seen + bytes.len();
            if end > printed {
                let from = printed.saturating_sub(seen);
                print_piece(*stream, &bytes[from..]);
                printed = end;
            }
            seen = end;
        }
        let _ = std::io::stdout().flush();
        if !a.follow || t.finished {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
