//! The log's last entries, read to check live output and to place anchors.

use futures_util::StreamExt;

use crate::backend::{BackendError, Live, LogEntry};

/// The log's last [`TAIL_ENTRIES`] entries (both streams, in the engine's order).
pub(super) async fn read_log_end(
    live: &dyn Live,
    container_id: &str,
) -> Result<Vec<LogEntry>, BackendError> {
    let mut entries = Vec::new();
    let mut tail = live.tail(container_id, TAIL_ENTRIES);
    while let Some(e) = tail.next().await {
        entries.push(e?);
    }
    Ok(entries)
}

/// How many of the log's last entries confirm that the attach stream saw the end.
pub(super) const TAIL_ENTRIES: u32 = 64;
