//! Behaviour of the worker end to end: the real library, the embedded control plane over a
//! real loopback WebSocket, and a real Docker engine for what a container does (exit codes,
//! OOM, limits, images, stops); what is about the protocol and the supervisor (hostile ids,
//! garbage frames, duplicates, capacity, reconnects, shutdown) runs on the fake backend, as
//! does what a task run does on a backend without live output or provisioning in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use berth::backend::fake::Op;
use berth::devserver::state::{SubmitRequest, TaskState};
use berth::failure::FailureReason;
use berth::protocol::{InstanceShape, ServerMessage, Stream, Task, TaskAssignment};
use support::*;

fn reason(t: &berth::devserver::state::TaskRecord) -> Option<&str> {
    t.failure_reason.as_deref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_that_exits_zero_is_completed_and_its_container_removed() {
    let env = Env::start("ok", EnvOptions::default()).await;
    let t = env.submit(&["sh", "-c", "echo hi; exit 0"]);
    let t = env.finished(&t.id).await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(t.message.as_deref(), Some("Task completed successfully"));
    assert_eq!(t.worker.as_deref(), Some(env.worker_id.as_str()));
    assert_eq!(t.claims, 1);
    assert!(
        containers_of_task(&t.id).is_empty(),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_is_a_failure_with_its_exit_code() {
    let env = Env::start("exit", EnvOptions::default()).await;
    let t = env.submit(&["sh", "-c", "exit 7"]);
    let t = env.finished(&t.id).await;
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(reason(&t), Some("container_exit"));
    assert_eq!(t.exit_code, Some(7));
    assert_eq!(
        t.message.as_deref(),
        Some("Failed to execute task: container exited with non-zero status: 7")
    );
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_memory_limit_is_reported_as_container_oom() {
    let env = Env::start("oom", EnvOptions::default()).await;
    // memory_gb is whole GiB; busybox tail buffers 1.5 GB to print the last 1.5 GB.
    let t = env.cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "head -c 2000000000 /dev/zero | tail -c 1500000000 > /dev/null".into(),
        ],
        instance_shape: Some(InstanceShape {
            vcpus: Some(1),
            memory_gb: Some(1),
        }),
        ..SubmitRequest::default()
    });
    let t = env.finished(&t.id).await;
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(reason(&t), Some("container_oom"), "{t:?}");
    assert!(t.exit_code.is_some_and(|c| c != 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_the_container_and_reports_cancelled() {
    let env = Env::start("cancel", EnvOptions::default()).await;
    let t = env.submit(&["sleep", "300"]);
    env.until("task running", || {
        env.cp
            .task(&t.id)
            .is_some_and(|t| t.state == TaskState::Running)
            && !containers_of_task(&t.id).is_empty()
    })
    .await;
    let started = std::time::Instant::now();
    env.cp.cancel(&t.id).unwrap();
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    assert_eq!(
        done.message.as_deref(),
        Some("Task cancelled by user request.")
    );
    // Docker's init is PID 1 and forwards SIGTERM: no waiting for the SIGKILL.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        containers_of_task(&t.id).is_empty(),
        "cancelled container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_of_an_unknown_task_is_ignored() {
    let env = Env::start_fake("cancel-unknown", EnvOptions::default()).await;
    assert!(env.cp.send_raw(
        &env.worker_id,
        r#"{"type":"task_cancellation","data":{"task_id":"never-seen"}}"#
    ));
    let t = env.submit(&["true"]);
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_rejects_and_the_task_runs_once_a_slot_frees() {
    let env = Env::start_fake(
        "capacity",
        EnvOptions {
            max_concurrent_tasks: 1,
            ..EnvOptions::default()
        },
    )
    .await;
    let first = env.submit(&["sleep", "2"]);
    env.until("first claimed", || {
        env.cp
            .task(&first.id)
            .is_some_and(|t| t.state == TaskState::Running)
    })
    .await;
    let second = env.submit(&["true"]);
    env.until("second rejected", || {
        env.cp.task(&second.id).is_some_and(|t| t.rejections >= 1)
    })
    .await;
    let a = env.finished(&first.id).await;
    let b = env.finished(&second.id).await;
    assert_eq!(
        (a.state, b.state),
        (TaskState::Succeeded, TaskState::Succeeded)
    );
    assert!(
        b.claimed_at >= a.finished_at,
        "second ran only after the first freed its slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_assignment_is_claimed_again_but_never_started_twice() {
    let env = Env::start_fake("dup", EnvOptions::default()).await;
    let t = env.submit(&["sleep", "3"]);
    env.until("running", || {
        !env.fake().sandboxes_of_task(&t.id).is_empty()
    })
    .await;
    let again = TaskAssignment {
        task_id: t.id.clone(),
        execution_id: Some(t.execution_id.clone()),
        task: Some(Task {
            id: t.id.clone(),
            ..Task::default()
        }),
        docker_image: Some(BUSYBOX.into()),
        command: Some(vec!["sleep".into(), "3".into()]),
        ..TaskAssignment::default()
    };
    assert!(env.cp.send_raw(
        &env.worker_id,
        &ServerMessage::TaskAssignment(Box::new(again)).encode()
    ));
    env.until("claimed twice", || {
        env.cp.task(&t.id).is_some_and(|t| t.claims == 2)
    })
    .await;
    assert_eq!(
        env.fake().sandboxes_of_task(&t.id).len(),
        1,
        "a second sandbox was created"
    );
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_unknown_types_and_oversized_messages_are_survived() {
    let env = Env::start_fake("garbage", EnvOptions::default()).await;
    for frame in [
        "not json at all",
        "{\"no_type\": 1}",
        "{\"type\":\"surprise_type\",\"data\":{}}",
        "{\"type\":\"task_cancellation\",\"data\":42}",
        "{\"type\":\"task_assignment\"}",
    ] {
        assert!(env.cp.send_raw(&env.worker_id, frame));
    }
    // A malformed assignment with a readable task id is answered with task_failed.
    assert!(env.cp.send_raw(
        &env.worker_id,
        r#"{"type":"task_assignment","data":{"task_id":"bad-1","instance_shape":{"vcpus":"lots"}}}"#
    ));
    env.until("task_failed for the malformed assignment", || {
        env.cp
            .unknown_task_messages()
            .contains(&("task_failed".to_string(), "bad-1".to_string()))
    })
    .await;
    // An assignment with no task object fails with a message, it does not crash the worker.
    assert!(env.cp.send_raw(
        &env.worker_id,
        r#"{"type":"task_assignment","data":{"task_id":"no-task-1"}}"#
    ));
    env.until("task_failed for the assignment without task", || {
        env.cp
            .unknown_task_messages()
            .contains(&("task_failed".to_string(), "no-task-1".to_string()))
    })
    .await;
    // Over max_message_size (16 MiB): the worker closes with 1009 and redials.
    let before = env
        .handle
        .session
        .handshakes
        .load(std::sync::atomic::Ordering::Relaxed);
    let big = format!("{{\"type\":\"x\",\"data\":\"{}\"}}", "a".repeat(17 << 20));
    assert!(env.cp.send_raw(&env.worker_id, &big));
    env.until("redialled after the oversized message", || {
        env.handle
            .session
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            > before
    })
    .await;
    let t = env.submit(&["true"]);
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_a_control_plane_restart_and_keeps_working() {
    let mut env = Env::start_fake("restart", EnvOptions::default()).await;
    let t = env.submit(&["true"]);
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    let addr = env.cp.addr();
    env.cp.shutdown();
    env.until("worker noticed", || {
        !env.handle
            .session
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    // A new server on the same address (state is lost, as with a real restart).
    let cp2 = control_plane(&env.api_key, true, Some(addr)).await;
    until("worker reconnected", || !cp2.workers().is_empty()).await;
    env.cp = cp2;
    let t = env.submit(&["sh", "-c", "exit 3"]);
    let done = env.finished(&t.id).await;
    assert_eq!((done.state, done.exit_code), (TaskState::Failed, Some(3)));
    env.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_with_pull_policy_never_fails_with_image_pull() {
    let env = Env::start("noimage", EnvOptions::default()).await;
    let t = env.cp.submit(SubmitRequest {
        image: Some("berth-test-does-not-exist:1".into()),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    });
    let t = env.finished(&t.id).await;
    assert_eq!(reason(&t), Some("image_pull"), "{t:?}");
    assert!(
        t.message
            .as_deref()
            .unwrap_or("")
            .contains("pull_policy is never"),
        "{t:?}"
    );
    let bad = env.cp.submit(SubmitRequest {
        image: Some("Not A Valid Image".into()),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    });
    let bad = env.finished(&bad.id).await;
    assert_eq!(
        reason(&bad),
        Some(FailureReason::InvalidImage.as_str()),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_timeout_stops_the_task_with_the_oz_message() {
    let env = Env::start("timeout", EnvOptions::default()).await;
    let t = env.cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        // A shell as the command: without an init as PID 1 it ignored SIGTERM and only the
        // SIGKILL after the grace period ended it (exit 137).
        command: vec!["sh".into(), "-c".into(), "sleep 300".into()],
        timeout_secs: Some(1),
        ..SubmitRequest::default()
    });
    let t = env.finished(&t.id).await;
    assert_eq!(reason(&t), Some("task_timeout"), "{t:?}");
    assert_eq!(t.message.as_deref(), Some(berth::protocol::MSG_TIMEOUT));
    assert_eq!(t.exit_code, Some(143), "SIGTERM must end the task: {t:?}");
    let transcript =
        String::from_utf8_lossy(&env.cp.transcript(&t.id).unwrap_or_default()).to_string();
    assert!(
        transcript.contains("[berth] stopping (time limit reached): SIGTERM, SIGKILL in "),
        "{transcript}"
    );
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_in_cancel_mode_stops_running_tasks_and_reports_graceful_shutdown() {
    let mut env = Env::start_fake(
        "shutdown",
        EnvOptions {
            yaml: "shutdown_mode: cancel\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.submit(&["sleep", "300"]);
    env.until("running", || {
        !env.fake().sandboxes_of_task(&t.id).is_empty()
    })
    .await;
    env.stop_worker().await;
    let done = env.cp.task(&t.id).unwrap();
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(reason(&done), Some("graceful_shutdown"));
    assert_eq!(
        done.message.as_deref(),
        Some(berth::protocol::MSG_INTERRUPTED)
    );
    assert!(
        env.fake().sandboxes().is_empty(),
        "sandboxes left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_always_runs_the_local_copy_when_the_pull_fails() {
    // The test image exists only locally, so every pull of it fails (no registry here, and
    // the name is unknown to any registry elsewhere).
    let env = Env::start(
        "always",
        EnvOptions {
            pull_policy: "always",
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.submit(&["true"]);
    let t = env.finished(&t.id).await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_gets_limits_labels_workdir_and_log_driver_and_no_cleanup_keeps_it() {
    let env = Env::start(
        "inspect",
        EnvOptions {
            overrides: berth::config::Overrides {
                no_cleanup: true,
                ..Default::default()
            },
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
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    let kept = containers_of_task(&t.id);
    assert_eq!(kept.len(), 1, "--no-cleanup must keep the exited container");
    let fmt = "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.Config.WorkingDir}} {{.HostConfig.LogConfig.Type}} {{index .Config.Labels \"berth.managed\"}} {{index .Config.Labels \"berth.worker_id\"}} {{index .Config.Labels \"berth.execution_id\"}} {{.HostConfig.Init}}";
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", fmt, &kept[0]])
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let gib2 = 2u64 << 30;
    assert_eq!(
        got,
        format!(
            "1000000000 {gib2} {gib2} /workspace local true {} {} true",
            env.worker_id, t.execution_id
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_create_no_file_outside_state_dir_and_fail_permanently() {
    let env = Env::start_fake("hostile-ids", EnvOptions::default()).await;
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display().to_string();
    let up = "../".repeat(12);
    let task = |id: &str| {
        serde_json::json!({"id": id, "title": "t", "task_definition": {"prompt": "p"},
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "owner": {"Type": "USER", "Id": 1}})
    };
    let long = "x".repeat(10_000);
    let cases: Vec<(String, Option<String>, &str)> = vec![
        (
            "ok-exec-rel".into(),
            Some(format!("{up}{o}/exec")),
            "execution_id",
        ),
        (
            "ok-exec-abs".into(),
            Some(format!("{o}/abs")),
            "execution_id",
        ),
        (format!("{up}{o}/task"), None, "task_id"),
        (format!("{o}/task-abs"), None, "task_id"),
        ("nul\u{0}id".into(), None, "task_id"),
        (long.clone(), None, "task_id"),
        (String::new(), None, "task_id is empty"),
    ];
    for (task_id, exec, _) in &cases {
        let mut data = serde_json::json!({"task_id": task_id, "task": task(task_id),
            "command": ["true"], "docker_image": BUSYBOX});
        if let Some(e) = exec {
            data["execution_id"] = serde_json::json!(e);
        }
        let frame = serde_json::json!({"type": "task_assignment", "data": data}).to_string();
        assert!(env.cp.send_raw(&env.worker_id, &frame));
    }
    for (task_id, _, field) in &cases {
        env.until("task_failed naming the field", || {
            env.cp
                .unknown_task_results()
                .iter()
                .any(|(k, t, m)| k == "task_failed" && t == task_id && m.contains(field))
        })
        .await;
    }
    // Permanent, not a capacity problem: nothing was rejected (a requeue would loop forever),
    // nothing claimed, and nothing written outside state_dir.
    let said = env.cp.unknown_task_results();
    assert!(
        !said
            .iter()
            .any(|(k, _, _)| k == "task_rejected" || k == "task_claimed"),
        "{said:?}"
    );
    let created: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(
        created.is_empty(),
        "files created outside state_dir: {created:?}"
    );
    let f = said
        .iter()
        .find(|(_, t, _)| t.starts_with("ok-exec-rel"))
        .map(|(_, _, m)| m.clone())
        .unwrap_or_default();
    assert!(
        f.contains("must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
        "the rule is named: {f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_live_output_both_streams_are_captured_from_the_backends_log() {
    let env = Env::start_fake("log-only", EnvOptions::default()).await;
    let (done, _) = env
        .run(SubmitRequest {
            image: Some(BUSYBOX.into()),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            ..SubmitRequest::default()
        })
        .await;
    assert_eq!((done.state, done.exit_code), (TaskState::Failed, Some(3)));
    let (runs, _) = env.cp.transcript_since(&done.id, 0).unwrap();
    let stream = |want: Stream| -> String {
        let bytes: Vec<u8> = runs
            .iter()
            .filter(|(_, s, _)| *s == want)
            .flat_map(|(_, _, b)| b.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    assert_eq!(stream(Stream::Stdout), "out\n");
    assert_eq!(stream(Stream::Stderr), "err\n");
    let fake = env.fake();
    assert!(fake.count(Op::Output) >= 1, "read from the log");
    assert_eq!(fake.count(Op::Attach), 0, "nothing attached live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_in_place_provisioning_runs_the_steps_before_the_task() {
    // The fake backend provisions as Kubernetes does: the steps are part of the sandbox (init
    // containers), run before the task's command, their output first.
    let env = Env::start_fake("no-in-place", EnvOptions::default()).await;
    let inline = serde_json::json!({"image": BUSYBOX, "setup": ["echo preparing"]});
    let (done, text) = env
        .run(SubmitRequest {
            image: Some(BUSYBOX.into()),
            command: vec!["sh".into(), "-c".into(), "echo TASK-RAN".into()],
            environment: Some(inline),
            ..SubmitRequest::default()
        })
        .await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let (setup, task) = (text.find("preparing\n"), text.find("TASK-RAN\n"));
    assert!(
        setup.is_some() && task.is_some() && setup < task,
        "the step's output, then the task's: {text}"
    );
    // A failing step ends the sandbox with the step's reason; the task never runs.
    let inline = serde_json::json!({"image": BUSYBOX, "setup": ["echo preparing", "exit 5"]});
    let (done, text) = env
        .run(SubmitRequest {
            image: Some(BUSYBOX.into()),
            command: vec!["sh".into(), "-c".into(), "echo TASK-RAN".into()],
            environment: Some(inline),
            ..SubmitRequest::default()
        })
        .await;
    assert_eq!(reason(&done), Some("setup_command"), "{done:?}");
    assert_eq!(done.exit_code, Some(5), "{done:?}");
    assert!(
        done.message
            .as_deref()
            .unwrap_or_default()
            .contains("setup 2/2"),
        "{done:?}"
    );
    assert!(!text.contains("TASK-RAN"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_during_an_outage_of_an_engine_that_keeps_sandboxes_is_the_tasks_own() {
    // The fake's outages do not stop its sandboxes (Caps::outage_stops_tasks is false), unlike
    // a dockerd restart: an exit seen after one is the task's, not the engine's doing.
    let env = Env::start_fake("outage-keeps", EnvOptions::default()).await;
    let t = env.submit(&["sh", "-c", "echo started; sleep infinity"]);
    env.until("running", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("started"))
    })
    .await;
    let fake = env.fake();
    let id = fake.sandboxes_of_task(&t.id)[0].id.clone();
    fake.set_reachable(false);
    let waits = fake.count(Op::State);
    fake.called(Op::State, waits + 1).await;
    fake.exit(&id, 143);
    fake.set_reachable(true);
    let done = env.finished(&t.id).await;
    assert_eq!(reason(&done), Some("container_exit"), "{done:?}");
    assert_eq!(done.exit_code, Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_runs_one_task_and_exits_with_its_status() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("oneshot");
    let _cleanup = Cleanup(id.clone());
    let task = |script: &str| {
        cp.submit(SubmitRequest {
            image: Some(BUSYBOX.into()),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..SubmitRequest::default()
        })
    };
    let first = task("echo one-shot; sleep 1; exit 7");
    let mut worker = worker_process(
        &cp,
        &id,
        state.path(),
        &["--one-shot", "--max-concurrent-tasks", "4"],
    );
    until("the task is claimed", || {
        cp.task(&first.id)
            .is_some_and(|t| t.state != TaskState::Queued)
    })
    .await;
    // Offered while the one task runs, and after: never run by this worker.
    let second = task("echo must-not-run");
    let status = tokio::task::spawn_blocking(move || worker.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "exits with the task's own exit code"
    );
    let t = cp.task(&first.id).unwrap();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(t.exit_code, Some(7));
    assert_eq!(
        t.terminal_distinct, 1,
        "its result was delivered before the worker left"
    );
    let s = cp.task(&second.id).unwrap();
    assert!(
        matches!(s.state, TaskState::Queued | TaskState::Assigned),
        "the second task stays with the server: {s:?}"
    );
    assert!(containers_of(&id).is_empty(), "no container left behind");
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_berths_with_one_worker_id_never_touch_each_others_tasks() {
    // Blue/green: berth A runs a task; berth B (same worker id, its own state_dir) starts and
    // restarts beside it. B's start-up reconcile must leave A's container alone.
    let _images = Images::acquire();
    let (cp_a, cp_b) = (
        control_plane("proc-key", true, None).await,
        control_plane("proc-key", true, None).await,
    );
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = worker_id("bluegreen");
    let _cleanup = Cleanup(id.clone());
    let task = cp_a.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo A-start; sleep 6; echo A-end".into(),
        ],
        ..SubmitRequest::default()
    });
    let mut a = worker_process(&cp_a, &id, state_a.path(), &[]);
    until("A's task prints", || {
        cp_a.transcript(&task.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("A-start"))
    })
    .await;
    for _ in 0..2 {
        let mut b = worker_process(&cp_b, &id, state_b.path(), &[]);
        until("B connected (its start-up reconcile done)", || {
            !cp_b.workers().is_empty()
        })
        .await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(b.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::task::spawn_blocking(move || b.wait().unwrap())
            .await
            .unwrap();
        until("B disconnected", || cp_b.workers().is_empty()).await;
    }
    let done = cp_a
        .wait(&task.id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    until("A's transcript complete", || {
        cp_a.task(&task.id).is_some_and(|t| t.complete())
    })
    .await;
    let text = String::from_utf8_lossy(&cp_a.transcript(&task.id).unwrap()).into_owned();
    assert!(text.contains("A-start\nA-end\n"), "{text}");
    let log_b = std::fs::read_to_string(state_b.path().with_extension("log")).unwrap();
    assert!(
        log_b.contains("another berth instance"),
        "B says it sees another instance's containers:\n{log_b}"
    );
    a.kill().unwrap();
    a.wait().unwrap();
    cp_a.shutdown();
    cp_b.shutdown();
}
