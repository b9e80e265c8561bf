//! What becomes of a sandbox once berth is done with it, decided in one place for the end of a
//! task run, an abandoned provisioning and the reconciliation after a restart or an outage.

use std::time::Duration;

use tracing::warn;

use super::{Backend, BackendError};

/// Why berth is done with a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its command exited, and its status and output are captured.
    Exited,
    /// Its run ended without the command exiting (a failed phase, a stop, a provisioning cut
    /// short by a restart): it may still run.
    Cut,
    /// Its execution finished before this worker started (found at reconciliation).
    Finished,
    /// Made by this instance and unknown to its journal.
    Orphan,
}

/// What to do with the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Leave it (`cleanup: false` keeps exited sandboxes for inspection).
    Keep,
    /// Remove it.
    Remove,
    /// Stop it within the grace period, then remove it.
    StopAndRemove,
}

/// The one rule: a sandbox whose command exited is removed when `cleanup` is on; one whose run
/// was cut short is always stopped and removed (never left running untracked, whatever
/// `cleanup` says); an orphan is removed, stopped first while it runs.
pub fn disposal(ended: Ended, cleanup: bool, running: bool) -> Disposal {
    match ended {
        Ended::Exited | Ended::Finished if cleanup => Disposal::Remove,
        Ended::Exited | Ended::Finished => Disposal::Keep,
        Ended::Cut => Disposal::StopAndRemove,
        Ended::Orphan if running => Disposal::StopAndRemove,
        Ended::Orphan => Disposal::Remove,
    }
}

/// Carries out a [`Disposal`]. A failed stop is logged and the removal still tried (removal
/// stops a running sandbox too); the removal's error is the caller's to phrase.
pub async fn dispose(
    backend: &dyn Backend,
    id: &str,
    d: Disposal,
    grace: Duration,
) -> Result<(), BackendError> {
    if d == Disposal::Keep {
        return Ok(());
    }
    if d == Disposal::StopAndRemove
        && let Err(e) = backend.stop(id, grace).await
    {
        warn!(container = %id, error = %e, "cannot stop the sandbox before removing it");
    }
    backend.remove(id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_of_the_rule() {
        use Disposal::*;
        use Ended::*;
        let cases = [
            (Exited, true, false, Remove),
            (Exited, false, false, Keep),
            (Finished, true, true, Remove),
            (Finished, false, false, Keep),
            // Cut short: stopped and removed whatever cleanup says or the engine reports.
            (Cut, false, false, StopAndRemove),
            (Cut, true, true, StopAndRemove),
            (Orphan, false, true, StopAndRemove),
            (Orphan, true, true, StopAndRemove),
            (Orphan, false, false, Remove),
            (Orphan, true, false, Remove),
        ];
        for (ended, cleanup, running, want) in cases {
            assert_eq!(
                disposal(ended, cleanup, running),
                want,
                "{ended:?} cleanup={cleanup} running={running}"
            );
        }
    }

    #[tokio::test]
    async fn dispose_stops_only_when_asked_and_keeps_what_it_is_told_to_keep() {
        use crate::backend::fake::{FakeBackend, Op};
        let fake = FakeBackend::new();
        let ops = |f: &FakeBackend| f.calls().into_iter().map(|c| c.op).collect::<Vec<_>>();
        dispose(&fake, "s-1", Disposal::Keep, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(ops(&fake), vec![]);
        // (No such sandbox: the stop's failure is logged, the removal still asked for.)
        let _ = dispose(&fake, "s-1", Disposal::Remove, Duration::ZERO).await;
        assert_eq!(ops(&fake), vec![Op::Remove]);
        let _ = dispose(&fake, "s-1", Disposal::StopAndRemove, Duration::ZERO).await;
        assert_eq!(ops(&fake), vec![Op::Remove, Op::Stop, Op::Remove]);
    }
}
