//! `debug_log_capture.*` (PROTOCOL §8.4): where debug-archive snapshots are written and how
//! much they may use. The Go worker's keys. A value that is not a size is a configuration
//! error; bounds that make no sense turn archive capture off with one warning (tasks are
//! never affected), as the Go worker does.

use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::collector::Collector;
use crate::units::parse_size;

/// Default of `max_total_bytes` (1 GiB).
pub const DEFAULT_MAX_TOTAL: u64 = 1 << 30;
/// Default (and the largest allowed) `max_execution_bytes` (64 MiB).
pub const MAX_EXECUTION: u64 = 64 << 20;
/// Default of `max_concurrent_uploads`.
pub const DEFAULT_CONCURRENT: u32 = 2;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDebugLogCapture {
    pub(super) directory: Option<Spanned<String>>,
    pub(super) max_total_bytes: Option<Spanned<String>>,
    pub(super) max_execution_bytes: Option<Spanned<String>>,
    pub(super) max_concurrent_uploads: Option<Spanned<String>>,
}

/// Debug-archive capture settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugLogCapture {
    /// Base directory (`None`: the system temp dir); files go under
    /// `oz-agent-worker/debug-logs` in it.
    pub directory: Option<PathBuf>,
    /// Disk budget shared by the snapshots in flight.
    pub max_total_bytes: u64,
    /// Most bytes of one execution's object.
    pub max_execution_bytes: u64,
    /// Requests snapshotting or uploading at once.
    pub max_concurrent_uploads: u32,
    /// Why archive capture is off, when the bounds make no sense (logged once at start).
    pub disabled: Option<String>,
}

impl Default for DebugLogCapture {
    fn default() -> Self {
        DebugLogCapture {
            directory: None,
            max_total_bytes: DEFAULT_MAX_TOTAL,
            max_execution_bytes: MAX_EXECUTION,
            max_concurrent_uploads: DEFAULT_CONCURRENT,
            disabled: None,
        }
    }
}

/// A count or size: `Some(n)` when positive, `Some(0)` for zero or a negative number (a bound
/// that turns capture off), `None` after reporting what is not a number at all.
fn positive(key: &str, sp: Option<&Spanned<String>>, default: u64, c: &mut Collector<'_>) -> u64 {
    let Some(sp) = sp else {
        return default;
    };
    let v = sp.value.trim();
    if let Some(n) = v.strip_prefix('-')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return 0;
    }
    match parse_size(v) {
        Ok(n) => n,
        Err(p) => {
            c.at(
                key,
                Some(sp),
                p,
                "use a number of bytes, e.g. 67108864 or 64MiB",
            );
            default
        }
    }
}

pub(super) fn debug_log_capture_section(
    raw: Option<RawDebugLogCapture>,
    c: &mut Collector<'_>,
) -> DebugLogCapture {
    let r = raw.unwrap_or_default();
    let directory = r
        .directory
        .as_ref()
        .map(|d| d.value.trim().to_string())
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let total = positive(
        "debug_log_capture.max_total_bytes",
        r.max_total_bytes.as_ref(),
        DEFAULT_MAX_TOTAL,
        c,
    );
    let execution = positive(
        "debug_log_capture.max_execution_bytes",
        r.max_execution_bytes.as_ref(),
        MAX_EXECUTION,
        c,
    );
    let concurrent = positive(
        "debug_log_capture.max_concurrent_uploads",
        r.max_concurrent_uploads.as_ref(),
        u64::from(DEFAULT_CONCURRENT),
        c,
    );
    DebugLogCapture {
        directory,
        max_total_bytes: total,
        max_execution_bytes: execution,
        max_concurrent_uploads: u32::try_from(concurrent).unwrap_or(u32::MAX),
        disabled: bounds_problem(total, execution, concurrent),
    }
}

/// What is wrong with the bounds, if anything (§8.4's list).
fn bounds_problem(total: u64, execution: u64, concurrent: u64) -> Option<String> {
    let problem = if total == 0 || execution == 0 || concurrent == 0 {
        "max_total_bytes, max_execution_bytes and max_concurrent_uploads must be positive"
    } else if execution > MAX_EXECUTION {
        "max_execution_bytes is over 64 MiB"
    } else if total < execution {
        "max_total_bytes is below max_execution_bytes"
    } else {
        return None;
    };
    Some(problem.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{load_yaml, with_key};

    #[test]
    fn defaults_are_the_go_workers() {
        let c = load_yaml("worker_id: w\n", &with_key()).unwrap();
        let d = &c.debug_log_capture;
        assert_eq!(d.directory, None);
        assert_eq!(d.max_total_bytes, 1 << 30);
        assert_eq!(d.max_execution_bytes, 64 << 20);
        assert_eq!(d.max_concurrent_uploads, 2);
        assert_eq!(d.disabled, None);
    }

    #[test]
    fn values_are_read_as_written() {
        let c = load_yaml(
            "worker_id: w\ndebug_log_capture:\n  directory: /var/tmp/x\n  max_total_bytes: 2GiB\n  max_execution_bytes: 1048576\n  max_concurrent_uploads: 4\n",
            &with_key(),
        )
        .unwrap();
        let d = &c.debug_log_capture;
        assert_eq!(
            d.directory.as_deref(),
            Some(std::path::Path::new("/var/tmp/x"))
        );
        assert_eq!(d.max_total_bytes, 2 << 30);
        assert_eq!(d.max_execution_bytes, 1 << 20);
        assert_eq!(d.max_concurrent_uploads, 4);
    }

    #[test]
    fn invalid_bounds_turn_capture_off_without_failing_the_file() {
        for (yaml, want) in [
            ("max_total_bytes: 0", "must be positive"),
            ("max_concurrent_uploads: -1", "must be positive"),
            ("max_execution_bytes: 128MiB", "over 64 MiB"),
            (
                "max_total_bytes: 1MiB\n  max_execution_bytes: 2MiB",
                "below max_execution_bytes",
            ),
        ] {
            let c = load_yaml(
                &format!("worker_id: w\ndebug_log_capture:\n  {yaml}\n"),
                &with_key(),
            )
            .unwrap_or_else(|e| panic!("{yaml}: {e}"));
            let why = c.debug_log_capture.disabled.unwrap_or_default();
            assert!(why.contains(want), "{yaml}: {why}");
        }
    }

    #[test]
    fn unknown_keys_and_non_numbers_are_errors_with_their_line() {
        let e = load_yaml(
            "worker_id: w\ndebug_log_capture:\n  retention: 1h\n",
            &with_key(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(":3:"), "{e}");
        assert!(e.contains("retention"), "{e}");
        let e = load_yaml(
            "worker_id: w\ndebug_log_capture:\n  max_total_bytes: lots\n",
            &with_key(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("debug_log_capture.max_total_bytes"), "{e}");
        assert!(e.contains(":3:"), "{e}");
    }
}
