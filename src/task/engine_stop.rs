//! Telling an exit the Docker engine caused from the task's own. dockerd without
//! `live-restore` stops every container when it stops (SIGTERM, then SIGKILL after the stop
//! timeout) after closing its API listener; a wait already open still reports the exit (143),
//! so the task would look like it failed by itself. berth notices either an outage during the
//! wait, or an engine that refuses new connections right when a container dies by a signal.

use crate::backend::ExitStatus;
use crate::failure::{Failure, FailureReason};

/// What berth saw of the engine around a container's end.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSeen {
    /// It answered throughout.
    Up,
    /// Unreachable during the wait, from `since` (UTC, as text) for `secs` seconds.
    Outage { since: String, secs: u64 },
    /// It refused new connections when the exit arrived: it was stopping (`at`, UTC).
    Stopping { at: String },
}

/// The signal name of a `128 + N` exit status.
fn signal_of(code: i64) -> Option<String> {
    let n = code.checked_sub(128).filter(|n| (1..=64).contains(n))?;
    Some(match n {
        15 => "SIGTERM".to_string(),
        9 => "SIGKILL".to_string(),
        2 => "SIGINT".to_string(),
        1 => "SIGHUP".to_string(),
        n => format!("signal {n}"),
    })
}

/// Whether an exit status is death by a signal (worth asking the engine about).
pub fn by_signal(st: &ExitStatus) -> bool {
    !st.oom_killed && signal_of(st.code).is_some()
}

/// The failure to report when the engine's stop ended the container (pure); `None` when the
/// exit is the task's own (status 0, an OOM kill, or no sign of the engine going away).
pub fn engine_failure(engine: &str, st: &ExitStatus, seen: &EngineSeen) -> Option<Failure> {
    if st.code == 0 || st.oom_killed {
        return None;
    }
    let how = match signal_of(st.code) {
        Some(sig) => format!("the container received {sig} (exit status {})", st.code),
        None => format!("the container exited with status {}", st.code),
    };
    let when = match seen {
        EngineSeen::Up => return None,
        // A signal is what an engine's stop sends; any other status is only noted.
        EngineSeen::Stopping { .. } if signal_of(st.code).is_none() => return None,
        EngineSeen::Stopping { at } => format!("the {engine} stopped at {at}"),
        EngineSeen::Outage { since, secs } => format!(
            "the {engine} was unreachable from {since} for {secs} s (an engine restart stops running containers)"
        ),
    };
    Some(Failure {
        reason: FailureReason::ContainerWait,
        detail: format!(
            "{when} while the task ran, and {how}: the host's engine ended it, not the task itself; resubmit the task"
        ),
        exit_code: Some(st.code),
        details: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: i64, oom_killed: bool) -> ExitStatus {
        ExitStatus { code, oom_killed }
    }

    #[test]
    fn a_signal_exit_while_the_engine_stops_is_the_engines_doing() {
        let stopping = EngineSeen::Stopping {
            at: "04:12:03 UTC".into(),
        };
        let f = engine_failure("Docker engine", &st(143, false), &stopping).unwrap();
        assert_eq!(f.reason, FailureReason::ContainerWait);
        assert_eq!(f.exit_code, Some(143));
        assert_eq!(
            f.detail,
            "the Docker engine stopped at 04:12:03 UTC while the task ran, and the container received SIGTERM (exit status 143): the host's engine ended it, not the task itself; resubmit the task"
        );
        assert!(
            engine_failure("Docker engine", &st(137, false), &stopping)
                .unwrap()
                .detail
                .contains("SIGKILL")
        );
        // The task's own exit status, an OOM kill, success: not the engine's.
        assert_eq!(
            engine_failure("Docker engine", &st(1, false), &stopping),
            None
        );
        assert_eq!(
            engine_failure("Docker engine", &st(137, true), &stopping),
            None
        );
        assert_eq!(
            engine_failure("Docker engine", &st(0, false), &stopping),
            None
        );
        assert_eq!(
            engine_failure("Docker engine", &st(143, false), &EngineSeen::Up),
            None
        );
    }

    #[test]
    fn any_failing_exit_during_an_outage_names_the_outage() {
        let outage = EngineSeen::Outage {
            since: "04:12:03 UTC".into(),
            secs: 7,
        };
        let f = engine_failure("Docker engine", &st(3, false), &outage).unwrap();
        assert!(
            f.detail
                .starts_with("the Docker engine was unreachable from 04:12:03 UTC for 7 s"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("exited with status 3"), "{}", f.detail);
        assert_eq!(
            engine_failure("Docker engine", &st(0, false), &outage),
            None
        );
    }

    #[test]
    fn only_signal_statuses_count_as_signals() {
        assert!(by_signal(&st(143, false)));
        assert!(by_signal(&st(137, false)));
        assert!(!by_signal(&st(137, true)));
        assert!(!by_signal(&st(1, false)));
        assert!(!by_signal(&st(128, false)));
        assert!(!by_signal(&st(255, false)));
    }
}
