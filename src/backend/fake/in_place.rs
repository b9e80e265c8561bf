//! The fake's [`InPlace`]: steps run in a held sandbox (their scripts), then its release.

use async_trait::async_trait;
use bytes::Bytes;

use super::script::Step;
use super::{FakeBackend, Op, no_such};
use crate::backend::{BackendError, ExecRun, InPlace};

#[async_trait]
impl InPlace for FakeBackend {
    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        _working_dir: Option<&str>,
        _env: Vec<String>,
    ) -> Result<ExecRun, BackendError> {
        self.enter(Op::Exec, &cmd.join(" "))?;
        let (end, exec_id) = {
            let mut s = self.shared.state.lock();
            let end = match s.sandboxes.get(id) {
                Some(b) if b.running() => b.end.clone(),
                _ => {
                    return Err(BackendError::Api {
                        op: "exec",
                        reason: format!("sandbox {id} is not running"),
                    });
                }
            };
            let exec_id = format!("exec-{}", s.execs.len() + 1);
            s.execs.insert(exec_id.clone(), None);
            (end, exec_id)
        };
        let script = self.script_for(&cmd);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let fake = self.clone();
        let exec = exec_id.clone();
        tokio::spawn(async move {
            let mut code = 0;
            for step in script.steps {
                match step {
                    Step::Print(stream, bytes) => {
                        let _ = tx.send(Ok((stream, Bytes::from(bytes)))).await;
                    }
                    Step::Sleep(d) => tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = end.cancelled() => return,
                    },
                    Step::Exit(st) => {
                        code = st.code;
                        break;
                    }
                    Step::Hang => {
                        end.cancelled().await;
                        return;
                    }
                }
            }
            // The code is there before the output ends, so a reader never waits for it.
            fake.shared.state.lock().execs.insert(exec, Some(code));
            drop(tx);
        });
        let output = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(ExecRun {
            id: exec_id,
            output: Box::pin(output),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, BackendError> {
        self.enter(Op::ExecExitCode, exec_id)?;
        self.shared
            .state
            .lock()
            .execs
            .get(exec_id)
            .copied()
            .ok_or_else(|| BackendError::Api {
                op: "exec inspect",
                reason: format!("no such exec: {exec_id}"),
            })
    }

    async fn release(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Release, id)?;
        let release = {
            let mut s = self.shared.state.lock();
            let b = s
                .sandboxes
                .get_mut(id)
                .ok_or_else(|| no_such("release", id))?;
            let release = b.held && b.running();
            b.held = false;
            release
        };
        if release {
            self.launch(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::super::test_support::{read, sh, soon, spec, text};
    use super::super::{DEFAULT_CAPS, status};
    use super::*;
    use crate::backend::{Backend, Caps};
    use crate::protocol::Stream;

    #[tokio::test]
    async fn with_live_and_in_place_a_held_sandbox_runs_steps_then_its_command() {
        let fake = FakeBackend::with_caps(Caps {
            live: true,
            in_place: true,
            ..DEFAULT_CAPS
        });
        let mut held = spec(sh("echo task"), "e1");
        held.hold = Some(Vec::new());
        let id = soon(fake.create(&held)).await.unwrap_or_default();
        let live = fake.live().unwrap_or_else(|| panic!("live"));
        let attached = soon(live.attach(&id))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        fake.start(&id).await.unwrap_or_else(|e| panic!("{e}"));
        let in_place = fake.in_place().unwrap_or_else(|| panic!("in place"));
        let run = soon(in_place.exec(&id, sh("echo step; exit 4"), None, Vec::new()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let out: Vec<_> = soon(run.output.collect::<Vec<_>>()).await;
        assert_eq!(out.len(), 1);
        assert_eq!(
            soon(in_place.exec_exit_code(&run.id)).await.ok().flatten(),
            Some(4)
        );
        assert!(fake.output_of(&id).is_empty(), "held: the command waits");
        soon(in_place.release(&id))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(soon(fake.wait(&id)).await.ok(), Some(status(0)));
        let pieces: Vec<_> = soon(attached.collect::<Vec<_>>()).await;
        assert!(
            matches!(&pieces[..], [Ok((Stream::Stdout, b))] if b.as_ref() == b"task\n"),
            "{pieces:?}"
        );
        let tail = soon(read(live.tail(&id, 1))).await;
        assert_eq!(text(&tail), [(Stream::Stdout, "task\n".to_string())]);
    }
}
