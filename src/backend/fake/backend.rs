//! The fake's [`Backend`]: images, sandboxes and their output, every call recorded.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::output::Reader;
use super::sandbox::{Phase, Sandbox};
use super::{FakeBackend, Op, STOPPED, no_such, status, unreachable};
use crate::backend::{
    Backend, BackendError, Caps, ExecutionRef, ExitStatus, ImageInfo, InPlace, Live, LogStream,
    Owned, UsageSample,
};
use crate::config::PullPolicy;
use crate::spec::image::ImageRef;
use crate::spec::owner::{Owner, Ownership};
use crate::spec::{LABEL_EXECUTION, LABEL_INSTANCE, LABEL_TASK, LABEL_WORKER, SandboxSpec};

/// An image id that stays the same for one name.
fn image_id(name: &str) -> String {
    // FNV-1a: stable across runs, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("sha256:{hash:064x}")
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn engine_name(&self) -> &'static str {
        "fake engine"
    }

    fn caps(&self) -> Caps {
        self.shared.state.lock().caps
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.enter(Op::Ping, "")
    }

    async fn runtimes(&self) -> Result<Vec<String>, BackendError> {
        self.enter(Op::Runtimes, "")?;
        Ok(self.shared.state.lock().runtimes.clone())
    }

    async fn prepare_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        _progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, BackendError> {
        let name = image.to_string();
        self.enter(Op::PrepareImage, &name)?;
        if self.shared.state.lock().missing_images.contains(&name) {
            return Err(match policy {
                PullPolicy::Never => BackendError::ImageMissing { image: name },
                _ => BackendError::Pull {
                    image: name,
                    reason: "the fake backend has no registry".into(),
                },
            });
        }
        Ok(ImageInfo {
            id: image_id(&name),
            repo_digest: None,
            entrypoint: Vec::new(),
            user: String::new(),
        })
    }

    async fn prepare_sidecar(
        &self,
        image: &ImageRef,
        _policy: PullPolicy,
    ) -> Result<String, BackendError> {
        let name = image.to_string();
        self.enter(Op::PrepareSidecar, &name)?;
        if self.shared.state.lock().missing_images.contains(&name) {
            return Err(BackendError::Sidecar {
                reason: "the image is missing".into(),
                image: name,
            });
        }
        Ok(format!("fake-sidecar-{}", &image_id(&name)[7..19]))
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, BackendError> {
        self.enter(Op::Create, &spec.image)?;
        let mut s = self.shared.state.lock();
        s.next_id += 1;
        let id = format!("fa4e{:060x}", s.next_id);
        s.sandboxes.insert(
            id.clone(),
            Sandbox {
                labels: spec.labels.clone(),
                image: spec.image.clone(),
                command: spec.command.clone(),
                held: spec.hold.is_some(),
                phase: Phase::Created,
                started: None,
                log: Vec::new(),
                frozen: false,
                end: CancellationToken::new(),
                steps: spec.steps.clone(),
                cause: None,
            },
        );
        drop(s);
        self.changed();
        Ok(id)
    }

    async fn find(
        &self,
        owner: &Owner,
        execution_id: &str,
    ) -> Result<Option<String>, BackendError> {
        self.enter(Op::Find, execution_id)?;
        let s = self.shared.state.lock();
        Ok(s.sandboxes
            .iter()
            .find(|(_, b)| {
                b.label(LABEL_WORKER) == owner.worker_id
                    && b.label(LABEL_EXECUTION) == execution_id
                    && b.labels.get(LABEL_INSTANCE) == Some(&owner.instance)
            })
            .map(|(id, _)| id.clone()))
    }

    async fn start(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Start, id)?;
        let mut s = self.shared.state.lock();
        let b = s
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| no_such("start", id))?;
        if b.phase != Phase::Created {
            // An engine starts a sandbox once: restarting an ended one is not this seam's.
            return Ok(());
        }
        b.phase = Phase::Running;
        b.started = Some(tokio::time::Instant::now());
        let held = b.held;
        drop(s);
        if !held {
            self.launch(id);
        }
        self.changed();
        Ok(())
    }

    async fn address(
        &self,
        id: &str,
        _network: &str,
    ) -> Result<Option<std::net::IpAddr>, BackendError> {
        // No networks: nothing has an address on one.
        self.enter(Op::Address, id)?;
        Ok(None)
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, BackendError> {
        self.enter(Op::Wait, id)?;
        self.until(|s| {
            if !s.reachable {
                return Some(Err(unreachable()));
            }
            match s.sandboxes.get(id).map(|b| b.phase) {
                None => Some(Err(no_such("wait", id))),
                Some(Phase::Ended(st)) => Some(Ok(st)),
                Some(_) => None,
            }
        })
        .await
    }

    async fn state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, BackendError> {
        self.enter(Op::State, id)?;
        let s = self.shared.state.lock();
        // One that never started reads as not running with status 0, as Docker's inspect does.
        Ok(s.sandboxes.get(id).map(|b| match b.phase {
            Phase::Ended(st) => (false, st),
            Phase::Running => (true, status(0)),
            Phase::Created => (false, status(0)),
        }))
    }

    fn output(&self, id: &str, follow: bool, since: i64) -> LogStream {
        let reader = Reader {
            fake: self.clone(),
            id: id.to_string(),
            pos: 0,
            found: false,
            ended: false,
        };
        let since_ns = since.max(0).saturating_mul(1_000_000_000);
        // A failed call is the stream's first (and last) item.
        let mut entered = Some(self.enter(Op::Output, id));
        Box::pin(futures_util::stream::unfold(reader, move |mut r| {
            let entered = entered.take();
            async move {
                if r.ended {
                    return None;
                }
                if let Some(Err(e)) = entered {
                    return r.deliver(Some(Err(e)));
                }
                let fake = r.fake.clone();
                let next = fake.until(|s| r.entry(s, follow, since_ns)).await;
                r.deliver(next)
            }
        }))
    }

    async fn usage(&self, id: &str) -> Result<Option<UsageSample>, BackendError> {
        self.enter(Op::Usage, id)?;
        let s = self.shared.state.lock();
        Ok(s.sandboxes
            .get(id)
            .filter(|b| b.running())
            .map(|b| UsageSample {
                // A tenth of a CPU, and a steady 8 MiB: plausible, and enough to be summed.
                cpu_ns: b.started.map_or(0, |t| {
                    u64::try_from(t.elapsed().as_nanos() / 10).unwrap_or(0)
                }),
                memory: 8 << 20,
                ..UsageSample::default()
            }))
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), BackendError> {
        self.enter(Op::Stop, id)?;
        // No grace is waited: the script obeys at once. One that never started ends too, so
        // a wait for it returns.
        self.end(id, status(STOPPED));
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Remove, id)?;
        let gone = self.shared.state.lock().sandboxes.remove(id);
        if let Some(b) = gone {
            b.end.cancel();
        }
        self.changed();
        Ok(())
    }

    async fn gone(
        &self,
        owner: &Owner,
        execution: ExecutionRef<'_>,
        known: Option<&str>,
    ) -> Result<(), BackendError> {
        // One call recorded (not a remove per sandbox): tests count removals by `Remove`.
        self.enter(Op::Gone, execution.execution_id)?;
        let mut s = self.shared.state.lock();
        let doomed: Vec<String> = s
            .sandboxes
            .iter()
            .filter(|(id, b)| {
                let others = matches!(
                    owner.ownership(b.labels.get(LABEL_INSTANCE).map(String::as_str)),
                    Ownership::Other(_)
                );
                Some(id.as_str()) == known
                    || (b.label(LABEL_WORKER) == owner.worker_id
                        && b.label(LABEL_EXECUTION) == execution.execution_id
                        && b.label(LABEL_TASK) == execution.task_id
                        && !others)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in doomed {
            if let Some(b) = s.sandboxes.remove(&id) {
                b.end.cancel();
            }
        }
        drop(s);
        self.changed();
        Ok(())
    }

    async fn end_cause(&self, id: &str) -> Option<crate::failure::Failure> {
        self.shared
            .state
            .lock()
            .sandboxes
            .get(id)
            .and_then(|b| b.cause.clone())
    }

    async fn list(&self, worker_id: &str) -> Result<Vec<Owned>, BackendError> {
        self.enter(Op::List, worker_id)?;
        let s = self.shared.state.lock();
        Ok(s.sandboxes
            .iter()
            .filter(|(_, b)| b.label(LABEL_WORKER) == worker_id)
            .map(|(id, b)| Owned {
                id: id.clone(),
                task_id: b.label(LABEL_TASK),
                execution_id: b.label(LABEL_EXECUTION),
                instance: b.labels.get(LABEL_INSTANCE).cloned(),
                running: b.running(),
            })
            .collect())
    }

    fn live(&self) -> Option<&dyn Live> {
        self.caps().live.then_some(self as &dyn Live)
    }

    fn in_place(&self) -> Option<&dyn InPlace> {
        self.caps().in_place.then_some(self as &dyn InPlace)
    }
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_CAPS;
    use super::super::test_support::{read, soon, spec, started, strs};
    use super::*;

    #[tokio::test]
    async fn stop_ends_a_running_sandbox_with_143_at_once_and_remove_makes_it_gone() {
        let fake = FakeBackend::new();
        let id = started(&fake, strs(&["sleep", "300"]), "e1").await;
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((true, status(0)))
        );
        assert!(soon(fake.usage(&id)).await.ok().flatten().is_some());
        let waiter = tokio::spawn({
            let fake = fake.clone();
            let id = id.clone();
            async move { fake.wait(&id).await.map_err(|e| e.to_string()) }
        });
        fake.stop(&id, Duration::from_secs(3600))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            soon(waiter).await.ok(),
            Some(Ok(status(STOPPED))),
            "no grace period is waited"
        );
        let owned = soon(fake.list("w1")).await.unwrap_or_default();
        assert_eq!(owned.len(), 1);
        assert!(!owned[0].running);
        fake.remove(&id).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(soon(fake.state(&id)).await.ok(), Some(None));
        assert!(soon(fake.wait(&id)).await.is_err(), "no such sandbox");
        assert!(soon(fake.list("w1")).await.unwrap_or_default().is_empty());
        let gone = soon(read(fake.output(&id, true, 0))).await;
        assert!(matches!(&gone[..], [Err(e)] if e.contains("no such sandbox")));
        // Stopping or removing what is not there is fine.
        assert!(fake.stop(&id, Duration::ZERO).await.is_ok());
        assert!(fake.remove(&id).await.is_ok());
        assert_eq!(fake.count(Op::Remove), 2);
        assert_eq!(fake.targets(Op::Stop), [id.clone(), id]);
    }

    #[tokio::test]
    async fn find_list_and_gone_go_by_owner_and_execution() {
        let fake = FakeBackend::new();
        let a = started(&fake, strs(&["sleep", "300"]), "e1").await;
        let mine = Owner::new("w1", "i1");
        assert_eq!(
            soon(fake.find(&mine, "e1")).await.ok().flatten(),
            Some(a.clone())
        );
        assert_eq!(
            soon(fake.find(&Owner::new("w1", "other"), "e1"))
                .await
                .ok()
                .flatten(),
            None,
            "another instance's sandbox is not found as ours"
        );
        // A twin for e1 made by another instance: never removed by this one.
        let mut other = spec(strs(&["true"]), "e1");
        other
            .labels
            .insert(LABEL_INSTANCE.into(), "other-instance".into());
        let theirs = soon(fake.create(&other)).await.unwrap_or_default();
        let execution = ExecutionRef {
            task_id: "task-e1",
            execution_id: "e1",
        };
        soon(fake.gone(&mine, execution, None))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<String> = fake.sandboxes().into_iter().map(|b| b.id).collect();
        assert_eq!(left, [theirs]);
        assert_eq!(fake.count(Op::Gone), 1);
        assert_eq!(fake.count(Op::Remove), 0, "gone is recorded as itself");
    }

    #[tokio::test]
    async fn the_default_caps_offer_no_live_output_in_place_steps_or_sealing() {
        let fake = FakeBackend::new();
        assert_eq!(fake.caps(), DEFAULT_CAPS);
        assert!(fake.live().is_none() && fake.in_place().is_none() && fake.sealing().is_none());
        assert_eq!(fake.kind(), "fake");
        fake.missing_image("busybox");
        let busybox = ImageRef::parse("busybox").unwrap_or_else(|e| panic!("{e}"));
        let e = fake.prepare_image(&busybox, PullPolicy::Never, None).await;
        assert!(matches!(e, Err(BackendError::ImageMissing { .. })));
        let other = ImageRef::parse("alpine:3").unwrap_or_else(|e| panic!("{e}"));
        let info = fake.prepare_image(&other, PullPolicy::Always, None).await;
        assert!(info.is_ok_and(|i| i.id.starts_with("sha256:")));
    }
}
