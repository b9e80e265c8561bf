//! How far an execution's Job and pod have got, and how they ended (pure): from the
//! structured fields the API gives — container states, pod and Job conditions, the
//! `DisruptionTarget` condition — and events only where nothing structured exists (a pod the
//! Job controller could not create, a mount that keeps failing). No string matching where a
//! field says it.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};

use super::names::TASK_CONTAINER;
use crate::failure::{Failure, FailureReason};
use crate::runtime::ExitStatus;

/// Exit status of a sandbox whose task container never ran (the failure says why).
pub const NEVER_RAN: i64 = -1;

/// What a step init container is, as the Job's annotation records it (so a berth that
/// reattaches after a restart still names it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepNote {
    pub title: String,
    pub reason: FailureReason,
}

/// Where an execution stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Not started, or running.
    Going,
    /// Over: the task container's status (or [`NEVER_RAN`]) and, where the engine knows
    /// better than the exit status, the failure to report.
    Ended {
        status: ExitStatus,
        failure: Option<Failure>,
    },
}

/// The facts classification reads.
pub struct Seen<'a> {
    pub job: Option<&'a Job>,
    pub pod: Option<&'a Pod>,
    /// Events of the Job and the pod (empty when not read).
    pub events: &'a [Event],
    pub steps: &'a [StepNote],
    /// How long the pod has existed (unschedulable patience).
    pub pod_age: Duration,
    pub unschedulable_timeout: Duration,
}

fn failure(reason: FailureReason, detail: String, exit_code: Option<i64>) -> Failure {
    Failure {
        reason,
        detail,
        exit_code,
        details: None,
    }
}

fn ended(code: i64, failure: Option<Failure>) -> Progress {
    Progress::Ended {
        status: ExitStatus {
            code,
            oom_killed: false,
        },
        failure,
    }
}

/// 128 + signal for a death by signal, else the exit code.
fn normalised(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> i64 {
    match t.signal {
        Some(s) if s > 0 => 128 + i64::from(s),
        _ => i64::from(t.exit_code),
    }
}

fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

/// Whether the pod carries a `DisruptionTarget` condition (it is being evicted, preempted or
/// deleted with its node).
pub fn disrupted(pod: &Pod) -> bool {
    condition(pod, "DisruptionTarget").is_some()
}

/// A disrupted pod that has since been deleted, as terminal (`Failed`), so it is classified
/// by what it said last.
pub fn vanished(mut pod: Pod) -> Pod {
    if let Some(s) = pod.status.as_mut() {
        s.phase = Some("Failed".into());
    }
    pod
}

/// The pod was disrupted (preempted, evicted, its node lost): the cluster's doing, not the
/// task's.
fn disruption(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let c = condition(pod, "DisruptionTarget");
    let why = c.and_then(|c| c.reason.as_deref());
    let text = c
        .and_then(|c| c.message.clone())
        .or_else(|| status.message.clone())
        .unwrap_or_default();
    let (reason, what) = match (why, status.reason.as_deref()) {
        (Some("PreemptionByScheduler" | "PreemptionByKubeScheduler"), _) => (
            FailureReason::PodPreempted,
            "the scheduler preempted the task's pod for a higher-priority pod",
        ),
        (Some("DeletionByTaintManager" | "DeletionByPodGC"), _) => (
            FailureReason::Evicted,
            "the task's pod was deleted because its node became unavailable",
        ),
        (Some(_), _) | (None, Some("Evicted")) => {
            (FailureReason::Evicted, "the task's pod was evicted")
        }
        (None, _) => return None,
    };
    Some(failure(
        reason,
        format!("{what} ({text}); resubmit the task"),
        None,
    ))
}

fn waiting_failure(s: &ContainerStatus, what: &str) -> Option<Failure> {
    let w = s.state.as_ref()?.waiting.as_ref()?;
    let msg = w.message.clone().unwrap_or_default();
    let (reason, fix) = match w.reason.as_deref()? {
        "ErrImagePull" | "ImagePullBackOff" => (
            FailureReason::ImagePull,
            "check the image name and that the node may pull it (imagePullSecrets in pod_template)",
        ),
        "InvalidImageName" => (FailureReason::InvalidImage, "correct the image reference"),
        "CreateContainerConfigError" | "CreateContainerError" => (
            FailureReason::ContainerCreate,
            "the pod template or the task's settings name something the node cannot provide",
        ),
        _ => return None,
    };
    Some(failure(
        reason,
        format!("{what}'s image cannot be run: {msg}; {fix}"),
        None,
    ))
}

/// An init container that failed: a sidecar copy or a provisioning step.
fn init_failure(s: &ContainerStatus, steps: &[StepNote]) -> Option<Failure> {
    let t = s.state.as_ref()?.terminated.as_ref()?;
    let code = normalised(t);
    if code == 0 {
        return None;
    }
    if let Some(n) = s
        .name
        .strip_prefix("step-")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let (title, reason) = steps
            .get(n)
            .map(|s| (s.title.clone(), s.reason))
            .unwrap_or_else(|| {
                (
                    format!("provisioning step {}", n + 1),
                    FailureReason::SetupCommand,
                )
            });
        let hint = match code {
            126 | 127 => " (command not found or not executable in the image)",
            _ => "",
        };
        return Some(failure(
            reason,
            format!("{title} exited with status {code}{hint}; its output is in the transcript"),
            Some(code),
        ));
    }
    if s.name.starts_with("sidecar-") {
        return Some(failure(
            FailureReason::SidecarPrep,
            format!(
                "copying the sidecar image's files failed with status {code} (a sidecar image needs /bin/sh and cp)"
            ),
            Some(code),
        ));
    }
    Some(failure(
        FailureReason::ContainerCreate,
        format!(
            "the pod template's init container {} exited with status {code}",
            s.name
        ),
        Some(code),
    ))
}

fn pod_progress(pod: &Pod, seen: &Seen<'_>) -> Option<Progress> {
    let status = pod.status.as_ref()?;
    let terminal = matches!(status.phase.as_deref(), Some("Failed" | "Succeeded"));
    let task = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == TASK_CONTAINER);
    let task_end = task.and_then(|c| c.state.as_ref()?.terminated.as_ref());
    if (terminal || task_end.is_some())
        && let Some(f) = disruption(pod)
    {
        return Some(ended(task_end.map_or(NEVER_RAN, normalised), Some(f)));
    }
    for s in status.init_container_statuses.iter().flatten() {
        if let Some(f) = init_failure(s, seen.steps)
            .or_else(|| waiting_failure(s, &format!("init container {}", s.name)))
        {
            return Some(ended(f.exit_code.unwrap_or(NEVER_RAN), Some(f)));
        }
    }
    if let Some(t) = task_end {
        return Some(Progress::Ended {
            status: ExitStatus {
                code: normalised(t),
                oom_killed: t.reason.as_deref() == Some("OOMKilled"),
            },
            failure: None,
        });
    }
    if let Some(f) = task.and_then(|c| waiting_failure(c, "the task container")) {
        return Some(ended(NEVER_RAN, Some(f)));
    }
    if terminal {
        // Failed before the task container ran, with nothing more specific.
        let deadline = status.reason.as_deref() == Some("DeadlineExceeded");
        let reason = if deadline {
            FailureReason::ActiveDeadline
        } else {
            FailureReason::JobFailed
        };
        let text = status
            .message
            .clone()
            .or_else(|| status.reason.clone())
            .unwrap_or_default();
        return Some(ended(
            NEVER_RAN,
            Some(failure(
                reason,
                format!("the task's pod failed: {text}"),
                None,
            )),
        ));
    }
    if let Some(c) = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        && c.reason.as_deref() == Some("Unschedulable")
        && !seen.unschedulable_timeout.is_zero()
        && seen.pod_age >= seen.unschedulable_timeout
    {
        let text = c.message.clone().unwrap_or_default();
        return Some(ended(
            NEVER_RAN,
            Some(failure(
                FailureReason::Unschedulable,
                format!(
                    "no node could take the task's pod within {} ({text}); lower the task's resources, or add capacity or matching nodes",
                    humantime::format_duration(seen.unschedulable_timeout)
                ),
                None,
            )),
        ));
    }
    None
}

fn job_condition<'a>(
    job: &'a Job,
    kind: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

/// The newest Warning event with `reason`, if any.
fn warning<'a>(events: &'a [Event], reason: &str) -> Option<&'a Event> {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
}

/// Where the execution stands, from what was seen of it.
pub fn progress(seen: &Seen<'_>) -> Progress {
    if let Some(p) = seen.pod.and_then(|pod| pod_progress(pod, seen)) {
        return p;
    }
    if seen.pod.is_none()
        && let Some(e) = warning(seen.events, "FailedCreate")
    {
        // Admission refused the pod (a missing RuntimeClass, a quota, Pod Security): the Job
        // controller would retry until the deadline.
        let text = e.message.clone().unwrap_or_default();
        return ended(
            NEVER_RAN,
            Some(failure(
                FailureReason::ContainerCreate,
                format!("the cluster refused to create the task's pod: {text}"),
                None,
            )),
        );
    }
    if let Some(e) = warning(seen.events, "FailedMount")
        && seen.pod_age >= MOUNT_PATIENCE
        && seen
            .pod
            .is_some_and(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
    {
        let text = e.message.clone().unwrap_or_default();
        return ended(
            NEVER_RAN,
            Some(failure(
                FailureReason::VolumeMount,
                format!("a volume of the task's pod cannot be mounted: {text}"),
                None,
            )),
        );
    }
    if let Some(job) = seen.job {
        if let Some(c) = job_condition(job, "Failed") {
            let deadline = c.reason.as_deref() == Some("DeadlineExceeded");
            let reason = if deadline {
                FailureReason::ActiveDeadline
            } else {
                FailureReason::JobFailed
            };
            let text = c
                .message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_default();
            let fix = if deadline {
                "; raise backend.kubernetes.active_deadline, or give the task a shorter time limit"
            } else {
                ""
            };
            return ended(
                NEVER_RAN,
                Some(failure(
                    reason,
                    format!("the task's Job failed: {text}{fix}"),
                    None,
                )),
            );
        }
        if job_condition(job, "Complete").is_some() && seen.pod.is_none() {
            return ended(0, None);
        }
        if seen.pod.is_none() && job.spec.as_ref().and_then(|s| s.parallelism) == Some(0) {
            return ended(
                NEVER_RAN,
                Some(failure(
                    FailureReason::JobFailed,
                    "the Job was stopped before its pod ran".to_string(),
                    None,
                )),
            );
        }
    }
    Progress::Going
}

/// How long a pod may keep failing to mount a volume before the task fails (mounts of
/// secrets and claims often succeed on a retry).
pub const MOUNT_PATIENCE: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn job(v: serde_json::Value) -> Job {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn event(kind: &str, reason: &str, message: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "e"}, "involvedObject": {},
            "type": kind, "reason": reason, "message": message,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn steps() -> Vec<StepNote> {
        vec![
            StepNote {
                title: "clone 1/1: https://example.com/r.git".into(),
                reason: FailureReason::WorkspaceSetup,
            },
            StepNote {
                title: "setup 1/1: make".into(),
                reason: FailureReason::SetupCommand,
            },
        ]
    }

    fn see(job: Option<&Job>, pod: Option<&Pod>, events: &[Event], age: u64) -> Progress {
        let steps = steps();
        progress(&Seen {
            job,
            pod,
            events,
            steps: &steps,
            pod_age: Duration::from_secs(age),
            unschedulable_timeout: Duration::from_secs(600),
        })
    }

    fn terminated(code: i64, reason: &str) -> serde_json::Value {
        json!({"terminated": {"exitCode": code, "reason": reason}})
    }

    fn reason_of(p: &Progress) -> Option<(FailureReason, Option<i64>)> {
        match p {
            Progress::Ended {
                failure: Some(f), ..
            } => Some((f.reason, f.exit_code)),
            _ => None,
        }
    }

    #[test]
    fn a_running_or_pending_pod_is_going() {
        let running = pod(json!({"status": {"phase": "Running", "containerStatuses": [
            {"name": "task", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}));
        assert_eq!(see(None, Some(&running), &[], 5), Progress::Going);
        assert_eq!(see(None, None, &[], 0), Progress::Going);
    }

    #[test]
    fn the_task_containers_exit_is_the_status_oom_included() {
        for (state, code, oom) in [
            (terminated(0, "Completed"), 0, false),
            (terminated(3, "Error"), 3, false),
            (terminated(137, "OOMKilled"), 137, true),
            (
                json!({"terminated": {"exitCode": 0, "signal": 15}}),
                143,
                false,
            ),
        ] {
            let p = pod(json!({"status": {"phase": "Failed", "containerStatuses": [
                {"name": "task", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}}));
            assert_eq!(
                see(None, Some(&p), &[], 5),
                Progress::Ended {
                    status: ExitStatus {
                        code,
                        oom_killed: oom
                    },
                    failure: None
                }
            );
        }
    }

    #[test]
    fn disruptions_are_the_clusters_doing() {
        for (reason, expect) in [
            ("PreemptionByScheduler", FailureReason::PodPreempted),
            ("EvictionByEvictionAPI", FailureReason::Evicted),
            ("TerminationByKubelet", FailureReason::Evicted),
            ("DeletionByTaintManager", FailureReason::Evicted),
        ] {
            let p = pod(json!({"status": {"phase": "Failed",
                "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "m"}],
                "containerStatuses": [{"name": "task", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": terminated(143, "Error")}]}}));
            assert_eq!(
                reason_of(&see(None, Some(&p), &[], 5)),
                Some((expect, None)),
                "{reason}"
            );
        }
        let kubelet = pod(
            json!({"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}}),
        );
        assert_eq!(
            reason_of(&see(None, Some(&kubelet), &[], 5)),
            Some((FailureReason::Evicted, None))
        );
        // A disruption still under way does not end the task yet.
        let pending = pod(json!({"status": {"phase": "Running",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]}}));
        assert_eq!(see(None, Some(&pending), &[], 5), Progress::Going);
    }

    #[test]
    fn failed_steps_and_sidecar_copies_name_themselves() {
        let p = pod(
            json!({"status": {"phase": "Failed", "initContainerStatuses": [
            {"name": "step-0", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": terminated(0, "Completed")},
            {"name": "step-1", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": terminated(2, "Error")}]}}),
        );
        let got = see(None, Some(&p), &[], 5);
        assert_eq!(
            reason_of(&got),
            Some((FailureReason::SetupCommand, Some(2)))
        );
        let Progress::Ended {
            failure: Some(f), ..
        } = got
        else {
            panic!()
        };
        assert!(
            f.detail.starts_with("setup 1/1: make exited with status 2"),
            "{}",
            f.detail
        );
        let clone = pod(
            json!({"status": {"phase": "Failed", "initContainerStatuses": [
            {"name": "step-0", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": terminated(127, "Error")}]}}),
        );
        assert_eq!(
            reason_of(&see(None, Some(&clone), &[], 5)),
            Some((FailureReason::WorkspaceSetup, Some(127)))
        );
        let sidecar = pod(
            json!({"status": {"phase": "Failed", "initContainerStatuses": [
            {"name": "sidecar-0", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": terminated(1, "Error")}]}}),
        );
        assert_eq!(
            reason_of(&see(None, Some(&sidecar), &[], 5)),
            Some((FailureReason::SidecarPrep, Some(1)))
        );
    }

    #[test]
    fn image_problems_carry_the_registrys_words() {
        for (why, expect) in [
            ("ErrImagePull", FailureReason::ImagePull),
            ("ImagePullBackOff", FailureReason::ImagePull),
            ("InvalidImageName", FailureReason::InvalidImage),
            ("CreateContainerConfigError", FailureReason::ContainerCreate),
        ] {
            let p = pod(json!({"status": {"phase": "Pending", "containerStatuses": [
                {"name": "task", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": why, "message": "pull access denied for x"}}}]}}));
            let got = see(None, Some(&p), &[], 5);
            assert_eq!(reason_of(&got), Some((expect, None)), "{why}");
            let Progress::Ended {
                failure: Some(f),
                status,
            } = got
            else {
                panic!()
            };
            assert!(
                f.detail.contains("pull access denied for x"),
                "{}",
                f.detail
            );
            assert_eq!(status.code, NEVER_RAN);
        }
        let waiting = pod(json!({"status": {"phase": "Pending", "containerStatuses": [
            {"name": "task", "image": "", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}}]}}));
        assert_eq!(see(None, Some(&waiting), &[], 5), Progress::Going);
    }

    #[test]
    fn unschedulable_only_past_the_timeout() {
        let p = pod(json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient memory."}]}}));
        assert_eq!(see(None, Some(&p), &[], 599), Progress::Going);
        let got = see(None, Some(&p), &[], 600);
        assert_eq!(reason_of(&got), Some((FailureReason::Unschedulable, None)));
        let Progress::Ended {
            failure: Some(f), ..
        } = got
        else {
            panic!()
        };
        assert!(f.detail.contains("Insufficient memory"), "{}", f.detail);
    }

    #[test]
    fn a_pod_the_cluster_refused_fails_at_once_from_the_jobs_event() {
        let j = job(json!({"metadata": {"name": "j"}, "status": {}}));
        let refused = [event(
            "Warning",
            "FailedCreate",
            "Error creating: pods \"j-x\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found",
        )];
        let got = see(Some(&j), None, &refused, 0);
        assert_eq!(
            reason_of(&got),
            Some((FailureReason::ContainerCreate, None))
        );
        let Progress::Ended {
            failure: Some(f), ..
        } = got
        else {
            panic!()
        };
        assert!(
            f.detail.contains("RuntimeClass \"gvisor\" not found"),
            "{}",
            f.detail
        );
        let normal = [event("Normal", "SuccessfulCreate", "Created pod: j-x")];
        assert_eq!(see(Some(&j), None, &normal, 0), Progress::Going);
    }

    #[test]
    fn mounts_get_patience_then_fail() {
        let p = pod(json!({"status": {"phase": "Pending"}}));
        let ev = [event(
            "Warning",
            "FailedMount",
            "MountVolume.SetUp failed for volume \"creds\": secret \"creds\" not found",
        )];
        assert_eq!(see(None, Some(&p), &ev, 30), Progress::Going);
        assert_eq!(
            reason_of(&see(None, Some(&p), &ev, 120)),
            Some((FailureReason::VolumeMount, None))
        );
    }

    #[test]
    fn job_conditions_end_a_job_without_a_pod() {
        let deadline = job(json!({"metadata": {"name": "j"}, "status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}}));
        assert_eq!(
            reason_of(&see(Some(&deadline), None, &[], 0)),
            Some((FailureReason::ActiveDeadline, None))
        );
        let failed = job(json!({"metadata": {"name": "j"}, "status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}));
        assert_eq!(
            reason_of(&see(Some(&failed), None, &[], 0)),
            Some((FailureReason::JobFailed, None))
        );
        let complete = job(json!({"metadata": {"name": "j"}, "status": {"conditions": [
            {"type": "Complete", "status": "True"}]}}));
        assert_eq!(see(Some(&complete), None, &[], 0), ended(0, None));
        let stopped = job(
            json!({"metadata": {"name": "j"}, "spec": {"parallelism": 0, "template": {}}, "status": {}}),
        );
        assert_eq!(
            reason_of(&see(Some(&stopped), None, &[], 0)),
            Some((FailureReason::JobFailed, None))
        );
        let pod_deadline = pod(
            json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded",
            "message": "Pod was active on the node longer than the specified deadline"}}),
        );
        assert_eq!(
            reason_of(&see(None, Some(&pod_deadline), &[], 5)),
            Some((FailureReason::ActiveDeadline, None))
        );
    }
}
