//! Task-log export tallies (PROTOCOL §8.3 names none; these are berth's): every series has a
//! fixed label value, so a scrape shows all of them from the start, at zero.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Metrics;

/// What became of an exported record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordResult {
    /// In a batch the collector accepted.
    Exported,
    /// In a batch the collector refused or never answered (not retried, §8.3).
    Failed,
    /// Never sent: a setup phase past the event queue, or still held when the flush bound
    /// before the task's result ran out.
    Dropped,
    /// A line longer than 64 KiB, dropped whole.
    TooLong,
    /// A line cut by a hole in the output (elision, a full disk, rotation), dropped on both
    /// sides of it.
    Cut,
}

impl RecordResult {
    pub const ALL: [RecordResult; 5] = [
        RecordResult::Exported,
        RecordResult::Failed,
        RecordResult::Dropped,
        RecordResult::TooLong,
        RecordResult::Cut,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RecordResult::Exported => "exported",
            RecordResult::Failed => "failed",
            RecordResult::Dropped => "dropped",
            RecordResult::TooLong => "too_long",
            RecordResult::Cut => "cut",
        }
    }
}

/// How one export request (a batch) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Ok,
    /// No identity token could be had (or it cannot be a header).
    TokenUnavailable,
    /// The collector could not be reached, or did not answer in time.
    Unreachable,
    /// The collector answered with a status other than 2xx.
    HttpError,
    /// The flush bound before the task's result left no time for the request.
    Deadline,
}

impl RequestResult {
    pub const ALL: [RequestResult; 5] = [
        RequestResult::Ok,
        RequestResult::TokenUnavailable,
        RequestResult::Unreachable,
        RequestResult::HttpError,
        RequestResult::Deadline,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::TokenUnavailable => "token_unavailable",
            RequestResult::Unreachable => "unreachable",
            RequestResult::HttpError => "http_error",
            RequestResult::Deadline => "deadline",
        }
    }
}

/// The gate that kept an execution that asked for task logs from exporting them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    OperatorDisabled,
    LoggingDisabled,
    NoApiKey,
    NoWorkloadToken,
    Endpoint,
    ServerRoot,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::OperatorDisabled,
        Refusal::LoggingDisabled,
        Refusal::NoApiKey,
        Refusal::NoWorkloadToken,
        Refusal::Endpoint,
        Refusal::ServerRoot,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::OperatorDisabled => "operator_disabled",
            Refusal::LoggingDisabled => "logging_disabled",
            Refusal::NoApiKey => "no_api_key",
            Refusal::NoWorkloadToken => "no_workload_token",
            Refusal::Endpoint => "endpoint",
            Refusal::ServerRoot => "server_root_url",
        }
    }
}

/// The counters, one per label value, indexed by the enums above.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) records: [AtomicU64; 5],
    pub(super) requests: [AtomicU64; 5],
    pub(super) refused: [AtomicU64; 6],
}

impl Metrics {
    /// `n` records came to `result`.
    pub fn task_log_records(&self, result: RecordResult, n: u64) {
        self.task_logs.records[result as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// An export request ended.
    pub fn task_log_request(&self, result: RequestResult) {
        self.task_logs.requests[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An execution's task logs were not exported because of `gate`.
    pub fn task_log_refused(&self, gate: Refusal) {
        self.task_logs.refused[gate as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_has_its_own_counter_in_order() {
        for (i, r) in RecordResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in RequestResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let labels: std::collections::BTreeSet<&str> =
            Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
