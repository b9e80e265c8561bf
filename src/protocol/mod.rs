//! Wire types of the control-plane protocol (PROTOCOL.md): `oz/1` exactly, plus `berth/1`.
//!
//! Every frame is one JSON object `{"type": "...", "data": {...}}`. Decoding is lenient the way
//! the Go worker is (unknown fields ignored, missing timestamps fine); encoding omits empty
//! optional fields so an oz/1 server sees exactly the fields it knows.
//!
//! One file per audience: `assignment.rs` is the schema of the work the server hands out,
//! `server.rs` the rest of what it sends, `worker.rs` what the worker answers (its bodies in
//! `payloads.rs`); `envelope.rs` is the frame both share. Every type is re-exported here, so
//! callers name `protocol::X` whatever file it lives in.

mod archive;
mod assignment;
mod envelope;
mod payloads;
mod server;
mod worker;

pub use archive::{ArchiveAck, ArchiveRequest};
pub use assignment::{
    AdditionalSidecar, AgentConfigSnapshot, AwsInference, BootstrapToken, CloneFrom, Harness,
    InferenceProviders, InstanceShape, Owner, RawJson, RepositoryHead, RepositoryHeadOverride,
    SessionSharing, Task, TaskAssignment, TaskDefinition, TelemetryCollection,
};
pub(crate) use envelope::frame;
pub use envelope::{DecodeError, Envelope};
pub use payloads::{
    DockerStatus, EngineStatus, HeldTask, Hello, HostStatus, Started, Stream, TerminalExt, Usage,
    WorkerStatus,
};
pub use server::ServerMessage;
pub use worker::{
    MSG_CANCELLED, MSG_COMPLETED, MSG_INTERRUPTED, MSG_TIMEOUT, REJECT_AT_CAPACITY,
    TASK_STATE_CANCELLED, WorkerMessage,
};

/// Request header with which berth offers, and a server accepts, the berth/1 extensions.
pub const BERTH_PROTOCOL_HEADER: &str = "X-Berth-Protocol";
/// The only berth/1 protocol version.
pub const BERTH_PROTOCOL_VERSION: &str = "1";
/// Request header naming the worker's version on every dial (PROTOCOL §7).
pub const WORKER_VERSION_HEADER: &str = "X-Warp-Worker-Version";
/// The most bytes of [`WORKER_VERSION_HEADER`] a server keeps.
pub const WORKER_VERSION_MAX: usize = 128;
/// Request header listing the protocol capabilities the worker has (PROTOCOL §7).
pub const WORKER_CAPABILITIES_HEADER: &str = "X-Warp-Worker-Capabilities";
/// berth's capabilities: execution-scoped cancellation and `execution_closed`.
pub const WORKER_CAPABILITIES: &str = "execution-scoped-cancellation-v1";

/// What berth sends as [`WORKER_VERSION_HEADER`]: `berth/<crate version>`, cut to the limit.
pub fn worker_version() -> String {
    let mut v = format!("berth/{}", env!("CARGO_PKG_VERSION"));
    v.truncate(WORKER_VERSION_MAX);
    v
}

/// Longest `task_id` or `execution_id` accepted from a control plane.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id from the control plane: 1 to [`MAX_ID_LEN`] characters from `A-Z a-z 0-9 . _ :
/// -`, not starting with `.`. Ids name files, log fields and container labels; anything else
/// (a path, NUL, a newline, 10 000 characters) is refused as permanent bad input.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    let rule = format!(
        "{field} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : - and must not start with '.'"
    );
    if id.is_empty() {
        return Err(format!("{field} is empty; {rule}"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("{field} is {} characters long; {rule}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!("{field} contains {c:?}; {rule}"));
    }
    if id.starts_with('.') {
        return Err(format!("{field} starts with '.'; {rule}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_version_names_berth_and_fits_the_header_limit() {
        let v = worker_version();
        assert_eq!(v, format!("berth/{}", env!("CARGO_PKG_VERSION")));
        assert!(v.len() <= WORKER_VERSION_MAX);
    }
}
