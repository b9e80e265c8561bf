//! A sandbox's output from `pods/log`: the init containers' (sidecar copies, provisioning
//! steps) in order, then the task's, each from the caller's whole-second cursor.
//!
//! A follow ends when the kubelet ends it, which is not always the container's end (a log
//! rotation, a kubelet restart, an API server outage): the reader then re-opens from the last
//! entry it delivered and drops what it already delivered (same timestamp, counted), until the
//! pod says the container has terminated; then one plain read delivers a last fragment
//! without a newline, which the kubelet never sends while following.

use std::sync::Arc;
use std::time::Duration;

use futures_util::AsyncReadExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::LogParams;
use tokio::sync::mpsc;

use super::Inner;
use super::log::{KubeletLog, since_time};
use super::names::{TASK_CONTAINER, parse_sandbox_id};
use crate::backend::{BackendError, LogStream};
use crate::runtime::LogEntry;
use crate::transcript::replay::ENGINE_PIECE;

/// Longest wait for a Job's pod to be made before looking again.
const NO_POD_BOUND: Duration = Duration::from_secs(2);
/// Longest wait for a change of a pod whose container has not started.
const WAIT_BOUND: Duration = Duration::from_secs(10);

type Tx = mpsc::Sender<Result<LogEntry, BackendError>>;

/// The output stream; its reader task ends when the stream is dropped.
pub(super) fn stream(inner: Arc<Inner>, id: String, follow: bool, since: i64) -> LogStream {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(e) = read(&inner, &id, follow, since, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A container's place in its pod: not started, running, or terminated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Waiting,
    Running,
    Done,
}

fn stage(s: Option<&ContainerStatus>) -> Stage {
    let state = s.and_then(|s| s.state.as_ref());
    match state {
        Some(st) if st.terminated.is_some() => Stage::Done,
        Some(st) if st.running.is_some() => Stage::Running,
        _ => Stage::Waiting,
    }
}

/// The pod's containers in the order they run, with their stages.
fn containers(pod: &Pod) -> Vec<(String, Stage)> {
    let spec_inits = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        .unwrap_or_default();
    let status = pod.status.as_ref();
    let find = |list: Option<&Vec<ContainerStatus>>, name: &str| {
        list.and_then(|l| l.iter().find(|c| c.name == name))
            .cloned()
    };
    let mut out: Vec<(String, Stage)> = spec_inits
        .into_iter()
        .map(|n| {
            let s = find(status.and_then(|s| s.init_container_statuses.as_ref()), &n);
            (n, stage(s.as_ref()))
        })
        .collect();
    let task = find(
        status.and_then(|s| s.container_statuses.as_ref()),
        TASK_CONTAINER,
    );
    out.push((TASK_CONTAINER.to_string(), stage(task.as_ref())));
    out
}

fn pod_over(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// What a reader already delivered of one container: the last entry's timestamp and how many
/// entries with that timestamp it delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Delivered {
    ts: Option<i64>,
    at_ts: u32,
}

impl Delivered {
    fn note(&mut self, ts: i64) {
        if self.ts == Some(ts) {
            self.at_ts += 1;
        } else {
            self.ts = Some(ts);
            self.at_ts = 1;
        }
    }

    /// The whole second to read from: early enough for an entry written after the last one
    /// delivered but stamped before it (the streams are stamped apart), as the transcript's
    /// own cursor does.
    fn since(&self, since: i64) -> i64 {
        self.ts.map_or(since, |ts| {
            (ts - crate::transcript::INVERSION_MARGIN_NS)
                .max(0)
                .div_euclid(1_000_000_000)
        })
    }
}

/// One read against what earlier reads delivered: entries up to that point are dropped, and
/// once an entry is new every later one is (the log is append-only; pieces of one line, and
/// lines written together, can share a timestamp).
#[derive(Debug, Clone, Copy)]
struct Reread {
    before: Delivered,
    seen_at_ts: u32,
    passed: bool,
}

impl Reread {
    fn new(before: Delivered) -> Reread {
        Reread {
            before,
            seen_at_ts: 0,
            passed: false,
        }
    }

    /// Whether this entry of the read was delivered before.
    fn again(&mut self, ts: i64) -> bool {
        if self.passed {
            return false;
        }
        let again = match self.before.ts {
            Some(last) if ts < last => true,
            Some(last) if ts == last => {
                self.seen_at_ts += 1;
                self.seen_at_ts <= self.before.at_ts
            }
            _ => false,
        };
        self.passed = !again;
        again
    }
}

async fn read(
    inner: &Inner,
    id: &str,
    follow: bool,
    since: i64,
    tx: &Tx,
) -> Result<(), BackendError> {
    let (name, uid) = parse_sandbox_id(id);
    let mut done: Vec<String> = Vec::new();
    loop {
        let look = inner.look(name, uid).await?;
        // Ended without ever running (refused, unschedulable, stopped early): nothing to wait for.
        let over = inner.ends.lock().contains_key(id)
            || look
                .job
                .as_ref()
                .is_none_or(|j| super::finished(j) || super::stopped(j));
        let Some(pod) = look.pod else {
            if !follow || over {
                return Ok(());
            }
            // Until a pod is made (a watch, bounded: a refused pod only shows in events).
            super::watch::changed(inner, name, &look.version, NO_POD_BOUND).await;
            continue;
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let all = containers(&pod);
        let next = all.iter().find(|(n, _)| !done.contains(n)).cloned();
        let Some((container, st)) = next else {
            return Ok(());
        };
        match st {
            Stage::Waiting if pod_over(&pod) || !follow || over => {
                // Never ran (or not yet, for a plain read): nothing to read there.
                if !follow {
                    return Ok(());
                }
                done.push(container);
            }
            // Until the pod changes (a container starts), not a poll: a pod can wait minutes
            // for a node or an image.
            Stage::Waiting => super::watch::changed(inner, name, &look.version, WAIT_BOUND).await,
            Stage::Running | Stage::Done => {
                let finished =
                    container_log(inner, name, uid, &pod_name, &container, follow, since, tx)
                        .await?;
                if !finished {
                    return Ok(());
                }
                done.push(container);
            }
        }
    }
}

/// One container's log; false when the stream's reader went away.
#[allow(clippy::too_many_arguments)]
async fn container_log(
    inner: &Inner,
    name: &str,
    uid: Option<&str>,
    pod: &str,
    container: &str,
    follow: bool,
    since: i64,
    tx: &Tx,
) -> Result<bool, BackendError> {
    let mut delivered = Delivered::default();
    let mut following = follow;
    let mut failures = 0u32;
    // Follows that ended with nothing new while the pod still says the container runs (its
    // status lags the exit, or the kubelet keeps ending them): re-opened after a growing pause,
    // never in a tight loop.
    let mut idle = 0u32;
    loop {
        let lp = LogParams {
            container: Some(container.to_string()),
            follow: following,
            timestamps: true,
            since_time: since_time(delivered.since(since)),
            ..LogParams::default()
        };
        let before = delivered;
        match once(inner, pod, &lp, &mut delivered, tx).await {
            Ok(false) => return Ok(false),
            Ok(true) => failures = 0,
            // A cut body is a failed read, never the log's end: its partial line is not kept,
            // and the read is made again from the cursor.
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(300 * u64::from(failures))).await;
                continue;
            }
        }
        if !following {
            return Ok(true);
        }
        // The follow ended: the container's end, or the kubelet's (rotation, restart).
        let look = inner.look(name, uid).await;
        let ended = match &look {
            Ok(l) => l.pod.as_ref().is_none_or(|p| {
                containers(p)
                    .iter()
                    .any(|(n, s)| n == container && *s == Stage::Done)
                    || pod_over(p)
            }),
            Err(_) => false,
        };
        if ended {
            // One plain read for a last fragment the follow never sends.
            following = false;
        } else if delivered == before {
            idle += 1;
            tokio::time::sleep(Duration::from_millis(250 * u64::from(idle.min(20)))).await;
        } else {
            idle = 0;
        }
    }
}

/// One read of a container's log into the channel; false when the reader went away.
async fn once(
    inner: &Inner,
    pod: &str,
    lp: &LogParams,
    delivered: &mut Delivered,
    tx: &Tx,
) -> Result<bool, BackendError> {
    let mut body = inner
        .pods
        .log_stream(pod, lp)
        .await
        .map_err(|e| super::client::api_error("reading the pod's log", e))?;
    let mut parser = KubeletLog::new(ENGINE_PIECE);
    let mut reread = Reread::new(*delivered);
    let mut buf = vec![0u8; 64 << 10];
    let mut send = |entries: Vec<LogEntry>, delivered: &mut Delivered| {
        let mut out = Vec::new();
        for e in entries {
            if reread.again(e.ts) {
                continue;
            }
            delivered.note(e.ts);
            out.push(e);
        }
        out
    };
    loop {
        // A silent task's follow can wait long for bytes: a reader gone away ends it at once.
        let read = tokio::select! {
            r = body.read(&mut buf) => r,
            _ = tx.closed() => return Ok(false),
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            // Re-read from the cursor by the caller; nothing of the cut line is delivered.
            Err(e) => {
                return Err(BackendError::Api {
                    op: "reading the pod's log",
                    reason: format!("the stream was cut: {e}"),
                });
            }
        };
        for e in send(parser.push(&buf[..n]), delivered) {
            if tx.send(Ok(e)).await.is_err() {
                return Ok(false);
            }
        }
    }
    // A fragment at the end: only a plain read's is the real end of the log (a follow's last
    // bytes without newline are re-read, complete, by the next read).
    if !lp.follow {
        for e in send(parser.finish(), delivered) {
            if tx.send(Ok(e)).await.is_err() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reread_drops_what_was_delivered_by_timestamp_and_count() {
        let mut d = Delivered::default();
        for ts in [1_000_000_000, 2_000_000_000, 2_000_000_000] {
            d.note(ts);
        }
        assert_eq!(
            d.since(0),
            0,
            "re-read from a margin before the last entry's second"
        );
        let mut late = Delivered::default();
        late.note(100 * 1_000_000_000);
        assert_eq!(late.since(0), 40);
        let mut r = Reread::new(d);
        let again: Vec<bool> = [
            2_000_000_000i64,
            2_000_000_000,
            2_000_000_000,
            3_000_000_000,
        ]
        .iter()
        .map(|ts| r.again(*ts))
        .collect();
        assert_eq!(
            again,
            [true, true, false, false],
            "the third entry at 2 s is new"
        );
        let mut r = Reread::new(d);
        assert!(r.again(1_500_000_000), "before the last: delivered");
    }

    #[test]
    fn a_reread_after_times_ran_backwards_doubles_nothing() {
        // The parser's running maximum: Z 5.0015, A 5.002, B (stamped 5.001) 5.002.
        let (z, a, f) = (5_001_500_000i64, 5_002_000_000, 5_003_000_000);
        let mut d = Delivered::default();
        for ts in [4_000_000_000, z, a, a] {
            d.note(ts);
        }
        let mut r = Reread::new(d);
        let again: Vec<bool> = [4_000_000_000, z, a, a, f]
            .iter()
            .map(|ts| r.again(*ts))
            .collect();
        assert_eq!(
            again,
            [true, true, true, true, false],
            "only the fragment is new"
        );
    }

    #[test]
    fn a_first_read_keeps_entries_that_share_a_timestamp() {
        // Docker's json-file log gives every piece of a long line the line's timestamp.
        let mut d = Delivered::default();
        let mut r = Reread::new(d);
        for _ in 0..3 {
            assert!(!r.again(5_000_000_000));
            d.note(5_000_000_000);
        }
        // A re-read drops exactly those three, then keeps the fourth at that time.
        let mut r = Reread::new(d);
        let again: Vec<bool> = (0..4).map(|_| r.again(5_000_000_000)).collect();
        assert_eq!(again, [true, true, true, false]);
    }
}
