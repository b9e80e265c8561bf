//! Resume anchors for live capture.
//!
//! Live output has no timestamps, so a restarted berth replays the engine's log from where
//! the live stretch began and drops, per stream, what the spool already holds. For a loud,
//! long task that is a long re-read at log speed, and the engine rotates its log (berth's
//! containers keep 5 × 100 MB): once the start of the stretch is rotated away, replaying
//! "from the start and drop N" would land in the wrong place. So every `anchor_every` bytes of
//! live output berth freezes the container for a moment (cgroup freezer), lets the attach
//! stream run dry, reads the log's last entries, thaws the container, and — where the log's
//! end provably is where the live bytes stand — moves the resume point up to that entry.

use std::time::Duration;

use futures_util::StreamExt;
use tracing::{debug, warn};

use super::log_end::{TAIL_ENTRIES, read_log_end};
use crate::backend::{Live, LogEntry, OutputStream};
use crate::protocol::Stream;
use crate::transcript::log_end::{Tail, log_end_matches};
use crate::transcript::replay::{ENGINE_PIECE, Replay};
use crate::transcript::spool::{SharedSpool, lock};
use crate::transcript::{Mark, Redactor, slot};

/// After a failed attempt, how much more output before the next.
const RETRY_AFTER: u64 = 16 << 20;
/// The attach stream counts as dry after this long without a byte.
const QUIET: Duration = Duration::from_millis(15);
/// Longest a container stays frozen for one attempt (a stream that does not run dry).
const MAX_FREEZE: Duration = Duration::from_secs(1);

/// Where a restarted reader can resume one stream: right after its last log entry, when that
/// entry ends a line and the live bytes are exactly the log up to it plus a line the engine's
/// log driver still holds (no newline yet, shorter than a piece).
///
/// `live`: the stream's last raw bytes and whether they are all of it; `entries`: the log's
/// last entries of this stream `(ts, bytes)`, oldest first; `whole_log`: they are all of its
/// entries. Returns the mark after that entry and the output bytes (redacted) live capture
/// produced after it. `None` wherever that cannot be shown from what is at hand.
pub fn anchor_point(
    live: (&[u8], bool),
    entries: &[(i64, &[u8])],
    whole_log: bool,
    redactor: &Redactor,
) -> Option<(Mark, u64)> {
    let (tail, whole) = live;
    let nl = tail.iter().rposition(|b| *b == b'\n')?;
    let (head, pending) = tail.split_at(nl + 1);
    if pending.len() >= ENGINE_PIECE {
        return None;
    }
    let &(last_ts, last) = entries.last()?;
    // A piece without its newline may owe one that only the next entry would restore.
    if !last.ends_with(b"\n") || last_ts <= 0 {
        return None;
    }
    let as_log: Vec<(Stream, &[u8])> = entries.iter().map(|(_, b)| (Stream::Stdout, *b)).collect();
    if !log_end_matches([(head, whole), (&[], true)], &as_log) {
        return None;
    }
    // The mark counts this stream's entries sharing the last timestamp; all of them must be
    // in view.
    let same = entries
        .iter()
        .rev()
        .take_while(|(ts, _)| *ts == last_ts)
        .count();
    if same == entries.len() && !whole_log {
        return None;
    }
    // The replay starts with a fresh redactor there: only right if nothing was held back.
    if redactor.may_continue(head) {
        return None;
    }
    let mut fresh = redactor.fresh();
    let after = fresh.feed(pending);
    if !fresh.is_clear() {
        return None;
    }
    Some((
        Mark {
            ts: last_ts,
            seen: u32::try_from(same).ok()?,
        },
        after.len() as u64,
    ))
}

/// When the next anchor is due, in live bytes since capture began.
pub(super) struct Schedule {
    every: u64,
    next: u64,
    seen: u64,
}

impl Schedule {
    /// Every `every` bytes (0: never).
    pub(super) fn new(every: u64) -> Self {
        Schedule {
            every,
            next: every,
            seen: 0,
        }
    }

    /// Counts live bytes; true when an anchor is due.
    pub(super) fn count(&mut self, n: usize) -> bool {
        self.seen += n as u64;
        self.every > 0 && self.seen >= self.next
    }

    fn placed(&mut self) {
        self.next = self.seen + self.every;
    }

    fn failed(&mut self) {
        self.next = self.seen + RETRY_AFTER.min(self.every);
    }
}

/// What an attempt came to.
pub(super) enum Attempt {
    /// The resume point moved for this many streams (0: nothing could be shown; retried).
    Done(usize),
    /// The attach stream ended or failed while the container was frozen.
    StreamEnded(Option<String>),
}

/// Freezes the container, drains the attach stream into `st`, reads the log's end, thaws the
/// container, and moves the resume point where that is provably right. Never leaves the
/// container frozen: the thaw is retried and a failure to thaw is an error in the log.
pub(super) async fn attempt(
    runtime: &dyn Live,
    container_id: &str,
    live: &mut OutputStream,
    st: &mut Replay,
    tails: &mut [Tail; 2],
    spool: &SharedSpool,
    schedule: &mut Schedule,
) -> Attempt {
    if let Err(e) = runtime.freeze(container_id).await {
        debug!(container = container_id, error = %e, "cannot freeze the container to anchor its transcript");
        schedule.failed();
        return Attempt::Done(0);
    }
    let frozen = std::time::Instant::now();
    let mut ended = None;
    loop {
        match tokio::time::timeout(QUIET, live.next()).await {
            Err(_) => break,
            Ok(None) => {
                ended = Some(None);
                break;
            }
            Ok(Some(Err(e))) => {
                ended = Some(Some(e.to_string()));
                break;
            }
            Ok(Some(Ok((stream, bytes)))) => {
                tails[slot(stream)].push(&bytes);
                st.live(stream, &bytes);
                if frozen.elapsed() > MAX_FREEZE {
                    break;
                }
            }
        }
    }
    let quiet = ended.is_none() && frozen.elapsed() <= MAX_FREEZE;
    // Two reads of the log's end a moment apart: the engine's log writer runs behind the
    // attach stream by a little, and both must have settled.
    let mut ends = Vec::new();
    if quiet {
        for i in 0..2 {
            if i > 0 {
                tokio::time::sleep(QUIET).await;
            }
            ends.push(read_log_end(runtime, container_id).await.ok());
        }
    }
    thaw(runtime, container_id).await;
    let held = frozen.elapsed();
    if let Some(why) = ended {
        return Attempt::StreamEnded(why);
    }
    let settled = match ends.as_slice() {
        [Some(a), Some(b)] if same_end(a, b) => Some(a),
        _ => None,
    };
    let mut moved = 0;
    if let Some(entries) = settled {
        let whole_log = entries.len() < TAIL_ENTRIES as usize;
        for (i, tail) in tails.iter().enumerate() {
            if st.since_clean()[i] == 0 {
                continue;
            }
            let mine: Vec<(i64, &[u8])> = entries
                .iter()
                .filter(|e| slot(e.stream) == i)
                .map(|e| (e.ts, &e.bytes[..]))
                .collect();
            if let Some((mark, after)) = anchor_point(tail.view(), &mine, whole_log, st.redactor(i))
                && st.anchor(i, mark, after)
            {
                moved += 1;
            }
        }
    }
    if moved > 0 {
        schedule.placed();
        // Persist the new resume point now, not only with the next output.
        if let Err(e) = lock(spool).append(Stream::Stdout, b"", st.resume_point()) {
            debug!(container = container_id, error = %e, "cannot record the transcript's resume point");
        }
    } else {
        schedule.failed();
    }
    debug!(
        container = container_id,
        streams = moved,
        frozen_ms = held.as_millis() as u64,
        "transcript resume anchor"
    );
    Attempt::Done(moved)
}

fn same_end(a: &[LogEntry], b: &[LogEntry]) -> bool {
    a.len() == b.len()
        && a.last().map(|e| (e.ts, e.stream, &e.bytes))
            == b.last().map(|e| (e.ts, e.stream, &e.bytes))
}

/// Thaws the container, retrying a few times: a task must never stay frozen because of berth.
pub(crate) async fn thaw(runtime: &dyn Live, container_id: &str) {
    for attempt in 1..=5u64 {
        match runtime.thaw(container_id).await {
            Ok(()) => return,
            Err(e) if attempt == 5 => {
                warn!(container = container_id, error = %e, "cannot thaw the container after anchoring its transcript; run `docker unpause {container_id}`");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_700_000_000_000_000_000;

    /// The expected answer: the mark after `(ts, seen)` and `after` bytes since.
    fn at(ts: i64, seen: u32, after: u64) -> Option<(Mark, u64)> {
        Some((Mark { ts, seen }, after))
    }

    fn none() -> Redactor {
        Redactor::new(Vec::new())
    }

    fn entries<'a>(lines: &[&'a str]) -> Vec<(i64, &'a [u8])> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| (TS + i as i64, l.as_bytes()))
            .collect()
    }

    #[test]
    fn the_anchor_is_after_the_last_line_with_the_pending_line_counted() {
        let log = entries(&["a\n", "bb\n", "ccc\n"]);
        let live = b"a\nbb\nccc\ndd";
        let got = anchor_point((live, true), &log, true, &none());
        assert_eq!(got, at(TS + 2, 1, 2));
        // Exactly at a line end: nothing after.
        let got = anchor_point((b"a\nbb\nccc\n", true), &log, true, &none());
        assert_eq!(got, at(TS + 2, 1, 0));
    }

    #[test]
    fn a_log_behind_or_ahead_of_the_live_bytes_gives_no_anchor() {
        // The log writer has not caught up with a whole line the attach stream delivered.
        let log = entries(&["a\n", "bb\n"]);
        assert_eq!(
            anchor_point((b"a\nbb\nccc\n", true), &log, true, &none()),
            None
        );
        // The log holds a line live capture has not seen.
        let log = entries(&["a\n", "bb\n", "ccc\n", "x\n"]);
        assert_eq!(
            anchor_point((b"a\nbb\nccc\n", true), &log, true, &none()),
            None
        );
        // Nothing logged, or no line end in view.
        assert_eq!(anchor_point((b"a\n", true), &[], true, &none()), None);
        assert_eq!(
            anchor_point((b"abc", true), &entries(&["abc"]), true, &none()),
            None
        );
    }

    #[test]
    fn a_pending_piece_or_a_split_line_gives_no_anchor() {
        // As long as a piece: the log driver would already have cut it into an entry.
        let long = vec![b'x'; ENGINE_PIECE];
        let mut live = b"a\n".to_vec();
        live.extend_from_slice(&long);
        assert_eq!(
            anchor_point((&live, true), &entries(&["a\n"]), true, &none()),
            None
        );
        // The last entry is a piece without its newline (the driver dropped it).
        let log = entries(&["a\n", "bbbb"]);
        assert_eq!(
            anchor_point((b"a\nbbbb\n", true), &log, true, &none()),
            None
        );
    }

    #[test]
    fn pieces_sharing_a_timestamp_are_all_counted_and_must_all_be_in_view() {
        let log: Vec<(i64, &[u8])> = vec![(TS, b"a\n"), (TS + 5, b"xx"), (TS + 5, b"yy\n")];
        let got = anchor_point((b"a\nxxyy\nz", true), &log, true, &none());
        assert_eq!(got, at(TS + 5, 2, 1));
        // Only the shared-timestamp pieces in view, and there may be more before them.
        let log: Vec<(i64, &[u8])> = vec![(TS + 5, b"xx"), (TS + 5, b"yy\n")];
        assert_eq!(
            anchor_point((b"a\nxxyy\n", false), &log, false, &none()),
            None
        );
        assert_eq!(
            anchor_point((b"xxyy\n", true), &log, true, &none()),
            at(TS + 5, 2, 0)
        );
    }

    #[test]
    fn a_secret_that_could_run_across_the_anchor_gives_no_anchor() {
        let r = Redactor::new([b"line\nsecret".to_vec()]);
        let log = entries(&["a\n", "line\n"]);
        assert_eq!(anchor_point((b"a\nline\nsec", true), &log, true, &r), None);
        // A secret inside the pending line is counted as the redactor writes it.
        let r = Redactor::new([b"hunter2".to_vec()]);
        let got = anchor_point((b"a\npw=hunter2", true), &entries(&["a\n"]), true, &r);
        assert_eq!(got, at(TS, 1, ("pw=".len() + b"[REDACTED]".len()) as u64));
        // A pending line that may still become a secret.
        assert_eq!(
            anchor_point((b"a\npw=hun", true), &entries(&["a\n"]), true, &r),
            None
        );
    }

    #[test]
    fn a_kept_end_shorter_than_the_log_end_still_anchors() {
        // Only the last bytes of the stream are kept; the entry reaching before them is
        // compared on what is left.
        let log = entries(&["0123456789\n", "ab\n"]);
        let got = anchor_point((b"789\nab\nc", false), &log, false, &none());
        assert_eq!(got, at(TS + 1, 1, 1));
    }

    #[test]
    fn the_schedule_retries_sooner_after_a_failed_attempt() {
        let mut s = Schedule::new(100 << 20);
        assert!(!s.count(99 << 20));
        assert!(s.count(1 << 20));
        s.failed();
        assert!(!s.count(15 << 20));
        assert!(s.count(1 << 20));
        s.placed();
        assert!(!s.count(99 << 20));
        assert!(!Schedule::new(0).count(usize::MAX));
    }
}
