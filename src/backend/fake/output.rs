//! Reading a sandbox's output as streams: its log (from a time, followed or not) and its live
//! output from an attach on.

use bytes::Bytes;

use super::sandbox::Phase;
use super::{FakeBackend, State, no_such, unreachable};
use crate::backend::{BackendError, LogEntry};
use crate::protocol::Stream;

/// A stream's next item; `None` at its end.
type Next<T> = Option<Result<T, BackendError>>;

/// What one output read has delivered so far.
pub(super) struct Reader {
    pub(super) fake: FakeBackend,
    pub(super) id: String,
    /// Position in the sandbox's log.
    pub(super) pos: usize,
    /// The sandbox was there when the read began.
    pub(super) found: bool,
    pub(super) ended: bool,
}

impl Reader {
    /// The log's next entry from `since_ns`, or its end (a plain read at the log's end, a
    /// follow once the sandbox has ended or gone); `None` while a follow waits for more.
    pub(super) fn entry(
        &mut self,
        s: &State,
        follow: bool,
        since_ns: i64,
    ) -> Option<Next<LogEntry>> {
        if !s.reachable {
            return Some(Some(Err(unreachable())));
        }
        let Some(b) = s.sandboxes.get(&self.id) else {
            // Gone before the read: the engine says so; gone during a follow: it just ends.
            return Some((!self.found).then(|| Err(no_such("logs", &self.id))));
        };
        self.found = true;
        while b.log.get(self.pos).is_some_and(|e| e.ts < since_ns) {
            self.pos += 1;
        }
        if let Some(e) = b.log.get(self.pos) {
            self.pos += 1;
            return Some(Some(Ok(e.clone())));
        }
        (!follow || matches!(b.phase, Phase::Ended(_))).then_some(None)
    }

    /// The next piece of live output, or its end (the command has ended, the sandbox is
    /// gone); `None` while it waits for more.
    pub(super) fn piece(&mut self, s: &State) -> Option<Next<(Stream, Bytes)>> {
        if !s.reachable {
            return Some(Some(Err(unreachable())));
        }
        let Some(b) = s.sandboxes.get(&self.id) else {
            return Some(None);
        };
        if let Some(e) = b.log.get(self.pos) {
            self.pos += 1;
            return Some(Some(Ok((e.stream, e.bytes.clone()))));
        }
        matches!(b.phase, Phase::Ended(_)).then_some(None)
    }

    /// Hands on `next`; the stream ends after an error.
    pub(super) fn deliver<T>(mut self, next: Next<T>) -> Option<(Result<T, BackendError>, Reader)> {
        self.ended = !matches!(next, Some(Ok(_)));
        next.map(|item| (item, self))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::FakeBackend;
    use super::super::test_support::{read, sh, soon, started, support_until, text};
    use super::*;
    use crate::backend::Backend;

    #[tokio::test]
    async fn output_reads_from_whole_seconds_inclusive_and_a_follow_ends_with_the_sandbox() {
        let fake = FakeBackend::new();
        let id = started(&fake, sh("echo a; sleep 0.2; echo b; sleep 30"), "e1").await;
        // Following: what is there, then what comes, until the sandbox ends.
        let follow = tokio::spawn(read(fake.output(&id, true, 0)));
        support_until(&fake, &id, 2).await;
        let log = fake.output_of(&id);
        let plain = soon(read(fake.output(&id, false, 0))).await;
        assert_eq!(plain.len(), 2, "a plain read ends at the log's end");
        // `since` is whole seconds, inclusive: the second of an entry includes it.
        let second = log[1].ts / 1_000_000_000;
        let from = soon(read(fake.output(&id, false, second))).await;
        assert!(text(&from).contains(&(Stream::Stdout, "b\n".to_string())));
        assert!(
            soon(read(fake.output(&id, false, second + 1)))
                .await
                .is_empty()
        );
        assert!(
            !follow.is_finished(),
            "a follow waits while the sandbox runs"
        );
        fake.stop(&id, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let followed = soon(follow).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            text(&followed),
            [
                (Stream::Stdout, "a\n".to_string()),
                (Stream::Stdout, "b\n".to_string())
            ]
        );
    }
}
