//! A scripted, recording [`Backend`] in memory, with no engine at all: the worker, the
//! supervisor and task runs drive it exactly as they drive Docker (the no-Docker test tier, and
//! tests of anything above the seam).
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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BackendError, Caps, ExecRun, ExecutionRef, ExitStatus, ImageInfo, InPlace, Live,
    LogEntry, LogStream, OutputStream, Owned, UsageSample,
};
use crate::config::PullPolicy;
use crate::protocol::Stream;
use crate::spec::image::ImageRef;
use crate::spec::owner::{Owner, Ownership};
use crate::spec::{LABEL_EXECUTION, LABEL_INSTANCE, LABEL_TASK, LABEL_WORKER, SandboxSpec};

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
    /// [`Live::attach`].
    Attach,
    /// [`Live::freeze`].
    Freeze,
    /// [`Live::thaw`].
    Thaw,
    /// [`Live::tail`].
    Tail,
    /// [`InPlace::exec`].
    Exec,
    /// [`InPlace::exec_exit_code`].
    ExecExitCode,
    /// [`InPlace::release`].
    Release,
}

/// A recorded call: the operation and what it was about (a sandbox id, an image, an
/// execution id, a command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Print(Stream, Vec<u8>),
    Sleep(Duration),
    Exit(ExitStatus),
    /// Runs until stopped, removed or told to exit.
    Hang,
}

/// What a sandbox (or an in-place step) does once its command runs, step by step. Steps after
/// an exit are never reached; a script that runs out of steps exits 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    steps: Vec<Step>,
}

fn status(code: i64) -> ExitStatus {
    ExitStatus {
        code,
        oom_killed: false,
    }
}

impl Script {
    /// Does nothing and exits 0.
    pub fn new() -> Self {
        Script::default()
    }

    /// Writes `bytes` on `stream` (one log entry).
    pub fn prints(mut self, stream: Stream, bytes: impl AsRef<[u8]>) -> Self {
        self.steps
            .push(Step::Print(stream, bytes.as_ref().to_vec()));
        self
    }

    /// Pauses for `d` (in real time).
    pub fn sleeps(mut self, d: Duration) -> Self {
        self.steps.push(Step::Sleep(d));
        self
    }

    /// Exits with `code`.
    pub fn exits(mut self, code: i64) -> Self {
        self.steps.push(Step::Exit(status(code)));
        self
    }

    /// Is killed by the OOM killer (137).
    pub fn oom(mut self) -> Self {
        self.steps.push(Step::Exit(ExitStatus {
            code: 137,
            oom_killed: true,
        }));
        self
    }

    /// Runs until stopped (or [`FakeBackend::exit`]).
    pub fn runs(mut self) -> Self {
        self.steps.push(Step::Hang);
        self
    }

    /// A command read as a tiny shell would run it. Understood:
    ///
    /// * `sh -c SCRIPT` (or `bash -c`, any path): SCRIPT is commands separated by `;` or
    ///   newlines; words split at blanks, `'…'` and `"…"` quote (no escapes, no `$`
    ///   expansion, no pipes or redirections but a final `>&2` on `echo`).
    /// * Any other argv is one command, its words taken as they are.
    /// * Commands: `echo [-n] WORDS… [>&2]` (one line, on stderr with `>&2`); `sleep N`
    ///   (seconds, fractions allowed; `infinity` runs until stopped); `exit [N]` (N mod 256;
    ///   without N the last command's status); `true` and `:` (0); `false` (1).
    /// * Anything else prints `sh: NAME: not found` on stderr and has status 127, as a shell
    ///   would; the script then goes on. The sandbox exits with the last command's status.
    pub fn interpret(command: &[String]) -> Script {
        let shell = |w: &str| matches!(w.rsplit('/').next(), Some("sh" | "bash"));
        match command {
            [sh, c, text, ..] if shell(sh) && c == "-c" => {
                let mut script = Script::new();
                let mut last = 0;
                for words in split_commands(text) {
                    match script.command(&words, last) {
                        Flow::Next(code) => last = code,
                        Flow::Stop => return script,
                    }
                }
                script.exits(last)
            }
            [] => Script::new(),
            argv => {
                let mut script = Script::new();
                match script.command(argv, 0) {
                    Flow::Next(code) => script.exits(code),
                    Flow::Stop => script,
                }
            }
        }
    }

    /// Appends one command's steps; its status, or `Stop` after an exit.
    fn command(&mut self, words: &[String], last: i64) -> Flow {
        let Some((name, args)) = words.split_first() else {
            return Flow::Next(last);
        };
        match name.as_str() {
            "echo" => {
                let (stream, args) = match args.split_last() {
                    Some((r, rest)) if r == ">&2" || r == "1>&2" => (Stream::Stderr, rest),
                    _ => (Stream::Stdout, args),
                };
                let (newline, args) = match args.split_first() {
                    Some((n, rest)) if n == "-n" => (false, rest),
                    _ => (true, args),
                };
                let mut line = args.join(" ");
                if newline {
                    line.push('\n');
                }
                self.steps.push(Step::Print(stream, line.into_bytes()));
                Flow::Next(0)
            }
            "sleep" => match args.first().map(String::as_str) {
                Some("infinity") => {
                    self.steps.push(Step::Hang);
                    Flow::Stop
                }
                Some(n) => match n.parse::<f64>() {
                    Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                        self.steps.push(Step::Sleep(Duration::from_secs_f64(secs)));
                        Flow::Next(0)
                    }
                    _ => self.fails(format!("sleep: invalid number '{n}'\n"), 1),
                },
                None => self.fails("sleep: missing operand\n".to_string(), 1),
            },
            "exit" => {
                let code = match args.first() {
                    None => last,
                    Some(n) => match n.parse::<i64>() {
                        Ok(n) => n.rem_euclid(256),
                        // What sh does with `exit abc`.
                        Err(_) => 2,
                    },
                };
                self.steps.push(Step::Exit(status(code)));
                Flow::Stop
            }
            "true" | ":" => Flow::Next(0),
            "false" => Flow::Next(1),
            other => self.fails(format!("sh: {other}: not found\n"), NOT_FOUND),
        }
    }

    fn fails(&mut self, message: String, code: i64) -> Flow {
        self.steps
            .push(Step::Print(Stream::Stderr, message.into_bytes()));
        Flow::Next(code)
    }
}

/// After one command of a script: go on (with its status) or stop (it exited).
enum Flow {
    Next(i64),
    Stop,
}

/// `text` as commands (`;` or newline between them), each as words (blanks between them,
/// quotes kept together and removed).
fn split_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, ';' | '\n') => {
                words.extend(word.take());
                commands.push(std::mem::take(&mut words));
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word.take());
    commands.push(words);
    commands.retain(|w| !w.is_empty());
    commands
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Created,
    Running,
    Ended(ExitStatus),
}

struct Sandbox {
    labels: BTreeMap<String, String>,
    image: String,
    command: Vec<String>,
    /// Created held for provisioning in place: starts running nothing until released.
    held: bool,
    phase: Phase,
    started: Option<tokio::time::Instant>,
    log: Vec<LogEntry>,
    frozen: bool,
    /// Ends whatever runs in it (its script, its in-place steps).
    end: CancellationToken,
}

impl Sandbox {
    fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    fn label(&self, key: &str) -> String {
        self.labels.get(key).cloned().unwrap_or_default()
    }
}

/// A sandbox as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    pub id: String,
    pub worker_id: String,
    pub task_id: String,
    pub execution_id: String,
    pub instance: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub running: bool,
    /// How it ended, once it has.
    pub exit: Option<ExitStatus>,
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

fn now_ns() -> i64 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or(i64::MAX / 2)
}

/// An image id that stays the same for one name.
fn image_id(name: &str) -> String {
    // FNV-1a: stable across runs, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("sha256:{hash:064x}")
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

    /// Appends one log entry to a running sandbox; false when it no longer runs.
    fn append(&self, id: &str, stream: Stream, bytes: &[u8]) -> bool {
        let mut s = self.shared.state.lock();
        let ts = now_ns().max(s.clock + 1);
        let Some(b) = s.sandboxes.get_mut(id).filter(|b| b.running()) else {
            return false;
        };
        b.log.push(LogEntry {
            stream,
            ts,
            bytes: Bytes::copy_from_slice(bytes),
        });
        s.clock = ts;
        drop(s);
        self.changed();
        true
    }

    /// Ends a sandbox that has not ended yet.
    fn end(&self, id: &str, st: ExitStatus) {
        let mut s = self.shared.state.lock();
        if let Some(b) = s.sandboxes.get_mut(id)
            && !matches!(b.phase, Phase::Ended(_))
        {
            b.phase = Phase::Ended(st);
            b.end.cancel();
        }
        drop(s);
        self.changed();
    }

    /// The script for `command`: the one registered for its first word, else interpreted.
    fn script_for(&self, command: &[String]) -> Script {
        let registered = command
            .first()
            .and_then(|w| self.shared.state.lock().scripts.get(w).cloned());
        registered.unwrap_or_else(|| Script::interpret(command))
    }

    /// Waits while the sandbox is frozen (false: it ended meanwhile).
    async fn thawed(&self, id: &str, end: &CancellationToken) -> bool {
        let thawed = self.until(|s| match s.sandboxes.get(id) {
            Some(b) if b.frozen => None,
            Some(_) => Some(true),
            None => Some(false),
        });
        tokio::select! {
            t = thawed => t && !end.is_cancelled(),
            _ = end.cancelled() => false,
        }
    }

    /// Runs the sandbox's command (its script) in the background; the sandbox ends with it.
    fn launch(&self, id: &str) {
        let (command, end) = {
            let s = self.shared.state.lock();
            match s.sandboxes.get(id) {
                Some(b) => (b.command.clone(), b.end.clone()),
                None => return,
            }
        };
        let script = self.script_for(&command);
        let fake = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            for step in script.steps {
                if !fake.thawed(&id, &end).await {
                    return;
                }
                match step {
                    Step::Print(stream, bytes) => {
                        if !fake.append(&id, stream, &bytes) {
                            return;
                        }
                    }
                    Step::Sleep(d) => tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = end.cancelled() => return,
                    },
                    Step::Exit(st) => {
                        fake.end(&id, st);
                        return;
                    }
                    Step::Hang => {
                        end.cancelled().await;
                        return;
                    }
                }
            }
            fake.end(&id, status(0));
        });
    }
}

/// A stream's next item; `None` at its end.
type Next<T> = Option<Result<T, BackendError>>;

/// What one output read has delivered so far.
struct Reader {
    fake: FakeBackend,
    id: String,
    /// Position in the sandbox's log.
    pos: usize,
    /// The sandbox was there when the read began.
    found: bool,
    ended: bool,
}

impl Reader {
    /// The log's next entry from `since_ns`, or its end (a plain read at the log's end, a
    /// follow once the sandbox has ended or gone); `None` while a follow waits for more.
    fn entry(&mut self, s: &State, follow: bool, since_ns: i64) -> Option<Next<LogEntry>> {
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
    fn piece(&mut self, s: &State) -> Option<Next<(Stream, Bytes)>> {
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
    fn deliver<T>(mut self, next: Next<T>) -> Option<(Result<T, BackendError>, Reader)> {
        self.ended = !matches!(next, Some(Ok(_)));
        next.map(|item| (item, self))
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn engine_name(&self) -> &'static str {
        "fake engine"
    }

    fn caps(&self) -> Caps {
        self.shared.state.lock().caps
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.enter(Op::Ping, "")
    }

    async fn runtimes(&self) -> Result<Vec<String>, BackendError> {
        self.enter(Op::Runtimes, "")?;
        Ok(self.shared.state.lock().runtimes.clone())
    }

    async fn prepare_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        _progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, BackendError> {
        let name = image.to_string();
        self.enter(Op::PrepareImage, &name)?;
        if self.shared.state.lock().missing_images.contains(&name) {
            return Err(match policy {
                PullPolicy::Never => BackendError::ImageMissing { image: name },
                _ => BackendError::Pull {
                    image: name,
                    reason: "the fake backend has no registry".into(),
                },
            });
        }
        Ok(ImageInfo {
            id: image_id(&name),
            repo_digest: None,
            entrypoint: Vec::new(),
            user: String::new(),
        })
    }

    async fn prepare_sidecar(
        &self,
        image: &ImageRef,
        _policy: PullPolicy,
    ) -> Result<String, BackendError> {
        let name = image.to_string();
        self.enter(Op::PrepareSidecar, &name)?;
        if self.shared.state.lock().missing_images.contains(&name) {
            return Err(BackendError::Sidecar {
                reason: "the image is missing".into(),
                image: name,
            });
        }
        Ok(format!("fake-sidecar-{}", &image_id(&name)[7..19]))
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, BackendError> {
        self.enter(Op::Create, &spec.image)?;
        let mut s = self.shared.state.lock();
        s.next_id += 1;
        let id = format!("fa4e{:060x}", s.next_id);
        s.sandboxes.insert(
            id.clone(),
            Sandbox {
                labels: spec.labels.clone(),
                image: spec.image.clone(),
                command: spec.command.clone(),
                held: spec.hold.is_some(),
                phase: Phase::Created,
                started: None,
                log: Vec::new(),
                frozen: false,
                end: CancellationToken::new(),
            },
        );
        drop(s);
        self.changed();
        Ok(id)
    }

    async fn find(
        &self,
        owner: &Owner,
        execution_id: &str,
    ) -> Result<Option<String>, BackendError> {
        self.enter(Op::Find, execution_id)?;
        let s = self.shared.state.lock();
        Ok(s.sandboxes
            .iter()
            .find(|(_, b)| {
                b.label(LABEL_WORKER) == owner.worker_id
                    && b.label(LABEL_EXECUTION) == execution_id
                    && b.labels.get(LABEL_INSTANCE) == Some(&owner.instance)
            })
            .map(|(id, _)| id.clone()))
    }

    async fn start(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Start, id)?;
        let mut s = self.shared.state.lock();
        let b = s
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| no_such("start", id))?;
        if b.phase != Phase::Created {
            // An engine starts a sandbox once: restarting an ended one is not this seam's.
            return Ok(());
        }
        b.phase = Phase::Running;
        b.started = Some(tokio::time::Instant::now());
        let held = b.held;
        drop(s);
        if !held {
            self.launch(id);
        }
        self.changed();
        Ok(())
    }

    async fn address(
        &self,
        id: &str,
        _network: &str,
    ) -> Result<Option<std::net::IpAddr>, BackendError> {
        // No networks: nothing has an address on one.
        self.enter(Op::Address, id)?;
        Ok(None)
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, BackendError> {
        self.enter(Op::Wait, id)?;
        self.until(|s| {
            if !s.reachable {
                return Some(Err(unreachable()));
            }
            match s.sandboxes.get(id).map(|b| b.phase) {
                None => Some(Err(no_such("wait", id))),
                Some(Phase::Ended(st)) => Some(Ok(st)),
                Some(_) => None,
            }
        })
        .await
    }

    async fn state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, BackendError> {
        self.enter(Op::State, id)?;
        let s = self.shared.state.lock();
        // One that never started reads as not running with status 0, as Docker's inspect does.
        Ok(s.sandboxes.get(id).map(|b| match b.phase {
            Phase::Ended(st) => (false, st),
            Phase::Running => (true, status(0)),
            Phase::Created => (false, status(0)),
        }))
    }

    fn output(&self, id: &str, follow: bool, since: i64) -> LogStream {
        let reader = Reader {
            fake: self.clone(),
            id: id.to_string(),
            pos: 0,
            found: false,
            ended: false,
        };
        let since_ns = since.max(0).saturating_mul(1_000_000_000);
        // A failed call is the stream's first (and last) item.
        let mut entered = Some(self.enter(Op::Output, id));
        Box::pin(futures_util::stream::unfold(reader, move |mut r| {
            let entered = entered.take();
            async move {
                if r.ended {
                    return None;
                }
                if let Some(Err(e)) = entered {
                    return r.deliver(Some(Err(e)));
                }
                let fake = r.fake.clone();
                let next = fake.until(|s| r.entry(s, follow, since_ns)).await;
                r.deliver(next)
            }
        }))
    }

    async fn usage(&self, id: &str) -> Result<Option<UsageSample>, BackendError> {
        self.enter(Op::Usage, id)?;
        let s = self.shared.state.lock();
        Ok(s.sandboxes
            .get(id)
            .filter(|b| b.running())
            .map(|b| UsageSample {
                // A tenth of a CPU, and a steady 8 MiB: plausible, and enough to be summed.
                cpu_ns: b.started.map_or(0, |t| {
                    u64::try_from(t.elapsed().as_nanos() / 10).unwrap_or(0)
                }),
                memory: 8 << 20,
                ..UsageSample::default()
            }))
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), BackendError> {
        self.enter(Op::Stop, id)?;
        // No grace is waited: the script obeys at once. One that never started ends too, so
        // a wait for it returns.
        self.end(id, status(STOPPED));
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Remove, id)?;
        let gone = self.shared.state.lock().sandboxes.remove(id);
        if let Some(b) = gone {
            b.end.cancel();
        }
        self.changed();
        Ok(())
    }

    async fn gone(
        &self,
        owner: &Owner,
        execution: ExecutionRef<'_>,
        known: Option<&str>,
    ) -> Result<(), BackendError> {
        // One call recorded (not a remove per sandbox): tests count removals by `Remove`.
        self.enter(Op::Gone, execution.execution_id)?;
        let mut s = self.shared.state.lock();
        let doomed: Vec<String> = s
            .sandboxes
            .iter()
            .filter(|(id, b)| {
                let others = matches!(
                    owner.ownership(b.labels.get(LABEL_INSTANCE).map(String::as_str)),
                    Ownership::Other(_)
                );
                Some(id.as_str()) == known
                    || (b.label(LABEL_WORKER) == owner.worker_id
                        && b.label(LABEL_EXECUTION) == execution.execution_id
                        && b.label(LABEL_TASK) == execution.task_id
                        && !others)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in doomed {
            if let Some(b) = s.sandboxes.remove(&id) {
                b.end.cancel();
            }
        }
        drop(s);
        self.changed();
        Ok(())
    }

    async fn list(&self, worker_id: &str) -> Result<Vec<Owned>, BackendError> {
        self.enter(Op::List, worker_id)?;
        let s = self.shared.state.lock();
        Ok(s.sandboxes
            .iter()
            .filter(|(_, b)| b.label(LABEL_WORKER) == worker_id)
            .map(|(id, b)| Owned {
                id: id.clone(),
                task_id: b.label(LABEL_TASK),
                execution_id: b.label(LABEL_EXECUTION),
                instance: b.labels.get(LABEL_INSTANCE).cloned(),
                running: b.running(),
            })
            .collect())
    }

    fn live(&self) -> Option<&dyn Live> {
        self.caps().live.then_some(self as &dyn Live)
    }

    fn in_place(&self) -> Option<&dyn InPlace> {
        self.caps().in_place.then_some(self as &dyn InPlace)
    }
}

#[async_trait]
impl Live for FakeBackend {
    async fn attach(&self, id: &str) -> Result<OutputStream, BackendError> {
        self.enter(Op::Attach, id)?;
        let pos = self
            .shared
            .state
            .lock()
            .sandboxes
            .get(id)
            .map(|b| b.log.len())
            .ok_or_else(|| no_such("attach", id))?;
        let reader = Reader {
            fake: self.clone(),
            id: id.to_string(),
            pos,
            found: true,
            ended: false,
        };
        // From now until the command has ended: output closes then, not before the start.
        Ok(Box::pin(futures_util::stream::unfold(
            reader,
            |mut r| async move {
                if r.ended {
                    return None;
                }
                let fake = r.fake.clone();
                let next = fake.until(|s| r.piece(s)).await;
                r.deliver(next)
            },
        )))
    }

    async fn freeze(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Freeze, id)?;
        let mut s = self.shared.state.lock();
        let b = s
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| no_such("freeze", id))?;
        b.frozen = true;
        Ok(())
    }

    async fn thaw(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Thaw, id)?;
        let mut s = self.shared.state.lock();
        let b = s.sandboxes.get_mut(id).ok_or_else(|| no_such("thaw", id))?;
        b.frozen = false;
        drop(s);
        self.changed();
        Ok(())
    }

    fn tail(&self, id: &str, entries: u32) -> LogStream {
        let tail = match self.enter(Op::Tail, id) {
            Err(e) => vec![Err(e)],
            Ok(()) => {
                let log = self.output_of(id);
                let from = log.len().saturating_sub(entries as usize);
                log[from..].iter().cloned().map(Ok).collect()
            }
        };
        Box::pin(futures_util::stream::iter(tail))
    }
}

#[async_trait]
impl InPlace for FakeBackend {
    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        _working_dir: Option<&str>,
        _env: Vec<String>,
    ) -> Result<ExecRun, BackendError> {
        self.enter(Op::Exec, &cmd.join(" "))?;
        let (end, exec_id) = {
            let mut s = self.shared.state.lock();
            let end = match s.sandboxes.get(id) {
                Some(b) if b.running() => b.end.clone(),
                _ => {
                    return Err(BackendError::Api {
                        op: "exec",
                        reason: format!("sandbox {id} is not running"),
                    });
                }
            };
            let exec_id = format!("exec-{}", s.execs.len() + 1);
            s.execs.insert(exec_id.clone(), None);
            (end, exec_id)
        };
        let script = self.script_for(&cmd);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let fake = self.clone();
        let exec = exec_id.clone();
        tokio::spawn(async move {
            let mut code = 0;
            for step in script.steps {
                match step {
                    Step::Print(stream, bytes) => {
                        let _ = tx.send(Ok((stream, Bytes::from(bytes)))).await;
                    }
                    Step::Sleep(d) => tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = end.cancelled() => return,
                    },
                    Step::Exit(st) => {
                        code = st.code;
                        break;
                    }
                    Step::Hang => {
                        end.cancelled().await;
                        return;
                    }
                }
            }
            // The code is there before the output ends, so a reader never waits for it.
            fake.shared.state.lock().execs.insert(exec, Some(code));
            drop(tx);
        });
        let output = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(ExecRun {
            id: exec_id,
            output: Box::pin(output),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, BackendError> {
        self.enter(Op::ExecExitCode, exec_id)?;
        self.shared
            .state
            .lock()
            .execs
            .get(exec_id)
            .copied()
            .ok_or_else(|| BackendError::Api {
                op: "exec inspect",
                reason: format!("no such exec: {exec_id}"),
            })
    }

    async fn release(&self, id: &str) -> Result<(), BackendError> {
        self.enter(Op::Release, id)?;
        let release = {
            let mut s = self.shared.state.lock();
            let b = s
                .sandboxes
                .get_mut(id)
                .ok_or_else(|| no_such("release", id))?;
            let release = b.held && b.running();
            b.held = false;
            release
        };
        if release {
            self.launch(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        strs(&["sh", "-c", script])
    }

    fn spec(command: Vec<String>, execution: &str) -> SandboxSpec {
        let mut labels = Owner::new("w1", "i1").labels();
        labels.insert(LABEL_TASK.into(), format!("task-{execution}"));
        labels.insert(LABEL_EXECUTION.into(), execution.into());
        SandboxSpec {
            image: "docker.io/library/busybox:latest".into(),
            command,
            hold: None,
            env: Vec::new(),
            workdir: "/workspace".into(),
            labels,
            limits: crate::spec::policy::Limits::default(),
            sidecars: Vec::new(),
            volumes: Vec::new(),
            security: crate::spec::policy::Security::default(),
            network: crate::spec::Network::Engine("bridge".into()),
        }
    }

    async fn started(fake: &FakeBackend, command: Vec<String>, execution: &str) -> String {
        let id = fake
            .create(&spec(command, execution))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        fake.start(&id).await.unwrap_or_else(|e| panic!("{e}"));
        id
    }

    async fn read(stream: LogStream) -> Vec<Result<LogEntry, String>> {
        stream.map(|r| r.map_err(|e| e.to_string())).collect().await
    }

    fn text(entries: &[Result<LogEntry, String>]) -> Vec<(Stream, String)> {
        entries
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .map(|e| (e.stream, String::from_utf8_lossy(&e.bytes).into_owned()))
            .collect()
    }

    /// Bounds a future that should end soon (a wait that never ends fails the test, not CI).
    async fn soon<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("did not finish within 10 s"))
    }

    #[test]
    fn the_interpreter_reads_echo_sleep_exit_and_semicolons() {
        let s = Script::interpret(&sh("echo hi; sleep 0.5;exit 3; echo never"));
        assert_eq!(
            s,
            Script::new()
                .prints(Stream::Stdout, "hi\n")
                .sleeps(Duration::from_millis(500))
                .exits(3)
        );
        assert_eq!(
            Script::interpret(&sh("echo 'a  b' \"c;d\" >&2\necho -n x")),
            Script::new()
                .prints(Stream::Stderr, "a  b c;d\n")
                .prints(Stream::Stdout, "x")
                .exits(0)
        );
        assert_eq!(
            Script::interpret(&strs(&["/bin/bash", "-c", "false"])),
            Script::new().exits(1)
        );
        assert_eq!(
            Script::interpret(&sh("false; exit")),
            Script::new().exits(1),
            "a bare exit keeps the last status"
        );
        assert_eq!(Script::interpret(&sh("exit 300")), Script::new().exits(44));
        assert_eq!(
            Script::interpret(&sh("sleep infinity; echo never")),
            Script::new().runs()
        );
    }

    #[test]
    fn a_plain_argv_is_one_command_and_unknown_commands_are_not_found() {
        assert_eq!(
            Script::interpret(&strs(&["echo", "hello", "world"])),
            Script::new()
                .prints(Stream::Stdout, "hello world\n")
                .exits(0)
        );
        assert_eq!(
            Script::interpret(&strs(&["sleep", "300"])),
            Script::new().sleeps(Duration::from_secs(300)).exits(0)
        );
        assert_eq!(Script::interpret(&strs(&["true"])), Script::new().exits(0));
        assert_eq!(
            Script::interpret(&strs(&["git", "clone", "x"])),
            Script::new()
                .prints(Stream::Stderr, "sh: git: not found\n")
                .exits(NOT_FOUND)
        );
        assert_eq!(
            Script::interpret(&sh("nope; echo after")),
            Script::new()
                .prints(Stream::Stderr, "sh: nope: not found\n")
                .prints(Stream::Stdout, "after\n")
                .exits(0),
            "the script goes on after a command it cannot run"
        );
        assert_eq!(
            Script::interpret(&strs(&["sleep", "soon"])),
            Script::new()
                .prints(Stream::Stderr, "sleep: invalid number 'soon'\n")
                .exits(1)
        );
    }

    #[tokio::test]
    async fn a_sandbox_prints_stamped_lines_then_exits_with_its_code() {
        let fake = FakeBackend::new();
        let id = started(&fake, sh("echo out; echo err >&2; exit 3"), "e1").await;
        let st = soon(fake.wait(&id)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st, status(3));
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((false, status(3))),
            "state agrees with wait"
        );
        let log = fake.output_of(&id);
        assert_eq!(
            text(&log.iter().cloned().map(Ok).collect::<Vec<_>>()),
            [
                (Stream::Stdout, "out\n".to_string()),
                (Stream::Stderr, "err\n".to_string())
            ]
        );
        let now = now_ns();
        assert!(
            log.windows(2).all(|w| w[0].ts < w[1].ts),
            "stamps only grow"
        );
        assert!(
            log.iter().all(|e| now - e.ts < 60_000_000_000),
            "stamped with the wall clock in ns"
        );
        assert_eq!(soon(fake.usage(&id)).await.ok(), Some(None), "ended");
    }

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

    /// Waits until the sandbox wrote `n` entries.
    async fn support_until(fake: &FakeBackend, id: &str, n: usize) {
        soon(async {
            while fake.output_of(id).len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn stop_ends_a_running_sandbox_with_143_at_once_and_remove_makes_it_gone() {
        let fake = FakeBackend::new();
        let id = started(&fake, strs(&["sleep", "300"]), "e1").await;
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((true, status(0)))
        );
        assert!(soon(fake.usage(&id)).await.ok().flatten().is_some());
        let waiter = tokio::spawn({
            let fake = fake.clone();
            let id = id.clone();
            async move { fake.wait(&id).await.map_err(|e| e.to_string()) }
        });
        fake.stop(&id, Duration::from_secs(3600))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            soon(waiter).await.ok(),
            Some(Ok(status(STOPPED))),
            "no grace period is waited"
        );
        let owned = soon(fake.list("w1")).await.unwrap_or_default();
        assert_eq!(owned.len(), 1);
        assert!(!owned[0].running);
        fake.remove(&id).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(soon(fake.state(&id)).await.ok(), Some(None));
        assert!(soon(fake.wait(&id)).await.is_err(), "no such sandbox");
        assert!(soon(fake.list("w1")).await.unwrap_or_default().is_empty());
        let gone = soon(read(fake.output(&id, true, 0))).await;
        assert!(matches!(&gone[..], [Err(e)] if e.contains("no such sandbox")));
        // Stopping or removing what is not there is fine.
        assert!(fake.stop(&id, Duration::ZERO).await.is_ok());
        assert!(fake.remove(&id).await.is_ok());
        assert_eq!(fake.count(Op::Remove), 2);
        assert_eq!(fake.targets(Op::Stop), [id.clone(), id]);
    }

    #[tokio::test]
    async fn find_list_and_gone_go_by_owner_and_execution() {
        let fake = FakeBackend::new();
        let a = started(&fake, strs(&["sleep", "300"]), "e1").await;
        let mine = Owner::new("w1", "i1");
        assert_eq!(
            soon(fake.find(&mine, "e1")).await.ok().flatten(),
            Some(a.clone())
        );
        assert_eq!(
            soon(fake.find(&Owner::new("w1", "other"), "e1"))
                .await
                .ok()
                .flatten(),
            None,
            "another instance's sandbox is not found as ours"
        );
        // A twin for e1 made by another instance: never removed by this one.
        let mut other = spec(strs(&["true"]), "e1");
        other
            .labels
            .insert(LABEL_INSTANCE.into(), "other-instance".into());
        let theirs = soon(fake.create(&other)).await.unwrap_or_default();
        let execution = ExecutionRef {
            task_id: "task-e1",
            execution_id: "e1",
        };
        soon(fake.gone(&mine, execution, None))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<String> = fake.sandboxes().into_iter().map(|b| b.id).collect();
        assert_eq!(left, [theirs]);
        assert_eq!(fake.count(Op::Gone), 1);
        assert_eq!(fake.count(Op::Remove), 0, "gone is recorded as itself");
    }

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

    #[tokio::test]
    async fn a_script_registered_for_a_word_wins_and_exit_ends_a_running_sandbox() {
        let fake = FakeBackend::new();
        fake.script(
            "agent",
            Script::new().prints(Stream::Stdout, "working\n").runs(),
        );
        let id = started(&fake, strs(&["agent", "run"]), "e1").await;
        support_until(&fake, &id, 1).await;
        assert_eq!(
            soon(fake.state(&id)).await.ok().flatten(),
            Some((true, status(0)))
        );
        fake.exit(&id, 5);
        assert_eq!(soon(fake.wait(&id)).await.ok(), Some(status(5)));
        let oom = Script::new().oom();
        fake.script("hog", oom);
        let id = started(&fake, strs(&["hog"]), "e2").await;
        assert!(
            soon(fake.wait(&id))
                .await
                .is_ok_and(|s| s.oom_killed && s.code == 137)
        );
    }

    #[tokio::test]
    async fn the_default_caps_offer_no_live_output_in_place_steps_or_sealing() {
        let fake = FakeBackend::new();
        assert_eq!(fake.caps(), DEFAULT_CAPS);
        assert!(fake.live().is_none() && fake.in_place().is_none() && fake.sealing().is_none());
        assert_eq!(fake.kind(), "fake");
        fake.missing_image("busybox");
        let busybox = ImageRef::parse("busybox").unwrap_or_else(|e| panic!("{e}"));
        let e = fake.prepare_image(&busybox, PullPolicy::Never, None).await;
        assert!(matches!(e, Err(BackendError::ImageMissing { .. })));
        let other = ImageRef::parse("alpine:3").unwrap_or_else(|e| panic!("{e}"));
        let info = fake.prepare_image(&other, PullPolicy::Always, None).await;
        assert!(info.is_ok_and(|i| i.id.starts_with("sha256:")));
    }

    #[tokio::test]
    async fn with_live_and_in_place_a_held_sandbox_runs_steps_then_its_command() {
        let fake = FakeBackend::with_caps(Caps {
            live: true,
            in_place: true,
            ..DEFAULT_CAPS
        });
        let mut held = spec(sh("echo task"), "e1");
        held.hold = Some(Vec::new());
        let id = soon(fake.create(&held)).await.unwrap_or_default();
        let live = fake.live().unwrap_or_else(|| panic!("live"));
        let attached = soon(live.attach(&id))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        fake.start(&id).await.unwrap_or_else(|e| panic!("{e}"));
        let in_place = fake.in_place().unwrap_or_else(|| panic!("in place"));
        let run = soon(in_place.exec(&id, sh("echo step; exit 4"), None, Vec::new()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let out: Vec<_> = soon(run.output.collect::<Vec<_>>()).await;
        assert_eq!(out.len(), 1);
        assert_eq!(
            soon(in_place.exec_exit_code(&run.id)).await.ok().flatten(),
            Some(4)
        );
        assert!(fake.output_of(&id).is_empty(), "held: the command waits");
        soon(in_place.release(&id))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(soon(fake.wait(&id)).await.ok(), Some(status(0)));
        let pieces: Vec<_> = soon(attached.collect::<Vec<_>>()).await;
        assert!(
            matches!(&pieces[..], [Ok((Stream::Stdout, b))] if b.as_ref() == b"task\n"),
            "{pieces:?}"
        );
        let tail = soon(read(live.tail(&id, 1))).await;
        assert_eq!(text(&tail), [(Stream::Stdout, "task\n".to_string())]);
    }

    #[tokio::test]
    async fn a_frozen_sandbox_writes_nothing_until_thawed() {
        let fake = FakeBackend::with_caps(Caps {
            live: true,
            ..DEFAULT_CAPS
        });
        fake.script(
            "ticker",
            Script::new()
                .sleeps(Duration::from_millis(100))
                .prints(Stream::Stdout, "tick\n")
                .runs(),
        );
        let id = started(&fake, strs(&["ticker"]), "e1").await;
        let live = fake.live().unwrap_or_else(|| panic!("live"));
        live.freeze(&id).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fake.output_of(&id).is_empty(), "frozen");
        live.thaw(&id).await.unwrap_or_else(|e| panic!("{e}"));
        support_until(&fake, &id, 1).await;
    }
}
