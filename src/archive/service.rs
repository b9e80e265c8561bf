//! The archive service: takes requests from the supervisor (a bounded channel, so the socket's
//! read loop never waits for it), answers only for executions this instance owns, and runs the
//! work in tracked tasks under one stop token: at most `max_concurrent_uploads` at once, one
//! snapshot per execution at a time, a disk budget, and the request cache.
//!
//! Nothing here logs an id with a request it does not own, nor a URL, header, field, body,
//! local path or captured byte.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::ack::{self, Uploaded};
use super::cache::{Cache, Lookup};
use super::files::CaptureDir;
use super::ndjson::Source;
use super::reason::Reason;
use super::snapshot::{self, SnapshotError};
use super::upload::Uploader;
use super::validate::{self, Ids, Valid};
use crate::control::shipper::Outbound;
use crate::journal::{ArchiveOwner, Journal};
use crate::metrics::Metrics;
use crate::protocol::{ArchiveAck, ArchiveRequest, WorkerMessage};
use crate::transcript::spool::Spool;

/// Requests waiting for the service (the supervisor drops what does not fit: the server
/// times out and marks the source partial, which is what a busy owner means).
pub const QUEUE: usize = 64;
/// How often ended graces are released and the grace gauge refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the service needs.
pub struct Settings {
    /// Where snapshots are written; `None` when capture is off (answers `capture_unavailable`).
    pub dir: Option<CaptureDir>,
    pub max_total_bytes: u64,
    pub max_execution_bytes: u64,
    pub max_concurrent_uploads: u32,
    /// Spools live here (`state_dir/transcripts`).
    pub spool_dir: PathBuf,
    /// `docker` or `kubernetes`.
    pub backend: &'static str,
}

/// The request queue's two ends.
pub fn queue() -> (mpsc::Sender<ArchiveRequest>, mpsc::Receiver<ArchiveRequest>) {
    mpsc::channel(QUEUE)
}

/// Shared by the intake and the work it spawns.
struct Shared {
    settings: Settings,
    journal: Arc<Journal>,
    uploader: Option<Uploader>,
    outbox: mpsc::Sender<Outbound>,
    metrics: Arc<Metrics>,
    cache: parking_lot::Mutex<Cache>,
    slots: Arc<Semaphore>,
    executions: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    reserved: AtomicU64,
    stop: CancellationToken,
}

/// The service.
pub struct Service {
    shared: Arc<Shared>,
}

/// `active` or `cleanup_grace`: the ownership label.
fn ownership(o: &ArchiveOwner) -> &'static str {
    if o.active { "active" } else { "cleanup_grace" }
}

impl Service {
    /// A service answering on `outbox`; `uploader` is `None` when no HTTP client could be
    /// built (uploads then fail with `upload_failed`).
    pub fn new(
        settings: Settings,
        journal: Arc<Journal>,
        uploader: Option<Uploader>,
        outbox: mpsc::Sender<Outbound>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        let permits = settings.max_concurrent_uploads.max(1) as usize;
        Service {
            shared: Arc::new(Shared {
                settings,
                journal,
                uploader,
                outbox,
                metrics,
                cache: parking_lot::Mutex::new(Cache::default()),
                slots: Arc::new(Semaphore::new(permits)),
                executions: parking_lot::Mutex::new(HashMap::new()),
                reserved: AtomicU64::new(0),
                stop,
            }),
        }
    }

    /// Runs until the stop token fires; the work in flight then answers
    /// `worker_shutting_down` and ends before this returns.
    pub async fn run(self, mut requests: mpsc::Receiver<ArchiveRequest>) {
        let tracker = TaskTracker::new();
        let stop = self.shared.stop.clone();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => self.intake(r, &tracker),
                    None => break,
                },
                _ = sweep.tick() => self.release_graces(),
                _ = stop.cancelled() => break,
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Ends the graces that are over: the executions are no longer owned (their spools then
    /// follow `transcript.retention`). A failed write is retried at the next sweep. Also
    /// removes snapshot files left by a process that stopped mid-request.
    fn release_graces(&self) {
        let s = &self.shared;
        if let Some(dir) = &s.settings.dir {
            let swept = dir.sweep(super::files::LEFTOVER_AGE);
            if swept > 0 {
                info!(
                    files = swept,
                    "removed debug-archive snapshots left by a stopped process"
                );
            }
        }
        let now = Utc::now().timestamp_millis();
        if let Ok(over) = s.journal.graces_over(now) {
            for execution_id in over {
                let result = match s.journal.release_grace(&execution_id) {
                    Ok(()) => "released",
                    Err(_) => "failed",
                };
                s.metrics.grace_result(s.settings.backend, result);
            }
        }
        if let Ok(n) = s.journal.graces_open(now) {
            s.metrics.grace_entries(n);
        }
    }

    /// Owner check first (silence otherwise), then validation, then the cache; the work
    /// itself runs in a tracked task.
    fn intake(&self, r: ArchiveRequest, tracker: &TaskTracker) {
        let s = self.shared.clone();
        let now = Utc::now();
        let owner =
            match s
                .journal
                .archive_owner(&r.run_id, &r.execution_id, now.timestamp_millis())
            {
                Ok(Some(o)) if !r.run_id.is_empty() && !r.execution_id.is_empty() => o,
                // Not ours, or not knowable: silent, as every non-owner is.
                _ => return,
            };
        let label = ownership(&owner);
        let valid = match validate::validate(&r.data, now) {
            Ok(v) => v,
            Err(reason) => {
                let ids = Ids::echo(&r.data);
                tracker.spawn(async move { s.answer(&ids, label, reason).await });
                return;
            }
        };
        if s.settings.dir.is_none() {
            tracker.spawn(async move {
                s.answer(&valid.ids, label, Reason::CaptureUnavailable)
                    .await
            });
            return;
        }
        let looked = s.cache.lock().lookup(
            &valid.ids.request_id,
            valid.fingerprint(),
            valid.expires_at,
            now,
        );
        match looked {
            Lookup::Conflict => {
                tracker.spawn(
                    async move { s.answer(&valid.ids, label, Reason::InvalidRequest).await },
                );
            }
            Lookup::Full => {
                tracker.spawn(async move {
                    s.answer(&valid.ids, label, Reason::RequestCapacityExhausted)
                        .await
                });
            }
            Lookup::Replay(a) => {
                tracker.spawn(async move { s.send(*a).await });
            }
            Lookup::Wait(rx) => {
                tracker.spawn(async move { s.replay_when_done(rx, &valid.ids, label).await });
            }
            Lookup::New(done) => {
                tracker.spawn(async move { s.serve(valid, owner, done).await });
            }
        }
    }
}

impl Shared {
    async fn send(&self, a: ArchiveAck) {
        let msg = WorkerMessage::DebugArchiveLogsUploaded(Box::new(a));
        if self.stop.is_cancelled() {
            // Shutting down: never hold the session's flush up for an archive answer.
            let _ = self.outbox.try_send(Outbound::durable(msg));
        } else if self.outbox.send(Outbound::durable(msg)).await.is_err() {
            debug!("outbox closed; archive answer dropped");
        }
    }

    async fn answer(&self, ids: &Ids, ownership: &'static str, reason: Reason) {
        let b = self.settings.backend;
        self.metrics
            .archive_answered(b, ownership, reason.outcome().as_str(), reason.as_str());
        self.send(ack::not_uploaded(ids, reason, b)).await;
    }

    /// A duplicate of a request in flight: its answer, once there.
    async fn replay_when_done(
        &self,
        mut rx: watch::Receiver<Option<ArchiveAck>>,
        ids: &Ids,
        ownership: &'static str,
    ) {
        let got = tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|a| a.clone()),
            _ = self.stop.cancelled() => None,
        };
        match got {
            Some(a) => self.send(a).await,
            None => {
                self.answer(ids, ownership, Reason::WorkerShuttingDown)
                    .await
            }
        }
    }

    /// One request's work and answer; the answer is remembered for duplicates.
    async fn serve(
        self: Arc<Self>,
        v: Valid,
        owner: ArchiveOwner,
        done: watch::Sender<Option<ArchiveAck>>,
    ) {
        self.metrics.archive_in_flight(1);
        let label = ownership(&owner);
        let result = tokio::select! {
            r = self.work(&v) => r,
            _ = self.stop.cancelled() => Err(Reason::WorkerShuttingDown),
        };
        self.metrics.archive_in_flight(-1);
        let b = self.settings.backend;
        let a = match result {
            Ok(u) => {
                self.metrics.archive_answered(b, label, "uploaded", "");
                ack::uploaded(&v.ids, &u, b)
            }
            Err(reason) => {
                self.metrics
                    .archive_answered(b, label, reason.outcome().as_str(), reason.as_str());
                ack::not_uploaded(&v.ids, reason, b)
            }
        };
        info!(
            task_id = %v.ids.run_id,
            execution_id = %v.ids.execution_id,
            outcome = %a.outcome,
            reason = %a.reason_code,
            "debug archive request answered"
        );
        self.cache.lock().complete(&v.ids.request_id, a.clone());
        done.send_replace(Some(a.clone()));
        self.send(a).await;
    }

    /// Waits for a slot and the execution's turn (never past `expires_at`), checks again,
    /// snapshots and uploads.
    async fn work(&self, v: &Valid) -> Result<Uploaded, Reason> {
        let left = (v.expires_at - Utc::now()).to_std().unwrap_or_default();
        let turn = self.execution_turn(&v.ids.execution_id);
        let (_slot, _turn) = tokio::time::timeout(left, async {
            let slot = self.slots.clone().acquire_owned().await;
            let turn = turn.lock_owned().await;
            (slot, turn)
        })
        .await
        .map_err(|_| Reason::UploadExpired)?;
        let now = Utc::now();
        if now >= v.expires_at {
            return Err(Reason::UploadExpired);
        }
        let owner = self
            .journal
            .archive_owner(&v.ids.run_id, &v.ids.execution_id, now.timestamp_millis())
            .ok()
            .flatten()
            .ok_or(Reason::CleanupGraceExpired)?;
        if owner.active && !owner.started {
            return Err(Reason::ResourceNotReady);
        }
        let spool = Spool::path_for(&self.settings.spool_dir, &v.ids.execution_id);
        if !spool.exists() {
            return Err(Reason::ResourceNotFound);
        }
        let bound = v.max_bytes.min(self.settings.max_execution_bytes);
        let _reservation = self.reserve(bound.saturating_mul(2))?;
        let dir = self
            .settings
            .dir
            .clone()
            .ok_or(Reason::CaptureUnavailable)?;
        let backend = self.settings.backend;
        let started = Instant::now();
        let growing = owner.active;
        let object = tokio::task::spawn_blocking(move || {
            let src = Source {
                backend,
                container_id: owner.container_id.as_deref(),
            };
            snapshot::build(&spool, &src, bound, &dir, growing)
        })
        .await
        .map_err(|_| Reason::SnapshotFailed)?
        .map_err(|e| match e {
            SnapshotError::Empty | SnapshotError::Unreadable => Reason::CaptureUnavailable,
            SnapshotError::Write(why) => {
                warn!(error = %why, "debug archive snapshot cannot be written");
                Reason::SnapshotFailed
            }
        })?;
        self.metrics.archive_snapshot(
            backend,
            started.elapsed().as_secs_f64(),
            object.bytes,
            object.truncated,
        );
        let uploader = self.uploader.as_ref().ok_or(Reason::UploadFailed)?;
        let started = Instant::now();
        let sent = uploader
            .upload(
                &v.target,
                object.path(),
                object.bytes,
                v.expires_at,
                &self.stop,
            )
            .await;
        let result = if sent.is_ok() { "uploaded" } else { "failed" };
        self.metrics
            .archive_upload(result, started.elapsed().as_secs_f64());
        sent?;
        Ok(Uploaded {
            bytes: object.bytes,
            crc32c: object.crc32c.clone(),
            sha256: object.sha256.clone(),
            truncated: object.truncated,
            warnings: object.warnings.clone(),
        })
    }

    /// The execution's lock: one snapshot per execution at a time.
    fn execution_turn(&self, execution_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.executions.lock();
        // Locks nobody waits for any more go (the map stays as small as the work in flight).
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(execution_id.to_string()).or_default().clone()
    }

    /// Reserves `bytes` of the disk budget until the guard drops.
    fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, Reason> {
        let max = self.settings.max_total_bytes;
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                r.checked_add(bytes).filter(|t| *t <= max)
            })
            .map_err(|_| Reason::RequestCapacityExhausted)?;
        self.metrics
            .archive_capture_bytes(self.reserved.load(Ordering::Acquire));
        Ok(Reservation { s: self, bytes })
    }
}

/// Disk budget held by one snapshot.
struct Reservation<'a> {
    s: &'a Shared,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let left = self.s.reserved.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        self.s.metrics.archive_capture_bytes(left);
    }
}
