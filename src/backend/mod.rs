//! The engine seam at the execution: what a task run, the supervisor, the egress gate and the
//! health monitor need from whatever runs sandboxes — a Docker container today, a Kubernetes
//! Job next. A sandbox is named by an opaque id the backend chose (journaled before anything
//! is done to it); everything else is asked of the backend by that id.
//!
//! What only some engines can do is a capability the backend declares ([`Caps`], and the
//! [`Live`] / [`InPlace`] / [`Sealing`] views): a task run branches on those, never on the
//! backend's name. The Docker backend ([`docker::DockerBackend`]) keeps its own narrower engine
//! trait ([`crate::runtime::Runtime`]: bollard, and a recording fake for its tests).

pub mod disposal;
pub mod docker;
pub mod fake;
pub mod health;
pub mod kubernetes;

use std::time::Duration;

use async_trait::async_trait;

use crate::config::PullPolicy;
use crate::spec::SandboxSpec;
use crate::spec::image::ImageRef;
use crate::spec::owner::Owner;

pub use crate::runtime::{
    EgressNetwork, ExitStatus, ImageInfo, LogEntry, SealedNetwork, UsageSample,
};

/// A backend failure, phrased for an operator. An engine's own failures keep the engine's words
/// and fix ([`BackendError::Docker`]); the other variants say the same in engine-neutral terms
/// (other backends, the fake).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The Docker engine's own failure (names the socket, the daemon, the fix).
    #[error(transparent)]
    Docker(#[from] crate::runtime::RuntimeError),
    /// The engine cannot be reached.
    #[error("cannot reach the {engine} at {at}: {reason}")]
    Unreachable {
        /// What the operator calls it (`Backend::engine_name`).
        engine: &'static str,
        /// Where berth looked for it.
        at: String,
        reason: String,
    },
    /// The image is missing and the pull policy forbids pulling.
    #[error(
        "image {image} is not present and pull_policy is never (make it present, or change the pull policy)"
    )]
    ImageMissing { image: String },
    /// A pull failed.
    #[error("pulling image {image} failed: {reason}")]
    Pull { image: String, reason: String },
    /// A sidecar could not be prepared.
    #[error("preparing sidecar {image} failed: {reason}")]
    Sidecar { image: String, reason: String },
    /// Any other call failed.
    #[error("{op} failed: {reason}")]
    Api { op: &'static str, reason: String },
}

/// stdout/stderr pieces of a command or sandbox, in the order the engine delivered them.
pub type OutputStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<(crate::protocol::Stream, bytes::Bytes), BackendError>,
            > + Send,
    >,
>;

/// A sandbox's output log from a cursor, in the engine's order.
pub type LogStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<LogEntry, BackendError>> + Send>>;

/// A command started inside a running sandbox, with its output.
pub struct ExecRun {
    /// The step's id (for its exit code).
    pub id: String,
    pub output: OutputStream,
}

/// What the engine can do beyond the seam's common ground.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Output can be attached live before the sandbox starts, and the sandbox frozen while its
    /// log is compared with what was delivered (resume anchors): see [`Live`].
    pub live: bool,
    /// Provisioning (clones, setup commands) runs inside the held sandbox, which is then
    /// released to run the task's command: see [`InPlace`].
    pub in_place: bool,
    /// Output entries keep stdout and stderr apart.
    pub split_streams: bool,
    /// An outage of the engine stops the sandboxes it runs (a dockerd restart without
    /// live-restore does; an apiserver outage does not stop pods).
    pub outage_stops_tasks: bool,
}

/// A sandbox this worker's backend lists as labelled with the worker id.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    /// The sandbox's id.
    pub id: String,
    pub task_id: String,
    pub execution_id: String,
    /// The berth instance that made it (none from a berth before instance labels).
    pub instance: Option<String>,
    /// Still running.
    pub running: bool,
}

/// One execution, as the closure proof names it.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionRef<'a> {
    pub task_id: &'a str,
    pub execution_id: &'a str,
}

/// The seam a task run drives.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name as the protocol reports it (`worker_hello.backend`): never branched on.
    fn kind(&self) -> &'static str;
    /// What an operator calls the engine, in transcripts and logs ("Docker engine").
    fn engine_name(&self) -> &'static str {
        "engine"
    }
    /// What it can do beyond the common ground.
    fn caps(&self) -> Caps;
    /// Whether the engine takes a new connection and answers (bounded: a few seconds).
    async fn ping(&self) -> Result<(), BackendError>;
    /// The isolation runtimes (OCI runtimes, runtime classes) the engine offers.
    async fn runtimes(&self) -> Result<Vec<String>, BackendError>;
    /// Makes `image` available under `policy` (condensed progress lines to `progress`).
    async fn prepare_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, BackendError>;
    /// Makes a sidecar image's files mountable; returns the mount source.
    async fn prepare_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, BackendError>;
    /// Creates the sandbox without starting it; returns its id.
    async fn create(&self, spec: &SandboxSpec) -> Result<String, BackendError>;
    /// The sandbox the engine made for `execution_id` (a create whose answer was lost).
    async fn find(&self, owner: &Owner, execution_id: &str)
    -> Result<Option<String>, BackendError>;
    /// Starts a created sandbox.
    async fn start(&self, id: &str) -> Result<(), BackendError>;
    /// The sandbox's address on `network`, once it runs.
    async fn address(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, BackendError>;
    /// Waits for the sandbox's task to end and reads how.
    async fn wait(&self, id: &str) -> Result<ExitStatus, BackendError>;
    /// Without waiting: `None` when the sandbox no longer exists, else whether it runs and, if
    /// not, how it ended.
    async fn state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, BackendError>;
    /// The sandbox's name as an operator sees it (Docker: the container's name), for task-log
    /// records; `None` where it cannot be read or the backend has none to give.
    async fn display_name(&self, _id: &str) -> Option<String> {
        None
    }
    /// The task's output from `since` (whole seconds, inclusive); `follow` keeps the stream
    /// open until the task ends.
    fn output(&self, id: &str, follow: bool, since: i64) -> LogStream;
    /// One reading of what the running sandbox used (`None` when it no longer runs).
    async fn usage(&self, id: &str) -> Result<Option<UsageSample>, BackendError>;
    /// A cheap reading, where the engine offers one (sampled many times a second).
    async fn quick_usage(&self, _id: &str) -> Option<UsageSample> {
        None
    }
    /// Stops the task gracefully (`grace` between the polite and the forced stop); a stopped or
    /// missing sandbox is fine. Its output stays readable until [`Backend::remove`].
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), BackendError>;
    /// Removes the sandbox and what it holds; a missing one is fine.
    async fn remove(&self, id: &str) -> Result<(), BackendError>;
    /// Removes what is left of an execution — the sandbox known for it and any other this
    /// instance made for it — and answers `Ok` only when the engine showed nothing remains
    /// (what `execution_closed` needs). An engine error is never proof.
    async fn gone(
        &self,
        owner: &Owner,
        execution: ExecutionRef<'_>,
        known: Option<&str>,
    ) -> Result<(), BackendError>;
    /// Sandboxes labelled with `worker_id` (every instance's: the caller tells them apart).
    async fn list(&self, worker_id: &str) -> Result<Vec<Owned>, BackendError>;
    /// Why an ended sandbox ended, where the engine knows more than its exit status (a pod
    /// that was evicted, never scheduled, or whose image could not be pulled; a provisioning
    /// step that failed): the failure to report instead of the exit status. Read after
    /// [`Backend::wait`] or [`Backend::state`] said it ended.
    async fn end_cause(&self, _id: &str) -> Option<crate::failure::Failure> {
        None
    }
    /// Image pulls so far: (succeeded, failed).
    fn pull_counts(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Live output and freezing, when [`Caps::live`].
    fn live(&self) -> Option<&dyn Live> {
        None
    }
    /// Provisioning inside the held sandbox, when [`Caps::in_place`].
    fn in_place(&self) -> Option<&dyn InPlace> {
        None
    }
    /// Sealed networks for allowlisted tasks, where the engine makes them.
    fn sealing(&self) -> Option<&dyn Sealing> {
        None
    }
}

/// Live output and freezing (Docker: attach, the cgroup freezer, the log's last entries).
#[async_trait]
pub trait Live: Send + Sync {
    /// The sandbox's output as the engine hands it out, from now until it closes: opened before
    /// the start, it holds all of it.
    async fn attach(&self, id: &str) -> Result<OutputStream, BackendError>;
    /// Freezes every process of the sandbox until [`Live::thaw`].
    async fn freeze(&self, id: &str) -> Result<(), BackendError>;
    /// Thaws a frozen sandbox; one that is not frozen is fine.
    async fn thaw(&self, id: &str) -> Result<(), BackendError>;
    /// The last `entries` entries of the output log (both streams, in the engine's order).
    fn tail(&self, id: &str, entries: u32) -> LogStream;
}

/// Provisioning inside the held sandbox (Docker: exec, then a signal releases the holder).
#[async_trait]
pub trait InPlace: Send + Sync {
    /// Runs `cmd` inside the running sandbox (its env plus `env`), streaming its output.
    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        working_dir: Option<&str>,
        env: Vec<String>,
    ) -> Result<ExecRun, BackendError>;
    /// Exit code of a finished step (`None` while it still runs).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, BackendError>;
    /// Lets the held sandbox run the task's command.
    async fn release(&self, id: &str) -> Result<(), BackendError>;
}

/// Sealed networks (Docker: an internal bridge per instance, firewalled on the host).
#[async_trait]
pub trait Sealing: Send + Sync {
    /// Creates (or checks) the sealed network egress-restricted tasks run on.
    async fn ensure_network(
        &self,
        name: &str,
        bridge: &str,
        owner: &Owner,
    ) -> Result<EgressNetwork, BackendError>;
    /// The sealed networks labelled with `worker_id` (every instance's), or every worker's.
    async fn networks(&self, worker_id: Option<&str>) -> Result<Vec<SealedNetwork>, BackendError>;
    /// Removes a network; a missing one is fine.
    async fn remove_network(&self, name: &str) -> Result<(), BackendError>;
}
