//! Capturing a container's output into its spool, resumable to the byte.
//!
//! The engine's on-disk log is the source (it outlives berth); each entry carries a timestamp,
//! and the spool records where to resume: the last point where no redactor held anything back
//! (a [`Cursor`]), plus how many bytes were produced since. A restarted worker re-reads from
//! that point with fresh redactors (deterministic) and skips what it had already spooled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tracing::{debug, error, warn};

use crate::docker::{Docker, DockerError};
use crate::protocol::Stream;
use crate::spool::{Spool, SpoolError};
use crate::transcript::{Cursor, Redactor, Resume, split_timestamp};

/// Largest batch written as one spool record run.
const BATCH: usize = 64 << 10;
/// Longest time output waits in a batch before it is spooled (and so can be sent).
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// The engine's log buffer: a longer line is stored as pieces of exactly this size, then a
/// shorter last piece.
const ENGINE_PIECE: usize = 16 << 10;

/// Why capture stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The engine failed and the container is gone.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// Shared handle on a spool.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// Locks a spool (a poisoned lock still holds consistent data: writes are all-or-nothing).
pub fn lock(spool: &SharedSpool) -> std::sync::MutexGuard<'_, Spool> {
    match spool.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Appends with retries: a full disk is reported loudly and retried, never dropped, and the
/// spool is never left with a torn record.
pub async fn append_retrying(spool: &SharedSpool, stream: Stream, bytes: &[u8], resume: Resume) {
    let mut delay = Duration::from_millis(200);
    loop {
        let r: Result<(), SpoolError> = lock(spool).append(stream, bytes, resume);
        match r {
            Ok(()) => return,
            Err(e) => {
                error!(error = %e, "cannot write the transcript; the task keeps running and output is kept by the engine until space is available");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct State {
    redactors: [Redactor; 2],
    /// The last entry of the stream was a full engine piece (a line continues).
    in_split: [bool; 2],
    /// A split line ended without its newline; it is restored when the stream continues.
    /// (Docker 20.10's `local` driver drops the newline that ends a split line; a fragment at
    /// the very end of the output really has none, so the newline is only added once the
    /// stream goes on. A line of exactly k x 16 KiB stays ambiguous and is joined.)
    newline_owed: [bool; 2],
    cursor: Cursor,
    clean: Cursor,
    since_clean: u64,
    skip: u64,
    run_ts: i64,
    run_index: u32,
    batch: Vec<(Stream, Vec<u8>, Resume)>,
    batch_len: usize,
}

impl State {
    fn resume(&self) -> Resume {
        Resume {
            clean: self.clean,
            skip: self.since_clean,
        }
    }

    /// Consumes one entry; returns false when it was already consumed earlier.
    fn entry(&mut self, stream: Stream, ts: i64, payload: &[u8]) -> bool {
        // Index of this entry among the entries sharing its timestamp, in engine order.
        if ts == self.run_ts {
            self.run_index += 1;
        } else {
            self.run_ts = ts;
            self.run_index = 0;
        }
        if self.cursor.consumed(ts, self.run_index) {
            return false;
        }
        self.cursor = self.cursor.advance(ts);
        let slot = usize::from(stream == Stream::Stderr);
        let mut out = Vec::new();
        if self.newline_owed[slot] {
            out.extend(self.redactors[slot].feed(b"\n"));
            self.newline_owed[slot] = false;
        }
        out.extend(self.redactors[slot].feed(payload));
        let open = !payload.ends_with(b"\n");
        if open && self.in_split[slot] && payload.len() < ENGINE_PIECE {
            self.newline_owed[slot] = true;
        }
        self.in_split[slot] = open && payload.len() == ENGINE_PIECE;
        self.since_clean += out.len() as u64;
        if self.skip > 0 {
            let n = (self.skip as usize).min(out.len());
            out.drain(..n);
            self.skip -= n as u64;
        }
        if self.redactors.iter().all(Redactor::is_clear)
            && !self.in_split.iter().any(|b| *b)
            && !self.newline_owed.iter().any(|b| *b)
        {
            self.clean = self.cursor;
            self.since_clean = 0;
        }
        self.push(stream, out);
        true
    }

    fn push(&mut self, stream: Stream, out: Vec<u8>) {
        let resume = self.resume();
        self.batch_len += out.len();
        match self.batch.last_mut() {
            Some((s, bytes, r)) if *s == stream => {
                bytes.extend(out);
                *r = resume;
            }
            _ => self.batch.push((stream, out, resume)),
        }
    }

    async fn flush(&mut self, spool: &SharedSpool) {
        for (stream, bytes, resume) in self.batch.drain(..) {
            if !bytes.is_empty() {
                append_retrying(spool, stream, &bytes, resume).await;
            }
        }
        self.batch_len = 0;
    }
}

/// Reads the container's output into the spool until the container has stopped and its log is
/// drained. Safe to call again after a restart: it resumes from what the spool recorded.
pub async fn capture(
    docker: &Docker,
    container_id: &str,
    spool: &SharedSpool,
    secrets: Vec<Vec<u8>>,
) -> Result<(), CaptureError> {
    let resume = lock(spool).last_resume();
    let mut st = State {
        redactors: [Redactor::new(secrets.clone()), Redactor::new(secrets)],
        in_split: [false; 2],
        newline_owed: [false; 2],
        cursor: resume.clean,
        clean: resume.clean,
        since_clean: 0,
        skip: resume.skip,
        run_ts: i64::MIN,
        run_index: 0,
        batch: Vec::new(),
        batch_len: 0,
    };
    let mut failures = 0u32;
    // Follow until the engine ends the stream (container stopped), then one plain read from
    // the cursor: `follow` can lose a final fragment without a newline (moby#43860).
    for follow in [true, false] {
        loop {
            st.run_ts = i64::MIN;
            let mut logs = Box::pin(docker.logs(container_id, follow, st.cursor.since_secs()));
            let mut failed = None;
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                // Batch entries into few large records: flush at BATCH bytes, or FLUSH_AFTER
                // after the first unflushed entry (output reaches the sender quickly, and a
                // chatty task does not turn every line into a record and a write).
                let next = match due {
                    None => logs.next().await,
                    Some(at) => match tokio::time::timeout_at(at, logs.next()).await {
                        Ok(n) => n,
                        Err(_) => {
                            st.flush(spool).await;
                            due = None;
                            continue;
                        }
                    },
                };
                match next {
                    None => break,
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Some(Ok((stream, bytes))) => match split_timestamp(&bytes) {
                        Some((ts, payload)) => {
                            st.entry(stream, ts, payload);
                            if st.batch_len >= BATCH {
                                st.flush(spool).await;
                                due = None;
                            } else if due.is_none() {
                                due = Some(tokio::time::Instant::now() + FLUSH_AFTER);
                            }
                        }
                        None => warn!(bytes = bytes.len(), "log entry without a timestamp ignored"),
                    },
                }
            }
            st.flush(spool).await;
            match failed {
                None => break,
                Some(e) => {
                    failures += 1;
                    // The engine may be away or restarting: retry while the container exists
                    // or the engine does not answer (the supervisor decides when to stop).
                    let gone = matches!(docker.inspect_state(container_id).await, Ok(None));
                    if gone && failures > 3 {
                        return Err(e.into());
                    }
                    warn!(container = container_id, error = %e, "reading the container log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(10))))
                        .await;
                }
            }
        }
    }
    // End of output: whatever a redactor still holds cannot become a secret any more.
    for slot in 0..2 {
        let rest = st.redactors[slot].finish();
        if !rest.is_empty() {
            let stream = if slot == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            st.since_clean += rest.len() as u64;
            st.push(stream, rest);
        }
    }
    st.clean = st.cursor;
    st.since_clean = 0;
    st.flush(spool).await;
    debug!(container = container_id, "output captured");
    Ok(())
}
