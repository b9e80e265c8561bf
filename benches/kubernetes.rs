//! Kubernetes API requests benchmark: what the real berth binary asks of the API server, per
//! execution and per minute of a running task, against the fake apiserver of the test support
//! (`tests/support/kubeapi`, which records every request) and the embedded control plane. No
//! Docker and no cluster involved.
//!
//!   cargo bench --bench kubernetes      # windows: 20 s worker alone, 20 s pending, 60 s running
//!   BERTH_BENCH_IDLE_SECS=30 BERTH_BENCH_BASELINE_SECS=10 BERTH_BENCH_PENDING_SECS=10 \
//!     cargo bench --bench kubernetes
//!
//! 0. the worker alone, no task: its own requests (the health ping, `GET /version` every 5 s),
//!    which the figures below leave out;
//! 1. a short task (`echo hi`): requests from the Job's create to its removal (until berth is
//!    quiet again), by verb and resource;
//! 2. a cancelled task (`sleep infinity`, cancelled once it runs): until `execution_closed`;
//! 3. a task whose pod cannot be scheduled (pending: the wait re-reads every 2 s), and a running
//!    task (`sleep 70`): requests in a window, scaled to a minute, split into long-lived ones
//!    (watches, log follows) and plain ones;
//! 4. against a computed poll design (GET Job + LIST pods every 2 s = 60 requests a minute per
//!    task): berth's per-minute figures and the ratios.
//!
//! Prints a table and writes its section of docs/benchmarks.md; never fails on a number.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod support;
// The integration tests' harness: the fake apiserver, the control plane, the worker process.
#[path = "../tests/support/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::devserver::ControlPlane;
use berth::devserver::execution::ExecutionRecord;
use berth::devserver::state::{SubmitRequest, TaskRecord};
use harness::kubeapi::{FakeApiserver, RequestRecord};
use support::{Report, env_usize};

const IMAGE: &str = "registry.example/busybox:bench";
/// The poll design compared against: GET Job + LIST pods every 2 s per running task.
const POLL_PER_MIN: f64 = 60.0;

/// The berth process; killed when dropped (also on a panic).
struct Berth(Child);
impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When each recorded request was first seen (sampled every 20 ms).
#[derive(Clone, Default)]
struct Stamps(Arc<parking_lot::Mutex<Vec<Instant>>>);

impl Stamps {
    fn watch(api: Arc<FakeApiserver>) -> (Stamps, tokio::task::JoinHandle<()>) {
        let s = Stamps::default();
        let s2 = s.clone();
        let h = tokio::spawn(async move {
            loop {
                let n = api.requests().len();
                {
                    let mut v = s2.0.lock();
                    let now = Instant::now();
                    while v.len() < n {
                        v.push(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (s, h)
    }

    fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Indexes of the requests first seen in `[from, to)`.
    fn between(&self, from: Instant, to: Instant) -> std::ops::Range<usize> {
        let v = self.0.lock();
        let a = v.partition_point(|t| *t < from);
        let b = v.partition_point(|t| *t < to);
        a..b
    }
}

/// "verb resource[/subresource]", with the long-lived ones marked.
fn key(r: &RequestRecord) -> String {
    let res = match (r.resource.as_str(), r.subresource.as_str()) {
        ("", _) => r.path.clone(),
        (res, "") => res.to_string(),
        (res, sub) => format!("{res}/{sub}"),
    };
    let mut k = format!("{} {res}", r.verb);
    if r.follow {
        k.push_str(" (follow)");
    }
    k
}

fn long_lived(r: &RequestRecord) -> bool {
    r.watch || r.follow
}

/// The worker's health ping (`GET /version` every 5 s, whatever runs): the worker's own, not
/// an execution's.
fn worker_own(r: &RequestRecord) -> bool {
    r.resource.is_empty()
}

/// (the execution's requests, the worker's own among them).
fn split_own(rs: Vec<RequestRecord>) -> (Vec<RequestRecord>, usize) {
    let (own, of_task): (Vec<_>, Vec<_>) = rs.into_iter().partition(worker_own);
    (of_task, own.len())
}

fn tally(rs: &[RequestRecord]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in rs {
        *m.entry(key(r)).or_insert(0) += 1;
    }
    m
}

struct Bench {
    cp: ControlPlane,
    api: Arc<FakeApiserver>,
    stamps: Stamps,
}

impl Bench {
    fn submit(&self, script: &str) -> TaskRecord {
        self.cp.submit(SubmitRequest {
            image: Some(IMAGE.into()),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..SubmitRequest::default()
        })
    }

    fn execution(&self, t: &TaskRecord) -> ExecutionRecord {
        self.cp
            .task(&t.id)
            .and_then(|r| r.execution(&t.execution_id).cloned())
            .unwrap()
    }

    fn transcript(&self, t: &TaskRecord) -> String {
        String::from_utf8_lossy(
            &self
                .cp
                .execution_transcript(&t.execution_id)
                .unwrap_or_default(),
        )
        .into_owned()
    }

    /// The execution's Jobs and pods the cluster still has.
    fn left(&self, t: &TaskRecord) -> usize {
        let hash = berth::backend::kubernetes::names::hash(&t.execution_id);
        self.api
            .jobs()
            .into_iter()
            .chain(self.api.pods())
            .filter(|o| o["metadata"]["labels"]["oz-execution-hash"] == hash.as_str())
            .count()
    }

    /// Waits until no request came for `quiet` (at most `max`).
    async fn settle(&self, quiet: Duration, max: Duration) {
        let end = Instant::now() + max;
        let mut n = self.stamps.len();
        let mut since = Instant::now();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let m = self.stamps.len();
            if m != n {
                n = m;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// The requests from index `from` on, starting at the execution's Job create.
    fn since_create(&self, from: usize, to: usize) -> (Vec<RequestRecord>, usize) {
        let all = self.api.requests();
        let rs = &all[from..to.min(all.len())];
        let at = rs
            .iter()
            .position(|r| r.verb == "create" && r.resource == "jobs")
            .expect("berth created a Job");
        (rs[at..].to_vec(), at)
    }
}

fn main() {
    berth::control::tls::install_default_provider();
    let idle_secs = env_usize("BERTH_BENCH_IDLE_SECS", 60).max(5) as u64;
    let base_secs = env_usize("BERTH_BENCH_BASELINE_SECS", 20).max(5) as u64;
    let pending_secs = env_usize("BERTH_BENCH_PENDING_SECS", 20).max(5) as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let began = Instant::now();
        let api = Arc::new(FakeApiserver::start().await);
        let (stamps, sampler) = Stamps::watch(api.clone());
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "berth").unwrap();
        let yaml = format!(
            "backend:\n  kind: kubernetes\n  kubernetes:\n    kubeconfig: {}\n    default_image: {IMAGE}\n    stop_grace_period: 2s\n",
            kubeconfig.display()
        );
        let cp = harness::control_plane("proc-key", true, None).await;
        let b = Bench { cp, api, stamps };
        let id = harness::worker_id("kube-bench");
        let state = dir.path().join("state");
        let berth = Berth(harness::worker_process_with(
            &b.cp,
            &id,
            &state,
            &["--log-level", "warn"],
            &yaml,
        ));
        harness::until("berth connected", || !b.cp.workers().is_empty()).await;
        b.settle(Duration::from_secs(2), Duration::from_secs(20)).await;
        let startup = b.stamps.len();

        // 0. The worker alone, no task: its own requests (not any execution's).
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(base_secs)).await;
        let base_range = b.stamps.between(t0, Instant::now());
        let base: Vec<RequestRecord> = b.api.requests()[base_range].to_vec();
        let base_per_min = base.len() as f64 * 60.0 / base_secs as f64;

        // 1. A short task, from the Job's create to its removal and berth quiet again.
        let i0 = b.stamps.len();
        let t = b.submit("echo hi");
        let started = Instant::now();
        harness::until("the short task ended", || b.execution(&t).state.is_terminal()).await;
        harness::until("its Job and pod removed", || b.left(&t) == 0).await;
        let short_wall = started.elapsed();
        b.settle(Duration::from_secs(3), Duration::from_secs(15))
            .await;
        let (short, short_before) = b.since_create(i0, b.stamps.len());
        let (short, short_pings) = split_own(short);
        assert!(b.transcript(&t).contains("hi\n"), "{}", b.transcript(&t));
        let short_state = format!("{:?}", b.execution(&t).state);

        // 2. A cancelled task, from the Job's create to execution_closed.
        let i0 = b.stamps.len();
        let t = b.submit("echo started; sleep infinity");
        harness::until("the cancelled task runs", || {
            b.transcript(&t).contains("started\n")
        })
        .await;
        b.cp.cancel(&t.id).unwrap();
        harness::until("execution_closed", || b.execution(&t).closed > 0).await;
        // The record itself, not the sampler (up to 20 ms behind): requests up to the close.
        let at_close = b.api.requests().len();
        let (cancelled, _) = b.since_create(i0, at_close);
        let (cancelled, cancel_pings) = split_own(cancelled);
        let cancel_state = format!("{:?}", b.execution(&t).state);
        let cancel_left = b.left(&t);
        b.settle(Duration::from_secs(2), Duration::from_secs(15))
            .await;
        let (after_close, _) = split_own(b.api.requests()[at_close..].to_vec());

        // 3a. A task whose pod cannot be scheduled (more memory than the node has): the wait
        // before a pod runs re-reads every 2 s.
        let t = b.cp.submit(SubmitRequest {
            image: Some(IMAGE.into()),
            command: vec!["true".into()],
            instance_shape: Some(berth::protocol::InstanceShape {
                vcpus: None,
                memory_gb: Some(4096),
            }),
            ..SubmitRequest::default()
        });
        harness::until("the pending task's Job and pod", || b.left(&t) >= 2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(pending_secs)).await;
        let range = b.stamps.between(p0, Instant::now());
        let (pending, _) = split_own(b.api.requests()[range].to_vec());
        let hash = berth::backend::kubernetes::names::hash(&t.execution_id);
        let phase = b
            .api
            .pods()
            .into_iter()
            .find(|p| p["metadata"]["labels"]["oz-execution-hash"] == hash.as_str())
            .and_then(|p| p["status"]["phase"].as_str().map(String::from))
            .unwrap_or_else(|| "no pod".into());
        b.cp.cancel(&t.id).unwrap();
        harness::until("the pending task closed", || b.execution(&t).closed > 0).await;
        b.settle(Duration::from_secs(2), Duration::from_secs(15))
            .await;

        // 3b. A running task's idle minute (after it settled into its wait).
        let t = b.submit("echo started; sleep 70");
        harness::until("the long task runs", || b.transcript(&t).contains("started\n")).await;
        b.settle(Duration::from_secs(1), Duration::from_secs(10))
            .await;
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let range = b.stamps.between(w0, Instant::now());
        let (idle, idle_pings) = split_own(b.api.requests()[range].to_vec());
        b.cp.cancel(&t.id).unwrap();
        harness::until("the long task closed", || b.execution(&t).closed > 0).await;

        // The report.
        let binary = harness::BIN;
        let build = if binary.contains("/release/") {
            "release"
        } else if binary.contains("/debug/") {
            "debug"
        } else {
            "unknown"
        };
        let mut r = Report::default();
        r.line(format!(
            "berth Kubernetes API requests against the fake apiserver (binary: {} build; counts do not depend on optimisation)",
            build
        ));
        let (ts, tc) = (tally(&short), tally(&cancelled));
        let keys: std::collections::BTreeSet<&String> = ts.keys().chain(tc.keys()).collect();
        r.line(format!(
            "{:<44} {:>10} {:>10}",
            "per execution: verb resource[/subresource]", "echo hi", "cancelled"
        ));
        for k in keys {
            r.line(format!(
                "{:<44} {:>10} {:>10}",
                k,
                ts.get(k).copied().unwrap_or(0),
                tc.get(k).copied().unwrap_or(0)
            ));
        }
        r.line(format!(
            "{:<44} {:>10} {:>10}",
            "total",
            short.len(),
            cancelled.len()
        ));
        r.line(format!(
            "{:<44} {:>10} {:>10}",
            "  of which long-lived (watch, log follow)",
            short.iter().filter(|r| long_lived(r)).count(),
            cancelled.iter().filter(|r| long_lived(r)).count()
        ));
        r.line(format!(
            "  not counted above: the worker's health pings (GET /version every 5 s) in the windows: {short_pings}, {cancel_pings}"
        ));
        r.line(format!(
            "  echo hi: create -> Job and pod removed, berth quiet 3 s ({short_state}, submit -> removed {:.1} s; {short_before} request(s) between submit and create, not counted)",
            short_wall.as_secs_f64()
        ));
        r.line(format!(
            "  cancelled: create -> execution_closed ({cancel_state}, {cancel_left} Job/pod left at close; {} request(s) after it: {:?})",
            after_close.len(),
            tally(&after_close)
        ));

        let scale = 60.0 / idle_secs as f64;
        let (idle_long, idle_plain): (Vec<_>, Vec<_>) = idle.iter().partition(|r| long_lived(r));
        r.line(String::new());
        r.line(format!(
            "{:<56} {:>8} {:>8}",
            format!("running task (`sleep 70`), {idle_secs} s window"),
            "count",
            "per min"
        ));
        for (k, n) in tally(&idle) {
            r.line(format!("{:<56} {:>8} {:>8.1}", k, n, n as f64 * scale));
        }
        r.line(format!(
            "{:<56} {:>8} {:>8.1}",
            "long-lived (watches, log follows)",
            idle_long.len(),
            idle_long.len() as f64 * scale
        ));
        r.line(format!(
            "{:<56} {:>8} {:>8.1}",
            "plain requests",
            idle_plain.len(),
            idle_plain.len() as f64 * scale
        ));
        let task_per_min = idle.len() as f64 * scale;
        r.line(format!(
            "{:<56} {:>8} {:>8.1}",
            "total of the task",
            idle.len(),
            task_per_min
        ));
        r.line(format!(
            "{:<56} {:>8} {:>8.1}",
            "the worker's health pings in the window (GET /version)",
            idle_pings,
            idle_pings as f64 * scale
        ));
        r.line(format!(
            "{:<56} {:>8} {:>8.1}",
            format!("worker alone, no task, {base_secs} s: {}", {
                let t = tally(&base);
                t.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ")
            }),
            base.len(),
            base_per_min
        ));
        let pscale = 60.0 / pending_secs as f64;
        r.line(String::new());
        r.line(format!(
            "{:<56} {:>8} {:>8}",
            format!("pending task (pod unschedulable), {pending_secs} s window"),
            "count",
            "per min"
        ));
        for (k, n) in tally(&pending) {
            r.line(format!("{:<56} {:>8} {:>8.1}", k, n, n as f64 * pscale));
        }
        let pending_per_min = pending.len() as f64 * pscale;
        r.line(format!(
            "{:<56} {:>8} {:>8.1}",
            format!("total of the task (pod phase at the end: {phase})"),
            pending.len(),
            pending_per_min
        ));
        r.line(String::new());
        r.line(format!(
            "{:<56} {:>8} {:>8}",
            "requests per minute per task", "per min", "poll/x"
        ));
        r.line(format!(
            "{:<56} {:>8.1} {:>7.2}x",
            "berth: a running task's own (measured)",
            task_per_min,
            POLL_PER_MIN / task_per_min.max(f64::MIN_POSITIVE)
        ));
        r.line(format!(
            "{:<56} {:>8.1} {:>7.2}x",
            "berth: a pending task's own (measured)",
            pending_per_min,
            POLL_PER_MIN / pending_per_min.max(f64::MIN_POSITIVE)
        ));
        let all_in = task_per_min + idle_pings as f64 * scale;
        r.line(format!(
            "{:<56} {:>8.1} {:>7.2}x",
            "berth: with the worker's pings, one task running",
            all_in,
            POLL_PER_MIN / all_in.max(f64::MIN_POSITIVE)
        ));
        r.line(format!(
            "{:<56} {:>8.1} {:>7.2}x",
            "poll design: GET job + LIST pods every 2 s (computed)",
            POLL_PER_MIN,
            1.0
        ));
        r.line("(poll/x: the poll design's requests per minute over this row's; > 1: berth asks less)");
        r.line(format!(
            "(start-up before the first task: {startup} requests; whole bench {:.0} s)",
            began.elapsed().as_secs_f64()
        ));
        r.publish("kubernetes", "cargo bench --bench kubernetes");
        drop(berth);
        sampler.abort();
        b.cp.shutdown();
        drop(dir);
    });
}
