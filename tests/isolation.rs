//! Isolation of untrusted task code on real Docker: OCI runtimes (gVisor's `runsc`, which CI
//! installs and registers with the engine) chosen by policy and checked at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::InstanceShape;
use support::*;

fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn script(s: &str) -> SubmitRequest {
    SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), s.into()],
        ..SubmitRequest::default()
    }
}

fn runsc_policy(extra: &str) -> String {
    format!("    policy:\n      security:\n        runtime: runsc\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_the_engine_does_not_have_stops_berth_at_start_up() {
    let _images = Images::acquire();
    let id = worker_id("no-runtime");
    for docker_yaml in [
        "    policy:\n      security:\n        runtime: berth-no-such-runtime\n",
        "    policy:\n      security:\n        allowed_runtimes: [berth-no-such-runtime]\n",
    ] {
        let opts = EnvOptions {
            docker_yaml: docker_yaml.into(),
            ..EnvOptions::default()
        };
        let cfg = worker_config("ws://127.0.0.1:9/", &id, "k", &opts);
        let err = match berth::worker::Worker::prepare(cfg, None).await {
            Ok(_) => panic!("berth started with an unregistered runtime ({docker_yaml})"),
            Err(e) => e.to_string(),
        };
        for needle in ["berth-no-such-runtime", "runc", "daemon.json", "never"] {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("berth-test-{id}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_under_gvisor_with_their_transcript_limits_and_cancellation() {
    let env = Env::start(
        "gvisor",
        EnvOptions {
            docker_yaml: runsc_policy(""),
            ..EnvOptions::default()
        },
    )
    .await;
    // gVisor's kernel: its own version string and boot messages, not the host's.
    let (done, text) = env
        .run(SubmitRequest {
            instance_shape: Some(InstanceShape {
                vcpus: Some(1),
                memory_gb: Some(1),
            }),
            ..script("echo kernel=$(uname -r); dmesg | head -n 1; echo out; echo err >&2; exit 3")
        })
        .await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}\n{text}");
    assert_eq!(
        done.exit_code,
        Some(3),
        "the exit code survives the runtime"
    );
    assert!(
        text.contains("kernel=4.4.0\n"),
        "not gVisor's kernel:\n{text}"
    );
    assert!(
        text.contains("Starting gVisor"),
        "no gVisor boot line:\n{text}"
    );
    assert!(text.contains("out\n") && text.contains("err\n"), "{text}");

    // The runtime and the limits are the engine's, checked on the live container.
    let t = env.cp.submit(SubmitRequest {
        instance_shape: Some(InstanceShape {
            vcpus: Some(1),
            memory_gb: Some(1),
        }),
        ..script("echo started; sleep 60")
    });
    until("running", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("started"))
    })
    .await;
    let c = containers_of_task(&t.id);
    assert_eq!(c.len(), 1);
    assert_eq!(inspect(&c[0], "{{.HostConfig.Runtime}}"), "runsc");
    assert_eq!(inspect(&c[0], "{{.HostConfig.PidsLimit}}"), "4096");
    assert_eq!(inspect(&c[0], "{{.HostConfig.Memory}}"), "1073741824");
    assert_eq!(inspect(&c[0], "{{.HostConfig.NanoCpus}}"), "1000000000");
    env.cp.cancel(&t.id).unwrap();
    let cancelled = env.finished(&t.id).await;
    assert_eq!(cancelled.state, TaskState::Cancelled, "{cancelled:?}");
    until("closed", || {
        env.cp.task(&t.id).is_some_and(|t| t.closed == 1)
    })
    .await;
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_may_ask_for_a_runtime_only_the_policy_allows() {
    let env = Env::start(
        "env-runtime",
        EnvOptions {
            docker_yaml: "    policy:\n      security:\n        allowed_runtimes: [runsc]\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let with = |runtime: &str| SubmitRequest {
        environment: Some(serde_json::json!({"runtime": runtime})),
        ..script("echo kernel=$(uname -r)")
    };
    let (done, text) = env.run(with("runsc")).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    assert!(text.contains("kernel=4.4.0\n"), "{text}");
    // Without the environment's ask, the engine default (runc: the host's kernel).
    let (plain, text) = env.run(script("echo kernel=$(uname -r)")).await;
    assert_eq!(plain.state, TaskState::Succeeded);
    assert!(!text.contains("kernel=4.4.0\n"), "{text}");
    // An environment never widens policy: a runtime it does not allow fails before anything
    // is created, naming the runtime and the key to change.
    let (refused, _) = env.run(with("kata-runtime")).await;
    assert_eq!(refused.state, TaskState::Failed);
    assert_eq!(refused.failure_reason.as_deref(), Some("container_create"));
    let msg = refused.message.clone().unwrap_or_default();
    assert!(
        msg.contains("kata-runtime") && msg.contains("allowed_runtimes"),
        "{msg}"
    );
    assert!(containers_of_task(&refused.id).is_empty());
}
