//! `berth verify`: like `gitlab-runner verify` — the config, the API key and URL against the
//! control plane (a real handshake), Docker, the state dir and the policy; one line each,
//! exit 1 when any fails.

use std::process::ExitCode;

use berth::config::{self, Overrides};
use berth::worker::preflight::{self, Check, Running};
use clap::Args;

use super::host_env;
use super::run::{RunArgs, config_path, overrides};

#[derive(Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    pub(super) run: RunArgs,
    /// Print the checks as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let path = config_path(&a.run);
    let ov = Overrides {
        api_key_optional: true,
        ..overrides(&a.run)
    };
    let mut checks = Vec::new();
    match config::load(path.as_deref(), &ov, &host_env) {
        Err(e) => checks.push(Check {
            name: "config",
            ok: false,
            detail: format!("invalid:\n{e}"),
        }),
        Ok(cfg) => {
            checks.push(Check {
                name: "config",
                ok: true,
                detail: match &cfg.source {
                    Some(p) => format!("{} is valid", p.display()),
                    None => "no file: flags, environment and defaults are valid".into(),
                },
            });
            let running = running_daemon(&cfg).await;
            checks.extend(preflight::run(&cfg, host_env("DOCKER_HOST").as_deref(), running).await);
        }
    }
    if a.json {
        out!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            out!("{mark} {:<14} {}", c.name, c.detail);
        }
    }
    Ok(if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The daemon of this config, if its local API answers.
async fn running_daemon(cfg: &config::Config) -> Option<Running> {
    let listen = cfg.api.listen.as_ref()?;
    let client = berth::admin::client::Client::new(listen, Some(&cfg.state_dir)).ok()?;
    let s = client.status().await.ok()?;
    Some(Running {
        worker_id: s.worker_id,
        connected: s.connected,
        protocol: s.protocol,
    })
}
