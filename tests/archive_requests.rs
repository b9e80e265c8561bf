//! Debug-archive requests on the no-Docker tier (an in-process worker on the fake backend, the
//! embedded control plane and a loopback upload target, over real sockets): idempotency by
//! `request_id`, the disk budget, the end of the cleanup grace, and shutdown mid-upload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use berth::devserver::state::TaskRecord;
use serde_json::{Value, json};
use support::upload::{Answer, UploadTarget, ack_of, request, silent};
use support::*;

fn put(target: &UploadTarget, path: &str) -> Value {
    json!({"url": target.url(path), "method": "PUT"})
}

/// A worker whose snapshots go to their own directory, with `yaml` added.
async fn env(name: &str, capture: &std::path::Path, yaml: &str) -> Env {
    Env::start_fake(
        name,
        EnvOptions {
            yaml: format!(
                "debug_log_capture:\n  directory: {}\n{yaml}",
                capture.display()
            ),
            ..EnvOptions::default()
        },
    )
    .await
}

async fn ran(env: &Env) -> TaskRecord {
    let t = env.submit(&["sh", "-c", "echo one; echo two >&2"]);
    env.finished(&t.id).await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_replays_the_answer_without_a_second_upload_and_other_contents_are_refused() {
    let capture = tempfile::tempdir().unwrap();
    let env = env("arch-dup", capture.path(), "").await;
    let target = UploadTarget::start().await;
    let t = ran(&env).await;
    let frame = request(&t, "d1", put(&target, "/d1"), json!({}));
    env.cp.send_raw(&env.worker_id, &frame);
    let first = ack_of(&env.cp, "d1").await;
    assert_eq!(first.outcome, "uploaded", "{first:?}");
    env.cp.send_raw(&env.worker_id, &frame);
    env.until("the duplicate is answered", || {
        env.cp
            .archives()
            .iter()
            .any(|r| r.archive_id == "d1" && r.acks == 2)
    })
    .await;
    assert_eq!(ack_of(&env.cp, "d1").await, first, "the same answer again");
    assert_eq!(target.received_at("/d1").len(), 1, "uploaded once");
    // The same request_id with another bound is another request: refused.
    let other = request(
        &t,
        "d2",
        put(&target, "/d2"),
        json!({"request_id": "req-d1", "max_bytes": 4096}),
    );
    env.cp.send_raw(&env.worker_id, &other);
    let refused = ack_of(&env.cp, "d2").await;
    assert_eq!(refused.reason_code, "invalid_request");
    assert!(target.received_at("/d2").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_disk_budget_is_refused_and_a_smaller_one_fits() {
    let capture = tempfile::tempdir().unwrap();
    let env = env(
        "arch-budget",
        capture.path(),
        "  max_total_bytes: 1MiB\n  max_execution_bytes: 1MiB\n",
    )
    .await;
    let target = UploadTarget::start().await;
    let t = ran(&env).await;
    // Twice a 1 MiB bound does not fit a 1 MiB budget; twice 256 KiB does.
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "b1", put(&target, "/b1"), json!({})),
    );
    let a = ack_of(&env.cp, "b1").await;
    assert_eq!(
        (a.outcome.as_str(), a.reason_code.as_str()),
        ("failed", "request_capacity_exhausted")
    );
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "b2", put(&target, "/b2"), json!({"max_bytes": 262144})),
    );
    assert_eq!(ack_of(&env.cp, "b2").await.outcome, "uploaded");
    let m = env.metrics().await;
    assert!(
        m.contains("ownership=\"cleanup_grace\",outcome=\"failed\",reason=\"request_capacity_exhausted\"} 1"),
        "{m}"
    );
    assert!(!m.contains(&t.id), "no metric names an id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_the_former_owner_is_silent_again() {
    let capture = tempfile::tempdir().unwrap();
    let env = env("arch-grace", capture.path(), "idle_on_complete: 3s\n").await;
    let target = UploadTarget::start().await;
    let t = ran(&env).await;
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "g1", put(&target, "/g1"), json!({})),
    );
    assert_eq!(ack_of(&env.cp, "g1").await.outcome, "uploaded");
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "g2", put(&target, "/g2"), json!({})),
    );
    silent(&env.cp, "g2").await;
    assert!(target.received_at("/g2").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_the_upload_answers_worker_shutting_down() {
    let capture = tempfile::tempdir().unwrap();
    let mut env = env("arch-stop", capture.path(), "").await;
    let target = UploadTarget::start().await;
    let t = ran(&env).await;
    target.script(vec![Answer {
        status: 200,
        location: None,
        delay: Duration::from_secs(60),
    }]);
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "s1", put(&target, "/s1"), json!({})),
    );
    env.until("the upload is under way", || {
        !target.received_at("/s1").is_empty()
    })
    .await;
    env.stop_worker().await;
    let a = ack_of(&env.cp, "s1").await;
    assert_eq!(
        (a.outcome.as_str(), a.reason_code.as_str()),
        ("failed", "worker_shutting_down")
    );
    let left: Vec<_> = std::fs::read_dir(capture.path().join("oz-agent-worker/debug-logs"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the snapshot file goes with the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_outlives_its_retention_until_the_grace_ends() {
    let capture = tempfile::tempdir().unwrap();
    let env = env(
        "arch-keep",
        capture.path(),
        "transcript:\n  retention: 1s\nidle_on_complete: 8s\n",
    )
    .await;
    let target = UploadTarget::start().await;
    let t = ran(&env).await;
    let spool = std::env::temp_dir()
        .join(format!("berth-test-{}", env.worker_id))
        .join("transcripts")
        .join(format!("{}.spool", t.execution_id));
    env.until("the result is delivered", || {
        env.cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    // Retention (1 s) has passed a few times over; the grace (8 s) has not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(spool.exists(), "the spool is the capture during the grace");
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "k1", put(&target, "/k1"), json!({})),
    );
    let a = ack_of(&env.cp, "k1").await;
    assert_eq!(a.outcome, "uploaded", "{a:?}");
    assert!(String::from_utf8_lossy(&target.received_at("/k1")[0].body).contains("one"));
    env.until("the spool goes once the grace is over", || !spool.exists())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_the_run_snapshots_the_output_so_far_and_leaves_the_task_running() {
    let capture = tempfile::tempdir().unwrap();
    let env = env("arch-live", capture.path(), "").await;
    let target = UploadTarget::start().await;
    let t = env.submit(&["sh", "-c", "echo early; sleep 30; echo late"]);
    env.until("the first line is in", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("early"))
    })
    .await;
    env.cp.send_raw(
        &env.worker_id,
        &request(&t, "l1", put(&target, "/l1"), json!({})),
    );
    let a = ack_of(&env.cp, "l1").await;
    assert_eq!(a.outcome, "uploaded", "{a:?}");
    let body = String::from_utf8_lossy(&target.received_at("/l1")[0].body).into_owned();
    assert!(body.contains("early") && !body.contains("late"), "{body}");
    assert!(
        !env.cp.task(&t.id).unwrap().state.is_terminal(),
        "the task is not touched"
    );
    let m = env.metrics().await;
    assert!(
        m.contains("ownership=\"active\",outcome=\"uploaded\""),
        "{m}"
    );
    env.cp.cancel(&t.id).unwrap();
    env.finished(&t.id).await;
}
