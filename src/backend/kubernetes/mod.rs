//! The Kubernetes backend: one `batch/v1` Job per execution, driven through the API server
//! with kube's client (rustls, no exec or attach).
//!
//! A sandbox id is `<job name>/<job uid>`: created suspended, journaled, then resumed; every
//! delete carries the UID as a precondition, so a Job made again under the same name is never
//! mistaken for berth's. Provisioning (sidecar copies, clones, setup commands) runs as init
//! containers before the task's; output is read from `pods/log` ([`output`]); a stop lowers the
//! pod's `activeDeadlineSeconds` so the kubelet ends it and keeps its log; removal deletes the
//! Job in the foreground once capture has drained. See docs/kubernetes.md.

pub mod access;
pub mod classify;
pub mod client;
pub mod details;
pub mod job;
pub mod log;
pub mod names;
mod output;
pub mod usage;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use tracing::{info, warn};

use self::classify::{Progress, StepNote};
use self::client::{Cluster, bounded, bounded_opt, code};
use self::names::{Ids, job_name, parse_sandbox_id, sandbox_id};
use super::{
    Backend, BackendError, Caps, ExecutionRef, ExitStatus, ImageInfo, LogStream, Owned, UsageSample,
};
use crate::config::{KubernetesBackend as Settings, PullPolicy};
use crate::failure::Failure;
use crate::spec::image::ImageRef;
use crate::spec::owner::{LABEL_INSTANCE, Owner};
use crate::spec::{Network, SandboxSpec};

/// Annotation holding the provisioning steps' titles and reasons (JSON), so a berth that
/// reattaches names a failed step as the one that started it would.
pub const ANNOTATION_STEPS: &str = "berth.dev/steps";

/// The Kubernetes backend.
pub struct KubernetesBackend {
    inner: Arc<Inner>,
}

/// What the backend's calls and its output readers share.
struct Inner {
    cluster: Cluster,
    settings: Settings,
    jobs: Api<Job>,
    pods: Api<Pod>,
    events: Api<Event>,
    /// How each ended sandbox ended, where the engine said more than an exit status.
    ends: parking_lot::Mutex<HashMap<String, Failure>>,
    /// The cluster ignored `suspend` once (Kubernetes < 1.21): said once in the log.
    no_suspend_said: std::sync::atomic::AtomicBool,
    /// Each running sandbox's pod, as the wait last saw it (for usage readings).
    pods_seen: parking_lot::Mutex<HashMap<String, String>>,
    /// Each sandbox's usage so far, from the metrics API.
    used: parking_lot::Mutex<HashMap<String, usage::Integral>>,
    /// When each sandbox's metrics were last asked for.
    tried: parking_lot::Mutex<HashMap<String, std::time::Instant>>,
}

impl KubernetesBackend {
    /// Connects (no request yet: `ping` checks the API server).
    pub async fn connect(settings: Settings) -> Result<KubernetesBackend, BackendError> {
        let cluster = client::connect(&settings).await?;
        let ns = cluster.namespace.clone();
        let c = cluster.client.clone();
        Ok(KubernetesBackend {
            inner: Arc::new(Inner {
                jobs: Api::namespaced(c.clone(), &ns),
                pods: Api::namespaced(c.clone(), &ns),
                events: Api::namespaced(c, &ns),
                cluster,
                settings,
                ends: parking_lot::Mutex::new(HashMap::new()),
                no_suspend_said: std::sync::atomic::AtomicBool::new(false),
                pods_seen: parking_lot::Mutex::new(HashMap::new()),
                used: parking_lot::Mutex::new(HashMap::new()),
                tried: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The namespace the Jobs run in.
    pub fn namespace(&self) -> &str {
        &self.inner.cluster.namespace
    }

    /// The API server's address.
    pub fn url(&self) -> &str {
        &self.inner.cluster.url
    }

    /// The kube client (for `berth verify`).
    pub fn client(&self) -> kube::Client {
        self.inner.cluster.client.clone()
    }
}

/// A Job of ours as berth last saw it, with its pod.
struct Look {
    job: Option<Job>,
    pod: Option<Pod>,
    /// The pod list's version (a watch for changes starts there).
    version: String,
}

fn uid_of(job: &Job) -> Option<&str> {
    job.metadata.uid.as_deref()
}

fn owner_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        })
}

/// Told to make no pod (berth's stop of a Job whose pod never ran).
fn stopped(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.parallelism) == Some(0)
}

impl Inner {
    /// The Job (only with the expected UID) and its newest pod.
    async fn look(&self, name: &str, uid: Option<&str>) -> Result<Look, BackendError> {
        let job = bounded_opt("reading the Job", self.jobs.get(name)).await?;
        let job = job.filter(|j| uid.is_none_or(|u| uid_of(j) == Some(u)));
        let lp = ListParams::default().labels(&format!("job-name={name}"));
        let list = bounded("listing the Job's pods", self.pods.list(&lp)).await?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let want = uid.or_else(|| job.as_ref().and_then(uid_of));
        let pod = list
            .items
            .into_iter()
            .filter(|p| want.is_none_or(|u| owner_uid(p) == Some(u)))
            .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        Ok(Look { job, pod, version })
    }

    /// Events about the Job and its pod (Warnings are what classification reads).
    async fn events_of(&self, look: &Look) -> Vec<Event> {
        let mut out = Vec::new();
        let uids = [
            look.job.as_ref().and_then(uid_of),
            look.pod.as_ref().and_then(|p| p.metadata.uid.as_deref()),
        ];
        for uid in uids.into_iter().flatten() {
            let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
            match bounded("listing events", self.events.list(&lp)).await {
                Ok(l) => out.extend(l.items),
                Err(e) => {
                    warn!(error = %e, "cannot read the Job's events; classifying without them")
                }
            }
        }
        out
    }

    fn steps_of(job: Option<&Job>) -> Vec<StepNote> {
        job.and_then(|j| j.metadata.annotations.as_ref()?.get(ANNOTATION_STEPS))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    /// Where the execution stands (events read only while they can matter).
    async fn progress(&self, look: &Look) -> Progress {
        let pod_age = look
            .pod
            .as_ref()
            .and_then(|p| p.metadata.creation_timestamp.as_ref())
            .map(|t| {
                let born = t.0.as_second();
                let now = chrono::Utc::now().timestamp();
                Duration::from_secs(u64::try_from(now - born).unwrap_or(0))
            })
            .unwrap_or_default();
        // Events say what no field does only for a pod the cluster has not created
        // (FailedCreate) or one stuck mounting past its patience (FailedMount).
        let pending = look
            .pod
            .as_ref()
            .map(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"));
        let events = match pending {
            None => self.events_of(look).await,
            Some(true) if pod_age >= classify::MOUNT_PATIENCE => self.events_of(look).await,
            Some(_) => Vec::new(),
        };
        let steps = Self::steps_of(look.job.as_ref());
        let mut p = classify::progress(&classify::Seen {
            job: look.job.as_ref(),
            pod: look.pod.as_ref(),
            events: &events,
            steps: &steps,
            pod_age,
            unschedulable_timeout: self.settings.unschedulable_timeout,
        });
        if let Progress::Ended {
            failure: Some(f), ..
        } = &mut p
        {
            let source = if look.pod.is_some() {
                "pod_watch"
            } else {
                "job_watch"
            };
            f.details = Some(Box::new(details::details(
                look.job.as_ref(),
                look.pod.as_ref(),
                &events,
                source,
                chrono::Utc::now(),
            )));
        }
        p
    }

    /// Deletes a Job in the foreground (its pods first), only if it still has `uid`.
    async fn delete_job(&self, name: &str, uid: Option<&str>) -> Result<(), BackendError> {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: uid.map(|u| Preconditions {
                uid: Some(u.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match tokio::time::timeout(client::CALL_TIMEOUT, self.jobs.delete(name, &dp)).await {
            Ok(Ok(_)) => Ok(()),
            // Gone already, or a Job of the same name that is not this one: nothing of ours.
            Ok(Err(e)) if matches!(code(&e), Some(404 | 409)) => Ok(()),
            Ok(Err(e)) => Err(client::api_error("deleting the Job", e)),
            Err(_) => Err(BackendError::Api {
                op: "deleting the Job",
                reason: "no answer".into(),
            }),
        }
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn engine_name(&self) -> &'static str {
        client::ENGINE
    }

    fn caps(&self) -> Caps {
        Caps {
            live: false,
            in_place: false,
            split_streams: false,
            // Pods run on while the API server is away.
            outage_stops_tasks: false,
        }
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let c = &self.inner.cluster;
        match tokio::time::timeout(Duration::from_secs(5), c.client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BackendError::Unreachable {
                engine: client::ENGINE,
                at: c.url.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(BackendError::Unreachable {
                engine: client::ENGINE,
                at: c.url.clone(),
                reason: "no answer within 5 s".into(),
            }),
        }
    }

    async fn runtimes(&self) -> Result<Vec<String>, BackendError> {
        let api: Api<k8s_openapi::api::node::v1::RuntimeClass> =
            Api::all(self.inner.cluster.client.clone());
        let list = bounded("listing RuntimeClasses", api.list(&ListParams::default())).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|r| r.metadata.name)
            .collect())
    }

    async fn prepare_image(
        &self,
        image: &ImageRef,
        _policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, BackendError> {
        // The kubelet pulls, following backend.kubernetes.image_pull_policy; its failures end
        // the task with the registry's words (classify).
        if let Some(p) = progress {
            let policy = self.inner.settings.image_pull_policy.as_str();
            let _ = p
                .send(format!(
                    "the node's kubelet pulls {image} (imagePullPolicy {policy})"
                ))
                .await;
        }
        Ok(ImageInfo {
            id: image.to_string(),
            repo_digest: None,
            entrypoint: Vec::new(),
            user: String::new(),
        })
    }

    async fn prepare_sidecar(
        &self,
        image: &ImageRef,
        _policy: PullPolicy,
    ) -> Result<String, BackendError> {
        // Copied into the pod's own volume by an init container (job.rs).
        Ok(image.to_string())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, BackendError> {
        let inner = &self.inner;
        if !matches!(spec.network, Network::Engine(_)) {
            return Err(BackendError::Api {
                op: "creating the Job",
                reason: "egress none and allowlist are not enforced on the Kubernetes backend yet (NetworkPolicy with a proven canary is not built): the task is refused rather than run unrestricted; use egress open for Kubernetes tasks, or the Docker backend".into(),
            });
        }
        let ids = Ids::from_labels(&spec.labels);
        let name = job_name(&ids.task_id, &ids.execution_id);
        let mut value = job::job(&name, spec, &inner.settings);
        if !spec.steps.is_empty() {
            let notes: Vec<StepNote> = spec
                .steps
                .iter()
                .map(|s| StepNote {
                    title: s.title.clone(),
                    reason: s.reason,
                })
                .collect();
            value["metadata"]["annotations"][ANNOTATION_STEPS] =
                serde_json::json!(serde_json::to_string(&notes).unwrap_or_default());
        }
        let job: Job = serde_json::from_value(value).map_err(|e| BackendError::Api {
            op: "building the Job",
            reason: e.to_string(),
        })?;
        let made = match tokio::time::timeout(
            client::CALL_TIMEOUT,
            inner.jobs.create(&PostParams::default(), &job),
        )
        .await
        {
            Ok(Ok(j)) => j,
            Ok(Err(e)) if code(&e) == Some(409) => {
                // A retried create whose first answer was lost: ours only if it says so.
                let found = bounded("reading the Job", inner.jobs.get(&name)).await?;
                let theirs = found.metadata.labels.clone().unwrap_or_default();
                let notes = found.metadata.annotations.clone().unwrap_or_default();
                let seen = Ids::from_object(&theirs, &notes);
                if seen.execution_id != ids.execution_id || seen.instance != ids.instance {
                    return Err(BackendError::Api {
                        op: "creating the Job",
                        reason: format!(
                            "a Job named {name} exists and belongs to another execution or berth; it is left alone"
                        ),
                    });
                }
                found
            }
            Ok(Err(e)) => return Err(client::api_error("creating the Job", e)),
            Err(_) => {
                return Err(BackendError::Api {
                    op: "creating the Job",
                    reason: "no answer".into(),
                });
            }
        };
        let uid = uid_of(&made).unwrap_or_default().to_string();
        let suspended = made.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        if !suspended
            && !inner
                .no_suspend_said
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(job = %name, "this cluster ignores suspended Jobs (Kubernetes before 1.21): a Job starts when it is created, before berth journals it; a berth killed in between finds it at its next start and removes it as an orphan");
        }
        info!(job = %name, uid = %uid, "Job created");
        Ok(sandbox_id(&name, &uid))
    }

    async fn find(
        &self,
        owner: &Owner,
        execution_id: &str,
    ) -> Result<Option<String>, BackendError> {
        let sel = format!(
            "{},{LABEL_INSTANCE}={}",
            names::execution_selector(&owner.worker_id, execution_id),
            owner.instance
        );
        let list = bounded(
            "listing Jobs",
            self.inner.jobs.list(&ListParams::default().labels(&sel)),
        )
        .await?;
        Ok(list.items.iter().find_map(|j| {
            let name = j.metadata.name.as_deref()?;
            Some(sandbox_id(name, uid_of(j)?))
        }))
    }

    async fn start(&self, id: &str) -> Result<(), BackendError> {
        let (name, uid) = parse_sandbox_id(id);
        let job = bounded("reading the Job", self.inner.jobs.get(name)).await?;
        if uid.is_some_and(|u| uid_of(&job) != Some(u)) {
            return Err(BackendError::Api {
                op: "starting the Job",
                reason: format!("the Job {name} was replaced by another of the same name"),
            });
        }
        let patch = serde_json::json!({ "spec": { "suspend": false } });
        bounded(
            "starting the Job",
            self.inner
                .jobs
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
        Ok(())
    }

    async fn address(
        &self,
        id: &str,
        _network: &str,
    ) -> Result<Option<std::net::IpAddr>, BackendError> {
        let (name, uid) = parse_sandbox_id(id);
        let look = self.inner.look(name, uid).await?;
        Ok(look
            .pod
            .and_then(|p| p.status?.pod_ip)
            .and_then(|ip| ip.parse().ok()))
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, BackendError> {
        watch::wait(&self.inner, id).await
    }

    async fn state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, BackendError> {
        let (name, uid) = parse_sandbox_id(id);
        let look = self.inner.look(name, uid).await?;
        if look.job.is_none() && look.pod.is_none() {
            return Ok(None);
        }
        Ok(Some(match self.inner.progress(&look).await {
            Progress::Going => (
                true,
                ExitStatus {
                    code: 0,
                    oom_killed: false,
                },
            ),
            Progress::Ended { status, failure } => {
                if let Some(f) = failure {
                    self.inner.ends.lock().insert(id.to_string(), f);
                }
                (false, status)
            }
        }))
    }

    fn output(&self, id: &str, follow: bool, since: i64) -> LogStream {
        output::stream(self.inner.clone(), id.to_string(), follow, since)
    }

    async fn usage(&self, id: &str) -> Result<Option<UsageSample>, BackendError> {
        let inner = &self.inner;
        let Some(pod) = inner.pods_seen.lock().get(id).cloned() else {
            return Ok(None);
        };
        let sample = |i: usage::Integral| UsageSample {
            cpu_ns: i.cpu_ns as u64,
            memory: i.memory as u64,
            memory_max: Some(i.peak as u64),
            read_bytes: 0,
            write_bytes: 0,
            rx_bytes: 0,
            tx_bytes: 0,
        };
        let before = inner.used.lock().get(id).copied();
        // At most one reading a window, whether or not the last one found metrics.
        let last_try = inner.tried.lock().get(id).copied();
        if last_try.is_some_and(|t| t.elapsed() < usage::READ_EVERY) {
            return Ok(before.map(sample));
        }
        let now = std::time::Instant::now();
        inner.tried.lock().insert(id.to_string(), now);
        let path = format!(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods/{pod}",
            inner.cluster.namespace
        );
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| BackendError::Api {
                op: "reading pod metrics",
                reason: e.to_string(),
            })?;
        // No metrics API (no metrics-server) or no reading yet: no usage, not an error.
        let Some(metrics) = bounded_opt(
            "reading pod metrics",
            inner.cluster.client.request::<serde_json::Value>(req),
        )
        .await?
        else {
            return Ok(None);
        };
        let Some((cpu, memory)) = usage::pod_usage(&metrics) else {
            return Ok(None);
        };
        let window = metrics
            .get("window")
            .and_then(|w| w.as_str())
            .and_then(|w| humantime::parse_duration(w).ok())
            .unwrap_or(usage::READ_EVERY);
        let i = match before {
            Some(b) => b.next(now, cpu, memory),
            None => usage::Integral::first(now, cpu, memory, window),
        };
        inner.used.lock().insert(id.to_string(), i);
        Ok(Some(sample(i)))
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), BackendError> {
        let inner = &self.inner;
        let (name, uid) = parse_sandbox_id(id);
        let look = inner.look(name, uid).await?;
        let Some(pod) = look.pod else {
            // No pod yet: no more may be made (the Job is removed at cleanup).
            if look.job.as_ref().is_some_and(|j| !finished(j)) {
                let patch = serde_json::json!({ "spec": { "parallelism": 0 } });
                bounded(
                    "stopping the Job",
                    inner
                        .jobs
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await?;
            }
            return Ok(());
        };
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(());
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        if !bound {
            // Not on a node yet: nothing has run, so nothing is lost by deleting it; and no
            // other pod may be made in its place (a cluster before 1.26 replaces a deleted one).
            if look.job.as_ref().is_some_and(|j| !finished(j)) {
                let patch = serde_json::json!({ "spec": { "parallelism": 0 } });
                bounded(
                    "stopping the Job",
                    inner
                        .jobs
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await?;
            }
            let dp = DeleteParams {
                preconditions: pod.metadata.uid.clone().map(|u| Preconditions {
                    uid: Some(u),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let _ = bounded_opt("deleting the pod", inner.pods.delete(&pod_name, &dp)).await?;
            return Ok(());
        }
        // The kubelet ends a pod past its deadline (SIGTERM, the grace period, SIGKILL) and
        // keeps it, with its log: the field may only be lowered, and 1 s is long past.
        let patch = serde_json::json!({ "spec": { "activeDeadlineSeconds": 1 } });
        // A pod gone already is stopped.
        bounded_opt(
            "stopping the pod",
            inner
                .pods
                .patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        let (name, uid) = parse_sandbox_id(id);
        self.inner.ends.lock().remove(id);
        self.inner.pods_seen.lock().remove(id);
        self.inner.used.lock().remove(id);
        self.inner.tried.lock().remove(id);
        self.inner.delete_job(name, uid).await
    }

    async fn gone(
        &self,
        owner: &Owner,
        execution: ExecutionRef<'_>,
        known: Option<&str>,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let sel = names::execution_selector(&owner.worker_id, execution.execution_id);
        let lp = ListParams::default().labels(&sel);
        let jobs = bounded("listing the execution's Jobs", inner.jobs.list(&lp)).await?;
        let known = known.map(parse_sandbox_id);
        let ours = |labels: Option<&std::collections::BTreeMap<String, String>>| {
            labels.and_then(|l| l.get(LABEL_INSTANCE)) == Some(&owner.instance)
        };
        // Only this berth's: another instance's objects of the execution (which should not
        // exist) are neither deleted nor waited for.
        let mut left = 0;
        for j in &jobs.items {
            let name = j.metadata.name.as_deref().unwrap_or_default();
            let mine = ours(j.metadata.labels.as_ref())
                || known.is_some_and(|(n, u)| n == name && u.is_none_or(|u| uid_of(j) == Some(u)));
            if mine {
                inner.delete_job(name, uid_of(j)).await?;
                left += 1;
            }
        }
        let pods = bounded("listing the execution's pods", inner.pods.list(&lp)).await?;
        let pods_left = pods
            .items
            .iter()
            .filter(|p| ours(p.metadata.labels.as_ref()))
            .count();
        if left == 0 && pods_left == 0 {
            return Ok(());
        }
        Err(BackendError::Api {
            op: "closing the execution",
            reason: format!(
                "{left} Job(s) and {pods_left} pod(s) of the execution still exist (deletion is under way)"
            ),
        })
    }

    async fn list(&self, worker_id: &str) -> Result<Vec<Owned>, BackendError> {
        let lp = ListParams::default().labels(&names::worker_selector(worker_id));
        let jobs = bounded("listing Jobs", self.inner.jobs.list(&lp)).await?;
        Ok(jobs
            .items
            .iter()
            .filter_map(|j| {
                let labels = j.metadata.labels.clone().unwrap_or_default();
                let notes = j.metadata.annotations.clone().unwrap_or_default();
                let ids = Ids::from_object(&labels, &notes);
                Some(Owned {
                    id: sandbox_id(j.metadata.name.as_deref()?, uid_of(j)?),
                    task_id: ids.task_id,
                    execution_id: ids.execution_id,
                    instance: Some(ids.instance).filter(|i| !i.is_empty()),
                    running: !finished(j) && j.metadata.deletion_timestamp.is_none(),
                })
            })
            .collect())
    }

    async fn end_cause(&self, id: &str) -> Option<Failure> {
        self.inner.ends.lock().get(id).cloned()
    }
}
