//! The record of configuration reloads (SIGHUP): the last one's outcome for `berth status`,
//! `/metrics` and `systemctl reload` (which waits for it through `berth reload`).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One reload's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    /// 1 for the first reload since start, then counting up.
    pub generation: u64,
    /// When it was decided, ms since the epoch.
    pub at_ms: i64,
    /// Applied (true) or refused, the running configuration kept (false).
    pub applied: bool,
    /// Why it was refused, or what was applied.
    pub message: String,
    /// Keys that changed but only take effect after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_only: Vec<String>,
}

/// Every reload's outcome, as it is decided.
#[derive(Debug)]
pub struct Reloads {
    last: watch::Sender<Option<LastReload>>,
    counts: Mutex<(u64, u64)>,
}

impl Default for Reloads {
    fn default() -> Self {
        Reloads {
            last: watch::channel(None).0,
            counts: Mutex::new((0, 0)),
        }
    }
}

impl Reloads {
    /// Records an outcome; returns its generation.
    pub fn record(&self, applied: bool, message: String, restart_only: Vec<String>) -> u64 {
        let mut counts = self.counts.lock();
        if applied {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        let generation = counts.0 + counts.1;
        self.last.send_replace(Some(LastReload {
            generation,
            at_ms: chrono::Utc::now().timestamp_millis(),
            applied,
            message,
            restart_only,
        }));
        generation
    }

    /// The last outcome, if there was a reload.
    pub fn last(&self) -> Option<LastReload> {
        self.last.borrow().clone()
    }

    /// Reloads applied and refused since start.
    pub fn counts(&self) -> (u64, u64) {
        *self.counts.lock()
    }

    /// Follows the outcomes (for whoever waits on a reload).
    pub fn subscribe(&self) -> watch::Receiver<Option<LastReload>> {
        self.last.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_up_and_the_last_one_is_kept() {
        let r = Reloads::default();
        assert_eq!(r.last(), None);
        assert_eq!(r.record(true, "applied".into(), vec![]), 1);
        assert_eq!(r.record(false, "bad".into(), vec![]), 2);
        let last = r.last().unwrap();
        assert_eq!(
            (last.generation, last.applied, last.message.as_str()),
            (2, false, "bad")
        );
        assert_eq!(r.counts(), (1, 1));
    }
}
