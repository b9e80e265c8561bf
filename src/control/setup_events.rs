//! Setup-phase timings posted to the control plane (PROTOCOL §7), so it can show where a
//! task's start-up time goes: `POST {server_root_url}/api/v1/agent/runs/{task_id}/client-events`
//! authorised by the run's own tokens. Best effort by contract: sent only when the run
//! carries both tokens, with a 5 s timeout, never retried, never waited for by the task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::secret::Secret;

/// The engine's image pull (or the local check `pull_policy` asks for).
pub const IMAGE_PULL: &str = "setup_worker_image_pull";
/// Preparing the sidecar volumes.
pub const SIDECAR_PREP: &str = "setup_worker_sidecar_prep";
/// Creating and starting the container.
pub const CONTAINER_START: &str = "setup_worker_container_start";
/// berth's own: cloning the environment's repositories inside the container.
pub const REPO_CLONE: &str = "berth_setup_repo_clone";
/// berth's own: the environment's setup commands.
pub const SETUP_COMMANDS: &str = "berth_setup_commands";

/// Longest a post may take (PROTOCOL §7).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Most posts in flight on this host; beyond it events are dropped, never queued.
pub const MAX_IN_FLIGHT: usize = 32;

/// Header naming the run.
const AGENT_ID_HEADER: &str = "X-Warp-Cloud-Agent-ID";
/// Header carrying the run's workload token.
const WORKLOAD_HEADER: &str = "X-Warp-Ambient-Workload-Token";

/// One setup phase that ran to its end (successfully or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// One of the event names above.
    pub name: &'static str,
    pub start: DateTime<Utc>,
    pub finish: DateTime<Utc>,
    /// The phase failed.
    pub is_error: bool,
}

impl Timed {
    /// A phase that began at `start` and ends now.
    pub fn until_now(name: &'static str, start: DateTime<Utc>, is_error: bool) -> Self {
        Timed {
            name,
            start,
            finish: Utc::now(),
            is_error,
        }
    }
}

/// The run's tokens: both, or no events at all.
#[derive(Clone)]
struct Credentials {
    api_key: Secret,
    workload: Secret,
}

fn credentials(env: Option<&BTreeMap<String, String>>) -> Option<Credentials> {
    let get = |k: &str| {
        env.and_then(|e| e.get(k))
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.as_str()))
    };
    Some(Credentials {
        api_key: get("WARP_API_KEY")?,
        workload: get("WARP_WORKLOAD_TOKEN")?,
    })
}

/// The events URL of run `task_id` under `root`; `None` when no root is configured or it
/// cannot carry a path.
pub fn event_url(root: &str, task_id: &str) -> Option<url::Url> {
    if root.is_empty() {
        return None;
    }
    let mut u = url::Url::parse(root).ok()?;
    {
        let mut path = u.path_segments_mut().ok()?;
        // The id is one segment, percent-encoded: it cannot add path components.
        path.pop_if_empty()
            .extend(["api", "v1", "agent", "runs", task_id, "client-events"]);
    }
    Some(u)
}

/// The JSON body the Go worker sends.
pub fn body(t: &Timed, event_uuid: uuid::Uuid) -> serde_json::Value {
    let ts = |d: &DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Millis, true);
    // From the millisecond timestamps as sent, so the three fields always agree.
    let latency_ms = (t.finish.timestamp_millis() - t.start.timestamp_millis()).max(0);
    serde_json::json!({
        "event_uuid": event_uuid.to_string(),
        "event_name": t.name,
        "timestamp": ts(&t.finish),
        "payload": {
            "start_ts": ts(&t.start),
            "finish_ts": ts(&t.finish),
            "latency_ms": latency_ms,
            "is_error": t.is_error,
        },
    })
}

/// The host's poster of setup events (one HTTP client, bounded posts in flight).
pub struct SetupEvents {
    client: reqwest::Client,
    slots: Arc<Semaphore>,
}

impl SetupEvents {
    /// A poster using berth's TLS configuration.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(TIMEOUT)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(SetupEvents {
            client,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// The events of one run, or `None` when it carries no tokens or there is no root URL.
    pub fn for_run(
        self: &Arc<Self>,
        root: &str,
        task_id: &str,
        env: Option<&BTreeMap<String, String>>,
    ) -> Option<RunEvents> {
        Some(RunEvents {
            creds: credentials(env)?,
            url: event_url(root, task_id)?,
            task_id: task_id.to_string(),
            poster: self.clone(),
        })
    }
}

/// Where one run's events go.
pub struct RunEvents {
    poster: Arc<SetupEvents>,
    url: url::Url,
    task_id: String,
    creds: Credentials,
}

impl RunEvents {
    /// Posts one event in the background; returns at once. Dropped (debug log) when too many
    /// posts are in flight.
    pub fn post(&self, t: Timed) {
        let Ok(slot) = self.poster.slots.clone().try_acquire_owned() else {
            debug!(event = t.name, "too many setup events in flight; dropped");
            return;
        };
        let req = match self.request(&t) {
            Ok(r) => r,
            Err(e) => {
                debug!(event = t.name, error = %e, "setup event not sent");
                return;
            }
        };
        let name = t.name;
        tokio::spawn(async move {
            let _slot = slot;
            // Only the status or the error's kind is logged: never a header.
            match req.send().await {
                Ok(r) if r.status().is_success() => debug!(event = name, "setup event sent"),
                Ok(r) => debug!(
                    event = name,
                    status = r.status().as_u16(),
                    "setup event refused"
                ),
                Err(e) => debug!(
                    event = name,
                    timeout = e.is_timeout(),
                    connect = e.is_connect(),
                    "setup event not delivered"
                ),
            }
        });
    }

    fn request(
        &self,
        t: &Timed,
    ) -> Result<reqwest::RequestBuilder, reqwest::header::InvalidHeaderValue> {
        let sensitive = |v: &str| {
            HeaderValue::from_str(v).map(|mut h| {
                h.set_sensitive(true);
                h
            })
        };
        Ok(self
            .poster
            .client
            .post(self.url.clone())
            .header(
                AUTHORIZATION,
                sensitive(&format!("Bearer {}", self.creds.api_key.expose()))?,
            )
            .header(AGENT_ID_HEADER, HeaderValue::from_str(&self.task_id)?)
            .header(WORKLOAD_HEADER, sensitive(self.creds.workload.expose())?)
            .json(&body(t, uuid::Uuid::new_v4())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_tokens_or_no_events() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("WARP_API_KEY", "k")], false),
            (&[("WARP_WORKLOAD_TOKEN", "w")], false),
            (&[("WARP_API_KEY", ""), ("WARP_WORKLOAD_TOKEN", "w")], false),
            (&[("WARP_API_KEY", "k"), ("WARP_WORKLOAD_TOKEN", "")], false),
            (&[("WARP_API_KEY", "k"), ("WARP_WORKLOAD_TOKEN", "w")], true),
        ];
        for (pairs, want) in cases {
            let e = env(pairs);
            assert_eq!(credentials(Some(&e)).is_some(), *want, "{pairs:?}");
        }
        assert!(credentials(None).is_none());
    }

    #[test]
    fn the_url_is_the_runs_events_path_under_the_root() {
        let cases = [
            (
                "https://app.warp.dev",
                "t-1",
                Some("https://app.warp.dev/api/v1/agent/runs/t-1/client-events"),
            ),
            (
                "http://127.0.0.1:8080/",
                "t-1",
                Some("http://127.0.0.1:8080/api/v1/agent/runs/t-1/client-events"),
            ),
            (
                "https://x/prefix/",
                "t",
                Some("https://x/prefix/api/v1/agent/runs/t/client-events"),
            ),
            // An id cannot add segments or climb out of the path.
            (
                "https://x",
                "../a/b",
                Some("https://x/api/v1/agent/runs/..%2Fa%2Fb/client-events"),
            ),
            ("", "t", None),
            ("mailto:a@b", "t", None),
        ];
        for (root, id, want) in cases {
            assert_eq!(
                event_url(root, id).map(|u| u.to_string()).as_deref(),
                want,
                "{root} {id}"
            );
        }
    }

    #[test]
    fn the_body_has_the_go_workers_shape() {
        let start = DateTime::parse_from_rfc3339("2026-12-03T10:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = Timed {
            name: IMAGE_PULL,
            start,
            finish: start + chrono::Duration::milliseconds(1500),
            is_error: true,
        };
        let id = uuid::Uuid::nil();
        assert_eq!(
            body(&t, id),
            serde_json::json!({
                "event_uuid": "00000000-0000-0000-0000-000000000000",
                "event_name": "setup_worker_image_pull",
                "timestamp": "2026-12-03T10:00:01.750Z",
                "payload": {
                    "start_ts": "2026-12-03T10:00:00.250Z",
                    "finish_ts": "2026-12-03T10:00:01.750Z",
                    "latency_ms": 1500,
                    "is_error": true,
                },
            })
        );
        // A clock step backwards never gives a negative latency.
        let back = Timed {
            finish: start - chrono::Duration::seconds(1),
            ..t
        };
        assert_eq!(body(&back, id)["payload"]["latency_ms"], 0);
    }

    #[tokio::test]
    async fn posts_in_flight_are_bounded() {
        crate::control::tls::install_default_provider();
        let tls = crate::control::tls::client_config(None, None, None).unwrap();
        let poster = Arc::new(SetupEvents::new(tls).unwrap());
        // A listener that accepts and never answers: every post stays in flight.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let root = format!("http://{}", l.local_addr().unwrap());
        let e = env(&[("WARP_API_KEY", "k"), ("WARP_WORKLOAD_TOKEN", "w")]);
        let run = poster.for_run(&root, "t", Some(&e)).unwrap();
        // `post` is synchronous: it hands the request to a spawned task and returns.
        for _ in 0..MAX_IN_FLIGHT + 10 {
            run.post(Timed::until_now(IMAGE_PULL, Utc::now(), false));
        }
        assert_eq!(poster.slots.available_permits(), 0, "bounded in flight");
    }
}
