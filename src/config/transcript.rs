//! `transcript.*`: how much of a task's output is kept, what is redacted, and for how long.

use std::time::Duration;

use super::collector::Collector;
use super::raw::RawTranscript;
use crate::secret::Secret;
// One default, kept by the spool that applies it.
use crate::transcript::spool::DEFAULT_FULL_DISK_PATIENCE;

const DEFAULT_TRANSCRIPT_MAX: u64 = 256 << 20;
const DEFAULT_TRANSCRIPT_TAIL: u64 = 16 << 20;
const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Transcript capture settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptSettings {
    /// Per-execution budget of live transcript bytes.
    pub max_bytes: u64,
    /// Bytes of the end kept once the budget is reached.
    pub tail_bytes: u64,
    /// Literals replaced by `[REDACTED]` (besides env values and the API key).
    pub redact: Vec<Secret>,
    /// How long finished transcripts are kept locally.
    pub retention: Duration,
    /// How long output waits for space under `state_dir` before it is counted as lost.
    pub full_disk_patience: Duration,
    /// Live output bytes between resume anchors (0: never).
    pub anchor_every: u64,
    /// How long capture may go on reading the engine's log after the container stopped,
    /// besides `full_disk_patience`, before what it did not read is counted instead. Not a
    /// configuration key (always [`DEFAULT_CAPTURE_DRAIN`] from a file); tests shorten it.
    pub capture_drain: Duration,
}

pub(super) fn transcript_section(
    raw: Option<RawTranscript>,
    c: &mut Collector<'_>,
) -> TranscriptSettings {
    let tr = raw.unwrap_or_default();
    let max_bytes = c.size_min(
        "transcript.max_bytes",
        tr.max_bytes.as_ref(),
        DEFAULT_TRANSCRIPT_MAX,
        64 << 10,
        "use a size such as 256MiB",
    );
    let tail_bytes = c.size_min(
        "transcript.tail_bytes",
        tr.tail_bytes.as_ref(),
        DEFAULT_TRANSCRIPT_TAIL,
        4 << 10,
        "use a size such as 256MiB",
    );
    if tail_bytes > max_bytes {
        c.at(
            "transcript.tail_bytes",
            tr.tail_bytes.as_ref(),
            format!("tail_bytes ({tail_bytes}) is larger than max_bytes ({max_bytes})"),
            "keep tail_bytes at most max_bytes",
        );
    }
    let retention = c.duration(
        "transcript.retention",
        tr.retention.as_ref(),
        DEFAULT_RETENTION,
        "use a duration such as 24h",
    );
    let full_disk_patience = c.duration(
        "transcript.full_disk_patience",
        tr.full_disk_patience.as_ref(),
        DEFAULT_FULL_DISK_PATIENCE,
        "use a duration such as 5m",
    );
    let anchor_every = c.size_min(
        "transcript.anchor_every",
        tr.anchor_every.as_ref(),
        DEFAULT_ANCHOR_EVERY,
        0,
        "use a size such as 128MiB, or 0 to never freeze a task for an anchor",
    );
    if anchor_every != 0 && !(MIN_ANCHOR_EVERY..=MAX_ANCHOR_EVERY).contains(&anchor_every) {
        c.at(
            "transcript.anchor_every",
            tr.anchor_every.as_ref(),
            format!("{anchor_every} bytes is outside 1MiB..=256MiB (a task is frozen briefly at every anchor, and the engine keeps only 500 MB of a container's log)"),
            "use a size such as 128MiB, or 0 to never freeze a task for an anchor",
        );
    }
    let redact: Vec<Secret> = tr
        .redact
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(Secret::new)
        .collect();

    TranscriptSettings {
        max_bytes,
        tail_bytes,
        redact,
        retention,
        full_disk_patience,
        anchor_every,
        capture_drain: DEFAULT_CAPTURE_DRAIN,
    }
}

/// Default of [`TranscriptSettings::capture_drain`].
pub const DEFAULT_CAPTURE_DRAIN: Duration = Duration::from_secs(60);

/// Default of `transcript.anchor_every`.
pub const DEFAULT_ANCHOR_EVERY: u64 = 128 << 20;
const MIN_ANCHOR_EVERY: u64 = 1 << 20;
const MAX_ANCHOR_EVERY: u64 = 256 << 20;

#[cfg(test)]
mod tests {
    use super::super::raw::ShutdownMode;
    use super::super::test_support::{load_yaml, one_error, with_key};
    use crate::secret::Secret;

    #[test]
    fn transcript_settings_are_validated() {
        let e = one_error("worker_id: w\ntranscript:\n  max_bytes: 1MiB\n  tail_bytes: 2MiB\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("transcript.tail_bytes", Some(4))
        );
        let e = one_error("worker_id: w\ntranscript:\n  max_bytes: 10MB\n");
        assert_eq!(e.key, "transcript.max_bytes");
        let e = one_error("worker_id: w\ntranscript:\n  anchor_every: 1KiB\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("transcript.anchor_every", Some(3))
        );
        assert!(e.problem.contains("1MiB..=256MiB"), "{}", e.problem);
        assert_eq!(
            one_error("worker_id: w\ntranscript:\n  anchor_every: 1GiB\n").key,
            "transcript.anchor_every"
        );
        let c = load_yaml(
            "worker_id: w\ntranscript:\n  anchor_every: 0\n",
            &with_key(),
        )
        .unwrap();
        assert_eq!(c.transcript.anchor_every, 0);
        let e = one_error("worker_id: w\ntranscript:\n  full_disk_patience: 300\n");
        assert_eq!(
            (
                e.key.as_str(),
                e.location.as_ref().map(|l| l.1),
                e.fix.as_str()
            ),
            (
                "transcript.full_disk_patience",
                Some(3),
                "use a duration such as 5m"
            )
        );
        let e = one_error("worker_id: w\nshutdown_mode: kill\n");
        assert!(e.problem.contains("preserve"), "{}", e.problem);
        let c = load_yaml(
            "worker_id: w\nshutdown_mode: cancel\ntranscript:\n  redact: [hunter2hunter2]\n",
            &with_key(),
        )
        .unwrap();
        assert_eq!(c.shutdown_mode, ShutdownMode::Cancel);
        assert_eq!(c.transcript.redact, vec![Secret::new("hunter2hunter2")]);
        assert!(!c.effective_yaml().contains("hunter2"));
    }
}
