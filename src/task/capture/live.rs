//! Live capture: the attach stream, opened before the command started, spooled as the engine
//! hands it out, with resume anchors on the way and a check against the log's end.

use std::time::Duration;

use futures_util::StreamExt;

use super::anchor::{self, Attempt, Schedule};
use super::log_end::read_log_end;
use crate::backend::{Backend, OutputStream};
use crate::protocol::Stream;
use crate::transcript::log_end::{Tail, log_end_matches};
use crate::transcript::replay::{BATCH, FLUSH_AFTER, Replay};
use crate::transcript::slot;
use crate::transcript::spool::{SharedSpool, lock};

/// How long a closed attach stream may precede the container's stop before berth stops
/// trusting it.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(5);

/// Why live capture handed over to the engine's log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handover {
    /// Every byte was delivered live and spooled.
    Complete,
    /// The rest must come from the log (why, for the operator's debug log).
    Incomplete(String),
}

/// Live capture of a container started under berth's eyes.
pub struct Live<'a> {
    /// The attach stream, opened before the command started.
    pub stream: OutputStream,
    /// The backend's live capability (freezing, the log's last entries).
    pub ops: &'a dyn crate::backend::Live,
    /// Live bytes between resume anchors (0: never freeze the container to anchor).
    pub anchor_every: u64,
    /// Where anchors are counted.
    pub metrics: &'a crate::metrics::Metrics,
}

/// Captures the attach stream into the spool. Any doubt (a broken stream, a spool write that
/// failed, a log that ends differently) hands over to the log reader, which resumes exactly
/// where the spooled live bytes end.
pub(super) async fn capture_live(
    runtime: &dyn Backend,
    container_id: &str,
    spool: &SharedSpool,
    secrets: Vec<Vec<u8>>,
    live: Live<'_>,
) -> Handover {
    let Live {
        stream: mut live,
        ops,
        anchor_every,
        metrics,
    } = live;
    let mut st = Replay::new(lock(spool).last_resume(), secrets);
    let mut tails = [Tail::default(), Tail::default()];
    let mut due: Option<tokio::time::Instant> = None;
    let mut schedule = Schedule::new(anchor_every);
    loop {
        let next = match due {
            None => live.next().await,
            Some(at) => match tokio::time::timeout_at(at, live.next()).await {
                Ok(n) => n,
                Err(_) => {
                    if !st.flush_now(spool) {
                        return Handover::Incomplete("the spool could not be written".into());
                    }
                    due = None;
                    continue;
                }
            },
        };
        match next {
            None => break,
            Some(Err(e)) => return Handover::Incomplete(format!("the attach stream failed: {e}")),
            Some(Ok((stream, bytes))) => {
                tails[slot(stream)].push(&bytes);
                st.live(stream, &bytes);
                if schedule.count(bytes.len()) {
                    if !st.flush_now(spool) {
                        return Handover::Incomplete("the spool could not be written".into());
                    }
                    due = None;
                    let attempt = anchor::attempt(
                        ops,
                        container_id,
                        &mut live,
                        &mut st,
                        &mut tails,
                        spool,
                        &mut schedule,
                    )
                    .await;
                    match attempt {
                        Attempt::Done(0) => {}
                        Attempt::Done(_) => metrics.anchor_placed(),
                        Attempt::StreamEnded(None) => break,
                        Attempt::StreamEnded(Some(e)) => {
                            return Handover::Incomplete(format!("the attach stream failed: {e}"));
                        }
                    }
                    if st.pending() > 0 && !st.flush_now(spool) {
                        return Handover::Incomplete("the spool could not be written".into());
                    }
                    continue;
                }
                if st.pending() >= BATCH {
                    if !st.flush_now(spool) {
                        return Handover::Incomplete("the spool could not be written".into());
                    }
                    due = None;
                } else if due.is_none() {
                    due = Some(tokio::time::Instant::now() + FLUSH_AFTER);
                }
            }
        }
    }
    if !st.flush_now(spool) {
        return Handover::Incomplete("the spool could not be written".into());
    }
    drop(live);
    // The stream closed: trusted only if the container has really ended (not a dropped
    // connection) and the log ends with what was delivered.
    let stopped = async {
        loop {
            match runtime.state(container_id).await {
                Ok(Some((false, _))) => return Ok(()),
                Ok(Some((true, _))) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(None) => return Err("the container disappeared".to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(EXIT_AFTER_CLOSE, stopped).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Handover::Incomplete(why),
        Err(_) => {
            return Handover::Incomplete(
                "the attach stream closed while the container still runs".into(),
            );
        }
    }
    let entries = match read_log_end(ops, container_id).await {
        Ok(entries) => entries,
        Err(e) => return Handover::Incomplete(format!("reading the log's end failed: {e}")),
    };
    let entries: Vec<(Stream, &[u8])> = entries.iter().map(|e| (e.stream, &e.bytes[..])).collect();
    if !log_end_matches([tails[0].view(), tails[1].view()], &entries) {
        return Handover::Incomplete(
            "the engine's log holds output the attach stream did not deliver".into(),
        );
    }
    st.finish();
    if !st.flush_now(spool) {
        return Handover::Incomplete("the spool could not be written".into());
    }
    Handover::Complete
}
