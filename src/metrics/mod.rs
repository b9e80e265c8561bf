//! Prometheus metrics: the Oz worker's names (PROTOCOL.md §6, so existing dashboards and alerts
//! keep working) plus berth's own. Counters are updated where things happen; gauges are read
//! at scrape time. Rendering is pure.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::failure::FailureReason;
use crate::protocol::WorkerMessage;

mod archive;
mod exposition;
mod histogram;
mod task_logs;

use exposition::{FAMILIES, View};
use histogram::Histogram;
pub use histogram::{DURATION_BUCKETS, MEMORY_BUCKETS};
pub use task_logs::{RecordResult, Refusal, RequestResult};

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
    /// A one-shot worker already took its task.
    OneShotComplete,
    /// The task needs what this worker cannot honour (a refused lifecycle-hook context).
    IncompatibleTask,
}

impl RejectKind {
    const ALL: [RejectKind; 6] = [
        RejectKind::AtCapacity,
        RejectKind::Draining,
        RejectKind::InsufficientResources,
        RejectKind::ShuttingDown,
        RejectKind::OneShotComplete,
        RejectKind::IncompatibleTask,
    ];

    fn label(self) -> &'static str {
        match self {
            RejectKind::AtCapacity => "at_capacity",
            RejectKind::Draining => "draining",
            RejectKind::InsufficientResources => "insufficient_resources",
            RejectKind::ShuttingDown => "shutting_down",
            RejectKind::OneShotComplete => "one_shot_complete",
            RejectKind::IncompatibleTask => "incompatible_task",
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
    archive: archive::Tallies,
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
    archive_in_flight: AtomicU64,
    archive_capture_bytes: AtomicU64,
    grace_entries: AtomicU64,
    task_logs: task_logs::Counters,
    labelled: Mutex<Labelled>,
}

/// Values read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub worker_id: String,
    /// berth's version.
    pub version: String,
    /// The backend tasks run on (`docker`).
    pub backend: &'static str,
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

    /// The Prometheus text exposition: every family of the table, in its order.
    pub fn render(&self, g: &Gauges) -> String {
        let l = lock(&self.labelled);
        let view = View { m: self, l: &l, g };
        let mut o = String::new();
        for family in FAMILIES {
            family.write(&view, &mut o);
        }
        o
    }
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
            backend: "docker",
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
            "berth_task_log_records_total{result=\"exported\"}",
            "berth_task_log_requests_total{result=\"deadline\"}",
            "berth_task_log_refusals_total{gate=\"endpoint\"}",
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

    /// Every counter, histogram and gauge touched, so the exposition's exact text is pinned.
    fn populated() -> (Metrics, Gauges) {
        let m = Metrics::default();
        for _ in 0..4 {
            m.claimed();
        }
        m.anchor_placed();
        m.execution_closed();
        m.execution_closed();
        m.closure_retry();
        m.egress(true);
        m.egress(true);
        m.egress(false);
        m.api_connection_shed(true);
        m.api_connection_shed(false);
        m.api_connection_shed(false);
        for k in RejectKind::ALL {
            m.rejected(k);
        }
        m.rejected(RejectKind::Draining);
        let ext = crate::protocol::TerminalExt {
            execution_id: "e".into(),
            message_id: "m".into(),
            exit_code: Some(0),
            duration_ms: 1,
            transcript_bytes: 7,
            transcript_lost_bytes: 5,
            usage: None,
            failure_details: None,
            assigned: false,
        };
        let ok = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: "m".into(),
            task_state: None,
            ext: Some(ext),
        };
        let cancelled = WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: "m".into(),
            task_state: Some(crate::protocol::TASK_STATE_CANCELLED.into()),
            ext: None,
        };
        m.finished(&ok, 2.5, 100);
        m.finished(&cancelled, 0.25, 3);
        m.finished(&failed(FailureReason::ImagePull), 12.0, 0);
        m.finished(&failed(FailureReason::ContainerOom), 4000.0, 9);
        m.finished(&failed(FailureReason::InvalidImage), 0.1, 0);
        m.finished(&failed(FailureReason::Cleanup), 30000.0, 1);
        m.finished(&failed(FailureReason::ContainerOom), 61.0, 2);
        for (cpu_ms, peak) in [(1500, 20 << 20), (90_000, 3 << 30), (0, 0)] {
            m.usage(&crate::protocol::Usage {
                cpu_ms,
                peak_memory_bytes: peak,
                read_bytes: 11,
                write_bytes: 22,
                network_rx_bytes: 33,
                network_tx_bytes: 44,
                samples: 3,
            });
        }
        m.archive_answered("docker", "active", "uploaded", "");
        m.archive_answered("docker", "cleanup_grace", "failed", "upload_rejected");
        m.archive_answered("docker", "cleanup_grace", "failed", "upload_rejected");
        m.archive_snapshot("docker", 0.2, 5000, true);
        m.archive_snapshot("docker", 2.0, 100, false);
        m.archive_upload("uploaded", 0.7);
        m.archive_upload("failed", 20.0);
        m.archive_in_flight(1);
        m.archive_in_flight(1);
        m.archive_in_flight(-1);
        m.archive_capture_bytes(2048);
        m.grace_entries(3);
        m.grace_result("docker", "released");
        m.task_log_records(RecordResult::Exported, 300);
        m.task_log_records(RecordResult::Failed, 128);
        m.task_log_records(RecordResult::TooLong, 1);
        m.task_log_records(RecordResult::Cut, 2);
        for r in [
            RequestResult::Ok,
            RequestResult::Ok,
            RequestResult::Unreachable,
        ] {
            m.task_log_request(r);
        }
        m.task_log_refused(Refusal::NoWorkloadToken);
        let g = Gauges {
            worker_id: "w\\1\n\"x\"".into(),
            version: "0.9.1".into(),
            backend: "docker",
            connected: true,
            active: 2,
            max: 8,
            draining: true,
            docker_reachable: true,
            reconnects_dial_failed: 3,
            reconnects_remote_close: 1,
            pulls_ok: 6,
            pulls_failed: 2,
            spool_bytes: 123_456,
            undelivered: 4,
            closures_pending: 1,
            memory_available: 8_589_934_592,
            disk_free: Some(42_000_000_000),
            uptime_secs: 3600,
            reloads: (2, 1),
            last_reload: Some((false, 1_700_000_000.25)),
            process: crate::process::ProcessStats {
                resident_memory_bytes: 31_457_280,
                virtual_memory_bytes: 1_234_567_890,
                cpu_seconds: 12.75,
                open_fds: 17,
                max_fds: 1024,
                start_time_seconds: 1_699_999_000.5,
            },
        };
        (m, g)
    }

    #[test]
    fn a_populated_exposition_is_exactly_the_golden_text() {
        let (m, g) = populated();
        let text = m.render(&g);
        assert_eq!(text, GOLDEN);
    }

    /// Captured from the series-by-series `render` this table replaced.
    const GOLDEN: &str = r#"# HELP oz_worker_connected 1 while connected to the control plane.
# TYPE oz_worker_connected gauge
oz_worker_connected 1
# HELP oz_worker_tasks_active Tasks holding a slot.
# TYPE oz_worker_tasks_active gauge
oz_worker_tasks_active 2
# HELP oz_worker_tasks_max_concurrent Slot count (0 = unlimited).
# TYPE oz_worker_tasks_max_concurrent gauge
oz_worker_tasks_max_concurrent 8
# HELP oz_worker_tasks_claimed_total Tasks claimed.
# TYPE oz_worker_tasks_claimed_total counter
oz_worker_tasks_claimed_total 4
# HELP oz_worker_tasks_rejected_total Assignments rejected, by reason.
# TYPE oz_worker_tasks_rejected_total counter
oz_worker_tasks_rejected_total{reason="at_capacity"} 1
oz_worker_tasks_rejected_total{reason="draining"} 2
oz_worker_tasks_rejected_total{reason="insufficient_resources"} 1
oz_worker_tasks_rejected_total{reason="shutting_down"} 1
oz_worker_tasks_rejected_total{reason="one_shot_complete"} 1
oz_worker_tasks_rejected_total{reason="incompatible_task"} 1
# HELP oz_worker_tasks_completed_total Tasks ended, by result.
# TYPE oz_worker_tasks_completed_total counter
oz_worker_tasks_completed_total{result="succeeded"} 1
oz_worker_tasks_completed_total{result="failed"} 5
oz_worker_tasks_completed_total{result="cancelled"} 1
# HELP oz_worker_task_duration_seconds Claim-to-result time, by result.
# TYPE oz_worker_task_duration_seconds histogram
oz_worker_task_duration_seconds_bucket{result="cancelled",le="1"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="5"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="15"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="30"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="60"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="300"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="900"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="1800"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="3600"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="7200"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="14400"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="28800"} 1
oz_worker_task_duration_seconds_bucket{result="cancelled",le="+Inf"} 1
oz_worker_task_duration_seconds_sum{result="cancelled"} 0.25
oz_worker_task_duration_seconds_count{result="cancelled"} 1
oz_worker_task_duration_seconds_bucket{result="failed",le="1"} 1
oz_worker_task_duration_seconds_bucket{result="failed",le="5"} 1
oz_worker_task_duration_seconds_bucket{result="failed",le="15"} 2
oz_worker_task_duration_seconds_bucket{result="failed",le="30"} 2
oz_worker_task_duration_seconds_bucket{result="failed",le="60"} 2
oz_worker_task_duration_seconds_bucket{result="failed",le="300"} 3
oz_worker_task_duration_seconds_bucket{result="failed",le="900"} 3
oz_worker_task_duration_seconds_bucket{result="failed",le="1800"} 3
oz_worker_task_duration_seconds_bucket{result="failed",le="3600"} 3
oz_worker_task_duration_seconds_bucket{result="failed",le="7200"} 4
oz_worker_task_duration_seconds_bucket{result="failed",le="14400"} 4
oz_worker_task_duration_seconds_bucket{result="failed",le="28800"} 4
oz_worker_task_duration_seconds_bucket{result="failed",le="+Inf"} 5
oz_worker_task_duration_seconds_sum{result="failed"} 34073.1
oz_worker_task_duration_seconds_count{result="failed"} 5
oz_worker_task_duration_seconds_bucket{result="succeeded",le="1"} 0
oz_worker_task_duration_seconds_bucket{result="succeeded",le="5"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="15"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="30"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="60"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="300"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="900"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="1800"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="3600"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="7200"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="14400"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="28800"} 1
oz_worker_task_duration_seconds_bucket{result="succeeded",le="+Inf"} 1
oz_worker_task_duration_seconds_sum{result="succeeded"} 2.5
oz_worker_task_duration_seconds_count{result="succeeded"} 1
# HELP berth_task_cpu_seconds CPU time of finished executions (sampled while they ran).
# TYPE berth_task_cpu_seconds histogram
berth_task_cpu_seconds_bucket{le="1"} 1
berth_task_cpu_seconds_bucket{le="5"} 2
berth_task_cpu_seconds_bucket{le="15"} 2
berth_task_cpu_seconds_bucket{le="30"} 2
berth_task_cpu_seconds_bucket{le="60"} 2
berth_task_cpu_seconds_bucket{le="300"} 3
berth_task_cpu_seconds_bucket{le="900"} 3
berth_task_cpu_seconds_bucket{le="1800"} 3
berth_task_cpu_seconds_bucket{le="3600"} 3
berth_task_cpu_seconds_bucket{le="7200"} 3
berth_task_cpu_seconds_bucket{le="14400"} 3
berth_task_cpu_seconds_bucket{le="28800"} 3
berth_task_cpu_seconds_bucket{le="+Inf"} 3
berth_task_cpu_seconds_sum 91.5
berth_task_cpu_seconds_count 3
# HELP berth_task_peak_memory_bytes Peak memory of finished executions.
# TYPE berth_task_peak_memory_bytes histogram
berth_task_peak_memory_bytes_bucket{le="16777216"} 1
berth_task_peak_memory_bytes_bucket{le="67108864"} 2
berth_task_peak_memory_bytes_bucket{le="268435456"} 2
berth_task_peak_memory_bytes_bucket{le="536870912"} 2
berth_task_peak_memory_bytes_bucket{le="1073741824"} 2
berth_task_peak_memory_bytes_bucket{le="2147483648"} 2
berth_task_peak_memory_bytes_bucket{le="4294967296"} 3
berth_task_peak_memory_bytes_bucket{le="17179869184"} 3
berth_task_peak_memory_bytes_bucket{le="68719476736"} 3
berth_task_peak_memory_bytes_bucket{le="+Inf"} 3
berth_task_peak_memory_bytes_sum 3242196992
berth_task_peak_memory_bytes_count 3
# HELP berth_task_disk_bytes_total Block-device bytes finished executions read and wrote.
# TYPE berth_task_disk_bytes_total counter
berth_task_disk_bytes_total{op="read"} 33
berth_task_disk_bytes_total{op="write"} 66
# HELP berth_task_network_bytes_total Network bytes finished executions received and sent.
# TYPE berth_task_network_bytes_total counter
berth_task_network_bytes_total{direction="rx"} 99
berth_task_network_bytes_total{direction="tx"} 132
# HELP oz_worker_task_failures_total Failed tasks, by phase and reason.
# TYPE oz_worker_task_failures_total counter
oz_worker_task_failures_total{phase="assignment",reason="unknown"} 0
oz_worker_task_failures_total{phase="backend",reason="task_timeout"} 0
oz_worker_task_failures_total{phase="backend",reason="task_cancelled"} 0
oz_worker_task_failures_total{phase="backend",reason="graceful_shutdown"} 0
oz_worker_task_failures_total{phase="backend",reason="image_pull"} 1
oz_worker_task_failures_total{phase="backend",reason="sidecar_prep"} 0
oz_worker_task_failures_total{phase="backend",reason="container_create"} 0
oz_worker_task_failures_total{phase="backend",reason="container_start"} 0
oz_worker_task_failures_total{phase="backend",reason="container_wait"} 0
oz_worker_task_failures_total{phase="backend",reason="container_exit"} 0
oz_worker_task_failures_total{phase="backend",reason="container_oom"} 2
oz_worker_task_failures_total{phase="backend",reason="workspace_setup"} 0
oz_worker_task_failures_total{phase="backend",reason="setup_command"} 0
oz_worker_task_failures_total{phase="assignment",reason="invalid_image"} 1
oz_worker_task_failures_total{phase="cleanup",reason="cleanup"} 1
oz_worker_task_failures_total{phase="backend",reason="unschedulable"} 0
oz_worker_task_failures_total{phase="backend",reason="evicted"} 0
oz_worker_task_failures_total{phase="backend",reason="pod_preempted"} 0
oz_worker_task_failures_total{phase="backend",reason="active_deadline"} 0
oz_worker_task_failures_total{phase="backend",reason="volume_mount"} 0
oz_worker_task_failures_total{phase="backend",reason="job_failed"} 0
# HELP oz_worker_websocket_reconnects_total Control-plane redials, by reason.
# TYPE oz_worker_websocket_reconnects_total counter
oz_worker_websocket_reconnects_total{reason="dial_failed"} 3
oz_worker_websocket_reconnects_total{reason="remote_close"} 1
# HELP oz_worker_info Always 1; the labels describe the worker.
# TYPE oz_worker_info gauge
oz_worker_info{version="0.9.1",backend="docker",worker_id="w\\1\n\"x\""} 1
# HELP berth_docker_reachable 1 while the Docker engine answers.
# TYPE berth_docker_reachable gauge
berth_docker_reachable 1
# HELP berth_draining 1 while drained (not accepting tasks).
# TYPE berth_draining gauge
berth_draining 1
# HELP berth_transcript_bytes_total Transcript bytes of finished executions.
# TYPE berth_transcript_bytes_total counter
berth_transcript_bytes_total 115
# HELP berth_transcript_lost_bytes_total Output bytes of finished executions that could not be stored (state_dir full) or were not read in time (counted in the engine's log); each gap is marked in its transcript.
# TYPE berth_transcript_lost_bytes_total counter
berth_transcript_lost_bytes_total 5
# HELP berth_transcript_resume_anchors_total Times live capture froze a task briefly and moved its transcript's resume point up to the engine's log end.
# TYPE berth_transcript_resume_anchors_total counter
berth_transcript_resume_anchors_total 1
# HELP berth_executions_closed_total execution_closed messages sent: cancelled executions whose sandbox was proven gone.
# TYPE berth_executions_closed_total counter
berth_executions_closed_total 2
# HELP berth_egress_connections_total Connections tasks asked berth's egress proxy for, by decision.
# TYPE berth_egress_connections_total counter
berth_egress_connections_total{decision="allowed"} 2
berth_egress_connections_total{decision="denied"} 1
# HELP berth_api_connections_shed_total Local API connections closed at the connection cap: the one waiting longest for a request head (idle), or the new one when every connection was answering a request (busy).
# TYPE berth_api_connections_shed_total counter
berth_api_connections_shed_total{reason="idle"} 1
berth_api_connections_shed_total{reason="busy"} 2
# HELP berth_execution_closure_retries_total Failed attempts to remove a cancelled execution's container (each is retried with backoff).
# TYPE berth_execution_closure_retries_total counter
berth_execution_closure_retries_total 1
# HELP berth_execution_closures_pending Cancelled executions whose execution_closed is still owed.
# TYPE berth_execution_closures_pending gauge
berth_execution_closures_pending 1
# HELP berth_task_log_records_total Task-log records by what became of them: exported, failed (in a batch the collector refused or did not answer; never retried), dropped (never sent), too_long (a line over 64 KiB, dropped whole), cut (a line cut by a hole in the output, dropped).
# TYPE berth_task_log_records_total counter
berth_task_log_records_total{result="exported"} 300
berth_task_log_records_total{result="failed"} 128
berth_task_log_records_total{result="dropped"} 0
berth_task_log_records_total{result="too_long"} 1
berth_task_log_records_total{result="cut"} 2
# HELP berth_task_log_requests_total Task-log export requests (one per batch) by how they ended.
# TYPE berth_task_log_requests_total counter
berth_task_log_requests_total{result="ok"} 2
berth_task_log_requests_total{result="token_unavailable"} 0
berth_task_log_requests_total{result="unreachable"} 1
berth_task_log_requests_total{result="http_error"} 0
berth_task_log_requests_total{result="deadline"} 0
# HELP berth_task_log_refusals_total Executions that asked for task-log export and did not get it, by the gate that refused (counted at each start, so again after a restart).
# TYPE berth_task_log_refusals_total counter
berth_task_log_refusals_total{gate="operator_disabled"} 0
berth_task_log_refusals_total{gate="logging_disabled"} 0
berth_task_log_refusals_total{gate="no_api_key"} 0
berth_task_log_refusals_total{gate="no_workload_token"} 1
berth_task_log_refusals_total{gate="endpoint"} 0
berth_task_log_refusals_total{gate="server_root_url"} 0
# HELP oz_worker_debug_archive_requests_total Debug-archive requests answered, by backend, ownership, outcome and reason.
# TYPE oz_worker_debug_archive_requests_total counter
oz_worker_debug_archive_requests_total{backend="docker",ownership="active",outcome="uploaded",reason=""} 1
oz_worker_debug_archive_requests_total{backend="docker",ownership="cleanup_grace",outcome="failed",reason="upload_rejected"} 2
# HELP oz_worker_debug_archive_snapshot_duration_seconds Time to build a debug-archive snapshot.
# TYPE oz_worker_debug_archive_snapshot_duration_seconds histogram
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="0.05"} 0
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="0.1"} 0
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="0.5"} 1
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="1"} 1
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="5"} 2
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="15"} 2
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="60"} 2
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="300"} 2
oz_worker_debug_archive_snapshot_duration_seconds_bucket{backend="docker",le="+Inf"} 2
oz_worker_debug_archive_snapshot_duration_seconds_sum{backend="docker"} 2.2
oz_worker_debug_archive_snapshot_duration_seconds_count{backend="docker"} 2
# HELP oz_worker_debug_archive_snapshot_bytes Size of debug-archive snapshots.
# TYPE oz_worker_debug_archive_snapshot_bytes histogram
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="4096"} 1
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="65536"} 2
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="262144"} 2
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="1048576"} 2
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="4194304"} 2
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="16777216"} 2
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="67108864"} 2
oz_worker_debug_archive_snapshot_bytes_bucket{backend="docker",le="+Inf"} 2
oz_worker_debug_archive_snapshot_bytes_sum{backend="docker"} 5100
oz_worker_debug_archive_snapshot_bytes_count{backend="docker"} 2
# HELP oz_worker_debug_archive_uploads_total Debug-archive uploads, by result.
# TYPE oz_worker_debug_archive_uploads_total counter
oz_worker_debug_archive_uploads_total{result="uploaded"} 1
oz_worker_debug_archive_uploads_total{result="failed"} 1
# HELP oz_worker_debug_archive_upload_duration_seconds Time to upload a debug archive, by result.
# TYPE oz_worker_debug_archive_upload_duration_seconds histogram
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="0.05"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="0.1"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="0.5"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="1"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="5"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="15"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="60"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="300"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="failed",le="+Inf"} 1
oz_worker_debug_archive_upload_duration_seconds_sum{result="failed"} 20
oz_worker_debug_archive_upload_duration_seconds_count{result="failed"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="0.05"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="0.1"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="0.5"} 0
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="1"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="5"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="15"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="60"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="300"} 1
oz_worker_debug_archive_upload_duration_seconds_bucket{result="uploaded",le="+Inf"} 1
oz_worker_debug_archive_upload_duration_seconds_sum{result="uploaded"} 0.7
oz_worker_debug_archive_upload_duration_seconds_count{result="uploaded"} 1
# HELP oz_worker_debug_archive_truncations_total Debug-archive snapshots that dropped records (first/last truncation).
# TYPE oz_worker_debug_archive_truncations_total counter
oz_worker_debug_archive_truncations_total{backend="docker"} 1
# HELP oz_worker_debug_archive_requests_in_flight Debug-archive requests waiting, snapshotting or uploading.
# TYPE oz_worker_debug_archive_requests_in_flight gauge
oz_worker_debug_archive_requests_in_flight 1
# HELP oz_worker_debug_archive_capture_bytes Disk bytes reserved for debug-archive snapshots in flight.
# TYPE oz_worker_debug_archive_capture_bytes gauge
oz_worker_debug_archive_capture_bytes 2048
# HELP oz_worker_cleanup_grace_entries Executions in their cleanup grace (still answering debug-archive requests).
# TYPE oz_worker_cleanup_grace_entries gauge
oz_worker_cleanup_grace_entries 3
# HELP oz_worker_cleanup_grace_results_total Cleanup graces ended, by backend and result.
# TYPE oz_worker_cleanup_grace_results_total counter
oz_worker_cleanup_grace_results_total{backend="docker",result="released"} 1
# HELP berth_spool_bytes Bytes of transcript spools on disk under state_dir.
# TYPE berth_spool_bytes gauge
berth_spool_bytes 123456
# HELP berth_undelivered_executions Executions whose transcript or result the server has not acknowledged.
# TYPE berth_undelivered_executions gauge
berth_undelivered_executions 4
# HELP berth_image_pulls_total Image pulls, by result.
# TYPE berth_image_pulls_total counter
berth_image_pulls_total{result="succeeded"} 6
berth_image_pulls_total{result="failed"} 2
# HELP berth_host_memory_available_bytes Memory available on the host.
# TYPE berth_host_memory_available_bytes gauge
berth_host_memory_available_bytes 8589934592
# HELP berth_state_dir_free_bytes Free disk under state_dir.
# TYPE berth_state_dir_free_bytes gauge
berth_state_dir_free_bytes 42000000000
# HELP berth_uptime_seconds Seconds since the worker started.
# TYPE berth_uptime_seconds gauge
berth_uptime_seconds 3600
# HELP berth_config_reloads_total Configuration reloads (SIGHUP) by outcome.
# TYPE berth_config_reloads_total counter
berth_config_reloads_total{result="applied"} 2
berth_config_reloads_total{result="refused"} 1
# HELP berth_config_last_reload_successful 1 when the last reload was applied (or none was tried), 0 when it was refused.
# TYPE berth_config_last_reload_successful gauge
berth_config_last_reload_successful 0
# HELP berth_config_last_reload_timestamp_seconds When the last reload was decided.
# TYPE berth_config_last_reload_timestamp_seconds gauge
berth_config_last_reload_timestamp_seconds 1700000000.25
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 31457280
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 1234567890
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.75
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 17
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1024
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1699999000.5
"#;

    #[test]
    fn phases_of_failure_reasons() {
        assert_eq!(failure_phase(FailureReason::InvalidImage), "assignment");
        assert_eq!(failure_phase(FailureReason::Cleanup), "cleanup");
        assert_eq!(failure_phase(FailureReason::SetupCommand), "backend");
    }
}
