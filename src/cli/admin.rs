//! `berth status`, `berth drain`, `berth resume`: the running daemon through its local API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use berth::config::{self, Config, Overrides};
use berth::secret::Secret;
use clap::Args;

use super::host_env;

#[derive(Args, Clone)]
pub(super) struct AdminArgs {
    /// The daemon's local API: host:port or a Unix socket path (default: api.listen of the
    /// config, else 127.0.0.1:9464).
    #[arg(long, env = "BERTH_API", hide_env_values = true, value_name = "ADDR")]
    pub(super) api: Option<String>,
    /// Config file (to find api.listen and state_dir, where the admin token is).
    #[arg(long, alias = "config-file", value_name = "PATH")]
    pub(super) config: Option<PathBuf>,
    /// State directory holding the admin token (overrides the config).
    #[arg(long, value_name = "PATH")]
    pub(super) state_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct DrainArgs {
    #[command(flatten)]
    pub(super) admin: AdminArgs,
    /// Wait until no task is running and every result is delivered (the upgrade procedure).
    #[arg(long)]
    pub(super) wait: bool,
    /// Give up waiting after this long (e.g. 2h); default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub(super) timeout: Option<String>,
}

/// The daemon's config as far as the admin commands need it (leniently: a placeholder id and
/// key, and defaults when there is no file).
pub(super) fn admin_config(config: Option<&Path>) -> Option<Config> {
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

/// Which daemon an admin command talks to, and where its state (token, spool) is.
pub(super) struct Target {
    /// `--api`, else api.listen of the config file, else the running `berth dev` worker (when
    /// there is no config file), else 127.0.0.1:9464.
    pub(super) listen: Option<config::Listen>,
    /// `--state-dir`, else the config file's, else the dev worker's, else the default.
    pub(super) state_dir: PathBuf,
}

/// Resolves the daemon's address and state dir from the flags (see [`Target`]).
pub(super) fn target(
    api: Option<&str>,
    config_flag: Option<&Path>,
    state_dir: Option<&Path>,
) -> anyhow::Result<Target> {
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    let has_file = config_flag.is_some() || default.exists();
    let cfg = admin_config(config_flag);
    // Without a config file, a `berth dev` of this user is the daemon people mean.
    let (dev_api, dev_state) = if has_file {
        (None, None)
    } else {
        super::devdir::find()
    };
    let listen = match api {
        Some(addr) => Some(
            config::parse_listen(addr)
                .map_err(anyhow::Error::msg)?
                .context("--api off: there is nothing to talk to")?,
        ),
        None => match (dev_api, &cfg) {
            (Some(addr), _) => config::parse_listen(&addr).ok().flatten(),
            // `None` from a config is api.listen: off — there is no local API.
            (None, Some(c)) => c.api.listen.clone(),
            (None, None) => config::parse_listen(config::DEFAULT_API_LISTEN)
                .ok()
                .flatten(),
        },
    };
    let state_dir = state_dir
        .map(Path::to_path_buf)
        .or(if has_file { None } else { dev_state })
        .or_else(|| cfg.map(|c| c.state_dir))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR));
    Ok(Target { listen, state_dir })
}

pub(super) fn admin_client(a: &AdminArgs) -> anyhow::Result<berth::admin::client::Client> {
    let t = target(
        a.api.as_deref(),
        a.config.as_deref(),
        a.state_dir.as_deref(),
    )?;
    let listen = t
        .listen
        .context("api.listen is off in the config: the daemon has no local API")?;
    Ok(berth::admin::client::Client::new(
        &listen,
        Some(&t.state_dir),
    )?)
}

pub(super) fn print_status(s: &berth::admin::status::Status, json: bool) {
    if json {
        out!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
    } else {
        out_raw!("{}", berth::admin::client::render(s));
    }
}

pub(super) async fn admin_status(a: AdminArgs) -> anyhow::Result<ExitCode> {
    let s = admin_client(&a)?.status().await?;
    print_status(&s, a.json);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn admin_resume(a: AdminArgs) -> anyhow::Result<ExitCode> {
    let s = admin_client(&a)?.set_draining(false).await?;
    print_status(&s, a.json);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn admin_drain(a: DrainArgs) -> anyhow::Result<ExitCode> {
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
