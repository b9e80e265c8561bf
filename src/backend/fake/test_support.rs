//! What the fake's tests share: specs, started sandboxes, reading and waiting.

use std::time::Duration;

use futures_util::StreamExt;

use super::FakeBackend;
use crate::backend::{Backend, LogEntry, LogStream};
use crate::protocol::Stream;
use crate::spec::owner::Owner;
use crate::spec::{LABEL_EXECUTION, LABEL_TASK, SandboxSpec};

pub(super) fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(super) fn sh(script: &str) -> Vec<String> {
    strs(&["sh", "-c", script])
}

pub(super) fn spec(command: Vec<String>, execution: &str) -> SandboxSpec {
    let mut labels = Owner::new("w1", "i1").labels();
    labels.insert(LABEL_TASK.into(), format!("task-{execution}"));
    labels.insert(LABEL_EXECUTION.into(), execution.into());
    SandboxSpec {
        image: "docker.io/library/busybox:latest".into(),
        command,
        hold: None,
        env: Vec::new(),
        workdir: "/workspace".into(),
        labels,
        limits: crate::spec::policy::Limits::default(),
        sidecars: Vec::new(),
        volumes: Vec::new(),
        security: crate::spec::policy::Security::default(),
        network: crate::spec::Network::Engine("bridge".into()),
        steps: Vec::new(),
    }
}

pub(super) async fn started(fake: &FakeBackend, command: Vec<String>, execution: &str) -> String {
    let id = fake
        .create(&spec(command, execution))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fake.start(&id).await.unwrap_or_else(|e| panic!("{e}"));
    id
}

pub(super) async fn read(stream: LogStream) -> Vec<Result<LogEntry, String>> {
    stream.map(|r| r.map_err(|e| e.to_string())).collect().await
}

pub(super) fn text(entries: &[Result<LogEntry, String>]) -> Vec<(Stream, String)> {
    entries
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .map(|e| (e.stream, String::from_utf8_lossy(&e.bytes).into_owned()))
        .collect()
}

/// Bounds a future that should end soon (a wait that never ends fails the test, not CI).
pub(super) async fn soon<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("did not finish within 10 s"))
}

/// Waits until the sandbox wrote `n` entries.
pub(super) async fn support_until(fake: &FakeBackend, id: &str, n: usize) {
    soon(async {
        while fake.output_of(id).len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
