//! `berth cancel`: stop a task, through the daemon's local API (this host), or through a
//! control plane's HTTP API (`--server`, e.g. `berth dev`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::admin::{AdminArgs, admin_client};

#[derive(Args)]
pub(super) struct CancelArgs {
    /// The task.
    pub(super) task_id: String,
    /// Only this execution of it (default: every execution running here; with --server, the
    /// current one).
    #[arg(long, value_name = "ID")]
    pub(super) execution: Option<String>,
    /// Cancel through this control plane's HTTP API (e.g. http://127.0.0.1:8780 of berth dev)
    /// instead of the local daemon.
    #[arg(long, value_name = "URL")]
    pub(super) server: Option<String>,
    #[command(flatten)]
    pub(super) admin: AdminArgs,
}

pub(super) async fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    if let Some(server) = &a.server {
        return through_server(server, &a).await;
    }
    let done = admin_client(&a.admin)?
        .cancel(&a.task_id, a.execution.as_deref())
        .await
        .map_err(|e| match e {
            berth::admin::client::ClientError::Refused {
                status: 404, body, ..
            } => anyhow::anyhow!("{body}"),
            e => e.into(),
        })?;
    if a.admin.json {
        out!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        eprintln!(
            "cancelling {} (execution {}): SIGTERM now, SIGKILL after stop_grace_period",
            done.task_id,
            done.execution_ids.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn through_server(server: &str, a: &CancelArgs) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let id = berth::control::catalog::encode_segment(&a.task_id);
    let mut url = format!("{base}/v1/tasks/{id}/cancel");
    if let Some(e) = &a.execution {
        url.push_str("?execution_id=");
        url.extend(url::form_urlencoded::byte_serialize(e.as_bytes()));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let resp = http
        .post(url)
        .send()
        .await
        .with_context(|| format!("cannot reach the control plane at {base}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the control plane refused ({status}): {}",
            berth::admin::client::error_message(&body)
        );
    }
    if a.admin.json {
        out!("{body}");
    } else {
        eprintln!("cancellation of {} sent to {base}", a.task_id);
    }
    Ok(ExitCode::SUCCESS)
}
