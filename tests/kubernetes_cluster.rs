//! The Kubernetes backend on a real cluster: opt-in, run only when `BERTH_TEST_KUBECONFIG`
//! names a kubeconfig (CI starts a Kubernetes 1.20 built from Debian's source package:
//! scripts/kube-cluster, docs/test-cluster.md; an operator can point it at a cluster of
//! their own). Skipped, saying so, otherwise.
//!
//! What a real API server and kubelet prove that the fake cannot: pod logs as the kubelet
//! really serves them (timestamps, pieces of long lines, merged streams, the last fragment),
//! the `activeDeadlineSeconds` stop keeping the log, deletes fenced by UID, exit codes and the
//! OOM killer. Each test works in a namespace of its own, removed at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use berth::devserver::ControlPlane;
use berth::devserver::execution::ExecutionRecord;
use berth::devserver::state::{SubmitRequest, TaskRecord, TaskState};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use support::{Berth, control_plane, stop, worker_id, worker_process_with};

/// The image the tests' pods run (present on the nodes; never pulled).
const IMAGE: &str = "berth-kube-busybox:test";

/// A namespace of the test's own on the operator's cluster, and a berth configured for it.
struct Real {
    client: kube::Client,
    namespace: String,
    kubeconfig: String,
    cp: ControlPlane,
    state: tempfile::TempDir,
    id: String,
}

impl Real {
    /// `None` (and a note on stderr) without `BERTH_TEST_KUBECONFIG`.
    async fn start(name: &str) -> Option<Real> {
        let Ok(kubeconfig) = std::env::var("BERTH_TEST_KUBECONFIG") else {
            eprintln!("skipped: set BERTH_TEST_KUBECONFIG to run the real-cluster tests");
            return None;
        };
        berth::control::tls::install_default_provider();
        let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let namespace = format!("berth-{}-{}", name, std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"berth.test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Some(Real {
            client,
            namespace,
            kubeconfig,
            cp: control_plane("proc-key", true, None).await,
            state: tempfile::tempdir().unwrap(),
            id: worker_id(name),
        })
    }

    fn yaml(&self) -> String {
        format!(
            "backend:\n  kind: kubernetes\n  kubernetes:\n    kubeconfig: {}\n    namespace: {}\n    default_image: {IMAGE}\n    image_pull_policy: Never\n    stop_grace_period: 3s\n",
            self.kubeconfig, self.namespace
        )
    }

    fn berth(&self) -> Berth {
        let state = self.state.path().join("state");
        Berth(worker_process_with(
            &self.cp,
            &self.id,
            &state,
            &[],
            &self.yaml(),
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("state.log")).unwrap_or_default()
    }

    fn submit(&self, script: &str) -> TaskRecord {
        self.cp.submit(SubmitRequest {
            image: Some(IMAGE.into()),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..SubmitRequest::default()
        })
    }

    fn execution(&self, t: &TaskRecord) -> ExecutionRecord {
        self.cp
            .task(&t.id)
            .and_then(|r| r.execution(&t.execution_id).cloned())
            .unwrap()
    }

    fn output(&self, t: &TaskRecord) -> String {
        let all = self
            .cp
            .execution_transcript(&t.execution_id)
            .unwrap_or_default();
        String::from_utf8_lossy(&all)
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("[berth]"))
            .collect()
    }

    async fn until(&self, what: &str, within: Duration, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + within;
        while !cond() {
            if std::time::Instant::now() > deadline {
                let log = self.log();
                panic!(
                    "timed out waiting for {what}\nberth's log:\n{}",
                    &log[log.len().saturating_sub(8000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finished(&self, t: &TaskRecord) -> ExecutionRecord {
        self.until("the task's result", Duration::from_secs(180), || {
            self.execution(t).state.is_terminal()
        })
        .await;
        self.execution(t)
    }

    /// Jobs and pods left in the namespace.
    async fn left(&self) -> (usize, usize) {
        let jobs = Api::<Job>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap();
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap();
        (jobs.items.len(), pods.items.len())
    }

    async fn removed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.left().await != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "Jobs or pods left: {:?}",
                self.left().await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn finish(self, w: Berth) {
        stop(w);
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        self.cp.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_output_arrives_byte_for_byte_and_the_job_is_removed() {
    let Some(r) = Real::start("bytes").await else {
        return;
    };
    let w = r.berth();
    let long = "y".repeat(40_000);
    let t = r.submit(&format!(
        "echo first; echo {long}; echo; sleep 1; echo to stderr >&2; sleep 1; printf 'last, no newline'"
    ));
    let x = r.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}\n{}", r.log());
    let out = r.output(&t);
    assert!(
        out.contains(&format!("first\n{long}\n\n")),
        "the long line joined from the kubelet's pieces: {}",
        &out[..out.len().min(400)]
    );
    assert!(out.contains("to stderr\n"), "{out:.200}");
    assert_eq!(
        out.matches("\nlast, no newline").count(),
        1,
        "the last fragment, once: {:?}",
        &out[out.len().saturating_sub(80)..]
    );
    assert_eq!(out.matches("first").count(), 1, "nothing doubled");
    r.removed().await;
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_cancel_stops_the_pod_by_its_deadline_and_keeps_what_it_printed() {
    let Some(r) = Real::start("cancel").await else {
        return;
    };
    let w = r.berth();
    let t =
        r.submit("trap 'echo got TERM; exit 143' TERM; echo started; while true; do sleep 1; done");
    r.until("the task started", Duration::from_secs(120), || {
        r.output(&t).contains("started\n")
    })
    .await;
    r.cp.cancel(&t.id).unwrap();
    let x = r.finished(&t).await;
    assert_eq!(x.state, TaskState::Cancelled, "{x:?}");
    assert!(
        r.output(&t).contains("got TERM\n"),
        "what the task printed after SIGTERM is in the transcript: {}",
        r.output(&t)
    );
    r.until("execution_closed", Duration::from_secs(120), || {
        r.execution(&t).closed >= 1
    })
    .await;
    assert_eq!(r.left().await, (0, 0), "closed only once nothing is left");
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_exit_status_and_the_oom_killer_are_reported() {
    let Some(r) = Real::start("exits").await else {
        return;
    };
    let w = r.berth();
    let t = r.submit("echo failing; exit 3");
    let x = r.finished(&t).await;
    assert_eq!(
        (x.state, x.exit_code),
        (TaskState::Failed, Some(3)),
        "{x:?}"
    );
    // `tail` keeps a line of /dev/zero (no newline ever comes) until the memory limit.
    let oom = r.cp.submit(SubmitRequest {
        image: Some(IMAGE.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo filling; tail /dev/zero".into(),
        ],
        instance_shape: Some(berth::protocol::InstanceShape {
            vcpus: None,
            memory_gb: Some(1),
        }),
        ..SubmitRequest::default()
    });
    let x = r.finished(&oom).await;
    assert_eq!(
        x.failure_reason.as_deref(),
        Some("container_oom"),
        "{x:?}\n{}",
        r.log()
    );
    r.removed().await;
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_berth_killed_mid_task_reattaches_with_nothing_lost_or_doubled() {
    let Some(r) = Real::start("reattach").await else {
        return;
    };
    let w = r.berth();
    let t = r.submit("echo one; sleep 3; echo two; sleep 3; echo three");
    r.until("the first line", Duration::from_secs(120), || {
        r.output(&t).contains("one\n")
    })
    .await;
    stop(w);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let w = r.berth();
    let x = r.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}\n{}", r.log());
    let out = r.output(&t);
    assert!(out.contains("one\ntwo\nthree\n"), "{out}");
    for word in ["one", "two", "three"] {
        assert_eq!(out.matches(word).count(), 1, "{word} once: {out}");
    }
    r.removed().await;
    r.finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_deletes_are_fenced_by_the_jobs_uid() {
    use berth::backend::Backend;
    let Some(r) = Real::start("uid").await else {
        return;
    };
    let b =
        berth::backend::kubernetes::KubernetesBackend::connect(berth::config::KubernetesBackend {
            kubeconfig: Some(r.kubeconfig.clone().into()),
            namespace: Some(r.namespace.clone()),
            image_pull_policy: berth::config::ImagePullPolicy::Never,
            ..berth::config::KubernetesBackend::default()
        })
        .await
        .unwrap();
    let mut labels = berth::spec::owner::Owner::new("w1", "i1").labels();
    labels.insert(berth::spec::LABEL_TASK.into(), "t1".into());
    labels.insert(berth::spec::LABEL_EXECUTION.into(), "e1".into());
    let spec = berth::spec::SandboxSpec {
        image: IMAGE.into(),
        command: vec!["sleep".into(), "30".into()],
        hold: None,
        env: Vec::new(),
        workdir: "/workspace".into(),
        labels,
        limits: Default::default(),
        sidecars: Vec::new(),
        volumes: Vec::new(),
        security: Default::default(),
        network: berth::spec::Network::Engine("bridge".into()),
        steps: Vec::new(),
    };
    let id = b.create(&spec).await.unwrap();
    let (name, _) = berth::backend::kubernetes::names::parse_sandbox_id(&id);
    let stale =
        berth::backend::kubernetes::names::sandbox_id(name, "00000000-0000-0000-0000-000000000000");
    b.remove(&stale).await.unwrap();
    assert_eq!(
        r.left().await.0,
        1,
        "a delete fenced by another UID leaves the Job alone"
    );
    b.remove(&id).await.unwrap();
    let owner = berth::spec::owner::Owner::new("w1", "i1");
    let execution = berth::backend::ExecutionRef {
        task_id: "t1",
        execution_id: "e1",
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while b.gone(&owner, execution, Some(&id)).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "still there: {:?}",
            r.left().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(r.left().await, (0, 0));
    let _ = Api::<Namespace>::all(r.client.clone())
        .delete(&r.namespace, &DeleteParams::default())
        .await;
}
