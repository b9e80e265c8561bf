//! `berth tasks`: recent executions on this host, through the daemon's local API, else
//! straight from the journal under state_dir (works while the daemon is stopped).

use std::process::ExitCode;

use berth::admin::client::ClientError;
use berth::admin::history::{self, HistoryRow};
use clap::Args;
use tracing::info;

use super::admin::{AdminArgs, admin_client, target};

#[derive(Args)]
pub(super) struct TasksArgs {
    #[command(flatten)]
    pub(super) admin: AdminArgs,
    /// How many executions to show, newest first.
    #[arg(long, short = 'n', default_value_t = history::DEFAULT_LIMIT)]
    pub(super) limit: usize,
    /// Read the journal under state_dir directly, without asking the daemon.
    #[arg(long)]
    pub(super) local: bool,
}

pub(super) async fn tasks(a: TasksArgs) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now().timestamp_millis();
    let rows = if a.local {
        from_journal(&a, now)?
    } else {
        match admin_client(&a.admin)?.history(a.limit).await {
            Ok(rows) => rows,
            Err(e @ ClientError::NotRunning { .. }) => {
                info!(error = %e, "local API unavailable; reading the journal directly");
                from_journal(&a, now).map_err(|j| anyhow::anyhow!("{e}; and {j:#}"))?
            }
            Err(e) => return Err(e.into()),
        }
    };
    if a.admin.json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        out_raw!("{}", history::render(&rows, now));
    }
    Ok(ExitCode::SUCCESS)
}

fn from_journal(a: &TasksArgs, now: i64) -> anyhow::Result<Vec<HistoryRow>> {
    let t = target(
        a.admin.api.as_deref(),
        a.admin.config.as_deref(),
        a.admin.state_dir.as_deref(),
    )?;
    let journal = berth::journal::Journal::open_read_only(&t.state_dir)?;
    Ok(history::recent(&journal.all()?, now, a.limit))
}
