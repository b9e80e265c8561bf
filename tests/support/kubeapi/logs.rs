//! A container's log as the CRI runtime writes it and the kubelet serves it (`pods/log`).
//!
//! The runtime reads each stream line by line: a line becomes one full entry once its newline
//! arrives; a line longer than the node's piece size becomes partial entries of that size; an
//! unfinished line waits for its newline (or the piece size). When the container ends, what is
//! left of an unfinished line is written as a last fragment. Every entry is stamped when it is
//! written (ns, strictly increasing on the node). When the current file grows past the rotation
//! size it is rotated, and only entries of the current file are served.
//!
//! The kubelet serves the entries of the current file, stdout and stderr merged with no marker,
//! each with its `RFC3339NanoFixed` timestamp (or Go's trimmed `RFC3339Nano` when the node says
//! so) and a space when asked; partial entries without newline, each with its own timestamp.

use chrono::{DateTime, SecondsFormat, Utc};

/// stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub ts_ns: i64,
    pub stream: LogStream,
    /// A piece of a longer line (no newline of its own).
    pub partial: bool,
    /// The last, unfinished line of a stream, written when the container ended: plain reads
    /// return it, follow streams never do (see the module's simplifications).
    pub fragment: bool,
    pub bytes: Vec<u8>,
}

impl Entry {
    /// The bytes the kubelet writes for this entry.
    pub fn render(&self, timestamps: bool, trimmed: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 32);
        if timestamps {
            out.extend_from_slice(format_ts(self.ts_ns, trimmed).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.bytes);
        if !self.partial && !self.fragment {
            out.push(b'\n');
        }
        out
    }

    /// Size of this entry's line in the CRI log file (`TS STREAM TAG CONTENT\n`).
    fn file_len(&self) -> usize {
        format_ts(self.ts_ns, true).len() + 1 + 6 + 1 + 1 + 1 + self.bytes.len() + 1
    }
}

/// An RFC 3339 timestamp with nanoseconds: fixed 9 digits (the kubelet's `RFC3339NanoFixed`),
/// or with trailing zeros trimmed (Go's `RFC3339Nano`; no fraction at all when it is zero).
pub fn format_ts(ns: i64, trimmed: bool) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp_nanos(ns);
    if !trimmed {
        return t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    }
    let secs = t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let frac = ns.rem_euclid(1_000_000_000);
    if frac == 0 {
        return secs;
    }
    let digits = format!("{frac:09}");
    let digits = digits.trim_end_matches('0');
    format!("{}.{digits}Z", secs.trim_end_matches('Z'))
}

#[derive(Debug, Default)]
pub struct ContainerLog {
    pub entries: Vec<Entry>,
    /// Index of the first entry of the current file.
    pub file_start: usize,
    file_bytes: usize,
    pub rotations: u64,
    /// Unfinished lines per stream (stdout, stderr), held by the runtime.
    pending: [Vec<u8>; 2],
    /// The container ended: nothing more will be written.
    pub done: bool,
}

fn idx(s: LogStream) -> usize {
    match s {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

impl ContainerLog {
    fn push(&mut self, e: Entry, rotate_at: Option<usize>) {
        self.file_bytes += e.file_len();
        self.entries.push(e);
        if rotate_at.is_some_and(|max| self.file_bytes > max) {
            self.file_start = self.entries.len();
            self.file_bytes = 0;
            self.rotations += 1;
        }
    }

    /// A write by the container; `clock` gives each new entry its stamp.
    pub fn write(
        &mut self,
        stream: LogStream,
        bytes: &[u8],
        piece: usize,
        share: bool,
        rotate_at: Option<usize>,
        clock: &mut impl FnMut() -> i64,
    ) {
        let piece = piece.max(1);
        let mut buf = std::mem::take(&mut self.pending[idx(stream)]);
        buf.extend_from_slice(bytes);
        let mut rest: &[u8] = &buf;
        // Docker's json-file log stamps every piece of a line with the line's time.
        let mut line_ts: Option<i64> = None;
        let mut stamp = |line_ts: &mut Option<i64>| match (share, *line_ts) {
            (true, Some(t)) => t,
            (true, None) => *line_ts.insert(clock()),
            (false, _) => clock(),
        };
        loop {
            let nl = rest.iter().position(|b| *b == b'\n');
            match nl {
                Some(n) if n <= piece => {
                    let e = Entry {
                        ts_ns: stamp(&mut line_ts),
                        stream,
                        partial: false,
                        fragment: false,
                        bytes: rest[..n].to_vec(),
                    };
                    self.push(e, rotate_at);
                    rest = &rest[n + 1..];
                    line_ts = None;
                }
                _ if rest.len() > piece => {
                    let e = Entry {
                        ts_ns: stamp(&mut line_ts),
                        stream,
                        partial: true,
                        fragment: false,
                        bytes: rest[..piece].to_vec(),
                    };
                    self.push(e, rotate_at);
                    rest = &rest[piece..];
                }
                _ => break,
            }
        }
        self.pending[idx(stream)] = rest.to_vec();
    }

    /// The container ended: unfinished lines are written as fragments.
    pub fn close(&mut self, rotate_at: Option<usize>, clock: &mut impl FnMut() -> i64) {
        for s in [LogStream::Stdout, LogStream::Stderr] {
            let rest = std::mem::take(&mut self.pending[idx(s)]);
            if !rest.is_empty() {
                let e = Entry {
                    ts_ns: clock(),
                    stream: s,
                    partial: false,
                    fragment: true,
                    bytes: rest,
                };
                self.push(e, rotate_at);
            }
        }
        self.done = true;
    }

    /// Every byte the container wrote to one stream that reached the log (all files).
    pub fn text(&self, stream: Option<LogStream>) -> Vec<u8> {
        self.entries
            .iter()
            .filter(|e| stream.is_none_or(|s| s == e.stream))
            .flat_map(|e| e.render(false, true))
            .collect()
    }
}

/// What a `pods/log` request asks for.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub timestamps: bool,
    /// Entries stamped before this (ns) are skipped.
    pub since_ns: Option<i64>,
    pub tail: Option<i64>,
    pub limit_bytes: Option<i64>,
    /// Only this stream (split streams).
    pub stream: Option<LogStream>,
    pub trimmed: bool,
}

impl LogOptions {
    pub fn wants(&self, e: &Entry) -> bool {
        self.stream.is_none_or(|s| s == e.stream) && self.since_ns.is_none_or(|s| e.ts_ns >= s)
    }

    /// Where a read starts in the log: the current file, less all but the last `tail` entries.
    pub fn start(&self, log: &ContainerLog) -> usize {
        let first = log.file_start;
        match self.tail {
            Some(n) if n >= 0 => {
                // The kubelet counts lines of the file (entries), whatever their stream.
                let n = n as usize;
                log.entries.len().saturating_sub(n).max(first)
            }
            _ => first,
        }
    }
}

/// A plain (non-follow) read: the current file's entries as the kubelet writes them.
pub fn read(log: &ContainerLog, opts: &LogOptions) -> Vec<u8> {
    let mut out = Vec::new();
    for e in &log.entries[opts.start(log)..] {
        if opts.wants(e) {
            out.extend(e.render(opts.timestamps, opts.trimmed));
        }
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit.max(0) as usize);
    }
    out
}
