//! Operator policy on real Docker: refusals before anything is pulled, and the settings and
//! limits a container really gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::InstanceShape;
use support::*;

fn transcript_text(env: &Env, id: &str) -> String {
    String::from_utf8_lossy(&env.cp.transcript(id).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_outside_allowed_images_are_refused_before_any_pull() {
    let env = Env::start(
        "allowed",
        EnvOptions {
            // `always` would pull: a refused image must never get that far.
            pull_policy: "always",
            docker_yaml: format!(
                "    policy:\n      allowed_images: ['docker.io/library/{}']\n",
                BUSYBOX
            ),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.cp.submit(SubmitRequest {
        image: Some("registry.example.com/team/tool:1".into()),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    });
    let done = env.finished(&t.id).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("invalid_image"),
        "{done:?}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("registry.example.com/team/tool:1") && msg.contains("allowed_images"),
        "{msg}"
    );
    until("transcript complete", || {
        env.cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    assert!(
        !transcript_text(&env, &t.id).contains("preparing image"),
        "a refused image must not be pulled"
    );
    // An allowed image runs.
    let ok = env.submit(&["true"]);
    assert_eq!(env.finished(&ok.id).await.state, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_inspect_shows_the_security_settings_and_limits() {
    let env = Env::start(
        "security",
        EnvOptions {
            overrides: berth::config::Overrides {
                no_cleanup: true,
                ..Default::default()
            },
            docker_yaml: "    policy:\n      security:\n        cap_drop: [NET_RAW, MKNOD]\n        cap_add: [SYS_PTRACE]\n        pids_limit: 100\n        read_only_rootfs: true\n        user: '65534:65534'\n        network: none\n      default_resources:\n        cpus: 0.5\n        memory: 256MiB\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.submit(&[
        "sh",
        "-c",
        "id -u; touch /x 2>/dev/null && echo writable || echo read-only",
    ]);
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let c = containers_of_task(&t.id);
    assert_eq!(c.len(), 1);
    let fmt = "{{.HostConfig.SecurityOpt}}|{{.HostConfig.CapDrop}}|{{.HostConfig.CapAdd}}|{{.HostConfig.PidsLimit}}|{{.HostConfig.ReadonlyRootfs}}|{{.Config.User}}|{{.HostConfig.NetworkMode}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.Memory}}|{{.HostConfig.MemorySwap}}|{{.HostConfig.Privileged}}";
    let out = Command::new("docker")
        .args(["inspect", "-f", fmt, &c[0]])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[no-new-privileges]|[NET_RAW MKNOD]|[SYS_PTRACE]|100|true|65534:65534|none|500000000|268435456|268435456|false"
    );
    until("transcript complete", || {
        env.cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    let text = transcript_text(&env, &t.id);
    assert!(text.contains("65534\nread-only\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_max_resources_is_refused_with_the_limit() {
    let env = Env::start(
        "maxres",
        EnvOptions {
            docker_yaml:
                "    policy:\n      max_resources:\n        cpus: 1\n        memory: 1GiB\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["true".into()],
        instance_shape: Some(InstanceShape {
            vcpus: Some(1),
            memory_gb: Some(2),
        }),
        ..SubmitRequest::default()
    });
    let done = env.finished(&t.id).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("container_create"),
        "{done:?}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("2 GiB") && msg.contains("max_resources.memory") && msg.contains("1 GiB"),
        "{msg}"
    );
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_timeout_stops_the_container_and_reports_task_timeout() {
    let env = Env::start(
        "ptimeout",
        EnvOptions {
            docker_yaml: "    policy:\n      timeout: 1s\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.submit(&["sleep", "300"]);
    let done = env.finished(&t.id).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("task_timeout"),
        "{done:?}"
    );
    assert_eq!(done.message.as_deref(), Some(berth::protocol::MSG_TIMEOUT));
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rejects_a_task_whose_memory_does_not_fit_until_another_ends() {
    // Hold back all host memory but 1.5 GiB: one 1 GiB task fits, a second does not.
    let host = berth::supervisor::capacity::Host::read();
    let reserve = host.memory - (3 << 29);
    let env = Env::start(
        "admission",
        EnvOptions {
            yaml: format!("admission:\n  reserve:\n    memory: {reserve}\n  min_free_disk: 0\n"),
            ..EnvOptions::default()
        },
    )
    .await;
    let one_gib = |script: &str| SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        instance_shape: Some(InstanceShape {
            vcpus: None,
            memory_gb: Some(1),
        }),
        ..SubmitRequest::default()
    };
    let first = env.cp.submit(one_gib("sleep 2"));
    until("first running", || {
        !containers_of_task(&first.id).is_empty()
    })
    .await;
    let second = env.cp.submit(one_gib("true"));
    until("second rejected", || {
        env.cp.task(&second.id).is_some_and(|t| t.rejections >= 1)
    })
    .await;
    assert!(
        containers_of_task(&second.id).is_empty(),
        "a rejected task must not start anything"
    );
    let a = env.finished(&first.id).await;
    let b = env.finished(&second.id).await;
    assert_eq!(
        (a.state, b.state),
        (TaskState::Succeeded, TaskState::Succeeded)
    );
    assert!(
        b.claimed_at >= a.finished_at,
        "the second ran only after the first ended"
    );
}
