//! Transcript primitives, all pure: redaction that survives secrets split across reads, chunk
//! cuts that never split a UTF-8 sequence, the spool's record format, and the cursor into the
//! engine's log that lets a restarted worker resume with no byte lost or doubled.

pub mod log_end;
pub mod redaction;
pub mod replay;
pub mod spool;

use crate::protocol::Stream;

/// What replaces a secret.
pub const REDACTED: &[u8] = b"[REDACTED]";
/// Largest `task_output` chunk.
pub const MAX_CHUNK: usize = 64 << 10;
/// Env values shorter than this are not treated as secrets (they would redact common words).
pub const MIN_ENV_SECRET: usize = 6;

/// Replaces secrets in one stream of bytes fed in arbitrary pieces.
///
/// Only the shortest suffix that could still grow into a secret is held back between calls, so
/// output is delayed only while it might be the start of a secret.
#[derive(Debug, Clone)]
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    /// Bytes that start some secret.
    first: [bool; 256],
    /// Finds leftmost-longest matches of all secrets at once (SIMD prefilters): testing
    /// every byte that merely starts a secret cost more than the rest of the path did.
    finder: Option<aho_corasick::AhoCorasick>,
    /// Length of the longest secret.
    longest: usize,
    carry: Vec<u8>,
}

impl Redactor {
    /// A redactor for these literals (empty ones ignored; longest match wins).
    pub fn new(secrets: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let mut s: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        s.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        s.dedup();
        let mut first = [false; 256];
        for x in &s {
            first[x[0] as usize] = true;
        }
        // Without a finder (it cannot be built for these secrets) every position is
        // scanned the slow, exact way.
        let finder = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&s)
            .ok()
            .filter(|_| !s.is_empty());
        Redactor {
            longest: s.first().map_or(0, Vec::len),
            secrets: s,
            first,
            finder,
            carry: Vec::new(),
        }
    }

    /// True when nothing is held back.
    pub fn is_clear(&self) -> bool {
        self.carry.is_empty()
    }

    /// The same secrets, nothing held back.
    pub fn fresh(&self) -> Redactor {
        Redactor {
            carry: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether some non-empty end of `text` is the start of a longer secret: then a redactor
    /// that saw `text` may be holding that end back, or a secret may run across its end.
    /// When false, a redactor is clear right after `text` whatever came before it.
    pub fn may_continue(&self, text: &[u8]) -> bool {
        let from = text.len().saturating_sub(self.longest.saturating_sub(1));
        (from..text.len()).any(|i| {
            let rest = &text[i..];
            self.first[rest[0] as usize]
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
        })
    }

    /// Feeds bytes; returns what can be emitted now.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        self.feed_into(input, &mut out);
        out
    }

    /// Feeds bytes; appends what can be emitted now to `out` (no copy of its own when
    /// nothing is held back).
    pub fn feed_into(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.secrets.is_empty() {
            out.extend_from_slice(input);
        } else if self.carry.is_empty() {
            self.scan(input, false, out);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(input);
            self.scan(&buf, false, out);
        }
    }

    /// Emits whatever is held back (end of stream), still redacting complete secrets.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.carry);
        let mut out = Vec::with_capacity(buf.len());
        if !buf.is_empty() {
            self.scan(&buf, true, &mut out);
        }
        out
    }

    /// Leftmost-longest replacement. Unless `last`, a position where a longer secret could
    /// still complete with more input is held back, even if a shorter secret matches there.
    fn scan(&mut self, buf: &[u8], last: bool, out: &mut Vec<u8>) {
        // Positions where even the longest secret fits in `buf` are settled: no more input
        // can change what matches there, so the finder decides them in one pass and copies
        // the runs between matches whole. Only the last `longest - 1` positions need the
        // exact per-position rule below.
        let settled = if last {
            buf.len()
        } else {
            (buf.len() + 1).saturating_sub(self.longest)
        };
        let mut i = 0;
        if let Some(finder) = &self.finder {
            for m in finder.find_iter(buf) {
                if m.start() >= settled {
                    break;
                }
                out.extend_from_slice(&buf[i..m.start()]);
                out.extend_from_slice(REDACTED);
                i = m.end();
            }
            if i < settled {
                out.extend_from_slice(&buf[i..settled]);
                i = settled;
            }
        }
        'scan: while i < buf.len() {
            let Some(at) = buf[i..].iter().position(|b| self.first[*b as usize]) else {
                out.extend_from_slice(&buf[i..]);
                return;
            };
            out.extend_from_slice(&buf[i..i + at]);
            i += at;
            let rest = &buf[i..];
            let mut could_grow = false;
            // Longest first: the first complete match is the longest one.
            for s in &self.secrets {
                if rest.starts_with(s) {
                    if could_grow {
                        break;
                    }
                    out.extend_from_slice(REDACTED);
                    i += s.len();
                    continue 'scan;
                }
                if !last && s.len() > rest.len() && s.starts_with(rest) {
                    could_grow = true;
                }
            }
            if could_grow {
                self.carry = rest.to_vec();
                return;
            }
            out.push(buf[i]);
            i += 1;
        }
    }
}

/// The secrets of one execution: env values of at least [`MIN_ENV_SECRET`] bytes, the API key,
/// and the operator's literals.
pub fn secrets<'a>(
    env_values: impl IntoIterator<Item = &'a str>,
    api_key: &str,
    operator: impl IntoIterator<Item = &'a str>,
) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = env_values
        .into_iter()
        .filter(|v| v.len() >= MIN_ENV_SECRET)
        .map(|v| v.as_bytes().to_vec())
        .collect();
    if !api_key.is_empty() {
        v.push(api_key.as_bytes().to_vec());
    }
    v.extend(operator.into_iter().map(|s| s.as_bytes().to_vec()));
    v
}

/// Where to cut `data` into a chunk of at most `max` bytes: at `max`, or earlier so that a
/// UTF-8 sequence is not split when the bytes are text.
pub fn cut_point(data: &[u8], max: usize) -> usize {
    if data.len() <= max {
        return data.len();
    }
    match std::str::from_utf8(&data[..max]) {
        Ok(_) => max,
        // Valid text that ends inside a multi-byte sequence: cut before that sequence.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        // Not text (or nothing valid before the cut): any cut keeps the bytes intact.
        Err(_) => max,
    }
}

/// How far one stream of the engine's log was consumed: the timestamp of its last consumed
/// entry and how many of that stream's entries carry exactly that timestamp (a long line is
/// split into pieces sharing one timestamp). `ts == 0` means nothing consumed yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// Nanoseconds since the Unix epoch of the stream's last consumed entry (0 = none).
    pub ts: i64,
    /// Entries of this stream consumed with timestamp `ts`.
    pub seen: u32,
}

/// How far back from the earliest mark a resumed read starts. The engine stamps each stream
/// in its own goroutine and writes under one lock, so a stream that printed nothing yet may
/// still deliver an entry stamped a little before the other stream's last entry; the gap is a
/// lock wait (microseconds here), the margin is far beyond it.
pub const INVERSION_MARGIN_NS: i64 = 60 * 1_000_000_000;

/// Position in the engine's log, one [`Mark`] per stream.
///
/// The engine's log is ordered by write, not by timestamp: stdout and stderr are stamped by
/// two goroutines and their entries interleave with timestamps going backwards by a few
/// microseconds (seen 3 times in 6000 entries here). Only within one stream do timestamps
/// grow, so a cursor is only exact per stream; a single timestamp cursor for both streams
/// treated an entry stamped just before the other stream's last one as already read (issue 8:
/// whole lines lost at every resume, offsets still contiguous).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Marks of stdout (0) and stderr (1).
    pub marks: [Mark; 2],
}

/// Index of a capture stream in a [`Cursor`] (stdout 0, everything else 1).
pub fn slot(stream: Stream) -> usize {
    usize::from(stream != Stream::Stdout)
}

impl Cursor {
    /// Whether the `index`-th (0-based) entry of `slot` with timestamp `ts`, in the engine's
    /// order, was already consumed.
    pub fn consumed(&self, slot: usize, ts: i64, index: u32) -> bool {
        let m = self.marks[slot];
        ts < m.ts || (ts == m.ts && index < m.seen)
    }

    /// The cursor after consuming the next entry of `slot`, with timestamp `ts`.
    pub fn advance(mut self, slot: usize, ts: i64) -> Cursor {
        let m = &mut self.marks[slot];
        if ts == m.ts {
            m.seen += 1;
        } else {
            *m = Mark { ts, seen: 1 };
        }
        self
    }

    /// The `since` (whole seconds, inclusive) to ask the engine for: early enough for every
    /// unconsumed entry of either stream (see [`INVERSION_MARGIN_NS`]).
    pub fn since_secs(&self) -> i64 {
        self.marks
            .iter()
            .filter(|m| m.ts > 0)
            .map(|m| m.ts)
            .min()
            .map_or(0, |ts| {
                (ts - INVERSION_MARGIN_NS).max(0).div_euclid(1_000_000_000)
            })
    }
}

/// Splits one timestamped log entry (`2026-01-01T00:00:00.123456789Z payload`) into its
/// timestamp (ns since the epoch) and payload.
pub fn split_timestamp(entry: &[u8]) -> Option<(i64, &[u8])> {
    let space = entry.iter().position(|b| *b == b' ')?;
    let ts = std::str::from_utf8(&entry[..space]).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some((t.timestamp_nanos_opt()?, &entry[space + 1..]))
}

/// Record flag: the last record of a finished transcript.
pub const FLAG_FINAL: u8 = 1;
/// Record flag: written into the tail ring after the budget was reached.
pub const FLAG_TAIL: u8 = 2;
/// Record flag: a system line announcing output that could not be stored (see [`gap_line`]).
pub const FLAG_GAP: u8 = 4;

/// Why output is missing where a gap line stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapCause {
    /// Writing the spool failed for `full_disk_patience` (the error).
    Disk(String),
    /// Capture stopped before reading this output from the engine's log (`why`; with the
    /// error when writing the spool was failing then), so it was counted there instead: to
    /// its end (`Ok`), or until counting stopped too (`Err`: why; the count is then a lower
    /// bound).
    Unread {
        /// Why capture stopped.
        why: String,
        /// The spool's write error, if writes were failing when capture stopped.
        write_failure: Option<String>,
        /// Whether counting reached the end of the log.
        counted: Result<(), String>,
    },
}

/// Names a failed spool write in a gap line (and finds it again when a spool is reopened).
const WRITE_FAILED: &str = "writing the transcript failed";
/// Names the output of an unread gap in its line (and finds it again when a spool is reopened).
const UNREAD: &str = "the rest of the engine's log";
/// What an operator can do about a full disk.
const FREE_SPACE: &str = "free space under state_dir (or raise transcript.full_disk_patience)";

/// The system line standing where output was lost.
pub fn gap_line(lost: u64, cause: &GapCause) -> Vec<u8> {
    match cause {
        GapCause::Disk(e) => format!(
            "[berth] {lost} bytes of output were lost here: {WRITE_FAILED} ({e}); {FREE_SPACE}\n"
        ),
        GapCause::Unread {
            why,
            write_failure,
            counted,
        } => {
            let (amount, counted) = match counted {
                Ok(()) => ("", format!("{UNREAD} was counted instead of stored")),
                Err(stop) => (
                    "at least ",
                    format!(
                        "counting {UNREAD} stopped short as well ({stop}), so this is a lower bound"
                    ),
                ),
            };
            let disk = write_failure.as_ref().map_or_else(String::new, |e| {
                format!(" while {WRITE_FAILED} ({e}); {FREE_SPACE}")
            });
            format!(
                "[berth] {amount}{lost} bytes of output were lost here: {why}; {counted}{disk}\n"
            )
        }
    }
    .into_bytes()
}

/// Output missing from a transcript: what its gap lines add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Bytes lost (a lower bound when `at_least`).
    pub bytes: u64,
    /// Counting some of it stopped short: more may be lost.
    pub at_least: bool,
    /// Some was lost because the spool could not be written.
    pub disk: bool,
    /// Some was never read: capture stopped first and counted it in the engine's log.
    pub unread: bool,
}

impl Loss {
    /// What one gap line (see [`gap_line`]) says was lost; `None` for any other line.
    pub fn of_line(line: &[u8]) -> Option<Loss> {
        let text = std::str::from_utf8(line).ok()?.strip_prefix("[berth] ")?;
        let (at_least, text) = match text.strip_prefix("at least ") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let bytes = text.split(' ').next()?.parse().ok()?;
        Some(Loss {
            bytes,
            at_least,
            disk: text.contains(WRITE_FAILED),
            unread: text.contains(UNREAD),
        })
    }

    /// Adds a loss of `bytes` for `cause`.
    pub fn add(&mut self, bytes: u64, cause: &GapCause) {
        self.bytes += bytes;
        match cause {
            GapCause::Disk(_) => self.disk = true,
            GapCause::Unread {
                write_failure,
                counted,
                ..
            } => {
                self.unread = true;
                self.disk |= write_failure.is_some();
                self.at_least |= counted.is_err();
            }
        }
    }

    /// Adds another loss.
    pub fn merge(&mut self, other: Loss) {
        self.bytes += other.bytes;
        self.at_least |= other.at_least;
        self.disk |= other.disk;
        self.unread |= other.unread;
    }

    /// Something was lost (or may have been).
    pub fn any(&self) -> bool {
        self.bytes > 0 || self.at_least
    }

    /// What the task's result says about it; `None` when nothing was lost.
    pub fn note(&self) -> Option<String> {
        if !self.any() {
            return None;
        }
        let amount = if self.at_least { "at least " } else { "" };
        let why = match (self.disk, self.unread) {
            (_, false) => "no space under state_dir",
            (false, true) => "output capture stopped before the end of the engine's log",
            (true, true) => {
                "no space under state_dir, and output capture stopped before the end of the engine's log"
            }
        };
        Some(format!(
            "{amount}{} bytes of the transcript were lost: {why}; each gap is marked in the transcript",
            self.bytes
        ))
    }
}

/// First record format: one timestamp cursor for both streams (read for spools written by
/// older versions, never written).
const MAGIC_V1: u8 = 0xB7;
/// Second record format: a mark per stream, one skip count for both streams (read, never
/// written).
const MAGIC_V2: u8 = 0xB8;
/// Current record format: a mark and a skip count per stream.
const MAGIC: u8 = 0xB9;
const HEADER_V1: usize = 1 + 1 + 1 + 4 + 8 + 4 + 8 + 4;
const HEADER_V2: usize = 1 + 1 + 1 + 4 + 2 * (8 + 4) + 8 + 4;
/// Bytes of a record header.
pub const HEADER_LEN: usize = 1 + 1 + 1 + 4 + 2 * (8 + 4) + 2 * 8 + 4;

/// Resume information carried by every record: where to restart reading the engine's log with
/// an empty redactor, and how many transcript bytes were produced since that point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// Cursor at the last point where no redactor held anything back.
    pub clean: Cursor,
    /// Transcript bytes of each stream (stdout, stderr) produced since `clean`; skipped when
    /// replaying. Per stream, because live output (the attach stream) and the engine's log
    /// interleave the two streams differently, while each stream's own bytes are the same.
    pub skip: [u64; 2],
    /// Bytes of both streams together, in the log's order, produced since `clean`, as older
    /// versions recorded them: skipped first when replaying (never written now).
    pub legacy_skip: u64,
}

/// One spool record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stream of the payload.
    pub stream: Stream,
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// Resume point after this record.
    pub resume: Resume,
    /// Transcript bytes.
    pub payload: Vec<u8>,
}

/// Appends the encoding of one record (header with CRC, then payload) to `out`, so a
/// writer can reuse one buffer instead of building a `Record` and a fresh `Vec` per write.
pub fn encode_into(stream: Stream, flags: u8, resume: &Resume, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(MAGIC);
    out.push(stream.code());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    for m in &resume.clean.marks {
        out.extend_from_slice(&m.ts.to_le_bytes());
        out.extend_from_slice(&m.seen.to_le_bytes());
    }
    for n in &resume.skip {
        out.extend_from_slice(&n.to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start..]);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

impl Record {
    /// Serialises the record (header with CRC, then payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        encode_into(self.stream, self.flags, &self.resume, &self.payload, &mut v);
        v
    }

    /// Header length of a record starting with byte `magic` (`None`: not a record), so a
    /// reader can stream records without reading the whole file.
    pub fn header_len(magic: u8) -> Option<usize> {
        match magic {
            MAGIC => Some(HEADER_LEN),
            MAGIC_V2 => Some(HEADER_V2),
            MAGIC_V1 => Some(HEADER_V1),
            _ => None,
        }
    }

    /// Decodes the record at the start of `buf`: the record and the bytes it used (header and
    /// payload). `None` when it is incomplete or corrupt (a torn write at the end of the file).
    pub fn decode(buf: &[u8]) -> Option<(Record, usize)> {
        let header = match buf.first() {
            Some(&MAGIC) => HEADER_LEN,
            Some(&MAGIC_V2) => HEADER_V2,
            Some(&MAGIC_V1) => HEADER_V1,
            _ => return None,
        };
        if buf.len() < header {
            return None;
        }
        let stream = Stream::from_code(buf[1])?;
        let flags = buf[2];
        let len = u32::from_le_bytes(buf[3..7].try_into().ok()?) as usize;
        let i64_at = |at: usize| buf.get(at..at + 8)?.try_into().ok().map(i64::from_le_bytes);
        let u32_at = |at: usize| buf.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes);
        let (clean, skip_at) = if header != HEADER_V1 {
            let out = Mark {
                ts: i64_at(7)?,
                seen: u32_at(15)?,
            };
            let err = Mark {
                ts: i64_at(19)?,
                seen: u32_at(27)?,
            };
            (Cursor { marks: [out, err] }, 31)
        } else {
            // A v1 cursor counted entries of both streams together. A clean point never lies
            // inside a split line, so every entry stamped exactly `ts` was consumed: as a mark
            // for each stream that is "everything up to and including `ts`".
            let m = Mark {
                ts: i64_at(7)?,
                seen: u32::MAX,
            };
            (Cursor { marks: [m, m] }, 19)
        };
        let u64_at = |at: usize| buf.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes);
        let (resume, crc_at) = if header == HEADER_LEN {
            let skip = [u64_at(skip_at)?, u64_at(skip_at + 8)?];
            let r = Resume {
                clean,
                skip,
                legacy_skip: 0,
            };
            (r, skip_at + 16)
        } else {
            let r = Resume {
                clean,
                skip: [0; 2],
                legacy_skip: u64_at(skip_at)?,
            };
            (r, skip_at + 8)
        };
        let crc = u32_at(crc_at)?;
        let end = header.checked_add(len)?;
        if buf.len() < end {
            return None;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[..crc_at]);
        h.update(&buf[header..end]);
        if h.finalize() != crc {
            return None;
        }
        Some((
            Record {
                stream,
                flags,
                resume,
                payload: buf[header..end].to_vec(),
            },
            end,
        ))
    }
}

/// The system line announcing elided output, written before the kept tail.
/// A `system` line that announces a hole in the output (elided, lost, or missing from the
/// engine's log): readers that join output into lines must not join across it.
pub fn announces_hole(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.starts_with("[berth] transcript exceeded transcript.max_bytes")
        || text.contains("may be missing: the engine's log no longer holds")
        || Loss::of_line(line.strip_suffix(b"\n").unwrap_or(line)).is_some()
}

pub fn elision_line(elided: u64, max_bytes: u64, tail: u64) -> Vec<u8> {
    format!(
        "[berth] transcript exceeded transcript.max_bytes ({max_bytes} bytes): {elided} bytes were elided; the last {tail} bytes follow\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_hole_announcement_is_recognised_and_ordinary_lines_are_not() {
        assert!(announces_hole(&elision_line(10, 100, 20)));
        assert!(announces_hole(&gap_line(
            5,
            &GapCause::Disk("ENOSPC".into())
        )));
        assert!(announces_hole(
            b"[berth] output written between a and b may be missing: the engine's log no longer holds where capture left off"
        ));
        for ordinary in [
            &b"[berth] stopping (cancelled): SIGTERM, SIGKILL in 10s\n"[..],
            b"[berth] pulling image busybox\n",
            b"hello\n",
        ] {
            assert!(
                !announces_hole(ordinary),
                "{}",
                String::from_utf8_lossy(ordinary)
            );
        }
    }

    /// `text` cut at `cuts` (any order, clamped to its length).
    fn split_at(text: &[u8], cuts: Vec<usize>) -> Vec<&[u8]> {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
        cuts.sort();
        let mut pieces = Vec::new();
        let mut prev = 0;
        for c in cuts {
            pieces.push(&text[prev..c]);
            prev = c;
        }
        pieces.push(&text[prev..]);
        pieces
    }

    fn redact_all(r: &mut Redactor, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            out.extend(r.feed(p));
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn only_an_end_that_starts_a_longer_secret_may_continue() {
        let r = Redactor::new([b"hunter2xyz".to_vec(), b"abc123".to_vec()]);
        assert!(r.may_continue(b"pw=hunt"));
        assert!(r.may_continue(b"x a"));
        assert!(r.may_continue(b"ab"));
        assert!(
            !r.may_continue(b"pw=hunter2xyz"),
            "a complete secret is settled"
        );
        assert!(!r.may_continue(b"line\n"));
        assert!(!r.may_continue(b""));
        assert!(!Redactor::new(Vec::new()).may_continue(b"anything"));
    }

    proptest! {
        #[test]
        fn a_redactor_is_clear_after_any_text_that_may_not_continue(
            text in proptest::collection::vec(0u8..5, 0..60),
            secrets in proptest::collection::vec(proptest::collection::vec(0u8..5, 1..5), 1..4),
        ) {
            let mut r = Redactor::new(secrets);
            let _ = r.feed(&text);
            if !r.may_continue(&text) {
                prop_assert!(r.is_clear());
            }
        }
    }

    #[test]
    fn redacts_whole_and_split_secrets() {
        let mut r = Redactor::new([b"hunter2xyz".to_vec()]);
        assert_eq!(redact_all(&mut r, &[b"pw=hunter2xyz!"]), b"pw=[REDACTED]!");
        let mut r = Redactor::new([b"hunter2xyz".to_vec()]);
        assert_eq!(
            redact_all(&mut r, &[b"pw=hun", b"ter2", b"xyz and hunter2", b"xy"]),
            b"pw=[REDACTED] and hunter2xy"
        );
    }

    #[test]
    fn holds_back_only_a_possible_secret_prefix() {
        let mut r = Redactor::new([b"secret-token".to_vec()]);
        assert_eq!(r.feed(b"hello sec"), b"hello ");
        assert!(!r.is_clear());
        assert_eq!(r.feed(b"ond"), b"second");
        assert!(r.is_clear());
        assert_eq!(r.feed(b"no match here\n"), b"no match here\n");
    }

    #[test]
    fn a_short_secret_waits_while_a_longer_one_could_still_complete() {
        // Found by the property test below: "sec" must not be redacted alone when the next
        // read may complete "secsec".
        let secrets = || [b"secsec".to_vec(), b"sec".to_vec()];
        let mut whole = Redactor::new(secrets());
        let mut split = Redactor::new(secrets());
        assert_eq!(redact_all(&mut whole, &[b"xsecsec"]), b"x[REDACTED]");
        assert_eq!(redact_all(&mut split, &[b"xsec", b"sec"]), b"x[REDACTED]");
        // At the end of the stream a held-back secret is still redacted.
        let mut end = Redactor::new(secrets());
        assert_eq!(redact_all(&mut end, &[b"xsec"]), b"x[REDACTED]");
    }

    #[test]
    fn longest_secret_wins_and_empty_secrets_are_ignored() {
        let mut r = Redactor::new([b"abc".to_vec(), b"abcdef".to_vec(), Vec::new()]);
        assert_eq!(
            redact_all(&mut r, &[b"xabcdefy abcz"]),
            b"x[REDACTED]y [REDACTED]z"
        );
    }

    #[test]
    fn secret_sources() {
        let s = secrets(["short", "longenough", ""], "apikey-1", ["op-literal"]);
        assert_eq!(
            s,
            vec![
                b"longenough".to_vec(),
                b"apikey-1".to_vec(),
                b"op-literal".to_vec()
            ]
        );
    }

    proptest! {
        #[test]
        fn redaction_is_independent_of_how_input_is_split(
            text in proptest::collection::vec(prop_oneof![Just(b's'), Just(b'e'), Just(b'c'), Just(b'x'), Just(0xffu8)], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let secrets = vec![b"secsec".to_vec(), b"sec".to_vec(), b"ecx".to_vec()];
            let mut whole = Redactor::new(secrets.clone());
            let expect = redact_all(&mut whole, &[&text]);
            let pieces = split_at(&text, cuts);
            let mut split = Redactor::new(secrets);
            prop_assert_eq!(redact_all(&mut split, &pieces), expect);
        }

        #[test]
        fn redaction_is_leftmost_longest_replacement_for_any_secret_set(
            text in proptest::collection::vec(0u8..6, 0..300),
            secrets in proptest::collection::vec(proptest::collection::vec(0u8..6, 1..5), 1..7),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            // Small alphabets make matches common, overlapping secrets included.
            let mut sorted = secrets.clone();
            sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
            let mut expect = Vec::new();
            let mut i = 0;
            while i < text.len() {
                match sorted.iter().find(|s| text[i..].starts_with(s)) {
                    Some(s) => { expect.extend_from_slice(REDACTED); i += s.len(); }
                    None => { expect.push(text[i]); i += 1; }
                }
            }
            let pieces = split_at(&text, cuts);
            let mut r = Redactor::new(secrets);
            prop_assert_eq!(redact_all(&mut r, &pieces), expect);
        }

        #[test]
        fn chunks_of_text_are_always_valid_utf8(s in "\\PC{0,300}", max in 4usize..40) {
            let mut rest = s.as_bytes();
            while !rest.is_empty() {
                let n = cut_point(rest, max);
                prop_assert!(n > 0 && n <= max);
                prop_assert!(std::str::from_utf8(&rest[..n]).is_ok());
                rest = &rest[n..];
            }
        }

        #[test]
        fn records_round_trip_and_torn_records_are_rejected(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            ts in any::<i64>(), seen in any::<u32>(), ts2 in any::<i64>(), seen2 in any::<u32>(),
            skip in any::<[u64; 2]>(), cut in 0usize..400,
        ) {
            let clean = Cursor { marks: [Mark { ts, seen }, Mark { ts: ts2, seen: seen2 }] };
            let resume = Resume { clean, skip, legacy_skip: 0 };
            let r = Record { stream: Stream::Stderr, flags: FLAG_FINAL, resume, payload };
            let bytes = r.encode();
            let (back, used) = Record::decode(&bytes).unwrap_or_else(|| panic!("decodes"));
            prop_assert_eq!(&back, &r);
            prop_assert_eq!(used, bytes.len());
            if cut < bytes.len() {
                prop_assert!(Record::decode(&bytes[..cut]).is_none());
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let r = Record {
            stream: Stream::Stdout,
            flags: 0,
            resume: Resume::default(),
            payload: b"hello".to_vec(),
        };
        let mut bytes = r.encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(Record::decode(&bytes).is_none());
    }

    #[test]
    fn binary_chunks_are_cut_at_the_limit() {
        let data = vec![0xffu8; 100];
        assert_eq!(cut_point(&data, 64), 64);
        let mut text = "a".repeat(63).into_bytes();
        text.extend("é".as_bytes());
        assert_eq!(cut_point(&text, 64), 63);
        assert_eq!(cut_point(b"short", 64), 5);
    }

    #[test]
    fn cursor_consumption_handles_shared_timestamps_per_stream() {
        let c = Cursor::default().advance(0, 5).advance(0, 5);
        assert_eq!(c.marks[0], Mark { ts: 5, seen: 2 });
        assert!(c.consumed(0, 5, 0) && c.consumed(0, 5, 1) && !c.consumed(0, 5, 2));
        assert!(c.consumed(0, 4, 9) && !c.consumed(0, 6, 0));
        assert_eq!(c.advance(0, 7).marks[0], Mark { ts: 7, seen: 1 });
        // The other stream is untouched: its entries, even stamped earlier, are unread.
        assert!(!c.consumed(1, 4, 0) && !c.consumed(1, 5, 0));
        assert_eq!(c.marks[1], Mark::default());
    }

    #[test]
    fn since_reaches_back_from_the_earliest_mark_by_the_margin() {
        assert_eq!(Cursor::default().since_secs(), 0);
        let at = |s: i64| s * 1_000_000_000 + 500;
        let c = Cursor::default().advance(0, at(1000)).advance(1, at(990));
        assert_eq!(c.since_secs(), 990 - INVERSION_MARGIN_NS / 1_000_000_000);
        // A stream that printed nothing does not pull the start back to the beginning.
        let only_out = Cursor::default().advance(0, at(1000));
        assert_eq!(
            only_out.since_secs(),
            1000 - INVERSION_MARGIN_NS / 1_000_000_000
        );
        assert_eq!(Cursor::default().advance(0, at(1)).since_secs(), 0);
    }

    #[test]
    fn version_2_records_decode_with_their_shared_skip_count() {
        let mut v = vec![MAGIC_V2, Stream::Stderr.code(), 0];
        v.extend_from_slice(&2u32.to_le_bytes());
        for (ts, seen) in [(77i64, 3u32), (80, 1)] {
            v.extend_from_slice(&ts.to_le_bytes());
            v.extend_from_slice(&seen.to_le_bytes());
        }
        v.extend_from_slice(&11u64.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&v);
        h.update(b"hi");
        v.extend_from_slice(&h.finalize().to_le_bytes());
        v.extend_from_slice(b"hi");
        let (r, used) = Record::decode(&v).unwrap_or_else(|| panic!("v2 decodes"));
        assert_eq!(
            (
                r.payload.as_slice(),
                used,
                r.resume.legacy_skip,
                r.resume.skip
            ),
            (&b"hi"[..], v.len(), 11, [0, 0])
        );
        assert_eq!(r.resume.clean.marks[1], Mark { ts: 80, seen: 1 });
    }

    #[test]
    fn version_1_records_still_decode_as_whole_timestamps_consumed() {
        let mut v = vec![MAGIC_V1, Stream::Stdout.code(), 0];
        v.extend_from_slice(&2u32.to_le_bytes());
        v.extend_from_slice(&77i64.to_le_bytes());
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&9u64.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&v);
        h.update(b"hi");
        v.extend_from_slice(&h.finalize().to_le_bytes());
        v.extend_from_slice(b"hi");
        let (r, used) = Record::decode(&v).unwrap_or_else(|| panic!("v1 decodes"));
        assert_eq!(
            (
                r.payload.as_slice(),
                used,
                r.resume.legacy_skip,
                r.resume.skip
            ),
            (&b"hi"[..], v.len(), 9, [0, 0])
        );
        assert!(r.resume.clean.consumed(1, 77, 1_000) && !r.resume.clean.consumed(1, 78, 0));
    }

    #[test]
    fn timestamps_are_split_from_payloads() {
        let (ts, payload) =
            split_timestamp(b"2026-11-24T03:30:00.000000001Z hello world\n").unwrap_or((0, b""));
        assert_eq!(payload, b"hello world\n");
        assert_eq!(ts % 1_000_000_000, 1);
        assert!(split_timestamp(b"garbage").is_none());
    }

    #[test]
    fn every_gap_line_reads_back_as_the_loss_it_announces() {
        let disk = GapCause::Disk("writing the transcript failed (no space)".into());
        let unread = GapCause::Unread {
            why: "output capture did not finish within 1m 20s of the container's exit".into(),
            write_failure: Some("No space left on device (os error 28)".into()),
            counted: Ok(()),
        };
        let slow = GapCause::Unread {
            why: "output capture did not finish within 1m 20s of the container's exit".into(),
            write_failure: None,
            counted: Ok(()),
        };
        let short = GapCause::Unread {
            why: "output capture ended early (engine gone)".into(),
            write_failure: None,
            counted: Err("the container is gone".into()),
        };
        let causes = [
            (1234u64, &disk),
            (13_200_000, &unread),
            (5, &slow),
            (0, &short),
            (7, &short),
        ];
        for (n, cause) in causes {
            let mut want = Loss::default();
            want.add(n, cause);
            let line = gap_line(n, cause);
            assert_eq!(
                Loss::of_line(&line),
                Some(want),
                "{}",
                String::from_utf8_lossy(&line)
            );
            assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        }
        let text = String::from_utf8_lossy(&gap_line(13_200_000, &unread)).into_owned();
        assert_eq!(
            text,
            "[berth] 13200000 bytes of output were lost here: output capture did not finish within 1m 20s of the container's exit; the rest of the engine's log was counted instead of stored while writing the transcript failed (No space left on device (os error 28)); free space under state_dir (or raise transcript.full_disk_patience)\n"
        );
        let text = String::from_utf8_lossy(&gap_line(7, &short)).into_owned();
        assert!(
            text.starts_with("[berth] at least 7 bytes of output were lost here: "),
            "{text}"
        );
        assert!(text.contains("the container is gone"), "{text}");
        // Other system lines are no gaps.
        assert_eq!(
            Loss::of_line(b"[berth] container exited with status 0\n"),
            None
        );
    }

    #[test]
    fn the_result_note_gives_the_amount_and_every_cause() {
        let mut loss = Loss::default();
        assert_eq!(loss.note(), None);
        loss.add(100, &GapCause::Disk("full".into()));
        assert_eq!(
            loss.note().as_deref(),
            Some(
                "100 bytes of the transcript were lost: no space under state_dir; each gap is marked in the transcript"
            )
        );
        let mut both = loss;
        both.add(
            20,
            &GapCause::Unread {
                why: "late".into(),
                write_failure: None,
                counted: Ok(()),
            },
        );
        let note = both.note().unwrap_or_default();
        assert!(
            note.starts_with("120 bytes")
                && note.contains("state_dir")
                && note.contains("engine's log"),
            "{note}"
        );
        let mut short = Loss::default();
        short.add(
            0,
            &GapCause::Unread {
                why: "early".into(),
                write_failure: None,
                counted: Err("gone".into()),
            },
        );
        let note = short.note().unwrap_or_default();
        assert!(note.starts_with("at least 0 bytes"), "{note}");
        assert!(!note.contains("state_dir"), "{note}");
        loss.merge(short);
        assert!(loss.at_least && loss.disk && loss.unread && loss.bytes == 100);
    }
}
