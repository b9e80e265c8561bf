//! Waiting for an execution to end: re-read the Job and its pod whenever a pod watch reports a
//! change, and at least every few seconds while nothing is running yet (a pod the cluster
//! refuses never shows up in a pod watch) or every half minute while it runs (a safety read,
//! as watches can end quietly). An API that does not answer is an error for the caller's
//! outage handling; pods run on meanwhile.

use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{WatchEvent, WatchParams};

use super::Inner;
use super::classify::Progress;
use super::names::parse_sandbox_id;
use crate::backend::{BackendError, ExitStatus};

/// Re-read while the Job has no pod (how soon a pod the cluster refuses fails the task: only
/// its events say so).
const NO_POD_EVERY: Duration = Duration::from_secs(2);
/// Re-read while the pod is pending, whatever the watch says (the unschedulable timeout).
const PENDING_EVERY: Duration = Duration::from_secs(10);
/// Re-read while the pod runs, whatever the watch says.
const SAFETY_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn wait(inner: &Inner, id: &str) -> Result<ExitStatus, BackendError> {
    let (name, uid) = parse_sandbox_id(id);
    // The pod as last seen: a pod disrupted (evicted, preempted) is deleted, and may be gone
    // before the next read; what it said then is still why the task ended.
    let mut last_pod: Option<k8s_openapi::api::core::v1::Pod> = None;
    loop {
        let mut look = inner.look(name, uid).await?;
        match (&look.pod, last_pod.take()) {
            (Some(p), _) => {
                if let Some(n) = &p.metadata.name {
                    inner.pods_seen.lock().insert(id.to_string(), n.clone());
                }
                last_pod = Some(p.clone());
            }
            (None, Some(gone)) if super::classify::disrupted(&gone) => {
                look.pod = Some(super::classify::vanished(gone));
            }
            (None, _) => {}
        }
        if look.job.is_none() && look.pod.is_none() {
            return Err(BackendError::Api {
                op: "waiting for the Job",
                reason: format!("the Job {name} and its pod are gone"),
            });
        }
        if let Progress::Ended { status, failure } = inner.progress(&look).await {
            if let Some(f) = failure {
                inner.ends.lock().insert(id.to_string(), f);
            }
            return Ok(status);
        }
        let phase = look
            .pod
            .as_ref()
            .map(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()));
        let bound = match phase {
            None => NO_POD_EVERY,
            Some(Some("Running")) => SAFETY_EVERY,
            Some(_) => PENDING_EVERY,
        };
        changed(inner, name, &look.version, bound).await;
    }
}

/// Returns at the first change of the Job's pods after `version`, or after `bound`.
pub(super) async fn changed(inner: &Inner, name: &str, version: &str, bound: Duration) {
    let secs = u32::try_from(bound.as_secs()).unwrap_or(30).max(1);
    let wp = WatchParams::default()
        .labels(&format!("job-name={name}"))
        .timeout(secs);
    let watching = async {
        let Ok(stream) = inner.pods.watch(&wp, version).await else {
            // Not now (an outage, a Forbidden): the next read will say.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Bookmark(_)) => continue,
                // A change, or an error (410 Gone included): read again.
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(bound + Duration::from_secs(5), watching).await;
}
