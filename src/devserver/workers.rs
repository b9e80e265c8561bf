//! The worker table's rows: a connected worker, what its dial said about itself, and a frame
//! addressed to one of its connections.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How long a worker that rejected an assignment gets no new one (unless one of its tasks ends
/// sooner): a real server requeues with a delay too.
pub const RETRY_REJECTED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A connected worker as the HTTP API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    /// berth/1 negotiated.
    pub berth: bool,
    /// Connection time.
    pub connected_at: DateTime<Utc>,
    /// Tasks it runs.
    pub running: usize,
    /// Assignment awaiting claim/reject.
    pub in_flight: Option<String>,
    /// Rejected work recently; no assignments until a slot frees or
    /// [`RETRY_REJECTED_AFTER`] passes (a rejection for resources, draining or a Docker
    /// outage may end without any task ending).
    pub saturated: bool,
    #[serde(skip)]
    pub(super) saturated_at: Option<DateTime<Utc>>,
    /// Executions the worker said it holds in its last `worker_hello`.
    pub held: usize,
    /// Its last `worker_status` (berth/1).
    pub status: Option<crate::protocol::WorkerStatus>,
    /// How many `worker_status` messages it sent on this connection.
    pub statuses: u64,
    /// Its `X-Warp-Worker-Version` on this connection.
    pub version: Option<String>,
    /// Its `X-Warp-Worker-Capabilities` on this connection.
    pub capabilities: Option<String>,
    #[serde(skip)]
    pub(super) conn: u64,
}

/// What a worker's dial said about itself (PROTOCOL §7 handshake headers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handshake {
    /// `X-Warp-Worker-Version`.
    pub version: Option<String>,
    /// `X-Warp-Worker-Capabilities`.
    pub capabilities: Option<String>,
}

/// A frame to deliver to one worker connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub worker_id: String,
    /// Connection number (frames for a replaced connection are dropped).
    pub conn: u64,
    pub frame: String,
}
