//! The `berth` binary: exit codes, messages, signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};

use berth::devserver::state::TaskState;
use support::*;

fn berth(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("BERTH_API_KEY")
        .env_remove("WARP_API_KEY")
        .env_remove("BERTH_CONTROL_PLANE_URL")
        .env_remove("CREDENTIALS_DIRECTORY");
    c
}

#[test]
fn check_config_names_key_line_and_fix_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, "worker_id: warp-host\ncontrol_plane:\n  url: ws://example.com/ws\n  heartbeat_interval: 30\n").unwrap();
    let out = berth(&["check-config", "--config", p.to_str().unwrap()])
        .env("BERTH_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "c.yaml:1:12: worker_id",
        "c.yaml:3:8: control_plane.url",
        "c.yaml:4:23: control_plane.heartbeat_interval",
        "fix:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_config_rejects_unknown_keys_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        "worker_id: h\nbackend:\n  docker:\n    pul_policy: never\n",
    )
    .unwrap();
    let out = berth(&["check-config", "--config", p.to_str().unwrap()])
        .env("BERTH_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("c.yaml:4:5")
            && err.contains("unknown field `pul_policy`")
            && err.contains("pull_policy"),
        "{err}"
    );
}

#[test]
fn check_config_of_the_example_prints_the_effective_config_without_secrets() {
    let out = berth(&[
        "check-config",
        "--config",
        "config.example.yaml",
        "-e",
        "TOKEN=hunter2-secret",
    ])
    .env("WARP_API_KEY", "oz-compatible-key-value")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration is valid"));
    assert!(stdout.contains("worker_id: my-host-1"), "{stdout}");
    assert!(
        !stdout.contains("oz-compatible-key-value") && !stdout.contains("hunter2"),
        "{stdout}"
    );
}

#[test]
fn check_config_of_the_example_without_any_key_warns_and_exits_0() {
    // The install sequence of docs/operations.md runs this in a root shell, before the unit's credential
    // exists anywhere berth can see it.
    let out = berth(&["check-config", "config.example.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: no API key configured")
            && err.contains("/etc/berth/api-key.cred")
            && err.contains("berth verify"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("config.example.yaml: configuration is valid"),
        "{stdout}"
    );
    assert!(stdout.contains("none configured"), "{stdout}");
    // `run` still refuses to start without one.
    let out = berth(&["run", "--config", "config.example.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API key configured"));
}

#[test]
fn check_config_still_fails_on_a_key_source_it_cannot_read() {
    let out = berth(&["check-config", "--api-key-file", "/nonexistent/key"])
        .args(["--worker-id", "h1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read API key file"));
}

#[test]
fn run_without_a_reachable_docker_exits_1_and_says_what_to_check() {
    let out = berth(&[
        "run",
        "--worker-id",
        "h1",
        "--api-key",
        "k",
        "--control-plane-url",
        "ws://127.0.0.1:9/ws",
    ])
    .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/docker.sock") && err.contains("docker group"),
        "{err}"
    );
    // Logs written to a pipe (a file, journald) carry no ANSI escape codes.
    assert!(err.contains(" INFO ") || err.contains(" ERROR "), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}

#[test]
fn run_with_an_unreadable_key_file_exits_2() {
    let out = berth(&[
        "run",
        "--worker-id",
        "h1",
        "--api-key-file",
        "/nonexistent/key",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--api-key-file: cannot read API key file /nonexistent/key")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_running_tasks_reports_graceful_shutdown_and_exits_0() {
    let _images = Images::acquire();
    let cp = control_plane("cli-key", true, None).await;
    let id = worker_id("sigterm");
    let state = tempfile::tempdir().unwrap();
    let cfg = state.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("worker_id: {id}\nadmission:\n  min_free_disk: 0\napi:\n  listen: 127.0.0.1:0\n"),
    )
    .unwrap();
    let mut child = berth(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--worker-id",
        &id,
        "--control-plane-url",
        &cp.ws_url(),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--shutdown-mode",
        "cancel",
    ])
    .env("BERTH_API_KEY", "cli-key")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let guard = Cleanup(id.clone());
    until("worker connected", || !cp.workers().is_empty()).await;
    let t = cp.submit(berth::devserver::state::SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    });
    until("task running", || !containers_of_task(&t.id).is_empty()).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let done = cp.task(&t.id).unwrap();
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(done.failure_reason.as_deref(), Some("graceful_shutdown"));
    assert!(
        containers_of(&id).is_empty(),
        "container left running after shutdown"
    );
    drop(guard);
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_prints_the_outcome_and_exits_with_the_task_exit_code() {
    let env = Env::start("submit", EnvOptions::default()).await;
    let server = env.cp.http_url();
    let out = tokio::task::spawn_blocking(move || {
        berth(&[
            "submit",
            "--server",
            &server,
            "--image",
            BUSYBOX,
            "-e",
            "X=1",
            "--",
            "sh",
            "-c",
            "echo task-output; test \"$X\" = 1 && exit 7",
        ])
        .output()
        .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    // stdout is the task's own output only (it may be piped on); the outcome is on stderr.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "task-output\n");
    assert!(
        stderr.contains("failed") && stderr.contains("container_exit"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no colour when stderr is not a terminal: {stderr:?}"
    );
    let unreachable = berth(&[
        "submit",
        "--server",
        "http://127.0.0.1:9",
        "--image",
        "x",
        "--",
        "true",
    ])
    .output()
    .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is `berth dev` running?"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_notifies_ready_status_watchdog_and_stopping() {
    let _images = Images::acquire();
    let cp = control_plane("cli-key", true, None).await;
    let id = worker_id("notify");
    let state = tempfile::tempdir().unwrap();
    let sock = state.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(90)))
        .unwrap();
    let mut child = berth(&[
        "run",
        "--worker-id",
        &id,
        "--control-plane-url",
        &cp.ws_url(),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--api-listen",
        "off",
    ])
    .env("BERTH_API_KEY", "cli-key")
    .env("NOTIFY_SOCKET", &sock)
    .env("WATCHDOG_USEC", "2000000")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let guard = Cleanup(id.clone());
    let mut seen: Vec<String> = Vec::new();
    // Reads notifications until one matches `want` (90 s per datagram: start-up lists the
    // engine's containers, which a loaded shared engine can take long to answer).
    let until_seen = |seen: &mut Vec<String>, want: &dyn Fn(&str) -> bool| {
        while !seen.iter().any(|m| want(m)) {
            let mut b = [0u8; 512];
            let len = rx
                .recv(&mut b)
                .unwrap_or_else(|e| panic!("no notification for 90 s ({e}); seen: {seen:?}"));
            seen.push(String::from_utf8_lossy(&b[..len]).into_owned());
        }
    };
    tokio::task::block_in_place(|| {
        until_seen(&mut seen, &|m| m == "READY=1");
        until_seen(&mut seen, &|m| {
            m.starts_with("STATUS=connected (berth/1), 0/4 slots")
        });
        until_seen(&mut seen, &|m| m == "WATCHDOG=1");
    });
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}"
    );
    // A reload is framed for systemd: RELOADING=1 (with the monotonic time it wants), then
    // READY=1 with the outcome.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    tokio::task::block_in_place(|| {
        until_seen(&mut seen, &|m| {
            m.starts_with("RELOADING=1\nMONOTONIC_USEC=")
        });
        until_seen(&mut seen, &|m| m == "READY=1\nSTATUS=reload #1 applied");
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::task::block_in_place(|| until_seen(&mut seen, &|m| m == "STOPPING=1"));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    drop(guard);
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_the_running_one_when_invalid() {
    let _images = Images::acquire();
    let cp = control_plane("cli-key", true, None).await;
    let id = worker_id("reload");
    let state = tempfile::tempdir().unwrap();
    let sock = state.path().join("api.sock");
    let cfg = state.path().join("config.yaml");
    let write = |max: u32, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "worker_id: {id}\nmax_concurrent_tasks: {max}\nadmission:\n  min_free_disk: 0\napi:\n  listen: {}\nlabels: {{rack: r{max}}}\n{extra}",
                sock.display()
            ),
        )
        .unwrap()
    };
    write(1, "");
    let log = state.path().join("worker.log");
    let mut child = berth(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--control-plane-url",
        &cp.ws_url(),
        "--state-dir",
        state.path().to_str().unwrap(),
    ])
    .env("BERTH_API_KEY", "cli-key")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let guard = Cleanup(id.clone());
    let max_reported = || {
        cp.workers()
            .first()
            .and_then(|w| w.status.clone())
            .map(|s| s.max_concurrent_tasks)
    };
    until("first status", || max_reported() == Some(1)).await;
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    write(3, "");
    hup();
    until("reloaded slots reported", || max_reported() == Some(3)).await;
    let status = |sock: &std::path::Path| {
        let out = berth(&["status", "--json", "--api", sock.to_str().unwrap()])
            .output()
            .unwrap();
        serde_json::from_slice::<berth::admin::status::Status>(&out.stdout).unwrap()
    };
    assert_eq!(status(&sock).worker.max_concurrent_tasks, 3);
    let last = status(&sock).last_reload.unwrap();
    assert_eq!((last.generation, last.applied), (1, true), "{last:?}");
    // An invalid file: every error logged, the running configuration kept, still serving.
    write(5, "bogus_key: 1\n");
    hup();
    until("refusal logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reload refused")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("bogus_key"), "{text}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(status(&sock).worker.max_concurrent_tasks, 3);
    // The refusal is visible without the log: status, its text form and the metrics.
    let last = status(&sock).last_reload.unwrap();
    assert_eq!((last.generation, last.applied), (2, false), "{last:?}");
    assert!(last.message.contains("bogus_key"), "{last:?}");
    let text = berth(&["status", "--api", sock.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("reload   #2 REFUSED"));
    // `berth reload` (the unit's ExecReload) waits for the verdict and exits with it.
    let pid = child.id().to_string();
    let reload = || {
        berth(&["reload", "--pid", &pid, "--api", sock.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let refused = reload();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("reload #3 refused"));
    write(4, "");
    let applied = reload();
    assert_eq!(
        applied.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(String::from_utf8_lossy(&applied.stderr).contains("reload #4 applied"));
    assert_eq!(status(&sock).worker.max_concurrent_tasks, 4);
    // A task still runs end to end after the reloads.
    let t = cp.submit(berth::devserver::state::SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["echo".into(), "after-reload".into()],
        ..Default::default()
    });
    let done = cp
        .wait(&t.id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(guard);
    cp.shutdown();
}

#[test]
fn help_never_shows_the_value_of_an_env_var() {
    for verb in ["run", "submit", "logs", "status", "dev"] {
        let out = berth(&[verb, "--help"])
            .env("BERTH_SERVER", "http://secret-host:1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{verb}: {text}");
        assert!(
            text.contains("[env: "),
            "{verb} documents its env vars: {text}"
        );
        assert!(
            !text.contains("=]") && !text.contains("secret-host"),
            "{verb} --help shows an env value: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_each_dependency_with_a_real_handshake() {
    let cp = control_plane("verify-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let run = |key: &'static str, json: bool| {
        let mut c = berth(&["verify", "--worker-id", &worker_id("verify")]);
        c.args(["--control-plane-url", &cp.ws_url(), "--api-listen", "off"])
            .args(["--state-dir", state_dir.to_str().unwrap()]);
        if !key.is_empty() {
            c.args(["--api-key", key]);
        }
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let good = run("verify-key", false);
    let text = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{text}");
    for check in [
        "config",
        "api key",
        "control plane",
        "docker",
        "dns",
        "networks",
        "state dir",
        "policy",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check} in:\n{text}"
        );
    }
    // The engine's version and whether the DNS channel (CVE-2024-29018) is closed.
    let engine = Command::new("docker")
        .args(["version", "-f", "{{.Server.Version}}"])
        .output()
        .unwrap();
    let engine = String::from_utf8_lossy(&engine.stdout).trim().to_string();
    let dns = text
        .lines()
        .find(|l| l.contains(" dns "))
        .unwrap_or_default();
    assert!(
        dns.contains(&format!("engine {engine}")) && dns.contains("mitigation in force"),
        "{dns}"
    );
    assert!(
        text.contains("handshake accepted the key (berth/1)"),
        "{text}"
    );
    // A refused key fails that line, and the command.
    let bad = run("wrong-key", true);
    assert_eq!(bad.status.code(), Some(1));
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&bad.stdout).unwrap();
    let cp_check = checks
        .iter()
        .find(|c| c["name"] == "control plane")
        .unwrap();
    assert_eq!(cp_check["ok"], false);
    assert!(
        cp_check["detail"].as_str().unwrap().contains("HTTP 401"),
        "{cp_check}"
    );
    assert!(
        checks.iter().filter(|c| c["ok"] == false).count() == 1,
        "{checks:?}"
    );
    // No key at all: named, and the control plane is not dialled.
    let none = run("", false);
    let text = String::from_utf8_lossy(&none.stdout);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        text.contains("FAIL api key") && text.contains("not dialled"),
        "{text}"
    );
    assert!(!state_dir.exists(), "verify creates nothing");
    cp.shutdown();
}

#[test]
fn data_commands_print_json_with_json() {
    let v: serde_json::Value =
        serde_json::from_slice(&berth(&["version", "--json"]).output().unwrap().stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let out = berth(&["check-config", "config.example.yaml", "--json"])
        .env("BERTH_API_KEY", "k-json-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["worker_id"], "my-host-1");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("k-json-value"));
}

#[test]
fn a_closed_stdout_ends_data_commands_quietly() {
    // `berth tasks | head`: the reader is gone before berth writes. println! panicked (101).
    for args in [
        &["version"][..],
        &["check-config", "config.example.yaml", "--json"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = berth(args)
            .env("BERTH_API_KEY", "k-pipe")
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
