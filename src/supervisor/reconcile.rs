//! Matching the journal against the engine, at start-up and whenever the Docker engine comes
//! back after an outage: labelled containers of this instance the journal does not know are
//! orphans (stopped and removed), containers of finished executions are removed (when cleanup
//! is on), and journaled executions are found or declared vanished. Containers another berth
//! instance made for the same worker id are never touched.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tracing::warn;

use crate::backend::disposal::{Ended, disposal, dispose};
use crate::backend::{Backend, BackendError, Owned};
use crate::journal::{ExecRecord, ExecState, Journal, JournalError};
use crate::spec::owner::{Owner, Ownership};
use crate::supervisor::Found;

/// Why a reconciliation did nothing: without both lists, a live task's container cannot be
/// told from an orphan, so nothing is stopped, removed or declared vanished.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The engine's container list could not be read.
    #[error("cannot list berth's containers, so nothing was reconciled: {0}")]
    Listing(#[from] BackendError),
    /// The journal could not be read.
    #[error("{0}")]
    Journal(#[from] JournalError),
}

/// What to do with one listed container (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A journaled execution that has not finished: it is re-attached.
    Adopt,
    /// A journaled execution that finished before berth stopped: removed when cleanup is on.
    Finished,
    /// Made by this instance and unknown to its journal: stopped and removed.
    Orphan,
    /// Made by a berth before instance labels and unknown to this journal: it may be another
    /// berth's, so it is left alone (and named in the log).
    Unclaimed,
    /// Another instance's (same worker id, another `state_dir`): never touched.
    Foreign(String),
}

/// Decides one container's fate from its instance label and this instance's journal.
pub fn verdict(owner: &Owner, c: &Owned, records: &[ExecRecord]) -> Verdict {
    let ownership = owner.ownership(c.instance.as_deref());
    if let Ownership::Other(instance) = ownership {
        return Verdict::Foreign(instance);
    }
    match records.iter().find(|r| r.execution_id == c.execution_id) {
        Some(r) if r.state != ExecState::Finished => Verdict::Adopt,
        Some(_) => Verdict::Finished,
        None if ownership == Ownership::Mine => Verdict::Orphan,
        None => Verdict::Unclaimed,
    }
}

/// Matches the journal against the engine (see the module). Returns the journal as read with
/// what was found, or an error (and touches nothing) when either side cannot be read.
pub async fn reconcile(
    runtime: &dyn Backend,
    journal: &Journal,
    worker_id: &str,
    cleanup: bool,
    grace: Duration,
) -> Result<(Vec<ExecRecord>, HashMap<String, Found>), ReconcileError> {
    let owner = Owner::new(worker_id, journal.instance());
    // Containers first: every container listed was claimed in the journal before it was
    // created, so a record read afterwards exists for each live one (no false orphans while
    // tasks start concurrently).
    let containers = runtime.list(worker_id).await?;
    let records = journal.all()?;
    let mut found = HashMap::new();
    let mut foreign: BTreeMap<String, usize> = BTreeMap::new();
    for c in containers {
        match verdict(&owner, &c, &records) {
            Verdict::Adopt => {
                found.insert(c.execution_id.clone(), Found::Container(c.id.clone()));
            }
            Verdict::Finished => {
                let d = disposal(Ended::Finished, cleanup, c.running);
                if let Err(e) = dispose(runtime, &c.id, d, grace).await {
                    warn!(container = %c.id, error = %e, "cannot remove container");
                }
            }
            Verdict::Orphan => {
                warn!(container = %c.id, task_id = %c.task_id, running = c.running, "removing orphaned container (no journal record)");
                let d = disposal(Ended::Orphan, cleanup, c.running);
                if let Err(e) = dispose(runtime, &c.id, d, grace).await {
                    warn!(container = %c.id, error = %e, "cannot remove orphan");
                }
            }
            Verdict::Unclaimed => {
                warn!(container = %c.id, task_id = %c.task_id, running = c.running, "a container of this worker id without an instance label (made by an older berth) is not in this journal: left alone, since another berth may own it; remove it by hand (docker rm -f) if none does");
            }
            Verdict::Foreign(instance) => *foreign.entry(instance).or_default() += 1,
        }
    }
    for (instance, containers) in foreign {
        warn!(%instance, containers, worker_id, "another berth instance (another state_dir) runs containers for this worker id on this engine; they are its own and left alone");
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
        let docker = crate::backend::docker::DockerBackend::new(std::sync::Arc::new(
            crate::runtime::docker::Docker::connect(Some(&host), None).unwrap(),
        ));
        let r = reconcile(&docker, &journal, "w", true, Duration::from_secs(1)).await;
        assert!(
            matches!(r, Err(ReconcileError::Listing(_))),
            "an empty list would have made every container an orphan: {r:?}"
        );
    }
}
