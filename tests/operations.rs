//! Operating berth: the local API (health, readiness, metrics, status, drain/resume and who
//! may use them), `worker_status` to the control plane, and the admin commands of the real
//! binary — against the embedded control plane, with tasks on the fake backend; only the
//! readiness test, which takes the Docker engine away, runs on real Docker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use berth::devserver::state::TaskState;
use support::*;

fn api(env: &Env) -> String {
    format!(
        "http://{}",
        env.handle.api.clone().expect("the local API listens")
    )
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Runs the real binary and expects it to succeed (stderr shown otherwise).
fn cli_ok(args: &[&str]) -> std::process::Output {
    let out = cli(args);
    assert!(
        out.status.success(),
        "berth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn state_dir(env: &Env) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("berth-test-{}", env.worker_id))
}

/// The value of one series in a Prometheus text exposition.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_control_plane_and_docker() {
    let mut proxy = Proxy::start();
    let env = Env::start(
        "ready",
        EnvOptions {
            docker_yaml: format!("    host: {}\n", proxy.host()),
            ..EnvOptions::default()
        },
    )
    .await;
    let base = api(&env);
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));
    let ready = format!("{base}/readyz");
    until_async("ready", || async { get(&ready).await.0 == 200 }).await;
    // Docker goes away: not ready, with the reason; healthz stays up.
    proxy.down();
    until_async("not ready: docker", || async {
        let (code, body) = get(&ready).await;
        code == 503 && body.contains("Docker engine unreachable")
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    proxy.up();
    until_async("ready again", || async { get(&ready).await.0 == 200 }).await;
    // The control plane goes away: not ready.
    env.cp.shutdown();
    until_async("not ready: control plane", || async {
        let (code, body) = get(&ready).await;
        code == 503 && body.contains("not connected to the control plane")
    })
    .await;
}

/// Polls an async condition every 100 ms for up to 60 s.
async fn until_async<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_of_tasks() {
    let env = Env::start_fake(
        "metrics",
        EnvOptions {
            max_concurrent_tasks: 1,
            ..EnvOptions::default()
        },
    )
    .await;
    let ok = env.submit(&["echo", "hello"]);
    assert_eq!(env.finished(&ok.id).await.state, TaskState::Succeeded);
    let bad = env.submit(&["sh", "-c", "exit 3"]);
    assert_eq!(env.finished(&bad.id).await.state, TaskState::Failed);
    // One slot: a second task while one runs is rejected (at capacity), then runs.
    let long = env.submit(&["sh", "-c", "echo started; sleep 30"]);
    until("long task running", || {
        env.cp
            .task(&long.id)
            .is_some_and(|t| t.state == TaskState::Running)
    })
    .await;
    let queued = env.submit(&["true"]);
    until("rejected at capacity", || {
        env.cp.task(&queued.id).is_some_and(|t| t.rejections >= 1)
    })
    .await;
    env.cp.cancel(&long.id).unwrap();
    assert_eq!(env.finished(&long.id).await.state, TaskState::Cancelled);
    assert_eq!(env.finished(&queued.id).await.state, TaskState::Succeeded);
    let (code, text) = get(&format!("{}/metrics", api(&env))).await;
    assert_eq!(code, 200);
    let rejected = env.cp.task(&queued.id).unwrap().rejections as f64;
    assert_eq!(series(&text, "oz_worker_tasks_claimed_total"), 4.0);
    assert_eq!(
        series(
            &text,
            "oz_worker_tasks_rejected_total{reason=\"at_capacity\"}"
        ),
        rejected
    );
    assert_eq!(
        series(
            &text,
            "oz_worker_tasks_completed_total{result=\"succeeded\"}"
        ),
        2.0
    );
    assert_eq!(
        series(&text, "oz_worker_tasks_completed_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "oz_worker_tasks_completed_total{result=\"cancelled\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "oz_worker_task_failures_total{phase=\"backend\",reason=\"container_exit\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "oz_worker_task_duration_seconds_count{result=\"succeeded\"}"
        ),
        2.0
    );
    assert_eq!(series(&text, "oz_worker_connected"), 1.0);
    assert_eq!(series(&text, "oz_worker_tasks_max_concurrent"), 1.0);
    assert_eq!(series(&text, "berth_docker_reachable"), 1.0);
    assert!(series(&text, "berth_transcript_bytes_total") > 0.0);
    assert!(
        text.contains(&format!("worker_id=\"{}\"", env.worker_id)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_resume_need_the_admin_token_and_behave_like_a_server_drain() {
    let env = Env::start_fake("drain", EnvOptions::default()).await;
    let base = api(&env);
    let http = reqwest::Client::new();
    let running = env.submit(&["sh", "-c", "sleep 2; echo finished"]);
    until("running", || {
        env.cp
            .task(&running.id)
            .is_some_and(|t| t.state == TaskState::Running)
    })
    .await;
    // Without the token, or with a wrong one: refused, nothing changes.
    let r = http.post(format!("{base}/v1/drain")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("admin token"));
    let r = http
        .post(format!("{base}/v1/drain"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .get(format!("{base}/v1/tasks/{}/transcript", running.id))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "transcripts need the token over TCP"
    );
    assert!(!env.handle.slots.borrow().draining);
    // The real CLI reads the token from state_dir.
    let state = state_dir(&env);
    let addr = env.handle.api.clone().unwrap();
    // Without a readable token, `berth logs` says it was refused and how to get in; it does
    // not pretend there is no transcript by falling back to a spool it cannot read.
    let refused = cli(&[
        "logs",
        &running.id,
        "--api",
        &addr,
        "--state-dir",
        "/nonexistent",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused (HTTP 403)")
            && err.contains("admin token")
            && err.contains("/nonexistent/admin-token could not be read")
            && err.contains("Unix socket")
            && !err.contains("no transcript"),
        "{err}"
    );
    let out = cli_ok(&[
        "logs",
        &running.id,
        "--api",
        &addr,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = cli_ok(&[
        "drain",
        "--api",
        &addr,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("draining"));
    let rejected = env.submit(&["echo", "later"]);
    until("rejected while draining", || {
        env.cp.task(&rejected.id).is_some_and(|t| t.rejections >= 1)
    })
    .await;
    // The running task finishes; `drain --wait` returns once nothing is left.
    let out = cli_ok(&[
        "drain",
        "--wait",
        "--api",
        &addr,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("drained"));
    assert_eq!(
        env.cp.task(&running.id).unwrap().state,
        TaskState::Succeeded
    );
    assert_ne!(
        env.cp.task(&rejected.id).unwrap().state,
        TaskState::Succeeded
    );
    cli_ok(&[
        "resume",
        "--api",
        &addr,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(env.finished(&rejected.id).await.state, TaskState::Succeeded);
    let (_, text) = get(&format!("{base}/metrics")).await;
    assert!(series(&text, "oz_worker_tasks_rejected_total{reason=\"draining\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_0660_and_trusted_and_status_lists_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let env = Env::start_fake(
        "socket",
        EnvOptions {
            overrides: berth::config::Overrides {
                api_listen: Some(sock.display().to_string()),
                ..Default::default()
            },
            ..EnvOptions::default()
        },
    )
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let t = env.submit(&["sh", "-c", "echo some-output; sleep 30"]);
    until("running", || {
        env.cp.task(&t.id).is_some_and(|t| t.transcript_bytes > 0)
    })
    .await;
    // No token needed over the socket (no --state-dir given).
    let status = cli(&["status", "--api", sock.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("connected (berth/1); ready"), "{text}");
    assert!(text.contains(&t.id) && text.contains("running"), "{text}");
    let json = cli(&["status", "--json", "--api", sock.to_str().unwrap()]);
    let s: berth::admin::status::Status = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(s.worker.active_tasks, 1);
    assert!(s.tasks[0].output_bytes > 0);
    cli_ok(&["drain", "--api", sock.to_str().unwrap()]);
    assert!(env.handle.slots.borrow().draining);
    env.cp.cancel(&t.id).unwrap();
    env.finished(&t.id).await;
    // `berth logs` goes through the API: a state_dir it cannot read proves it.
    let logs = cli_ok(&[
        "logs",
        &t.id,
        "--follow",
        "--api",
        sock.to_str().unwrap(),
        "--state-dir",
        "/nonexistent",
    ]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "some-output\n");
    assert!(String::from_utf8_lossy(&logs.stderr).contains("[berth] container exited"));
    let unknown = cli(&["logs", "task-unknown", "--api", sock.to_str().unwrap()]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no transcript for task task-unknown")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_status_reports_host_capacity_and_follows_slot_changes() {
    let env = Env::start_fake(
        "status",
        EnvOptions {
            control_plane_yaml: "  status_interval: 1h\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    until("first worker_status", || {
        env.cp.workers().first().is_some_and(|w| w.status.is_some())
    })
    .await;
    let w = env.cp.workers().remove(0);
    let st = w.status.clone().unwrap();
    assert_eq!(st.max_concurrent_tasks, 4);
    assert_eq!(st.active_tasks, 0);
    assert!(st.accepting && !st.draining);
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert_eq!(st.host.cpus, cpus);
    assert!(st.host.memory_total_bytes > 0);
    assert!(st.host.memory_available_bytes <= st.host.memory_total_bytes);
    assert!(st.host.disk_free_bytes > 0);
    assert!(st.host.docker.reachable);
    assert_eq!(st.host.docker.version, FAKE_ENGINE_VERSION);
    // A slot taken: a status follows promptly (the interval is an hour).
    let t = env.submit(&["sh", "-c", "sleep 30"]);
    until("status with one active task", || {
        env.cp
            .workers()
            .first()
            .and_then(|w| w.status.clone())
            .is_some_and(|s| s.active_tasks == 1)
    })
    .await;
    env.cp.cancel(&t.id).unwrap();
    env.finished(&t.id).await;
    until("status back to zero", || {
        env.cp
            .workers()
            .first()
            .and_then(|w| w.status.clone())
            .is_some_and(|s| s.active_tasks == 0)
    })
    .await;
}

#[test]
fn the_admin_commands_say_when_the_daemon_is_not_running() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = cli(&["status", "--api", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("berth is not running") && err.contains("--api"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_api_connections_are_closed_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start_fake("api-idle", EnvOptions::default()).await;
    let addr = env.handle.api.clone().unwrap();
    // 300 connections that never send a request, and one that stalls mid-header.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // While they are open the API still answers (they do not hold every slot forever).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let answered = loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(5),
            get(&format!("http://{addr}/healthz")),
        )
        .await
        .is_ok_and(|(code, _)| code == 200);
        if ok || std::time::Instant::now() > deadline {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        answered,
        "the API answered while 300 idle connections were open"
    );
    // Every idle connection is closed by the server (EOF, reset, or a 408 then EOF) within
    // the timeouts; all are watched at once under one deadline.
    let watchers: Vec<_> = idle
        .into_iter()
        .chain(std::iter::once(partial))
        .map(|mut c| {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let until = tokio::time::Instant::now() + Duration::from_secs(40);
                loop {
                    match tokio::time::timeout_at(until, c.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return true,
                        Ok(Ok(_)) => continue,
                        Err(_) => return false,
                    }
                }
            })
        })
        .collect();
    let mut closed = 0;
    for w in watchers {
        closed += usize::from(w.await.unwrap());
    }
    assert_eq!(closed, 301, "idle connections left open by the local API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_api_connections_never_locks_out_healthz_or_tasks() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 1500;
    // The worker runs in this process: the flood costs both ends' descriptors here.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 4000,
        "RLIMIT_NOFILE hard limit is {hard}: this test holds {FLOOD} client connections and the \
         worker's side of them in one process; raise the hard limit to at least 4000"
    );
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let env = Env::start_fake("api-flood", EnvOptions::default()).await;
    let addr = env.handle.api.clone().unwrap();
    // Each flood connection sends an incomplete request head and then nothing, like a client
    // that hung mid-request. Opening stops at the first connect the API leaves unanswered.
    let mut flood = Vec::with_capacity(FLOOD);
    let mut stalled = None;
    for i in 0..FLOOD {
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        {
            Ok(Ok(mut c)) => {
                // Only the request's start matters; the server may already have shed it.
                let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
                flood.push(c);
            }
            Ok(Err(e)) => {
                stalled = Some(format!("flood connection {i}: {e}"));
                break;
            }
            Err(_) => {
                stalled = Some(format!("flood connection {i}: connect timed out after 5 s"));
                break;
            }
        }
    }
    let task = env.submit(&["echo", "ran-during-the-flood"]);
    // Fresh connections with a complete request: each must be answered. Before shedding, the
    // cap was held by the flood and these waited for its header timeouts (10 s each round).
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for i in 0..20 {
        let started = std::time::Instant::now();
        let probe = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = tokio::net::TcpStream::connect(&addr).await?;
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            c.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
        })
        .await;
        match probe {
            Ok(Ok(a)) if a.starts_with("HTTP/1.1 200") => latencies.push(started.elapsed()),
            Ok(Ok(a)) => failures.push(format!("probe {i}: answered {a:?}")),
            Ok(Err(e)) => failures.push(format!("probe {i}: {e}")),
            Err(_) => failures.push(format!("probe {i}: no answer within 5 s")),
        }
    }
    latencies.sort();
    if let (Some(max), Some(median)) = (latencies.last(), latencies.get(latencies.len() / 2)) {
        eprintln!(
            "healthz under {} idle connections: {} of 20 answered, median {median:?}, max {max:?}",
            flood.len(),
            latencies.len()
        );
    }
    assert_eq!(stalled, None, "the API stopped accepting connections");
    assert!(
        failures.is_empty(),
        "healthz probes failed under {FLOOD} idle connections: {failures:#?}"
    );
    let done = env.finished(&task.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let shed = series(
        &env.metrics().await,
        "berth_api_connections_shed_total{reason=\"idle\"}",
    );
    eprintln!("idle connections shed: {shed}");
    assert!(shed > 0.0, "no shed connection counted");
    drop(flood);
}
