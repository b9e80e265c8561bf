//! Matching the journal against the engine, at start-up and whenever the Docker engine comes
//! back after an outage: labelled containers the journal does not know are orphans (stopped and
//! removed), containers of finished executions are removed (when cleanup is on), and journaled
//! executions are found or declared vanished.

use std::collections::HashMap;
use std::time::Duration;

use tracing::warn;

use crate::journal::{ExecRecord, ExecState, Journal, JournalError};
use crate::runtime::{Runtime, RuntimeError};
use crate::supervisor::Found;

/// Why a reconciliation did nothing: without both lists, a live task's container cannot be
/// told from an orphan, so nothing is stopped, removed or declared vanished.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The engine's container list could not be read.
    #[error("cannot list berth's containers, so nothing was reconciled: {0}")]
    Listing(#[from] RuntimeError),
    /// The journal could not be read.
    #[error("{0}")]
    Journal(#[from] JournalError),
}

/// Matches the journal against the engine: labelled containers the journal does not know
/// are orphans (stopped and removed); journaled executions are found or declared vanished.
/// Returns the journal as read with what was found, or an error (and touches nothing) when
/// either side cannot be read.
pub async fn reconcile(
    runtime: &dyn Runtime,
    journal: &Journal,
    worker_id: &str,
    cleanup: bool,
    grace: Duration,
) -> Result<(Vec<ExecRecord>, HashMap<String, Found>), ReconcileError> {
    // Containers first: every container listed was claimed in the journal before it was
    // created, so a record read afterwards exists for each live one (no false orphans while
    // tasks start concurrently).
    let containers = runtime.list_managed(worker_id).await?;
    let records = journal.all()?;
    let mut found = HashMap::new();
    for c in containers {
        let record = records.iter().find(|r| r.execution_id == c.execution_id);
        match record {
            Some(r) if r.state != ExecState::Finished => {
                found.insert(r.execution_id.clone(), Found::Container(c.id.clone()));
            }
            Some(_) => {
                // Finished before the crash but not yet removed.
                if cleanup && let Err(e) = runtime.remove(&c.id).await {
                    warn!(container = %c.id, error = %e, "cannot remove container");
                }
            }
            None => {
                warn!(container = %c.id, task_id = %c.task_id, running = c.running, "removing orphaned container (no journal record)");
                if c.running
                    && let Err(e) = runtime.stop(&c.id, grace).await
                {
                    warn!(container = %c.id, error = %e, "cannot stop orphan");
                }
                if let Err(e) = runtime.remove(&c.id).await {
                    warn!(container = %c.id, error = %e, "cannot remove orphan");
                }
            }
        }
    }
    Ok((records, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_engine_that_cannot_list_containers_reconciles_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        // Something answers on the socket, but not the engine: every connection is dropped.
        let sock = dir.path().join("not-docker.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                drop(c);
            }
        });
        let host = format!("unix://{}", sock.display());
        let docker = crate::runtime::docker::Docker::connect(Some(&host), None).unwrap();
        let r = reconcile(&docker, &journal, "w", true, Duration::from_secs(1)).await;
        assert!(
            matches!(r, Err(ReconcileError::Listing(_))),
            "an empty list would have made every container an orphan: {r:?}"
        );
    }
}
