//! The Docker backend: one container per execution, over the Docker engine seam
//! ([`Runtime`]: bollard in production, the recording fake in tests). It can do everything the
//! seam offers: live attach and freezing, provisioning in the held container, split streams,
//! sealed bridge networks; and an engine restart stops its containers.

pub mod translate;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{
    Backend, BackendError, Caps, EgressNetwork, ExecRun, ExecutionRef, ExitStatus, ImageInfo,
    InPlace, Live, LogStream, OutputStream, Owned, SealedNetwork, Sealing, UsageSample,
};
use crate::config::PullPolicy;
use crate::runtime::Runtime;
use crate::spec::SandboxSpec;
use crate::spec::holder::RELEASE_SIGNAL;
use crate::spec::image::ImageRef;
use crate::spec::owner::{Owner, Ownership};

/// The engine's log stream with the seam's error type.
fn log_stream(s: crate::runtime::LogStream) -> LogStream {
    Box::pin(s.map(|r| r.map_err(BackendError::from)))
}

/// The engine's output stream with the seam's error type.
fn output_stream(s: crate::runtime::OutputStream) -> OutputStream {
    Box::pin(s.map(|r| r.map_err(BackendError::from)))
}

/// The Docker backend over an engine.
pub struct DockerBackend {
    engine: Arc<dyn Runtime>,
}

impl DockerBackend {
    pub fn new(engine: Arc<dyn Runtime>) -> Self {
        DockerBackend { engine }
    }

    /// The engine seam underneath (engine-level tools and tests).
    pub fn engine(&self) -> &Arc<dyn Runtime> {
        &self.engine
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn engine_name(&self) -> &'static str {
        "Docker engine"
    }

    fn caps(&self) -> Caps {
        Caps {
            live: true,
            in_place: true,
            split_streams: true,
            outage_stops_tasks: true,
        }
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(self.engine.ping().await?)
    }

    async fn runtimes(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.engine.runtimes().await?)
    }

    async fn prepare_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, BackendError> {
        Ok(self.engine.ensure_image(image, policy, progress).await?)
    }

    async fn prepare_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, BackendError> {
        Ok(self.engine.ensure_sidecar(image, policy).await?)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, BackendError> {
        Ok(self.engine.create(&translate::container_spec(spec)).await?)
    }

    async fn find(
        &self,
        owner: &Owner,
        execution_id: &str,
    ) -> Result<Option<String>, BackendError> {
        Ok(self
            .engine
            .list_managed(&owner.worker_id)
            .await?
            .into_iter()
            .find(|c| {
                c.execution_id == execution_id
                    && c.instance.as_deref() == Some(owner.instance.as_str())
            })
            .map(|c| c.id))
    }

    async fn start(&self, id: &str) -> Result<(), BackendError> {
        Ok(self.engine.start(id).await?)
    }

    async fn address(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, BackendError> {
        Ok(self.engine.container_address(id, network).await?)
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, BackendError> {
        Ok(self.engine.wait(id).await?)
    }

    async fn state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, BackendError> {
        Ok(self.engine.inspect_state(id).await?)
    }

    async fn display_name(&self, id: &str) -> Option<String> {
        self.engine.container_name(id).await
    }

    fn output(&self, id: &str, follow: bool, since: i64) -> LogStream {
        log_stream(self.engine.logs(id, follow, since))
    }

    async fn usage(&self, id: &str) -> Result<Option<UsageSample>, BackendError> {
        Ok(self.engine.usage(id).await?)
    }

    async fn quick_usage(&self, id: &str) -> Option<UsageSample> {
        self.engine.quick_usage(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        Ok(self.engine.stop(id, grace).await?)
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        Ok(self.engine.remove(id).await?)
    }

    async fn gone(
        &self,
        owner: &Owner,
        execution: ExecutionRef<'_>,
        known: Option<&str>,
    ) -> Result<(), BackendError> {
        if let Some(id) = known {
            // A removal answered with "no such container" counts as proof (the engine seam
            // maps 404 to success).
            self.engine.remove(id).await?;
        }
        // Any other container the engine made for it (a create whose answer was lost); never
        // another instance's.
        for c in self.engine.list_managed(&owner.worker_id).await? {
            let others = matches!(owner.ownership(c.instance.as_deref()), Ownership::Other(_));
            if c.execution_id == execution.execution_id && c.task_id == execution.task_id && !others
            {
                self.engine.remove(&c.id).await?;
            }
        }
        Ok(())
    }

    async fn list(&self, worker_id: &str) -> Result<Vec<Owned>, BackendError> {
        Ok(self
            .engine
            .list_managed(worker_id)
            .await?
            .into_iter()
            .map(|c| Owned {
                id: c.id,
                task_id: c.task_id,
                execution_id: c.execution_id,
                instance: c.instance,
                running: c.running,
            })
            .collect())
    }

    fn pull_counts(&self) -> (u64, u64) {
        self.engine.pull_counts()
    }

    fn live(&self) -> Option<&dyn Live> {
        Some(self)
    }

    fn in_place(&self) -> Option<&dyn InPlace> {
        Some(self)
    }

    fn sealing(&self) -> Option<&dyn Sealing> {
        Some(self)
    }
}

#[async_trait]
impl Live for DockerBackend {
    async fn attach(&self, id: &str) -> Result<OutputStream, BackendError> {
        Ok(output_stream(self.engine.attach(id).await?))
    }

    async fn freeze(&self, id: &str) -> Result<(), BackendError> {
        Ok(self.engine.pause(id).await?)
    }

    async fn thaw(&self, id: &str) -> Result<(), BackendError> {
        Ok(self.engine.unpause(id).await?)
    }

    fn tail(&self, id: &str, entries: u32) -> LogStream {
        log_stream(self.engine.log_tail(id, entries))
    }
}

#[async_trait]
impl InPlace for DockerBackend {
    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        working_dir: Option<&str>,
        env: Vec<String>,
    ) -> Result<ExecRun, BackendError> {
        let run = self.engine.exec(id, cmd, working_dir, env).await?;
        Ok(ExecRun {
            id: run.id,
            output: output_stream(run.output),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, BackendError> {
        Ok(self.engine.exec_exit_code(exec_id).await?)
    }

    async fn release(&self, id: &str) -> Result<(), BackendError> {
        Ok(self.engine.signal(id, RELEASE_SIGNAL).await?)
    }
}

#[async_trait]
impl Sealing for DockerBackend {
    async fn ensure_network(
        &self,
        name: &str,
        bridge: &str,
        owner: &Owner,
    ) -> Result<EgressNetwork, BackendError> {
        Ok(self
            .engine
            .ensure_egress_network(name, bridge, owner)
            .await?)
    }

    async fn networks(&self, worker_id: Option<&str>) -> Result<Vec<SealedNetwork>, BackendError> {
        Ok(self.engine.sealed_networks(worker_id).await?)
    }

    async fn remove_network(&self, name: &str) -> Result<(), BackendError> {
        Ok(self.engine.remove_network(name).await?)
    }
}
