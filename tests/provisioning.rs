//! Provisioning phases on real Docker: repositories cloned inside the task's container from a
//! local bare repository (bind-mounted, no network), setup commands with their exit codes,
//! every phase announced with its duration, environment resources, and environments fetched
//! from the control plane's API with its cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::AgentConfigSnapshot;
use support::*;

/// A bare repository with two commits on `main`: `VERSION` is 1 at tag `v1`, 2 at `main`.
struct Repo {
    dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("/usr/bin/git")
        .args([
            "-c",
            "user.name=berth",
            "-c",
            "user.email=berth@test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git(root, &["init", "-q", "--bare", "repo.git"]);
        let work = root.join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("VERSION"), "1\n").unwrap();
        git(&work, &["add", "VERSION"]);
        git(&work, &["commit", "-qm", "one"]);
        git(&work, &["tag", "v1"]);
        std::fs::write(work.join("VERSION"), "2\n").unwrap();
        git(&work, &["commit", "-qam", "two"]);
        git(
            &work,
            &[
                "push",
                "-q",
                "../repo.git",
                "HEAD:refs/heads/main",
                "--tags",
            ],
        );
        git(
            &root.join("repo.git"),
            &["symbolic-ref", "HEAD", "refs/heads/main"],
        );
        Repo { dir }
    }

    /// Operator volume making the repository visible at /srv/repo.git in task containers.
    fn docker_yaml(&self) -> String {
        format!("    volumes: ['{}:/srv:ro']\n", self.dir.path().display())
    }
}

async fn start(name: &str, repo: &Repo, yaml: &str) -> Env {
    Env::start(
        name,
        EnvOptions {
            docker_yaml: repo.docker_yaml(),
            yaml: yaml.to_string(),
            ..EnvOptions::default()
        },
    )
    .await
}

fn task(command: &str, inline: Option<serde_json::Value>) -> SubmitRequest {
    SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), command.into()],
        environment: inline,
        ..SubmitRequest::default()
    }
}

/// Index of `needle` in `text` after `from`, panicking with the transcript when absent.
fn after(text: &str, from: usize, needle: &str) -> usize {
    match text[from..].find(needle) {
        Some(i) => from + i + needle.len(),
        None => panic!("{needle:?} not found after byte {from} in:\n{text}"),
    }
}

fn has_duration(text: &str, prefix: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(" finished in "))
            .and_then(|rest| rest.strip_suffix(" ms"))
            .is_some_and(|n| n.parse::<u64>().is_ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_runs_in_order_in_the_task_container_and_is_announced_with_its_duration() {
    let repo = Repo::new();
    let env = start("provision", &repo, "").await;
    let image = git_image(&env.images);
    let inline = serde_json::json!({
        "image": image,
        "repos": [
            {"url": "/srv/repo.git", "ref": "v1", "path": "app"},
            {"url": "/srv/repo.git"}
        ],
        "setup": [
            "cat VERSION > /tmp/from-setup; echo setup-out; echo setup-err >&2",
            "test -f /workspace/repo/VERSION"
        ],
        "workdir": "/workspace/app",
        "env": {"FROM_ENV": "yes"}
    });
    let cmd = "echo task-start; cat /tmp/from-setup; cat /workspace/repo/VERSION; echo env=$FROM_ENV; pwd";
    let (done, text) = env.run(task(cmd, Some(inline))).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    // Order: environment, image, container, clones, setup, release, task, exit.
    let mut at = 0;
    for needle in [
        "[berth] environment inline\n",
        "[berth] preparing image",
        "[berth] image ready in ",
        "[berth] container ",
        " ms, started in ",
        "[berth] clone /srv/repo.git into /workspace/app at v1\n",
        "[berth] check out v1 in /workspace/app\n",
        "[berth] clone /srv/repo.git into /workspace/repo\n",
        "[berth] setup 1/2: cat VERSION",
        "setup-out\n",
        "[berth] setup 2/2: test -f /workspace/repo/VERSION\n",
        "[berth] provisioning finished in ",
        // The setup ran in the workdir at tag v1; the second clone is at main.
        "task-start\n1\n2\nenv=yes\n/workspace/app\n",
        "[berth] container exited with status 0\n",
    ] {
        at = after(&text, at, needle);
    }
    assert!(text.contains("setup-err\n"), "{text}");
    for step in [
        "[berth] clone /srv/repo.git into /workspace/app at v1",
        "[berth] check out v1 in /workspace/app",
        "[berth] clone /srv/repo.git into /workspace/repo",
        "[berth] setup 2/2: test -f /workspace/repo/VERSION",
    ] {
        assert!(
            has_duration(&text, step),
            "no duration for {step:?}:\n{text}"
        );
    }
    assert!(
        containers_of(&env.worker_id).is_empty(),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_setup_command_reports_its_exit_code_and_the_task_never_runs() {
    let repo = Repo::new();
    let env = start("setup-fail", &repo, "").await;
    let inline = serde_json::json!({
        "image": BUSYBOX,
        "setup": ["echo preparing", "echo broken >&2; exit 3", "echo never"]
    });
    let (done, text) = env.run(task("echo TASK-RAN", Some(inline))).await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(done.failure_reason.as_deref(), Some("setup_command"));
    assert_eq!(done.exit_code, Some(3), "{done:?}");
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("setup 2/3: echo broken >&2; exit 3 exited with status 3"),
        "{msg}"
    );
    let ran = after(&text, 0, "[berth] setup 1/3: echo preparing\npreparing\n");
    after(
        &text,
        ran,
        "[berth] setup 2/3: echo broken >&2; exit 3\nbroken\n",
    );
    assert!(
        !text.contains("TASK-RAN") && !text.contains("never\n"),
        "{text}"
    );
    assert!(
        containers_of(&env.worker_id).is_empty(),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_that_fails_is_a_workspace_setup_failure_naming_the_repository() {
    let repo = Repo::new();
    let env = start("clone-fail", &repo, "").await;
    let image = git_image(&env.images);
    let missing = serde_json::json!({"image": image, "repos": [{"url": "/srv/missing.git"}]});
    let (done, text) = env.run(task("echo TASK-RAN", Some(missing))).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("workspace_setup"),
        "{done:?}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains(
            "clone /srv/missing.git into /workspace/missing failed with git exit status 128"
        ),
        "{msg}"
    );
    // git's own message is in the transcript.
    assert!(text.contains("missing.git"), "{text}");
    assert!(!text.contains("TASK-RAN"), "{text}");
    // An unknown ref fails the checkout step.
    let bad_ref =
        serde_json::json!({"image": image, "repos": [{"url": "/srv/repo.git", "ref": "nope"}]});
    let (done, _) = env.run(task("true", Some(bad_ref))).await;
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("check out nope in /workspace/repo failed"),
        "{msg}"
    );
    // An image without git: the message says what to add.
    let no_git = serde_json::json!({"image": BUSYBOX, "repos": [{"url": "/srv/repo.git"}]});
    let (done, _) = env.run(task("true", Some(no_git))).await;
    let msg = done.message.clone().unwrap_or_default();
    assert!(msg.contains("add git to the environment's image"), "{msg}");
    // A path escaping /workspace is refused before anything is created.
    let escape = serde_json::json!({"repos": [{"url": "/srv/repo.git", "path": "../etc"}]});
    let (done, text) = env.run(task("true", Some(escape))).await;
    assert_eq!(done.failure_reason.as_deref(), Some("workspace_setup"));
    assert!(
        done.message
            .clone()
            .unwrap_or_default()
            .contains("environment inline is invalid"),
        "{text}"
    );
    assert!(!text.contains("preparing image"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_environment_provisions_and_its_resources_become_the_limits() {
    let repo = Repo::new();
    let yaml = "cleanup: false\nenvironments:\n  app:\n    setup: ['echo named-setup > /tmp/mark']\n    resources: {cpus: 0.5, memory: 64MiB}\n";
    let env = start("named-provision", &repo, yaml).await;
    let mut req = task("cat /tmp/mark", None);
    req.agent_config_snapshot = Some(AgentConfigSnapshot {
        environment_id: Some("app".into()),
        ..AgentConfigSnapshot::default()
    });
    let (done, text) = env.run(req).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    assert!(text.contains("[berth] environment config:app\n"), "{text}");
    assert!(
        text.contains("[berth] setup 1/1: echo named-setup"),
        "{text}"
    );
    let after_release = after(&text, 0, "[berth] provisioning finished in ");
    assert!(text[after_release..].contains("named-setup\n"), "{text}");
    let ids = containers_of(&env.worker_id);
    assert_eq!(ids.len(), 1);
    let inspect = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
            &ids[0],
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        format!("500000000 {}", 64 << 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_setup_stops_the_container_at_once() {
    let repo = Repo::new();
    let env = start("setup-cancel", &repo, "").await;
    let inline = serde_json::json!({"image": BUSYBOX, "setup": ["echo waiting; sleep 300"]});
    let t = env.cp.submit(task("echo TASK-RAN", Some(inline)));
    until("setup running", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("waiting\n"))
    })
    .await;
    let asked = std::time::Instant::now();
    env.cp.cancel(&t.id).unwrap();
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    // The holder exits on SIGTERM: no stop_grace_period wait, let alone 300 s.
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );
    until("container removed", || {
        containers_of(&env.worker_id).is_empty()
    })
    .await;
}

/// The environments API of the embedded control plane, cached by the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_environments_are_cached_revalidated_and_used_stale_when_the_api_fails() {
    let env = Env::start(
        "env-api",
        EnvOptions {
            control_plane_yaml:
                "  environments_url: '{http}/api/v1/environments/{id}'\n  environments_ttl: 5s\n"
                    .into(),
            ..EnvOptions::default()
        },
    )
    .await;
    env.cp.put_environment(
        "remote",
        serde_json::json!({"image": BUSYBOX, "env": {"FROM_API": "v1"}, "setup": ["echo api-setup"]}),
    );
    let req = |id: &str| {
        let mut r = task("echo from-api=$FROM_API", None);
        r.agent_config_snapshot = Some(AgentConfigSnapshot {
            environment_id: Some(id.into()),
            ..AgentConfigSnapshot::default()
        });
        r
    };
    let (done, text) = env.run(req("remote")).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    assert!(
        text.contains("[berth] environment api:remote: fetched in "),
        "{text}"
    );
    assert!(
        text.contains("api-setup\n") && text.contains("from-api=v1\n"),
        "{text}"
    );
    // Within the TTL: no request at all. (5 s: a loaded CI machine took over 1 s to start the
    // first run's container, so a 1 s TTL had expired before the second run asked.)
    let (_, text) = env.run(req("remote")).await;
    assert!(
        text.contains("[berth] environment api:remote: cached copy\n"),
        "{text}"
    );
    assert_eq!(env.cp.environment_requests(200), 1);
    // After the TTL: revalidated with the ETag (304).
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let (_, text) = env.run(req("remote")).await;
    assert!(text.contains("cached copy, still current"), "{text}");
    assert_eq!(env.cp.environment_requests(304), 1);
    // A change on the server is picked up at the next revalidation.
    env.cp.put_environment(
        "remote",
        serde_json::json!({"image": BUSYBOX, "env": {"FROM_API": "v2"}}),
    );
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let (_, text) = env.run(req("remote")).await;
    assert!(text.contains("from-api=v2\n"), "{text}");
    // The API fails: the last copy is used, and the transcript says so.
    env.cp.set_environments_down(true);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let (done, text) = env.run(req("remote")).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    assert!(
        text.contains("the control plane's API failed (HTTP 503 Service Unavailable); using the last copy fetched"),
        "{text}"
    );
    assert!(text.contains("from-api=v2\n"), "{text}");
    // Never fetched and the API is down: workspace_setup naming the environment.
    let (done, _) = env.run(req("ghost")).await;
    assert_eq!(done.failure_reason.as_deref(), Some("workspace_setup"));
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("environment ghost could not be fetched") && msg.contains("no earlier copy"),
        "{msg}"
    );
    // The API is back but does not know it: a 404 is authoritative.
    env.cp.set_environments_down(false);
    let (done, _) = env.run(req("ghost")).await;
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("environment ghost does not exist on the control plane"),
        "{msg}"
    );
    // A configured name wins over the API.
    assert_eq!(
        env.cp.environment_requests(401),
        0,
        "the bearer key is sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_provisioning_ends_the_task_cleanly_after_restart() {
    let images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("provision-kill9");
    let _cleanup = Cleanup(id.clone());
    let mut first = worker_process(&cp, &id, state.path(), &[]);
    until("worker connected", || !cp.workers().is_empty()).await;
    let inline = serde_json::json!({"image": BUSYBOX, "setup": ["echo waiting; sleep 300"]});
    let t = cp.submit(task("echo TASK-RAN", Some(inline)));
    until("setup running", || {
        cp.transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("waiting\n"))
    })
    .await;
    first.kill().unwrap(); // SIGKILL: the held container outlives the worker
    first.wait().unwrap();
    assert_eq!(containers_of(&id).len(), 1);
    let mut second = worker_process(&cp, &id, state.path(), &[]);
    until("task reported", || {
        cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    let done = cp.task(&t.id).unwrap();
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("workspace_setup"),
        "{done:?}"
    );
    assert_eq!(done.terminal_distinct, 1);
    assert!(
        done.message
            .clone()
            .unwrap_or_default()
            .contains("berth restarted while the task's environment was being provisioned"),
    );
    let text = String::from_utf8_lossy(&cp.transcript(&t.id).unwrap()).into_owned();
    assert!(!text.contains("TASK-RAN"), "{text}");
    until("container removed", || containers_of(&id).is_empty()).await;
    second.kill().unwrap();
    second.wait().unwrap();
    cp.shutdown();
    drop(images);
}

/// The setup events of a task with a sidecar, a clone and a setup command, in order.
const PHASES: [&str; 5] = [
    "setup_worker_image_pull",
    "setup_worker_sidecar_prep",
    "setup_worker_container_start",
    "berth_setup_repo_clone",
    "berth_setup_commands",
];

/// A timestamp of a setup event.
fn ts(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// The setup events stored for `id` once `n` have arrived (they are posted in the background
/// and may land after the result).
async fn events(env: &Env, id: &str, n: usize) -> Vec<berth::devserver::state::ClientEvent> {
    until(&format!("{n} setup events"), || {
        env.cp.task(id).is_some_and(|t| t.events.len() >= n)
    })
    .await;
    env.cp.task(id).unwrap().events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_phases_are_posted_as_events_with_the_runs_tokens_and_never_without_them() {
    let repo = Repo::new();
    let env = Env::start(
        "setup-events",
        EnvOptions {
            docker_yaml: repo.docker_yaml(),
            control_plane_yaml: "  server_root_url: {http}\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let image = git_image(&env.images);
    let tokens = [
        ("WARP_API_KEY".to_string(), "run-key-1".to_string()),
        ("WARP_WORKLOAD_TOKEN".to_string(), "workload-1".to_string()),
    ];
    let req = |setup: &str, env: &[(String, String)]| SubmitRequest {
        env: env.iter().cloned().collect(),
        additional_sidecars: vec![berth::protocol::AdditionalSidecar {
            image: SIDECAR.into(),
            mount_path: "/opt/side".into(),
            read_write: false,
        }],
        ..task(
            "echo task",
            Some(serde_json::json!({
                "image": image,
                "repos": [{"url": "/srv/repo.git"}],
                "setup": [setup],
            })),
        )
    };
    let (done, text) = env.run(req("sleep 0.3", &tokens)).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    let got = events(&env, &done.id, 5).await;
    let names: Vec<&str> = got.iter().map(|e| e.event_name.as_str()).collect();
    assert_eq!(names, PHASES, "one event per phase, in the order they ran");
    let mut previous_finish = ts(&got[0].start_ts);
    for e in &got {
        let (start, finish) = (ts(&e.start_ts), ts(&e.finish_ts));
        assert!(!e.is_error, "{e:?}");
        assert!(start <= finish, "{e:?}");
        assert!(
            start >= previous_finish,
            "phases do not overlap: {e:?} began before the one before it ended"
        );
        previous_finish = finish;
        assert_eq!(
            e.latency_ms as i64,
            (finish - start).num_milliseconds(),
            "{e:?}"
        );
        assert_eq!(ts(&e.timestamp), finish);
        assert!(
            start >= done.created_at - chrono::Duration::seconds(1) && e.latency_ms < 60_000,
            "implausible timing: {e:?}"
        );
        assert!(uuid::Uuid::parse_str(&e.event_uuid).is_ok(), "{e:?}");
    }
    // The setup command slept 0.3 s: its event says so.
    assert!(got[4].latency_ms >= 300, "{:?}", got[4]);

    // A failing setup command is reported as an error; nothing after it ran.
    let (failed, _) = env.run(req("exit 3", &tokens)).await;
    assert_eq!(failed.state, TaskState::Failed);
    let got = events(&env, &failed.id, 5).await;
    assert_eq!(got[4].event_name, "berth_setup_commands");
    assert!(got[4].is_error, "{:?}", got[4]);
    assert!(got[..4].iter().all(|e| !e.is_error), "{got:?}");

    // A phase the cancellation cut short is never reported; the ones before it were.
    let cut = env.cp.submit(req("sleep 60", &tokens));
    until("setup command running", || {
        env.cp
            .transcript(&cut.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("[berth] setup 1/1: sleep 60"))
    })
    .await;
    env.cp.cancel(&cut.id).unwrap();
    let cancelled = env.finished(&cut.id).await;
    assert_eq!(cancelled.state, TaskState::Cancelled);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = events(&env, &cut.id, 4)
        .await
        .into_iter()
        .map(|e| e.event_name)
        .collect();
    assert_eq!(
        names,
        PHASES[..4],
        "no event for the interrupted setup command"
    );

    // Without both tokens nothing is posted (the server would refuse it anyway).
    let (alone, _) = env.run(req("true", &tokens[..1])).await;
    assert_eq!(alone.state, TaskState::Succeeded);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.cp.task(&alone.id).unwrap().events,
        [],
        "events sent without the workload token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_profile_still_clones_builds_and_writes_the_workspace() {
    let repo = Repo::new();
    let env = Env::start(
        "strict",
        EnvOptions {
            docker_yaml: format!(
                "{}    policy:\n      security:\n        profile: strict\n      egress:\n        proxy_port: {}\n",
                repo.docker_yaml(),
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            ),
            ..EnvOptions::default()
        },
    )
    .await;
    let _sealed = SealedCleanup(env.worker_id.clone());
    // The task is not root: the test's local repository is made the task user's, or git's
    // ownership check refuses it (a clone over https has no such check).
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(repo.dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let image = git_image(&env.images);
    let inline = serde_json::json!({
        "image": image,
        "repos": [{"url": "/srv/repo.git", "path": "app"}],
        "setup": ["mkdir -p build && cp VERSION build/out && echo built"],
        "workdir": "/workspace/app",
    });
    let cmd = "echo uid=$(id -u); grep CapEff /proc/self/status; \
               touch /rootfs-write 2>/dev/null && echo rootfs-writable || echo rootfs-read-only; \
               echo tmp > /tmp/t && echo tmp-ok; cat build/out; echo home=$HOME; \
               echo net=$http_proxy";
    let (done, text) = env.run(task(cmd, Some(inline))).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    for needle in [
        "built\n",
        "uid=65534\n",
        "CapEff:\t0000000000000000\n",
        "rootfs-read-only\n",
        "tmp-ok\n",
        "2\n",
        "home=/tmp\n",
        "net=http://",
        "[berth] egress: ",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}
