//! A sandbox of the fake and its life: created, running its command's [`Script`] step by step
//! (output stamped like an engine's log, pauses, frozen while frozen), ended.

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::script::{Script, Step};
use super::{FakeBackend, status};
use crate::backend::{ExitStatus, LogEntry};
use crate::protocol::Stream;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Phase {
    Created,
    Running,
    Ended(ExitStatus),
}

pub(super) struct Sandbox {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) image: String,
    pub(super) command: Vec<String>,
    /// Created held for provisioning in place: starts running nothing until released.
    pub(super) held: bool,
    pub(super) phase: Phase,
    pub(super) started: Option<tokio::time::Instant>,
    pub(super) log: Vec<LogEntry>,
    pub(super) frozen: bool,
    /// Ends whatever runs in it (its script, its in-place steps).
    pub(super) end: CancellationToken,
    /// Provisioning run before the command (a backend without in-place provisioning).
    pub(super) steps: Vec<crate::spec::InitStep>,
    /// Why it ended, when a step failed.
    pub(super) cause: Option<crate::failure::Failure>,
}

impl Sandbox {
    pub(super) fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    pub(super) fn label(&self, key: &str) -> String {
        self.labels.get(key).cloned().unwrap_or_default()
    }
}

/// A sandbox as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    pub id: String,
    pub worker_id: String,
    pub task_id: String,
    pub execution_id: String,
    pub instance: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub running: bool,
    /// How it ended, once it has.
    pub exit: Option<ExitStatus>,
}

fn now_ns() -> i64 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or(i64::MAX / 2)
}

impl FakeBackend {
    /// Appends one log entry to a running sandbox; false when it no longer runs.
    pub(super) fn append(&self, id: &str, stream: Stream, bytes: &[u8]) -> bool {
        let mut s = self.shared.state.lock();
        let ts = now_ns().max(s.clock + 1);
        let Some(b) = s.sandboxes.get_mut(id).filter(|b| b.running()) else {
            return false;
        };
        b.log.push(LogEntry {
            stream,
            ts,
            bytes: Bytes::copy_from_slice(bytes),
        });
        s.clock = ts;
        drop(s);
        self.changed();
        true
    }

    /// Ends a sandbox that has not ended yet.
    pub(super) fn end(&self, id: &str, st: ExitStatus) {
        let mut s = self.shared.state.lock();
        if let Some(b) = s.sandboxes.get_mut(id)
            && !matches!(b.phase, Phase::Ended(_))
        {
            b.phase = Phase::Ended(st);
            b.end.cancel();
        }
        drop(s);
        self.changed();
    }

    /// The script for `command`: the one registered for its first word, else interpreted.
    pub(super) fn script_for(&self, command: &[String]) -> Script {
        let registered = command
            .first()
            .and_then(|w| self.shared.state.lock().scripts.get(w).cloned());
        registered.unwrap_or_else(|| Script::interpret(command))
    }

    /// Waits while the sandbox is frozen (false: it ended meanwhile).
    async fn thawed(&self, id: &str, end: &CancellationToken) -> bool {
        let thawed = self.until(|s| match s.sandboxes.get(id) {
            Some(b) if b.frozen => None,
            Some(_) => Some(true),
            None => Some(false),
        });
        tokio::select! {
            t = thawed => t && !end.is_cancelled(),
            _ = end.cancelled() => false,
        }
    }

    /// Runs the sandbox's steps, then its command (its script), in the background; the
    /// sandbox ends with the first step that fails, or with the command.
    pub(super) fn launch(&self, id: &str) {
        let (command, steps, end) = {
            let s = self.shared.state.lock();
            match s.sandboxes.get(id) {
                Some(b) => (b.command.clone(), b.steps.clone(), b.end.clone()),
                None => return,
            }
        };
        let script = self.script_for(&command);
        let fake = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            for step in steps {
                let Some(st) = fake.run(&id, &end, fake.script_for(&step.argv)).await else {
                    return;
                };
                if st.code != 0 {
                    let failure = crate::failure::Failure {
                        reason: step.reason,
                        detail: format!(
                            "{} exited with status {}; its output is in the transcript",
                            step.title, st.code
                        ),
                        exit_code: Some(st.code),
                        details: None,
                    };
                    if let Some(b) = fake.shared.state.lock().sandboxes.get_mut(&id) {
                        b.cause = Some(failure);
                    }
                    fake.end(&id, st);
                    return;
                }
            }
            if let Some(st) = fake.run(&id, &end, script).await {
                fake.end(&id, st);
            }
        });
    }

    /// Runs one script in the sandbox: its exit status, or `None` when the sandbox ended first.
    async fn run(&self, id: &str, end: &CancellationToken, script: Script) -> Option<ExitStatus> {
        for step in script.steps {
            if !self.thawed(id, end).await {
                return None;
            }
            match step {
                Step::Print(stream, bytes) => {
                    if !self.append(id, stream, &bytes) {
                        return None;
                    }
                }
                Step::Sleep(d) => tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = end.cancelled() => return None,
                },
                Step::Exit(st) => return Some(st),
                Step::Hang => {
                    end.cancelled().await;
                    return None;
                }
            }
        }
        Some(status(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{sh, soon, started, strs, support_until, text};
    use super::*;
    use crate::backend::Backend;

    #[tokio::test]
    async fn a_sandbox_prints_stamped_lines_then_exits_with_its_code() {
        let fake = FakeBackend::new();
        let id = started(&fake, sh("echo out; echo err >&2; exit 3"), "e1").await;
        let st = soon(fake.wait(&id)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st, status(3));
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((false, status(3))),
            "state agrees with wait"
        );
        let log = fake.output_of(&id);
        assert_eq!(
            text(&log.iter().cloned().map(Ok).collect::<Vec<_>>()),
            [
                (Stream::Stdout, "out\n".to_string()),
                (Stream::Stderr, "err\n".to_string())
            ]
        );
        let now = now_ns();
        assert!(
            log.windows(2).all(|w| w[0].ts < w[1].ts),
            "stamps only grow"
        );
        assert!(
            log.iter().all(|e| now - e.ts < 60_000_000_000),
            "stamped with the wall clock in ns"
        );
        assert_eq!(soon(fake.usage(&id)).await.ok(), Some(None), "ended");
    }

    #[tokio::test]
    async fn a_script_registered_for_a_word_wins_and_exit_ends_a_running_sandbox() {
        let fake = FakeBackend::new();
        fake.script(
            "agent",
            Script::new().prints(Stream::Stdout, "working\n").runs(),
        );
        let id = started(&fake, strs(&["agent", "run"]), "e1").await;
        support_until(&fake, &id, 1).await;
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((true, status(0)))
        );
        fake.exit(&id, 5);
        assert_eq!(soon(fake.wait(&id)).await.ok(), Some(status(5)));
        let oom = Script::new().oom();
        fake.script("hog", oom);
        let id = started(&fake, strs(&["hog"]), "e2").await;
        assert!(
            soon(fake.wait(&id))
                .await
                .is_ok_and(|s| s.oom_killed && s.code == 137)
        );
    }
}
