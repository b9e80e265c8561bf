//! `berth submit`: submit a task to a control plane's HTTP API, stream its transcript, wait
//! for its outcome.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use berth::config;
use berth::devserver::state::{SubmitRequest, TaskRecord, TaskState};
use clap::Args;

use super::host_env;
use super::run::shutdown_on_signals;

#[derive(Args)]
pub(super) struct SubmitArgs {
    /// Control plane HTTP API.
    #[arg(
        long,
        env = "BERTH_SERVER",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8780"
    )]
    pub(super) server: String,
    /// Image to run.
    #[arg(long)]
    pub(super) image: String,
    /// Env var for the task: KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(super) env: Vec<String>,
    /// Wall-clock limit in seconds.
    #[arg(long)]
    pub(super) timeout_secs: Option<u64>,
    /// Return after submitting, without waiting (prints the task id on stdout).
    #[arg(long)]
    pub(super) no_wait: bool,
    /// Print the task's final record as JSON on stdout instead of streaming its transcript
    /// (with --no-wait: the record as submitted).
    #[arg(long)]
    pub(super) json: bool,
    /// The command to run.
    #[arg(last = true, required = true)]
    pub(super) command: Vec<String>,
}

pub(super) fn outcome_line(t: &TaskRecord) -> String {
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

pub(super) fn exit_code_of(t: &TaskRecord) -> ExitCode {
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

pub(super) async fn submit(a: SubmitArgs) -> anyhow::Result<ExitCode> {
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
        if a.json {
            out!("{}", serde_json::to_string_pretty(&rec)?);
        } else {
            out!("{}", rec.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = shutdown_on_signals();
    let streamer = if a.json {
        tokio::spawn(async {})
    } else {
        tokio::spawn(stream_transcript(
            http.clone(),
            base.clone(),
            rec.id.clone(),
        ))
    };
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
            // stderr: stdout is the task's own output, which may be piped on.
            eprintln!("{}", outcome_line(&t));
            if a.json {
                out!("{}", serde_json::to_string_pretty(&t)?);
            }
            return Ok(exit_code_of(&t));
        }
    }
}

/// Prints a task's transcript as it arrives: stdout to stdout, stderr to stderr, berth's own
/// lines to stderr (dimmed on a terminal).
pub(super) async fn stream_transcript(http: reqwest::Client, base: String, id: String) {
    use futures_util::StreamExt;
    use std::io::Write;
    let url = format!("{base}/v1/tasks/{id}/transcript?follow=true&format=jsonl");
    let Ok(resp) = http.get(url).send().await else {
        return;
    };
    let dim = super::colour::on_stderr();
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
                    crate::cli::stdout::write(&bytes);
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
