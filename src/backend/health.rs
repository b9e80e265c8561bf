//! The Docker engine's health as berth sees it: pinged every few seconds while it answers,
//! with a capped backoff while it does not. Admission rejects new tasks while the engine is
//! unreachable (so the server requeues them instead of them failing), and readiness reports
//! it. Running tasks ride out an outage on their own (see `task::wait_through_outages`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::backoff::Backoff;

/// How often a healthy engine is pinged.
const HEALTHY_EVERY: Duration = Duration::from_secs(5);
/// Longest pause between pings of an unreachable engine.
const RETRY_CAP: Duration = Duration::from_secs(5);

/// The last verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineState {
    /// The last ping succeeded.
    pub reachable: bool,
    /// Why the last ping failed.
    pub error: Option<String>,
    /// When `reachable` last changed.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Watches one engine.
pub struct Engine {
    backend: Arc<dyn Backend>,
    state: watch::Sender<EngineState>,
    poke: Notify,
}

impl Engine {
    /// Starts out reachable (berth checked the engine before getting here).
    pub fn new(backend: Arc<dyn Backend>) -> Arc<Self> {
        let (state, _) = watch::channel(EngineState {
            reachable: true,
            error: None,
            since: chrono::Utc::now(),
        });
        Arc::new(Engine {
            backend,
            state,
            poke: Notify::new(),
        })
    }

    /// Live verdicts.
    pub fn subscribe(&self) -> watch::Receiver<EngineState> {
        self.state.subscribe()
    }

    /// The last verdict.
    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    /// The engine answered the last ping.
    pub fn reachable(&self) -> bool {
        self.state.borrow().reachable
    }

    /// A call just failed: check now rather than at the next tick.
    pub fn suspect(&self) {
        self.poke.notify_one();
    }

    fn record(&self, result: Result<(), String>) {
        let now = chrono::Utc::now();
        let engine = self.backend.engine_name();
        self.state.send_if_modified(|s| match (&result, s.reachable) {
            (Ok(()), true) => false,
            (Ok(()), false) => {
                let down = (now - s.since).to_std().unwrap_or_default();
                info!(
                    down_s = down.as_secs(),
                    "{engine} reachable again; accepting tasks"
                );
                *s = EngineState {
                    reachable: true,
                    error: None,
                    since: now,
                };
                true
            }
            (Err(e), true) => {
                warn!(error = %e, "{engine} unreachable: new tasks are rejected (the server requeues them) and running tasks wait for it");
                *s = EngineState {
                    reachable: false,
                    error: Some(e.clone()),
                    since: now,
                };
                true
            }
            (Err(e), false) => {
                let changed = s.error.as_deref() != Some(e.as_str());
                s.error = Some(e.clone());
                changed
            }
        });
    }

    /// Pings until `shutdown`: every few seconds while healthy, with backoff while not.
    pub async fn monitor(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::capped(RETRY_CAP);
        loop {
            let result = tokio::select! {
                r = self.backend.ping() => r.map_err(|e| e.to_string()),
                _ = shutdown.cancelled() => return,
            };
            let ok = result.is_ok();
            self.record(result);
            let pause = if ok {
                backoff.reset();
                HEALTHY_EVERY
            } else {
                backoff.next_delay()
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.poke.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
