//! Capturing a container's output into its spool, resumable to the byte.
//!
//! The engine's on-disk log is the source (it outlives berth); each entry carries a timestamp,
//! and the spool records where to resume: the last point where no redactor held anything back
//! (a [`Cursor`]), plus how many bytes were produced since. A restarted worker re-reads from
//! that point with fresh redactors (deterministic) and skips what it had already spooled.

use std::time::Duration;

use futures_util::StreamExt;
use tracing::{debug, warn};

use crate::protocol::Stream;
use crate::runtime::{Runtime, RuntimeError};
use crate::transcript::spool::{SharedSpool, append_retrying, lock};
use crate::transcript::{Cursor, Redactor, Resume, slot};

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
    Docker(#[from] RuntimeError),
}

/// The pure half of capture: turns engine log entries, in the engine's order, into redacted
/// transcript bytes, each run tagged with the point a restarted reader resumes from.
///
/// Deterministic given the entries, so a reader restarted at a spooled [`Resume`] with fresh
/// redactors produces the same bytes again and drops the first `skip` of them.
pub struct Replay {
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
    /// Per stream, within the current read: timestamp of the previous entry and its index
    /// among the entries sharing it.
    run: [(i64, u32); 2],
    /// Per stream, within the current read: an unconsumed entry was seen, so every later entry
    /// of that stream is new (the log is append-only), whatever its timestamp says. This keeps
    /// a wall clock stepped back mid-task from hiding output.
    passed: [bool; 2],
    batch: Vec<(Stream, Vec<u8>, Resume)>,
    batch_len: usize,
}

impl Replay {
    /// A reader resuming at `resume` (the default resume reads from the start).
    pub fn new(resume: Resume, secrets: Vec<Vec<u8>>) -> Self {
        Replay {
            redactors: [Redactor::new(secrets.clone()), Redactor::new(secrets)],
            in_split: [false; 2],
            newline_owed: [false; 2],
            cursor: resume.clean,
            clean: resume.clean,
            since_clean: 0,
            skip: resume.skip,
            run: [(i64::MIN, 0); 2],
            passed: [false; 2],
            batch: Vec::new(),
            batch_len: 0,
        }
    }

    /// Starts a new read of the log at [`Replay::since_secs`].
    pub fn start_read(&mut self) {
        self.run = [(i64::MIN, 0); 2];
        self.passed = [false; 2];
    }

    /// The `since` of the next read (whole seconds, inclusive).
    pub fn since_secs(&self) -> i64 {
        self.cursor.since_secs()
    }

    fn resume(&self) -> Resume {
        Resume {
            clean: self.clean,
            skip: self.since_clean,
        }
    }

    /// Consumes one entry; returns false when it was already consumed earlier.
    pub fn entry(&mut self, stream: Stream, ts: i64, payload: &[u8]) -> bool {
        let slot = slot(stream);
        // Index of this entry among its stream's entries sharing its timestamp.
        let (run_ts, run_index) = &mut self.run[slot];
        if ts == *run_ts {
            *run_index += 1;
        } else {
            *run_ts = ts;
            *run_index = 0;
        }
        if !self.passed[slot] && self.cursor.consumed(slot, ts, *run_index) {
            return false;
        }
        self.passed[slot] = true;
        self.cursor = self.cursor.advance(slot, ts);
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

    /// End of output: whatever a redactor still holds cannot become a secret any more.
    pub fn finish(&mut self) {
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let rest = self.redactors[slot].finish();
            if !rest.is_empty() {
                self.since_clean += rest.len() as u64;
                self.push(stream, rest);
            }
        }
        self.clean = self.cursor;
        self.since_clean = 0;
        if let Some((_, _, r)) = self.batch.last_mut() {
            *r = Resume {
                clean: self.clean,
                skip: 0,
            };
        }
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

    /// Bytes waiting to be spooled.
    pub fn pending(&self) -> usize {
        self.batch_len
    }

    /// Takes the runs waiting to be spooled, in order, each with the resume point after it.
    pub fn take(&mut self) -> Vec<(Stream, Vec<u8>, Resume)> {
        self.batch_len = 0;
        let mut runs = std::mem::take(&mut self.batch);
        runs.retain(|(_, bytes, _)| !bytes.is_empty());
        runs
    }

    async fn flush(&mut self, spool: &SharedSpool) {
        for (stream, bytes, resume) in self.take() {
            append_retrying(spool, stream, &bytes, resume).await;
        }
        // (A run that did not fit was counted by the spool, which announces the gap.)
    }
}

/// Reads the container's output into the spool until the container has stopped and its log is
/// drained. Safe to call again after a restart: it resumes from what the spool recorded.
pub async fn capture(
    runtime: &dyn Runtime,
    container_id: &str,
    spool: &SharedSpool,
    secrets: Vec<Vec<u8>>,
) -> Result<(), CaptureError> {
    let resume = lock(spool).last_resume();
    let mut st = Replay::new(resume, secrets);
    let mut failures = 0u32;
    // Follow until the engine ends the stream (container stopped), then one plain read from
    // the cursor: `follow` can lose a final fragment without a newline (moby#43860).
    for follow in [true, false] {
        loop {
            st.start_read();
            let mut logs = Box::pin(runtime.logs(container_id, follow, st.since_secs()));
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
                    Some(Ok(e)) => {
                        st.entry(e.stream, e.ts, &e.bytes);
                        if st.pending() >= BATCH {
                            st.flush(spool).await;
                            due = None;
                        } else if due.is_none() {
                            due = Some(tokio::time::Instant::now() + FLUSH_AFTER);
                        }
                    }
                }
            }
            st.flush(spool).await;
            match failed {
                None => break,
                Some(e) => {
                    failures += 1;
                    // The engine may be away or restarting: retry while the container exists
                    // or the engine does not answer (the supervisor decides when to stop).
                    let gone = matches!(runtime.inspect_state(container_id).await, Ok(None));
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
    st.finish();
    st.flush(spool).await;
    debug!(container = container_id, "output captured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000_000;

    /// One engine log entry, in the engine's (write) order.
    #[derive(Debug, Clone)]
    struct Entry {
        stream: Stream,
        ts: i64,
        payload: Vec<u8>,
    }

    /// What the engine answers to a read `since` whole seconds (inclusive).
    fn read(log: &[Entry], since: i64) -> impl Iterator<Item = &Entry> {
        log.iter().filter(move |e| e.ts >= since * SEC)
    }

    fn transcript(runs: &[(Stream, Vec<u8>, Resume)]) -> Vec<(Stream, u8)> {
        runs.iter()
            .flat_map(|(s, b, _)| b.iter().map(move |x| (*s, *x)))
            .collect()
    }

    /// Runs the whole log through one reader: the transcript a worker that never died spools.
    fn uninterrupted(log: &[Entry], secrets: &[Vec<u8>]) -> Vec<(Stream, Vec<u8>, Resume)> {
        let mut r = Replay::new(Resume::default(), secrets.to_vec());
        r.start_read();
        for e in log {
            r.entry(e.stream, e.ts, &e.payload);
        }
        r.finish();
        r.take()
    }

    /// Runs the log through a worker killed after `kills[i]` entries of each life, losing the
    /// runs it had not spooled yet (`kept[i]` of them reach the spool), restarted each time
    /// from the spool's last resume point with fresh redactors.
    fn with_kills(
        log: &[Entry],
        secrets: &[Vec<u8>],
        kills: &[(usize, usize)],
    ) -> Vec<(Stream, Vec<u8>, Resume)> {
        let mut spool: Vec<(Stream, Vec<u8>, Resume)> = Vec::new();
        let mut kills = kills.iter();
        loop {
            let resume = spool.last().map(|(_, _, r)| *r).unwrap_or_default();
            let mut r = Replay::new(resume, secrets.to_vec());
            r.start_read();
            let kill = kills.next();
            let mut fed = 0usize;
            let mut died = false;
            for e in read(log, r.since_secs()) {
                if r.entry(e.stream, e.ts, &e.payload) {
                    fed += 1;
                }
                if let Some(&(after, kept)) = kill
                    && fed >= after
                {
                    // A partial flush: the first `kept` runs were written, the rest was lost.
                    spool.extend(r.take().into_iter().take(kept));
                    died = true;
                    break;
                }
                // A flush now and then, as the batch timer would.
                if fed.is_multiple_of(7) {
                    spool.extend(r.take());
                }
            }
            if !died {
                r.finish();
                spool.extend(r.take());
                return spool;
            }
        }
    }

    /// Two streams of lines, interleaved in any order, each stream's timestamps growing (some
    /// shared, as split lines have), the streams' stamps out of order by up to a millisecond,
    /// and pauses of seconds so `since` matters.
    fn log_strategy() -> impl Strategy<Value = Vec<Entry>> {
        let line = proptest::collection::vec(
            prop_oneof![
                Just(b'a'),
                Just(b'x'),
                Just(b'\n'),
                Just(b's'),
                Just(b'3'),
                Just(b'k')
            ],
            0..12,
        );
        proptest::collection::vec((any::<bool>(), line, 0u8..10, 0i64..1_000_000), 0..80).prop_map(
            |items| {
                let mut now = 1_000 * SEC;
                let mut last = [0i64; 2];
                items
                    .into_iter()
                    .map(|(err, mut payload, gap, jitter)| {
                        let slot = usize::from(err);
                        match gap {
                            0 => {}              // the same instant as this stream's previous entry
                            1 => now += 2 * SEC, // a pause
                            _ => now += i64::from(gap) * 1_000,
                        }
                        // A stream is stamped when its goroutine reads: up to 1 ms before the
                        // other stream's entry that was written first.
                        let ts = if gap == 0 && last[slot] > 0 {
                            last[slot]
                        } else {
                            (now - jitter).max(last[slot] + 1)
                        };
                        last[slot] = ts;
                        if payload.is_empty() {
                            payload.push(b'\n');
                        }
                        Entry {
                            stream: if err { Stream::Stderr } else { Stream::Stdout },
                            ts,
                            payload,
                        }
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn any_kills_at_any_point_of_any_interleaving_spool_the_same_bytes(
            log in log_strategy(),
            kills in proptest::collection::vec((1usize..30, 0usize..4), 0..10),
            secret in any::<bool>(),
        ) {
            let secrets = if secret { vec![b"s3ks3k".to_vec(), b"xax".to_vec()] } else { vec![] };
            let want = transcript(&uninterrupted(&log, &secrets));
            let got = transcript(&with_kills(&log, &secrets, &kills));
            prop_assert_eq!(got.len(), want.len(), "bytes lost or doubled");
            prop_assert!(got == want, "same length, different bytes");
        }

        #[test]
        fn the_uninterrupted_transcript_is_each_stream_in_order(log in log_strategy()) {
            let got = transcript(&uninterrupted(&log, &[]));
            for stream in [Stream::Stdout, Stream::Stderr] {
                let want: Vec<u8> = log.iter().filter(|e| e.stream == stream)
                    .flat_map(|e| e.payload.clone()).collect();
                let mine: Vec<u8> = got.iter().filter(|(s, _)| *s == stream).map(|(_, b)| *b).collect();
                prop_assert_eq!(mine, want);
            }
        }
    }

    #[test]
    fn an_entry_stamped_before_the_other_streams_last_one_is_not_lost() {
        // The engine's order with the stamps it gave (seen here: err 835 written after out 836
        // but stamped 58 us earlier).
        let log = [
            (Stream::Stdout, 1_000 * SEC + 404_251, "out 836\n"),
            (Stream::Stderr, 1_000 * SEC + 346_562, "err 835\n"),
            (Stream::Stdout, 1_000 * SEC + 500_000, "out 837\n"),
        ];
        let mut r = Replay::new(Resume::default(), vec![]);
        r.start_read();
        for (s, ts, p) in log {
            assert!(
                r.entry(s, ts, p.as_bytes()),
                "{p} was taken as already read"
            );
        }
        r.finish();
        let runs = r.take();
        let all: Vec<u8> = runs.iter().flat_map(|(_, b, _)| b.clone()).collect();
        assert_eq!(all, b"out 836\nerr 835\nout 837\n");
    }
}
