//! Capturing a container's output into its spool, resumable to the byte: live from the
//! attach stream where the backend offers it ([`live`]), otherwise (and wherever live output
//! cannot be trusted) from the engine's log through the pure [`Replay`].

mod anchor;
mod live;
mod log_end;

use std::time::Duration;

use futures_util::StreamExt;
use tracing::{debug, info, warn};

pub(crate) use self::anchor::thaw;
pub use self::live::Live;
use self::live::{Handover, capture_live};
use crate::backend::{Backend, BackendError};
pub use crate::transcript::replay::Tally;
use crate::transcript::replay::{BATCH, FLUSH_AFTER, Replay};
use crate::transcript::spool::{SharedSpool, lock};

/// Why capture stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The engine failed and the container is gone.
    #[error(transparent)]
    Engine(#[from] BackendError),
}

/// Reads the container's output into the spool until the container has stopped and its output
/// is drained. With `live` (the attach stream, opened before the command started) output is
/// taken as the engine hands it out; otherwise, and wherever the live stream cannot be
/// trusted to the byte, from the engine's log. Safe to call again after a restart: it resumes
/// from what the spool recorded.
pub async fn capture(
    runtime: &dyn Backend,
    container_id: &str,
    spool: &SharedSpool,
    secrets: Vec<Vec<u8>>,
    live: Option<Live<'_>>,
) -> Result<(), CaptureError> {
    if let Some(live) = live {
        match capture_live(runtime, container_id, spool, secrets.clone(), live).await {
            Handover::Complete => {
                debug!(container = container_id, "output captured live");
                return Ok(());
            }
            Handover::Incomplete(why) => {
                info!(container = container_id, why = %why, "reading the rest of the output from the engine's log");
            }
        }
    }
    capture_log(runtime, container_id, spool, secrets).await
}

/// Reads the container's output from the engine's log, from the spool's resume point.
async fn capture_log(
    runtime: &dyn Backend,
    container_id: &str,
    spool: &SharedSpool,
    secrets: Vec<Vec<u8>>,
) -> Result<(), CaptureError> {
    let resume = lock(spool).last_resume();
    let mut st = Replay::new(resume, secrets);
    let mut failures = 0u32;
    // Follow until the engine ends the stream (container stopped), then one plain read from
    // the cursor: `follow` can lose a final fragment without a newline (moby#43860).
    for follow in [true, false] {
        loop {
            st.start_read();
            let since = st.since_secs();
            let began = std::time::Instant::now();
            let logs = runtime.output(container_id, follow, since);
            let (entries, failed) = read_into(logs, &mut st, spool).await;
            st.flush(spool).await;
            debug!(
                container = container_id,
                follow,
                since,
                entries,
                ms = began.elapsed().as_millis() as u64,
                failed = failed.is_some(),
                "container log read"
            );
            for (from, to) in st.take_gaps() {
                announce_gap(container_id, spool, from, to).await;
            }
            match failed {
                None => break,
                Some(e) => {
                    failures += 1;
                    // The engine may be away or restarting: retry while the container exists
                    // or the engine does not answer (the supervisor decides when to stop).
                    let gone = matches!(runtime.state(container_id).await, Ok(None));
                    if gone && failures > 3 {
                        return Err(e.into());
                    }
                    warn!(container = container_id, error = %e, "reading the container log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(10))))
                        .await;
                }
            }
        }
    }
    st.finish();
    st.flush(spool).await;
    debug!(container = container_id, "output captured");
    Ok(())
}

/// Reads one log stream into `st` to its end or first error, spooling in batches: at BATCH
/// bytes, or FLUSH_AFTER after the first unflushed entry (output reaches the sender quickly,
/// and a chatty task does not turn every line into a record and a write). Returns the entries
/// read and the error that ended the stream, if one did.
async fn read_into(
    logs: crate::backend::LogStream,
    st: &mut Replay,
    spool: &SharedSpool,
) -> (u64, Option<BackendError>) {
    let mut logs = logs;
    // One timer for the whole read, re-armed per batch: a fresh timeout per entry registers
    // a timer (and wakes the driver) for each of a loud task's hundreds of thousands of lines.
    let flush_due = tokio::time::sleep(FLUSH_AFTER);
    tokio::pin!(flush_due);
    let (mut armed, mut entries) = (false, 0u64);
    loop {
        tokio::select! {
            biased;
            () = &mut flush_due, if armed => {
                st.flush(spool).await;
                armed = false;
            }
            next = logs.next() => match next {
                None => return (entries, None),
                Some(Err(e)) => return (entries, Some(e)),
                Some(Ok(e)) => {
                    entries += 1;
                    st.entry(e.stream, e.ts, &e.bytes);
                    if st.pending() >= BATCH {
                        st.flush(spool).await;
                        armed = false;
                    } else if !armed {
                        flush_due.as_mut().reset(tokio::time::Instant::now() + FLUSH_AFTER);
                        armed = true;
                    }
                }
            },
        }
    }
}

/// Says in the transcript that the engine's log no longer holds where capture left off: what
/// the task wrote between `from` and `to` (nanoseconds) may be missing, in a size the engine
/// cannot tell (a kubelet serves only a container's current log file).
async fn announce_gap(container_id: &str, spool: &SharedSpool, from: i64, to: i64) {
    let at = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let (from, to) = (at(from), at(to));
    warn!(container = container_id, %from, %to, "the engine's log no longer holds where capture left off: output may be missing");
    crate::task::system_line(
        spool,
        &format!(
            "output written between {from} and {to} may be missing: the engine's log no longer holds where capture left off (a kubelet serves only a container's current log file and rotated the rest away while berth was not reading); the engine cannot tell how many bytes"
        ),
    )
    .await;
}

/// Reads the engine's log from where `tally` stands to its end, counting instead of storing
/// (the container has stopped: plain reads, retried a few times while the container exists).
/// Unbounded in time: the caller sets the deadline and keeps what was counted by then.
pub async fn count_rest(
    runtime: &dyn Backend,
    container_id: &str,
    tally: &mut Tally,
) -> Result<(), CaptureError> {
    let mut failures = 0u32;
    loop {
        tally.start_read();
        let mut logs = runtime.output(container_id, false, tally.since_secs());
        let failed = loop {
            match logs.next().await {
                None => break None,
                Some(Ok(e)) => tally.entry(e.stream, e.ts, &e.bytes),
                Some(Err(e)) => break Some(e),
            }
        };
        let Some(e) = failed else {
            tally.finish();
            return Ok(());
        };
        failures += 1;
        // Gone with its container, the log cannot be counted any further.
        let gone = matches!(runtime.state(container_id).await, Ok(None));
        if gone || failures > 3 {
            return Err(e.into());
        }
        warn!(container = container_id, error = %e, "counting the container log failed; retrying");
        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
    }
}
