//! The Prometheus text exposition as a table: one row per metric family, in the order a scrape
//! shows them, each naming how its samples are read. A new metric is a new row here (and one in
//! the metrics table of docs/operations.md); `Metrics::render` is the loop over the rows.

use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use super::histogram::Histogram;
use super::{
    Gauges, Labelled, Metrics, RecordResult, Refusal, RejectKind, RequestResult, failure_phase,
};
use crate::failure::FailureReason;

use Kind::{Counter, Gauge};
use Read::{By, Histograms, Maybe, One};

/// What one scrape reads: the counters, the labelled tallies (locked once for the whole
/// exposition, so its families agree with each other) and the gauges.
pub(super) struct View<'a> {
    pub(super) m: &'a Metrics,
    pub(super) l: &'a Labelled,
    pub(super) g: &'a Gauges,
}

/// One metric family: its `# HELP` and `# TYPE` head, then its samples.
pub(super) struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: Read,
}

/// The `# TYPE` of a family.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// How a family's samples are read at scrape time.
enum Read {
    /// One unlabelled sample.
    One(fn(&View<'_>) -> Num),
    /// One unlabelled sample, or no family at all (no head either) when there is no value.
    Maybe(fn(&View<'_>) -> Option<Num>),
    /// Labelled samples: the `name="value"` pairs, joined, and the sample's value.
    By(fn(&View<'_>) -> Vec<(String, Num)>),
    /// Histograms, each with its label pairs ("" for none); the head is written even when there are none yet.
    Histograms(for<'a> fn(&View<'a>) -> Vec<(String, &'a Histogram)>),
}

/// A sample's value, printed the way its source type prints: counts stay exact integers
/// (never through `f64`), fractional values print as Rust prints an `f64`.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::Int(n) => n.fmt(f),
            Num::Float(x) => x.fmt(f),
        }
    }
}

impl From<u64> for Num {
    fn from(n: u64) -> Self {
        Num::Int(n)
    }
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

impl Family {
    /// Writes the family: head, then samples (nothing at all for an absent `Maybe`).
    pub(super) fn write(&self, v: &View<'_>, o: &mut String) {
        let name = self.name;
        let samples = match self.read {
            One(read) => vec![(String::new(), read(v))],
            Maybe(read) => match read(v) {
                Some(n) => vec![(String::new(), n)],
                None => return,
            },
            By(read) => read(v),
            Histograms(read) => {
                self.head(o);
                for (labels, h) in read(v) {
                    h.render(o, name, &labels);
                }
                return;
            }
        };
        self.head(o);
        for (labels, n) in samples {
            let _ = if labels.is_empty() {
                writeln!(o, "{name} {n}")
            } else {
                writeln!(o, "{name}{{{labels}}} {n}")
            };
        }
    }

    fn head(&self, o: &mut String) {
        let (name, help) = (self.name, self.help);
        let _ = writeln!(
            o,
            "# HELP {name} {help}\n# TYPE {name} {}",
            self.kind.as_str()
        );
    }
}

/// A counter's value.
fn count(c: &AtomicU64) -> Num {
    Num::Int(c.load(Ordering::Relaxed))
}

/// A gauge that is 1 or 0.
fn flag(b: bool) -> Num {
    Num::Int(u64::from(b))
}

/// Samples of one label, in the order given (the label's whole vocabulary, zeros included).
fn by<'s, N: Into<Num>>(
    label: &str,
    samples: impl IntoIterator<Item = (&'s str, N)>,
) -> Vec<(String, Num)> {
    samples
        .into_iter()
        .map(|(value, n)| (format!("{label}=\"{value}\""), n.into()))
        .collect()
}

/// Histograms keyed by one label's value.
fn labelled<'a>(
    label: &str,
    hs: &'a std::collections::BTreeMap<&'static str, Histogram>,
) -> Vec<(String, &'a Histogram)> {
    hs.iter()
        .map(|(k, h)| (format!("{label}=\"{k}\""), h))
        .collect()
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every family, in exposition order. The `oz_worker_*` names and labels are the Oz worker's
/// (PROTOCOL.md §6), so its dashboards and alerts keep working; `process_*` are the standard
/// client-library names.
pub(super) static FAMILIES: &[Family] = &[
    Family {
        name: "oz_worker_connected",
        kind: Gauge,
        help: "1 while connected to the control plane.",
        read: One(|v| flag(v.g.connected)),
    },
    Family {
        name: "oz_worker_tasks_active",
        kind: Gauge,
        help: "Tasks holding a slot.",
        read: One(|v| Num::Int(v.g.active as u64)),
    },
    Family {
        name: "oz_worker_tasks_max_concurrent",
        kind: Gauge,
        help: "Slot count (0 = unlimited).",
        read: One(|v| Num::Int(v.g.max.into())),
    },
    Family {
        name: "oz_worker_tasks_claimed_total",
        kind: Counter,
        help: "Tasks claimed.",
        read: One(|v| count(&v.m.claimed)),
    },
    Family {
        name: "oz_worker_tasks_rejected_total",
        kind: Counter,
        help: "Assignments rejected, by reason.",
        read: By(|v| {
            let n = |k| v.l.rejected.get(&k).copied().unwrap_or(0);
            by("reason", RejectKind::ALL.map(|k| (k.label(), n(k))))
        }),
    },
    Family {
        name: "oz_worker_tasks_completed_total",
        kind: Counter,
        help: "Tasks ended, by result.",
        read: By(|v| {
            let n = |r| v.l.completed.get(r).copied().unwrap_or(0);
            by(
                "result",
                ["succeeded", "failed", "cancelled"].map(|r| (r, n(r))),
            )
        }),
    },
    Family {
        name: "oz_worker_task_duration_seconds",
        kind: Kind::Histogram,
        help: "Claim-to-result time, by result.",
        read: Histograms(|v| {
            let by_result = v.l.durations.iter();
            by_result
                .map(|(r, h)| (format!("result=\"{r}\""), h))
                .collect()
        }),
    },
    Family {
        name: "berth_task_cpu_seconds",
        kind: Kind::Histogram,
        help: "CPU time of finished executions (sampled while they ran).",
        read: Histograms(|v| vec![(String::new(), &v.l.usage.cpu)]),
    },
    Family {
        name: "berth_task_peak_memory_bytes",
        kind: Kind::Histogram,
        help: "Peak memory of finished executions.",
        read: Histograms(|v| vec![(String::new(), &v.l.usage.memory)]),
    },
    Family {
        name: "berth_task_disk_bytes_total",
        kind: Counter,
        help: "Block-device bytes finished executions read and wrote.",
        read: By(|v| {
            by(
                "op",
                [("read", v.l.usage.read), ("write", v.l.usage.written)],
            )
        }),
    },
    Family {
        name: "berth_task_network_bytes_total",
        kind: Counter,
        help: "Network bytes finished executions received and sent.",
        read: By(|v| by("direction", [("rx", v.l.usage.rx), ("tx", v.l.usage.tx)])),
    },
    Family {
        name: "oz_worker_task_failures_total",
        kind: Counter,
        help: "Failed tasks, by phase and reason.",
        read: By(|v| {
            let failures = FailureReason::ALL.into_iter().map(|r| {
                let key = (failure_phase(r), r.as_str().to_string());
                let n = v.l.failures.get(&key).copied().unwrap_or(0);
                let labels = format!("phase=\"{}\",reason=\"{}\"", key.0, key.1);
                (labels, Num::Int(n))
            });
            failures.collect()
        }),
    },
    Family {
        name: "oz_worker_websocket_reconnects_total",
        kind: Counter,
        help: "Control-plane redials, by reason.",
        read: By(|v| {
            by(
                "reason",
                [
                    ("dial_failed", v.g.reconnects_dial_failed),
                    ("remote_close", v.g.reconnects_remote_close),
                ],
            )
        }),
    },
    Family {
        name: "oz_worker_info",
        kind: Gauge,
        help: "Always 1; the labels describe the worker.",
        read: By(|v| {
            let (version, id) = (escape(&v.g.version), escape(&v.g.worker_id));
            let backend = escape(v.g.backend);
            let labels = format!("version=\"{version}\",backend=\"{backend}\",worker_id=\"{id}\"");
            vec![(labels, Num::Int(1))]
        }),
    },
    Family {
        name: "berth_docker_reachable",
        kind: Gauge,
        help: "1 while the Docker engine answers.",
        read: One(|v| flag(v.g.docker_reachable)),
    },
    Family {
        name: "berth_draining",
        kind: Gauge,
        help: "1 while drained (not accepting tasks).",
        read: One(|v| flag(v.g.draining)),
    },
    Family {
        name: "berth_transcript_bytes_total",
        kind: Counter,
        help: "Transcript bytes of finished executions.",
        read: One(|v| count(&v.m.transcript_bytes)),
    },
    Family {
        name: "berth_transcript_lost_bytes_total",
        kind: Counter,
        help: "Output bytes of finished executions that could not be stored (state_dir full) or were not read in time (counted in the engine's log); each gap is marked in its transcript.",
        read: One(|v| count(&v.m.transcript_lost_bytes)),
    },
    Family {
        name: "berth_transcript_resume_anchors_total",
        kind: Counter,
        help: "Times live capture froze a task briefly and moved its transcript's resume point up to the engine's log end.",
        read: One(|v| count(&v.m.resume_anchors)),
    },
    Family {
        name: "berth_executions_closed_total",
        kind: Counter,
        help: "execution_closed messages sent: cancelled executions whose sandbox was proven gone.",
        read: One(|v| count(&v.m.executions_closed)),
    },
    Family {
        name: "berth_egress_connections_total",
        kind: Counter,
        help: "Connections tasks asked berth's egress proxy for, by decision.",
        read: By(|v| {
            by(
                "decision",
                [
                    ("allowed", count(&v.m.egress_allowed)),
                    ("denied", count(&v.m.egress_denied)),
                ],
            )
        }),
    },
    Family {
        name: "berth_api_connections_shed_total",
        kind: Counter,
        help: "Local API connections closed at the connection cap: the one waiting longest for a request head (idle), or the new one when every connection was answering a request (busy).",
        read: By(|v| {
            by(
                "reason",
                [
                    ("idle", count(&v.m.api_shed_idle)),
                    ("busy", count(&v.m.api_shed_busy)),
                ],
            )
        }),
    },
    Family {
        name: "berth_execution_closure_retries_total",
        kind: Counter,
        help: "Failed attempts to remove a cancelled execution's container (each is retried with backoff).",
        read: One(|v| count(&v.m.closure_retries)),
    },
    Family {
        name: "berth_execution_closures_pending",
        kind: Gauge,
        help: "Cancelled executions whose execution_closed is still owed.",
        read: One(|v| Num::Int(v.g.closures_pending as u64)),
    },
    // Task-log export (PROTOCOL §8.3 names no metrics: berth's own).
    Family {
        name: "berth_task_log_records_total",
        kind: Counter,
        help: "Task-log records by what became of them: exported, failed (in a batch the collector refused or did not answer; never retried), dropped (never sent), too_long (a line over 64 KiB, dropped whole), cut (a line cut by a hole in the output, dropped).",
        read: By(|v| {
            let c = &v.m.task_logs.records;
            by(
                "result",
                RecordResult::ALL.map(|r| (r.label(), count(&c[r as usize]))),
            )
        }),
    },
    Family {
        name: "berth_task_log_requests_total",
        kind: Counter,
        help: "Task-log export requests (one per batch) by how they ended.",
        read: By(|v| {
            let c = &v.m.task_logs.requests;
            by(
                "result",
                RequestResult::ALL.map(|r| (r.label(), count(&c[r as usize]))),
            )
        }),
    },
    Family {
        name: "berth_task_log_refusals_total",
        kind: Counter,
        help: "Executions that asked for task-log export and did not get it, by the gate that refused (counted at each start, so again after a restart).",
        read: By(|v| {
            let c = &v.m.task_logs.refused;
            by(
                "gate",
                Refusal::ALL.map(|r| (r.label(), count(&c[r as usize]))),
            )
        }),
    },
    // Debug archives (PROTOCOL §8.4): the Go worker's names; labelled series appear once seen.
    Family {
        name: "oz_worker_debug_archive_requests_total",
        kind: Counter,
        help: "Debug-archive requests answered, by backend, ownership, outcome and reason.",
        read: By(|v| {
            let a = &v.l.archive;
            a.requests
                .iter()
                .map(|((b, o, out, r), n)| {
                    let labels = format!(
                        "backend=\"{b}\",ownership=\"{o}\",outcome=\"{out}\",reason=\"{r}\""
                    );
                    (labels, Num::Int(*n))
                })
                .collect()
        }),
    },
    Family {
        name: "oz_worker_debug_archive_snapshot_duration_seconds",
        kind: Kind::Histogram,
        help: "Time to build a debug-archive snapshot.",
        read: Histograms(|v| labelled("backend", &v.l.archive.snapshot_seconds)),
    },
    Family {
        name: "oz_worker_debug_archive_snapshot_bytes",
        kind: Kind::Histogram,
        help: "Size of debug-archive snapshots.",
        read: Histograms(|v| labelled("backend", &v.l.archive.snapshot_bytes)),
    },
    Family {
        name: "oz_worker_debug_archive_uploads_total",
        kind: Counter,
        help: "Debug-archive uploads, by result.",
        read: By(|v| {
            let n = |r| v.l.archive.uploads.get(r).copied().unwrap_or(0);
            by("result", ["uploaded", "failed"].map(|r| (r, n(r))))
        }),
    },
    Family {
        name: "oz_worker_debug_archive_upload_duration_seconds",
        kind: Kind::Histogram,
        help: "Time to upload a debug archive, by result.",
        read: Histograms(|v| labelled("result", &v.l.archive.upload_seconds)),
    },
    Family {
        name: "oz_worker_debug_archive_truncations_total",
        kind: Counter,
        help: "Debug-archive snapshots that dropped records (first/last truncation).",
        read: By(|v| {
            let t = &v.l.archive.truncations;
            t.iter()
                .map(|(b, n)| (format!("backend=\"{b}\""), Num::Int(*n)))
                .collect()
        }),
    },
    Family {
        name: "oz_worker_debug_archive_requests_in_flight",
        kind: Gauge,
        help: "Debug-archive requests waiting, snapshotting or uploading.",
        read: One(|v| count(&v.m.archive_in_flight)),
    },
    Family {
        name: "oz_worker_debug_archive_capture_bytes",
        kind: Gauge,
        help: "Disk bytes reserved for debug-archive snapshots in flight.",
        read: One(|v| count(&v.m.archive_capture_bytes)),
    },
    Family {
        name: "oz_worker_cleanup_grace_entries",
        kind: Gauge,
        help: "Executions in their cleanup grace (still answering debug-archive requests).",
        read: One(|v| count(&v.m.grace_entries)),
    },
    Family {
        name: "oz_worker_cleanup_grace_results_total",
        kind: Counter,
        help: "Cleanup graces ended, by backend and result.",
        read: By(|v| {
            let g = &v.l.archive.grace_results;
            g.iter()
                .map(|((b, r), n)| (format!("backend=\"{b}\",result=\"{r}\""), Num::Int(*n)))
                .collect()
        }),
    },
    Family {
        name: "berth_spool_bytes",
        kind: Gauge,
        help: "Bytes of transcript spools on disk under state_dir.",
        read: One(|v| Num::Int(v.g.spool_bytes)),
    },
    Family {
        name: "berth_undelivered_executions",
        kind: Gauge,
        help: "Executions whose transcript or result the server has not acknowledged.",
        read: One(|v| Num::Int(v.g.undelivered as u64)),
    },
    Family {
        name: "berth_image_pulls_total",
        kind: Counter,
        help: "Image pulls, by result.",
        read: By(|v| {
            by(
                "result",
                [("succeeded", v.g.pulls_ok), ("failed", v.g.pulls_failed)],
            )
        }),
    },
    Family {
        name: "berth_host_memory_available_bytes",
        kind: Gauge,
        help: "Memory available on the host.",
        read: One(|v| Num::Int(v.g.memory_available)),
    },
    Family {
        name: "berth_state_dir_free_bytes",
        kind: Gauge,
        help: "Free disk under state_dir.",
        read: Maybe(|v| v.g.disk_free.map(Num::Int)),
    },
    Family {
        name: "berth_uptime_seconds",
        kind: Gauge,
        help: "Seconds since the worker started.",
        read: One(|v| Num::Int(v.g.uptime_secs)),
    },
    Family {
        name: "berth_config_reloads_total",
        kind: Counter,
        help: "Configuration reloads (SIGHUP) by outcome.",
        read: By(|v| {
            let (applied, refused) = v.g.reloads;
            by("result", [("applied", applied), ("refused", refused)])
        }),
    },
    // Like Prometheus's own: 1 until a reload is refused, so an alert needs no history.
    Family {
        name: "berth_config_last_reload_successful",
        kind: Gauge,
        help: "1 when the last reload was applied (or none was tried), 0 when it was refused.",
        read: One(|v| flag(v.g.last_reload.is_none_or(|(ok, _)| ok))),
    },
    Family {
        name: "berth_config_last_reload_timestamp_seconds",
        kind: Gauge,
        help: "When the last reload was decided.",
        read: Maybe(|v| v.g.last_reload.map(|(_, at)| Num::Float(at))),
    },
    // The process_* values go through f64, the type client libraries report them in.
    Family {
        name: "process_resident_memory_bytes",
        kind: Gauge,
        help: "Resident memory size in bytes.",
        read: One(|v| Num::Float(v.g.process.resident_memory_bytes as f64)),
    },
    Family {
        name: "process_virtual_memory_bytes",
        kind: Gauge,
        help: "Virtual memory size in bytes.",
        read: One(|v| Num::Float(v.g.process.virtual_memory_bytes as f64)),
    },
    Family {
        name: "process_cpu_seconds_total",
        kind: Counter,
        help: "Total user and system CPU time spent in seconds.",
        read: One(|v| Num::Float(v.g.process.cpu_seconds)),
    },
    Family {
        name: "process_open_fds",
        kind: Gauge,
        help: "Number of open file descriptors.",
        read: One(|v| Num::Float(v.g.process.open_fds as f64)),
    },
    Family {
        name: "process_max_fds",
        kind: Gauge,
        help: "Maximum number of open file descriptors.",
        read: One(|v| Num::Float(v.g.process.max_fds as f64)),
    },
    Family {
        name: "process_start_time_seconds",
        kind: Gauge,
        help: "Start time of the process since unix epoch in seconds.",
        read: One(|v| Num::Float(v.g.process.start_time_seconds)),
    },
];
