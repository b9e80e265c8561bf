//! Matching the journal against the engine, at start-up and whenever the Docker engine comes
//! back after an outage: labelled containers the journal does not know are orphans (stopped and
//! removed), containers of finished executions are removed (when cleanup is on), and journaled
//! executions are found or declared vanished.

use std::collections::HashMap;
use std::time::Duration;

use tracing::{error, warn};

use crate::docker::Docker;
use crate::journal::{ExecState, Journal};
use crate::supervisor::Found;

/// Matches the journal against the engine: labelled containers the journal does not know
/// are orphans (stopped and removed); journaled executions are found or declared vanished.
pub async fn reconcile(
    docker: &Docker,
    journal: &Journal,
    worker_id: &str,
    cleanup: bool,
    grace: Duration,
) -> HashMap<String, Found> {
    // Containers first: every container listed was claimed in the journal before it was
    // created, so a record read afterwards exists for each live one (no false orphans while
    // tasks start concurrently).
    let containers = match docker.list_managed(worker_id).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot list managed containers");
            Vec::new()
        }
    };
    let records = journal.all().unwrap_or_else(|e| {
        error!(error = %e, "cannot read the journal");
        Vec::new()
    });
    let mut found = HashMap::new();
    for c in containers {
        let record = records.iter().find(|r| r.execution_id == c.execution_id);
        match record {
            Some(r) if r.state != ExecState::Finished => {
                found.insert(r.execution_id.clone(), Found::Container(c.id.clone()));
            }
            Some(_) => {
                // Finished before the crash but not yet removed.
                if cleanup && let Err(e) = docker.remove(&c.id).await {
                    warn!(container = %c.id, error = %e, "cannot remove container");
                }
            }
            None => {
                warn!(container = %c.id, task_id = %c.task_id, running = c.running, "removing orphaned container (no journal record)");
                if c.running
                    && let Err(e) = docker.stop(&c.id, grace).await
                {
                    warn!(container = %c.id, error = %e, "cannot stop orphan");
                }
                if let Err(e) = docker.remove(&c.id).await {
                    warn!(container = %c.id, error = %e, "cannot remove orphan");
                }
            }
        }
    }
    found
}
