//! The on-disk transcript of one execution: every byte is written here before it is sent.
//!
//! `<dir>/<execution_id>.spool` holds CRC-framed records (see [`crate::transcript::Record`]);
//! offsets are the running sum of payload lengths. Once `max_bytes` is reached, further output
//! goes to `<execution_id>.tail`, a ring bounded to about twice `tail_bytes` (compacted by
//! write + rename); when the task ends the elision line and the kept tail are appended to the
//! spool. A torn record at the end of either file (crash mid-write) is cut off on open.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::error;

use crate::protocol::Stream;
use crate::transcript::{
    FLAG_FINAL, FLAG_GAP, FLAG_TAIL, GapCause, HEADER_LEN, Loss, Record, Resume, cut_point,
    elision_line, gap_line,
};

/// A spool failure, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Disk trouble (full, permissions, …).
    #[error("transcript spool {path}: {source} (check free space and permissions under state_dir)")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl SpoolError {
    /// What failed, without the path (for lines in the transcript).
    fn cause(&self) -> String {
        match self {
            SpoolError::Io { source, .. } => source.to_string(),
        }
    }
}

/// A whole transcript read from disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Stream and bytes of each record, in order.
    pub pieces: Vec<(Stream, Vec<u8>)>,
    /// The final marker was written.
    pub finished: bool,
}

impl Transcript {
    /// The pieces from byte `from` on, at most about `max` bytes (whole pieces, the first one
    /// cut at `from`), and the offset after them.
    pub fn since(&self, from: u64, max: usize) -> (Vec<(Stream, &[u8])>, u64) {
        let mut out = Vec::new();
        let mut seen = 0u64;
        let mut next = from;
        let mut taken = 0usize;
        for (stream, bytes) in &self.pieces {
            let end = seen + bytes.len() as u64;
            if end > from && taken < max {
                let skip = from.saturating_sub(seen) as usize;
                let room = max - taken;
                let part = &bytes[skip..bytes.len().min(skip.saturating_add(room))];
                taken += part.len();
                next = seen + (skip + part.len()) as u64;
                out.push((*stream, part));
            }
            seen = end;
        }
        (out, next.max(from))
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// No bytes yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What readers can see of a spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolState {
    /// Transcript length.
    pub len: u64,
    /// No more bytes will be appended.
    pub finished: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    pos: u64,
    len: u32,
    stream: Stream,
}

/// One execution's spool.
pub struct Spool {
    path: PathBuf,
    tail_path: PathBuf,
    elided_path: PathBuf,
    file: File,
    end_pos: u64,
    index: Vec<Entry>,
    len: u64,
    last_resume: Resume,
    finished: bool,
    max_bytes: u64,
    tail_bytes: u64,
    tail: Option<(File, u64)>,
    tail_live: u64,
    dropped: u64,
    /// Output lost and not yet announced, in order: bytes, the resume point after them, and
    /// why.
    gaps: Vec<(u64, Resume, GapCause)>,
    /// All output lost so far (announced or not).
    loss: Loss,
    /// Since when writes fail (a streak of failures; `None` after a success).
    failing_since: Option<std::time::Instant>,
    /// The last write error of that streak.
    failure: Option<String>,
    full_disk_patience: Duration,
    state: watch::Sender<SpoolState>,
    /// Reused for every record written: header and payload go out in one write, with no
    /// allocation per record.
    scratch: Vec<u8>,
}

/// Where spools live under `state_dir`.
pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("transcripts")
}

/// Default of `transcript.full_disk_patience`.
pub const DEFAULT_FULL_DISK_PATIENCE: Duration = Duration::from_secs(300);

/// Name of the reserve file under the spool directory (see [`Spool::ensure_reserve`]).
const RESERVE: &str = ".reserve";
/// Room kept back for the lines that announce a loss and the transcript's final marker.
const RESERVE_BYTES: usize = 256 << 10;

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every valid record of a file; returns them with the file positions of their payloads
/// and the length of the valid prefix.
fn scan(path: &Path) -> Result<(Vec<(u64, Record)>, u64), SpoolError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(path)(e)),
    };
    let mut pos = 0usize;
    let mut out = Vec::new();
    while let Some((r, used)) = Record::decode(&bytes[pos..]) {
        out.push(((pos + used - r.payload.len()) as u64, r));
        pos += used;
    }
    Ok((out, pos as u64))
}

/// The file name (without extension) of an execution's spool files: the id itself when it is a
/// safe name (what the protocol lets through, and what older versions wrote), otherwise a
/// SHA-256 of it, so no id can name a path outside the spool directory.
fn file_stem(execution_id: &str) -> String {
    if crate::protocol::check_id("execution_id", execution_id).is_ok() {
        return execution_id.to_string();
    }
    let d = ring::digest::digest(&ring::digest::SHA256, execution_id.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("id-{hex}")
}

impl Spool {
    /// Spool file of an execution under `dir`.
    pub fn path_for(dir: &Path, execution_id: &str) -> PathBuf {
        dir.join(format!("{}.spool", file_stem(execution_id)))
    }

    /// Opens (creating if needed) the spool of `execution_id` under `dir`, cutting off a torn
    /// record at the end.
    pub fn open(
        dir: &Path,
        execution_id: &str,
        max_bytes: u64,
        tail_bytes: u64,
    ) -> Result<Self, SpoolError> {
        crate::private::create_dir(dir).map_err(io(dir))?;
        let path = Self::path_for(dir, execution_id);
        let stem = file_stem(execution_id);
        let tail_path = dir.join(format!("{stem}.tail"));
        let elided_path = dir.join(format!("{stem}.elided"));
        let (records, valid) = scan(&path)?;
        let file = crate::private::open_rw(&path, true).map_err(io(&path))?;
        file.set_len(valid).map_err(io(&path))?;
        let mut index = Vec::with_capacity(records.len());
        let mut len = 0u64;
        let mut last_resume = Resume::default();
        let mut finished = false;
        let mut loss = Loss::default();
        for (pos, r) in &records {
            if r.flags & FLAG_GAP != 0
                && let Some(l) = Loss::of_line(&r.payload)
            {
                loss.merge(l);
            }
            if !r.payload.is_empty() {
                index.push(Entry {
                    offset: len,
                    pos: *pos,
                    len: r.payload.len() as u32,
                    stream: r.stream,
                });
            }
            len += r.payload.len() as u64;
            last_resume = r.resume;
            finished |= r.flags & FLAG_FINAL != 0;
        }
        let mut tail = None;
        let mut tail_live = 0;
        if !finished && tail_path.exists() {
            let (trecs, tvalid) = scan(&tail_path)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&tail_path)
                .map_err(io(&tail_path))?;
            f.set_len(tvalid).map_err(io(&tail_path))?;
            for (_, r) in &trecs {
                tail_live += r.payload.len() as u64;
                last_resume = r.resume;
            }
            tail = Some((f, tvalid));
        }
        let dropped = std::fs::read_to_string(&elided_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let (state, _) = watch::channel(SpoolState { len, finished });
        Ok(Spool {
            path,
            tail_path,
            elided_path,
            file,
            end_pos: valid,
            index,
            len,
            last_resume,
            finished,
            max_bytes,
            tail_bytes,
            tail,
            tail_live,
            dropped,
            gaps: Vec::new(),
            loss,
            failing_since: None,
            failure: None,
            full_disk_patience: DEFAULT_FULL_DISK_PATIENCE,
            state,
            scratch: Vec::new(),
        })
    }

    /// Sets how long writes may fail before output is given up (`transcript.full_disk_patience`).
    pub fn with_full_disk_patience(mut self, patience: Duration) -> Self {
        self.full_disk_patience = patience;
        self
    }

    /// How long writes may fail before output is given up.
    pub fn full_disk_patience(&self) -> Duration {
        self.full_disk_patience
    }

    /// Keeps [`RESERVE_BYTES`] of disk under `dir` for announcing losses when the disk is
    /// full (best effort: on a disk that is already full there is nothing to reserve).
    pub fn ensure_reserve(dir: &Path) {
        let path = dir.join(RESERVE);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize >= RESERVE_BYTES) {
            return;
        }
        if crate::private::create_dir(dir).is_ok()
            && crate::private::write(&path, &vec![0u8; RESERVE_BYTES]).is_err()
        {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Frees the reserve, so the lines announcing a loss fit on a full disk.
    fn release_reserve(&self) -> bool {
        self.path
            .parent()
            .is_some_and(|d| std::fs::remove_file(d.join(RESERVE)).is_ok())
    }

    /// Whether writes have failed for longer than the patience: output is then given up
    /// (and counted) instead of waited for.
    pub fn out_of_patience(&self) -> bool {
        self.failing_since
            .is_some_and(|t| t.elapsed() >= self.full_disk_patience)
    }

    /// Records that `bytes` of output could not be stored (`resume` is the point after them).
    /// The next successful write, or the end of the transcript, announces the gap first.
    pub fn give_up(&mut self, bytes: u64, resume: Resume, cause: &SpoolError) {
        let cause = GapCause::Disk(cause.cause());
        self.loss.add(bytes, &cause);
        // While the disk stays full one gap grows, rather than a line per failed write.
        if let Some((n, r, c @ GapCause::Disk(_))) = self.gaps.last_mut() {
            *n += bytes;
            *r = resume;
            *c = cause;
        } else {
            self.gaps.push((bytes, resume, cause));
        }
    }

    /// Records output that capture never read from the engine's log but counted there:
    /// `bytes` up to `resume`, `counted` saying whether counting reached the log's end (if not,
    /// `bytes` is a lower bound). Announced like [`Spool::give_up`], naming the write error
    /// if writes are failing.
    pub fn count_unread(
        &mut self,
        bytes: u64,
        resume: Resume,
        why: &str,
        counted: Result<(), String>,
    ) {
        if bytes == 0 && counted.is_ok() {
            return;
        }
        let cause = GapCause::Unread {
            why: why.to_string(),
            write_failure: self.failure.clone(),
            counted,
        };
        self.loss.add(bytes, &cause);
        self.gaps.push((bytes, resume, cause));
    }

    /// Output was given up and its gap is not announced yet.
    pub fn gap_pending(&self) -> bool {
        !self.gaps.is_empty()
    }

    /// Bytes of output lost so far (announced in the transcript by gap lines; a lower bound
    /// when [`Spool::loss`] says `at_least`).
    pub fn lost(&self) -> u64 {
        self.loss.bytes
    }

    /// All output lost so far, and why.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    fn note(&mut self, r: Result<(), SpoolError>) -> Result<(), SpoolError> {
        match &r {
            Ok(()) => {
                self.failing_since = None;
                self.failure = None;
            }
            Err(e) => {
                self.failing_since
                    .get_or_insert_with(std::time::Instant::now);
                self.failure = Some(e.cause());
            }
        }
        r
    }

    /// Writes the pending gap lines, if any.
    fn announce_gap(&mut self) -> Result<(), SpoolError> {
        while let Some((n, resume, cause)) = self.gaps.first().cloned() {
            self.write_main(&Record {
                stream: Stream::System,
                flags: FLAG_GAP,
                resume,
                payload: gap_line(n, &cause),
            })?;
            self.gaps.remove(0);
        }
        Ok(())
    }

    /// Watch the length and completion.
    pub fn subscribe(&self) -> watch::Receiver<SpoolState> {
        self.state.subscribe()
    }

    /// Current state.
    pub fn state(&self) -> SpoolState {
        SpoolState {
            len: self.len,
            finished: self.finished,
        }
    }

    /// Resume point after everything accounted for: the last record, or output given up
    /// since (its gap line not written yet), so nothing is read or counted twice.
    pub fn last_resume(&self) -> Resume {
        self.gaps.last().map_or(self.last_resume, |(_, r, _)| *r)
    }

    /// True once the budget was reached and output goes to the tail ring.
    pub fn over_budget(&self) -> bool {
        self.tail.is_some()
    }

    fn write_main(&mut self, r: &Record) -> Result<(), SpoolError> {
        self.write_main_parts(r.stream, r.flags, r.resume, &r.payload)
    }

    fn write_main_parts(
        &mut self,
        stream: Stream,
        flags: u8,
        resume: Resume,
        payload: &[u8],
    ) -> Result<(), SpoolError> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        super::encode_into(stream, flags, &resume, payload, &mut bytes);
        let written = self.file.write_all_at(&bytes, self.end_pos);
        let encoded = bytes.len() as u64;
        // Keep the buffer unless one huge record grew it past what a record usually needs.
        if bytes.capacity() <= 4 * (HEADER_LEN + super::MAX_CHUNK) {
            self.scratch = bytes;
        }
        if let Err(e) = written {
            // Never leave a torn record behind: later appends would be unreadable.
            let _ = self.file.set_len(self.end_pos);
            return Err(io(&self.path)(e));
        }
        if !payload.is_empty() {
            self.index.push(Entry {
                offset: self.len,
                pos: self.end_pos + HEADER_LEN as u64,
                len: payload.len() as u32,
                stream,
            });
        }
        self.end_pos += encoded;
        self.len += payload.len() as u64;
        self.last_resume = resume;
        Ok(())
    }

    fn write_tail(&mut self, r: &Record) -> Result<(), SpoolError> {
        if self.tail.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .mode(crate::private::FILE_MODE)
                .open(&self.tail_path)
                .map_err(io(&self.tail_path))?;
            self.tail = Some((f, 0));
        }
        let bytes = r.encode();
        if let Some((f, end)) = self.tail.as_mut() {
            if let Err(e) = f.write_all_at(&bytes, *end) {
                let _ = f.set_len(*end);
                return Err(io(&self.tail_path)(e));
            }
            *end += bytes.len() as u64;
        }
        self.tail_live += r.payload.len() as u64;
        self.last_resume = r.resume;
        if self.tail_live > self.tail_bytes.saturating_mul(2) {
            self.compact_tail()?;
        }
        Ok(())
    }

    /// Keeps the newest `tail_bytes` of the ring (write + rename, so a crash leaves either the
    /// old or the new ring, never a mix).
    fn compact_tail(&mut self) -> Result<(), SpoolError> {
        let (records, _) = scan(&self.tail_path)?;
        let mut keep = self.trim_front(
            records.into_iter().map(|(_, r)| r).collect(),
            self.tail_bytes,
        );
        let kept: u64 = keep.iter().map(|r| r.payload.len() as u64).sum();
        let tmp = self.tail_path.with_extension("tail.tmp");
        let mut buf = Vec::new();
        for r in keep.iter_mut() {
            buf.extend(r.encode());
        }
        crate::private::write(&tmp, &buf).map_err(io(&tmp))?;
        let dropped = self.dropped + (self.tail_live - kept);
        // The elided count is durable before the bytes it counts disappear.
        let etmp = self.elided_path.with_extension("elided.tmp");
        crate::private::write(&etmp, dropped.to_string().as_bytes()).map_err(io(&etmp))?;
        std::fs::rename(&etmp, &self.elided_path).map_err(io(&self.elided_path))?;
        std::fs::rename(&tmp, &self.tail_path).map_err(io(&self.tail_path))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.tail_path)
            .map_err(io(&self.tail_path))?;
        self.tail = Some((f, buf.len() as u64));
        self.dropped = dropped;
        self.tail_live = kept;
        Ok(())
    }

    /// Drops whole records, then a prefix of the first kept one, so `keep` bytes remain.
    fn trim_front(&self, records: Vec<Record>, keep: u64) -> Vec<Record> {
        let total: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
        let mut excess = total.saturating_sub(keep);
        let mut out = Vec::new();
        for mut r in records {
            let n = r.payload.len() as u64;
            if excess >= n {
                excess -= n;
                continue;
            }
            if excess > 0 {
                r.payload.drain(..excess as usize);
                excess = 0;
            }
            out.push(r);
        }
        out
    }

    /// Appends transcript bytes. Bytes beyond `max_bytes` go to the tail ring.
    pub fn append(
        &mut self,
        stream: Stream,
        payload: &[u8],
        resume: Resume,
    ) -> Result<(), SpoolError> {
        if self.finished {
            return Ok(());
        }
        let mut r = self.append_inner(stream, payload, resume);
        // berth's own lines are small and say what happened: they may use the reserve.
        if r.is_err() && stream == Stream::System && self.release_reserve() {
            r = self.append_inner(stream, payload, resume);
        }
        self.note(r)
    }

    fn append_inner(
        &mut self,
        stream: Stream,
        payload: &[u8],
        resume: Resume,
    ) -> Result<(), SpoolError> {
        // Pending gap lines go in only together with the output after them: while the disk
        // stays full, one gap grows instead of a gap line per failed write.
        let before = (
            self.end_pos,
            self.len,
            self.index.len(),
            self.gaps.clone(),
            self.last_resume,
        );
        let r = self
            .announce_gap()
            .and_then(|()| self.append_output(stream, payload, resume));
        if r.is_err() && self.gaps.len() != before.3.len() {
            let _ = self.file.set_len(before.0);
            self.end_pos = before.0;
            self.len = before.1;
            self.index.truncate(before.2);
            self.gaps = before.3;
            self.last_resume = before.4;
        }
        r
    }

    fn append_output(
        &mut self,
        stream: Stream,
        payload: &[u8],
        resume: Resume,
    ) -> Result<(), SpoolError> {
        let room = self.max_bytes.saturating_sub(self.len) as usize;
        let (live, rest) = if self.tail.is_some() {
            (&payload[..0], payload)
        } else {
            payload.split_at(room.min(payload.len()))
        };
        if !live.is_empty() || (rest.is_empty() && self.tail.is_none()) {
            self.write_main_parts(stream, 0, resume, live)?;
        }
        if !rest.is_empty() {
            self.write_tail(&Record {
                stream,
                flags: FLAG_TAIL,
                resume,
                payload: rest.to_vec(),
            })?;
        }
        if stream == Stream::System {
            self.sync()?;
        }
        self.state.send_replace(self.state());
        Ok(())
    }

    /// Ends the transcript: the elision line and the kept tail (if the budget was reached),
    /// then a final marker. Idempotent.
    pub fn finish(&mut self) -> Result<(), SpoolError> {
        match self.finish_inner() {
            Err(_) if self.release_reserve() => self.finish_inner(),
            r => r,
        }
    }

    fn finish_inner(&mut self) -> Result<(), SpoolError> {
        if self.finished {
            return Ok(());
        }
        self.announce_gap()?;
        if self.tail.is_some() {
            let (records, _) = scan(&self.tail_path)?;
            let records = self.trim_front(
                records.into_iter().map(|(_, r)| r).collect(),
                self.tail_bytes,
            );
            let kept: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
            let elided = self.dropped + self.tail_live - kept;
            let resume = self.last_resume;
            self.write_main(&Record {
                stream: Stream::System,
                flags: 0,
                resume,
                payload: elision_line(elided, self.max_bytes, kept),
            })?;
            for r in records {
                self.write_main(&Record { flags: 0, ..r })?;
            }
        }
        let resume = self.last_resume;
        self.write_main(&Record {
            stream: Stream::System,
            flags: FLAG_FINAL,
            resume,
            payload: Vec::new(),
        })?;
        self.sync()?;
        self.finished = true;
        self.tail = None;
        let _ = std::fs::remove_file(&self.tail_path);
        let _ = std::fs::remove_file(&self.elided_path);
        self.state.send_replace(self.state());
        Ok(())
    }

    /// Forces written records to disk.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Up to `max` bytes of one stream starting at `offset`, cut so text stays valid UTF-8.
    pub fn read_chunk(
        &self,
        offset: u64,
        max: usize,
    ) -> Result<Option<(Stream, Vec<u8>)>, SpoolError> {
        if offset >= self.len {
            return Ok(None);
        }
        let mut i = match self.index.binary_search_by(|e| e.offset.cmp(&offset)) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let stream = self.index[i].stream;
        let mut out = Vec::with_capacity(max + 4);
        let mut at = offset;
        // Read one byte past `max` so the cut can see whether a UTF-8 sequence continues.
        while i < self.index.len() && self.index[i].stream == stream && out.len() <= max {
            let e = self.index[i];
            let skip = at - e.offset;
            let want = ((e.len as u64 - skip) as usize).min(max + 4 - out.len());
            let from = out.len();
            out.resize(from + want, 0);
            self.file
                .read_exact_at(&mut out[from..], e.pos + skip)
                .map_err(io(&self.path))?;
            at += want as u64;
            i += 1;
        }
        let n = cut_point(&out, max);
        out.truncate(n);
        Ok(Some((stream, out)))
    }

    /// Every record's stream and payload in order, and whether the transcript is finished
    /// (for `berth logs`).
    pub fn read_all(path: &Path) -> Result<Transcript, SpoolError> {
        let (records, _) = scan(path)?;
        let finished = records.iter().any(|(_, r)| r.flags & FLAG_FINAL != 0);
        Ok(Transcript {
            pieces: records
                .into_iter()
                .filter(|(_, r)| !r.payload.is_empty())
                .map(|(_, r)| (r.stream, r.payload))
                .collect(),
            finished,
        })
    }

    /// The records of a spool file one at a time, in order, holding one record in memory
    /// (a debug-archive snapshot reads spools of up to `max_bytes` this way). Stops at the
    /// first torn or corrupt record, as opening does.
    pub fn records(path: &Path) -> Result<Records, SpoolError> {
        let file = File::open(path).map_err(io(path))?;
        Ok(Records {
            reader: std::io::BufReader::with_capacity(64 << 10, file),
            buf: Vec::new(),
        })
    }

    /// Removes an execution's files.
    pub fn remove(dir: &Path, execution_id: &str) {
        for ext in ["spool", "tail", "elided", "tail.tmp", "elided.tmp"] {
            let _ = std::fs::remove_file(dir.join(format!("{}.{ext}", file_stem(execution_id))));
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.file.flush();
    }
}

/// The largest record payload a streaming reader accepts (a corrupt length must not make it
/// allocate without bound; records are written a capture chunk at a time).
const MAX_STREAMED_RECORD: usize = 64 << 20;

/// Streaming reader of a spool's records ([`Spool::records`]).
pub struct Records {
    reader: std::io::BufReader<File>,
    buf: Vec<u8>,
}

impl Iterator for Records {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        use std::io::Read;
        let mut magic = [0u8; 1];
        self.reader.read_exact(&mut magic).ok()?;
        let header = Record::header_len(magic[0])?;
        self.buf.clear();
        self.buf.resize(header, 0);
        self.buf[0] = magic[0];
        self.reader.read_exact(&mut self.buf[1..]).ok()?;
        let len = u32::from_le_bytes(self.buf.get(3..7)?.try_into().ok()?) as usize;
        if len > MAX_STREAMED_RECORD {
            return None;
        }
        self.buf.resize(header + len, 0);
        self.reader.read_exact(&mut self.buf[header..]).ok()?;
        Record::decode(&self.buf).map(|(r, _)| r)
    }
}

/// Shared handle on a spool.
pub type SharedSpool = std::sync::Arc<parking_lot::Mutex<Spool>>;

/// Locks a spool.
pub fn lock(spool: &SharedSpool) -> parking_lot::MutexGuard<'_, Spool> {
    spool.lock()
}

/// Appends with retries: a full disk is reported loudly and retried (the engine keeps the
/// output meanwhile, the spool is never left with a torn record) until the spool's
/// `full_disk_patience` runs out; then the bytes are counted as lost, and the spool announces
/// the gap with its size at the next write. Returns whether the bytes were stored.
pub async fn append_retrying(
    spool: &SharedSpool,
    stream: Stream,
    bytes: &[u8],
    resume: Resume,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        let failed = {
            let mut sp = lock(spool);
            match sp.append(stream, bytes, resume) {
                Ok(()) => return true,
                Err(e) if sp.out_of_patience() => {
                    if !sp.gap_pending() {
                        error!(error = %e, "no room for the transcript for transcript.full_disk_patience; output is counted as lost until space is back, and the transcript says where and how much");
                    }
                    sp.give_up(bytes.len() as u64, resume, &e);
                    return false;
                }
                Err(e) => e,
            }
        };
        error!(error = %failed, "cannot write the transcript; the task keeps running and its output is kept by the engine until space is available (up to transcript.full_disk_patience)");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Cursor;

    fn r(ts: i64) -> Resume {
        Resume {
            clean: Cursor::default().advance(0, ts),
            ..Resume::default()
        }
    }

    fn all_bytes(s: &Spool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut off = 0;
        while let Ok(Some((_, b))) = s.read_chunk(off, 7) {
            off += b.len() as u64;
            out.extend(b);
        }
        out
    }

    #[test]
    fn records_stream_in_order_and_stop_at_a_torn_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "e1", 1 << 20, 1 << 10).unwrap();
        s.append(Stream::Stdout, b"one\n", r(1)).unwrap();
        s.append(Stream::Stderr, b"two\n", r(2)).unwrap();
        s.finish().unwrap();
        let path = Spool::path_for(dir.path(), "e1");
        let got: Vec<(Stream, Vec<u8>)> = Spool::records(&path)
            .unwrap()
            .filter(|r| !r.payload.is_empty())
            .map(|r| (r.stream, r.payload))
            .collect();
        assert_eq!(
            got,
            Spool::read_all(&path).unwrap().pieces,
            "the same records as read_all"
        );
        assert_eq!(got.len(), 2);
        // A torn last record (crash mid-write) ends the stream, as it ends a scan.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(Spool::records(&path).unwrap().count(), 2);
        assert!(Spool::records(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn appends_read_back_by_offset_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "e1", 1 << 20, 1 << 10).unwrap();
        s.append(Stream::Stdout, b"hello ", r(1)).unwrap();
        s.append(Stream::Stdout, b"world\n", r(2)).unwrap();
        s.append(Stream::Stderr, b"oops\n", r(3)).unwrap();
        assert_eq!(
            s.state(),
            SpoolState {
                len: 17,
                finished: false
            }
        );
        // A chunk never mixes streams.
        let (st, b) = s
            .read_chunk(0, 64)
            .ok()
            .flatten()
            .unwrap_or((Stream::System, vec![]));
        assert_eq!((st, b.as_slice()), (Stream::Stdout, &b"hello world\n"[..]));
        let (st, b) = s
            .read_chunk(3, 64)
            .ok()
            .flatten()
            .unwrap_or((Stream::System, vec![]));
        assert_eq!((st, b.as_slice()), (Stream::Stdout, &b"lo world\n"[..]));
        let (st, _) = s
            .read_chunk(12, 64)
            .ok()
            .flatten()
            .unwrap_or((Stream::System, vec![]));
        assert_eq!(st, Stream::Stderr);
        drop(s);
        let s = Spool::open(dir.path(), "e1", 1 << 20, 1 << 10).unwrap();
        assert_eq!(s.state().len, 17);
        assert_eq!(s.last_resume(), r(3));
        assert_eq!(all_bytes(&s), b"hello world\noops\n");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "e", 1 << 20, 1 << 10).unwrap();
        s.append(Stream::Stdout, b"kept\n", r(1)).unwrap();
        drop(s);
        let path = Spool::path_for(dir.path(), "e");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let torn = Record {
            stream: Stream::Stdout,
            flags: 0,
            resume: r(2),
            payload: b"lost".to_vec(),
        }
        .encode();
        f.write_all(&torn[..torn.len() - 2]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), "e", 1 << 20, 1 << 10).unwrap();
        assert_eq!((s.state().len, s.last_resume()), (5, r(1)));
        s.append(Stream::Stdout, b"next\n", r(3)).unwrap();
        drop(s);
        let s = Spool::open(dir.path(), "e", 1 << 20, 1 << 10).unwrap();
        assert_eq!(all_bytes(&s), b"kept\nnext\n");
    }

    #[test]
    fn chunks_do_not_split_utf8_and_respect_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "u", 1 << 20, 1 << 10).unwrap();
        let text = "ééééé✓✓✓".repeat(10);
        for piece in text.as_bytes().chunks(5) {
            s.append(Stream::Stdout, piece, r(1)).unwrap();
        }
        let mut off = 0;
        let mut out = Vec::new();
        while let Ok(Some((_, b))) = s.read_chunk(off, 7) {
            assert!(b.len() <= 7 && !b.is_empty());
            assert!(
                std::str::from_utf8(&b).is_ok(),
                "chunk splits a character: {b:?}"
            );
            off += b.len() as u64;
            out.extend(b);
        }
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn over_budget_output_keeps_head_then_elision_line_then_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "b", 100, 30).unwrap();
        let mut all = Vec::new();
        for i in 0..200u32 {
            let line = format!("{i:04}\n");
            all.extend(line.as_bytes());
            s.append(Stream::Stdout, line.as_bytes(), r(i64::from(i)))
                .unwrap();
        }
        assert_eq!(s.state().len, 100, "live bytes stop at max_bytes");
        assert!(s.over_budget());
        drop(s);
        // Survives a restart while over budget.
        let mut s = Spool::open(dir.path(), "b", 100, 30).unwrap();
        s.finish().unwrap();
        let bytes = all_bytes(&s);
        let head = &all[..100];
        let tail = &all[all.len() - 30..];
        let line = elision_line(all.len() as u64 - 130, 100, 30);
        let mut want = head.to_vec();
        want.extend(&line);
        want.extend(tail);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&want)
        );
        assert!(s.state().finished);
        assert!(!dir.path().join("b.tail").exists());
    }

    #[test]
    fn reading_a_transcript_from_an_offset_in_bounded_steps() {
        let t = Transcript {
            pieces: vec![
                (Stream::System, b"[berth] start\n".to_vec()),
                (Stream::Stdout, b"hello\n".to_vec()),
                (Stream::Stderr, b"oops\n".to_vec()),
            ],
            finished: true,
        };
        assert_eq!(t.len(), 25);
        let (all, next) = t.since(0, usize::MAX);
        assert_eq!((all.len(), next), (3, 25));
        let (mid, next) = t.since(17, usize::MAX);
        assert_eq!(
            mid,
            vec![
                (Stream::Stdout, &b"lo\n"[..]),
                (Stream::Stderr, &b"oops\n"[..])
            ]
        );
        assert_eq!(next, 25);
        let (few, next) = t.since(10, 6);
        assert_eq!(
            few,
            vec![
                (Stream::System, &b"art\n"[..]),
                (Stream::Stdout, &b"he"[..])
            ]
        );
        assert_eq!(next, 16);
        let mut collected = Vec::new();
        let mut at = 0;
        loop {
            let (p, n) = t.since(at, 4);
            if p.is_empty() {
                break;
            }
            collected.extend(p.iter().flat_map(|(_, b)| b.iter().copied()));
            at = n;
        }
        assert_eq!(collected, b"[berth] start\nhello\noops\n".to_vec());
        assert_eq!(t.since(25, 10), (vec![], 25));
    }

    #[test]
    fn output_given_up_is_announced_once_with_its_size_before_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "g", 1 << 20, 1 << 10)
            .unwrap()
            .with_full_disk_patience(Duration::ZERO);
        s.append(Stream::Stdout, b"before\n", r(1)).unwrap();
        let full = SpoolError::Io {
            path: dir.path().into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        s.give_up(1000, r(2), &full);
        s.give_up(234, r(3), &full);
        assert!(s.gap_pending());
        s.append(Stream::Stdout, b"after\n", r(4)).unwrap();
        assert!(!s.gap_pending());
        s.finish().unwrap();
        let text = String::from_utf8(all_bytes(&s)).unwrap_or_default();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("before"));
        let gap = lines.next().unwrap_or_default();
        assert!(
            gap.starts_with("[berth] 1234 bytes of output were lost here"),
            "{gap}"
        );
        assert!(gap.contains("No space left on device"), "{gap}");
        assert_eq!(lines.next(), Some("after"));
        assert_eq!(lines.next(), None);
        assert_eq!(s.lost(), 1234);
        // The count survives a reopen (it is read back from the gap line).
        drop(s);
        let s = Spool::open(dir.path(), "g", 1 << 20, 1 << 10).unwrap();
        assert_eq!(s.lost(), 1234);
    }

    #[test]
    fn a_gap_still_pending_at_the_end_is_announced_before_the_final_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "h", 1 << 20, 1 << 10).unwrap();
        let full = SpoolError::Io {
            path: dir.path().into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        s.give_up(77, r(2), &full);
        s.finish().unwrap();
        let text = String::from_utf8(all_bytes(&s)).unwrap_or_default();
        assert!(
            text.starts_with("[berth] 77 bytes of output were lost here"),
            "{text}"
        );
        assert!(s.state().finished);
    }

    #[test]
    fn output_never_read_is_announced_after_the_disk_gap_and_counted_in_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "u", 1 << 20, 1 << 10).unwrap();
        s.append(Stream::Stdout, b"before\n", r(1)).unwrap();
        let full = SpoolError::Io {
            path: dir.path().into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        s.give_up(100, r(2), &full);
        // Where the next reader starts: after what was given up, not after the last record.
        assert_eq!(s.last_resume(), r(2));
        s.count_unread(50, r(3), "output capture did not finish in time", Ok(()));
        assert_eq!(s.last_resume(), r(3));
        // A later disk gap is not folded into the unread one before it.
        s.give_up(5, r(4), &full);
        // Nothing counted, nothing to say.
        s.count_unread(0, r(4), "late", Ok(()));
        s.finish().unwrap();
        let text = String::from_utf8(all_bytes(&s)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].starts_with("[berth] 100 bytes of output were lost here: writing"));
        assert!(lines[2].starts_with("[berth] 50 bytes of output were lost here: output capture"));
        assert!(lines[3].starts_with("[berth] 5 bytes of output were lost here: writing"));
        let want = Loss {
            bytes: 155,
            at_least: false,
            disk: true,
            unread: true,
        };
        assert_eq!(s.loss(), want);
        drop(s);
        assert_eq!(
            Spool::open(dir.path(), "u", 1 << 20, 1 << 10)
                .unwrap()
                .loss(),
            want
        );
    }

    #[test]
    fn a_count_that_stopped_short_is_a_lower_bound_also_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "v", 1 << 20, 1 << 10).unwrap();
        s.count_unread(
            0,
            r(1),
            "output capture ended early",
            Err("the container is gone".into()),
        );
        assert!(s.gap_pending());
        s.finish().unwrap();
        let text = String::from_utf8(all_bytes(&s)).unwrap_or_default();
        assert!(
            text.starts_with("[berth] at least 0 bytes of output were lost here"),
            "{text}"
        );
        drop(s);
        let s = Spool::open(dir.path(), "v", 1 << 20, 1 << 10).unwrap();
        assert!(s.loss().at_least && s.loss().unread && s.lost() == 0);
    }

    #[test]
    fn no_execution_id_names_a_file_outside_the_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spools = dir.path().join("transcripts");
        for id in [
            "../../x/exec",
            "/tmp/abs",
            "a/b",
            "..",
            "",
            "a\0b",
            &"z".repeat(5000),
        ] {
            let mut s = Spool::open(&spools, id, 1 << 20, 1 << 10)
                .unwrap_or_else(|e| panic!("{id:?}: {e}"));
            s.append(Stream::Stdout, b"x", r(1)).unwrap();
            s.finish().unwrap();
            let p = Spool::path_for(&spools, id);
            assert_eq!(
                p.parent(),
                Some(spools.as_path()),
                "{id:?} -> {}",
                p.display()
            );
        }
        // Everything that was created lies in the spool directory, nothing beside it.
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "transcripts")
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
        assert_eq!(file_stem("e51c9223-6e85"), "e51c9223-6e85");
    }
}
