//! The Docker engine's seam underneath the Docker backend ([`crate::backend::docker`]): one
//! trait, each method one engine call (or a small fixed sequence), with Docker's vocabulary
//! (containers, exec, attach, pause, networks). Task runs never see it: they drive
//! [`crate::backend::Backend`]. bollard is the engine (`docker`); `fake` is a scripted,
//! recording engine for the Docker backend's component tests.

pub mod docker;
pub mod fake;

use std::time::Duration;

use async_trait::async_trait;

use crate::config::PullPolicy;
use crate::protocol::Stream;
use crate::spec::image::ImageRef;

/// An engine failure, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine cannot be reached.
    #[error(
        "cannot reach the Docker engine at {host}: {reason}. Check that dockerd is running, that the socket path (backend.docker.host / DOCKER_HOST) is right, and that berth's user may use it (member of the docker group)"
    )]
    Unreachable {
        /// Address tried.
        host: String,
        /// What failed.
        reason: String,
    },
    /// The engine runs on a platform berth does not support.
    #[error(
        "Docker engine platform {os}/{arch} is not supported (need linux/amd64 or linux/arm64)"
    )]
    Platform {
        /// OS reported by the engine.
        os: String,
        /// Architecture reported by the engine.
        arch: String,
    },
    /// The image is missing and policy forbids pulling.
    #[error(
        "image {image} is not present locally and pull_policy is never (load it with `docker load`, or change backend.docker.pull_policy)"
    )]
    ImageMissing { image: String },
    /// A pull failed.
    #[error("pulling image {image} failed: {reason}")]
    Pull {
        image: String,
        /// What the registry or engine said.
        reason: String,
    },
    /// A sidecar volume could not be filled.
    #[error("preparing sidecar volume {volume} from {image} failed: {reason}")]
    Sidecar {
        image: String,
        volume: String,
        /// What failed.
        reason: String,
    },
    /// Any other engine call failed.
    #[error("Docker {op} failed: {reason}")]
    Api {
        /// The operation.
        op: &'static str,
        /// What the engine said.
        reason: String,
    },
}

/// Everything Docker needs to create one task container: the Docker backend's translation of
/// a [`crate::spec::SandboxSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Normalised image reference.
    pub image: String,
    pub cmd: Vec<String>,
    /// Entrypoint override: only the provisioning holder ([`crate::spec::holder::held`]); `None`
    /// keeps the image's.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// Sidecar binds first, then operator volumes.
    pub binds: Vec<String>,
    /// berth labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// CPU limit in 1e-9 CPUs.
    pub nano_cpus: Option<i64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// Memory+swap limit; equal to `memory_bytes` so the task gets no extra swap.
    pub memory_swap_bytes: Option<i64>,
    /// Run Docker's init (tini) as PID 1: a shell as PID 1 ignores SIGTERM, so without it a
    /// stop always waited out the grace period; the init also reaps the agent's zombies.
    pub init: bool,
    /// Security settings (all but the network, which is `network_mode`).
    pub security: crate::spec::policy::Security,
    /// `bridge`, `none` or a network's name.
    pub network_mode: String,
    /// The servers the engine's embedded resolver forwards unknown names to (`--dns`); empty:
    /// the engine's default. A sealed task gets its network's gateway, where nothing answers
    /// DNS: see [`crate::spec::dns::sealed_dns`].
    pub dns: Vec<String>,
}

/// What an image resolved to locally.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// Image id (`sha256:…`).
    pub id: String,
    /// First repo digest (`name@sha256:…`), absent for locally built images.
    pub repo_digest: Option<String>,
    /// The image's own `ENTRYPOINT` (kept when berth holds a container for provisioning).
    pub entrypoint: Vec<String>,
    /// The image's `USER` (empty: root).
    pub user: String,
}

/// stdout/stderr pieces of a command or container, in the order the engine delivered them.
pub type OutputStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<(Stream, bytes::Bytes), RuntimeError>> + Send>,
>;

/// A command started inside a running container, with its output.
pub struct ExecRun {
    /// Exec instance id (for its exit code).
    pub id: String,
    pub output: OutputStream,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitStatus {
    /// Exit status (128 + N for death by signal N).
    pub code: i64,
    /// The cgroup's OOM killer fired.
    pub oom_killed: bool,
}

/// One entry of a container's output log, stamped by the engine when it read it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// stdout or stderr.
    pub stream: Stream,
    /// Nanoseconds since the Unix epoch.
    pub ts: i64,
    /// The bytes (a line, or a piece of a long one).
    pub bytes: bytes::Bytes,
}

/// A container's output from a cursor, in the engine's order.
pub type LogStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<LogEntry, RuntimeError>> + Send>>;

/// A managed container found on the engine.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    /// Container id.
    pub id: String,
    /// `berth.task_id` label.
    pub task_id: String,
    /// `berth.execution_id` label.
    pub execution_id: String,
    /// `berth.instance` label (none on containers of a berth before instance labels).
    pub instance: Option<String>,
    /// Still running.
    pub running: bool,
}

/// What a task run needs from its engine. Every method is one engine call (or a small fixed
/// sequence of them); retry and outage policy belong to the caller.
/// One reading of a running container's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageSample {
    /// CPU time so far.
    pub cpu_ns: u64,
    /// Memory in use now.
    pub memory: u64,
    /// The cgroup's own high-water mark (cgroup v1 reports it).
    pub memory_max: Option<u64>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A sealed network berth made for a worker id, as the engine lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedNetwork {
    /// Docker network name.
    pub name: String,
    /// `berth.worker_id` label.
    pub worker_id: String,
    /// Bridge interface on the host (its firewall chain is named after it).
    pub bridge: Option<String>,
    /// `berth.instance` label (none on networks of a berth before instance labels).
    pub instance: Option<String>,
    /// Containers attached to it now.
    pub containers: usize,
}

/// The network egress-restricted tasks run on.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressNetwork {
    /// Docker network name.
    pub name: String,
    /// Bridge interface on the host.
    pub bridge: String,
    /// The bridge's address on the host (where the egress proxy listens).
    pub gateway: std::net::IpAddr,
}

#[async_trait]
pub trait Runtime: Send + Sync {
    /// Whether the engine takes a new connection and answers (bounded: at most a few seconds).
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Creates (or checks) the sealed network egress-restricted tasks run on.
    async fn ensure_egress_network(
        &self,
        name: &str,
        bridge: &str,
        owner: &crate::spec::owner::Owner,
    ) -> Result<EgressNetwork, RuntimeError>;
    /// The sealed networks labelled with `worker_id` (every instance's), or every worker's.
    async fn sealed_networks(
        &self,
        worker_id: Option<&str>,
    ) -> Result<Vec<SealedNetwork>, RuntimeError>;
    /// Removes a network; a missing one is fine.
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError>;
    /// The container's address on `network`, once it runs.
    async fn container_address(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, RuntimeError>;
    /// One statistics reading of a running container (`None` when it no longer runs).
    async fn usage(&self, id: &str) -> Result<Option<UsageSample>, RuntimeError>;
    /// A cheap reading of a running container's CPU time, memory and network bytes, straight
    /// from the kernel where this process can read it: cheap enough to sample many times a
    /// second, so a short task reports what it used. `None`: not readable from here (the
    /// engine's statistics remain), or the container has ended.
    async fn quick_usage(&self, _id: &str) -> Option<UsageSample> {
        None
    }
    /// The OCI runtimes registered with the engine (`docker info`), e.g. `runc`, `runsc`.
    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError>;
    /// Makes `image` available under `policy`; concurrent callers for one image share one pull.
    /// Condensed progress lines of a pull this caller performs go to `progress`.
    async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, RuntimeError>;
    /// Makes the volume holding `image`'s filesystem exist (filled once); returns its name.
    async fn ensure_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, RuntimeError>;
    /// Creates the task container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Runs `cmd` inside running container `id` (its env plus `env`), streaming its output.
    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        working_dir: Option<&str>,
        env: Vec<String>,
    ) -> Result<ExecRun, RuntimeError>;
    /// Exit code of a finished exec (`None` while it still runs).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError>;
    /// Sends `signal` (e.g. `SIGUSR1`) to the container's main process.
    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError>;
    /// The container's output from `since` (whole seconds, inclusive); `follow` keeps the
    /// stream open until the container stops.
    fn logs(&self, id: &str, follow: bool, since: i64) -> LogStream;
    /// The last `entries` entries of the container's log (both streams, in the engine's order).
    fn log_tail(&self, id: &str, entries: u32) -> LogStream;
    /// The container's stdout and stderr as the engine hands them out live, from now until
    /// the container's output closes. Attach before the command starts to see all of it.
    async fn attach(&self, id: &str) -> Result<OutputStream, RuntimeError>;
    /// Freezes every process of the container (cgroup freezer) until [`Runtime::unpause`].
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaws a paused container; one that is not paused is fine.
    async fn unpause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Waits for the container to stop and reads how it ended.
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError>;
    /// The container's state without waiting: `None` when it no longer exists, else whether it
    /// runs and, if not, how it ended.
    async fn inspect_state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, RuntimeError>;
    /// The container's name without its leading `/` (the engine names unnamed containers);
    /// `None` when it cannot be read.
    async fn container_name(&self, _id: &str) -> Option<String> {
        None
    }
    /// Stops gracefully: the stop signal, `grace`, then SIGKILL. A stopped or missing
    /// container is fine.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a container with its anonymous volumes; a missing one is fine.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Containers labelled as this worker's.
    async fn list_managed(&self, worker_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError>;
    /// Image pulls so far: (succeeded, failed).
    fn pull_counts(&self) -> (u64, u64);
}
