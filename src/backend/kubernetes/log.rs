//! The kubelet's log (`pods/log?timestamps=true`) as berth's log entries.
//!
//! What the kubelet hands out, and what this parser makes of it:
//! * every entry starts with its RFC 3339 timestamp (nanoseconds, trailing zeros trimmed) and
//!   a space: that is the entry's `ts`, the cursor `Replay` resumes from;
//! * stdout and stderr are merged with no marker: every entry is reported as stdout, and
//!   as each stream is stamped apart, a time that runs backwards takes the one before it;
//! * a line longer than the runtime's piece size (16 KiB) is stored as pieces, and the kubelet
//!   prints each piece's timestamp right after the previous piece, with no line break between
//!   (kubernetes#77603): a timestamp found exactly a piece's length into a line's content
//!   starts a new piece (`Replay` joins pieces as it does Docker's);
//! * a last fragment without a newline is an entry of its own at the end of the body.

use bytes::Bytes;

use crate::protocol::Stream;
use crate::runtime::LogEntry;

/// Longest timestamp the kubelet prints, plus its space (`…T15:04:05.999999999+00:00 `).
const MAX_STAMP: usize = 40;

/// An incremental parser: feed it the body as it arrives.
#[derive(Debug)]
pub struct KubeletLog {
    buf: Vec<u8>,
    piece: usize,
    last_ts: i64,
}

/// The timestamp at the start of `b` and its length with the space, if `b` starts with one.
/// `None` when `b` is not a timestamp; `Some(None)` when more bytes are needed to tell.
fn stamp(b: &[u8], eof: bool) -> Option<Option<(i64, usize)>> {
    let Some(sp) = b.iter().take(MAX_STAMP).position(|c| *c == b' ') else {
        // No space yet: undecided while short, else not a timestamp.
        return if b.len() < MAX_STAMP && !eof && looks_like_stamp(b) {
            Some(None)
        } else {
            None
        };
    };
    let text = std::str::from_utf8(&b[..sp]).ok()?;
    if !looks_like_stamp(text.as_bytes()) {
        return None;
    }
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let ns = t.timestamp_nanos_opt()?;
    Some(Some((ns, sp + 1)))
}

/// `YYYY-MM-DDT` so far (cheap pre-check before parsing).
fn looks_like_stamp(b: &[u8]) -> bool {
    let pattern = b"dddd-dd-ddT";
    b.iter().zip(pattern).all(|(c, p)| match p {
        b'd' => c.is_ascii_digit(),
        p => c == p,
    })
}

impl KubeletLog {
    /// A parser for a node whose runtime splits lines at `piece` bytes.
    pub fn new(piece: usize) -> KubeletLog {
        KubeletLog {
            buf: Vec::new(),
            piece,
            last_ts: i64::MIN,
        }
    }

    /// The entries completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<LogEntry> {
        self.buf.extend_from_slice(chunk);
        self.drain(false)
    }

    /// The entries left at the end of the body (a last fragment without a newline).
    pub fn finish(&mut self) -> Vec<LogEntry> {
        self.drain(true)
    }

    fn drain(&mut self, eof: bool) -> Vec<LogEntry> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < self.buf.len() {
            match self.next_entry(at, eof) {
                Some((entry, next)) => {
                    out.extend(entry);
                    at = next;
                }
                None => break,
            }
        }
        self.buf.drain(..at);
        out
    }

    /// The entry starting at `at` and where the next begins; `None` when more bytes are needed.
    fn next_entry(&mut self, at: usize, eof: bool) -> Option<(Option<LogEntry>, usize)> {
        let b = &self.buf[at..];
        let (ts, skip) = match stamp(b, eof) {
            Some(Some(s)) => s,
            Some(None) => return None,
            // Not a timestamp (cannot happen with timestamps=true): the line keeps the
            // previous entry's time rather than being lost.
            None => (self.last_ts.max(0), 0),
        };
        let content = &b[skip..];
        let newline = content.iter().take(self.piece).position(|c| *c == b'\n');
        let end = match newline {
            Some(n) => n + 1,
            None if content.len() < self.piece => {
                if !eof {
                    return None;
                }
                content.len()
            }
            None => match stamp(&content[self.piece..], eof) {
                // A piece: the next piece's timestamp follows it directly.
                Some(Some((next_ts, _))) if next_ts >= ts => self.piece,
                Some(None) => return None,
                // Content continues (a node with a larger piece size): up to the newline.
                _ => match content[self.piece..].iter().position(|c| *c == b'\n') {
                    Some(n) => self.piece + n + 1,
                    None if eof => content.len(),
                    None => return None,
                },
            },
        };
        // stdout and stderr are stamped apart and merged in write order, so a time can run
        // backwards; entries take the running maximum, which makes a read's times
        // non-decreasing (the cursor's premise) and is the same in any read that includes the
        // entry (what a re-read skips, by the kubelet's sinceTime, is older than it).
        let ts = ts.max(self.last_ts);
        self.last_ts = ts;
        let entry = (end > 0).then(|| LogEntry {
            stream: Stream::Stdout,
            ts,
            bytes: Bytes::copy_from_slice(&content[..end]),
        });
        Some((entry, at + skip + end))
    }
}

/// The `sinceTime` for a read from whole second `secs`, already floored (kube would round a
/// fraction half up and skip entries).
pub fn since_time(secs: i64) -> Option<k8s_openapi::jiff::Timestamp> {
    k8s_openapi::jiff::Timestamp::from_second(secs.max(0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-12-06T20:01:02.1234Z";
    const T2: &str = "2026-12-06T20:01:02.5Z";
    const T3: &str = "2026-12-06T20:01:03Z";

    fn ns(t: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or_default()
    }

    fn all(p: &mut KubeletLog, body: &[u8], chunk: usize) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            out.extend(p.push(c));
        }
        out.extend(p.finish());
        out.into_iter().map(|e| (e.ts, e.bytes.to_vec())).collect()
    }

    #[test]
    fn lines_with_trimmed_timestamps_become_entries_in_any_chunking() {
        let body = format!("{T1} one\n{T2} two\n{T3} three\n");
        for chunk in [1, 3, 7, 64, 4096] {
            let got = all(&mut KubeletLog::new(16 << 10), body.as_bytes(), chunk);
            assert_eq!(
                got,
                vec![
                    (ns(T1), b"one\n".to_vec()),
                    (ns(T2), b"two\n".to_vec()),
                    (ns(T3), b"three\n".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_last_fragment_without_newline_comes_at_the_end_only() {
        let mut p = KubeletLog::new(16 << 10);
        let got = p.push(format!("{T1} done\n{T2} no newline").as_bytes());
        assert_eq!(got.len(), 1, "the fragment may still grow");
        let rest = p.finish();
        assert_eq!(rest.len(), 1);
        assert_eq!(&rest[0].bytes[..], b"no newline");
    }

    #[test]
    fn spliced_piece_timestamps_split_a_long_line_into_pieces() {
        let piece = 16;
        let line = "abcdefghijklmnopqrstuvwxyz0123456789"; // 36 bytes: 16 + 16 + 4
        let body = format!(
            "{T1} {}{T2} {}{T3} {}\n",
            &line[..16],
            &line[16..32],
            &line[32..]
        );
        for chunk in [1, 5, 1000] {
            let got = all(&mut KubeletLog::new(piece), body.as_bytes(), chunk);
            assert_eq!(
                got,
                vec![
                    (ns(T1), line.as_bytes()[..16].to_vec()),
                    (ns(T2), line.as_bytes()[16..32].to_vec()),
                    (ns(T3), format!("{}\n", &line[32..]).into_bytes()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn content_that_is_not_a_timestamp_at_the_piece_boundary_stays_in_the_line() {
        // A node with a larger piece size: nothing is spliced at 16 bytes.
        let line = "abcdefghijklmnop and the rest of a long line";
        let body = format!("{T1} {line}\n");
        let got = all(&mut KubeletLog::new(16), body.as_bytes(), 3);
        assert_eq!(got, vec![(ns(T1), format!("{line}\n").into_bytes())]);
        // A "timestamp" earlier than the line's own is content, not a piece boundary.
        let body = format!("{T3} abcdefghijklmnop{T1} x\n");
        let got = all(&mut KubeletLog::new(16), body.as_bytes(), 1000);
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn empty_lines_and_binary_content_survive() {
        let mut body = format!("{T1} \n{T2} ").into_bytes();
        body.extend_from_slice(&[0, 255, 10]);
        let got = all(&mut KubeletLog::new(16 << 10), &body, 2);
        assert_eq!(
            got,
            vec![(ns(T1), b"\n".to_vec()), (ns(T2), vec![0, 255, 10])]
        );
    }

    #[test]
    fn times_never_run_backwards_within_a_read() {
        // stderr stamped a moment before the stdout line written ahead of it.
        let body = format!("{T2} out\n{T1} err\n{T3} next\n");
        let got = all(&mut KubeletLog::new(16 << 10), body.as_bytes(), 5);
        let times: Vec<i64> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [ns(T2), ns(T2), ns(T3)]);
    }

    #[test]
    fn since_is_whole_seconds() {
        let t = since_time(1_700_000_000).map(|t| t.to_string());
        assert_eq!(t.as_deref(), Some("2023-11-14T22:13:20Z"));
    }
}
