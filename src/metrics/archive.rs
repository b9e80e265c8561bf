//! Debug-archive tallies (PROTOCOL §8.4's metrics table): bounded labels only, never an id.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::histogram::Histogram;
use super::{Metrics, lock};

/// Upper bounds (seconds) of the snapshot and upload duration histograms.
pub const ARCHIVE_SECONDS: [f64; 8] = [0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0];
/// Upper bounds (bytes) of the snapshot size histogram: 4 KiB to 64 MiB.
pub const ARCHIVE_BYTES: [f64; 7] = [
    4096.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// The labelled part, kept under the metrics' one lock.
#[derive(Debug, Default)]
pub(super) struct Tallies {
    /// (backend, ownership, outcome, reason) -> requests answered.
    pub(super) requests: BTreeMap<(&'static str, &'static str, &'static str, &'static str), u64>,
    pub(super) snapshot_seconds: BTreeMap<&'static str, Histogram>,
    pub(super) snapshot_bytes: BTreeMap<&'static str, Histogram>,
    /// result -> uploads.
    pub(super) uploads: BTreeMap<&'static str, u64>,
    pub(super) upload_seconds: BTreeMap<&'static str, Histogram>,
    pub(super) truncations: BTreeMap<&'static str, u64>,
    /// (backend, result) -> grace ends.
    pub(super) grace_results: BTreeMap<(&'static str, &'static str), u64>,
}

impl Metrics {
    /// A request was answered.
    pub fn archive_answered(
        &self,
        backend: &'static str,
        ownership: &'static str,
        outcome: &'static str,
        reason: &'static str,
    ) {
        *lock(&self.labelled)
            .archive
            .requests
            .entry((backend, ownership, outcome, reason))
            .or_default() += 1;
    }

    /// A snapshot was built in `secs` with `bytes` bytes (`truncated`: a truncation record).
    pub fn archive_snapshot(&self, backend: &'static str, secs: f64, bytes: u64, truncated: bool) {
        let mut l = lock(&self.labelled);
        let a = &mut l.archive;
        a.snapshot_seconds
            .entry(backend)
            .or_insert_with(|| Histogram::new(&ARCHIVE_SECONDS))
            .observe(secs);
        a.snapshot_bytes
            .entry(backend)
            .or_insert_with(|| Histogram::new(&ARCHIVE_BYTES))
            .observe(bytes as f64);
        if truncated {
            *a.truncations.entry(backend).or_default() += 1;
        }
    }

    /// An upload ended (`uploaded` or `failed`) after `secs`.
    pub fn archive_upload(&self, result: &'static str, secs: f64) {
        let mut l = lock(&self.labelled);
        let a = &mut l.archive;
        *a.uploads.entry(result).or_default() += 1;
        a.upload_seconds
            .entry(result)
            .or_insert_with(|| Histogram::new(&ARCHIVE_SECONDS))
            .observe(secs);
    }

    /// A request started (`+1`) or ended (`-1`) its work.
    pub fn archive_in_flight(&self, delta: i64) {
        let _ = self
            .archive_in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(delta))
            });
    }

    /// Bytes of snapshot files (and reservations for them) under the capture directory.
    pub fn archive_capture_bytes(&self, bytes: u64) {
        self.archive_capture_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Executions in their cleanup grace.
    pub fn grace_entries(&self, n: u64) {
        self.grace_entries.store(n, Ordering::Relaxed);
    }

    /// A cleanup grace ended (`released`), or its release failed (`failed`, retried).
    pub fn grace_result(&self, backend: &'static str, result: &'static str) {
        *lock(&self.labelled)
            .archive
            .grace_results
            .entry((backend, result))
            .or_default() += 1;
    }
}
