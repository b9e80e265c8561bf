//! `berth reload`: SIGHUP to the daemon, then wait for its verdict through the local API and
//! exit with it — the unit's `ExecReload=`, so `systemctl reload berth` waits for the reload
//! and fails when it was refused.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::admin::{AdminArgs, admin_client};

#[derive(Args)]
pub(super) struct ReloadArgs {
    /// The daemon's process id (the unit passes $MAINPID).
    #[arg(long)]
    pub(super) pid: i32,
    /// Give up waiting for the verdict after this long.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub(super) timeout: String,
    #[command(flatten)]
    pub(super) admin: AdminArgs,
}

pub(super) async fn reload(a: ReloadArgs) -> anyhow::Result<ExitCode> {
    let timeout =
        berth::config::parse_duration(&a.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(a.pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .with_context(|| format!("cannot send SIGHUP to process {}", a.pid))
    };
    // Without a local API there is no verdict to wait for: the signal alone, said plainly.
    let client = match admin_client(&a.admin) {
        Ok(c) => c,
        Err(e) => {
            hup()?;
            eprintln!("berth: SIGHUP sent; its outcome is only in the log ({e:#})");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let before = match client.status().await {
        Ok(s) => s.last_reload.map_or(0, |r| r.generation),
        Err(e) => {
            hup()?;
            eprintln!("berth: SIGHUP sent; its outcome is only in the log ({e})");
            return Ok(ExitCode::SUCCESS);
        }
    };
    hup()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = client.status().await?;
        if let Some(r) = s.last_reload.filter(|r| r.generation > before) {
            if a.admin.json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            }
            if !r.restart_only.is_empty() {
                eprintln!(
                    "berth: these settings need a restart to change: {}",
                    r.restart_only.join(", ")
                );
            }
            if r.applied {
                eprintln!("reload #{} {}", r.generation, r.message);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("berth: reload #{} {}", r.generation, r.message);
            return Ok(ExitCode::FAILURE);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the daemon did not report the reload within {}", a.timeout);
        }
    }
}
