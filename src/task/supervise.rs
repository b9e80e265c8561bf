//! The supervised part of a run: the container runs while its output is captured; a stop,
//! a time limit or the container's own exit ends it, riding out engine outages; then cleanup.

use std::time::Duration;

use tracing::{error, info, warn};

use super::outcome::phase;
use super::run::Run;
use super::{Outcome, StopReason, TaskControl, TaskEnv, capture, sleep_or_forever, system_line};
use crate::backend::ExitStatus;
use crate::backend::disposal::{Ended, disposal, dispose};
use crate::failure::FailureReason;
use crate::transcript::spool::lock;

/// How long berth may count, without storing, what capture did not read from the engine's log
/// once it stopped waiting for capture.
const COUNT_WITHIN: Duration = Duration::from_secs(60);

/// How the supervised part of a run ended.
pub(super) enum Supervised {
    /// With this outcome; the container may be removed.
    Done(Outcome),
    /// The worker detached (`preserve` shutdown): the container keeps running.
    Detached,
}

/// Disposes of the container once its status and output are captured (see
/// [`crate::backend::disposal`]).
pub(super) async fn cleanup(run: &Run<'_>, id: &str, outcome: Supervised) -> Option<Outcome> {
    let Supervised::Done(outcome) = outcome else {
        return None;
    };
    let ended = match outcome {
        Outcome::Exited(_) => Ended::Exited,
        _ => Ended::Cut,
    };
    let s = &run.settings;
    let d = disposal(ended, s.cleanup, true);
    if let Err(e) = dispose(run.env.backend.as_ref(), id, d, s.stop_grace_period).await {
        error!(container = %id, error = %e, "cannot remove container; it is labelled berth.managed and will be removed at the next start");
    }
    Some(outcome)
}

pub(super) async fn supervise(
    run: &Run<'_>,
    id: &str,
    timeout: Option<Duration>,
    live: Option<crate::backend::OutputStream>,
) -> Supervised {
    let (env, exec, control) = (run.env, run.exec, run.control);
    let grace = run.settings.stop_grace_period;
    let secrets = run.secrets();
    // Capture runs alongside the wait in this task (not spawned): whatever ends the run also
    // ends the capture, and nothing is left running unowned.
    let live = match (live, env.backend.live()) {
        (Some(stream), Some(ops)) => Some(capture::Live {
            stream,
            ops,
            anchor_every: run.settings.anchor_every,
            metrics: &env.metrics,
        }),
        _ => None,
    };
    let capture = capture::capture(env.backend.as_ref(), id, &exec.spool, secrets.clone(), live);
    // Boxed so it can be dropped before what it did not read is counted.
    let mut capture = Box::pin(capture);
    let mut captured = None;
    let waiting = async {
        tokio::select! {
            r = wait_through_outages(env, id, true) => Some(r),
            never = sample(env, id, control) => match never {},
            _ = control.token.cancelled() => None,
            _ = sleep_or_forever(timeout) => {
                control.stop(StopReason::Timeout);
                None
            }
        }
    };
    let waiting = async {
        tokio::select! {
            w = waiting => Some(w),
            _ = env.detach.cancelled() => None,
        }
    };
    let Some(waited) = alongside(waiting, capture.as_mut(), &mut captured).await else {
        return Supervised::Detached;
    };
    // A last reading as the wait ends, while the kernel may still keep the sandbox's counters.
    if let Some(u) = env.backend.quick_usage(id).await {
        control.record_usage(&u);
    }
    let waited = match waited {
        Some(r) => r,
        None => {
            info!(container = %id, reason = ?control.reason(), grace_s = grace.as_secs(), "stopping container");
            let line = crate::task::stopping_line(control.reason(), grace);
            let announce = system_line(&exec.spool, &line);
            alongside(announce, capture.as_mut(), &mut captured).await;
            let stopped = async {
                stop_through_outages(env, id, grace).await;
                // berth stopped it: its exit is not the engine's doing.
                wait_through_outages(env, id, false).await
            };
            alongside(stopped, capture.as_mut(), &mut captured).await
        }
    };
    // All output is read before the result is decided, and the container is kept until then.
    // Bounded: the engine closes the stream once the container has stopped, and a full disk
    // is waited for at most full_disk_patience before output is counted as lost. The engine
    // hands its log back at a rate per entry (some 100k entries a second), so a task printing
    // short lines faster than that can outlast any bound: what is then left is counted.
    let patience = lock(&exec.spool).full_disk_patience() + run.settings.capture_drain;
    let drained = async {
        match captured.take() {
            Some(r) => r,
            None => capture.as_mut().await,
        }
    };
    let incomplete = match tokio::time::timeout(patience, drained).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("output capture ended early ({e})")),
        Err(_) => Some(format!(
            "output capture did not finish within {} of the container's exit",
            humantime::format_duration(patience)
        )),
    };
    if let Some(why) = incomplete {
        // Capture writes nothing more: everything after the spool's resume point is counted.
        drop(capture);
        count_unread(run, id, secrets, &why).await;
    }
    Supervised::Done(waited)
}

/// Counts what capture did not read (the engine's log after the spool's resume point) as lost,
/// so the transcript's gap line, the result and the lost-bytes metric all include it; where
/// counting cannot finish either, as a lower bound that says so.
async fn count_unread(run: &Run<'_>, id: &str, secrets: Vec<Vec<u8>>, why: &str) {
    let (env, exec) = (run.env, run.exec);
    let from = lock(&exec.spool).last_resume();
    let mut tally = capture::Tally::new(from, secrets);
    let counting = capture::count_rest(env.backend.as_ref(), id, &mut tally);
    let counted = match tokio::time::timeout(COUNT_WITHIN, counting).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "it did not finish within {}",
            humantime::format_duration(COUNT_WITHIN)
        )),
    };
    let (bytes, resume) = tally.counted();
    match &counted {
        Ok(()) => {
            warn!(container = %id, lost_bytes = bytes, "{why}; the output it did not read is counted as lost")
        }
        Err(e) => {
            warn!(container = %id, lost_bytes = bytes, error = %e, "{why}; counting the output it did not read stopped short too, so at least this much is lost")
        }
    }
    lock(&exec.spool).count_unread(bytes, resume, why, counted);
}

/// Samples the running container's usage into `control` until dropped, starting at once: the
/// kernel's counters every [`FIRST_SAMPLES_EVERY`] during the first second (a short task is
/// over before a slower cadence sees it), then every [`QUICK_SAMPLE_EVERY`] where readable;
/// the engine's statistics (which add disk bytes) every [`SAMPLE_EVERY`]. A failed read is
/// skipped: usage is best effort, the task is not.
///
/// [`FIRST_SAMPLES_EVERY`]: crate::task::usage::FIRST_SAMPLES_EVERY
/// [`QUICK_SAMPLE_EVERY`]: crate::task::usage::QUICK_SAMPLE_EVERY
/// [`SAMPLE_EVERY`]: crate::task::usage::SAMPLE_EVERY
pub(super) async fn sample(
    env: &TaskEnv,
    id: &str,
    control: &TaskControl,
) -> std::convert::Infallible {
    use crate::task::usage::{FIRST_SAMPLES_EVERY, QUICK_SAMPLE_EVERY, SAMPLE_EVERY};
    // Two loops: the engine's statistics call takes a second or more and must never hold up
    // the kernel readings, which are what a short task is seen by.
    let quick = async {
        let began = tokio::time::Instant::now();
        loop {
            if let Some(s) = env.backend.quick_usage(id).await {
                control.record_usage(&s);
            }
            let every = if began.elapsed() < Duration::from_secs(1) {
                FIRST_SAMPLES_EVERY
            } else {
                QUICK_SAMPLE_EVERY
            };
            tokio::time::sleep(every).await;
        }
    };
    let engine = async {
        // A container still starting has no statistics yet.
        tokio::time::sleep(QUICK_SAMPLE_EVERY).await;
        loop {
            if let Ok(Some(s)) = env.backend.usage(id).await {
                control.record_usage(&s);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    };
    tokio::select! {
        never = quick => never,
        never = engine => never,
    }
}

/// Runs `work` while also driving `capture` (its result kept in `captured` if it ends first).
async fn alongside<W: std::future::Future>(
    work: W,
    mut capture: std::pin::Pin<&mut impl std::future::Future<Output = CaptureResult>>,
    captured: &mut Option<CaptureResult>,
) -> W::Output {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            w = &mut work => return w,
            r = capture.as_mut(), if captured.is_none() => *captured = Some(r),
        }
    }
}

type CaptureResult = Result<(), capture::CaptureError>;

/// Waits for the container to exit, riding out Docker engine outages: while the engine does
/// not answer, the wait is retried with a capped backoff (the container keeps running; the
/// session stays up). Once it answers, the container's state decides: still running → wait
/// again; exited → its status, unless the engine's stop ended it (`own` exits only: see
/// [`crate::task::engine_stop`]); gone → the task failed with a message saying so.
async fn wait_through_outages(env: &TaskEnv, id: &str, own: bool) -> Outcome {
    let mut backoff = crate::backoff::Backoff::capped(Duration::from_secs(5));
    let mut outage: Option<Outage> = None;
    let mut errors_while_up = 0u32;
    loop {
        let err = match env.backend.wait(id).await {
            Ok(st) => return explained(env, id, st, outage.as_ref(), own).await,
            Err(e) => e,
        };
        let state = env.backend.state(id).await;
        if outage.is_some() && state.is_ok() {
            // Back: let admission know now rather than at the monitor's next ping.
            env.engine.suspect();
        }
        match state {
            Ok(Some((false, st))) => return explained(env, id, st, outage.as_ref(), own).await,
            Ok(Some((true, _))) => {
                // The engine answers and the container runs: the wait itself failed.
                errors_while_up += 1;
                if errors_while_up > 5 {
                    return phase(FailureReason::ContainerWait)(err.to_string());
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ok(None) => {
                let detail = match outage {
                    Some(_) => format!(
                        "the task's container {} disappeared while the {} was unreachable (the engine restarted, or the container was removed); resubmit the task",
                        short(id),
                        env.backend.engine_name()
                    ),
                    None => format!(
                        "the task's container {} was removed by someone else while the task ran",
                        short(id)
                    ),
                };
                return phase(FailureReason::ContainerWait)(detail);
            }
            Err(e) => {
                if outage.is_none() {
                    warn!(container = %id, error = %e, "engine unreachable while the task runs; waiting for it");
                    outage = Some(Outage::now());
                }
                env.engine.suspect();
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

pub(super) fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// When berth first saw the engine unreachable during a wait.
struct Outage {
    at: tokio::time::Instant,
    wall: chrono::DateTime<chrono::Utc>,
}

impl Outage {
    fn now() -> Outage {
        Outage {
            at: tokio::time::Instant::now(),
            wall: chrono::Utc::now(),
        }
    }
}

fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The outcome of an end: what the engine says ended it where it knows more than the exit
/// status (a pod evicted or never scheduled, a provisioning step that failed), else [`exited`].
async fn explained(
    env: &TaskEnv,
    id: &str,
    st: ExitStatus,
    outage: Option<&Outage>,
    own: bool,
) -> Outcome {
    match env.backend.end_cause(id).await {
        Some(f) if st.code != 0 => Outcome::Failure(f),
        _ => exited(env, st, outage, own).await,
    }
}

/// The outcome of an exit: the container's status, or — when it ended in an engine outage, or
/// by a signal just as the engine stopped taking connections — a failure that says the host's
/// engine ended it (see [`crate::task::engine_stop`]).
async fn exited(env: &TaskEnv, st: ExitStatus, outage: Option<&Outage>, own: bool) -> Outcome {
    use crate::task::engine_stop::{EngineSeen, by_signal, engine_failure};
    // Only an engine whose outages stop its sandboxes can be what ended one.
    if !own || st.code == 0 || !env.backend.caps().outage_stops_tasks {
        return Outcome::Exited(st);
    }
    let seen = match outage {
        Some(o) => EngineSeen::Outage {
            since: utc(o.wall),
            secs: o.at.elapsed().as_secs(),
        },
        // dockerd closes its listener before it stops containers: an engine that refuses a new
        // connection now is stopping (the ping dials afresh; the wait's own connection lives on).
        None if by_signal(&st) && env.backend.ping().await.is_err() => {
            env.engine.suspect();
            EngineSeen::Stopping {
                at: utc(chrono::Utc::now()),
            }
        }
        None => EngineSeen::Up,
    };
    match engine_failure(env.backend.engine_name(), &st, &seen) {
        Some(f) => {
            warn!(code = st.code, detail = %f.detail, "the engine's stop ended the task's sandbox");
            Outcome::Failure(f)
        }
        None => Outcome::Exited(st),
    }
}

/// Stops the container, retrying while the engine is unreachable: a cancelled task's
/// container must never be left running because the engine was briefly away.
async fn stop_through_outages(env: &TaskEnv, id: &str, grace: Duration) {
    let mut backoff = crate::backoff::Backoff::capped(Duration::from_secs(5));
    let mut refused = 0u32;
    loop {
        let Err(e) = env.backend.stop(id, grace).await else {
            return;
        };
        match env.backend.state(id).await {
            Ok(None) | Ok(Some((false, _))) => return,
            Ok(Some((true, _))) => {
                refused += 1;
                if refused > 5 {
                    error!(container = %id, error = %e, "the engine refuses to stop the task's container; stop it by hand");
                    return;
                }
                warn!(container = %id, error = %e, "stop failed; retrying");
            }
            Err(_) => env.engine.suspect(),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
