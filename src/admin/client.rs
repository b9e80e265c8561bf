//! The client side of the local API, used by `berth status`, `berth drain` and `berth resume`,
//! and the human rendering of a status (pure).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin::status::Status;
use crate::config::Listen;

/// Why a local API call failed, phrased for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error(
        "berth is not running, or its local API is elsewhere: nothing answers at {address} ({reason}). Start it (systemctl start berth), or pass --api ADDR (api.listen of its config)"
    )]
    NotRunning {
        /// Address tried.
        address: String,
        /// Cause.
        reason: String,
    },
    /// The daemon refused: the call needs admin rights this client does not have.
    #[error(
        "the daemon at {address} refused (HTTP 403): this needs the admin token or the Unix socket, and {token}. Run it as a user who may read <state_dir>/admin-token (e.g. sudo, or pass --state-dir to where it is), or set api.listen to a Unix socket (e.g. /run/berth/api.sock) and use a member of api.socket_group"
    )]
    Forbidden {
        address: String,
        /// What became of the token (never its value).
        token: String,
    },
    /// The daemon failed or rejected the request.
    #[error("{address} answered HTTP {status}: {body}")]
    Refused {
        address: String,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
    /// The answer was not a status.
    #[error("{address} sent an unreadable answer: {reason}")]
    Garbled {
        address: String,
        /// Cause.
        reason: String,
    },
}

/// A connection to one daemon's local API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    address: String,
    token: Option<String>,
    /// Where the token was looked for and what happened (for a refusal's message).
    token_note: String,
}

impl Client {
    /// A client for `listen`; `token_dir` is the daemon's `state_dir` (the admin token is read
    /// from it when readable; the Unix socket needs none).
    pub fn new(listen: &Listen, token_dir: Option<&Path>) -> Result<Self, ClientError> {
        let address = listen.to_string();
        let fail = |e: reqwest::Error| ClientError::NotRunning {
            address: address.clone(),
            reason: e.to_string(),
        };
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let (http, base) = match listen {
            Listen::Tcp(a) => (builder.build().map_err(fail)?, format!("http://{a}")),
            Listen::Unix(p) => (
                builder.unix_socket(p.as_path()).build().map_err(fail)?,
                "http://berth".to_string(),
            ),
        };
        let (token, token_note) = read_token(token_dir);
        Ok(Client {
            http,
            base,
            address,
            token,
            token_note,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            ClientError::NotRunning {
                address: self.address.clone(),
                reason,
            }
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(ClientError::Forbidden {
                address: self.address.clone(),
                token: self.token_note.clone(),
            });
        }
        if !status.is_success() {
            return Err(ClientError::Refused {
                address: self.address.clone(),
                status: status.as_u16(),
                body: error_message(&body),
            });
        }
        serde_json::from_str(&body).map_err(|e| ClientError::Garbled {
            address: self.address.clone(),
            reason: e.to_string(),
        })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }

    /// `GET /v1/tasks/{id}/transcript?from=N[&execution_id=E]`.
    pub async fn transcript(
        &self,
        task_id: &str,
        execution_id: Option<&str>,
        from: u64,
    ) -> Result<crate::admin::status::TranscriptPart, ClientError> {
        // Task ids are the control plane's; keep them one path segment.
        let id = crate::control::catalog::encode_segment(task_id);
        let mut url = format!("{}/v1/tasks/{id}/transcript?from={from}", self.base);
        if let Some(e) = execution_id {
            url.push_str("&execution_id=");
            url.extend(url::form_urlencoded::byte_serialize(e.as_bytes()));
        }
        self.call(self.http.get(url)).await
    }

    /// `GET /v1/history?limit=N`: recent executions, newest first.
    pub async fn history(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::admin::history::HistoryRow>, ClientError> {
        self.call(
            self.http
                .get(format!("{}/v1/history?limit={limit}", self.base)),
        )
        .await
    }

    /// `POST /v1/tasks/{id}/cancel[?execution_id=E]`.
    pub async fn cancel(
        &self,
        task_id: &str,
        execution_id: Option<&str>,
    ) -> Result<crate::admin::api::Cancelled, ClientError> {
        let id = crate::control::catalog::encode_segment(task_id);
        let mut url = format!("{}/v1/tasks/{id}/cancel", self.base);
        if let Some(e) = execution_id {
            url.push_str("?execution_id=");
            url.extend(url::form_urlencoded::byte_serialize(e.as_bytes()));
        }
        self.call(self.http.post(url)).await
    }

    /// `POST /v1/drain` or `/v1/resume`.
    pub async fn set_draining(&self, drain: bool) -> Result<Status, ClientError> {
        let path = if drain { "drain" } else { "resume" };
        self.call(self.http.post(format!("{}/v1/{path}", self.base)))
            .await
    }
}

/// What an error answer says: its JSON `error` field (the local API's and `berth dev`'s
/// form), else the body as sent.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// The admin token under `dir`, and a note on where it was looked for.
fn read_token(dir: Option<&Path>) -> (Option<String>, String) {
    let Some(dir) = dir else {
        return (None, "no state_dir is known to find the token in".into());
    };
    let path: PathBuf = dir.join(crate::admin::api::TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => (
            Some(t.trim().to_string()),
            format!("the token from {} was not accepted", path.display()),
        ),
        Ok(_) => (None, format!("{} is empty", path.display())),
        Err(e) => (None, format!("{} could not be read ({e})", path.display())),
    }
}

fn bytes(n: u64) -> String {
    crate::units::human_bytes(n)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `berth status` for people: a summary, then one line per task.
pub fn render(s: &Status) -> String {
    let w = &s.worker;
    let h = &w.host;
    let mut out = String::new();
    let connection = match (&s.protocol, s.connected) {
        (Some(p), true) => format!("connected ({p})"),
        _ => "NOT connected (redialling)".to_string(),
    };
    let ready = match &s.not_ready {
        None => "ready".to_string(),
        Some(why) => format!("NOT ready: {why}"),
    };
    let slots = if w.max_concurrent_tasks == 0 {
        format!("{} running (unlimited)", w.active_tasks)
    } else {
        format!("{}/{} in use", w.active_tasks, w.max_concurrent_tasks)
    };
    let accepting = if w.draining {
        "draining"
    } else if w.accepting {
        "accepting"
    } else {
        "not accepting"
    };
    let docker = if h.docker.reachable {
        format!("Docker {} reachable", h.docker.version)
    } else {
        format!(
            "Docker UNREACHABLE ({})",
            s.docker_error.as_deref().unwrap_or("no answer")
        )
    };
    out.push_str(&format!(
        "worker   {} (berth {}), up {}\ncontrol  {connection}; {ready}\nslots    {slots}, {accepting}; {} undelivered, {} closing\nhost     {} CPUs, load {:.2}, memory {} of {} available, {} free disk; {docker}\n",
        s.worker_id,
        s.version,
        age(w.uptime_secs),
        s.undelivered,
        s.closing,
        h.cpus,
        h.load_1m,
        bytes(h.memory_available_bytes),
        bytes(h.memory_total_bytes),
        bytes(h.disk_free_bytes),
    ));
    if let Some(r) = &s.last_reload {
        let when =
            age(u64::try_from(chrono::Utc::now().timestamp_millis() - r.at_ms).unwrap_or(0) / 1000);
        let outcome = if r.applied { "applied" } else { "REFUSED" };
        let message = r.message.lines().next().unwrap_or_default();
        out.push_str(&format!(
            "reload   #{} {outcome} {when} ago: {message}\n",
            r.generation
        ));
        if !r.restart_only.is_empty() {
            out.push_str(&format!(
                "         needs a restart to change: {}\n",
                r.restart_only.join(", ")
            ));
        }
    }
    if s.tasks.is_empty() {
        out.push_str("\nno tasks\n");
        return out;
    }
    let rows: Vec<[String; 8]> = s
        .tasks
        .iter()
        .map(|t| {
            [
                t.task_id.clone(),
                if t.execution_id.is_empty() {
                    "-".to_string()
                } else {
                    t.execution_id.clone()
                },
                t.state.clone(),
                age(t.age_secs),
                if t.image.is_empty() {
                    "-".to_string()
                } else {
                    t.image.clone()
                },
                bytes(t.output_bytes),
                t.usage
                    .map_or("-".into(), |u| format!("{:.1}s", u.cpu_ms as f64 / 1000.0)),
                t.usage.map_or("-".into(), |u| bytes(u.peak_memory_bytes)),
            ]
        })
        .collect();
    let head = [
        "TASK",
        "EXECUTION",
        "STATE",
        "AGE",
        "IMAGE",
        "OUTPUT",
        "CPU",
        "PEAK MEM",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 7 {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push('\n');
    out.push_str(&line(head));
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status::example()
    }

    #[test]
    fn a_status_renders_as_a_summary_and_a_table() {
        let text = render(&status());
        assert_eq!(
            text,
            "worker   host-1 (berth 0.1.0), up 1h02m\n\
             control  connected (berth/1); ready\n\
             slots    1/4 in use, accepting; 1 undelivered, 0 closing\n\
             host     2 CPUs, load 0.50, memory 6.0 GiB of 8.0 GiB available, 100.0 GiB free disk; Docker 20.10.24 reachable\n\
             \n\
             TASK    EXECUTION  STATE    AGE    IMAGE        OUTPUT   CPU    PEAK MEM\n\
             task-1  e          running  1m15s  python:3.12  1.5 KiB  12.3s  512.0 MiB\n"
        );
    }

    #[test]
    fn trouble_is_spelled_out() {
        let mut s = status();
        s.connected = false;
        s.protocol = None;
        s.ready = false;
        s.not_ready = Some("not connected to the control plane".into());
        s.worker.draining = true;
        s.worker.host.docker.reachable = false;
        s.docker_error = Some("connection refused".into());
        s.tasks.clear();
        let text = render(&s);
        assert!(
            text.contains("NOT connected (redialling); NOT ready: not connected"),
            "{text}"
        );
        assert!(text.contains("draining"), "{text}");
        assert!(
            text.contains("Docker UNREACHABLE (connection refused)"),
            "{text}"
        );
        assert!(text.ends_with("no tasks\n"), "{text}");
    }
}
