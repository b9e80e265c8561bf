//! Building the object from an execution's transcript spool: its `stdout` and `stderr`
//! records only (never berth's `system` lines), as NDJSON under the effective bound with the
//! first/last policy. Two passes over the spool, so memory holds one record and one size per
//! line, never the object; checksums are computed while the file is written.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::crc32c::Crc32c;
use super::files::{CaptureDir, FilesError};
use super::ndjson::{self, Source};
use super::reason::Warning;
use crate::protocol::Stream;
use crate::transcript::spool::Spool;
use crate::transcript::{FLAG_GAP, Record};

/// The start of the line the spool writes where it elided output over `max_bytes`.
const ELISION_PREFIX: &[u8] = b"[berth] transcript exceeded";

/// A snapshot file on disk, with what the acknowledgement says about it. The file is removed
/// when this is dropped.
#[derive(Debug)]
pub struct Object {
    path: PathBuf,
    pub bytes: u64,
    pub crc32c: String,
    pub sha256: String,
    pub truncated: bool,
    pub warnings: BTreeSet<Warning>,
}

impl Object {
    /// The file (local; never logged).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why there is no object.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Nothing to upload: no output, or not even the truncation record fits.
    #[error("the snapshot is empty")]
    Empty,
    /// The spool cannot be read.
    #[error("the execution's output cannot be read")]
    Unreadable,
    /// The file cannot be written.
    #[error("the snapshot cannot be written: {0}")]
    Write(String),
}

impl From<FilesError> for SnapshotError {
    fn from(e: FilesError) -> Self {
        SnapshotError::Write(e.to_string())
    }
}

/// The data records a spool yields, in order: `(stream, piece)`, with the warnings its
/// `system` records imply.
fn for_each_piece(
    spool: &Path,
    warnings: &mut BTreeSet<Warning>,
    mut f: impl FnMut(Stream, &[u8]) -> Result<bool, SnapshotError>,
) -> Result<(), SnapshotError> {
    let records = Spool::records(spool).map_err(|_| SnapshotError::Unreadable)?;
    for r in records {
        if lossy(&r) {
            warnings.insert(Warning::OutputDropped);
        }
        if r.stream == Stream::System {
            continue;
        }
        for piece in ndjson::pieces(&r.payload) {
            if !f(r.stream, piece)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A record that says output was lost (a full disk) or elided (over `transcript.max_bytes`).
fn lossy(r: &Record) -> bool {
    r.flags & FLAG_GAP != 0 || (r.stream == Stream::System && r.payload.starts_with(ELISION_PREFIX))
}

/// Checksums and size of what was written.
struct Sums {
    crc: Crc32c,
    sha: ring::digest::Context,
    bytes: u64,
}

impl Sums {
    fn write(&mut self, out: &mut impl Write, line: &[u8]) -> Result<(), SnapshotError> {
        out.write_all(line)
            .map_err(|e| SnapshotError::Write(e.kind().to_string()))?;
        self.crc.update(line);
        self.sha.update(line);
        self.bytes += line.len() as u64;
        Ok(())
    }
}

/// Builds the object of the spool at `spool` under `bound` bytes into `dir`. `growing`: the
/// execution still runs (output past `transcript.max_bytes` then waits in a ring this does not
/// read, which counts as dropped).
pub fn build(
    spool: &Path,
    src: &Source<'_>,
    bound: u64,
    dir: &CaptureDir,
    growing: bool,
) -> Result<Object, SnapshotError> {
    let mut warnings = BTreeSet::new();
    if growing && spool.with_extension("tail").exists() {
        warnings.insert(Warning::OutputDropped);
    }
    // Pass 1: every line's size with a one-digit sequence, and its data bytes.
    let (mut sizes, mut data) = (Vec::new(), Vec::new());
    let mut line = Vec::new();
    let stamp = ndjson::observed_at(chrono::Utc::now());
    for_each_piece(spool, &mut warnings, |stream, piece| {
        line.clear();
        ndjson::data_line(0, src, stream, &stamp, piece, &mut line);
        sizes.push(line.len() as u64);
        data.push(piece.len() as u64);
        Ok(true)
    })?;
    let n = sizes.len();
    if n == 0 {
        return Err(SnapshotError::Empty);
    }
    // The widest sequence any kept line can carry.
    let extra = ndjson::digits(n as u64) - 1;
    sizes.iter_mut().for_each(|s| *s += extra);
    let plan = ndjson::plan(&sizes, &data, bound).ok_or(SnapshotError::Empty)?;
    drop(sizes);
    drop(data);
    // Pass 2: the kept lines, the truncation record between head and tail.
    let (path, file) = dir.create()?;
    let mut object = Object {
        path,
        bytes: 0,
        crc32c: String::new(),
        sha256: String::new(),
        truncated: plan.truncated.is_some(),
        warnings: BTreeSet::new(),
    };
    let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
    let mut sums = Sums {
        crc: Crc32c::default(),
        sha: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let (mut i, mut sequence, mut marked) = (0usize, 0u64, false);
    let mut pass2 = BTreeSet::new();
    for_each_piece(spool, &mut pass2, |stream, piece| {
        if i >= n {
            return Ok(false); // output that arrived after pass 1 is not in the plan
        }
        if let (Some(omitted), false) = (plan.truncated, marked)
            && i >= plan.head
        {
            sums.write(&mut out, &ndjson::truncation_line(omitted))?;
            marked = true;
        }
        if plan.keeps(i) {
            sequence += 1;
            line.clear();
            let at = ndjson::observed_at(chrono::Utc::now());
            ndjson::data_line(sequence, src, stream, &at, piece, &mut line);
            sums.write(&mut out, &line)?;
        }
        i += 1;
        Ok(true)
    })?;
    if i < n {
        // The spool shrank between the passes: it is not the file pass 1 read.
        return Err(SnapshotError::Unreadable);
    }
    if let (Some(omitted), false) = (plan.truncated, marked) {
        sums.write(&mut out, &ndjson::truncation_line(omitted))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| SnapshotError::Write(e.error().kind().to_string()))?;
    file.sync_all()
        .map_err(|e| SnapshotError::Write(e.kind().to_string()))?;
    object.bytes = sums.bytes;
    object.crc32c = sums.crc.base64();
    object.sha256 = sums
        .sha
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    object.warnings = warnings;
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Resume;
    use serde_json::Value;

    const SRC: Source<'static> = Source {
        backend: "docker",
        container_id: None,
    };

    fn spool(dir: &Path, parts: &[(Stream, &[u8])]) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!("e{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut s = Spool::open(dir, &id, 1 << 30, 1 << 20).unwrap();
        for (st, b) in parts {
            s.append(*st, b, Resume::default()).unwrap();
        }
        s.finish().unwrap();
        Spool::path_for(dir, &id)
    }

    fn lines(o: &Object) -> Vec<Value> {
        std::fs::read_to_string(o.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn stdout_and_stderr_become_numbered_records_and_system_lines_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaptureDir::prepare(Some(tmp.path())).unwrap();
        let p = spool(
            tmp.path(),
            &[
                (Stream::System, b"[berth] pulling\n"),
                (Stream::Stdout, b"out\n"),
                (Stream::Stderr, &[0xff, 0xfe]),
            ],
        );
        let o = build(&p, &SRC, 1 << 20, &dir, false).unwrap();
        let l = lines(&o);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (&l[0]["sequence"], &l[0]["stream"], &l[0]["data"]),
            (
                &Value::from(1),
                &Value::from("stdout"),
                &Value::from("out\n")
            )
        );
        assert_eq!(
            (&l[1]["sequence"], &l[1]["encoding"], &l[1]["data"]),
            (
                &Value::from(2),
                &Value::from("base64"),
                &Value::from("//4=")
            )
        );
        let bytes = std::fs::read(o.path()).unwrap();
        assert_eq!(o.bytes, bytes.len() as u64);
        let mut c = Crc32c::default();
        c.update(&bytes);
        assert_eq!(o.crc32c, c.base64());
        let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(o.sha256, hex);
        assert!(!o.truncated && o.warnings.is_empty());
        let path = o.path().to_path_buf();
        drop(o);
        assert!(!path.exists(), "the file goes with the object");
    }

    #[test]
    fn over_the_bound_first_and_last_records_stay_with_a_truncation_record_between() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaptureDir::prepare(Some(tmp.path())).unwrap();
        let chunks: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("line {i:03}\n").into_bytes())
            .collect();
        let parts: Vec<(Stream, &[u8])> = chunks
            .iter()
            .map(|c| (Stream::Stdout, c.as_slice()))
            .collect();
        let p = spool(tmp.path(), &parts);
        let bound = 4096;
        let o = build(&p, &SRC, bound, &dir, false).unwrap();
        assert!(o.bytes <= bound);
        assert!(o.truncated);
        let l = lines(&o);
        let t = l.iter().position(|v| v["kind"] == "truncation").unwrap();
        assert_eq!(l[0]["data"], "line 000\n");
        assert_eq!(l.last().unwrap()["data"], "line 099\n");
        let kept = l.len() as u64 - 1;
        assert_eq!(
            l[t]["omitted_bytes_at_least"],
            Value::from((100 - kept) * 9)
        );
        // Sequences are 1.. in emitted order, across the cut.
        let seqs: Vec<u64> = l.iter().filter_map(|v| v["sequence"].as_u64()).collect();
        assert_eq!(seqs, (1..=kept).collect::<Vec<_>>());
        assert_eq!(l.iter().filter(|v| v["kind"] == "truncation").count(), 1);
    }

    #[test]
    fn empty_output_and_a_bound_too_small_for_anything_are_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaptureDir::prepare(Some(tmp.path())).unwrap();
        let p = spool(tmp.path(), &[(Stream::System, b"only berth\n")]);
        assert!(matches!(
            build(&p, &SRC, 1 << 20, &dir, false),
            Err(SnapshotError::Empty)
        ));
        let p = spool(tmp.path(), &[(Stream::Stdout, b"x\n")]);
        assert!(matches!(
            build(&p, &SRC, 10, &dir, false),
            Err(SnapshotError::Empty)
        ));
        assert!(matches!(
            build(&tmp.path().join("none.spool"), &SRC, 10, &dir, false),
            Err(SnapshotError::Unreadable)
        ));
        assert_eq!(
            dir.sweep(std::time::Duration::ZERO),
            0,
            "no file is left behind"
        );
    }

    #[test]
    fn an_elided_transcript_warns_output_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaptureDir::prepare(Some(tmp.path())).unwrap();
        // max_bytes 64 KiB, tail 4 KiB: 100 KiB of output elides some.
        let mut s = Spool::open(tmp.path(), "big", 64 << 10, 4 << 10).unwrap();
        for _ in 0..100 {
            s.append(Stream::Stdout, &[b'a'; 1024], Resume::default())
                .unwrap();
        }
        s.finish().unwrap();
        let o = build(
            &Spool::path_for(tmp.path(), "big"),
            &SRC,
            1 << 20,
            &dir,
            false,
        )
        .unwrap();
        assert!(o.warnings.contains(&Warning::OutputDropped));
    }
}
