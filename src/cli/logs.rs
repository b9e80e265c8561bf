//! `berth logs`: a task's transcript, from the daemon or straight from the spool.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tracing::info;

use super::admin::{AdminArgs, admin_client, target};

#[derive(Args)]
pub(super) struct LogsArgs {
    /// The task.
    pub(super) task_id: String,
    /// One execution of the task (default: its latest).
    #[arg(long, value_name = "ID")]
    pub(super) execution: Option<String>,
    /// Keep printing until the transcript is finished.
    #[arg(short, long)]
    pub(super) follow: bool,
    /// Read the spool under state_dir directly, without asking the daemon.
    #[arg(long)]
    pub(super) local: bool,
    // --json prints one JSON object per piece: {offset, stream, data | data_b64}.
    #[command(flatten)]
    pub(super) admin: AdminArgs,
}

/// Where pieces go: the terminal's streams, or JSON lines on stdout.
struct Printer {
    json: bool,
    offset: u64,
}

impl Printer {
    fn piece(&mut self, stream: berth::protocol::Stream, bytes: &[u8]) {
        if self.json {
            let line = berth::devserver::TranscriptLine::new(self.offset, stream, bytes.to_vec());
            out!("{}", serde_json::to_string(&line).unwrap_or_default());
        } else {
            print_piece(stream, bytes);
        }
        self.offset += bytes.len() as u64;
    }
}

/// Writes transcript bytes to the terminal: stdout to stdout, stderr and berth's own lines to
/// stderr.
pub(super) fn print_piece(stream: berth::protocol::Stream, bytes: &[u8]) {
    use std::io::Write;
    match stream {
        berth::protocol::Stream::Stderr | berth::protocol::Stream::System => {
            let _ = std::io::stderr().write_all(bytes);
        }
        berth::protocol::Stream::Stdout => {
            crate::cli::stdout::write(bytes);
        }
    }
}

/// `berth logs`: through the daemon's local API; when it does not answer (stopped), or with
/// `--local`, straight from the spool under state_dir.
pub(super) async fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    use berth::admin::client::ClientError;
    use std::io::Write;
    let mut out = Printer {
        json: a.admin.json,
        offset: 0,
    };
    if !a.local {
        let client = admin_client(&a.admin)?;
        let mut from = 0;
        loop {
            match client
                .transcript(&a.task_id, a.execution.as_deref(), from)
                .await
            {
                Ok(part) => {
                    for p in &part.pieces {
                        use base64::Engine;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(&p.data_b64)
                            .context("the daemon sent an undecodable transcript piece")?;
                        out.piece(p.stream, &bytes);
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
                }) => bail!("{body}"),
                // Only a daemon that does not answer sends us to the spool: a refusal is
                // reported as such (the spool is the daemon's and usually unreadable too).
                Err(e @ ClientError::NotRunning { .. }) if from == 0 => {
                    info!(error = %e, "local API unavailable; reading the spool directly");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let state_dir = target(
        a.admin.api.as_deref(),
        a.admin.config.as_deref(),
        a.admin.state_dir.as_deref(),
    )?
    .state_dir;
    let journal = berth::journal::Journal::open_read_only(&state_dir)?;
    let rec = journal
        .by_task(&a.task_id)?
        .into_iter()
        .find(|r| a.execution.as_deref().is_none_or(|e| r.execution_id == e));
    let Some(rec) = rec else {
        bail!(
            "no transcript for task {}{} under {} (finished transcripts are kept for transcript.retention)",
            a.task_id,
            a.execution
                .as_deref()
                .map(|e| format!(" execution {e}"))
                .unwrap_or_default(),
            state_dir.display()
        );
    };
    let path = berth::transcript::spool::Spool::path_for(
        &berth::worker::spool_dir(&state_dir),
        &rec.execution_id,
    );
    let mut printed = 0usize;
    loop {
        let t = berth::transcript::spool::Spool::read_all(&path)?;
        let mut seen = 0usize;
        for (stream, bytes) in &t.pieces {
            let end = seen + bytes.len();
            if end > printed {
                let from = printed.saturating_sub(seen);
                out.piece(*stream, &bytes[from..]);
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
