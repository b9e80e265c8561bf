//! Output cut into lines (PROTOCOL §8.3): at `\n`, across arbitrary read boundaries; a line
//! longer than 64 KiB is dropped whole (never cut, so no part of a credential survives a cut);
//! a final unterminated line is flushed when the stream ends; at most 128 streams per
//! execution.

use std::collections::BTreeMap;

/// Longest line exported (without its `\n`); longer ones are dropped whole.
pub const MAX_LINE: usize = 64 << 10;
/// Most output streams exported per execution.
pub const MAX_STREAMS: usize = 128;

/// One complete line: its bytes without the `\n`, and the spool offset where it starts.
/// (Unredacted output: no `Debug` that would print it.)
#[derive(Clone, PartialEq, Eq)]
pub struct Line {
    pub text: Vec<u8>,
    pub at: u64,
}

/// The line splitter of one stream.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Where the line in `buf` starts (spool offset), while one is pending.
    start: Option<u64>,
    /// Why the pending line's bytes are skipped to its end, if they are.
    skip: Option<Skip>,
    /// Lines dropped for their length.
    dropped: u64,
    /// Lines dropped because a hole in the output cut them.
    cut: u64,
}

/// Why a pending line is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// It passed [`MAX_LINE`].
    TooLong,
    /// A hole in the output cut it ([`Lines::discard`]).
    Cut,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Line({} bytes at {})", self.text.len(), self.at)
    }
}

impl Lines {
    /// Feeds `bytes`, which start at spool offset `at`; complete lines go to `out`.
    pub fn feed(&mut self, at: u64, bytes: &[u8], out: &mut Vec<Line>) {
        self.feed_upto(at, bytes, usize::MAX, out);
    }

    /// As [`Lines::feed`], but stops after `max_lines` complete lines; returns how many bytes
    /// of `bytes` it consumed (the rest is to be fed again later).
    pub fn feed_upto(
        &mut self,
        at: u64,
        bytes: &[u8],
        max_lines: usize,
        out: &mut Vec<Line>,
    ) -> usize {
        let mut from = 0;
        let mut lines = 0;
        while lines < max_lines {
            let Some(nl) = bytes[from..].iter().position(|b| *b == b'\n') else {
                if from < bytes.len() {
                    self.take(at + from as u64, &bytes[from..]);
                }
                return bytes.len();
            };
            self.take(at + from as u64, &bytes[from..from + nl]);
            if let Some(line) = self.end_line() {
                out.push(line);
                lines += 1;
            }
            from += nl + 1;
        }
        from
    }

    /// The stream ended: its unterminated last line, if any (and not too long).
    pub fn finish(&mut self) -> Option<Line> {
        self.start?;
        self.end_line()
    }

    /// Where the pending (incomplete) line starts, if one is pending.
    pub fn pending_start(&self) -> Option<u64> {
        self.start
    }

    /// Lines dropped so far for being longer than [`MAX_LINE`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Lines dropped so far because a hole in the output cut them.
    pub fn cut(&self) -> u64 {
        self.cut
    }

    /// The output has a hole at spool offset `at` (elided, or lost to a full disk): the
    /// pending line and everything up to the next `\n` are dropped, since the two sides of
    /// a hole would join into a line holding parts of a secret no redaction can recognise.
    pub fn discard(&mut self, at: u64) {
        self.buf = Vec::new();
        self.start.get_or_insert(at);
        self.skip = Some(Skip::Cut);
    }

    fn take(&mut self, at: u64, part: &[u8]) {
        self.start.get_or_insert(at);
        if self.skip.is_some() {
            return;
        }
        if self.buf.len() + part.len() > MAX_LINE {
            self.skip = Some(Skip::TooLong);
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(part);
    }

    fn end_line(&mut self) -> Option<Line> {
        let at = self.start.take()?;
        let text = std::mem::take(&mut self.buf);
        match self.skip.take() {
            Some(Skip::TooLong) => self.dropped += 1,
            Some(Skip::Cut) => self.cut += 1,
            None => return Some(Line { text, at }),
        }
        None
    }
}

/// The splitters of an execution's streams, at most [`MAX_STREAMS`] of them.
pub struct Streams<K> {
    map: BTreeMap<K, Lines>,
}

impl<K> Default for Streams<K> {
    fn default() -> Self {
        Streams {
            map: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> Streams<K> {
    /// The splitter of `key`; `None` when it would be a stream past the cap.
    pub fn get(&mut self, key: K) -> Option<&mut Lines> {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_STREAMS {
            return None;
        }
        Some(self.map.entry(key).or_default())
    }

    /// Every stream's unterminated last line, with its stream.
    pub fn finish(&mut self) -> Vec<(K, Line)> {
        self.map
            .iter_mut()
            .filter_map(|(k, l)| l.finish().map(|line| (*k, line)))
            .collect()
    }

    /// The earliest spool offset a pending line starts at.
    pub fn earliest_pending(&self) -> Option<u64> {
        self.map.values().filter_map(Lines::pending_start).min()
    }

    /// A hole in the output at `at` (announced on the `except` stream): every other stream's
    /// pending line is dropped up to its next `\n` ([`Lines::discard`]).
    pub fn discard_except(&mut self, except: K, at: u64) {
        for (_, l) in self.map.iter_mut().filter(|(k, _)| **k != except) {
            l.discard(at);
        }
    }

    /// Lines dropped for their length, over all streams.
    pub fn dropped(&self) -> u64 {
        self.map.values().map(Lines::dropped).sum()
    }

    /// Lines cut by holes in the output, over all streams.
    pub fn cut(&self) -> u64 {
        self.map.values().map(Lines::cut).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as text, and where it starts.
    type At = (String, u64);

    fn split(pieces: &[&[u8]]) -> (Vec<At>, Option<At>) {
        let mut l = Lines::default();
        let mut out = Vec::new();
        let mut at = 0;
        for p in pieces {
            l.feed(at, p, &mut out);
            at += p.len() as u64;
        }
        let text = |x: Line| (String::from_utf8_lossy(&x.text).into_owned(), x.at);
        (out.into_iter().map(text).collect(), l.finish().map(text))
    }

    #[test]
    fn lines_are_cut_at_newlines_across_reads() {
        let (lines, last) = split(&[b"ab", b"c\nde", b"f\n\ng", b"h"]);
        assert_eq!(
            lines,
            vec![("abc".into(), 0), ("def".into(), 4), ("".into(), 8)]
        );
        assert_eq!(last, Some(("gh".into(), 9)));
    }

    #[test]
    fn a_final_unterminated_line_is_flushed_once() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.feed(10, b"tail", &mut out);
        assert!(out.is_empty());
        assert_eq!(l.pending_start(), Some(10));
        assert_eq!(
            l.finish(),
            Some(Line {
                text: b"tail".to_vec(),
                at: 10
            })
        );
        assert_eq!(l.finish(), None);
        assert_eq!(l.pending_start(), None);
    }

    #[test]
    fn a_hole_drops_both_sides_of_the_line_it_cuts() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.feed(0, b"ok\nTOKEN=s3c", &mut out);
        l.discard(13);
        l.feed(20, b"et!\nnext\n", &mut out);
        let texts: Vec<&[u8]> = out.iter().map(|x| x.text.as_slice()).collect();
        assert_eq!(texts, [&b"ok"[..], &b"next"[..]]);
        assert_eq!(
            (l.cut(), l.dropped()),
            (1, 0),
            "counted as cut, not as too long"
        );
        // At a line start too: what follows a hole may begin mid-line.
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.feed(0, b"a\n", &mut out);
        l.discard(2);
        assert!(
            l.pending_start().is_some(),
            "no safe resume point inside the cut line"
        );
        l.feed(9, b"et!\nb\n", &mut out);
        let texts: Vec<&[u8]> = out.iter().map(|x| x.text.as_slice()).collect();
        assert_eq!(texts, [&b"a"[..], &b"b"[..]]);
        // A hole with nothing after it exports nothing more.
        l.discard(20);
        assert_eq!(l.finish(), None);
    }

    #[test]
    fn nothing_pending_flushes_nothing() {
        assert_eq!(split(&[b"a\n"]).1, None);
        assert_eq!(split(&[]).1, None);
    }

    #[test]
    fn a_line_over_64_kib_is_dropped_whole_even_across_reads() {
        let big = vec![b'x'; MAX_LINE / 2 + 1];
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.feed(0, b"before\n", &mut out);
        l.feed(7, &big, &mut out);
        l.feed(7 + big.len() as u64, &big, &mut out);
        l.feed(0, b"still the long one\nafter\n", &mut out);
        let texts: Vec<&[u8]> = out.iter().map(|l| l.text.as_slice()).collect();
        assert_eq!(texts, vec![&b"before"[..], &b"after"[..]]);
        assert_eq!(l.dropped(), 1);
    }

    #[test]
    fn exactly_64_kib_is_kept_and_one_byte_more_is_not() {
        for (len, kept) in [(MAX_LINE, true), (MAX_LINE + 1, false)] {
            let mut text = vec![b'y'; len];
            text.push(b'\n');
            let (lines, _) = split(&[&text]);
            assert_eq!(lines.len() == 1, kept, "{len}");
        }
    }

    #[test]
    fn an_unterminated_long_line_is_dropped_at_the_end_too() {
        let big = vec![b'z'; MAX_LINE + 10];
        let (lines, last) = split(&[&big]);
        assert!(lines.is_empty());
        assert_eq!(last, None);
    }

    #[test]
    fn feeding_can_stop_after_some_lines_and_resume() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        let input = b"a\nb\nc\nd";
        let used = l.feed_upto(100, input, 2, &mut out);
        assert_eq!(used, 4);
        assert_eq!(out.len(), 2);
        let used2 = l.feed_upto(100 + used as u64, &input[used..], 2, &mut out);
        assert_eq!(used + used2, input.len());
        let ats: Vec<u64> = out.iter().map(|l| l.at).collect();
        assert_eq!(ats, vec![100, 102, 104]);
        assert_eq!(
            l.finish().map(|l| (l.text, l.at)),
            Some((b"d".to_vec(), 106))
        );
        // A limit of zero consumes nothing.
        assert_eq!(Lines::default().feed_upto(0, b"x\n", 0, &mut out), 0);
    }

    #[test]
    fn at_most_128_streams() {
        let mut s: Streams<usize> = Streams::default();
        for k in 0..MAX_STREAMS {
            assert!(s.get(k).is_some());
        }
        assert!(s.get(MAX_STREAMS).is_none(), "the 129th stream");
        assert!(s.get(0).is_some(), "a known stream still works");
    }

    #[test]
    fn streams_flush_their_own_last_lines_and_report_the_earliest_pending_start() {
        let mut s: Streams<u8> = Streams::default();
        let mut out = Vec::new();
        s.get(1).unwrap().feed(5, b"one", &mut out);
        s.get(2).unwrap().feed(8, b"two\nthr", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.earliest_pending(), Some(5));
        let last = s.finish();
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].1.text, b"thr");
        assert_eq!(last[1].1.at, 12);
        assert_eq!(s.earliest_pending(), None);
    }
}
