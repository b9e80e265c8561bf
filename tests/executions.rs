//! Executions as the unit (PROTOCOL §7), end to end over real Docker and the dev control plane:
//! two executions of one run at once, execution-scoped and run-wide cancellation, and
//! `execution_closed` sent exactly once and only after `docker ps -a` no longer shows the
//! execution's container — across a SIGKILL of berth, an unreachable engine, and a repeated
//! cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use berth::devserver::ControlPlane;
use berth::devserver::execution::ExecutionRecord;
use berth::devserver::state::{CancelScope, SubmitRequest, TaskRecord, TaskState};
use support::*;

/// Containers (all states) labelled with one execution.
fn containers_of_execution(execution_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.execution_id={execution_id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn submit(cp: &ControlPlane, script: &str) -> TaskRecord {
    cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..SubmitRequest::default()
    })
}

fn execution(cp: &ControlPlane, task: &str, exec: &str) -> ExecutionRecord {
    cp.task(task)
        .and_then(|t| t.execution(exec).cloned())
        .unwrap_or_else(|| panic!("no execution {exec} of {task}"))
}

fn printed(cp: &ControlPlane, exec: &str, what: &str) -> bool {
    cp.execution_transcript(exec)
        .is_some_and(|b| String::from_utf8_lossy(&b).contains(what))
}

/// A worker talking to the engine through `proxy`, running one long task.
async fn running_behind(proxy: &Proxy, name: &str) -> (Env, TaskRecord) {
    let env = Env::start(
        name,
        EnvOptions {
            docker_yaml: format!("    host: {}\n", proxy.host()),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = submit(&env.cp, "echo start; sleep 120");
    until("running", || printed(&env.cp, &t.execution_id, "start")).await;
    (env, t)
}

/// Waits for the execution's first `execution_closed` and checks, at that moment, that the
/// engine no longer has its container: the closure must never overtake the removal.
async fn closed_after_removal(cp: &ControlPlane, task: &str, exec: &str) {
    until(&format!("execution_closed for {exec}"), || {
        execution(cp, task, exec).closed >= 1
    })
    .await;
    let left = containers_of_execution(exec);
    assert!(
        left.is_empty(),
        "execution_closed arrived while docker ps -a still shows {left:?}"
    );
}

/// Waits long enough for a duplicate to arrive, then checks there was none.
async fn closed_exactly_once(cp: &ControlPlane, task: &str, exec: &str) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        execution(cp, task, exec).closed,
        1,
        "execution_closed must arrive exactly once"
    );
}

/// The worker's own API lists both executions of the run and serves each one's transcript.
async fn local_api_keys_by_execution(env: &Env, task: &str, execs: [&str; 2]) {
    let api = env.handle.api.clone().unwrap();
    let status: serde_json::Value = reqwest::get(format!("http://{api}/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rows: Vec<(String, String)> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("task_id"), s("execution_id"))
        })
        .collect();
    rows.sort();
    let mut want: Vec<(String, String)> = execs
        .iter()
        .map(|e| (task.to_string(), e.to_string()))
        .collect();
    want.sort();
    assert_eq!(rows, want, "/v1/status holds one row per execution");
    let state = std::env::temp_dir().join(format!("berth-test-{}", env.worker_id));
    let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    for e in execs {
        let part: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "http://{api}/v1/tasks/{task}/transcript?execution_id={e}"
            ))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(part["execution_id"], *e, "{part}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executions_of_one_run_at_once_and_cancelling_one_leaves_the_other_to_finish() {
    let env = Env::start("two-exec", EnvOptions::default()).await;
    let cp = &env.cp;
    let t = submit(
        cp,
        "echo start $OZ_EXECUTION_ID; sleep 8; echo done $OZ_EXECUTION_ID",
    );
    let first = t.execution_id.clone();
    until("first execution running", || {
        printed(cp, &first, &format!("start {first}"))
    })
    .await;
    let second = cp.retry(&t.id).unwrap().execution_id.clone();
    assert_ne!(first, second);
    until("second execution running beside the first", || {
        printed(cp, &second, &format!("start {second}"))
    })
    .await;
    assert_eq!(
        containers_of_task(&t.id).len(),
        2,
        "each execution has its own container"
    );
    local_api_keys_by_execution(&env, &t.id, [&first, &second]).await;
    cp.cancel_scoped(&t.id, CancelScope::Execution(first.clone()))
        .unwrap();
    closed_after_removal(cp, &t.id, &first).await;
    assert_eq!(
        containers_of_execution(&second).len(),
        1,
        "cancelling one execution must not touch the other's container"
    );
    until("second execution finished", || {
        execution(cp, &t.id, &second).state.is_terminal()
    })
    .await;
    until("transcripts complete", || {
        execution(cp, &t.id, &first).complete() && execution(cp, &t.id, &second).complete()
    })
    .await;
    closed_exactly_once(cp, &t.id, &first).await;
    let (a, b) = (execution(cp, &t.id, &first), execution(cp, &t.id, &second));
    assert_eq!(a.state, TaskState::Cancelled, "{a:?}");
    assert_eq!(b.state, TaskState::Succeeded, "{b:?}");
    assert_eq!(
        (a.terminal_distinct, b.terminal_distinct),
        (1, 1),
        "each execution reports once"
    );
    assert_eq!(b.closed, 0, "an execution nobody cancelled is not closed");
    assert!(printed(cp, &second, &format!("done {second}")));
    assert!(
        !printed(cp, &first, "done"),
        "the cancelled execution must not have run to its end"
    );
    until("second container removed", || {
        containers_of_task(&t.id).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_with_only_the_run_id_cancels_and_closes_every_execution() {
    let env = Env::start("run-cancel", EnvOptions::default()).await;
    let cp = &env.cp;
    let t = submit(cp, "echo start $OZ_EXECUTION_ID; sleep 60");
    let first = t.execution_id.clone();
    until("first running", || printed(cp, &first, "start")).await;
    let second = cp.retry(&t.id).unwrap().execution_id.clone();
    until("second running", || printed(cp, &second, "start")).await;
    cp.cancel_scoped(&t.id, CancelScope::Run).unwrap();
    for e in [&first, &second] {
        closed_after_removal(cp, &t.id, e).await;
    }
    for e in [&first, &second] {
        closed_exactly_once(cp, &t.id, e).await;
        let x = execution(cp, &t.id, e);
        assert_eq!(x.state, TaskState::Cancelled, "{x:?}");
        assert_eq!(x.terminal_distinct, 1);
    }
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_delays_execution_closed_and_a_repeated_cancel_replays_it_without_the_engine()
 {
    let mut proxy = Proxy::start();
    let (env, t) = running_behind(&proxy, "close-outage").await;
    let (cp, exec) = (&env.cp, t.execution_id.clone());
    proxy.down();
    cp.cancel(&t.id).unwrap();
    // Long enough for several removal attempts to fail (the backoff starts below a second).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let x = execution(cp, &t.id, &exec);
    assert_eq!(
        x.closed, 0,
        "execution_closed sent while the engine could not have removed anything: {x:?}"
    );
    assert_eq!(
        containers_of_execution(&exec).len(),
        1,
        "the container is still there (the test's own docker CLI bypasses the proxy)"
    );
    proxy.up();
    closed_after_removal(cp, &t.id, &exec).await;
    closed_exactly_once(cp, &t.id, &exec).await;
    let x = execution(cp, &t.id, &exec);
    assert_eq!(x.state, TaskState::Cancelled, "{x:?}");
    assert_eq!(x.terminal_distinct, 1);

    // A repeated cancellation of the closed execution is answered from memory: the engine is
    // unreachable again, yet execution_closed comes back.
    proxy.down();
    let frame = format!(
        r#"{{"type":"task_cancellation","data":{{"task_id":"{}","execution_id":"{exec}"}}}}"#,
        t.id
    );
    assert!(cp.send_raw(&env.worker_id, &frame));
    until("execution_closed replayed", || {
        execution(cp, &t.id, &exec).closed == 2
    })
    .await;
    proxy.up();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_the_engine_refuses_delays_execution_closed_until_it_succeeds() {
    let proxy = Proxy::start();
    let (env, t) = running_behind(&proxy, "close-refused").await;
    let (cp, exec) = (&env.cp, t.execution_id.clone());
    proxy.refuse_removals(true);
    cp.cancel(&t.id).unwrap();
    // The stop goes through, so the result does; the removal does not, so the closure waits.
    until("cancelled result delivered", || {
        execution(cp, &t.id, &exec).state == TaskState::Cancelled
    })
    .await;
    let mut retried = 0.0;
    for _ in 0..100 {
        retried = env.metric("berth_execution_closure_retries_total").await;
        if retried >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retried >= 2.0, "removal not retried: {retried}");
    assert_eq!(env.metric("berth_execution_closures_pending").await, 1.0);
    let x = execution(cp, &t.id, &exec);
    assert_eq!(
        x.closed, 0,
        "closed before the container was removed: {x:?}"
    );
    assert_eq!(
        containers_of_execution(&exec).len(),
        1,
        "the refused removal left the container"
    );
    proxy.refuse_removals(false);
    closed_after_removal(cp, &t.id, &exec).await;
    closed_exactly_once(cp, &t.id, &exec).await;
    assert_eq!(env.metric("berth_execution_closures_pending").await, 0.0);
    assert_eq!(env.metric("berth_executions_closed_total").await, 1.0);
    assert_eq!(execution(cp, &t.id, &exec).terminal_distinct, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_cancel_and_removal_still_ends_in_exactly_one_execution_closed() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("close-kill");
    let _cleanup = Cleanup(id.clone());
    // The task ignores SIGTERM, so stopping it takes the whole grace period: berth is killed
    // inside that window, after it took the cancellation and before it removed anything.
    let yaml = "backend:\n  docker:\n    stop_grace_period: 8s\n";
    let mut worker = worker_process_with(&cp, &id, state.path(), &[], yaml);
    let t = submit(
        &cp,
        "trap '' TERM; echo start; while true; do sleep 1; done",
    );
    let exec = t.execution_id.clone();
    until("running", || printed(&cp, &exec, "start")).await;
    cp.cancel(&t.id).unwrap();
    let log = state.path().with_extension("log");
    until("berth took the cancellation", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("cancellation requested"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(
        containers_of_execution(&exec).len(),
        1,
        "killed before the removal: the container is still there"
    );
    assert_eq!(execution(&cp, &t.id, &exec).closed, 0);

    let mut worker = worker_process_with(&cp, &id, state.path(), &[], yaml);
    closed_after_removal(&cp, &t.id, &exec).await;
    until("result delivered", || {
        execution(&cp, &t.id, &exec).state.is_terminal()
    })
    .await;
    closed_exactly_once(&cp, &t.id, &exec).await;
    let x = execution(&cp, &t.id, &exec);
    assert_eq!(x.state, TaskState::Cancelled, "{x:?}");
    assert_eq!(x.terminal_distinct, 1, "one result across the kill: {x:?}");
    worker.kill().unwrap();
    worker.wait().unwrap();
    cp.shutdown();
}
