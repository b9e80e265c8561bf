//! `berth run` and `berth check-config`: load the configuration, then run the daemon until a
//! signal (SIGHUP reloads).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth::config::{self, Config, LogFormat, Overrides};
use berth::secret::Secret;
use berth::worker::Worker;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::host_env;

/// Exit status for configuration errors.
const EXIT_CONFIG: u8 = 2;

#[derive(Args, Clone, Default)]
pub(super) struct RunArgs {
    /// Config file (default /etc/berth/config.yaml when it exists).
    #[arg(long, alias = "config-file", value_name = "PATH")]
    pub(super) config: Option<PathBuf>,
    /// Worker id (overrides worker_id).
    #[arg(long)]
    pub(super) worker_id: Option<String>,
    /// API key (also BERTH_API_KEY, or WARP_API_KEY for Oz compatibility).
    #[arg(long, env = "BERTH_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
    /// File holding the API key.
    #[arg(long, value_name = "PATH")]
    pub(super) api_key_file: Option<PathBuf>,
    /// Control-plane WebSocket URL.
    #[arg(long, env = "BERTH_CONTROL_PLANE_URL", hide_env_values = true)]
    pub(super) control_plane_url: Option<String>,
    /// Root URL handed to the agent.
    #[arg(long)]
    pub(super) server_root_url: Option<String>,
    /// Concurrency slots (0 = unlimited).
    #[arg(long)]
    pub(super) max_concurrent_tasks: Option<u32>,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long)]
    pub(super) log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub(super) log_format: Option<LogFormat>,
    /// Env var for every task container: KEY=VALUE, or KEY to pass the host's value.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub(super) env: Vec<String>,
    /// Bind for every task container: HOST:CONTAINER[:MODE].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:MODE]")]
    pub(super) volume: Vec<String>,
    /// Keep task containers after they exit.
    #[arg(long)]
    pub(super) no_cleanup: bool,
    /// Default for the agent's --idle-on-complete (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    pub(super) idle_on_complete: Option<String>,
    /// State directory.
    #[arg(long, value_name = "PATH")]
    pub(super) state_dir: Option<PathBuf>,
    /// What SIGTERM does to running tasks (preserve: leave them running; cancel: stop them).
    #[arg(long, value_enum)]
    pub(super) shutdown_mode: Option<config::ShutdownMode>,
    /// Local API address: host:port, an absolute Unix socket path, or off.
    #[arg(long, value_name = "ADDR")]
    pub(super) api_listen: Option<String>,
    /// Run exactly one task, then exit with its status (concurrency 1; for a CI job or a
    /// Kubernetes Job that starts one worker per task).
    #[arg(long)]
    pub(super) one_shot: bool,
}

pub(super) fn overrides(a: &RunArgs) -> Overrides {
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
        // One task at a time, whatever else says so: a one-shot worker runs one task.
        max_concurrent_tasks: if a.one_shot {
            Some(1)
        } else {
            a.max_concurrent_tasks
        },
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
        api_key_optional: false,
    }
}

/// `--config`, else the default path when it exists.
pub(super) fn config_path(a: &RunArgs) -> Option<PathBuf> {
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    a.config
        .clone()
        .or_else(|| default.exists().then(|| default.to_path_buf()))
}

pub(super) fn load_config(a: &RunArgs) -> Result<Config, config::ConfigErrors> {
    config::load(config_path(a).as_deref(), &overrides(a), &host_env)
}

/// Handle to change the log filter at runtime (reload).
pub(super) type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

pub(super) fn init_logging(level: &str, format: LogFormat) -> LogFilter {
    use tracing_subscriber::prelude::*;
    let filter = berth::transcript::redaction::log_filter(level);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Every line is scrubbed of registered secrets, whatever the level (issue 8.5).
    // Escape codes only on a terminal: a file or journald gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(super::colour::on_stderr())
        .with_writer(berth::transcript::redaction::ScrubbedStderr);
    let registry = tracing_subscriber::registry().with(filter);
    // A layer filter of its own: it only removes lines, whatever the (reloadable) filter says.
    let cap = || {
        tracing_subscriber::filter::filter_fn(|m| {
            !berth::transcript::redaction::capped(m.target(), m.level())
        })
    };
    match format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(cap()))
            .init(),
        LogFormat::Text => registry.with(fmt.with_filter(cap())).init(),
    }
    handle
}
/// On SIGHUP: re-reads the configuration (same flags); a valid one is applied (log level
/// here, the rest by the worker), an invalid one is logged in full and the running one kept.
/// Under systemd each reload is framed by `RELOADING=1` … `READY=1` with its outcome in
/// `STATUS=`, and every outcome is recorded for `berth status`, `/metrics` and `berth reload`.
pub(super) fn reload_on_sighup(
    args: RunArgs,
    log: LogFilter,
    apply: tokio::sync::mpsc::Sender<Config>,
    notifier: Option<berth::admin::notify::Notifier>,
    reloads: std::sync::Arc<berth::admin::reloads::Reloads>,
    tasks: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            error!("cannot install the SIGHUP handler; reload is unavailable");
            return;
        };
        let notify = |msg: &str| {
            if let Some(n) = &notifier {
                n.send(msg);
            }
        };
        loop {
            tokio::select! {
                r = hup.recv() => if r.is_none() { return },
                _ = stop.cancelled() => return,
            }
            notify(&berth::admin::notify::reloading_message());
            let mut outcomes = reloads.subscribe();
            let before = reloads.counts();
            match load_config(&args) {
                Ok(cfg) => {
                    info!(config = ?cfg.source, "reloading the configuration");
                    if tracing_subscriber::EnvFilter::try_new(&cfg.log_level).is_ok() {
                        let f = berth::transcript::redaction::log_filter(&cfg.log_level);
                        let _ = log.modify(|current| *current = f);
                    }
                    if apply.send(cfg).await.is_err() {
                        return;
                    }
                    // The worker decides (a runtime check may still refuse it).
                    let decided = outcomes.wait_for(|_| reloads.counts() != before);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), decided).await;
                }
                Err(e) => {
                    error!("reload refused, the running configuration is kept:\n{e}");
                    reloads.record(
                        false,
                        format!("refused: invalid configuration:\n{e}"),
                        Vec::new(),
                    );
                }
            }
            let status = match reloads.last() {
                Some(r) if r.applied => format!("reload #{} applied", r.generation),
                Some(r) => format!(
                    "reload #{} refused (see berth status or the log)",
                    r.generation
                ),
                None => "reload outcome unknown".to_string(),
            };
            notify(&format!("READY=1\nSTATUS={status}"));
        }
    });
}

/// Cancels the token on SIGTERM or SIGINT (a second signal exits at once).
pub(super) fn shutdown_on_signals() -> CancellationToken {
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

/// `berth check-config [FILE]`: `run`'s flags, and the file also as a positional argument.
#[derive(Args)]
pub(super) struct CheckConfigArgs {
    /// Config file (same as --config).
    #[arg(value_name = "FILE", conflicts_with = "config")]
    pub(super) file: Option<PathBuf>,
    #[command(flatten)]
    pub(super) run: RunArgs,
    /// Print the effective configuration as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// `berth check-config`: validates and prints the effective settings.
pub fn check_config(a: CheckConfigArgs) -> ExitCode {
    let json = a.json;
    let a = RunArgs {
        config: a.file.or(a.run.config),
        ..a.run
    };
    let a = &a;
    let ov = Overrides {
        api_key_optional: true,
        ..overrides(a)
    };
    match config::load(config_path(a).as_deref(), &ov, &host_env) {
        Ok(c) => {
            for note in &c.notes {
                eprintln!("berth: deprecated: {note}");
            }
            if c.control_plane.api_key_source.is_empty() {
                eprintln!(
                    "{}",
                    missing_key_warning(Path::new(UNIT_CREDENTIAL).exists())
                );
            }
            if json {
                match serde_json::to_string_pretty(&c.effective()) {
                    Ok(j) => out!("{j}"),
                    Err(e) => eprintln!("berth: cannot render the configuration as JSON: {e}"),
                }
                return ExitCode::SUCCESS;
            }
            if let Some(p) = &c.source {
                out!("# {}: configuration is valid", p.display());
            } else {
                out!(
                    "# no config file: configuration from flags, environment and defaults is valid"
                );
            }
            out_raw!("{}", c.effective_yaml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: invalid configuration:\n{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Where the shipped unit loads the API key credential from (`LoadCredentialEncrypted=`).
pub(super) const UNIT_CREDENTIAL: &str = "/etc/berth/api-key.cred";

/// `check-config` without any key source: a warning, not an error, because under the unit the
/// key arrives as a credential that only `berth run` sees.
pub(super) fn missing_key_warning(unit_credential_exists: bool) -> String {
    let unit = if unit_credential_exists {
        format!("{UNIT_CREDENTIAL} exists")
    } else {
        format!(
            "{UNIT_CREDENTIAL} does not exist yet: systemd-creds encrypt --name=api-key key.txt {UNIT_CREDENTIAL}"
        )
    };
    format!(
        "berth: warning: no API key configured here; `berth run` needs one. Under systemd the unit passes the credential api-key ({unit}); elsewhere set control_plane.api_key_file, --api-key-file or BERTH_API_KEY. `berth verify` checks the key against the control plane."
    )
}

/// `berth run`: the daemon.
pub fn run(rt: &tokio::runtime::Runtime, a: RunArgs) -> ExitCode {
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
    .filter_map(berth::transcript::redaction::url_password)
    .map(String::into_bytes);
    let _secrets = berth::transcript::redaction::register(
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
    for note in &cfg.notes {
        warn!("deprecated configuration: {note}");
    }
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
        let notifier = berth::admin::notify::Notifier::from_env(&host_env, std::process::id());
        let stop = shutdown.clone();
        let one_shot = a.one_shot;
        if one_shot && a.max_concurrent_tasks.is_some_and(|m| m != 1) {
            warn!("--one-shot runs one task: --max-concurrent-tasks is ignored");
        }
        let status = worker
            .one_shot(one_shot)
            .run(shutdown, move |h| {
                let reload = h.reload.clone();
                let reloads = h.live.reloads.clone();
                reload_on_sighup(
                    a,
                    log,
                    reload,
                    notifier.clone(),
                    reloads,
                    &h.tasks,
                    stop.clone(),
                );
                if let Some(n) = notifier {
                    h.tasks
                        .spawn(berth::admin::notify::run(n, h.live, h.heartbeat, stop));
                }
            })
            .await;
        match (one_shot, status) {
            (true, Some(code)) => ExitCode::from(code),
            // Stopped (a signal) before its task's result was delivered.
            (true, None) => ExitCode::from(EXIT_ONE_SHOT_UNFINISHED),
            (false, _) => ExitCode::SUCCESS,
        }
    })
}

/// Exit status of `--one-shot` when berth stopped before its task's result was delivered
/// (`docker run`'s code for "the error is not the command's").
pub(super) const EXIT_ONE_SHOT_UNFINISHED: u8 = 125;
