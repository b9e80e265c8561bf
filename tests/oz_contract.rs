//! The Oz container contract end to end: an oz/1-only server, a locally built fake agent
//! sidecar whose `/agent/entrypoint.sh` records argv, env, cwd and mount mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use berth::config::Overrides;
use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::{AgentConfigSnapshot, Owner, RawJson};
use berth::spec::image::{ImageRef, sidecar_volume_name};
use support::*;

fn snapshot() -> AgentConfigSnapshot {
    let mcp: BTreeMap<String, RawJson> =
        serde_json::from_str(r#"{"b": {"x": 1}, "a": {}}"#).unwrap();
    AgentConfigSnapshot {
        model_id: Some(" m-1 ".into()),
        environment_id: Some("env-1".into()),
        mcp_servers: Some(mcp),
        idle_timeout_minutes: Some(7),
        ..AgentConfigSnapshot::default()
    }
}

fn oz_request(env_vars: &[(&str, &str)]) -> SubmitRequest {
    SubmitRequest {
        image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        // berth/1 only: an oz/1 server's worker must ignore it and run the agent.
        command: vec!["should-be-ignored".into()],
        env: env_vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        owner: Some(Owner {
            kind: "TEAM".into(),
            id: 9,
        }),
        agent_config_snapshot: Some(snapshot()),
        additional_oz_args: vec!["--extra-flag".into()],
        ..SubmitRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oz_assignment_runs_the_agent_exactly_as_the_oz_worker_would() {
    let out = tempfile::tempdir().unwrap();
    let env = Env::start(
        "oz",
        EnvOptions {
            accept_berth: false,
            overrides: Overrides {
                volumes: vec![format!("{}:/out", out.path().display())],
                env: vec![
                    "OPERATOR_VAR=from-operator".into(),
                    "SHARED=operator-wins".into(),
                    "WARP_METADATA_ORIGIN=operator".into(),
                ],
                ..Overrides::default()
            },
            ..EnvOptions::default()
        },
    )
    .await;
    assert!(
        !env.cp.workers()[0].berth,
        "oz/1 server must not negotiate berth/1"
    );

    // Two tasks needing the same sidecar at once: one copy, one volume.
    let a = env.cp.submit(oz_request(&[]));
    let b = env.cp.submit(oz_request(&[]));
    for id in [&a.id, &b.id] {
        let t = env.finished(id).await;
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    }
    let image_id = {
        let o = Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Id}}", SIDECAR])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let want_volume = sidecar_volume_name(&ImageRef::parse(SIDECAR).unwrap(), &image_id);
    let vols = Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=berth.sidecar_image=docker.io/library/{SIDECAR}"),
        ])
        .output()
        .unwrap();
    let vols: Vec<String> = String::from_utf8_lossy(&vols.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        vols,
        vec![want_volume.clone()],
        "exactly one sidecar volume, named by the contract"
    );
    assert!(
        want_volume.starts_with("berth-test-sidecar-")
            && want_volume.len() == "berth-test-sidecar-".len() + 12
    );

    let t = env.cp.submit(oz_request(&[
        ("MY_SECRET", "s3cr3t-value"),
        ("SHARED", "from-task"),
        ("GIT_TERMINAL_PROMPT", "1"),
        ("WARP_METADATA_ORIGIN", "run"),
    ]));
    let t = env.finished(&t.id).await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");

    let read = |f: &str| std::fs::read_to_string(out.path().join(f)).unwrap();
    let argv: Vec<String> = read("argv").lines().map(String::from).collect();
    let want: Vec<String> = [
        "agent",
        "run",
        "--share",
        "team:edit",
        "--task-id",
        &t.id,
        "--sandboxed",
        "--server-root-url",
        "https://app.warp.dev",
        "--model",
        "m-1",
        "--mcp",
        r#"{"a":{},"b":{"x":1}}"#,
        "--computer-use",
        "--environment",
        "env-1",
        "--extra-flag",
        "--idle-on-complete",
        "7m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(argv, want);

    let envs = read("env");
    for line in [
        format!("TASK_ID={}", t.id),
        "GIT_TERMINAL_PROMPT=1".to_string(),
        "GH_PROMPT_DISABLED=1".to_string(),
        "WARP_SERVER_ROOT_URL=https://app.warp.dev".to_string(),
        "MY_SECRET=s3cr3t-value".to_string(),
        "SHARED=operator-wins".to_string(),
        "OPERATOR_VAR=from-operator".to_string(),
        // PROTOCOL §7: every well-known variable under both names, and the run's metadata
        // never overridden by the operator.
        format!("OZ_RUN_ID={}", t.id),
        format!("WARP_RUN_ID={}", t.id),
        "OZ_WORKER_BACKEND=docker".to_string(),
        "WARP_WORKER_BACKEND=docker".to_string(),
        "OZ_SERVER_ROOT_URL=https://app.warp.dev".to_string(),
        format!("OZ_DOCKER_IMAGE=docker.io/library/{BUSYBOX}"),
        format!("WARP_DOCKER_IMAGE=docker.io/library/{BUSYBOX}"),
        "WARP_METADATA_ORIGIN=run".to_string(),
    ] {
        assert!(
            envs.lines().any(|l| l == line),
            "missing {line:?} in:\n{envs}"
        );
    }
    let value = |name: &str| {
        envs.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    assert_eq!(value("OZ_EXECUTION_ID"), value("WARP_EXECUTION_ID"));
    assert_eq!(read("cwd").trim(), "/workspace");
    assert_eq!(
        read("agent_mount").trim(),
        "ro",
        "the agent sidecar must be mounted read-only"
    );
    assert!(containers_of(&env.worker_id).is_empty());
    // The copy helpers never outlive the copy (this test's: other tests copy other sidecars
    // at the same time).
    let helpers = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=berth.sidecar=copy",
            "--filter",
            &format!("ancestor={SIDECAR}"),
        ])
        .output()
        .unwrap();
    assert!(helpers.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_errors_fail_the_task_with_sidecar_prep() {
    let env = Env::start("sidecar-bad", EnvOptions::default()).await;
    let mut req = oz_request(&[]);
    req.additional_sidecars = vec![berth::protocol::AdditionalSidecar {
        image: String::new(),
        mount_path: "/x".into(),
        read_write: false,
    }];
    let t = env.cp.submit(req);
    let t = env.finished(&t.id).await;
    assert_eq!(t.failure_reason.as_deref(), Some("sidecar_prep"), "{t:?}");
    assert_eq!(
        t.message.as_deref(),
        Some("Failed to execute task: additional sidecar has empty image")
    );
}

/// Removes an image and the sidecar volumes made from it when dropped.
struct TestImage(&'static str);
impl Drop for TestImage {
    fn drop(&mut self) {
        let filter = format!("label=berth.sidecar_image=docker.io/library/{}", self.0);
        if let Ok(o) = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", &filter])
            .output()
        {
            for v in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f", v])
                    .output();
            }
        }
        let _ = Command::new("docker").args(["rmi", "-f", self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_image_without_etc_passwd_is_copied() {
    let env = Env::start("sidecar-nopasswd", EnvOptions::default()).await;
    // A distroless-like sidecar: no /etc/passwd, so no user named root.
    let image = TestImage("berth-test-nopasswd:latest");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {BUSYBOX}\nRUN rm /etc/passwd\nLABEL berth.test=true\n"),
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", image.0])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let t = env.cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        sidecar_image: Some(image.0.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "test -x /agent/bin/busybox && test ! -e /agent/etc/passwd".into(),
        ],
        ..SubmitRequest::default()
    });
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
}

/// PROTOCOL.md §8.2 and §8.5 end to end on an oz/1 server: the newer snapshot fields and a
/// lifecycle-hook context reach the agent's argv in their places; a context that fails its
/// checks is refused before any claim, with the refusal as the reason, and nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_oz_fields_reach_the_argv_and_a_bad_hook_context_is_refused_before_a_claim() {
    let out = tempfile::tempdir().unwrap();
    let env = Env::start(
        "oz-newer",
        EnvOptions {
            accept_berth: false,
            overrides: Overrides {
                volumes: vec![format!("{}:/out", out.path().display())],
                ..Overrides::default()
            },
            ..EnvOptions::default()
        },
    )
    .await;
    let digest = "ab".repeat(32);
    let ctx = format!(
        r#"{{"required": true, "supported_payload_schema_versions": ["warp.oz_hook.v1"],
            "project_trust": [{{"git_root": "/workspace/r", "config_path": "/workspace/r/.warp/hooks.json", "sha256": "{digest}"}}]}}"#
    );
    let raw = |text: &str| -> RawJson { serde_json::from_str(text).unwrap() };
    let overrides: Vec<berth::protocol::RepositoryHeadOverride> = serde_json::from_str(
        r#"[{"code_forge": "GITHUB", "repo_owner": "o", "repo_name": "r",
             "head": {"type": "COMMIT_SHA", "value": "abc123"}, "preserve_origin": false}]"#,
    )
    .unwrap();
    let mut req = oz_request(&[]);
    req.agent_config_snapshot = Some(AgentConfigSnapshot {
        computer_use_model_id: Some("cu-model".into()),
        repository_head_overrides: Some(overrides),
        ..snapshot()
    });
    req.oz_lifecycle_hooks = Some(raw(&ctx));
    let t = env.cp.submit(req.clone());
    let t = env.finished(&t.id).await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let argv: Vec<String> = std::fs::read_to_string(out.path().join("argv"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let tail: Vec<&str> = argv.iter().skip(13).map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "--computer-use",
            "--computer-use-model",
            "cu-model",
            "--environment",
            "env-1",
            "--repository-head-override-json",
            r#"{"code_forge":"GITHUB","repo_owner":"o","repo_name":"r","head":{"type":"COMMIT_SHA","value":"abc123"}}"#,
            "--remove-repository-origins",
            "--extra-flag",
            "--idle-on-complete",
            "7m",
            "--oz-lifecycle-hooks-context",
            &format!(
                r#"{{"required":true,"supported_payload_schema_versions":["warp.oz_hook.v1"],"project_trust":[{{"git_root":"/workspace/r","config_path":"/workspace/r/.warp/hooks.json","sha256":"{digest}"}}]}}"#
            ),
        ],
        "{argv:?}"
    );

    // A context the CLI could not trust: refused, requeued, never claimed or started.
    req.oz_lifecycle_hooks = Some(raw(&ctx.replace(&digest, "not-a-digest")));
    let bad = env.cp.submit(req);
    env.until("the refusal", || {
        env.cp.task(&bad.id).is_some_and(|t| t.rejections > 0)
    })
    .await;
    let t = env.cp.task(&bad.id).unwrap();
    assert_eq!(
        t.last_rejection.as_deref(),
        Some("oz_lifecycle_hooks.project_trust[0].sha256 is not 64 hexadecimal characters")
    );
    assert_eq!(t.state, TaskState::Queued, "{t:?}");
    assert!(t.claimed_at.is_none(), "never claimed: {t:?}");
    assert!(containers_of_task(&bad.id).is_empty());
    let m = env.metrics().await;
    assert!(
        m.contains(r#"oz_worker_tasks_rejected_total{reason="incompatible_task"}"#),
        "{m}"
    );
    env.cp.cancel(&bad.id).ok();
}
