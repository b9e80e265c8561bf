//! The worker's live state, as reported to the control plane (`worker_status`, berth/1), to
//! local monitoring (`/v1/status`, `/readyz`, `/metrics`) and to `berth status`.
//!
//! Host readings are cheap on purpose: only memory is refreshed (sysinfo), the load average is
//! one read of `/proc/loadavg`, free disk one `statvfs`.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::backend::health::Engine;
use crate::control::session::SessionStats;
use crate::control::shipper::{Link, Outbound};
use crate::metrics::{Gauges, Metrics};
use crate::protocol::{DockerStatus, EngineStatus, HostStatus, WorkerMessage, WorkerStatus};
use crate::supervisor::Snapshot;

/// Shortest gap between two `worker_status` messages sent because slots changed.
const COALESCE: Duration = Duration::from_secs(1);

/// One task row of `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub task_id: String,
    pub execution_id: String,
    /// `running` or `delivering`.
    pub state: String,
    /// Seconds since the claim.
    pub age_secs: u64,
    /// Image asked for.
    pub image: String,
    /// Transcript bytes so far.
    pub output_bytes: u64,
    /// Resource use so far (sampled every few seconds while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::protocol::Usage>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub worker_id: String,
    /// berth's version.
    pub version: String,
    /// Connected to the control plane.
    pub connected: bool,
    /// `berth/1` or `oz/1` (while connected).
    pub protocol: Option<String>,
    /// Ready for work: connected, Docker reachable, accepting.
    pub ready: bool,
    /// Why not ready.
    pub not_ready: Option<String>,
    /// `worker_status` fields (slots, host, Docker).
    #[serde(flatten)]
    pub worker: WorkerStatus,
    /// The Docker engine's last error while unreachable.
    pub docker_error: Option<String>,
    /// Executions whose transcript or result is not yet acknowledged.
    pub undelivered: usize,
    /// Cancelled executions whose `execution_closed` is still owed.
    #[serde(default)]
    pub closing: usize,
    /// Executions held.
    pub tasks: Vec<TaskRow>,
    /// The last configuration reload's outcome (none since start: `None`).
    #[serde(default)]
    pub last_reload: Option<crate::admin::reloads::LastReload>,
}

/// One piece of a transcript on the wire of the local API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    /// `stdout`, `stderr` or `system`.
    pub stream: crate::protocol::Stream,
    /// The bytes, base64 (transcripts may be binary).
    pub data_b64: String,
}

/// `GET /v1/tasks/{id}/transcript?from=N`: up to 1 MiB from byte `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptPart {
    /// The execution (the one asked for, else the latest of the task).
    pub execution_id: String,
    /// Pieces from `from` on.
    pub pieces: Vec<Piece>,
    /// Where the next request starts.
    pub next: u64,
    /// The transcript is complete and `next` is its end.
    pub finished: bool,
}

/// Largest transcript part one request returns.
pub const TRANSCRIPT_PART: usize = 1 << 20;

impl Status {
    /// A typical status: connected on berth/1, one of four slots busy (unit-test fixture).
    #[cfg(test)]
    pub(crate) fn example() -> Status {
        use crate::protocol::{DockerStatus, EngineStatus, HostStatus, WorkerStatus};

        Status {
            worker_id: "host-1".into(),
            version: "0.1.0".into(),
            connected: true,
            protocol: Some("berth/1".into()),
            ready: true,
            not_ready: None,
            worker: WorkerStatus {
                active_tasks: 1,
                max_concurrent_tasks: 4,
                accepting: true,
                draining: false,
                uptime_secs: 3725,
                host: HostStatus {
                    cpus: 2.0,
                    load_1m: 0.5,
                    memory_total_bytes: 8 << 30,
                    memory_available_bytes: 6 << 30,
                    disk_free_bytes: 100 << 30,
                    docker: DockerStatus {
                        reachable: true,
                        version: "20.10.24".into(),
                    },
                    engine: EngineStatus {
                        backend: "docker".into(),
                        reachable: true,
                        version: "20.10.24".into(),
                    },
                },
            },
            docker_error: None,
            undelivered: 1,
            closing: 0,
            last_reload: None,
            tasks: vec![TaskRow {
                task_id: "task-1".into(),
                execution_id: "e".into(),
                state: "running".into(),
                age_secs: 75,
                image: "python:3.12".into(),
                output_bytes: 1536,
                usage: Some(crate::protocol::Usage {
                    cpu_ms: 12_340,
                    peak_memory_bytes: 512 << 20,
                    samples: 3,
                    ..crate::protocol::Usage::default()
                }),
            }],
        }
    }
}

/// Everything the views read.
pub struct Live {
    pub worker_id: String,
    /// `state_dir`.
    pub state_dir: PathBuf,
    /// Session counters.
    pub session: Arc<SessionStats>,
    /// Slots and tasks.
    pub slots: watch::Receiver<Snapshot>,
    /// Engine health.
    pub engine: Arc<Engine>,
    /// Engine version (checked at start-up).
    pub docker_version: String,
    /// Pull counters.
    pub backend: Arc<dyn Backend>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Start time.
    pub started: std::time::Instant,
    /// The journal (which execution a task is, for transcripts).
    pub journal: Arc<crate::journal::Journal>,
    /// Configuration reloads and their outcomes.
    pub reloads: Arc<crate::admin::reloads::Reloads>,
    cpus: f64,
    system: Mutex<Option<sysinfo::System>>,
}

fn load_1m() -> f64 {
    sysinfo::System::load_average().map_or(0.0, |l| l.one)
}

/// Bytes in the files of `dir` (one level: spools live flat in it; the dot-named disk reserve
/// is not a spool).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Live {
    /// A live view.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        worker_id: String,
        state_dir: PathBuf,
        session: Arc<SessionStats>,
        slots: watch::Receiver<Snapshot>,
        engine: Arc<Engine>,
        docker_version: String,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        journal: Arc<crate::journal::Journal>,
    ) -> Self {
        let host = crate::supervisor::capacity::Host::read();
        Live {
            worker_id,
            state_dir,
            session,
            slots,
            engine,
            docker_version,
            backend,
            metrics,
            started: std::time::Instant::now(),
            journal,
            reloads: Arc::default(),
            cpus: host.cpus,
            system: Mutex::new(sysinfo::System::new().ok()),
        }
    }

    fn memory(&self) -> (u64, u64) {
        let mut s = self.system.lock();
        let Some(s) = s.as_mut() else {
            return (0, 0);
        };
        s.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
        (s.total_memory(), s.available_memory())
    }

    /// The `worker_status` message body.
    pub fn worker_status(&self) -> WorkerStatus {
        let snap = self.slots.borrow().clone();
        let (total, available) = self.memory();
        let reachable = self.engine.reachable();
        WorkerStatus {
            active_tasks: snap.active,
            max_concurrent_tasks: snap.max,
            accepting: !snap.draining
                && !snap.stopping
                && reachable
                && (snap.max == 0 || snap.active < snap.max as usize),
            draining: snap.draining,
            uptime_secs: self.started.elapsed().as_secs(),
            host: HostStatus {
                cpus: self.cpus,
                load_1m: load_1m(),
                memory_total_bytes: total,
                memory_available_bytes: available,
                disk_free_bytes: crate::supervisor::capacity::free_disk(&self.state_dir)
                    .unwrap_or(0),
                docker: DockerStatus {
                    reachable,
                    version: self.docker_version.clone(),
                },
                engine: EngineStatus {
                    backend: self.backend.kind().to_string(),
                    reachable,
                    version: self.docker_version.clone(),
                },
            },
        }
    }

    /// `Ok` when the worker can take work now, else why not (`/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let snap = self.slots.borrow().clone();
        let engine = self.engine.state();
        if !self.session.connected.load(Relaxed) {
            return Err("not connected to the control plane".into());
        }
        if !engine.reachable {
            return Err(format!(
                "{} unreachable ({})",
                self.backend.engine_name(),
                engine.error.unwrap_or_default()
            ));
        }
        if snap.stopping {
            return Err("shutting down".into());
        }
        if snap.draining {
            return Err("draining".into());
        }
        Ok(())
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        let snap = self.slots.borrow().clone();
        let connected = self.session.connected.load(Relaxed);
        let ready = self.readiness();
        let now = chrono::Utc::now();
        Status {
            worker_id: self.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connected,
            protocol: connected.then(|| {
                if self.session.berth.load(Relaxed) {
                    "berth/1".to_string()
                } else {
                    "oz/1".to_string()
                }
            }),
            ready: ready.is_ok(),
            not_ready: ready.err(),
            worker: self.worker_status(),
            docker_error: self.engine.state().error,
            undelivered: snap.undelivered,
            closing: snap.closing,
            last_reload: self.reloads.last(),
            tasks: snap
                .tasks
                .iter()
                .map(|t| TaskRow {
                    task_id: t.task_id.clone(),
                    execution_id: t.execution_id.clone(),
                    state: t.state.to_string(),
                    age_secs: (now - t.claimed_at).num_seconds().max(0) as u64,
                    image: t.image.clone(),
                    output_bytes: t.output.borrow().len,
                    usage: t
                        .control
                        .as_ref()
                        .map(|c| c.usage())
                        .filter(|u| u.samples > 0),
                })
                .collect(),
        }
    }

    /// Part of a transcript of `task_id` from byte `from`: of execution `execution_id`, else
    /// of the latest one; `None` if this worker has none (never ran it, or retention removed
    /// it).
    pub fn transcript(
        &self,
        task_id: &str,
        execution_id: Option<&str>,
        from: u64,
    ) -> Option<TranscriptPart> {
        use base64::Engine;
        let rec = self
            .journal
            .by_task(task_id)
            .ok()?
            .into_iter()
            .find(|r| execution_id.is_none_or(|e| r.execution_id == e))?;
        let path = crate::transcript::spool::Spool::path_for(
            &crate::transcript::spool::spool_dir(&self.state_dir),
            &rec.execution_id,
        );
        let t = crate::transcript::spool::Spool::read_all(&path).ok()?;
        let (pieces, next) = t.since(from, TRANSCRIPT_PART);
        Some(TranscriptPart {
            execution_id: rec.execution_id,
            pieces: pieces
                .into_iter()
                .map(|(stream, b)| Piece {
                    stream,
                    data_b64: base64::engine::general_purpose::STANDARD.encode(b),
                })
                .collect(),
            finished: t.finished && next >= t.len(),
            next,
        })
    }

    /// Values for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        use std::sync::atomic::Ordering::Relaxed;
        let snap = self.slots.borrow().clone();
        let (pulls_ok, pulls_failed) = self.backend.pull_counts();
        Gauges {
            worker_id: self.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.backend.kind(),
            connected: self.session.connected.load(Relaxed),
            active: snap.active,
            max: snap.max,
            draining: snap.draining,
            docker_reachable: self.engine.reachable(),
            reconnects_dial_failed: self.session.reconnects_dial_failed.load(Relaxed),
            reconnects_remote_close: self.session.reconnects_remote_close.load(Relaxed),
            pulls_ok,
            pulls_failed,
            spool_bytes: dir_bytes(&crate::transcript::spool::spool_dir(&self.state_dir)),
            undelivered: snap.undelivered,
            closures_pending: snap.closing,
            memory_available: self.memory().1,
            disk_free: crate::supervisor::capacity::free_disk(&self.state_dir),
            uptime_secs: self.started.elapsed().as_secs(),
            reloads: self.reloads.counts(),
            last_reload: self
                .reloads
                .last()
                .map(|r| (r.applied, r.at_ms as f64 / 1000.0)),
            process: crate::process::read(),
        }
    }
}

/// Sends `worker_status` on berth/1 connections: right after each connects, every `interval`,
/// and when slots change (at most once per second). Never durable: a status for a dead
/// connection is dropped, the next one is current anyway.
pub async fn report(
    live: Arc<Live>,
    outbox: mpsc::Sender<Outbound>,
    mut link: watch::Receiver<Link>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut slots = live.slots.clone();
    let mut last_slots = (0usize, 0u32, false, false);
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut due = tokio::select! {
            _ = tick.tick() => true,
            r = link.changed() => { if r.is_err() { return } true }
            r = slots.changed() => {
                if r.is_err() { return }
                let s = slots.borrow_and_update();
                let now = (s.active, s.max, s.draining, s.stopping);
                let changed = now != last_slots;
                last_slots = now;
                changed
            }
            _ = stop.cancelled() => return,
        };
        let l = *link.borrow();
        if !(l.connected && l.berth) {
            continue;
        }
        if let Some(t) = last_sent {
            let wait = COALESCE.saturating_sub(t.elapsed());
            if !wait.is_zero() && due {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                due = true;
            }
        }
        if due {
            let msg = WorkerMessage::WorkerStatus(Box::new(live.worker_status()));
            let o = Outbound {
                msg,
                epoch: Some(l.epoch),
                written: None,
            };
            tokio::select! {
                r = outbox.send(o) => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            last_sent = Some(tokio::time::Instant::now());
        }
    }
}
