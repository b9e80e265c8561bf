//! The cluster's state behind one lock, shared by the HTTP side, the controllers and the
//! kubelet, and a notification on every change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth::backend::fake::Script;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::faults::{Fault, RequestRecord};
use super::logs::ContainerLog;
use super::store::Store;

/// How follow streams of `pods/log` end early, while the container still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowEnd {
    /// After this many entries were sent on one stream.
    AfterEntries(usize),
    /// When the log file is rotated (the pre-1.27 kubelets' bug).
    AtRotation,
}

/// What the simulated node and kubelet do; set through [`super::Kubelet`].
pub struct KubeletConfig {
    pub images: HashMap<String, Script>,
    pub missing: HashSet<String>,
    pub ignore_term: HashSet<String>,
    pub piece_size: usize,
    pub rotate_at: Option<usize>,
    pub follow_end: Option<FollowEnd>,
    pub split_streams: bool,
    pub trimmed_timestamps: bool,
    /// Pieces of a long line share its timestamp (Docker's json-file log).
    pub pieces_share_timestamp: bool,
    pub metrics: bool,
    /// (nanocores, bytes) reported by PodMetrics for every container.
    pub usage: (u64, u64),
    /// CPU cores and memory bytes the node offers.
    pub cpu: f64,
    pub memory: f64,
    pub node_labels: serde_json::Map<String, serde_json::Value>,
    /// How long a container that honours SIGTERM takes to exit (capped by the grace period).
    pub term_delay: Duration,
    /// Pause between the steps of starting a pod (schedule, pull, create, start).
    pub step_delay: Duration,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        let mut node_labels = serde_json::Map::new();
        for (k, v) in [
            ("kubernetes.io/hostname", "localhost"),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ] {
            node_labels.insert(k.into(), v.into());
        }
        KubeletConfig {
            images: HashMap::new(),
            missing: HashSet::new(),
            ignore_term: HashSet::new(),
            piece_size: 16 * 1024,
            rotate_at: None,
            follow_end: None,
            split_streams: false,
            trimmed_timestamps: false,
            pieces_share_timestamp: false,
            metrics: false,
            usage: (12_345_000, 1_234 * 1024),
            cpu: 4.0,
            memory: 8.0 * 1024.0 * 1024.0 * 1024.0,
            node_labels,
            term_delay: Duration::from_millis(200),
            step_delay: Duration::from_millis(5),
        }
    }
}

/// What the kubelet is told to do to a running pod.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kill {
    pub grace: Duration,
}

/// The kubelet's side of one pod.
pub struct PodRuntime {
    pub kill: tokio::sync::watch::Sender<Option<Kill>>,
    /// Every container has stopped (or never started) and nothing more will run.
    pub done: bool,
}

pub struct State {
    pub store: Store,
    pub kubelet: KubeletConfig,
    pub node_name: String,
    /// Container logs by (pod uid, container name).
    pub logs: HashMap<(String, String), ContainerLog>,
    /// The kubelet's pods by uid.
    pub runtimes: HashMap<String, PodRuntime>,
    pub faults: Vec<Fault>,
    pub requests: Vec<RequestRecord>,
    /// (verb, group, resource) the fake's user may not do.
    pub denied: Vec<(String, String, String)>,
    pub netpol_enforced: bool,
    pub next_ip: u32,
    pub bookmark_every: Duration,
    /// The node's log clock: stamps only grow.
    pub clock_ns: i64,
    /// Job uid -> when the Job controller may try creating its pod again.
    pub create_backoff: HashMap<String, (tokio::time::Instant, u32)>,
    pub token: String,
}

impl State {
    /// The next log stamp (wall clock, strictly increasing).
    pub fn tick(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.clock_ns = now.max(self.clock_ns + 1);
        self.clock_ns
    }
}

pub struct Shared {
    pub state: Mutex<State>,
    pub changed: Notify,
}

impl Shared {
    pub fn new(token: String) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                store: Store::new(),
                kubelet: KubeletConfig::default(),
                node_name: "localhost".into(),
                logs: HashMap::new(),
                runtimes: HashMap::new(),
                faults: Vec::new(),
                requests: Vec::new(),
                denied: Vec::new(),
                netpol_enforced: true,
                next_ip: 2,
                bookmark_every: Duration::from_millis(500),
                clock_ns: 0,
                create_backoff: HashMap::new(),
                token,
            }),
            changed: Notify::new(),
        })
    }

    /// Runs `f` under the lock, then wakes everyone waiting for a change.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let r = f(&mut self.state.lock());
        self.changed.notify_waiters();
        r
    }

    /// Waits until `look` answers, looking again after every change (and every 50 ms, so a
    /// time-based condition is seen too).
    pub async fn until<T>(&self, mut look: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = look(&mut self.state.lock()) {
                return t;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// Now as the apiserver writes timestamps (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now as a MicroTime (six digits).
pub fn micro_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses an RFC 3339 timestamp to ns since the epoch.
pub fn parse_ts(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}
