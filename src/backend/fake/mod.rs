//! A scripted, recording [`Backend`](super::Backend) in memory, with no engine at all: the
//! worker, the supervisor and task runs drive it exactly as they drive Docker (the no-Docker
//! test tier, and tests of anything above the seam).
//!
//! A sandbox runs a [`Script`] once started: output on stdout and stderr, stamped like an
//! engine's log (nanoseconds since the epoch, strictly increasing), pauses, and an end (an exit
//! code, or running until stopped). The script is chosen by the sandbox's command: the one
//! registered for its first word ([`FakeBackend::script`]), else the command read by
//! [`Script::interpret`], a tiny shell (see there for what it understands). Stop ends a
//! sandbox at once with 143 (no grace period is waited); remove makes it gone; a test can end
//! one itself ([`FakeBackend::exit`]).
//!
//! It declares the [`Caps`] it is given ([`FakeBackend::with_caps`]; by default no live
//! output, no provisioning in place, no sealed networks — the paths of a backend without them
//! — split streams, and an outage that does not stop sandboxes), answers or not
//! ([`FakeBackend::set_reachable`]), fails named calls ([`FakeBackend::fail_next`]) and records
//! every call with what it was about ([`FakeBackend::calls`]). Every image is present
//! (nothing is ever pulled) unless a test says one is missing ([`FakeBackend::missing_image`]).

mod backend;
mod in_place;
mod live;
mod output;
mod sandbox;
mod script;

pub use self::sandbox::SandboxInfo;
pub use self::script::{Script, ScriptStep};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use self::sandbox::{Phase, Sandbox};
use super::{BackendError, Caps, ExitStatus, LogEntry};
use crate::protocol::Stream;
use crate::spec::image::ImageRef;
use crate::spec::{LABEL_EXECUTION, LABEL_INSTANCE, LABEL_TASK, LABEL_WORKER};

/// Exit status of a stopped sandbox (128 + SIGTERM).
pub const STOPPED: i64 = 143;
/// Exit status of a command the fake cannot run (a shell's "not found").
pub const NOT_FOUND: i64 = 127;

/// One call of the seam, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Ping,
    Runtimes,
    PrepareImage,
    PrepareSidecar,
    Create,
    Find,
    Start,
    Address,
    Wait,
    State,
    Output,
    Usage,
    Stop,
    Remove,
    Gone,
    List,
    /// [`Live::attach`](super::Live::attach).
    Attach,
    /// [`Live::freeze`](super::Live::freeze).
    Freeze,
    /// [`Live::thaw`](super::Live::thaw).
    Thaw,
    /// [`Live::tail`](super::Live::tail).
    Tail,
    /// [`InPlace::exec`](super::InPlace::exec).
    Exec,
    /// [`InPlace::exec_exit_code`](super::InPlace::exec_exit_code).
    ExecExitCode,
    /// [`InPlace::release`](super::InPlace::release).
    Release,
}

/// A recorded call: the operation and what it was about (a sandbox id, an image, an
/// execution id, a command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub target: String,
}

/// An exit with `code` (not by the OOM killer).
fn status(code: i64) -> ExitStatus {
    ExitStatus {
        code,
        oom_killed: false,
    }
}

struct State {
    caps: Caps,
    calls: Vec<Call>,
    failures: HashMap<Op, VecDeque<BackendError>>,
    reachable: bool,
    runtimes: Vec<String>,
    missing_images: HashSet<String>,
    scripts: HashMap<String, Script>,
    sandboxes: BTreeMap<String, Sandbox>,
    next_id: u64,
    /// In-place steps: exit code once ended.
    execs: HashMap<String, Option<i64>>,
    /// The last log stamp given (ns): stamps only grow, like an engine's.
    clock: i64,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

/// The fake backend; clones share it (hand one to the worker, keep one to script it).
#[derive(Clone)]
pub struct FakeBackend {
    shared: Arc<Shared>,
}

impl Default for FakeBackend {
    fn default() -> Self {
        FakeBackend::new()
    }
}

/// What the fake declares unless told otherwise: none of the optional capabilities.
pub const DEFAULT_CAPS: Caps = Caps {
    live: false,
    in_place: false,
    split_streams: true,
    outage_stops_tasks: false,
};

fn unreachable() -> BackendError {
    BackendError::Unreachable {
        engine: "fake engine",
        at: "fake://backend".into(),
        reason: "the fake backend is down".into(),
    }
}

fn no_such(op: &'static str, id: &str) -> BackendError {
    BackendError::Api {
        op,
        reason: format!("no such sandbox: {id}"),
    }
}

impl FakeBackend {
    /// A reachable backend with [`DEFAULT_CAPS`], every image present and no sandboxes.
    pub fn new() -> Self {
        FakeBackend::with_caps(DEFAULT_CAPS)
    }

    /// A backend declaring `caps` (live output and provisioning in place are then offered).
    pub fn with_caps(caps: Caps) -> Self {
        FakeBackend {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    caps,
                    calls: Vec::new(),
                    failures: HashMap::new(),
                    reachable: true,
                    runtimes: vec!["runc".to_string()],
                    missing_images: HashSet::new(),
                    scripts: HashMap::new(),
                    sandboxes: BTreeMap::new(),
                    next_id: 0,
                    execs: HashMap::new(),
                    clock: 0,
                }),
                changed: Notify::new(),
            }),
        }
    }

    fn changed(&self) {
        self.shared.changed.notify_waiters();
    }

    /// Sandboxes (and in-place steps) whose command's first word is `word` run `script`
    /// instead of the interpreted command.
    pub fn script(&self, word: &str, script: Script) {
        self.shared
            .state
            .lock()
            .scripts
            .insert(word.to_string(), script);
    }

    /// `image` is not present (and cannot be pulled).
    pub fn missing_image(&self, image: &str) {
        let name = ImageRef::parse(image).map_or_else(|_| image.to_string(), |r| r.to_string());
        self.shared.state.lock().missing_images.insert(name);
    }

    /// The isolation runtimes the backend offers (default: `runc`).
    pub fn set_runtimes(&self, runtimes: &[&str]) {
        self.shared.state.lock().runtimes = runtimes.iter().map(|r| r.to_string()).collect();
    }

    /// Takes the backend down (every call fails as unreachable, streams break) or back up.
    /// Sandboxes keep running meanwhile, unless the caps say an outage stops them (they then
    /// end as stopped).
    pub fn set_reachable(&self, up: bool) {
        let mut s = self.shared.state.lock();
        s.reachable = up;
        if !up && s.caps.outage_stops_tasks {
            for b in s.sandboxes.values_mut() {
                if b.running() {
                    b.phase = Phase::Ended(status(STOPPED));
                    b.end.cancel();
                }
            }
        }
        drop(s);
        self.changed();
    }

    /// The next call of `op` fails with `err` (queued per operation).
    pub fn fail_next(&self, op: Op, err: BackendError) {
        self.shared
            .state
            .lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(err);
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

    /// How many times `op` was called.
    pub fn count(&self, op: Op) -> usize {
        self.shared
            .state
            .lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .count()
    }

    /// Waits until `op` was called at least `n` times.
    pub async fn called(&self, op: Op, n: usize) {
        self.until(|s| (s.calls.iter().filter(|c| c.op == op).count() >= n).then_some(()))
            .await
    }

    /// Waits until `look` answers, asking again after every change of the state.
    async fn until<T>(&self, mut look: impl FnMut(&State) -> Option<T>) -> T {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before the look, so a change between the two is not missed.
            notified.as_mut().enable();
            if let Some(t) = look(&self.shared.state.lock()) {
                return t;
            }
            notified.await;
        }
    }

    /// Every sandbox that exists, in id order.
    pub fn sandboxes(&self) -> Vec<SandboxInfo> {
        let s = self.shared.state.lock();
        s.sandboxes
            .iter()
            .map(|(id, b)| SandboxInfo {
                id: id.clone(),
                worker_id: b.label(LABEL_WORKER),
                task_id: b.label(LABEL_TASK),
                execution_id: b.label(LABEL_EXECUTION),
                instance: b.labels.get(LABEL_INSTANCE).cloned(),
                image: b.image.clone(),
                command: b.command.clone(),
                running: b.running(),
                exit: match b.phase {
                    Phase::Ended(st) => Some(st),
                    _ => None,
                },
            })
            .collect()
    }

    /// The sandboxes of one task.
    pub fn sandboxes_of_task(&self, task_id: &str) -> Vec<SandboxInfo> {
        self.sandboxes()
            .into_iter()
            .filter(|b| b.task_id == task_id)
            .collect()
    }

    /// The output a sandbox wrote so far.
    pub fn output_of(&self, id: &str) -> Vec<LogEntry> {
        self.shared
            .state
            .lock()
            .sandboxes
            .get(id)
            .map(|b| b.log.clone())
            .unwrap_or_default()
    }

    /// Writes output from a running sandbox now (not recorded as a call).
    pub fn print(&self, id: &str, stream: Stream, bytes: impl AsRef<[u8]>) {
        self.append(id, stream, bytes.as_ref());
    }

    /// Ends a running (or held) sandbox with `code`, as if its command exited.
    pub fn exit(&self, id: &str, code: i64) {
        self.end(id, status(code));
    }

    /// The sandbox disappears behind berth's back (removed by someone else); not a call.
    pub fn lose(&self, id: &str) {
        let gone = self.shared.state.lock().sandboxes.remove(id);
        if let Some(b) = gone {
            b.end.cancel();
        }
        self.changed();
    }

    /// Records a call, then fails it if the backend is down or a failure is queued for it.
    fn enter(&self, op: Op, target: &str) -> Result<(), BackendError> {
        let mut s = self.shared.state.lock();
        s.calls.push(Call {
            op,
            target: target.to_string(),
        });
        let failed = if !s.reachable {
            Some(unreachable())
        } else {
            s.failures.get_mut(&op).and_then(VecDeque::pop_front)
        };
        drop(s);
        self.changed();
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{read, soon, spec, started, strs};
    use super::*;
    use crate::backend::Backend;

    #[tokio::test]
    async fn an_unreachable_backend_fails_calls_and_breaks_streams_while_sandboxes_run() {
        let fake = FakeBackend::new();
        let id = started(&fake, strs(&["sleep", "300"]), "e1").await;
        let waiter = tokio::spawn({
            let fake = fake.clone();
            let id = id.clone();
            async move { fake.wait(&id).await.map_err(|e| e.to_string()) }
        });
        fake.called(Op::Wait, 1).await;
        fake.set_reachable(false);
        assert!(soon(waiter).await.is_ok_and(|r| r.is_err()));
        assert!(fake.ping().await.is_err());
        assert!(fake.state(&id).await.is_err());
        let broken = soon(read(fake.output(&id, true, 0))).await;
        assert!(matches!(&broken[..], [Err(e)] if e.contains("fake backend is down")));
        fake.set_reachable(true);
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((true, status(0))),
            "it kept running through the outage"
        );
        assert!(fake.ping().await.is_ok());
    }

    #[tokio::test]
    async fn an_outage_stops_sandboxes_when_the_caps_say_so() {
        let fake = FakeBackend::with_caps(Caps {
            outage_stops_tasks: true,
            ..DEFAULT_CAPS
        });
        let id = started(&fake, strs(&["sleep", "300"]), "e1").await;
        fake.set_reachable(false);
        fake.set_reachable(true);
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((false, status(STOPPED)))
        );
    }

    #[tokio::test]
    async fn a_failure_is_injected_into_the_named_call_once() {
        let fake = FakeBackend::new();
        fake.fail_next(
            Op::Create,
            BackendError::Api {
                op: "create",
                reason: "injected".into(),
            },
        );
        let e = fake.create(&spec(strs(&["true"]), "e1")).await;
        assert!(e.is_err_and(|e| e.to_string().contains("injected")));
        assert!(fake.create(&spec(strs(&["true"]), "e1")).await.is_ok());
        assert_eq!(fake.count(Op::Create), 2);
        fake.fail_next(
            Op::Output,
            BackendError::Api {
                op: "logs",
                reason: "injected".into(),
            },
        );
        let failed = soon(read(fake.output("whatever", false, 0))).await;
        assert!(matches!(&failed[..], [Err(e)] if e.contains("injected")));
    }
}
