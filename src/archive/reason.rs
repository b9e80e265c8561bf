//! The bounded vocabulary of an archive answer (PROTOCOL §8.4): reason codes with their
//! outcome, and warning codes. One table each, used by the wire and the metric labels alike.

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The object is at the target.
    Uploaded,
    /// There was nothing (or nothing any more) to snapshot.
    Unavailable,
    /// The request or the work failed.
    Failed,
}

impl Outcome {
    /// Wire and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Uploaded => "uploaded",
            Outcome::Unavailable => "unavailable",
            Outcome::Failed => "failed",
        }
    }
}

/// Why a request was not uploaded (`reason_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    BackendNotSupported,
    ResourceNotReady,
    ResourceNotFound,
    CleanupGraceExpired,
    CaptureUnavailable,
    UnsupportedProtocolVersion,
    UnsupportedContentTransformer,
    InvalidRequest,
    RequestExpired,
    SnapshotFailed,
    UploadRejected,
    UploadExpired,
    UploadFailed,
    WorkerShuttingDown,
    RequestCapacityExhausted,
}

/// Each reason: wire spelling, outcome, and the fixed message sent with it (never built from
/// request or provider data).
const TABLE: [(Reason, &str, Outcome, &str); 15] = [
    (
        Reason::BackendNotSupported,
        "backend_not_supported",
        Outcome::Unavailable,
        "the worker's backend has no log source",
    ),
    (
        Reason::ResourceNotReady,
        "resource_not_ready",
        Outcome::Unavailable,
        "the execution's sandbox does not exist yet",
    ),
    (
        Reason::ResourceNotFound,
        "resource_not_found",
        Outcome::Unavailable,
        "no capture is registered for the execution",
    ),
    (
        Reason::CleanupGraceExpired,
        "cleanup_grace_expired",
        Outcome::Unavailable,
        "the execution's cleanup grace expired while the request waited",
    ),
    (
        Reason::CaptureUnavailable,
        "capture_unavailable",
        Outcome::Unavailable,
        "the execution's output cannot be read, or it is empty",
    ),
    (
        Reason::UnsupportedProtocolVersion,
        "unsupported_protocol_version",
        Outcome::Failed,
        "protocol_version must be 1",
    ),
    (
        Reason::UnsupportedContentTransformer,
        "unsupported_content_transformer",
        Outcome::Failed,
        "content_transformer must be noop version 1",
    ),
    (
        Reason::InvalidRequest,
        "invalid_request",
        Outcome::Failed,
        "the request is invalid",
    ),
    (
        Reason::RequestExpired,
        "request_expired",
        Outcome::Failed,
        "the request expired before it was received",
    ),
    (
        Reason::SnapshotFailed,
        "snapshot_failed",
        Outcome::Failed,
        "the snapshot could not be built",
    ),
    (
        Reason::UploadRejected,
        "upload_rejected",
        Outcome::Failed,
        "the upload target rejected the object",
    ),
    (
        Reason::UploadExpired,
        "upload_expired",
        Outcome::Failed,
        "the request expired before the upload could complete",
    ),
    (
        Reason::UploadFailed,
        "upload_failed",
        Outcome::Failed,
        "the upload failed and retries ran out before expiry",
    ),
    (
        Reason::WorkerShuttingDown,
        "worker_shutting_down",
        Outcome::Failed,
        "the worker shut down during the request",
    ),
    (
        Reason::RequestCapacityExhausted,
        "request_capacity_exhausted",
        Outcome::Failed,
        "the worker has no capacity for another archive request",
    ),
];

impl Reason {
    fn row(self) -> &'static (Reason, &'static str, Outcome, &'static str) {
        // Every variant has a row (checked by a test), so the fallback is never taken.
        TABLE.iter().find(|r| r.0 == self).unwrap_or(&TABLE[7])
    }

    /// Wire and label spelling.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    /// The outcome this reason answers.
    pub fn outcome(self) -> Outcome {
        self.row().2
    }

    /// The fixed text sent as `message`.
    pub fn message(self) -> &'static str {
        self.row().3
    }
}

/// A capture-quality warning (`warning_codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Warning {
    ContainerLogsUnavailable,
    PreviousLogsUnavailable,
    OutputDropped,
    ProviderSnapshotIncomplete,
}

impl Warning {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Warning::ContainerLogsUnavailable => "container_logs_unavailable",
            Warning::PreviousLogsUnavailable => "previous_logs_unavailable",
            Warning::OutputDropped => "output_dropped",
            Warning::ProviderSnapshotIncomplete => "provider_snapshot_incomplete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_row_with_the_outcome_of_the_protocol_table() {
        let mut seen = std::collections::BTreeSet::new();
        for (r, name, outcome, _) in TABLE {
            assert_eq!(r.as_str(), name);
            assert_eq!(r.outcome(), outcome);
            assert!(seen.insert(name), "{name} twice");
        }
        let unavailable: Vec<&str> = TABLE
            .iter()
            .filter(|r| r.2 == Outcome::Unavailable)
            .map(|r| r.1)
            .collect();
        assert_eq!(
            unavailable,
            [
                "backend_not_supported",
                "resource_not_ready",
                "resource_not_found",
                "cleanup_grace_expired",
                "capture_unavailable"
            ]
        );
        assert_eq!(Reason::UploadRejected.as_str(), "upload_rejected");
        assert_eq!(Reason::RequestCapacityExhausted.outcome(), Outcome::Failed);
    }
}
