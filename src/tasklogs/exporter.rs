//! The follower of one execution's spool (PROTOCOL §8.3): reads transcript records from where
//! export last got to, cuts them into lines, turns each into a redacted record, queues at most
//! 1,024, and posts batches of at most 128 (as soon as 128 are ready, else every 5 s), one
//! request at a time with a 5 s timeout and no retry. The spool is the buffer: a full queue
//! only pauses reading (never the task's output), and how far export got is kept in the
//! journal so a restarted worker resumes there.
//!
//! Ownership: the execution's run owns the [`Handle`]; the follower task ends on its own once
//! the spool is finished and flushed, or when the handle asks it to stop (detach, shutdown),
//! and is aborted if the handle is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::gates::Plan;
use super::identity::{Identity, Unavailable};
use super::lines::{Line, Streams};
use super::otlp;
use super::record::{self, Output, Record, Resource};
use super::redaction::Redactor;
use super::transport::{Exchange, SendError, send};
use crate::control::setup_events::Timed;
use crate::journal::Journal;
use crate::metrics::{Metrics, RecordResult, RequestResult};
use crate::protocol::Stream;
use crate::transcript::spool::{SharedSpool, lock};

/// Most records in one request.
pub const BATCH: usize = 128;
/// Most records queued; past it, reading the spool pauses.
pub const QUEUE: usize = 1024;
/// A partial batch waits at most this long.
pub const BATCH_EVERY: Duration = Duration::from_secs(5);
/// Longest an export request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end of an execution waits for its exporter to flush (PROTOCOL §8.3).
pub const FLUSH_BOUND: Duration = Duration::from_secs(5);
/// Spool bytes read at a time.
const READ: usize = 64 << 10;
/// Most spool bytes read before the follower yields.
const READ_SLICE: u64 = 1 << 20;
/// Setup-phase records waiting to be queued; past it, they are dropped (counted).
const EVENTS: usize = 16;
/// How long an aborted follower is waited for before what it held is counted.
const ABORT_WAIT: Duration = Duration::from_secs(1);
/// Largest collector answer read (its text is never kept).
const MAX_ANSWER: usize = 64 << 10;

/// Why a batch was not delivered (recorded only as "task log export failed").
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("no identity token: {0}")]
    Token(Unavailable),
    #[error("collector unreachable: {0}")]
    Send(SendError),
    #[error("collector answered HTTP {0}")]
    Status(u16),
    #[error("a header cannot be built")]
    Header,
    #[error("the flush bound before the task's result ran out")]
    Deadline,
}

/// What became of a batch's records.
fn outcome(r: &Result<(), ExportError>) -> RecordResult {
    match r {
        Ok(()) => RecordResult::Exported,
        Err(ExportError::Deadline) => RecordResult::Dropped,
        Err(_) => RecordResult::Failed,
    }
}

impl ExportError {
    fn result(&self) -> RequestResult {
        match self {
            ExportError::Token(_) | ExportError::Header => RequestResult::TokenUnavailable,
            ExportError::Send(_) => RequestResult::Unreachable,
            ExportError::Status(_) => RequestResult::HttpError,
            ExportError::Deadline => RequestResult::Deadline,
        }
    }
}

/// What one execution's export did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub exported: u64,
    /// In batches the collector did not take (no retry).
    pub failed: u64,
    /// Setup-phase records and records left when the flush bound ran out.
    pub dropped: u64,
    /// Lines longer than 64 KiB.
    pub too_long: u64,
    /// Lines cut by a hole in the output (dropped on both sides of it).
    pub cut: u64,
}

/// What the follower of one execution needs.
pub struct Start {
    pub client: reqwest::Client,
    pub journal: Arc<Journal>,
    pub metrics: Arc<Metrics>,
    pub plan: Plan,
    pub resource: Resource,
    /// Every secret of the execution (the redactor adds their variants).
    pub secrets: Vec<String>,
    pub spool: SharedSpool,
    /// Spool offset to resume from (0 for a new execution).
    pub from: u64,
}

/// The run's end of an execution's exporter.
pub struct Handle {
    events: mpsc::Sender<Timed>,
    dropped_events: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// What is lost if the flush bound runs out (see [`Unsent`]).
    unsent: Arc<Unsent>,
    /// The container's name, once known (records' `container.name`).
    container_name: Arc<std::sync::OnceLock<String>>,
    /// When the flush must be over (set by `finish`/`detach`): the follower starts no request
    /// that could outlive it, so no record reaches the collector after the result is queued.
    deadline: Deadline,
    stop: CancellationToken,
    join: Option<JoinHandle<Summary>>,
}

impl Handle {
    /// Starts the follower.
    pub fn spawn(s: Start) -> Handle {
        let (tx, rx) = mpsc::channel(EVENTS);
        let stop = CancellationToken::new();
        let dropped_events = Arc::new(AtomicU64::new(0));
        let unsent = Arc::new(Unsent::default());
        let container_name = Arc::new(std::sync::OnceLock::new());
        let deadline = Deadline::default();
        let task_id = s.resource.run_id.clone();
        let redactor = Redactor::new(s.secrets.iter().map(String::as_str));
        let f = Follower {
            identity: Identity::new(s.client.clone(), s.plan.clone(), &task_id),
            client: s.client,
            journal: s.journal,
            metrics: s.metrics.clone(),
            unsent: unsent.clone(),
            container_name: container_name.clone(),
            lines_dropped: (0, 0),
            logs_url: s.plan.logs_url,
            resource: s.resource,
            redactor,
            spool: s.spool,
            read: s.from,
            persisted: s.from,
            streams: Streams::default(),
            queue: VecDeque::new(),
            events: rx,
            summary: Summary::default(),
            failing: false,
            dropped_events: dropped_events.clone(),
            deadline: deadline.clone(),
        };
        let join = tokio::spawn(f.run(stop.clone()));
        Handle {
            events: tx,
            dropped_events,
            metrics: s.metrics,
            unsent,
            container_name,
            deadline,
            stop,
            join: Some(join),
        }
    }

    /// A setup phase ended: export it too. Never waits; dropped (counted) when full.
    pub fn setup_phase(&self, t: &Timed) {
        if self.events.try_send(t.clone()).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
            self.metrics.task_log_records(RecordResult::Dropped, 1);
        }
    }

    /// The container's name is known: container output records carry it from now on (lines
    /// read before it was known go without, as PROTOCOL §8.3 allows).
    pub fn container_name(&self, name: String) {
        let _ = self.container_name.set(name);
    }

    /// The spool is finished: waits, at most `bound`, for everything to be read and sent.
    /// Past the bound the follower is stopped and what it still held is dropped.
    pub async fn finish(mut self, bound: Duration) -> Option<Summary> {
        self.wait(bound).await
    }

    /// The run stops without finishing (the worker detaches): sends what is queued, at most
    /// `bound`, and records how far it got so the next start resumes there.
    pub async fn detach(mut self, bound: Duration) -> Option<Summary> {
        self.stop.cancel();
        self.wait(bound).await
    }

    async fn wait(&mut self, bound: Duration) -> Option<Summary> {
        *self.deadline.0.lock() = Some(tokio::time::Instant::now() + bound);
        let mut join = self.join.take()?;
        let r = match tokio::time::timeout(bound, &mut join).await {
            Ok(r) => r.ok(),
            Err(_) => {
                // Stopped for good before counting, so nothing is counted twice (the abort
                // lands at the follower's next await: a spool slice away at most).
                join.abort();
                match tokio::time::timeout(ABORT_WAIT, join).await {
                    Ok(Ok(s)) => Some(s), // it finished after all
                    _ => {
                        self.count_abandoned();
                        None
                    }
                }
            }
        };
        if let Some(s) = &r {
            report(s);
        }
        r
    }

    /// The follower was stopped at the bound: the request it was waiting for was sent and
    /// not answered (its records failed, the request cut by the bound); the rest it held was
    /// never sent.
    fn count_abandoned(&self) {
        let held = self.unsent.records.swap(0, Ordering::Relaxed);
        let sent = self.unsent.in_flight.swap(0, Ordering::Relaxed).min(held);
        self.metrics.task_log_records(RecordResult::Failed, sent);
        self.metrics
            .task_log_records(RecordResult::Dropped, held - sent);
        if sent > 0 {
            self.metrics.task_log_request(RequestResult::Deadline);
        }
        warn!(
            failed = sent,
            dropped = held - sent,
            "task log export did not finish within its bound; the rest is dropped"
        );
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

fn report(s: &Summary) {
    if s.failed + s.dropped + s.too_long + s.cut > 0 {
        warn!(
            exported = s.exported,
            failed = s.failed,
            dropped = s.dropped,
            too_long = s.too_long,
            cut = s.cut,
            "task log export finished with records not delivered"
        );
    } else {
        debug!(exported = s.exported, "task log export finished");
    }
}

/// The transcript's streams, each with its own line splitter (keyed by position here).
const STREAMS: [Stream; 3] = [Stream::Stdout, Stream::Stderr, Stream::System];

fn key(stream: Stream) -> u8 {
    STREAMS.iter().position(|s| *s == stream).unwrap_or(0) as u8
}

/// What the follower has not yet counted, shared with the handle: if the flush bound runs out
/// and the follower is aborted, the handle counts it.
#[derive(Default)]
struct Unsent {
    /// Records queued or in flight.
    records: AtomicU64,
    /// Of those, the records of the request in flight.
    in_flight: AtomicU64,
}

/// The end of the flush bound, shared by the handle and its follower.
#[derive(Clone, Default)]
struct Deadline(Arc<parking_lot::Mutex<Option<tokio::time::Instant>>>);

impl Deadline {
    /// The flush bound is set and over.
    fn passed(&self) -> bool {
        self.allows().is_zero()
    }

    /// How long the next request may take: [`TIMEOUT`], or less once the flush is bounded.
    fn allows(&self) -> Duration {
        match *self.0.lock() {
            Some(end) => end
                .saturating_duration_since(tokio::time::Instant::now())
                .min(TIMEOUT),
            None => TIMEOUT,
        }
    }
}

struct Follower {
    client: reqwest::Client,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
    /// Shared with the handle.
    unsent: Arc<Unsent>,
    container_name: Arc<std::sync::OnceLock<String>>,
    /// Lines dropped (too long, cut) already counted in the metrics.
    lines_dropped: (u64, u64),
    identity: Identity,
    logs_url: url::Url,
    resource: Resource,
    redactor: Redactor,
    spool: SharedSpool,
    /// Spool offset read up to.
    read: u64,
    /// Offset last written to the journal.
    persisted: u64,
    streams: Streams<u8>,
    queue: VecDeque<Record>,
    events: mpsc::Receiver<Timed>,
    summary: Summary,
    /// The last batch failed (the warning is logged once per streak).
    failing: bool,
    dropped_events: Arc<AtomicU64>,
    deadline: Deadline,
}

impl Follower {
    async fn run(mut self, stop: CancellationToken) -> Summary {
        let mut state = lock(&self.spool).subscribe();
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + BATCH_EVERY, BATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.deadline.passed() {
                self.drop_queue();
                break;
            }
            let s = *state.borrow_and_update();
            let more = self.read_spool(s.len);
            self.count_dropped_lines();
            let ended = s.finished && self.read >= s.len;
            if ended {
                self.flush_last_lines();
            }
            if ended || stop.is_cancelled() {
                self.drain().await;
                break;
            }
            if self.queue.len() >= BATCH {
                self.export_batch().await;
                continue;
            }
            if more {
                // A long stretch without lines (or a backlog after a restart) is read a slice
                // at a time, so this task never holds a runtime thread for the whole spool.
                tokio::task::yield_now().await;
                continue;
            }
            let room = self.queue.len() < QUEUE;
            tokio::select! {
                r = state.changed() => if r.is_err() {
                    // The spool's writer is gone: the streams ended too.
                    self.flush_last_lines();
                    self.drain().await;
                    break
                },
                _ = tick.tick() => if !self.queue.is_empty() { self.export_batch().await },
                Some(t) = self.events.recv(), if room => {
                    let r = record::setup_phase(&t, &self.redactor);
                    self.enqueue(r);
                }
                _ = stop.cancelled() => {}
            }
        }
        self.summary.too_long = self.streams.dropped();
        self.summary.cut = self.streams.cut();
        self.summary.dropped += self.dropped_events.load(Ordering::Relaxed);
        self.summary
    }

    /// Reads the spool up to `len`, until the queue is full, or [`READ_SLICE`] bytes; true
    /// when it stopped for the slice with more to read.
    fn read_spool(&mut self, len: u64) -> bool {
        let until = self.read.saturating_add(READ_SLICE);
        while self.read < len && self.queue.len() < QUEUE {
            if self.read >= until {
                return true;
            }
            let chunk = lock(&self.spool).read_chunk(self.read, READ);
            let (stream, data) = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => return false,
                Err(e) => {
                    warn!(error = %e, "task log export cannot read the transcript spool");
                    return false;
                }
            };
            // berth announces every hole in the output (elision, a full disk, rotation) with a
            // system line, and the two sides of a hole may each hold part of a secret: no line
            // is joined across one. (Other system lines, such as the exit status after an
            // unterminated last line, cut nothing.)
            if stream == Stream::System
                && data
                    .split(|b| *b == b'\n')
                    .any(crate::transcript::announces_hole)
            {
                self.streams.discard_except(key(stream), self.read);
            }
            let room = QUEUE - self.queue.len();
            let mut lines = Vec::new();
            let used = match self.streams.get(key(stream)) {
                Some(l) => l.feed_upto(self.read, &data, room, &mut lines),
                None => data.len(),
            };
            for line in lines {
                self.push_line(stream, line);
            }
            self.read += used as u64;
            if used == 0 {
                return false;
            }
        }
        false
    }

    fn push_line(&mut self, stream: Stream, line: Line) {
        let now = chrono::Utc::now();
        let name = self.container_name.get().map(String::as_str);
        let container =
            |out| record::container_line(out, &line.text, line.at, name, now, &self.redactor);
        let r = match stream {
            Stream::Stdout => container(Output::Stdout),
            Stream::Stderr => container(Output::Stderr),
            Stream::System => record::worker_line(&line.text, line.at, now, &self.redactor),
        };
        self.enqueue(r);
    }

    fn enqueue(&mut self, r: Record) {
        self.queue.push_back(r);
        self.unsent.records.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts lines dropped (too long, or cut by a hole) since the last call.
    fn count_dropped_lines(&mut self) {
        let now = (self.streams.dropped(), self.streams.cut());
        let (long, cut) = (now.0 - self.lines_dropped.0, now.1 - self.lines_dropped.1);
        self.metrics.task_log_records(RecordResult::TooLong, long);
        self.metrics.task_log_records(RecordResult::Cut, cut);
        self.lines_dropped = now;
    }

    fn flush_last_lines(&mut self) {
        for (k, line) in self.streams.finish() {
            if let Some(stream) = STREAMS.get(usize::from(k)) {
                self.push_line(*stream, line);
            }
        }
        while let Ok(t) = self.events.try_recv() {
            let r = record::setup_phase(&t, &self.redactor);
            self.enqueue(r);
        }
        self.count_dropped_lines();
    }

    /// Sends everything queued, batch after batch (the caller bounds how long).
    async fn drain(&mut self) {
        while !self.queue.is_empty() {
            if self.deadline.passed() {
                self.drop_queue();
                break;
            }
            self.export_batch().await;
        }
        self.persist();
    }

    /// The flush bound ran out: nothing queued can be sent any more.
    fn drop_queue(&mut self) {
        let n = self.queue.len() as u64;
        self.queue.clear();
        self.unsent.records.fetch_sub(n, Ordering::Relaxed);
        self.metrics.task_log_records(RecordResult::Dropped, n);
        self.summary.dropped += n;
    }

    async fn export_batch(&mut self) {
        let n = self.queue.len().min(BATCH);
        let batch: Vec<Record> = self.queue.drain(..n).collect();
        self.unsent.in_flight.store(n as u64, Ordering::Relaxed);
        let result = self.post(&batch).await;
        self.unsent.in_flight.store(0, Ordering::Relaxed);
        self.unsent.records.fetch_sub(n as u64, Ordering::Relaxed);
        self.metrics.task_log_request(
            result
                .as_ref()
                .map_or_else(ExportError::result, |()| RequestResult::Ok),
        );
        let (n, counted) = (n as u64, outcome(&result));
        self.metrics.task_log_records(counted, n);
        match result {
            Ok(()) => {
                self.summary.exported += n;
                if std::mem::take(&mut self.failing) {
                    warn!("task log export recovered");
                }
            }
            // Never sent: the bound left no time for it.
            Err(ExportError::Deadline) => self.summary.dropped += n,
            Err(e) => {
                self.summary.failed += n;
                if !std::mem::replace(&mut self.failing, true) {
                    // Only the kind of failure: never a token or the collector's answer.
                    warn!(cause = %e, "task log export failed");
                } else {
                    debug!(cause = %e, "task log export failed");
                }
            }
        }
        self.persist();
    }

    async fn post(&mut self, batch: &[Record]) -> Result<(), ExportError> {
        let limit = Some(self.deadline.allows()).filter(|d| !d.is_zero());
        let issued =
            tokio::time::timeout(limit.ok_or(ExportError::Deadline)?, self.identity.token())
                .await
                .map_err(|_| ExportError::Deadline)?
                .map_err(ExportError::Token)?;
        if issued.fresh {
            self.redactor.register(issued.token.value.expose());
        }
        let body = otlp::export_request(&self.resource.attributes(&self.redactor), batch);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(otlp::CONTENT_TYPE));
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", issued.token.value.expose()))
            .map_err(|_| ExportError::Header)?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        let x = Exchange {
            method: Method::POST,
            url: self.logs_url.clone(),
            headers,
            body: Bytes::from(body),
        };
        let limit = Some(self.deadline.allows()).filter(|d| !d.is_zero());
        let a = send(
            &self.client,
            &x,
            limit.ok_or(ExportError::Deadline)?,
            MAX_ANSWER,
        )
        .await
        .map_err(ExportError::Send)?;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(ExportError::Status(a.status.as_u16()))
        }
    }

    /// A spool offset where every stream is at a line start and nothing read is still
    /// queued: a restart may resume there without cutting a line (so never exporting part of
    /// a credential) and without losing one. `None` while that does not hold.
    fn safe_offset(&self) -> Option<u64> {
        (self.queue.is_empty() && self.streams.earliest_pending().is_none()).then_some(self.read)
    }

    fn persist(&mut self) {
        let Some(at) = self.safe_offset().filter(|at| *at > self.persisted) else {
            return;
        };
        let exec = self.resource.execution_id.clone();
        match self.journal.set_exported(&exec, at) {
            Ok(()) => self.persisted = at,
            Err(e) => debug!(error = %e, "cannot record how far task log export got"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_request_may_outlive_the_flush_bound() {
        let d = Deadline::default();
        assert_eq!(d.allows(), TIMEOUT, "unbounded until the flush starts");
        let now = tokio::time::Instant::now();
        *d.0.lock() = Some(now + Duration::from_secs(2));
        let left = d.allows();
        assert!(
            left <= Duration::from_secs(2) && left > Duration::from_secs(1),
            "{left:?}"
        );
        *d.0.lock() = Some(now);
        assert!(d.allows().is_zero(), "past the bound nothing starts");
        *d.0.lock() = Some(now + Duration::from_secs(60));
        assert_eq!(
            d.allows(),
            TIMEOUT,
            "never longer than one request's timeout"
        );
    }
}
