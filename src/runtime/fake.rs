//! A scripted, recording [`Runtime`] for component tests: the supervisor, a task run, capture
//! and reconcile run against it exactly as against Docker, without an engine.
//!
//! Everything it does is decided by the test: what the next container prints and how it ends
//! ([`Script`]), which calls fail ([`FakeRuntime::fail_next`]), which calls hang until released
//! ([`FakeRuntime::block`]), whether the engine answers at all ([`FakeRuntime::set_reachable`]),
//! and it records every call ([`FakeRuntime::calls`]). Nothing sleeps, so tests may run on a
//! paused clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{
    ExecRun, ExitStatus, ImageInfo, LogEntry, LogStream, ManagedContainer, OutputStream, Runtime,
    RuntimeError,
};
use crate::config::PullPolicy;
use crate::protocol::Stream;
use crate::runtime::ContainerSpec;
use crate::spec::holder::{HOLD_SCRIPT, RELEASE_SIGNAL};
use crate::spec::image::ImageRef;
use crate::spec::owner::Owner;
use crate::spec::{LABEL_EXECUTION, LABEL_INSTANCE, LABEL_TASK, LABEL_WORKER};

/// Exit status of a container stopped by the stop signal (128 + SIGTERM).
pub const STOPPED: i64 = 143;

/// One engine call, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Ping,
    /// `ensure_image`.
    EnsureImage,
    /// `ensure_sidecar`.
    EnsureSidecar,
    Create,
    Start,
    Exec,
    /// `exec_exit_code`.
    ExecExitCode,
    Signal,
    Logs,
    /// `log_tail`.
    LogTail,
    Attach,
    Pause,
    Unpause,
    Wait,
    /// `inspect_state`.
    Inspect,
    Stop,
    Remove,
    /// `list_managed`.
    ListManaged,
}

/// A recorded call: the operation and what it was about (image, container id, command…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The operation.
    pub op: Op,
    /// Its main argument.
    pub target: String,
}

/// What a container does once its command runs.
#[derive(Debug, Clone)]
pub struct Script {
    /// Output written as soon as the command runs, in this order.
    pub output: Vec<(Stream, Vec<u8>)>,
    /// How it ends on its own; `None`: it runs until stopped (or [`FakeRuntime::exit`]).
    pub exit: Option<ExitStatus>,
}

impl Script {
    /// Prints nothing and exits with `code`.
    pub fn exits(code: i64) -> Self {
        Script {
            output: Vec::new(),
            exit: Some(ExitStatus {
                code,
                oom_killed: false,
            }),
        }
    }

    /// Runs until it is stopped.
    pub fn runs() -> Self {
        Script {
            output: Vec::new(),
            exit: None,
        }
    }

    /// Adds output.
    pub fn prints(mut self, stream: Stream, bytes: impl AsRef<[u8]>) -> Self {
        self.output.push((stream, bytes.as_ref().to_vec()));
        self
    }

    /// Ends killed by the OOM killer.
    pub fn oom(mut self) -> Self {
        self.exit = Some(ExitStatus {
            code: 137,
            oom_killed: true,
        });
        self
    }
}

/// What an `exec` prints and exits with.
#[derive(Debug, Clone, Default)]
pub struct ExecScript {
    pub output: Vec<(Stream, Vec<u8>)>,
    /// Its exit code.
    pub code: i64,
}

#[derive(Debug)]
struct Container {
    labels: BTreeMap<String, String>,
    /// Started and not ended.
    running: bool,
    /// Waiting for the release signal (provisioning holder).
    held: bool,
    exit: Option<ExitStatus>,
    log: Vec<LogEntry>,
    script: Script,
    /// Frozen by `pause` (a test can see that berth thawed it again).
    paused: bool,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    images: HashMap<String, ImageInfo>,
    pullable: bool,
    pulls: (u64, u64),
    sidecars: HashSet<String>,
    containers: BTreeMap<String, Container>,
    next_id: u64,
    scripts: VecDeque<Script>,
    default_script: Option<Script>,
    execs: VecDeque<ExecScript>,
    exec_codes: HashMap<String, i64>,
    failures: HashMap<Op, VecDeque<RuntimeError>>,
    blocked: HashSet<Op>,
    down: bool,
    /// Engine clock for log stamps (ns); each entry advances it.
    clock: i64,
    /// After this many log entries delivered by one `logs` stream, it hangs (a kill point).
    cut_after: Option<usize>,
    cut_reached: bool,
    /// After this many pieces delivered by one attach stream, it ends early (a lost connection).
    attach_cut_after: Option<usize>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

/// The fake engine; clones share it (hand one to the code under test, keep one to script it).
#[derive(Clone, Default)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
}

fn unreachable() -> RuntimeError {
    RuntimeError::Unreachable {
        host: "fake://engine".into(),
        reason: "the fake engine is down".into(),
    }
}

fn no_such(op: &'static str, id: &str) -> RuntimeError {
    RuntimeError::Api {
        op,
        reason: format!("No such container: {id} (HTTP 404)"),
    }
}

/// A fixed start for the fake clock: 2026-01-01T00:00:00Z.
const EPOCH_NS: i64 = 1_767_225_600 * 1_000_000_000;

impl FakeRuntime {
    /// An engine that answers, has no images, and pulls any image it is asked for.
    pub fn new() -> Self {
        let f = FakeRuntime::default();
        {
            let mut s = f.shared.state.lock();
            s.pullable = true;
            s.clock = EPOCH_NS;
        }
        f
    }

    fn changed(&self) {
        self.shared.changed.notify_waiters();
    }

    /// Makes `image` present locally (with this entrypoint).
    pub fn add_image(&self, image: &str, entrypoint: &[&str]) {
        // Keyed as the engine would resolve it (`busybox` is `docker.io/library/busybox:latest`).
        let name = ImageRef::parse(image).map_or_else(|_| image.to_string(), |r| r.to_string());
        let mut s = self.shared.state.lock();
        let n = s.images.len();
        s.images.insert(
            name,
            ImageInfo {
                id: format!("sha256:{n:064x}"),
                repo_digest: None,
                entrypoint: entrypoint.iter().map(|e| e.to_string()).collect(),
                user: String::new(),
            },
        );
    }

    /// Whether a missing image can be pulled (a registry is reachable).
    pub fn set_pullable(&self, pullable: bool) {
        self.shared.state.lock().pullable = pullable;
    }

    /// What the next created container does (queued in order).
    pub fn script_next(&self, script: Script) {
        self.shared.state.lock().scripts.push_back(script);
    }

    /// What created containers do once the queued scripts are used up (default: exit 0).
    pub fn script_all(&self, script: Script) {
        self.shared.state.lock().default_script = Some(script);
    }

    /// What the next `exec` prints and exits with (queued; default: nothing, exit 0).
    pub fn exec_next(&self, exec: ExecScript) {
        self.shared.state.lock().execs.push_back(exec);
    }

    /// The next call of `op` fails with `err` (queued per operation).
    pub fn fail_next(&self, op: Op, err: RuntimeError) {
        self.shared
            .state
            .lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(err);
    }

    /// Calls of `op` hang (after being recorded) until [`FakeRuntime::unblock`].
    pub fn block(&self, op: Op) {
        self.shared.state.lock().blocked.insert(op);
    }

    /// Lets blocked calls of `op` go on.
    pub fn unblock(&self, op: Op) {
        self.shared.state.lock().blocked.remove(&op);
        self.changed();
    }

    /// Takes the engine down (every call fails as unreachable, streams break) or back up.
    /// Containers keep running meanwhile.
    pub fn set_reachable(&self, up: bool) {
        self.shared.state.lock().down = !up;
        self.changed();
    }

    /// A `logs` stream hangs after delivering `n` entries (then [`FakeRuntime::cut_reached`]).
    pub fn cut_logs_after(&self, n: Option<usize>) {
        let mut s = self.shared.state.lock();
        s.cut_after = n;
        s.cut_reached = false;
    }

    /// An attach stream ends (as if the connection dropped) after delivering `n` pieces.
    pub fn cut_attach_after(&self, n: Option<usize>) {
        self.shared.state.lock().attach_cut_after = n;
    }

    /// Waits until a `logs` stream hung at its cut point.
    pub async fn cut_reached(&self) {
        self.wait_until(|s| s.cut_reached).await;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.state.lock().calls.clone()
    }

    /// What each call of `op` so far was about, in order.
    pub fn targets(&self, op: Op) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.op == op)
            .map(|c| c.target)
            .collect()
    }

    /// The operations called so far, in order, without repeats of the same one in a row.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self.calls().into_iter().map(|c| c.op).collect();
        ops.dedup();
        ops
    }

    /// How many times `op` was called.
    pub fn count(&self, op: Op) -> usize {
        self.calls().iter().filter(|c| c.op == op).count()
    }

    /// Waits until `op` was called at least `n` times.
    pub async fn called(&self, op: Op, n: usize) {
        self.wait_until(|s| s.calls.iter().filter(|c| c.op == op).count() >= n)
            .await;
    }

    async fn wait_until(&self, mut done: impl FnMut(&State) -> bool) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.shared.state.lock()) {
                return;
            }
            notified.await;
        }
    }

    /// Container ids that exist, with whether each runs.
    pub fn containers(&self) -> Vec<(String, bool)> {
        self.shared
            .state
            .lock()
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), c.running))
            .collect()
    }

    /// A container of `owner` that exists before the test starts (e.g. left by a previous
    /// worker), with the output it already wrote. An empty `owner.instance` makes it a
    /// container of a berth before instance labels.
    pub fn add_container(
        &self,
        owner: &Owner,
        task_id: &str,
        execution_id: &str,
        running: bool,
        log: Vec<LogEntry>,
        exit: Option<ExitStatus>,
    ) -> String {
        let mut s = self.shared.state.lock();
        s.next_id += 1;
        let id = format!("{:064x}", 0xfa4e_0000_u64 + s.next_id);
        let mut labels = owner.labels();
        if owner.instance.is_empty() {
            // A container of a berth before instance labels.
            labels.remove(LABEL_INSTANCE);
        }
        labels.insert(LABEL_TASK.to_string(), task_id.to_string());
        labels.insert(LABEL_EXECUTION.to_string(), execution_id.to_string());
        if let Some(last) = log.last() {
            s.clock = s.clock.max(last.ts + 1);
        }
        s.containers.insert(
            id.clone(),
            Container {
                labels,
                running,
                held: false,
                exit: if running { None } else { exit },
                log,
                script: Script {
                    output: Vec::new(),
                    exit,
                },
                paused: false,
            },
        );
        drop(s);
        self.changed();
        id
    }

    /// Writes output from a running container now.
    pub fn print(&self, id: &str, stream: Stream, bytes: impl AsRef<[u8]>) {
        let mut s = self.shared.state.lock();
        let ts = s.clock;
        s.clock += 1_000;
        if let Some(c) = s.containers.get_mut(id) {
            c.log.push(LogEntry {
                stream,
                ts,
                bytes: Bytes::copy_from_slice(bytes.as_ref()),
            });
        }
        drop(s);
        self.changed();
    }

    /// Appends one entry, with its own timestamp, to a container's output (log and attach).
    pub fn print_entry(&self, id: &str, entry: LogEntry) {
        let mut s = self.shared.state.lock();
        s.clock = s.clock.max(entry.ts + 1);
        if let Some(c) = s.containers.get_mut(id) {
            c.log.push(entry);
        }
        drop(s);
        self.changed();
    }

    /// The container disappears behind berth's back (removed by someone else, or lost by an
    /// engine restart); not recorded as a call.
    pub fn lose(&self, id: &str) {
        self.shared.state.lock().containers.remove(id);
        self.changed();
    }

    /// Whether the container is paused now.
    pub fn is_paused(&self, id: &str) -> bool {
        self.shared
            .state
            .lock()
            .containers
            .get(id)
            .is_some_and(|c| c.paused)
    }

    /// The output a container wrote so far.
    pub fn log_of(&self, id: &str) -> Vec<LogEntry> {
        self.shared
            .state
            .lock()
            .containers
            .get(id)
            .map(|c| c.log.clone())
            .unwrap_or_default()
    }

    /// Ends a running container with `code`.
    pub fn exit(&self, id: &str, code: i64) {
        let mut s = self.shared.state.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.running = false;
            c.held = false;
            c.exit = Some(ExitStatus {
                code,
                oom_killed: false,
            });
        }
        drop(s);
        self.changed();
    }

    /// Records a call (and wakes whoever waits for one).
    fn record(&self, op: Op, target: &str) {
        self.shared.state.lock().calls.push(Call {
            op,
            target: target.to_string(),
        });
        self.changed();
    }

    /// Records the call, honours an injected failure, an outage and a block. The lock is not
    /// held across the wait.
    async fn enter(&self, op: Op, target: &str) -> Result<(), RuntimeError> {
        self.record(op, target);
        self.wait_until(|s| !s.blocked.contains(&op)).await;
        let mut s = self.shared.state.lock();
        if s.down {
            return Err(unreachable());
        }
        if let Some(e) = s.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        Ok(())
    }

    /// Runs a container's command: its scripted output, then its scripted end.
    fn run_command(s: &mut State, id: &str) {
        let clock = &mut s.clock;
        let Some(c) = s.containers.get_mut(id) else {
            return;
        };
        for (stream, bytes) in c.script.output.clone() {
            c.log.push(LogEntry {
                stream,
                ts: *clock,
                bytes: Bytes::from(bytes),
            });
            *clock += 1_000;
        }
        if let Some(exit) = c.script.exit {
            c.running = false;
            c.exit = Some(exit);
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(Op::Ping, "").await
    }

    async fn ensure_egress_network(
        &self,
        _name: &str,
        _bridge: &str,
        _owner: &Owner,
    ) -> Result<crate::runtime::EgressNetwork, RuntimeError> {
        Err(RuntimeError::Api {
            op: "network create",
            reason: "the fake engine has no networks".into(),
        })
    }

    async fn sealed_networks(
        &self,
        _worker_id: Option<&str>,
    ) -> Result<Vec<crate::runtime::SealedNetwork>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn remove_network(&self, _name: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn container_address(
        &self,
        _id: &str,
        _network: &str,
    ) -> Result<Option<std::net::IpAddr>, RuntimeError> {
        Ok(None)
    }

    async fn usage(&self, _id: &str) -> Result<Option<crate::runtime::UsageSample>, RuntimeError> {
        Ok(None)
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(vec!["runc".to_string()])
    }

    async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        _progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, RuntimeError> {
        let name = image.to_string();
        self.enter(Op::EnsureImage, &name).await?;
        let mut s = self.shared.state.lock();
        let local = s.images.get(&name).cloned();
        match (policy, local) {
            (PullPolicy::Never, None) => Err(RuntimeError::ImageMissing { image: name }),
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(i)) => Ok(i),
            (_, local) if !s.pullable => {
                s.pulls.1 += 1;
                match (policy, local) {
                    (PullPolicy::Always, Some(i)) => Ok(i),
                    _ => Err(RuntimeError::Pull {
                        image: name,
                        reason: "no registry is reachable from the fake engine".into(),
                    }),
                }
            }
            (_, _) => {
                s.pulls.0 += 1;
                let n = s.images.len();
                let info = s
                    .images
                    .entry(name)
                    .or_insert_with(|| ImageInfo {
                        id: format!("sha256:{n:064x}"),
                        repo_digest: None,
                        entrypoint: Vec::new(),
                        user: String::new(),
                    })
                    .clone();
                Ok(info)
            }
        }
    }

    async fn ensure_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, RuntimeError> {
        let info = self.ensure_image(image, policy, None).await?;
        self.enter(Op::EnsureSidecar, &image.to_string()).await?;
        let volume = crate::spec::image::sidecar_volume_name(image, &info.id);
        self.shared.state.lock().sidecars.insert(volume.clone());
        Ok(volume)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.enter(Op::Create, &spec.image).await?;
        let mut s = self.shared.state.lock();
        s.next_id += 1;
        let id = format!("{:064x}", 0xc0_0000_u64 + s.next_id);
        let script = match s.scripts.pop_front() {
            Some(sc) => sc,
            None => s.default_script.clone().unwrap_or_else(|| Script::exits(0)),
        };
        let held = spec
            .entrypoint
            .as_ref()
            .is_some_and(|e| e.get(2).map(String::as_str) == Some(HOLD_SCRIPT));
        s.containers.insert(
            id.clone(),
            Container {
                labels: spec.labels.clone().into_iter().collect(),
                running: false,
                held,
                exit: None,
                log: Vec::new(),
                script,
                paused: false,
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Start, id).await?;
        let mut s = self.shared.state.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| no_such("container start", id))?;
        c.running = true;
        if !c.held {
            FakeRuntime::run_command(&mut s, id);
        }
        drop(s);
        self.changed();
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        _working_dir: Option<&str>,
        _env: Vec<String>,
    ) -> Result<ExecRun, RuntimeError> {
        self.enter(Op::Exec, &cmd.join(" ")).await?;
        let mut s = self.shared.state.lock();
        if !s.containers.get(id).is_some_and(|c| c.running) {
            return Err(RuntimeError::Api {
                op: "exec create",
                reason: format!("container {id} is not running (HTTP 409)"),
            });
        }
        let script = s.execs.pop_front().unwrap_or_default();
        let exec_id = format!("exec-{}", s.exec_codes.len() + 1);
        s.exec_codes.insert(exec_id.clone(), script.code);
        let items: Vec<Result<(Stream, Bytes), RuntimeError>> = script
            .output
            .into_iter()
            .map(|(st, b)| Ok((st, Bytes::from(b))))
            .collect();
        Ok(ExecRun {
            id: exec_id,
            output: Box::pin(futures_util::stream::iter(items)),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        self.enter(Op::ExecExitCode, exec_id).await?;
        Ok(self.shared.state.lock().exec_codes.get(exec_id).copied())
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Signal, &format!("{id} {signal}")).await?;
        let mut s = self.shared.state.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| no_such("container kill", id))?;
        if signal == RELEASE_SIGNAL && c.held && c.running {
            c.held = false;
            FakeRuntime::run_command(&mut s, id);
        }
        drop(s);
        self.changed();
        Ok(())
    }

    fn logs(&self, id: &str, follow: bool, since: i64) -> LogStream {
        let fake = self.clone();
        let id = id.to_string();
        self.record(Op::Logs, &id);
        let since_ns = since.max(0).saturating_mul(1_000_000_000);
        // (position in the log, entries delivered, ended)
        let init = (fake, id, 0usize, 0usize, false);
        Box::pin(futures_util::stream::unfold(
            init,
            move |(fake, id, mut pos, mut sent, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let notified = fake.shared.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let mut first_cut = false;
                    {
                        let mut s = fake.shared.state.lock();
                        if s.down {
                            return Some((Err(unreachable()), (fake.clone(), id, pos, sent, true)));
                        }
                        if let Some(e) = s.failures.get_mut(&Op::Logs).and_then(VecDeque::pop_front)
                        {
                            return Some((Err(e), (fake.clone(), id, pos, sent, true)));
                        }
                        let cut = s.cut_after.is_some_and(|n| sent >= n);
                        if cut {
                            first_cut = !s.cut_reached;
                            s.cut_reached = true;
                        } else {
                            let c = s.containers.get(&id)?;
                            while c.log.get(pos).is_some_and(|e| e.ts < since_ns) {
                                pos += 1;
                            }
                            if let Some(e) = c.log.get(pos).cloned() {
                                sent += 1;
                                return Some((Ok(e), (fake.clone(), id, pos + 1, sent, false)));
                            }
                            if !follow || !c.running {
                                return None;
                            }
                        }
                    }
                    if first_cut {
                        fake.changed();
                    }
                    notified.await;
                }
            },
        ))
    }

    fn log_tail(&self, id: &str, entries: u32) -> LogStream {
        self.record(Op::LogTail, id);
        let s = self.shared.state.lock();
        let tail: Vec<Result<LogEntry, RuntimeError>> = if s.down {
            vec![Err(unreachable())]
        } else {
            let log = s
                .containers
                .get(id)
                .map(|c| c.log.as_slice())
                .unwrap_or(&[]);
            let from = log.len().saturating_sub(entries as usize);
            log[from..].iter().cloned().map(Ok).collect()
        };
        Box::pin(futures_util::stream::iter(tail))
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Pause, id).await?;
        let mut s = self.shared.state.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| no_such("container pause", id))?;
        c.paused = true;
        Ok(())
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Unpause, id).await?;
        let mut s = self.shared.state.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| no_such("container unpause", id))?;
        c.paused = false;
        Ok(())
    }

    async fn attach(&self, id: &str) -> Result<OutputStream, RuntimeError> {
        self.enter(Op::Attach, id).await?;
        let fake = self.clone();
        let (pos, cut) = {
            let s = self.shared.state.lock();
            let c = s
                .containers
                .get(id)
                .ok_or_else(|| no_such("container attach", id))?;
            (c.log.len(), s.attach_cut_after)
        };
        // (position in the log, pieces delivered, ended)
        let init = (fake, id.to_string(), pos, 0usize, false);
        Ok(Box::pin(futures_util::stream::unfold(
            init,
            move |(fake, id, pos, sent, ended)| async move {
                if ended || cut.is_some_and(|n| sent >= n) {
                    return None;
                }
                loop {
                    let notified = fake.shared.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    {
                        let s = fake.shared.state.lock();
                        if s.down {
                            return Some((Err(unreachable()), (fake.clone(), id, pos, sent, true)));
                        }
                        let c = s.containers.get(&id)?;
                        if let Some(e) = c.log.get(pos) {
                            let piece = (e.stream, e.bytes.clone());
                            return Some((Ok(piece), (fake.clone(), id, pos + 1, sent + 1, false)));
                        }
                        // Output closes when the command has ended (not before it starts).
                        if c.exit.is_some() && !c.running {
                            return None;
                        }
                    }
                    notified.await;
                }
            },
        )))
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        self.enter(Op::Wait, id).await?;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.shared.state.lock();
                if s.down {
                    return Err(unreachable());
                }
                let c = s
                    .containers
                    .get(id)
                    .ok_or_else(|| no_such("container wait", id))?;
                if let (false, Some(exit)) = (c.running, c.exit) {
                    return Ok(exit);
                }
            }
            notified.await;
        }
    }

    async fn inspect_state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, RuntimeError> {
        self.enter(Op::Inspect, id).await?;
        let s = self.shared.state.lock();
        Ok(s.containers.get(id).map(|c| {
            (
                c.running,
                c.exit.unwrap_or(ExitStatus {
                    code: 0,
                    oom_killed: false,
                }),
            )
        }))
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.enter(Op::Stop, id).await?;
        let mut s = self.shared.state.lock();
        if let Some(c) = s.containers.get_mut(id)
            && c.running
        {
            c.running = false;
            c.held = false;
            c.exit = Some(ExitStatus {
                code: STOPPED,
                oom_killed: false,
            });
        }
        drop(s);
        self.changed();
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Remove, id).await?;
        self.shared.state.lock().containers.remove(id);
        self.changed();
        Ok(())
    }

    async fn list_managed(&self, worker_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.enter(Op::ListManaged, worker_id).await?;
        let s = self.shared.state.lock();
        let label = |c: &Container, k: &str| c.labels.get(k).cloned().unwrap_or_default();
        Ok(s.containers
            .iter()
            .filter(|(_, c)| label(c, LABEL_WORKER) == worker_id)
            .map(|(id, c)| ManagedContainer {
                id: id.clone(),
                task_id: label(c, LABEL_TASK),
                execution_id: label(c, LABEL_EXECUTION),
                instance: c.labels.get(LABEL_INSTANCE).cloned(),
                running: c.running,
            })
            .collect())
    }

    fn pull_counts(&self) -> (u64, u64) {
        self.shared.state.lock().pulls
    }
}
