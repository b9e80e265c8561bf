//! Environment definitions on real Docker: inline (berth/1), named in the config, the
//! default, and their precedence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::AgentConfigSnapshot;
use support::*;

const SCRIPT: &str = "echo \"env=$FROM_ENV task=$FROM_TASK\"; pwd";

async fn env_with_named() -> Env {
    Env::start(
        "environments",
        EnvOptions {
            yaml: format!(
                "environments:\n  tools:\n    image: {BUSYBOX}\n    env: {{FROM_ENV: tools, FROM_TASK: overridden}}\n    workdir: /tmp\n  other:\n    env: {{FROM_ENV: other}}\ndefault_environment: other\n"
            ),
            ..EnvOptions::default()
        },
    )
    .await
}

fn request(environment_id: Option<&str>, inline: Option<serde_json::Value>) -> SubmitRequest {
    SubmitRequest {
        // Never used when an environment names its own image.
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), SCRIPT.into()],
        env: [("FROM_TASK".to_string(), "task".to_string())].into(),
        agent_config_snapshot: environment_id.map(|id| AgentConfigSnapshot {
            environment_id: Some(id.into()),
            ..AgentConfigSnapshot::default()
        }),
        environment: inline,
        ..SubmitRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_environment_sets_image_env_and_workdir_and_task_env_wins() {
    let env = env_with_named().await;
    let mut req = request(Some("tools"), None);
    req.image = Some("berth-test-does-not-exist:1".into());
    let (done, text) = env.run(req).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    assert!(
        text.contains("[berth] environment config:tools\n"),
        "{text}"
    );
    assert!(text.contains("env=tools task=task\n/tmp\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_environment_applies_when_none_or_an_unknown_one_is_named() {
    let env = env_with_named().await;
    for id in [None, Some("unknown")] {
        let (done, text) = env.run(request(id, None)).await;
        assert_eq!(done.state, TaskState::Succeeded);
        assert!(
            text.contains("[berth] environment config:other\n"),
            "{text}"
        );
        assert!(text.contains("env=other task=task\n/workspace\n"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_environment_wins_and_an_invalid_one_fails_before_anything_runs() {
    let env = env_with_named().await;
    let inline =
        serde_json::json!({"image": BUSYBOX, "env": {"FROM_ENV": "inline"}, "workdir": "/"});
    let (done, text) = env.run(request(Some("tools"), Some(inline))).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(
        text.contains("[berth] environment inline\n") && text.contains("env=inline task=task\n/\n"),
        "{text}"
    );
    // An inline definition that cannot be used fails before anything is pulled or created.
    let bad = serde_json::json!({"image": BUSYBOX, "setup": ["make"], "steps": ["x"]});
    let (done, text) = env.run(request(None, Some(bad))).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("workspace_setup"),
        "{done:?}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("environment inline is invalid") && msg.contains("steps"),
        "{msg}"
    );
    assert!(!text.contains("preparing image"), "{text}");
}
