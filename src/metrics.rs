//! Prometheus metrics: the Oz worker's names (PROTOCOL.md §6, so existing dashboards and alerts
//! keep working) plus berth's own. Counters are updated where things happen; gauges are read
//! at scrape time. Rendering is pure.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::failure::FailureReason;
use crate::protocol::WorkerMessage;

/// Upper bounds (seconds) of the task duration histogram: agent tasks run seconds to hours.
pub const DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
];

/// Why an assignment was rejected (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectKind {
    /// Every slot is taken.
    AtCapacity,
    /// Drained by the server or the operator.
    Draining,
    /// Memory, CPU, disk, or the Docker engine is unavailable.
    InsufficientResources,
    /// The worker is shutting down.
    ShuttingDown,
}

impl RejectKind {
    const ALL: [RejectKind; 4] = [
        RejectKind::AtCapacity,
        RejectKind::Draining,
        RejectKind::InsufficientResources,
        RejectKind::ShuttingDown,
    ];

    fn label(self) -> &'static str {
        match self {
            RejectKind::AtCapacity => "at_capacity",
            RejectKind::Draining => "draining",
            RejectKind::InsufficientResources => "insufficient_resources",
            RejectKind::ShuttingDown => "shutting_down",
        }
    }
}

/// Where a failure happened (the `phase` label of `oz_worker_task_failures_total`).
pub fn failure_phase(r: FailureReason) -> &'static str {
    match r {
        FailureReason::InvalidImage | FailureReason::Unknown => "assignment",
        FailureReason::Cleanup => "cleanup",
        _ => "backend",
    }
}

/// The `result` label of a terminal message.
pub fn result_of(m: &WorkerMessage) -> Option<&'static str> {
    match m {
        WorkerMessage::TaskCompleted { task_state, .. } => Some(
            if task_state.as_deref() == Some(crate::protocol::TASK_STATE_CANCELLED) {
                "cancelled"
            } else {
                "succeeded"
            },
        ),
        WorkerMessage::TaskFailed { .. } => Some("failed"),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&DURATION_BUCKETS)
    }
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    /// Its series: buckets, `+Inf`, sum, count (`labels` without braces, may be empty).
    fn render(&self, o: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            o,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{braced} {}\n{name}_count{braced} {}",
            self.count, self.sum, self.count
        );
    }
}

/// Upper bounds (bytes) of the peak-memory histogram: 16 MiB to 64 GiB.
pub const MEMORY_BUCKETS: [f64; 9] = [
    16777216.0,
    67108864.0,
    268435456.0,
    536870912.0,
    1073741824.0,
    2147483648.0,
    4294967296.0,
    17179869184.0,
    68719476736.0,
];

/// What finished tasks used (histograms and byte totals).
#[derive(Debug)]
struct UsageTotals {
    cpu: Histogram,
    memory: Histogram,
    read: u64,
    written: u64,
    rx: u64,
    tx: u64,
}

impl Default for UsageTotals {
    fn default() -> Self {
        UsageTotals {
            cpu: Histogram::new(&DURATION_BUCKETS),
            memory: Histogram::new(&MEMORY_BUCKETS),
            read: 0,
            written: 0,
            rx: 0,
            tx: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Labelled {
    rejected: BTreeMap<RejectKind, u64>,
    completed: BTreeMap<&'static str, u64>,
    durations: BTreeMap<&'static str, Histogram>,
    failures: BTreeMap<(&'static str, String), u64>,
    usage: UsageTotals,
}

/// Counters updated by the worker.
#[derive(Debug, Default)]
pub struct Metrics {
    claimed: AtomicU64,
    transcript_bytes: AtomicU64,
    transcript_lost_bytes: AtomicU64,
    resume_anchors: AtomicU64,
    executions_closed: AtomicU64,
    closure_retries: AtomicU64,
    egress_allowed: AtomicU64,
    egress_denied: AtomicU64,
    api_shed_idle: AtomicU64,
    api_shed_busy: AtomicU64,
    labelled: Mutex<Labelled>,
}

/// Values read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub worker_id: String,
    /// berth's version.
    pub version: String,
    /// A control-plane connection is up.
    pub connected: bool,
    /// Tasks holding a slot.
    pub active: usize,
    /// Slot count (0 = unlimited).
    pub max: u32,
    /// Not accepting (drain).
    pub draining: bool,
    /// The Docker engine answered its last ping.
    pub docker_reachable: bool,
    /// Redials after a failed dial.
    pub reconnects_dial_failed: u64,
    /// Redials after an established connection dropped.
    pub reconnects_remote_close: u64,
    /// Image pulls that succeeded / failed.
    pub pulls_ok: u64,
    /// Image pulls that failed.
    pub pulls_failed: u64,
    /// Bytes in transcript spools on disk.
    pub spool_bytes: u64,
    /// Results and transcripts not yet acknowledged.
    pub undelivered: usize,
    /// Cancelled executions whose `execution_closed` is owed (sandbox not yet proven gone, or
    /// result not yet delivered).
    pub closures_pending: usize,
    /// Host memory available.
    pub memory_available: u64,
    /// Free disk under `state_dir`.
    pub disk_free: Option<u64>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Reloads applied and refused since start.
    pub reloads: (u64, u64),
    /// The last reload: applied, and when (seconds since the epoch); none yet: `None`.
    pub last_reload: Option<(bool, f64)>,
    /// berth's own process.
    pub process: crate::process::ProcessStats,
}

fn lock(m: &Mutex<Labelled>) -> parking_lot::MutexGuard<'_, Labelled> {
    m.lock()
}

impl Metrics {
    /// A task was claimed.
    pub fn claimed(&self) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
    }

    /// Live capture moved a transcript's resume point up to the engine's log.
    pub fn anchor_placed(&self) {
        self.resume_anchors.fetch_add(1, Ordering::Relaxed);
    }

    /// `execution_closed` was sent for a cancelled execution.
    pub fn execution_closed(&self) {
        self.executions_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to prove a cancelled execution's sandbox gone failed (it is retried).
    pub fn closure_retry(&self) {
        self.closure_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// What one finished execution used.
    pub fn usage(&self, u: &crate::protocol::Usage) {
        let mut l = lock(&self.labelled);
        let t = &mut l.usage;
        t.cpu.observe(u.cpu_ms as f64 / 1000.0);
        t.memory.observe(u.peak_memory_bytes as f64);
        t.read += u.read_bytes;
        t.written += u.write_bytes;
        t.rx += u.network_rx_bytes;
        t.tx += u.network_tx_bytes;
    }

    /// One connection through the egress proxy was allowed (`true`) or denied.
    pub fn egress(&self, allowed: bool) {
        let c = if allowed {
            &self.egress_allowed
        } else {
            &self.egress_denied
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The local API closed a connection at its cap: the one that waited longest for a request
    /// head (`idle`), or the new one because every connection was answering a request.
    pub fn api_connection_shed(&self, idle: bool) {
        let c = if idle {
            &self.api_shed_idle
        } else {
            &self.api_shed_busy
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// An assignment was rejected.
    pub fn rejected(&self, kind: RejectKind) {
        *lock(&self.labelled).rejected.entry(kind).or_default() += 1;
    }

    /// A terminal message was decided after `secs` seconds with `transcript_bytes` of output.
    pub fn finished(&self, m: &WorkerMessage, secs: f64, transcript_bytes: u64) {
        self.transcript_bytes
            .fetch_add(transcript_bytes, Ordering::Relaxed);
        if let Some(e) = m.ext() {
            self.transcript_lost_bytes
                .fetch_add(e.transcript_lost_bytes, Ordering::Relaxed);
        }
        let Some(result) = result_of(m) else {
            return;
        };
        let mut l = lock(&self.labelled);
        *l.completed.entry(result).or_default() += 1;
        l.durations.entry(result).or_default().observe(secs);
        if let WorkerMessage::TaskFailed {
            failure_reason: Some(r),
            ..
        } = m
        {
            *l.failures
                .entry((failure_phase(*r), r.as_str().to_string()))
                .or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let l = lock(&self.labelled);
        let mut o = String::new();
        let b = |v: bool| u8::from(v);
        scalar(
            &mut o,
            "oz_worker_connected",
            "gauge",
            "1 while connected to the control plane.",
            b(g.connected),
        );
        scalar(
            &mut o,
            "oz_worker_tasks_active",
            "gauge",
            "Tasks holding a slot.",
            g.active,
        );
        scalar(
            &mut o,
            "oz_worker_tasks_max_concurrent",
            "gauge",
            "Slot count (0 = unlimited).",
            g.max,
        );
        scalar(
            &mut o,
            "oz_worker_tasks_claimed_total",
            "counter",
            "Tasks claimed.",
            self.claimed.load(Ordering::Relaxed),
        );
        head(
            &mut o,
            "oz_worker_tasks_rejected_total",
            "counter",
            "Assignments rejected, by reason.",
        );
        for k in RejectKind::ALL {
            let n = l.rejected.get(&k).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "oz_worker_tasks_rejected_total{{reason=\"{}\"}} {n}",
                k.label()
            );
        }
        head(
            &mut o,
            "oz_worker_tasks_completed_total",
            "counter",
            "Tasks ended, by result.",
        );
        for r in ["succeeded", "failed", "cancelled"] {
            let n = l.completed.get(r).copied().unwrap_or(0);
            let _ = writeln!(o, "oz_worker_tasks_completed_total{{result=\"{r}\"}} {n}");
        }
        head(
            &mut o,
            "oz_worker_task_duration_seconds",
            "histogram",
            "Claim-to-result time, by result.",
        );
        for (r, h) in &l.durations {
            h.render(
                &mut o,
                "oz_worker_task_duration_seconds",
                &format!("result=\"{r}\""),
            );
        }
        let u = &l.usage;
        head(
            &mut o,
            "berth_task_cpu_seconds",
            "histogram",
            "CPU time of finished executions (sampled while they ran).",
        );
        u.cpu.render(&mut o, "berth_task_cpu_seconds", "");
        head(
            &mut o,
            "berth_task_peak_memory_bytes",
            "histogram",
            "Peak memory of finished executions.",
        );
        u.memory.render(&mut o, "berth_task_peak_memory_bytes", "");
        head(
            &mut o,
            "berth_task_disk_bytes_total",
            "counter",
            "Block-device bytes finished executions read and wrote.",
        );
        let _ = writeln!(
            o,
            "berth_task_disk_bytes_total{{op=\"read\"}} {}\nberth_task_disk_bytes_total{{op=\"write\"}} {}",
            u.read, u.written
        );
        head(
            &mut o,
            "berth_task_network_bytes_total",
            "counter",
            "Network bytes finished executions received and sent.",
        );
        let _ = writeln!(
            o,
            "berth_task_network_bytes_total{{direction=\"rx\"}} {}\nberth_task_network_bytes_total{{direction=\"tx\"}} {}",
            u.rx, u.tx
        );
        head(
            &mut o,
            "oz_worker_task_failures_total",
            "counter",
            "Failed tasks, by phase and reason.",
        );
        for r in FailureReason::ALL {
            let key = (failure_phase(r), r.as_str().to_string());
            let n = l.failures.get(&key).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "oz_worker_task_failures_total{{phase=\"{}\",reason=\"{}\"}} {n}",
                key.0, key.1
            );
        }
        head(
            &mut o,
            "oz_worker_websocket_reconnects_total",
            "counter",
            "Control-plane redials, by reason.",
        );
        let _ = writeln!(
            o,
            "oz_worker_websocket_reconnects_total{{reason=\"dial_failed\"}} {}\noz_worker_websocket_reconnects_total{{reason=\"remote_close\"}} {}",
            g.reconnects_dial_failed, g.reconnects_remote_close
        );
        head(
            &mut o,
            "oz_worker_info",
            "gauge",
            "Always 1; the labels describe the worker.",
        );
        let _ = writeln!(
            o,
            "oz_worker_info{{version=\"{}\",backend=\"docker\",worker_id=\"{}\"}} 1",
            escape(&g.version),
            escape(&g.worker_id)
        );
        scalar(
            &mut o,
            "berth_docker_reachable",
            "gauge",
            "1 while the Docker engine answers.",
            b(g.docker_reachable),
        );
        scalar(
            &mut o,
            "berth_draining",
            "gauge",
            "1 while drained (not accepting tasks).",
            b(g.draining),
        );
        scalar(
            &mut o,
            "berth_transcript_bytes_total",
            "counter",
            "Transcript bytes of finished executions.",
            self.transcript_bytes.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "berth_transcript_lost_bytes_total",
            "counter",
            "Output bytes of finished executions that could not be stored (state_dir full) or were not read in time (counted in the engine's log); each gap is marked in its transcript.",
            self.transcript_lost_bytes.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "berth_transcript_resume_anchors_total",
            "counter",
            "Times live capture froze a task briefly and moved its transcript's resume point up to the engine's log end.",
            self.resume_anchors.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "berth_executions_closed_total",
            "counter",
            "execution_closed messages sent: cancelled executions whose sandbox was proven gone.",
            self.executions_closed.load(Ordering::Relaxed),
        );
        head(
            &mut o,
            "berth_egress_connections_total",
            "counter",
            "Connections tasks asked berth's egress proxy for, by decision.",
        );
        let _ = writeln!(
            o,
            "berth_egress_connections_total{{decision=\"allowed\"}} {}\nberth_egress_connections_total{{decision=\"denied\"}} {}",
            self.egress_allowed.load(Ordering::Relaxed),
            self.egress_denied.load(Ordering::Relaxed)
        );
        head(
            &mut o,
            "berth_api_connections_shed_total",
            "counter",
            "Local API connections closed at the connection cap: the one waiting longest for a request head (idle), or the new one when every connection was answering a request (busy).",
        );
        let _ = writeln!(
            o,
            "berth_api_connections_shed_total{{reason=\"idle\"}} {}\nberth_api_connections_shed_total{{reason=\"busy\"}} {}",
            self.api_shed_idle.load(Ordering::Relaxed),
            self.api_shed_busy.load(Ordering::Relaxed)
        );
        scalar(
            &mut o,
            "berth_execution_closure_retries_total",
            "counter",
            "Failed attempts to remove a cancelled execution's container (each is retried with backoff).",
            self.closure_retries.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "berth_execution_closures_pending",
            "gauge",
            "Cancelled executions whose execution_closed is still owed.",
            g.closures_pending,
        );
        scalar(
            &mut o,
            "berth_spool_bytes",
            "gauge",
            "Bytes of transcript spools on disk under state_dir.",
            g.spool_bytes,
        );
        scalar(
            &mut o,
            "berth_undelivered_executions",
            "gauge",
            "Executions whose transcript or result the server has not acknowledged.",
            g.undelivered,
        );
        head(
            &mut o,
            "berth_image_pulls_total",
            "counter",
            "Image pulls, by result.",
        );
        let _ = writeln!(
            o,
            "berth_image_pulls_total{{result=\"succeeded\"}} {}\nberth_image_pulls_total{{result=\"failed\"}} {}",
            g.pulls_ok, g.pulls_failed
        );
        scalar(
            &mut o,
            "berth_host_memory_available_bytes",
            "gauge",
            "Memory available on the host.",
            g.memory_available,
        );
        if let Some(d) = g.disk_free {
            head(
                &mut o,
                "berth_state_dir_free_bytes",
                "gauge",
                "Free disk under state_dir.",
            );
            let _ = writeln!(o, "berth_state_dir_free_bytes {d}");
        }
        scalar(
            &mut o,
            "berth_uptime_seconds",
            "gauge",
            "Seconds since the worker started.",
            g.uptime_secs,
        );
        head(
            &mut o,
            "berth_config_reloads_total",
            "counter",
            "Configuration reloads (SIGHUP) by outcome.",
        );
        let _ = writeln!(
            o,
            "berth_config_reloads_total{{result=\"applied\"}} {}\nberth_config_reloads_total{{result=\"refused\"}} {}",
            g.reloads.0, g.reloads.1
        );
        // Like Prometheus's own: 1 until a reload is refused, so an alert needs no history.
        scalar(
            &mut o,
            "berth_config_last_reload_successful",
            "gauge",
            "1 when the last reload was applied (or none was tried), 0 when it was refused.",
            b(g.last_reload.is_none_or(|(ok, _)| ok)),
        );
        if let Some((_, at)) = g.last_reload {
            scalar(
                &mut o,
                "berth_config_last_reload_timestamp_seconds",
                "gauge",
                "When the last reload was decided.",
                at,
            );
        }
        let p = &g.process;
        for (name, kind, help, v) in [
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                p.virtual_memory_bytes as f64,
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                p.cpu_seconds,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                p.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ] {
            scalar(&mut o, name, kind, help, v);
        }
        o
    }
}

/// Writes a metric family's HELP and TYPE lines.
fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one unlabelled series: its HELP/TYPE head and its value.
fn scalar(o: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    head(o, name, kind, help);
    let _ = writeln!(o, "{name} {v}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn failed(reason: FailureReason) -> WorkerMessage {
        WorkerMessage::TaskFailed {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            failure_reason: Some(reason),
            exit_code: Some(1),
            ext: None,
        }
    }

    #[test]
    fn every_series_but_the_histogram_starts_at_zero() {
        let m = Metrics::default();
        let t = m.render(&Gauges {
            worker_id: "w\"1".into(),
            version: "0.1.0".into(),
            ..Gauges::default()
        });
        for s in [
            "oz_worker_connected",
            "oz_worker_tasks_active",
            "oz_worker_tasks_claimed_total",
            "oz_worker_tasks_rejected_total{reason=\"at_capacity\"}",
            "oz_worker_tasks_rejected_total{reason=\"draining\"}",
            "oz_worker_tasks_rejected_total{reason=\"insufficient_resources\"}",
            "oz_worker_tasks_completed_total{result=\"cancelled\"}",
            "oz_worker_task_failures_total{phase=\"backend\",reason=\"image_pull\"}",
            "oz_worker_task_failures_total{phase=\"assignment\",reason=\"invalid_image\"}",
            "oz_worker_websocket_reconnects_total{reason=\"remote_close\"}",
            "berth_transcript_bytes_total",
            "berth_transcript_lost_bytes_total",
            "berth_transcript_resume_anchors_total",
            "berth_executions_closed_total",
            "berth_execution_closure_retries_total",
            "berth_execution_closures_pending",
            "berth_api_connections_shed_total{reason=\"idle\"}",
            "berth_api_connections_shed_total{reason=\"busy\"}",
            "berth_config_reloads_total{result=\"applied\"}",
            "berth_config_reloads_total{result=\"refused\"}",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert_eq!(value(&t, s), Some(0.0), "{s}");
        }
        assert_eq!(value(&t, "berth_config_last_reload_successful"), Some(1.0));
        let refused = m.render(&Gauges {
            reloads: (1, 1),
            last_reload: Some((false, 1_700_000_000.5)),
            ..Gauges::default()
        });
        assert_eq!(
            value(&refused, "berth_config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            value(&refused, "berth_config_last_reload_timestamp_seconds"),
            Some(1_700_000_000.5)
        );
        assert!(!t.contains("oz_worker_task_duration_seconds_bucket"));
        assert!(t.contains(
            "oz_worker_info{version=\"0.1.0\",backend=\"docker\",worker_id=\"w\\\"1\"} 1"
        ));
    }

    #[test]
    fn a_known_sequence_of_tasks_gives_known_values() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.claimed();
        }
        m.rejected(RejectKind::AtCapacity);
        m.rejected(RejectKind::Draining);
        m.rejected(RejectKind::Draining);
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            ext: None,
        };
        let cancelled = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: "m".into(),
            task_state: Some(crate::protocol::TASK_STATE_CANCELLED.into()),
            ext: None,
        };
        m.finished(&ok, 2.0, 100);
        m.finished(&failed(FailureReason::ContainerExit), 40.0, 10);
        m.finished(&cancelled, 0.5, 0);
        let t = m.render(&Gauges::default());
        let v = |s: &str| value(&t, s).unwrap_or(-1.0);
        assert_eq!(v("oz_worker_tasks_claimed_total"), 3.0);
        assert_eq!(
            v("oz_worker_tasks_rejected_total{reason=\"draining\"}"),
            2.0
        );
        assert_eq!(
            v("oz_worker_tasks_completed_total{result=\"succeeded\"}"),
            1.0
        );
        assert_eq!(v("oz_worker_tasks_completed_total{result=\"failed\"}"), 1.0);
        assert_eq!(
            v("oz_worker_tasks_completed_total{result=\"cancelled\"}"),
            1.0
        );
        assert_eq!(
            v("oz_worker_task_failures_total{phase=\"backend\",reason=\"container_exit\"}"),
            1.0
        );
        assert_eq!(v("berth_transcript_bytes_total"), 110.0);
        assert_eq!(
            v("oz_worker_task_duration_seconds_bucket{result=\"failed\",le=\"30\"}"),
            0.0
        );
        assert_eq!(
            v("oz_worker_task_duration_seconds_bucket{result=\"failed\",le=\"60\"}"),
            1.0
        );
        assert_eq!(
            v("oz_worker_task_duration_seconds_bucket{result=\"succeeded\",le=\"+Inf\"}"),
            1.0
        );
        assert_eq!(
            v("oz_worker_task_duration_seconds_sum{result=\"failed\"}"),
            40.0
        );
    }

    #[test]
    fn phases_of_failure_reasons() {
        assert_eq!(failure_phase(FailureReason::InvalidImage), "assignment");
        assert_eq!(failure_phase(FailureReason::Cleanup), "cleanup");
        assert_eq!(failure_phase(FailureReason::SetupCommand), "backend");
    }
}
