//! The Docker backend (bollard): images, sidecar volumes, and the life of one task container.

mod cgroup;
mod container;
pub mod credentials;
mod image;
mod network;
pub mod progress;
pub mod rootfs;
mod sidecar;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use tokio::time::Instant;

use crate::config::PullPolicy;
use crate::runtime::ContainerSpec;
use crate::runtime::{
    EgressNetwork, ExecRun, ExitStatus, ImageInfo, LogStream, ManagedContainer, OutputStream,
    Runtime, RuntimeError,
};
use crate::spec::image::ImageRef;

/// Label on sidecar volumes so operators can find (and prune) them.
pub const LABEL_SIDECAR: &str = "berth.sidecar";
/// Where the sidecar copy helper mounts the volume.
const SIDECAR_TARGET: &str = "/berth-sidecar";

fn api(op: &'static str) -> impl Fn(BollardError) -> RuntimeError {
    move |e| RuntimeError::Api {
        op,
        reason: engine_message(&e),
    }
}

/// The engine's own message when it sent one, else the client error.
fn engine_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Engine facts checked at start-up.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Engine version.
    pub version: String,
    pub api_version: String,
    /// `linux/amd64` style.
    pub platform: String,
    /// Docker's data directory (for the free-disk check).
    pub root_dir: Option<String>,
}

/// Per-key async locks so concurrent tasks never pull the same image or fill the same sidecar
/// volume twice at once. The value records when the last successful operation finished.
#[derive(Default)]
struct KeyedLocks {
    map: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl KeyedLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        self.map.lock().entry(key.to_string()).or_default().clone()
    }
}

/// The Docker engine as berth uses it.
pub struct Docker {
    client: bollard::Docker,
    host: String,
    pulls: KeyedLocks,
    sidecars: KeyedLocks,
    auth_config: Option<PathBuf>,
    pulls_ok: std::sync::atomic::AtomicU64,
    pulls_failed: std::sync::atomic::AtomicU64,
    /// Per running container: where its usage is read from the kernel (`None`: it cannot be
    /// from here; not asked again). Dropped when the container is removed.
    cgroups: parking_lot::Mutex<HashMap<String, Option<cgroup::Located>>>,
    /// When each container may next be looked up through its process (rate-limited).
    pid_lookups: parking_lot::Mutex<HashMap<String, std::time::Instant>>,
}

impl Docker {
    /// Connects (lazily) to `host`, else `DOCKER_HOST`, else the default socket.
    pub fn connect(
        host: Option<&str>,
        docker_host_env: Option<&str>,
    ) -> Result<Self, RuntimeError> {
        let chosen = host
            .or(docker_host_env.filter(|h| !h.is_empty()))
            .unwrap_or("unix:///var/run/docker.sock")
            .to_string();
        let client =
            bollard::Docker::connect_with_host(&chosen).map_err(|e| RuntimeError::Unreachable {
                host: chosen.clone(),
                reason: e.to_string(),
            })?;
        Ok(Docker {
            client,
            host: chosen,
            pulls: KeyedLocks::default(),
            sidecars: KeyedLocks::default(),
            auth_config: None,
            pulls_ok: Default::default(),
            pulls_failed: Default::default(),
            cgroups: Default::default(),
            pid_lookups: Default::default(),
        })
    }

    /// Image pulls so far: (succeeded, failed).
    pub fn pull_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.pulls_ok.load(Relaxed), self.pulls_failed.load(Relaxed))
    }

    /// Uses this Docker CLI config file for registry credentials.
    pub fn with_auth_config(mut self, path: Option<PathBuf>) -> Self {
        self.auth_config = path;
        self
    }

    /// The bollard client, for tools and tests.
    pub fn client(&self) -> &bollard::Docker {
        &self.client
    }

    /// Pings the engine and checks its platform.
    pub async fn check(&self) -> Result<EngineInfo, RuntimeError> {
        let unreachable = |e: BollardError| RuntimeError::Unreachable {
            host: self.host.clone(),
            reason: e.to_string(),
        };
        self.client.ping().await.map_err(unreachable)?;
        let v = self.client.version().await.map_err(unreachable)?;
        let os = v.os.unwrap_or_default();
        let arch = v.arch.unwrap_or_default();
        if os != "linux" || !matches!(arch.as_str(), "amd64" | "arm64") {
            return Err(RuntimeError::Platform { os, arch });
        }
        let root_dir = self
            .client
            .info()
            .await
            .ok()
            .and_then(|i| i.docker_root_dir);
        Ok(EngineInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            platform: format!("{os}/{arch}"),
            root_dir,
        })
    }
}

#[async_trait]
impl Runtime for Docker {
    async fn ping(&self) -> Result<(), RuntimeError> {
        Docker::ping(self).await
    }

    async fn ensure_egress_network(
        &self,
        name: &str,
        bridge: &str,
        owner: &crate::spec::owner::Owner,
    ) -> Result<EgressNetwork, RuntimeError> {
        Docker::ensure_egress_network(self, name, bridge, owner).await
    }

    async fn sealed_networks(
        &self,
        worker_id: Option<&str>,
    ) -> Result<Vec<crate::runtime::SealedNetwork>, RuntimeError> {
        Docker::sealed_networks(self, worker_id).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        Docker::remove_network(self, name).await
    }

    async fn container_address(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, RuntimeError> {
        Docker::container_address(self, id, network).await
    }

    async fn usage(&self, id: &str) -> Result<Option<crate::runtime::UsageSample>, RuntimeError> {
        Docker::usage(self, id).await
    }

    async fn quick_usage(&self, id: &str) -> Option<crate::runtime::UsageSample> {
        Docker::quick_usage(self, id).await
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        let info = self
            .client
            .info()
            .await
            .map_err(|e| RuntimeError::Unreachable {
                host: self.host.clone(),
                reason: e.to_string(),
            })?;
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        Ok(names)
    }

    async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, RuntimeError> {
        Docker::ensure_image(self, image, policy, progress).await
    }

    async fn ensure_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, RuntimeError> {
        Docker::ensure_sidecar(self, image, policy).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        Docker::create(self, spec).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        Docker::start(self, id).await
    }

    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        working_dir: Option<&str>,
        env: Vec<String>,
    ) -> Result<ExecRun, RuntimeError> {
        Docker::exec(self, id, cmd, working_dir, env).await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        Docker::exec_exit_code(self, exec_id).await
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        Docker::signal(self, id, signal).await
    }

    fn logs(&self, id: &str, follow: bool, since: i64) -> LogStream {
        Docker::logs(self, id, follow, since)
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        Docker::pause(self, id).await
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        Docker::unpause(self, id).await
    }

    fn log_tail(&self, id: &str, entries: u32) -> LogStream {
        Docker::log_tail(self, id, entries)
    }

    async fn attach(&self, id: &str) -> Result<OutputStream, RuntimeError> {
        Docker::attach(self, id).await
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        Docker::wait(self, id).await
    }

    async fn inspect_state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, RuntimeError> {
        Docker::inspect_state(self, id).await
    }

    async fn container_name(&self, id: &str) -> Option<String> {
        Docker::container_name(self, id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        Docker::stop(self, id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        Docker::remove(self, id).await
    }

    async fn list_managed(&self, worker_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        Docker::list_managed(self, worker_id).await
    }

    fn pull_counts(&self) -> (u64, u64) {
        Docker::pull_counts(self)
    }
}
