//! The Kubernetes backend end to end: the real berth binary, its real kube client over HTTPS,
//! against the fake apiserver of the test support (`support::kubeapi`: Jobs, pods, a
//! simulated kubelet with pods/log's quirks, watches, deletes with preconditions, outages) and
//! the embedded control plane. No Docker involved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use berth::backend::fake::Script;
use berth::devserver::ControlPlane;
use berth::devserver::execution::ExecutionRecord;
use berth::devserver::state::{SubmitRequest, TaskRecord, TaskState};
use berth::protocol::Stream;
use serde_json::Value;
use support::kubeapi::FakeApiserver;
use support::{Berth, control_plane, stop, until, worker_id, worker_process_with};

const IMAGE: &str = "registry.example/busybox:test";

/// A control plane, a fake cluster, and the config that points berth at it.
struct Cluster {
    cp: ControlPlane,
    api: FakeApiserver,
    state: tempfile::TempDir,
    id: String,
    yaml: String,
}

impl Cluster {
    async fn start(name: &str, extra: &str) -> Cluster {
        berth::control::tls::install_default_provider();
        let api = FakeApiserver::start().await;
        let state = tempfile::tempdir().unwrap();
        let kubeconfig = state.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "berth").unwrap();
        let yaml = format!(
            "backend:\n  kind: kubernetes\n  kubernetes:\n    kubeconfig: {}\n    default_image: {IMAGE}\n    stop_grace_period: 2s\n{extra}",
            kubeconfig.display()
        );
        Cluster {
            cp: control_plane("proc-key", true, None).await,
            api,
            id: worker_id(name),
            state,
            yaml,
        }
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.state.path().join("state")
    }

    fn berth(&self) -> Berth {
        Berth(worker_process_with(
            &self.cp,
            &self.id,
            &self.state_dir(),
            &[],
            &self.yaml,
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir().with_extension("log")).unwrap_or_default()
    }

    fn submit(&self, script: &str) -> TaskRecord {
        self.cp.submit(SubmitRequest {
            image: Some(IMAGE.into()),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..SubmitRequest::default()
        })
    }

    async fn finished(&self, t: &TaskRecord) -> ExecutionRecord {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.execution(t).state.is_terminal() {
            if std::time::Instant::now() > deadline {
                let log = self.log();
                panic!(
                    "no result: {:?}\nevents: {:?}\nberth's log:\n{}",
                    self.execution(t),
                    self.api
                        .events()
                        .iter()
                        .find(|e| e["reason"] == "FailedCreate")
                        .map(|e| (
                            e.to_string(),
                            serde_json::from_value::<k8s_openapi::api::core::v1::Event>(e.clone())
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        )),
                    &log[log.len().saturating_sub(6000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.execution(t)
    }

    fn execution(&self, t: &TaskRecord) -> ExecutionRecord {
        self.cp
            .task(&t.id)
            .and_then(|r| r.execution(&t.execution_id).cloned())
            .unwrap()
    }

    fn transcript(&self, t: &TaskRecord) -> String {
        String::from_utf8_lossy(
            &self
                .cp
                .execution_transcript(&t.execution_id)
                .unwrap_or_default(),
        )
        .into_owned()
    }

    /// The execution's Jobs and pods the cluster still has.
    fn left(&self, t: &TaskRecord) -> (usize, usize) {
        let hash = berth::backend::kubernetes::names::hash(&t.execution_id);
        let of_it = |objs: Vec<Value>| {
            objs.into_iter()
                .filter(|o| o["metadata"]["labels"]["oz-execution-hash"] == hash.as_str())
                .count()
        };
        (of_it(self.api.jobs()), of_it(self.api.pods()))
    }

    /// Waits until the cluster has nothing of the execution left (removed once its output
    /// was captured).
    async fn removed(&self, t: &TaskRecord) {
        until("the Job and its pod removed", || self.left(t) == (0, 0)).await;
    }

    /// Waits for `execution_closed` of a cancelled execution, and checks the cluster then had
    /// no Job and no pod of it.
    async fn closed(&self, t: &TaskRecord) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.execution(t).closed == 0 {
            if std::time::Instant::now() > deadline {
                let log = self.log();
                panic!(
                    "no execution_closed; left {:?}\nberth's log:\n{}",
                    self.left(t),
                    &log[log.len().saturating_sub(6000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            self.left(t),
            (0, 0),
            "execution_closed while the cluster still has the execution's Job or pods"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(self.execution(t).closed, 1, "execution_closed exactly once");
    }
}

/// The task's own output in a transcript: everything but berth's `[berth]` lines.
fn output_of(transcript: &str) -> String {
    transcript
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("[berth]"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_a_job_and_its_output_arrives_byte_for_byte() {
    let c = Cluster::start("k8s-bytes", "").await;
    let w = c.berth();
    let long = "x".repeat(40_000);
    let t = c.submit(&format!(
        "echo first; echo to stderr >&2; echo {long}; echo; echo -n 'last, no newline'"
    ));
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}\n{}", c.log());
    let out = output_of(&c.transcript(&t));
    assert!(
        out.contains(&format!("first\nto stderr\n{long}\n\nlast, no newline")),
        "the task's output, merged, pieces joined, final fragment kept:\n{}",
        &out[..out.len().min(600)]
    );
    assert_eq!(out.matches("first").count(), 1, "nothing doubled");
    c.removed(&t).await;
    // The Job berth made: suspended at create, Oz's labels, the owner label, raw ids.
    let created: Vec<_> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.resource == "jobs" && r.verb == "create")
        .collect();
    assert_eq!(created.len(), 1, "one Job per execution");
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_reports_its_exit_status_and_an_oom_its_reason() {
    let c = Cluster::start("k8s-exit", "").await;
    c.api.kubelet().image(
        "registry.example/oom:1",
        Script::new().prints(Stream::Stdout, "allocating\n").oom(),
    );
    let w = c.berth();
    let t = c.submit("echo failing; exit 3");
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Failed, "{x:?}");
    assert_eq!(x.exit_code, Some(3), "{x:?}");
    let oom = c.cp.submit(SubmitRequest {
        image: Some("registry.example/oom:1".into()),
        command: vec!["run".into()],
        ..SubmitRequest::default()
    });
    let x = c.finished(&oom).await;
    assert_eq!(x.failure_reason.as_deref(), Some("container_oom"), "{x:?}");
    assert!(c.transcript(&oom).contains("allocating\n"));
    c.removed(&t).await;
    c.removed(&oom).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_the_cluster_causes_are_classified_from_its_fields() {
    let c = Cluster::start("k8s-classes", "    unschedulable_timeout: 2s\n").await;
    c.api.kubelet().missing_image("registry.example/missing:1");
    let w = c.berth();
    let pull = c.cp.submit(SubmitRequest {
        image: Some("registry.example/missing:1".into()),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    });
    let x = c.finished(&pull).await;
    assert_eq!(x.failure_reason.as_deref(), Some("image_pull"), "{x:?}");
    assert!(
        x.message
            .as_deref()
            .unwrap_or_default()
            .contains("registry.example/missing:1"),
        "the registry's words: {x:?}"
    );
    c.removed(&pull).await;

    // More memory than the node has: unschedulable, past the (short) timeout.
    let big = c.cp.submit(SubmitRequest {
        image: Some(IMAGE.into()),
        command: vec!["true".into()],
        instance_shape: Some(berth::protocol::InstanceShape {
            vcpus: None,
            memory_gb: Some(4096),
        }),
        ..SubmitRequest::default()
    });
    let x = c.finished(&big).await;
    assert_eq!(x.failure_reason.as_deref(), Some("unschedulable"), "{x:?}");
    assert!(
        x.message
            .as_deref()
            .unwrap_or_default()
            .contains("Insufficient memory"),
        "{x:?}"
    );
    // The Go worker's structured account, with the pod's PodScheduled condition.
    let k = &x.failure_details.as_ref().expect("failure_details")["kubernetes"];
    assert_eq!(k["schema_version"], 1, "{k}");
    let scheduled = k["pod"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned());
    assert_eq!(
        scheduled.map(|c| c["reason"].clone()),
        Some("Unschedulable".into()),
        "{k}"
    );
    c.removed(&big).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_cluster_refuses_fails_the_task_in_seconds() {
    // The template names a RuntimeClass the cluster does not have: the Job controller cannot
    // create the pod, and says so only in FailedCreate events on the Job.
    let c = Cluster::start(
        "k8s-refused",
        "    pod_template:\n      runtimeClassName: gvisor\n",
    )
    .await;
    let w = c.berth();
    let t = c.submit("echo never");
    let began = std::time::Instant::now();
    let x = c.finished(&t).await;
    assert_eq!(
        x.failure_reason.as_deref(),
        Some("container_create"),
        "{x:?}"
    );
    assert!(
        x.message
            .as_deref()
            .unwrap_or_default()
            .contains("RuntimeClass"),
        "{x:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "failed at once, not at the Job's deadline ({:?})",
        began.elapsed()
    );
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_pod_keeps_its_output_and_closes_the_execution() {
    let c = Cluster::start("k8s-cancel", "").await;
    let w = c.berth();
    let t = c.submit("echo started; sleep infinity");
    until("running", || c.transcript(&t).contains("started\n")).await;
    c.cp.cancel(&t.id).unwrap();
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Cancelled, "{x:?}");
    c.closed(&t).await;
    // Stopped through the pod's deadline (its log kept), not by deleting it first.
    let patched_pod = c
        .api
        .requests()
        .iter()
        .any(|r| r.resource == "pods" && r.verb == "patch");
    assert!(
        patched_pod,
        "the stop lowers the pod's activeDeadlineSeconds"
    );
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_killed_mid_task_reattaches_and_loses_or_doubles_nothing() {
    let c = Cluster::start("k8s-reattach", "").await;
    let w = c.berth();
    let t = c.submit("echo one; sleep 2; echo two; sleep 2; echo three");
    until("first line", || c.transcript(&t).contains("one\n")).await;
    stop(w);
    // The pod runs on without berth.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = c.berth();
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}\n{}", c.log());
    let out = output_of(&c.transcript(&t));
    assert!(out.contains("one\ntwo\nthree\n"), "{out}");
    for word in ["one", "two", "three"] {
        assert_eq!(out.matches(word).count(), 1, "{word} exactly once: {out}");
    }
    assert_eq!(x.terminal_distinct, 1, "one result across the kill");
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_loses_no_output_and_fails_no_task() {
    let c = Cluster::start("k8s-outage", "").await;
    let w = c.berth();
    let t = c.submit("echo before; sleep 3; echo during; sleep 3; echo after");
    until("running", || c.transcript(&t).contains("before\n")).await;
    c.api.down().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.api.up().await;
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}\n{}", c.log());
    let out = output_of(&c.transcript(&t));
    assert!(out.contains("before\nduring\nafter\n"), "{out}");
    assert_eq!(out.matches("during").count(), 1, "{out}");
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_steps_run_as_init_containers_with_their_output_first() {
    let env_yaml = "environments:\n  build:\n    setup:\n      - echo setting up\n      - exit 4\n";
    let c = Cluster::start("k8s-steps", "").await;
    let mut c = c;
    c.yaml = format!("{}{env_yaml}default_environment: build\n", c.yaml);
    let w = c.berth();
    let t = c.submit("echo task ran");
    let x = c.finished(&t).await;
    assert_eq!(
        x.failure_reason.as_deref(),
        Some("setup_command"),
        "{x:?}\n{}",
        c.log()
    );
    assert_eq!(x.exit_code, Some(4), "{x:?}");
    assert!(
        x.message
            .as_deref()
            .unwrap_or_default()
            .contains("setup 2/2"),
        "{x:?}"
    );
    let out = c.transcript(&t);
    assert!(out.contains("setting up\n"), "{out}");
    assert!(!out.contains("task ran"), "{out}");
    c.removed(&t).await;
    stop(w);
}

/// The backend on its own against the fake (component tier): what the binary's tests above
/// cannot look inside.
mod component {
    use super::*;
    use berth::backend::Backend;
    use berth::backend::kubernetes::KubernetesBackend;
    use berth::config::KubernetesBackend as Settings;
    use berth::spec::owner::Owner;
    use berth::spec::{LABEL_EXECUTION, LABEL_TASK, Network, SandboxSpec};

    pub(super) async fn backend(
        api: &FakeApiserver,
        dir: &std::path::Path,
        settings: Settings,
    ) -> KubernetesBackend {
        berth::control::tls::install_default_provider();
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "berth").unwrap();
        KubernetesBackend::connect(Settings {
            kubeconfig: Some(kubeconfig),
            ..settings
        })
        .await
        .unwrap()
    }

    pub(super) fn spec(command: &[&str], execution: &str) -> SandboxSpec {
        let mut labels = Owner::new("w1", "i1").labels();
        labels.insert(LABEL_TASK.into(), format!("task-{execution}"));
        labels.insert(LABEL_EXECUTION.into(), execution.into());
        SandboxSpec {
            image: IMAGE.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            hold: None,
            env: Vec::new(),
            workdir: "/workspace".into(),
            labels,
            limits: Default::default(),
            sidecars: Vec::new(),
            volumes: Vec::new(),
            security: Default::default(),
            network: Network::Engine("bridge".into()),
            steps: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closure_waits_for_this_berths_objects_only() {
        let api = FakeApiserver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let b = backend(&api, dir.path(), Settings::default()).await;
        let id = b.create(&spec(&["sleep", "30"], "e1")).await.unwrap();
        b.start(&id).await.unwrap();
        // Another instance's Job carrying the same execution (it should never exist, and must
        // neither be deleted nor block the closure).
        let mut theirs = spec(&["sleep", "30"], "e1");
        theirs
            .labels
            .insert("berth.instance".into(), "other-instance".into());
        theirs
            .labels
            .insert(berth::spec::LABEL_TASK.into(), "another-task".into());
        let other = b.create(&theirs).await.unwrap();
        b.start(&other).await.unwrap();
        let owner = Owner::new("w1", "i1");
        let execution = berth::backend::ExecutionRef {
            task_id: "task-e1",
            execution_id: "e1",
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while let Err(e) = b.gone(&owner, execution, Some(&id)).await {
            assert!(std::time::Instant::now() < deadline, "never closed: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let names: Vec<String> = api
            .jobs()
            .iter()
            .filter_map(|j| j["metadata"]["name"].as_str().map(String::from))
            .collect();
        let (other_name, _) = berth::backend::kubernetes::names::parse_sandbox_id(&other);
        assert_eq!(
            names,
            [other_name.to_string()],
            "the other instance's Job is left alone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_pod_ends_the_wait_with_the_clusters_words() {
        let api = FakeApiserver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            pod_template: Some(serde_json::json!({"runtimeClassName": "gvisor"})),
            ..Settings::default()
        };
        let b = backend(&api, dir.path(), settings).await;
        let id = b.create(&spec(&["true"], "e1")).await.unwrap();
        b.start(&id).await.unwrap();
        let st = tokio::time::timeout(Duration::from_secs(20), b.wait(&id))
            .await
            .expect("the wait ends in seconds")
            .unwrap();
        assert_eq!(st.code, berth::backend::kubernetes::classify::NEVER_RAN);
        let f = b.end_cause(&id).await.expect("a cause");
        assert_eq!(f.reason, berth::failure::FailureReason::ContainerCreate);
        assert!(
            f.detail.contains("RuntimeClass \"gvisor\" not found"),
            "{}",
            f.detail
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_asks_the_api_server_for_every_permission_berth_uses() {
    let c = Cluster::start("k8s-verify", "").await;
    let config = c.state.path().join("verify.yaml");
    std::fs::write(
        &config,
        format!("worker_id: {}\napi:\n  listen: off\n{}", c.id, c.yaml),
    )
    .unwrap();
    let verify = || {
        std::process::Command::new(support::BIN)
            .args(["verify", "--config", config.to_str().unwrap()])
            .args([
                "--control-plane-url",
                &c.cp.ws_url(),
                "--api-key",
                "proc-key",
            ])
            .args(["--state-dir", c.state_dir().to_str().unwrap()])
            .output()
            .unwrap()
    };
    let good = verify();
    let text = String::from_utf8_lossy(&good.stdout).into_owned();
    assert_eq!(good.status.code(), Some(0), "{text}");
    for check in ["kubernetes", "permissions", "policy"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check} in:\n{text}"
        );
    }
    assert!(
        !text.contains("docker"),
        "no Docker check on a cluster:\n{text}"
    );
    c.api.deny("delete", "batch", "jobs");
    c.api.deny("get", "", "pods/log");
    let bad = verify();
    let text = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_ne!(bad.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("permissions"))
        .unwrap_or_default();
    assert!(
        line.contains("delete batch/jobs")
            && line.contains("get pods/log")
            && line.contains("role.yaml"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_rotated_away_while_berth_was_down_is_announced_not_silent() {
    let c = Cluster::start("k8s-rotated", "").await;
    // The kubelet keeps only the current log file: rotation at 4 KiB.
    c.api.kubelet().rotate_at(4096);
    let w = c.berth();
    let burst: String = (0..12)
        .map(|i| format!("echo line-{i}-{}; ", "x".repeat(1000)))
        .collect();
    let t = c.submit(&format!("echo first; sleep 3; {burst} sleep 1; echo last"));
    until("first line", || c.transcript(&t).contains("first\n")).await;
    stop(w);
    // The burst is written and rotated away while no berth reads.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let w = c.berth();
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}");
    let text = c.transcript(&t);
    assert!(
        text.contains("first\n") && text.contains("last\n"),
        "{text}"
    );
    assert_eq!(text.matches("first\n").count(), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("[berth]") && l.contains("may be missing")),
        "the gap is announced in the transcript:\n{}",
        text.lines()
            .filter(|l| l.starts_with("[berth]"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_berths_with_one_worker_id_never_touch_each_others_jobs() {
    let c = Cluster::start("k8s-two", "").await;
    let a = c.berth();
    let t = c.submit("echo a; sleep 4; echo b");
    until("running on the first berth", || {
        c.transcript(&t).contains("a\n")
    })
    .await;
    // A second berth with the same worker id and its own state_dir (its own instance id)
    // reconciles at start: the first berth's Job is not its to touch.
    let other = c.state.path().join("other");
    let b = Berth(worker_process_with(&c.cp, &c.id, &other, &[], &c.yaml));
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}\n{}", c.log());
    assert!(output_of(&c.transcript(&t)).contains("a\nb\n"));
    let deletes_before_removal = c
        .api
        .requests()
        .iter()
        .filter(|r| r.resource == "jobs" && r.verb == "delete")
        .count();
    assert!(
        deletes_before_removal <= 1,
        "only the owner removes its Job, once"
    );
    c.removed(&t).await;
    stop(a);
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_this_berth_its_journal_does_not_know_is_reaped_at_start() {
    let c = Cluster::start("k8s-orphan", "").await;
    let w = c.berth();
    let t = c.submit("echo started; sleep infinity");
    until("running", || c.transcript(&t).contains("started\n")).await;
    stop(w);
    // The journal is lost (the instance id stays): the Job is this berth's, unknown to it.
    let state = c.state_dir();
    for f in std::fs::read_dir(&state).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("journal") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    assert_eq!(c.left(&t).0, 1);
    let w = c.berth();
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_or_evicted_pod_is_the_clusters_doing() {
    let c = Cluster::start("k8s-disrupt", "").await;
    let w = c.berth();
    for (how, reason) in [("preempt", "pod_preempted"), ("evict", "evicted")] {
        let t = c.submit("echo running; sleep infinity");
        until("running", || c.transcript(&t).contains("running\n")).await;
        let pod = c
            .api
            .pods()
            .into_iter()
            .find(|p| {
                p["metadata"]["labels"]["oz-execution-hash"]
                    == berth::backend::kubernetes::names::hash(&t.execution_id).as_str()
            })
            .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
            .unwrap();
        match how {
            "preempt" => c.api.preempt(&pod).unwrap(),
            _ => c.api.evict(&pod).unwrap(),
        }
        let x = c.finished(&t).await;
        assert_eq!(x.failure_reason.as_deref(), Some(reason), "{how}: {x:?}");
        let k = &x.failure_details.as_ref().expect("failure_details")["kubernetes"];
        let target = k["pod"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget").cloned());
        assert!(target.is_some(), "{how}: {k}");
        c.removed(&t).await;
    }
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_comes_from_the_metrics_api_where_the_cluster_has_one() {
    let c = Cluster::start("k8s-usage", "").await;
    // Half a core and 64 MiB, as metrics-server would report them.
    c.api.kubelet().metrics(true);
    c.api.kubelet().usage(500_000_000, 64 << 20);
    let w = c.berth();
    let t = c.submit("echo busy; sleep 3");
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}");
    let u = x.usage.expect("usage reported");
    assert_eq!(u.peak_memory_bytes, 64 << 20, "{u:?}");
    // One reading: the rate over one metrics window (an estimate, at that resolution).
    assert!(u.cpu_ms > 0, "{u:?}");
    let reads = c
        .api
        .requests()
        .iter()
        .filter(|r| r.group == "metrics.k8s.io")
        .count();
    assert!(
        reads <= 2,
        "at most a reading a window, not one a second: {reads}"
    );
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_of_a_long_line_sharing_its_timestamp_are_all_kept() {
    // Docker's json-file log (a kubelet with dockershim) gives every 16 KiB piece of a line the
    // line's time: the reader once took pieces 2..n for re-reads (found on a real cluster).
    let c = Cluster::start("k8s-shared-ts", "").await;
    c.api.kubelet().pieces_share_timestamp(true);
    let w = c.berth();
    let long = "z".repeat(50_000);
    let t = c.submit(&format!("echo before; echo {long}; echo after"));
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Succeeded, "{x:?}");
    let out = output_of(&c.transcript(&t));
    assert!(
        out.contains(&format!("before\n{long}\nafter\n")),
        "all {} bytes of the line: got {} bytes of output",
        long.len(),
        out.len()
    );
    c.removed(&t).await;
    stop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_task_whose_pod_waits_for_a_node_ends_it_and_no_pod_replaces_it() {
    let c = Cluster::start("k8s-cancel-pending", "").await;
    let w = c.berth();
    // More memory than the node has: the pod waits, unbound, for the (10 min) timeout.
    let t = c.cp.submit(SubmitRequest {
        image: Some(IMAGE.into()),
        command: vec!["true".into()],
        instance_shape: Some(berth::protocol::InstanceShape {
            vcpus: None,
            memory_gb: Some(4096),
        }),
        ..SubmitRequest::default()
    });
    until("its pod exists", || c.left(&t).1 == 1).await;
    c.cp.cancel(&t.id).unwrap();
    let x = c.finished(&t).await;
    assert_eq!(x.state, TaskState::Cancelled, "{x:?}");
    c.closed(&t).await;
    // The Job controller says each pod it makes (SuccessfulCreate on the Job).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods_made = c
        .api
        .events()
        .iter()
        .filter(|e| e["reason"] == "SuccessfulCreate")
        .count();
    assert_eq!(pods_made, 1, "no pod replaced the deleted one");
    stop(w);
}
