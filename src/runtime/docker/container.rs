//! The life of one task container: create, start, exec, signal, logs, wait, stop, remove, and
//! the list of this worker's containers.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use tracing::warn;

use super::{Docker, api, engine_message, is_status};

/// Least time between two lookups of one container's cgroup through its process.
const PID_LOOKUP_EVERY: Duration = Duration::from_millis(100);
/// How long a container's cgroup is looked for by its id alone before its process is asked.
const PID_LOOKUP_AFTER: Duration = Duration::from_secs(1);
use crate::protocol::Stream;
use crate::runtime::ContainerSpec;
use crate::runtime::{
    ExecRun, ExitStatus, LogEntry, LogStream, ManagedContainer, OutputStream, RuntimeError,
};
use crate::spec::{LABEL_EXECUTION, LABEL_INSTANCE, LABEL_MANAGED, LABEL_TASK, LABEL_WORKER};
use crate::transcript::split_timestamp;

impl Docker {
    /// Creates the task container.
    pub(super) async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
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
                init: Some(spec.init),
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
                tmpfs: Some(
                    spec.security
                        .tmpfs
                        .iter()
                        .cloned()
                        .collect::<HashMap<_, _>>(),
                )
                .filter(|t| !t.is_empty()),
                runtime: spec.security.runtime.clone(),
                network_mode: Some(spec.network_mode.clone()),
                dns: Some(spec.dns.clone()).filter(|d| !d.is_empty()),
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

    /// One statistics reading (`one-shot`: no second sample for CPU percentages is waited for).
    pub(super) async fn usage(
        &self,
        id: &str,
    ) -> Result<Option<crate::runtime::UsageSample>, RuntimeError> {
        let opts = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut s = self.client.stats(id, Some(opts));
        let r = match s.next().await {
            None => return Ok(None),
            Some(Err(e)) if is_status(&e, 404) => return Ok(None),
            Some(Err(e)) => return Err(api("container stats")(e)),
            Some(Ok(r)) => r,
        };
        let mem = r.memory_stats.unwrap_or_default();
        let (mut read_bytes, mut write_bytes) = (0, 0);
        for e in r
            .blkio_stats
            .and_then(|b| b.io_service_bytes_recursive)
            .unwrap_or_default()
        {
            match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
                Some("read") => read_bytes += e.value.unwrap_or(0),
                Some("write") => write_bytes += e.value.unwrap_or(0),
                _ => {}
            }
        }
        let (mut rx_bytes, mut tx_bytes) = (0, 0);
        for n in r.networks.unwrap_or_default().values() {
            rx_bytes += n.rx_bytes.unwrap_or(0);
            tx_bytes += n.tx_bytes.unwrap_or(0);
        }
        Ok(Some(crate::runtime::UsageSample {
            cpu_ns: r
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0),
            memory: mem.usage.unwrap_or(0),
            memory_max: mem.max_usage,
            read_bytes,
            write_bytes,
            rx_bytes,
            tx_bytes,
        }))
    }

    /// A reading from the container's cgroup files, located once per container: by its id
    /// where the engine puts cgroups in the usual place (readable from the start call on),
    /// else through its main process (an engine call: after [`PID_LOOKUP_AFTER`], then at most
    /// every [`PID_LOOKUP_EVERY`]).
    pub(super) async fn quick_usage(&self, id: &str) -> Option<crate::runtime::UsageSample> {
        let known = self.cgroups.lock().get(id).cloned();
        let located = match known {
            Some(located) => located?,
            None => match super::cgroup::locate_id(id) {
                Some(located) => {
                    let mut cgroups = self.cgroups.lock();
                    cgroups.insert(id.to_string(), Some(located.clone()));
                    located
                }
                None => self.locate_by_pid(id).await?,
            },
        };
        // Reading a few small files does not block for long: no blocking-pool hop needed.
        super::cgroup::read(&located).ok()
    }

    /// Locates a running container's cgroup through its main process; a failure on a running
    /// container is remembered (the files are not readable from here).
    async fn locate_by_pid(&self, id: &str) -> Option<super::cgroup::Located> {
        let now = std::time::Instant::now();
        {
            // Not before the id has had PID_LOOKUP_AFTER to work: an inspect during the start
            // call waits for the whole start, and a sampler held up by it misses short tasks.
            let mut due = self.pid_lookups.lock();
            let next = *due.entry(id.to_string()).or_insert(now + PID_LOOKUP_AFTER);
            if now < next {
                return None;
            }
            due.insert(id.to_string(), now + PID_LOOKUP_EVERY);
        }
        let state = self.client.inspect_container(id, None).await.ok()?.state?;
        let pid = state
            .pid
            .filter(|p| *p > 0 && state.running == Some(true))?;
        let located = super::cgroup::locate_pid(pid);
        self.cgroups.lock().insert(id.to_string(), located.clone());
        located
    }

    /// Whether the engine accepts a new connection and answers (`/_ping`, at most 5 s).
    pub(super) async fn ping(&self) -> Result<(), RuntimeError> {
        let unreachable = |reason: String| RuntimeError::Unreachable {
            host: self.host.clone(),
            reason,
        };
        // A client of its own, so the ping dials a new connection: a stopping dockerd closes
        // its listener first and still answers on connections already open (the pool's).
        let fresh = bollard::Docker::connect_with_host(&self.host)
            .map_err(|e| unreachable(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(5), fresh.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable("no answer within 5 s".into())),
        }
    }

    /// Runs `cmd` inside running container `id` (as the container's user, with its env plus
    /// `env`), streaming its output.
    pub(super) async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        working_dir: Option<&str>,
        env: Vec<String>,
    ) -> Result<ExecRun, RuntimeError> {
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
            return Err(RuntimeError::Api {
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
    pub(super) async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
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
    pub(super) async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
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

    /// Freezes the container's processes.
    pub(super) async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.client
            .pause_container(id)
            .await
            .map_err(api("container pause"))
    }

    /// Thaws a paused container; one that is not paused is fine.
    pub(super) async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.client.unpause_container(id).await {
            Ok(()) => Ok(()),
            // The engine answers 409 (or 500 on older versions) "... is not paused".
            Err(e) if engine_message(&e).contains("not paused") => Ok(()),
            Err(e) => Err(api("container unpause")(e)),
        }
    }

    /// Starts a created container.
    pub(super) async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.client
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api("container start"))
    }

    /// Waits for the container to stop and reads how it ended.
    pub(super) async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let mut s = self.client.wait_container(id, None::<WaitContainerOptions>);
        let code = match s.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard turns a non-zero exit into this error variant: it is a result, not a failure.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(api("container wait")(e)),
            None => {
                return Err(RuntimeError::Api {
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
    pub(super) async fn inspect_state(
        &self,
        id: &str,
    ) -> Result<Option<(bool, ExitStatus)>, RuntimeError> {
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

    /// The container's name without its leading `/`, if it can be read.
    pub(super) async fn container_name(&self, id: &str) -> Option<String> {
        let c = self.client.inspect_container(id, None).await.ok()?;
        let name = c.name?;
        let name = name.trim_start_matches('/');
        (!name.is_empty()).then(|| name.to_string())
    }

    /// The container's log from `since` (whole seconds, inclusive), each entry with its
    /// timestamp; `follow` keeps the stream open until the container stops.
    pub(super) fn logs(&self, id: &str, follow: bool, since: i64) -> LogStream {
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(since.max(0)).unwrap_or(i32::MAX))
            .build();
        self.log_entries(id, opts)
    }

    /// The last `entries` entries of the container's log, with their timestamps.
    pub(super) fn log_tail(&self, id: &str, entries: u32) -> LogStream {
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&entries.to_string())
            .build();
        self.log_entries(id, opts)
    }

    /// The container's live stdout and stderr (the attach stream: what `docker run` shows,
    /// the engine's fast path; no timestamps, no replay of earlier output).
    pub(super) async fn attach(&self, id: &str) -> Result<OutputStream, RuntimeError> {
        let opts = bollard::query_parameters::AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .client
            .attach_container(id, Some(opts))
            .await
            .map_err(api("container attach"))?;
        let output = attached.output.filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok((Stream::Stdout, message))),
                Ok(LogOutput::StdErr { message }) => Some(Ok((Stream::Stderr, message))),
                Ok(LogOutput::Console { message }) => Some(Ok((Stream::Stdout, message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(api("container attach")(e))),
            }
        });
        Ok(Box::pin(output))
    }

    fn log_entries(&self, id: &str, opts: bollard::query_parameters::LogsOptions) -> LogStream {
        let entries = self
            .client
            .logs(id, Some(opts))
            .filter_map(|item| async move {
                let (stream, message) = match item {
                    Ok(LogOutput::StdOut { message }) => (Stream::Stdout, message),
                    Ok(LogOutput::StdErr { message }) => (Stream::Stderr, message),
                    Ok(_) => return None,
                    Err(e) => return Some(Err(api("container logs")(e))),
                };
                // With `timestamps`, every entry starts with the engine's RFC 3339 stamp.
                match split_timestamp(&message) {
                    Some((ts, payload)) => {
                        let start = message.len() - payload.len();
                        Some(Ok(LogEntry {
                            stream,
                            ts,
                            bytes: message.slice(start..),
                        }))
                    }
                    None => {
                        warn!(
                            bytes = message.len(),
                            "log entry without a timestamp ignored"
                        );
                        None
                    }
                }
            });
        Box::pin(entries)
    }

    /// Stops gracefully: the engine sends the stop signal (SIGTERM), waits `grace`, then SIGKILL.
    pub(super) async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(t).build();
        match self.client.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(api("container stop")(e)),
        }
    }

    /// Removes a container (forced, with its anonymous volumes); a missing one is fine.
    pub(super) async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.cgroups.lock().remove(id);
        self.pid_lookups.lock().remove(id);
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
    pub(super) async fn list_managed(
        &self,
        worker_id: &str,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
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
                instance: c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_INSTANCE).cloned()),
                running: c
                    .state
                    .is_some_and(|s| s.to_string().eq_ignore_ascii_case("running")),
            })
            .collect())
    }
}
