//! The Docker backend (bollard): images, sidecar volumes, and the life of one task container.

pub mod credentials;
pub mod progress;
pub mod rootfs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, HostConfigLogConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::PullPolicy;
use crate::protocol::Stream;
use crate::spec::image::{ImageRef, sidecar_volume_name};
use crate::spec::{ContainerSpec, LABEL_EXECUTION, LABEL_MANAGED, LABEL_TASK, LABEL_WORKER};

/// Label on sidecar volumes so operators can find (and prune) them.
pub const LABEL_SIDECAR: &str = "berth.sidecar";
/// Where the sidecar copy helper mounts the volume.
const SIDECAR_TARGET: &str = "/berth-sidecar";

/// A Docker failure, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
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
    ImageMissing {
        /// The image.
        image: String,
    },
    /// A pull failed.
    #[error("pulling image {image} failed: {reason}")]
    Pull {
        /// The image.
        image: String,
        /// What the registry or engine said.
        reason: String,
    },
    /// A sidecar volume could not be filled.
    #[error("preparing sidecar volume {volume} from {image} failed: {reason}")]
    Sidecar {
        /// Image.
        image: String,
        /// Volume.
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

fn api(op: &'static str) -> impl Fn(BollardError) -> DockerError {
    move |e| DockerError::Api {
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

/// What an image resolved to locally.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// Image id (`sha256:…`).
    pub id: String,
    /// First repo digest (`name@sha256:…`), absent for locally built images.
    pub repo_digest: Option<String>,
    /// The image's own `ENTRYPOINT` (kept when berth holds a container for provisioning).
    pub entrypoint: Vec<String>,
}

/// stdout/stderr pieces of a command, in the order the engine delivered them.
pub type ExecOutput = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<(Stream, bytes::Bytes), DockerError>> + Send>,
>;

/// A command started inside a running container, with its output.
pub struct ExecRun {
    /// Exec instance id (for its exit code).
    pub id: String,
    /// Its output.
    pub output: ExecOutput,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitStatus {
    /// Exit status (128 + N for death by signal N).
    pub code: i64,
    /// The cgroup's OOM killer fired.
    pub oom_killed: bool,
}

/// Engine facts checked at start-up.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Engine version.
    pub version: String,
    /// API version.
    pub api_version: String,
    /// `linux/amd64` style.
    pub platform: String,
    /// Docker's data directory (for the free-disk check).
    pub root_dir: Option<String>,
}

/// A managed container found on the engine.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    /// Container id.
    pub id: String,
    /// `berth.task_id` label.
    pub task_id: String,
    /// `berth.execution_id` label.
    pub execution_id: String,
    /// Still running.
    pub running: bool,
}

/// Per-key async locks so concurrent tasks never pull the same image or fill the same sidecar
/// volume twice at once. The value records when the last successful operation finished.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl KeyedLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut m = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.entry(key.to_string()).or_default().clone()
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
}

impl Docker {
    /// Connects (lazily) to `host`, else `DOCKER_HOST`, else the default socket.
    pub fn connect(host: Option<&str>, docker_host_env: Option<&str>) -> Result<Self, DockerError> {
        let chosen = host
            .or(docker_host_env.filter(|h| !h.is_empty()))
            .unwrap_or("unix:///var/run/docker.sock")
            .to_string();
        let client =
            bollard::Docker::connect_with_host(&chosen).map_err(|e| DockerError::Unreachable {
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
    pub async fn check(&self) -> Result<EngineInfo, DockerError> {
        let unreachable = |e: BollardError| DockerError::Unreachable {
            host: self.host.clone(),
            reason: e.to_string(),
        };
        self.client.ping().await.map_err(unreachable)?;
        let v = self.client.version().await.map_err(unreachable)?;
        let os = v.os.unwrap_or_default();
        let arch = v.arch.unwrap_or_default();
        if os != "linux" || !matches!(arch.as_str(), "amd64" | "arm64") {
            return Err(DockerError::Platform { os, arch });
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

    async fn inspect_image(&self, name: &str) -> Result<Option<ImageInfo>, DockerError> {
        match self.client.inspect_image(name).await {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                repo_digest: i.repo_digests.and_then(|d| d.into_iter().next()),
                entrypoint: i.config.and_then(|c| c.entrypoint).unwrap_or_default(),
            })),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(api("image inspect")(e)),
        }
    }

    fn credentials(&self, domain: &str) -> Option<bollard::auth::DockerCredentials> {
        let path = self.auth_config.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        crate::runtime::docker::credentials::for_registry(&text, domain)
    }

    async fn counted_pull(
        &self,
        image: &ImageRef,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<(), DockerError> {
        use std::sync::atomic::Ordering::Relaxed;
        let r = self.pull(image, progress).await;
        match &r {
            Ok(()) => self.pulls_ok.fetch_add(1, Relaxed),
            Err(_) => self.pulls_failed.fetch_add(1, Relaxed),
        };
        r
    }

    async fn pull(
        &self,
        image: &ImageRef,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<(), DockerError> {
        let (from_image, tag) = image.pull_parts();
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&from_image)
            .tag(&tag)
            .build();
        let started = Instant::now();
        info!(image = %image, "pulling image");
        let mut stream =
            self.client
                .create_image(Some(opts), None, self.credentials(&image.domain));
        let mut condensed = crate::runtime::docker::progress::PullProgress::default();
        // Progress lines are a courtesy: dropped rather than slowing the pull when the reader
        // lags.
        let say = |line: String| {
            if let Some(tx) = progress {
                let _ = tx.try_send(line);
            }
        };
        // A failed pull arrives as an error item inside the stream: read it to the end.
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let detail = info.progress_detail.unwrap_or_default();
                    condensed.observe(
                        info.id.as_deref(),
                        info.status.as_deref().unwrap_or_default(),
                        detail.current,
                        detail.total,
                    );
                    if let Some(line) = condensed.line_if_due(started.elapsed()) {
                        say(format!("pulling {image}: {line}"));
                    }
                    if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                        return Err(DockerError::Pull {
                            image: image.to_string(),
                            reason: msg,
                        });
                    }
                }
                Err(e) => {
                    return Err(DockerError::Pull {
                        image: image.to_string(),
                        reason: engine_message(&e),
                    });
                }
            }
        }
        info!(image = %image, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        say(format!(
            "pulled {image} in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            condensed.summary()
        ));
        Ok(())
    }

    /// Makes `image` available under `policy`; concurrent callers for one image share one pull.
    /// Condensed progress lines of a pull this caller performs go to `progress`.
    pub async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, DockerError> {
        let name = image.to_string();
        let asked = Instant::now();
        let lock = self.pulls.get(&name);
        let mut last_pull = lock.lock().await;
        let local = self.inspect_image(&name).await?;
        let missing = || DockerError::ImageMissing {
            image: name.clone(),
        };
        match (policy, local) {
            (PullPolicy::Never, local) => local.ok_or_else(missing),
            (PullPolicy::IfNotPresent, Some(i)) => Ok(i),
            // Someone else pulled it while this caller waited for the lock.
            (PullPolicy::Always, Some(i)) if last_pull.is_some_and(|t| t >= asked) => Ok(i),
            (policy, local) => match self.counted_pull(image, progress).await {
                Ok(()) => {
                    *last_pull = Some(Instant::now());
                    self.inspect_image(&name).await?.ok_or_else(missing)
                }
                Err(e) => match (policy, local) {
                    (PullPolicy::Always, Some(i)) => {
                        warn!(image = %name, error = %e, "pull failed; running the local copy");
                        Ok(i)
                    }
                    _ => Err(e),
                },
            },
        }
    }

    /// Makes the named volume holding `image`'s filesystem exist, copying it once.
    pub async fn ensure_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, DockerError> {
        let info = self.ensure_image(image, policy, None).await?;
        let content = info.repo_digest.clone().unwrap_or_else(|| info.id.clone());
        let volume = sidecar_volume_name(image, &content);
        let lock = self.sidecars.get(&volume);
        let _guard = lock.lock().await;
        match self.client.inspect_volume(&volume).await {
            Ok(_) => return Ok(volume),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(api("volume inspect")(e)),
        }
        info!(image = %image, %volume, "preparing sidecar volume");
        let started = Instant::now();
        self.client
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(HashMap::from([
                    (LABEL_SIDECAR.to_string(), "true".to_string()),
                    ("berth.sidecar_image".to_string(), image.to_string()),
                ])),
                ..VolumeCreateRequest::default()
            })
            .await
            .map_err(api("volume create"))?;
        match self.copy_into_volume(&info.id, &volume).await {
            Ok(()) => {
                info!(%volume, elapsed_ms = started.elapsed().as_millis() as u64, "sidecar volume ready");
                Ok(volume)
            }
            Err(reason) => {
                // Never leave a half-filled volume that a later task would trust.
                let opts = RemoveVolumeOptionsBuilder::default().force(true).build();
                if let Err(e) = self.client.remove_volume(&volume, Some(opts)).await {
                    warn!(%volume, error = %e, "cannot remove half-filled sidecar volume");
                }
                Err(DockerError::Sidecar {
                    image: image.to_string(),
                    volume,
                    reason,
                })
            }
        }
    }

    async fn copy_into_volume(&self, image_id: &str, volume: &str) -> Result<(), String> {
        let labels = HashMap::from([(LABEL_SIDECAR.to_string(), "copy".to_string())]);
        let source = self
            .client
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(image_id.to_string()),
                    // Never started; a command only satisfies images without one.
                    cmd: Some(vec!["/berth-sidecar-source".to_string()]),
                    labels: Some(labels.clone()),
                    ..ContainerCreateBody::default()
                },
            )
            .await
            .map_err(|e| format!("create source container: {}", engine_message(&e)))?
            .id;
        let helper = self
            .client
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(image_id.to_string()),
                    // Numeric: an image without /etc/passwd (distroless, FROM scratch) has no user
                    // named root, but uid 0 always exists.
                    user: Some("0:0".to_string()),
                    entrypoint: Some(vec![]),
                    cmd: Some(vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        format!("tar -x -C {SIDECAR_TARGET}"),
                    ]),
                    attach_stdin: Some(true),
                    open_stdin: Some(true),
                    stdin_once: Some(true),
                    labels: Some(labels),
                    host_config: Some(HostConfig {
                        binds: Some(vec![format!("{volume}:{SIDECAR_TARGET}")]),
                        ..HostConfig::default()
                    }),
                    ..ContainerCreateBody::default()
                },
            )
            .await
            .map_err(|e| format!("create copy helper: {}", engine_message(&e)));
        let result = match helper {
            Ok(h) => {
                let r = self.stream_export(&source, &h.id).await;
                self.remove(&h.id).await.ok();
                r
            }
            Err(e) => Err(e),
        };
        self.remove(&source).await.ok();
        result
    }

    async fn stream_export(&self, source: &str, helper: &str) -> Result<(), String> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let mut attached = self
            .client
            .attach_container(helper, Some(opts))
            .await
            .map_err(|e| format!("attach copy helper: {}", engine_message(&e)))?;
        self.client
            .start_container(
                helper,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| format!("start copy helper: {}", engine_message(&e)))?;
        let output = tokio::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(chunk)) = attached.output.next().await {
                if text.len() < 4096 {
                    text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            text
        });
        let mut export = self.client.export_container(source);
        let mut sent: u64 = 0;
        while let Some(chunk) = export.next().await {
            let chunk = chunk.map_err(|e| format!("export: {}", engine_message(&e)))?;
            sent += chunk.len() as u64;
            attached
                .input
                .write_all(&chunk)
                .await
                .map_err(|e| format!("write to copy helper: {e}"))?;
        }
        attached
            .input
            .shutdown()
            .await
            .map_err(|e| format!("close copy helper input: {e}"))?;
        drop(attached.input);
        let status = self.wait(helper).await.map_err(|e| e.to_string())?;
        let out = output.await.unwrap_or_default();
        debug!(bytes = sent, "sidecar export streamed");
        if status.code != 0 {
            return Err(format!(
                "tar in the sidecar image exited with {} (sidecar images need /bin/sh and tar): {}",
                status.code,
                out.trim()
            ));
        }
        Ok(())
    }

    /// Creates the task container.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            entrypoint: spec.entrypoint.clone(),
            env: Some(spec.env.clone()),
            working_dir: Some(spec.working_dir.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            tty: Some(false),
            user: spec.security.user.clone(),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.clone()),
                nano_cpus: spec.nano_cpus,
                memory: spec.memory_bytes,
                memory_swap: spec.memory_swap_bytes,
                // Never privileged; everything else as the operator's policy says.
                privileged: Some(false),
                security_opt: spec
                    .security
                    .no_new_privileges
                    .then(|| vec!["no-new-privileges".to_string()]),
                cap_drop: Some(spec.security.cap_drop.clone()).filter(|c| !c.is_empty()),
                cap_add: Some(spec.security.cap_add.clone()).filter(|c| !c.is_empty()),
                pids_limit: spec.security.pids_limit,
                readonly_rootfs: Some(spec.security.read_only_rootfs),
                runtime: spec.security.runtime.clone(),
                network_mode: Some(spec.security.network.clone()),
                // Explicit, so a host-wide log driver of none/syslog cannot hide task output;
                // `local` keeps raw bytes (json-file turns invalid UTF-8 into U+FFFD) and is
                // what berth re-reads after a restart.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("local".to_string()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), "100m".to_string()),
                        ("max-file".to_string(), "5".to_string()),
                    ])),
                }),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let r = self
            .client
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(api("container create"))?;
        for w in r.warnings {
            warn!(container = %r.id, warning = %w, "engine warning on create");
        }
        Ok(r.id)
    }

    /// Whether the engine answers (`/_ping`, at most 5 s).
    pub async fn ping(&self) -> Result<(), DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            host: self.host.clone(),
            reason,
        };
        match tokio::time::timeout(Duration::from_secs(5), self.client.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable("no answer within 5 s".into())),
        }
    }

    /// Runs `cmd` inside running container `id` (as the container's user, with its env plus
    /// `env`), streaming its output.
    pub async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        working_dir: Option<&str>,
        env: Vec<String>,
    ) -> Result<ExecRun, DockerError> {
        let created = self
            .client
            .create_exec(
                id,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(false),
                    tty: Some(false),
                    cmd: Some(cmd),
                    env: Some(env).filter(|e| !e.is_empty()),
                    working_dir: working_dir.map(str::to_string),
                    ..ExecConfig::default()
                },
            )
            .await
            .map_err(api("exec create"))?;
        let started = self
            .client
            .start_exec(&created.id, None)
            .await
            .map_err(api("exec start"))?;
        let StartExecResults::Attached { output, .. } = started else {
            return Err(DockerError::Api {
                op: "exec start",
                reason: "the engine did not attach the command's output".into(),
            });
        };
        let output = output.filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok((Stream::Stdout, message))),
                Ok(LogOutput::StdErr { message }) => Some(Ok((Stream::Stderr, message))),
                Ok(LogOutput::Console { message }) => Some(Ok((Stream::Stdout, message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(api("exec output")(e))),
            }
        });
        Ok(ExecRun {
            id: created.id,
            output: Box::pin(output),
        })
    }

    /// Exit code of a finished exec (`None` while it still runs).
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, DockerError> {
        let r = self
            .client
            .inspect_exec(exec_id)
            .await
            .map_err(api("exec inspect"))?;
        Ok(if r.running == Some(true) {
            None
        } else {
            r.exit_code
        })
    }

    /// Sends `signal` (e.g. `SIGUSR1`) to the container's main process.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        self.client
            .kill_container(
                id,
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: signal.to_string(),
                }),
            )
            .await
            .map_err(api("container kill"))
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.client
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api("container start"))
    }

    /// Waits for the container to stop and reads how it ended.
    pub async fn wait(&self, id: &str) -> Result<ExitStatus, DockerError> {
        let mut s = self.client.wait_container(id, None::<WaitContainerOptions>);
        let code = match s.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard turns a non-zero exit into this error variant: it is a result, not a failure.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(api("container wait")(e)),
            None => {
                return Err(DockerError::Api {
                    op: "container wait",
                    reason: "engine closed the wait stream without a status".into(),
                });
            }
        };
        let oom_killed = match self.client.inspect_container(id, None).await {
            Ok(c) => c.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(e) => {
                warn!(container = id, error = %e, "cannot inspect exited container");
                false
            }
        };
        Ok(ExitStatus { code, oom_killed })
    }

    /// The container's state without waiting: `None` when it no longer exists, else whether
    /// it runs and, if not, how it ended.
    pub async fn inspect_state(&self, id: &str) -> Result<Option<(bool, ExitStatus)>, DockerError> {
        match self.client.inspect_container(id, None).await {
            Ok(c) => {
                let st = c.state.unwrap_or_default();
                Ok(Some((
                    st.running.unwrap_or(false),
                    ExitStatus {
                        code: st.exit_code.unwrap_or(0),
                        oom_killed: st.oom_killed.unwrap_or(false),
                    },
                )))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(api("container inspect")(e)),
        }
    }

    /// The container's log from `since` (whole seconds, inclusive), each entry with its
    /// timestamp; `follow` keeps the stream open until the container stops.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        since: i64,
    ) -> impl futures_util::Stream<
        Item = Result<(crate::protocol::Stream, bytes::Bytes), DockerError>,
    > + use<> {
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(since.max(0)).unwrap_or(i32::MAX))
            .build();
        self.client
            .logs(id, Some(opts))
            .filter_map(|item| async move {
                use bollard::container::LogOutput;
                match item {
                    Ok(LogOutput::StdOut { message }) => {
                        Some(Ok((crate::protocol::Stream::Stdout, message)))
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        Some(Ok((crate::protocol::Stream::Stderr, message)))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(api("container logs")(e))),
                }
            })
    }

    /// Stops gracefully: the engine sends the stop signal (SIGTERM), waits `grace`, then SIGKILL.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(t).build();
        match self.client.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(api("container stop")(e)),
        }
    }

    /// Removes a container (forced, with its anonymous volumes); a missing one is fine.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.client.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api("container remove")(e)),
        }
    }

    /// Containers labelled as this worker's.
    pub async fn list_managed(
        &self,
        worker_id: &str,
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_WORKER}={worker_id}"),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .client
            .list_containers(Some(opts))
            .await
            .map_err(api("container list"))?;
        Ok(list
            .into_iter()
            .map(|c| ManagedContainer {
                id: c.id.unwrap_or_default(),
                task_id: c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_TASK).cloned())
                    .unwrap_or_default(),
                execution_id: c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_EXECUTION).cloned())
                    .unwrap_or_default(),
                running: c
                    .state
                    .is_some_and(|s| s.to_string().eq_ignore_ascii_case("running")),
            })
            .collect())
    }
}
