//! The pure half of output capture: engine log entries (or live bytes) into redacted
//! transcript runs, each tagged with the point a restarted reader resumes from, and the same
//! replay counting instead of storing ([`Tally`]).
//!
//! The engine's on-disk log is the source (it outlives berth); each entry carries a timestamp,
//! and the spool records where to resume: the last point where no redactor held anything back
//! (a [`Cursor`]), plus how many bytes were produced since. A restarted worker re-reads from
//! that point with fresh redactors (deterministic) and skips what it had already spooled.

use std::time::Duration;

use super::spool::{SharedSpool, append_retrying, lock};
use super::{Cursor, Mark, Redactor, Resume, slot};
use crate::protocol::Stream;

/// Largest batch written as one spool record run.
pub const BATCH: usize = 64 << 10;
/// Longest time output waits in a batch before it is spooled (and so can be sent).
pub const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// The container log's line buffer: a longer line is stored as pieces of exactly this size,
/// then a shorter last piece (Docker's log drivers and the CRI's container logs both split at
/// 16 KiB).
pub const ENGINE_PIECE: usize = 16 << 10;

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
    /// Per stream: bytes produced since `clean` (including skipped ones).
    since_clean: [u64; 2],
    /// Per stream: bytes still to drop (already spooled before a restart).
    skip: [u64; 2],
    /// Bytes of both streams still to drop, in the log's order (a resume point written by an
    /// older version).
    legacy_skip: u64,
    /// Live output was consumed: bytes with no place in the log, so `clean` stays where the
    /// live stretch began and only the per-stream counts say how far it got.
    live: bool,
    /// Per stream, within the current read: timestamp of the previous entry and its index
    /// among the entries sharing it.
    run: [(i64, u32); 2],
    /// Per stream, within the current read: an unconsumed entry was seen, so every later entry
    /// of that stream is new (the log is append-only), whatever its timestamp says. This keeps
    /// a wall clock stepped back mid-task from hiding output.
    passed: [bool; 2],
    batch: Vec<(Stream, Vec<u8>, Resume)>,
    batch_len: usize,
    /// Per stream, within the current read: its first entry was seen.
    read_begun: [bool; 2],
    /// Stretches the log no longer holds: (last consumed entry's time, the time the log now
    /// resumes at), both nanoseconds.
    gaps: Vec<(i64, i64)>,
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
            since_clean: [0; 2],
            skip: resume.skip,
            legacy_skip: resume.legacy_skip,
            live: false,
            run: [(i64::MIN, 0); 2],
            passed: [false; 2],
            batch: Vec::new(),
            batch_len: 0,
            read_begun: [false; 2],
            gaps: Vec::new(),
        }
    }

    /// Starts a new read of the log at [`Replay::since_secs`].
    pub fn start_read(&mut self) {
        self.run = [(i64::MIN, 0); 2];
        self.passed = [false; 2];
        self.read_begun = [false; 2];
    }

    /// Stretches found missing since the last call: a read's first entry of a stream came
    /// after the last entry consumed from it, so the log no longer holds that entry (and
    /// may have lost what followed it: a kubelet serves only a container's current log file).
    pub fn take_gaps(&mut self) -> Vec<(i64, i64)> {
        std::mem::take(&mut self.gaps)
    }

    /// The `since` of the next read (whole seconds, inclusive).
    pub fn since_secs(&self) -> i64 {
        self.cursor.since_secs()
    }

    /// The resume point after what was produced so far. Its skip counts every byte after
    /// `clean` that is in the spool: produced since (spooled or dropped as spooled before),
    /// plus what is still to drop (a live stretch has no clean points of its own, so its
    /// replay can pass one while still dropping).
    fn resume(&self) -> Resume {
        Resume {
            clean: self.clean,
            skip: [
                self.since_clean[0] + self.skip[0],
                self.since_clean[1] + self.skip[1],
            ],
            legacy_skip: self.legacy_skip,
        }
    }

    /// Consumes one entry of the engine's log; returns false when it was already consumed
    /// earlier.
    pub fn entry(&mut self, stream: Stream, ts: i64, payload: &[u8]) -> bool {
        debug_assert!(
            !self.live,
            "log entries after live output need a new Replay"
        );
        let slot = slot(stream);
        let mark = self.cursor.marks[slot];
        if !self.read_begun[slot] {
            self.read_begun[slot] = true;
            // A read starts at or before the last consumed entry: one that begins after it
            // means the log lost it.
            if mark.seen > 0 && mark.ts > 0 && ts > mark.ts {
                self.gaps.push((mark.ts, ts));
            }
        }
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
        if self.newline_owed[slot] {
            self.feed(stream, b"\n");
            self.newline_owed[slot] = false;
        }
        self.feed(stream, payload);
        let open = !payload.ends_with(b"\n");
        if open && self.in_split[slot] && payload.len() < ENGINE_PIECE {
            self.newline_owed[slot] = true;
        }
        self.in_split[slot] = open && payload.len() == ENGINE_PIECE;
        if self.redactors.iter().all(Redactor::is_clear)
            && !self.in_split.iter().any(|b| *b)
            && !self.newline_owed.iter().any(|b| *b)
        {
            self.clean = self.cursor;
            self.since_clean = [0; 2];
            let resume = self.resume();
            if let Some((_, _, r)) = self.batch.last_mut() {
                *r = resume;
            }
        }
        true
    }

    /// Consumes live output (raw bytes as the container wrote them, no timestamps). The
    /// resume point stays at the start of the live stretch; the per-stream counts grow, and a
    /// restarted reader replays the log from there and drops that many bytes of each stream.
    pub fn live(&mut self, stream: Stream, payload: &[u8]) {
        self.live = true;
        self.feed(stream, payload);
    }

    /// The redactor of a capture stream (0 stdout, 1 stderr), for checks on its secrets.
    pub fn redactor(&self, slot: usize) -> &Redactor {
        &self.redactors[slot]
    }

    /// Per stream: bytes produced since the resume point's clean cursor.
    pub fn since_clean(&self) -> [u64; 2] {
        self.since_clean
    }

    /// The resume point after everything consumed so far (what the next record will carry).
    pub fn resume_point(&self) -> Resume {
        self.resume()
    }

    /// Moves one stream's resume point during live capture to just after a log entry known
    /// to be where the live bytes stood (`mark`), with `produced_after` output bytes since:
    /// a restarted reader then replays the log from there instead of from where the live
    /// stretch began. Refused (false) while bytes spooled before a restart are still being
    /// dropped.
    pub fn anchor(&mut self, slot: usize, mark: Mark, produced_after: u64) -> bool {
        if !self.live || self.skip[slot] > 0 || self.legacy_skip > 0 {
            return false;
        }
        self.clean.marks[slot] = mark;
        self.cursor.marks[slot] = mark;
        self.since_clean[slot] = produced_after;
        let resume = self.resume();
        if let Some((_, _, r)) = self.batch.last_mut() {
            *r = resume;
        }
        true
    }

    /// Redacts `input` into the batch. Without bytes to drop (the usual case) the redactor
    /// writes straight into the batch's last run: one copy from the engine's buffer.
    fn feed(&mut self, stream: Stream, input: &[u8]) {
        let slot = slot(stream);
        if self.skip[slot] > 0 || self.legacy_skip > 0 {
            let out = self.redactors[slot].feed(input);
            self.emit(stream, out);
            return;
        }
        if !matches!(self.batch.last(), Some((s, _, _)) if *s == stream) {
            let resume = self.resume();
            self.batch.push((stream, Vec::with_capacity(BATCH), resume));
        }
        let redactor = &mut self.redactors[slot];
        let Some((_, bytes, _)) = self.batch.last_mut() else {
            return;
        };
        let before = bytes.len();
        redactor.feed_into(input, bytes);
        let n = bytes.len() - before;
        self.since_clean[slot] += n as u64;
        self.batch_len += n;
        let resume = self.resume();
        if let Some((_, _, r)) = self.batch.last_mut() {
            *r = resume;
        }
    }

    /// Counts produced bytes, drops those spooled before a restart, batches the rest.
    fn emit(&mut self, stream: Stream, mut out: Vec<u8>) {
        let slot = slot(stream);
        self.since_clean[slot] += out.len() as u64;
        let mut drop = 0usize;
        if self.legacy_skip > 0 {
            drop = (self.legacy_skip as usize).min(out.len());
            self.legacy_skip -= drop as u64;
        }
        if self.skip[slot] > 0 {
            let n = (self.skip[slot] as usize).min(out.len() - drop);
            self.skip[slot] -= n as u64;
            drop += n;
        }
        out.drain(..drop);
        self.push(stream, out);
    }

    /// End of output: whatever a redactor still holds cannot become a secret any more.
    pub fn finish(&mut self) {
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let rest = self.redactors[slot].finish();
            if !rest.is_empty() {
                self.emit(stream, rest);
            }
        }
        if self.live {
            // The cursor never moved over live bytes: only the counts say where they end.
            return;
        }
        self.clean = self.cursor;
        self.since_clean = [0; 2];
        let resume = self.resume();
        if let Some((_, _, r)) = self.batch.last_mut() {
            *r = resume;
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

    pub async fn flush(&mut self, spool: &SharedSpool) {
        for (stream, bytes, resume) in self.take() {
            append_retrying(spool, stream, &bytes, resume).await;
        }
        // (A run that did not fit was counted by the spool, which announces the gap.)
    }

    /// Spools the batch without waiting for disk space; false when a write failed (what was
    /// not written is then read again from the engine's log).
    pub fn flush_now(&mut self, spool: &SharedSpool) -> bool {
        let runs = self.take();
        let mut sp = lock(spool);
        runs.iter()
            .all(|(stream, bytes, resume)| sp.append(*stream, bytes, *resume).is_ok())
    }
}

/// The count of what capture did not read: the transcript bytes the engine's log holds after
/// a resume point, produced by the same [`Replay`] capture uses (so redaction, and the bytes
/// already spooled that a resumed reader drops, count exactly as capture would have spooled
/// them), with nothing written anywhere.
pub struct Tally {
    replay: Replay,
    bytes: u64,
    resume: Resume,
}

impl Tally {
    /// A count from `from` (the spool's [`last_resume`]).
    ///
    /// [`last_resume`]: crate::transcript::spool::Spool::last_resume
    pub fn new(from: Resume, secrets: Vec<Vec<u8>>) -> Self {
        Tally {
            replay: Replay::new(from, secrets),
            bytes: 0,
            resume: from,
        }
    }

    /// Starts a new read of the log at [`Tally::since_secs`].
    pub fn start_read(&mut self) {
        self.replay.start_read();
    }

    /// The `since` of the next read (whole seconds, inclusive).
    pub fn since_secs(&self) -> i64 {
        self.replay.since_secs()
    }

    /// Counts one entry of the engine's log (entries read before are recognised and skipped).
    pub fn entry(&mut self, stream: Stream, ts: i64, payload: &[u8]) {
        self.replay.entry(stream, ts, payload);
        // Settled in batches: what the reader holds stays bounded, as in capture.
        if self.replay.pending() >= BATCH {
            self.settle();
        }
    }

    /// End of the log: what a redactor still held counts too.
    pub fn finish(&mut self) {
        self.replay.finish();
        self.settle();
    }

    /// Bytes counted so far and the resume point after them. Before [`Tally::finish`], bytes a
    /// redactor holds back are not counted yet: a lower bound.
    pub fn counted(&mut self) -> (u64, Resume) {
        self.settle();
        (self.bytes, self.resume)
    }

    fn settle(&mut self) {
        for (_, bytes, resume) in self.replay.take() {
            self.bytes += bytes.len() as u64;
            self.resume = resume;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

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
        with_kills_after(Vec::new(), log, secrets, kills)
    }

    /// [`with_kills`], starting from what an earlier life already spooled.
    fn with_kills_after(
        spool: Vec<(Stream, Vec<u8>, Resume)>,
        log: &[Entry],
        secrets: &[Vec<u8>],
        kills: &[(usize, usize)],
    ) -> Vec<(Stream, Vec<u8>, Resume)> {
        lives(spool, log, secrets, kills, true)
    }

    /// [`with_kills_after`]; without `restart_last`, what the last kill left (no life after it).
    fn lives(
        mut spool: Vec<(Stream, Vec<u8>, Resume)>,
        log: &[Entry],
        secrets: &[Vec<u8>],
        kills: &[(usize, usize)],
        restart_last: bool,
    ) -> Vec<(Stream, Vec<u8>, Resume)> {
        let mut kills = kills.iter().peekable();
        loop {
            if !restart_last && kills.peek().is_none() {
                return spool;
            }
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

    /// Each stream's bytes on its own (live output and the log interleave streams differently;
    /// within a stream, order is what must hold).
    fn per_stream(runs: &[(Stream, Vec<u8>, Resume)]) -> [Vec<u8>; 2] {
        let mut out = [Vec::new(), Vec::new()];
        for (s, b, _) in runs {
            out[slot(*s)].extend_from_slice(b);
        }
        out
    }

    /// The attach stream's view of `log`: each stream's bytes cut into pieces of the given
    /// sizes (not aligned to the log's entries), the two streams merged in the given order.
    fn live_pieces(log: &[Entry], sizes: &[usize], order: &[bool]) -> Vec<(Stream, Vec<u8>)> {
        let mut raw = [Vec::new(), Vec::new()];
        for e in log {
            raw[slot(e.stream)].extend_from_slice(&e.payload);
        }
        let mut pieces: [VecDeque<Vec<u8>>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut sizes = sizes.iter().cycle();
        for (i, r) in raw.iter().enumerate() {
            let mut at = 0;
            while at < r.len() {
                let n = (*sizes.next().unwrap_or(&7)).clamp(1, r.len() - at);
                pieces[i].push_back(r[at..at + n].to_vec());
                at += n;
            }
        }
        let mut out = Vec::new();
        let mut order = order.iter().cycle();
        while !pieces[0].is_empty() || !pieces[1].is_empty() {
            let pick = usize::from(*order.next().unwrap_or(&false));
            let slot = if pieces[pick].is_empty() {
                1 - pick
            } else {
                pick
            };
            let stream = if slot == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            if let Some(p) = pieces[slot].pop_front() {
                out.push((stream, p));
            }
        }
        out
    }

    /// Live capture of `pieces` killed after `cut` of them with `kept` runs of its last batch
    /// spooled (`None`: it ran to the end), then the log reader with `kills` from what was
    /// spooled.
    fn live_then_log(
        log: &[Entry],
        pieces: &[(Stream, Vec<u8>)],
        secrets: &[Vec<u8>],
        cut: Option<(usize, usize)>,
        kills: &[(usize, usize)],
    ) -> Vec<(Stream, Vec<u8>, Resume)> {
        live_then_log_until(log, pieces, secrets, cut, kills, true)
    }

    /// [`live_then_log`]; without `restart_last`, what its last kill left.
    fn live_then_log_until(
        log: &[Entry],
        pieces: &[(Stream, Vec<u8>)],
        secrets: &[Vec<u8>],
        cut: Option<(usize, usize)>,
        kills: &[(usize, usize)],
        restart_last: bool,
    ) -> Vec<(Stream, Vec<u8>, Resume)> {
        let mut spool = Vec::new();
        let mut r = Replay::new(Resume::default(), secrets.to_vec());
        for (i, (stream, bytes)) in pieces.iter().enumerate() {
            if let Some((at, kept)) = cut
                && i == at
            {
                spool.extend(r.take().into_iter().take(kept));
                return lives(spool, log, secrets, kills, restart_last);
            }
            r.live(*stream, bytes);
            if i % 5 == 4 {
                spool.extend(r.take());
            }
        }
        r.finish();
        spool.extend(r.take());
        if let Some((_, kept)) = cut {
            // Killed after the last piece, before the end was confirmed: the log reader
            // takes over from what was spooled.
            spool.truncate(spool.len().saturating_sub(kept % 2));
            return lives(spool, log, secrets, kills, restart_last);
        }
        spool
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn live_output_then_any_kills_spools_each_stream_exactly_once(
            log in log_strategy(),
            sizes in proptest::collection::vec(1usize..40, 1..8),
            order in proptest::collection::vec(any::<bool>(), 1..8),
            cut in proptest::option::of((0usize..200, 0usize..4)),
            kills in proptest::collection::vec((1usize..30, 0usize..4), 0..6),
            secret in any::<bool>(),
        ) {
            let secrets = if secret { vec![b"s3ks3k".to_vec(), b"xax".to_vec()] } else { vec![] };
            let want = per_stream(&uninterrupted(&log, &secrets));
            let pieces = live_pieces(&log, &sizes, &order);
            let got = per_stream(&live_then_log(&log, &pieces, &secrets, cut, &kills));
            prop_assert_eq!(got[0].len(), want[0].len(), "stdout bytes lost or doubled");
            prop_assert_eq!(got[1].len(), want[1].len(), "stderr bytes lost or doubled");
            prop_assert!(got == want, "same lengths, different bytes");
        }

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
        fn a_count_from_wherever_capture_stopped_adds_up_to_the_whole_transcript(
            log in log_strategy(),
            sizes in proptest::collection::vec(1usize..40, 1..8),
            order in proptest::collection::vec(any::<bool>(), 1..8),
            cut in proptest::option::of((0usize..200, 0usize..4)),
            kills in proptest::collection::vec((1usize..30, 0usize..4), 0..4),
            stop in 0usize..100,
            secret in any::<bool>(),
        ) {
            let secrets = if secret { vec![b"s3ks3k".to_vec(), b"xax".to_vec()] } else { vec![] };
            let want: usize = per_stream(&uninterrupted(&log, &secrets)).iter().map(Vec::len).sum();
            let pieces = live_pieces(&log, &sizes, &order);
            // Capture stopped wherever: live, in the log, or after a restart.
            let spool = live_then_log_until(&log, &pieces, &secrets, cut, &kills, false);
            let stored: usize = per_stream(&spool).iter().map(Vec::len).sum();
            let from = spool.last().map(|(_, _, r)| *r).unwrap_or_default();
            let mut tally = Tally::new(from, secrets.clone());
            tally.start_read();
            let mut so_far = 0;
            for (i, e) in read(&log, tally.since_secs()).enumerate() {
                tally.entry(e.stream, e.ts, &e.payload);
                if i == stop {
                    so_far = tally.counted().0;
                }
            }
            tally.finish();
            let (counted, _) = tally.counted();
            prop_assert_eq!(stored as u64 + counted, want as u64, "stored {} + counted {}", stored, counted);
            // A count cut short is a lower bound.
            prop_assert!(so_far <= counted);
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

    #[test]
    fn a_read_that_begins_after_the_last_consumed_entry_reports_a_gap() {
        let mut r = Replay::new(Resume::default(), Vec::new());
        r.start_read();
        r.entry(Stream::Stdout, 10 * SEC, b"a\n");
        r.entry(Stream::Stdout, 11 * SEC, b"b\n");
        assert!(r.take_gaps().is_empty());
        // The log still holds the last consumed entry: a re-read is no gap.
        r.start_read();
        r.entry(Stream::Stdout, 11 * SEC, b"b\n");
        r.entry(Stream::Stdout, 12 * SEC, b"c\n");
        assert!(r.take_gaps().is_empty());
        // Rotated away: the re-read starts after it.
        r.start_read();
        r.entry(Stream::Stdout, 30 * SEC, b"z\n");
        assert_eq!(r.take_gaps(), vec![(12 * SEC, 30 * SEC)]);
        assert!(r.take_gaps().is_empty(), "reported once");
        // A first read (nothing consumed yet) is never a gap.
        let mut fresh = Replay::new(Resume::default(), Vec::new());
        fresh.start_read();
        fresh.entry(Stream::Stdout, 50 * SEC, b"x\n");
        assert!(fresh.take_gaps().is_empty());
    }
}
