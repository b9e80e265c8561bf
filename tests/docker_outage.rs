//! The Docker engine going away while tasks run. dockerd itself cannot be restarted here, so
//! berth talks to it through a Unix-socket proxy the test stops and starts: while it is down
//! berth keeps its session, rejects new work (the server requeues it), and running tasks wait;
//! when it returns, tasks continue and finish with their whole transcript, and a task whose
//! container vanished meanwhile fails with a message that says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use berth::devserver::state::TaskState;
use support::*;

async fn env_behind(proxy: &Proxy, name: &str) -> Env {
    Env::start(
        name,
        EnvOptions {
            max_concurrent_tasks: 2,
            docker_yaml: format!("    host: {}\n", proxy.host()),
            ..EnvOptions::default()
        },
    )
    .await
}

fn transcript(env: &Env, id: &str) -> String {
    String::from_utf8_lossy(&env.cp.transcript(id).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_rides_out_an_engine_outage_and_new_work_is_requeued_meanwhile() {
    let mut proxy = Proxy::start();
    let env = env_behind(&proxy, "outage").await;
    let t = env.submit(&["sh", "-c", "echo before; sleep 6; echo after"]);
    until("task running", || {
        transcript(&env, &t.id).contains("before\n")
    })
    .await;
    proxy.down();
    // Once the worker has noticed (its readiness says so; until then an assignment is taken
    // and waits for the engine instead), new work is rejected and requeued, not failed.
    let ready = format!("http://{}/readyz", env.handle.api.clone().unwrap());
    let mut noticed = false;
    for _ in 0..120 {
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().as_u16() != 200)
        {
            noticed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(noticed, "the worker never noticed the engine outage");
    let t2 = env.submit(&["echo", "second"]);
    until("second task rejected while the engine is away", || {
        env.cp.task(&t2.id).is_some_and(|t| t.rejections >= 1)
    })
    .await;
    assert_eq!(
        env.cp.task(&t.id).unwrap().state,
        TaskState::Running,
        "the running task must not fail during the outage"
    );
    assert_eq!(env.cp.workers().len(), 1, "the session stays up");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up();
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    until("transcript complete", || {
        env.cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    let text = transcript(&env, &t.id);
    assert!(text.contains("before\nafter\n"), "{text}");
    // The requeued task runs once the engine is back (and a slot frees).
    let second = env.finished(&t2.id).await;
    assert_eq!(second.state, TaskState::Succeeded, "{second:?}");
    until("containers removed", || {
        containers_of(&env.worker_id).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_lost_during_an_outage_fails_its_task_with_the_reason() {
    let mut proxy = Proxy::start();
    let env = env_behind(&proxy, "outage-lost").await;
    let t = env.submit(&["sh", "-c", "echo started; sleep 300"]);
    until("task running", || {
        transcript(&env, &t.id).contains("started\n")
    })
    .await;
    proxy.down();
    // What an engine restart without live-restore would do to the container.
    for id in containers_of(&env.worker_id) {
        let out = Command::new("docker")
            .args(["rm", "-f", &id])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!env.cp.task(&t.id).unwrap().state.is_terminal());
    proxy.up();
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(done.failure_reason.as_deref(), Some("container_wait"));
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("disappeared while the Docker engine was unreachable"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_assigned_as_the_engine_goes_away_waits_for_it_instead_of_failing() {
    let mut proxy = Proxy::start();
    let env = env_behind(&proxy, "outage-prepare").await;
    proxy.down();
    // Assigned before the worker's next engine ping: preparing the image meets the outage.
    let t = env.submit(&["echo", "made-it"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !env.cp.task(&t.id).unwrap().state.is_terminal(),
        "must not fail during the outage"
    );
    proxy.up();
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    until("transcript complete", || {
        env.cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    let text = transcript(&env, &t.id);
    assert!(text.contains("made-it\n"), "{text}");
    // Unless the worker happened to notice the outage first and rejected the assignment (the
    // server then requeued it), the transcript says what happened.
    if done.rejections == 0 {
        assert!(
            text.contains(
                "[berth] Docker engine unreachable while preparing the image; waiting for it\n"
            ) && text.contains("[berth] Docker engine reachable again; retrying\n"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_ended_by_the_engine_stopping_are_not_blamed_on_the_task() {
    // dockerd's own stop, step by step as it does it: close the API listener (connections open
    // go on), SIGTERM every container, exit; then it starts again.
    let mut proxy = Proxy::start();
    let env = env_behind(&proxy, "engine-stop").await;
    let tasks: Vec<_> = (0..2)
        .map(|_| env.submit(&["sh", "-c", "echo before; sleep 40; echo after"]))
        .collect();
    for t in &tasks {
        until("task running", || {
            transcript(&env, &t.id).contains("before\n")
        })
        .await;
    }
    proxy.stop_accepting();
    for id in containers_of(&env.worker_id) {
        let out = Command::new("docker")
            .args(["kill", "--signal", "TERM", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up();
    for t in &tasks {
        let done = env.finished(&t.id).await;
        assert_eq!(done.state, TaskState::Failed, "{done:?}");
        assert_eq!(done.terminal_distinct, 1, "exactly one result: {done:?}");
        assert_eq!(
            done.failure_reason.as_deref(),
            Some("container_wait"),
            "the engine's doing, not the task's exit: {done:?}"
        );
        assert_eq!(done.exit_code, Some(143));
        let msg = done.message.clone().unwrap_or_default();
        assert!(
            msg.contains("the Docker engine stopped at")
                && msg.contains("received SIGTERM (exit status 143)")
                && msg.contains("not the task itself"),
            "{msg}"
        );
        until("transcript complete", || {
            env.cp.task(&t.id).is_some_and(|t| t.complete())
        })
        .await;
        let text = transcript(&env, &t.id);
        assert!(
            text.contains("[berth] Failed to execute task: the Docker engine stopped at"),
            "{text}"
        );
        assert!(!text.contains("after\n"), "{text}");
    }
    // The engine is back: a new task runs.
    let (done, text) = env
        .run(berth::devserver::state::SubmitRequest {
            image: Some(BUSYBOX.into()),
            command: vec!["echo".into(), "fine".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
}
