//! Task-log export over OTLP (PROTOCOL §8.3) end to end: the real worker, the embedded control
//! plane over a real loopback WebSocket, and a loopback OTLP/HTTP receiver that also answers
//! the GraphQL identity request (`tests/support/otlp.rs`). The redaction case runs on real
//! Docker; the gates, redirects and the wire pin run on the fake backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::{BootstrapToken, TelemetryCollection};
use support::otlp::{API_KEY, Identity, Receiver, WORKLOAD};
use support::otlp_proto::Val;
use support::*;

/// A value no transcript redactor of berth's removes (shorter than its 6-byte minimum): only
/// the export redactor can.
const SHORT: &str = "zq9";
/// A value whose URL- and JSON-escaped forms differ from it.
const SECRET: &str = "p@ss w<rd>&x";
/// Its URL-query-escaped form (Go's `url.QueryEscape`).
const SECRET_URL: &str = "p%40ss+w%3Crd%3E%26x";
/// Its JSON-escaped form, HTML-safe.
const SECRET_JSON: &str = "p@ss w\\u003crd\\u003e\\u0026x";
/// A multi-line value; its second line alone is printed.
const MULTI: &str = "line-one-AAA\nline-two-BBB";
const BOOTSTRAP: &str = "bootstrap-secret-value";

fn telemetry(rx: &Receiver, logging: bool) -> TelemetryCollection {
    TelemetryCollection {
        endpoint: rx.endpoint(),
        logging_enabled: logging,
        tracing_enabled: false,
        bootstrap_token: Some(BootstrapToken {
            token: BOOTSTRAP.into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
        }),
    }
}

fn env_vars(with_workload: bool) -> BTreeMap<String, String> {
    let mut e: BTreeMap<String, String> = [
        ("WARP_API_KEY", API_KEY),
        ("SHORT", SHORT),
        ("SECRET", SECRET),
        ("MULTI", MULTI),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if with_workload {
        e.insert("WARP_WORKLOAD_TOKEN".into(), WORKLOAD.into());
    }
    e
}

/// A worker whose server root is the receiver (the identity endpoint lives there).
fn options(rx: &Receiver, yaml: &str) -> EnvOptions {
    EnvOptions {
        control_plane_yaml: format!("  server_root_url: {}\n", rx.root()),
        yaml: yaml.to_string(),
        ..EnvOptions::default()
    }
}

fn request(
    command: &str,
    env: BTreeMap<String, String>,
    t: Option<TelemetryCollection>,
) -> SubmitRequest {
    SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), command.into()],
        env,
        telemetry_collection: t,
        ..SubmitRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_redacted_with_their_attributes_before_the_terminal_message() {
    let rx = Receiver::start().await;
    let env = Env::start("otlp-e2e", options(&rx, "")).await;
    let script = format!(
        "printf 'split: zq'; sleep 0.5; printf '9 end\\n'; \
         printf '%s\\n' 'url={SECRET_URL}'; \
         printf '%s\\n' 'json={{\"k\":\"{SECRET_JSON}\"}}'; \
         echo 'short={SHORT} raw={SECRET}'; \
         echo 'multi: line-two-BBB'; \
         echo \"key=$WARP_API_KEY\"; echo 'boot={BOOTSTRAP}'; \
         echo err-line >&2; \
         head -c 70000 /dev/zero | tr '\\0' x; echo; \
         echo after-long; \
         printf 'no-newline-at-end'"
    );
    let t = env
        .cp
        .submit(request(&script, env_vars(true), Some(telemetry(&rx, true))));
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let terminal_at = done.current.finished_at.expect("the server has the result");

    let recs = rx.records_of(&t.id);
    let bodies: Vec<&str> = recs.iter().map(|r| r.body.as_str()).collect();
    for want in [
        "split: [REDACTED] end",
        "url=[REDACTED]",
        "json={\"k\":\"[REDACTED]\"}",
        "short=[REDACTED] raw=[REDACTED]",
        "multi: [REDACTED]",
        "key=[REDACTED]",
        "boot=[REDACTED]",
        "err-line",
        "after-long",
        "no-newline-at-end",
    ] {
        assert!(bodies.contains(&want), "no record {want:?} in {bodies:#?}");
    }
    // What the metrics say agrees with what the collector received.
    let m = |r: &str| format!("berth_task_log_records_total{{result=\"{r}\"}}");
    assert_eq!(env.metric(&m("exported")).await, rx.records().len() as f64);
    assert_eq!(env.metric(&m("too_long")).await, 1.0);
    assert_eq!(env.metric(&m("failed")).await, 0.0);
    let ok = env
        .metric("berth_task_log_requests_total{result=\"ok\"}")
        .await;
    assert_eq!(ok, rx.batches() as f64);
    // The long line is dropped whole: not one piece of it.
    assert!(
        !bodies.iter().any(|b| b.contains("xxxxxxxx")),
        "part of the long line exported"
    );
    // Nothing secret in any byte sent.
    for s in [
        SHORT,
        SECRET,
        SECRET_URL,
        SECRET_JSON,
        "line-two-BBB",
        API_KEY,
        WORKLOAD,
        BOOTSTRAP,
    ] {
        assert!(!rx.raw_contains(s.as_bytes()), "{s:?} was exported");
    }
    // Every record was taken before the result reached the server.
    for r in &recs {
        assert!(
            r.received_at <= terminal_at,
            "{:?} arrived after the result",
            r.body
        );
    }
    // Attributes and resource.
    let err = recs.iter().find(|r| r.body == "err-line").unwrap();
    assert_eq!(err.attr("log.source").as_deref(), Some("container.stderr"));
    assert_eq!(err.attr("log.iostream").as_deref(), Some("stderr"));
    assert_eq!(
        (err.severity_number, err.severity_text.as_str()),
        (9, "INFO")
    );
    let out = recs.iter().find(|r| r.body == "after-long").unwrap();
    // The engine's generated name (adjective_surname), without its leading '/', on stdout
    // and stderr records alike.
    let name = out
        .attr("container.name")
        .expect("container.name on output");
    let generated = name
        .split_once('_')
        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    assert!(generated, "{name:?}");
    assert_eq!(err.attr("container.name"), Some(name.clone()));
    assert_eq!(out.attr("log.source").as_deref(), Some("container.stdout"));
    assert_eq!(out.attr("log.iostream").as_deref(), Some("stdout"));
    assert_eq!(out.scope, "oz-agent-worker.task");
    for (k, v) in [
        ("service.name", "oz-agent-worker"),
        ("worker.id", env.worker_id.as_str()),
        ("worker.backend", "docker"),
        ("run_id", t.id.as_str()),
        ("execution_id", done.current.execution_id.as_str()),
    ] {
        assert_eq!(out.resource(k).as_deref(), Some(v), "{k}");
    }
    // berth's own lines, and the setup phases.
    assert!(
        recs.iter()
            .any(|r| r.attr("log.source").as_deref() == Some("worker")),
        "no worker line in {bodies:#?}"
    );
    let pull = recs
        .iter()
        .find(|r| r.attr("event.name").as_deref() == Some("setup_worker_container_start"))
        .expect("the container start phase is a record");
    assert_eq!(pull.body, "setup_worker_container_start");
    assert_eq!(pull.value("is_error"), Some(Val::Bool(false)));
    assert!(matches!(pull.value("latency_ms"), Some(Val::Double(ms)) if ms >= 0.0));
    assert!(pull.attr("start_ts").is_some_and(|s| s.ends_with('Z')));
    // One identity request, exactly as specified, for this run.
    let ids = rx.identity_requests();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].valid && ids[0].task_id == t.id, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_exports_nothing_and_asks_for_no_token() {
    let rx = Receiver::start().await;
    let env = Env::start_fake("otlp-gate", options(&rx, "")).await;
    // Without WARP_WORKLOAD_TOKEN: no setup events either, so not one request.
    let t = env.cp.submit(request(
        "echo hello",
        env_vars(false),
        Some(telemetry(&rx, true)),
    ));
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    // The same task with the token does reach the receiver: the check above can fail.
    let ok = env.cp.submit(request(
        "echo hello",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    assert_eq!(env.finished(&ok.id).await.state, TaskState::Succeeded);
    until("the second task's records", || {
        !rx.records_of(&ok.id).is_empty()
    })
    .await;
    assert!(rx.records_of(&t.id).is_empty());
    assert!(rx.identity_requests().iter().all(|r| r.task_id == ok.id));
    let refused = env
        .metric("berth_task_log_refusals_total{gate=\"no_workload_token\"}")
        .await;
    assert_eq!(refused, 1.0, "the refusal is counted, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_by_the_operator_nothing_is_exported() {
    let rx = Receiver::start().await;
    let env = Env::start_fake("otlp-off", options(&rx, "task_logs:\n  enabled: false\n")).await;
    let t = env.cp.submit(request(
        "echo hello",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    assert!(rx.identity_requests().is_empty());
    assert_eq!(rx.batches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_redirect_of_the_identity_endpoint_is_not_followed() {
    let rx = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    rx.set_identity(Identity::Redirect(format!(
        "{}/graphql/v2",
        elsewhere.root()
    )));
    let env = Env::start_fake("otlp-xorigin", options(&rx, "")).await;
    let t = env.cp.submit(request(
        "echo hello",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    assert!(
        !rx.identity_requests().is_empty(),
        "the identity request was made"
    );
    assert_eq!(
        elsewhere.requests(),
        0,
        "a credential went to another origin"
    );
    assert_eq!(rx.batches(), 0, "no token, no export");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_origin_redirect_is_followed_with_method_body_and_credentials() {
    let rx = Receiver::start().await;
    rx.set_identity(Identity::Redirect("/moved/graphql/v2".into()));
    let env = Env::start_fake("otlp-redirect", options(&rx, "")).await;
    let t = env.cp.submit(request(
        "echo hello",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    let ids = rx.identity_requests();
    let paths: Vec<&str> = ids.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/root/graphql/v2", "/moved/graphql/v2"]);
    assert!(
        ids.iter().all(|r| r.valid),
        "headers or body lost on the way: {ids:?}"
    );
    assert!(rx.records_of(&t.id).iter().any(|r| r.body == "hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_changes_nothing_about_the_task() {
    let rx = Receiver::start().await;
    rx.set_identity(Identity::Fail(500));
    let env = Env::start_fake("otlp-refused", options(&rx, "")).await;
    let t = env.cp.submit(request(
        "echo hi; exit 3",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(
        done.message.as_deref(),
        Some("Failed to execute task: container exited with non-zero status: 3")
    );
    assert!(!rx.identity_requests().is_empty());
    assert_eq!(rx.batches(), 0);
}

/// Replaces the ids of a run in a frame, so two runs' frames compare.
fn normalized(frame: &str, t: &berth::devserver::state::TaskRecord, worker: &str) -> String {
    frame
        .replace(&t.current.execution_id, "<execution>")
        .replace(&t.id, "<task>")
        .replace(worker, "<worker>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oz_server_sending_no_telemetry_collection_sees_exactly_todays_frames() {
    let rx = Receiver::start().await;
    let env = Env::start_fake(
        "otlp-wire",
        EnvOptions {
            accept_berth: false,
            ..options(&rx, "")
        },
    )
    .await;
    let frames_of = |t: &berth::devserver::state::TaskRecord| -> Vec<String> {
        env.cp
            .frames_from(&env.worker_id)
            .iter()
            .filter(|f| f.contains(&t.id))
            .map(|f| normalized(f, t, &env.worker_id))
            .collect()
    };
    // On oz/1 the agent entrypoint runs (the berth/1 command is ignored): script it.
    env.fake().script(
        "/agent/entrypoint.sh",
        berth::backend::fake::Script::new().prints(berth::protocol::Stream::Stdout, "agent ran\n"),
    );
    let oz = |t: Option<TelemetryCollection>| SubmitRequest {
        sidecar_image: Some(SIDECAR.into()),
        ..request("ignored", BTreeMap::new(), t)
    };
    let plain = env.cp.submit(oz(None));
    assert_eq!(env.finished(&plain.id).await.state, TaskState::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let want = vec![
        r#"{"data":{"execution_id":"<execution>","task_id":"<task>","worker_id":"<worker>"},"type":"task_claimed"}"#.to_string(),
        r#"{"data":{"execution_id":"<execution>","message":"Task completed successfully","task_id":"<task>"},"type":"task_completed"}"#.to_string(),
    ];
    assert_eq!(frames_of(&plain), want);
    assert_eq!(
        rx.requests(),
        0,
        "a request was made for a run without telemetry_collection"
    );
    // The same run asking for logs but refused by a gate sends the same frames.
    let refused = env.cp.submit(oz(Some(telemetry(&rx, false))));
    assert_eq!(env.finished(&refused.id).await.state, TaskState::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(frames_of(&refused), want);
    assert_eq!(rx.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_berth_killed_mid_task_resumes_export_where_it_got_to_and_loses_no_line() {
    killed_mid_export("otlp-kill9", false).await;
}

/// The task's second half is printed, and the task ends, while no berth runs: the next berth
/// finds the exited container, reads the rest of its output and exports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_while_berth_is_down_is_exported_to_its_last_line() {
    killed_mid_export("otlp-down", true).await;
}

/// 400 numbered lines with a pause after 200; berth is killed once the first 200 are exported
/// and recorded, and (`ends_while_down`) restarted only after the container has exited.
async fn killed_mid_export(name: &str, ends_while_down: bool) {
    let _images = Images::acquire();
    let rx = Receiver::start().await;
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id(name);
    let _cleanup = Cleanup(id.clone());
    let yaml = format!("control_plane:\n  server_root_url: {}\n", rx.root());
    let first = Berth(worker_process_with(&cp, &id, state.path(), &[], &yaml));
    until("worker connected", || !cp.workers().is_empty()).await;
    // 200 lines (a full batch goes at once, the rest at the 5 s tick), a pause, 200 more.
    let t = cp.submit(request(
        "seq 1 200 | sed 's/^/line-/'; sleep 14; seq 201 400 | sed 's/^/line-/'",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    let exec = t.current.execution_id.clone();
    until("the first 200 lines exported", || {
        rx.records_of(&t.id).len() >= 200
    })
    .await;
    // …and recorded in the journal as exported (read-only: berth holds it).
    until("the export offset in the journal", || {
        berth::journal::Journal::open_read_only(state.path())
            .and_then(|j| j.exported(&exec))
            .is_ok_and(|o| o > 0)
    })
    .await;
    stop(first); // SIGKILL
    assert!(!cp.task(&t.id).unwrap().state.is_terminal());
    if ends_while_down {
        until("the task's container exited", || {
            containers_of(&id).iter().all(|c| {
                let out = Command::new("docker")
                    .args(["inspect", "-f", "{{.State.Status}}", c])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim() == "exited"
            })
        })
        .await;
        assert!(!rx.records_of(&t.id).iter().any(|r| r.body == "line-201"));
    }
    let second = Berth(worker_process_with(&cp, &id, state.path(), &[], &yaml));
    let done = env_finished(&cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let bodies: Vec<String> = rx.records_of(&t.id).into_iter().map(|r| r.body).collect();
    for n in 1..=400 {
        let want = format!("line-{n}");
        let count = bodies.iter().filter(|b| **b == want).count();
        assert!(count >= 1, "{want} was lost");
        if n <= 200 {
            assert_eq!(
                count, 1,
                "{want} exported again: export did not resume where it got to"
            );
        }
    }
    // The restarted berth names the container on what it exports too.
    let recs = rx.records_of(&t.id);
    let last = recs.iter().find(|r| r.body == "line-400").unwrap();
    assert!(last.attr("container.name").is_some_and(|n| !n.is_empty()));
    stop(second);
    cp.shutdown();
}

async fn env_finished(
    cp: &berth::devserver::ControlPlane,
    id: &str,
) -> berth::devserver::state::TaskRecord {
    let t = cp.wait(id, Duration::from_secs(90)).await.unwrap();
    assert!(t.state.is_terminal(), "task did not finish in time: {t:?}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_dev_asks_for_task_logs_and_receives_them_itself() {
    let env = Env::start_fake(
        "otlp-dev",
        EnvOptions {
            task_logs: berth::devserver::TaskLogs::Own,
            control_plane_yaml: "  server_root_url: {http}\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = env.submit(&["sh", "-c", "echo from-the-task; echo oops >&2"]);
    assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
    let logs = env.cp.task_logs(&t.id);
    let find = |body: &str| logs.iter().find(|r| r.body == body);
    let out = find("from-the-task").expect("the task's line was received");
    assert!(
        out.attributes
            .contains(&("log.source".into(), "container.stdout".into()))
    );
    assert_eq!(out.severity, "INFO");
    assert!(find("oops").is_some());
    assert!(logs.iter().all(|r| r.run_id == t.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_flushes_its_records_before_its_result() {
    let rx = Receiver::start().await;
    let env = Env::start_fake("otlp-cancel", options(&rx, "")).await;
    let t = env.cp.submit(request(
        "echo before-cancel; sleep infinity",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    env.until("the line in the transcript", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("before-cancel"))
    })
    .await;
    // Well before the 5 s batch tick: only the flush at the end can send the line this soon.
    env.cp.cancel(&t.id).unwrap();
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    let terminal_at = done.current.finished_at.unwrap();
    let recs = rx.records_of(&t.id);
    let line = recs
        .iter()
        .find(|r| r.body == "before-cancel")
        .expect("the line was flushed");
    assert!(line.received_at <= terminal_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outage_drops_the_refused_batch_and_nothing_else() {
    let rx = Receiver::start().await;
    rx.set_down(true);
    let env = Env::start_fake("otlp-outage", options(&rx, "")).await;
    let t = env.cp.submit(request(
        "echo during-outage; sleep 9; echo after-outage",
        env_vars(true),
        Some(telemetry(&rx, true)),
    ));
    until("the first batch refused", || rx.refused() >= 1).await;
    rx.set_down(false);
    let done = env.finished(&t.id).await;
    assert_eq!(
        done.state,
        TaskState::Succeeded,
        "the outage changed the task"
    );
    let bodies: Vec<String> = rx.records_of(&t.id).into_iter().map(|r| r.body).collect();
    assert!(bodies.contains(&"after-outage".to_string()), "{bodies:?}");
    assert!(
        !bodies.contains(&"during-outage".to_string()),
        "a refused batch was retried (PROTOCOL §8.3: no retry)"
    );
    assert_eq!(rx.refused(), 1);
    let refused = env
        .metric("berth_task_log_requests_total{result=\"http_error\"}")
        .await;
    assert_eq!(refused, 1.0);
    let failed = env
        .metric("berth_task_log_records_total{result=\"failed\"}")
        .await;
    assert!(failed >= 1.0, "the refused batch's records: {failed}");
    let exported = env
        .metric("berth_task_log_records_total{result=\"exported\"}")
        .await;
    assert_eq!(exported, rx.records().len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_delays_the_result_by_the_bound_only() {
    let rx = Receiver::start().await;
    // Accepts connections and never answers: every export request runs into its 5 s timeout.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/otlp", hung.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hung.accept().await {
            conns.push(c);
        }
    });
    let env = Env::start_fake("otlp-hung", options(&rx, "")).await;
    // Eight full batches: flushed one after the other they would take 40 s.
    let script: String = (0..1024).map(|i| format!("echo line-{i}; ")).collect();
    let started = std::time::Instant::now();
    let t = env.cp.submit(request(
        &script,
        env_vars(true),
        Some(TelemetryCollection {
            endpoint,
            ..telemetry(&rx, true)
        }),
    ));
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the result waited {:?} for task logs (bound: 5 s)",
        started.elapsed()
    );
    // Nothing reached a collector; what was read is counted as failed or dropped, and the
    // requests as unreachable (the 5 s timeout) or cut by the flush bound.
    let series = |f: &str, r: &str| format!("berth_task_log_{f}_total{{result=\"{r}\"}}");
    assert_eq!(env.metric(&series("records", "exported")).await, 0.0);
    let lost = env.metric(&series("records", "failed")).await
        + env.metric(&series("records", "dropped")).await;
    assert!(
        lost >= 128.0,
        "at least one full batch read and not delivered: {lost}"
    );
    let cut = env.metric(&series("requests", "unreachable")).await
        + env.metric(&series("requests", "deadline")).await;
    assert!(cut >= 1.0, "{cut}");
    held.abort();
}

/// A line cut by a hole in the output (here the spool's elision past `transcript.max_bytes`,
/// which stops the stored head at an arbitrary byte) is never joined across the hole: the
/// joined halves would hold parts of a secret no redaction recognises. Six tasks shift the
/// output by one byte each, so in some of them the head stops inside the secret whatever
/// berth's own lines before the output weigh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_line_is_joined_across_a_hole_in_the_output() {
    let rx = Receiver::start().await;
    let env = Env::start_fake(
        "otlp-hole",
        options(&rx, "transcript:\n  max_bytes: 65536\n  tail_bytes: 4101\n"),
    )
    .await;
    let line = format!("k={SHORT}\n");
    let mut leaked = Vec::new();
    for pad in 0..6 {
        let word = format!("burst{pad}");
        env.fake().script(
            &word,
            berth::backend::fake::Script::new()
                .prints(
                    berth::protocol::Stream::Stdout,
                    format!("{}\n{}", "x".repeat(pad), line.repeat(13_000)),
                )
                .exits(0),
        );
        let mut req = request("x", env_vars(true), Some(telemetry(&rx, true)));
        req.command = vec![word];
        let t = env.cp.submit(req);
        assert_eq!(env.finished(&t.id).await.state, TaskState::Succeeded);
        let bodies: Vec<String> = rx.records_of(&t.id).into_iter().map(|r| r.body).collect();
        assert!(
            bodies.iter().any(|b| b == "k=[REDACTED]"),
            "whole lines are exported"
        );
        leaked.extend(
            bodies
                .into_iter()
                .filter(|b| b.contains(&SHORT[..2]) || b.contains(&SHORT[1..])),
        );
    }
    assert!(
        leaked.is_empty(),
        "parts of a secret were exported: {leaked:?}"
    );
    // Each task's head stops at an arbitrary byte: at least the line it cuts is counted as
    // cut (not as too long: no line here is).
    let cut = env
        .metric("berth_task_log_records_total{result=\"cut\"}")
        .await;
    assert!(cut >= 6.0, "{cut}");
    let long = env
        .metric("berth_task_log_records_total{result=\"too_long\"}")
        .await;
    assert_eq!(long, 0.0);
}
