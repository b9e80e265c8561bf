//! The bounded failure vocabulary shared by the protocol, metrics and logs.

use serde::{Deserialize, Serialize};

/// Why a task failed (`failure_reason` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Nothing more specific is known.
    Unknown,
    /// The time limit expired.
    TaskTimeout,
    /// A cancellation interrupted the task.
    TaskCancelled,
    /// Worker shutdown interrupted the task.
    GracefulShutdown,
    /// The image could not be pulled or found.
    ImagePull,
    /// A sidecar volume could not be prepared.
    SidecarPrep,
    /// The container could not be created.
    ContainerCreate,
    /// The container could not be started.
    ContainerStart,
    /// Waiting for the container failed.
    ContainerWait,
    /// The container exited non-zero.
    ContainerExit,
    /// The OOM killer ended the container.
    ContainerOom,
    /// Workspace preparation (repos) failed.
    WorkspaceSetup,
    /// A setup command failed.
    SetupCommand,
    /// The image reference is invalid or not allowed.
    InvalidImage,
    /// Removing the container failed.
    Cleanup,
    /// Kubernetes: the pod found no node within `unschedulable_timeout`.
    Unschedulable,
    /// Kubernetes: the pod was evicted (node pressure, the eviction API, a drain).
    Evicted,
    /// Kubernetes: the scheduler preempted the pod for a higher-priority one.
    PodPreempted,
    /// Kubernetes: the Job's `activeDeadlineSeconds` ran out.
    ActiveDeadline,
    /// Kubernetes: a volume could not be mounted.
    VolumeMount,
    /// Kubernetes: the Job failed for a reason no more specific one covers.
    JobFailed,
}

impl FailureReason {
    /// Every reason, in protocol order.
    pub const ALL: [FailureReason; 21] = [
        FailureReason::Unknown,
        FailureReason::TaskTimeout,
        FailureReason::TaskCancelled,
        FailureReason::GracefulShutdown,
        FailureReason::ImagePull,
        FailureReason::SidecarPrep,
        FailureReason::ContainerCreate,
        FailureReason::ContainerStart,
        FailureReason::ContainerWait,
        FailureReason::ContainerExit,
        FailureReason::ContainerOom,
        FailureReason::WorkspaceSetup,
        FailureReason::SetupCommand,
        FailureReason::InvalidImage,
        FailureReason::Cleanup,
        FailureReason::Unschedulable,
        FailureReason::Evicted,
        FailureReason::PodPreempted,
        FailureReason::ActiveDeadline,
        FailureReason::VolumeMount,
        FailureReason::JobFailed,
    ];

    /// Wire spelling, also used as the metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Unknown => "unknown",
            FailureReason::TaskTimeout => "task_timeout",
            FailureReason::TaskCancelled => "task_cancelled",
            FailureReason::GracefulShutdown => "graceful_shutdown",
            FailureReason::ImagePull => "image_pull",
            FailureReason::SidecarPrep => "sidecar_prep",
            FailureReason::ContainerCreate => "container_create",
            FailureReason::ContainerStart => "container_start",
            FailureReason::ContainerWait => "container_wait",
            FailureReason::ContainerExit => "container_exit",
            FailureReason::ContainerOom => "container_oom",
            FailureReason::WorkspaceSetup => "workspace_setup",
            FailureReason::SetupCommand => "setup_command",
            FailureReason::InvalidImage => "invalid_image",
            FailureReason::Cleanup => "cleanup",
            FailureReason::Unschedulable => "unschedulable",
            FailureReason::Evicted => "evicted",
            FailureReason::PodPreempted => "pod_preempted",
            FailureReason::ActiveDeadline => "active_deadline",
            FailureReason::VolumeMount => "volume_mount",
            FailureReason::JobFailed => "job_failed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure: its reason, what happened (for the user), and the exit status of the
/// command that failed, when one ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The wire reason.
    pub reason: FailureReason,
    /// For the user: what failed, what happened, what to do.
    pub detail: String,
    /// The failing command's exit status, when it ran.
    pub exit_code: Option<i64>,
    /// The engine's structured account, where it has one (`task_failed.failure_details`:
    /// the Kubernetes backend's Job, pod, container and events, PROTOCOL.md §8.1).
    pub details: Option<Box<serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_matches_serde_and_parse_for_every_reason() {
        for r in FailureReason::ALL {
            let json = serde_json::to_string(&r).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(FailureReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(FailureReason::parse("nope"), None);
    }
}
