//! The fake's [`Live`]: attaching to a sandbox's output, freezing and thawing it, the tail of
//! its log.

use async_trait::async_trait;

use super::output::Reader;
use super::{FakeBackend, Op, no_such};
use crate::backend::{BackendError, Live, LogStream, OutputStream};

#[async_trait]
impl Live for FakeBackend {
    async fn attach(&self, id: &str) -> Result<OutputStream, BackendError> {
        self.enter(Op::Attach, id)?;
        let pos = self
            .shared
            .state
            .lock()
            .sandboxes
            .get(id)
            .map(|b| b.log.len())
            .ok_or_else(|| no_such("attach", id))?;
        let reader = Reader {
            fake: self.clone(),
            id: id.to_string(),
            pos,
            found: true,
            ended: false,
        };
        // From now until the command has ended: output closes then, not before the start.
        Ok(Box::pin(futures_util::stream::unfold(
            reader,
            |mut r| async move {
                if r.ended {
                    return None;
                }
                let fake = r.fake.clone();
                let next = fake.until(|s| r.piece(s)).await;
                r.deliver(next)
            },
        )))
    }

    async fn freeze(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Freeze, id)?;
        let mut s = self.shared.state.lock();
        let b = s
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| no_such("freeze", id))?;
        b.frozen = true;
        Ok(())
    }

    async fn thaw(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Thaw, id)?;
        let mut s = self.shared.state.lock();
        let b = s.sandboxes.get_mut(id).ok_or_else(|| no_such("thaw", id))?;
        b.frozen = false;
        drop(s);
        self.changed();
        Ok(())
    }

    fn tail(&self, id: &str, entries: u32) -> LogStream {
        let tail = match self.enter(Op::Tail, id) {
            Err(e) => vec![Err(e)],
            Ok(()) => {
                let log = self.output_of(id);
                let from = log.len().saturating_sub(entries as usize);
                log[from..].iter().cloned().map(Ok).collect()
            }
        };
        Box::pin(futures_util::stream::iter(tail))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{started, strs, support_until};
    use super::super::{DEFAULT_CAPS, Script};
    use super::*;
    use crate::backend::{Backend, Caps};
    use crate::protocol::Stream;

    #[tokio::test]
    async fn a_frozen_sandbox_writes_nothing_until_thawed() {
        let fake = FakeBackend::with_caps(Caps {
            live: true,
            ..DEFAULT_CAPS
        });
        fake.script(
            "ticker",
            Script::new()
                .sleeps(Duration::from_millis(100))
                .prints(Stream::Stdout, "tick\n")
                .runs(),
        );
        let id = started(&fake, strs(&["ticker"]), "e1").await;
        let live = fake.live().unwrap_or_else(|| panic!("live"));
        live.freeze(&id).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fake.output_of(&id).is_empty(), "frozen");
        live.thaw(&id).await.unwrap_or_else(|e| panic!("{e}"));
        support_until(&fake, &id, 1).await;
    }
}
