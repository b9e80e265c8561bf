//! `berth dev`: the embedded control plane with a local worker, and the end-to-end demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use berth::config::{self, Overrides};
use berth::devserver::state::SubmitRequest;
use berth::devserver::{ControlPlane, ServerOptions, TaskLogs};
use berth::secret::Secret;
use berth::worker::Worker;
use clap::Args;

use super::host_env;
use super::run::shutdown_on_signals;
use super::submit::{exit_code_of, outcome_line};

/// Default listen address of `berth dev` (and server of `berth submit`).
const DEV_LISTEN: &str = "127.0.0.1:8780";
/// Image of the demo task, built from the host's static busybox.
const DEMO_IMAGE: &str = "berth-demo:latest";
/// How often the control plane's state is saved while `berth dev` runs (and once at exit).
const SAVE_EVERY: Duration = Duration::from_secs(2);

#[derive(Args)]
pub(super) struct DevArgs {
    /// Address of the control plane (WebSocket + HTTP API).
    #[arg(long, default_value = DEV_LISTEN)]
    pub(super) listen: SocketAddr,
    /// Concurrency slots of the local worker.
    #[arg(long, default_value_t = 4)]
    pub(super) max_concurrent_tasks: u32,
    /// Worker id of the local worker.
    #[arg(long, default_value = "dev-worker")]
    pub(super) worker_id: String,
    /// Behave as a plain oz/1 server (do not accept the berth/1 extensions).
    #[arg(long)]
    pub(super) oz_only: bool,
    /// Start only the control plane, no local worker (the worker key is printed).
    #[arg(long)]
    pub(super) no_worker: bool,
    /// Bearer key workers must present (default: a random one).
    #[arg(long, env = "BERTH_DEV_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
    /// Run one sample task end to end, print its outcome, and exit with its status.
    #[arg(long)]
    pub(super) demo: bool,
    /// Static busybox (Debian's busybox-static) from which the demo image is built locally at
    /// start-up (no registry needed).
    #[arg(long, default_value = berth::runtime::docker::rootfs::DEFAULT_BUSYBOX)]
    pub(super) busybox: PathBuf,
    /// Name:tag of the image built from --busybox.
    #[arg(long, value_name = "NAME:TAG", default_value = DEMO_IMAGE)]
    pub(super) demo_image: String,
    /// Where the dev worker and control plane keep their state across runs (default
    /// $XDG_STATE_HOME/berth/dev, else ~/.local/state/berth/dev).
    #[arg(long, value_name = "PATH")]
    pub(super) state_dir: Option<PathBuf>,
    /// Log level.
    #[arg(long, default_value = "info")]
    pub(super) log_level: String,
    /// Ask for task-log export over OTLP (PROTOCOL §8.3) in every task without its own: the
    /// server answers the identity request and receives the records itself (GET
    /// /v1/tasks/{id}/logs shows them).
    #[arg(long)]
    pub(super) task_logs: bool,
    /// Like --task-logs, but to this OTLP/HTTP collector base URL (records go to
    /// URL/v1/logs); implies --task-logs.
    #[arg(long, value_name = "URL")]
    pub(super) task_logs_endpoint: Option<String>,
}

pub(super) async fn dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let api_key = a
        .api_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let root = a
        .state_dir
        .clone()
        .unwrap_or_else(super::devdir::default_root);
    berth::private::create_dir(&root).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the dev state dir {}: {e} (pass --state-dir)",
            root.display()
        )
    })?;
    let cp_file = root.join(super::devdir::CONTROL_PLANE_FILE);
    let cp = ControlPlane::start_with(
        a.listen,
        ServerOptions {
            api_key: api_key.clone(),
            accept_berth: !a.oz_only,
            task_logs: match (&a.task_logs_endpoint, a.task_logs) {
                (Some(e), _) => TaskLogs::Endpoint(e.clone()),
                (None, true) => TaskLogs::Own,
                (None, false) => TaskLogs::Off,
            },
            archive_dir: Some(root.join(super::devdir::ARCHIVES_DIR)),
            ..ServerOptions::default()
        },
        super::devdir::load_control_plane(&cp_file),
    )
    .await?;
    let image = demo_image(&a).await;
    out!("berth dev: embedded control plane");
    out!("  worker endpoint  {}", cp.ws_url());
    out!("  HTTP API         {}/v1/tasks", cp.http_url());
    match (&a.task_logs_endpoint, a.task_logs) {
        (Some(e), _) => out!("  task logs        exported to {e}/v1/logs"),
        (None, true) => out!(
            "  task logs        exported to {}/otlp/v1/logs (GET /v1/tasks/{{id}}/logs)",
            cp.http_url()
        ),
        (None, false) => {}
    }
    out!(
        "  state            {} (kept across runs; --state-dir to change)",
        root.display()
    );
    match &image {
        Ok(image) => out!(
            "  submit a task    berth submit --server {} --image {image} -- echo hello",
            cp.http_url()
        ),
        Err(why) => out!("  submit a task    no demo image: {why}"),
    }
    out!(
        "  debug archive    curl -X POST {}/v1/tasks/<id>/debug-archive (objects land in {})",
        cp.http_url(),
        root.join(super::devdir::ARCHIVES_DIR).display()
    );
    let shutdown = shutdown_on_signals();
    tokio::spawn(print_archives(cp.clone(), shutdown.clone()));
    let saver = tokio::spawn(save_periodically(
        cp.clone(),
        cp_file.clone(),
        shutdown.clone(),
    ));
    let api_file = root.join(super::devdir::API_FILE);
    let worker_task = if a.no_worker {
        out!("  worker API key   {api_key}");
        out!(
            "  run a worker     BERTH_API_KEY={api_key} berth run --worker-id my-worker --control-plane-url {}",
            cp.ws_url()
        );
        None
    } else {
        let ov = Overrides {
            worker_id: Some(a.worker_id.clone()),
            api_key: Some(Secret::new(api_key)),
            control_plane_url: Some(cp.ws_url()),
            // Agents and setup events talk to this server, not to app.warp.dev.
            server_root_url: Some(cp.http_url()),
            max_concurrent_tasks: Some(a.max_concurrent_tasks),
            // One dir for every run: a task left running by Ctrl-C is re-attached next time.
            state_dir: Some(super::devdir::worker_state(&root)),
            // Never collides with an installed berth service on the default port; the
            // address is in the banner and in worker-api for berth status/logs/tasks.
            api_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let cfg = config::load_str(None, None, &ov, &host_env)
            .map_err(|e| anyhow::anyhow!("invalid dev configuration:\n{e}"))?;
        let worker = Worker::prepare(cfg, host_env("DOCKER_HOST").as_deref()).await?;
        let token = shutdown.clone();
        out!(
            "  local worker     {} ({} slots)",
            a.worker_id,
            a.max_concurrent_tasks
        );
        if let Some(addr) = worker.api_address() {
            if let Err(e) = berth::private::write_atomic(&api_file, format!("{addr}\n").as_bytes())
            {
                eprintln!(
                    "berth dev: cannot record the worker API address in {}: {e}",
                    api_file.display()
                );
            }
            out!("  worker API       http://{addr} (berth status, tasks, logs and cancel find it)");
        }
        Some(tokio::spawn(async move { worker.run(token, |_| {}).await }))
    };
    let code = if a.demo {
        let r = match &image {
            Ok(image) => demo(&cp, image).await,
            Err(why) => Err(anyhow::anyhow!("no demo image: {why}")),
        };
        shutdown.cancel();
        r?
    } else {
        shutdown.cancelled().await;
        ExitCode::SUCCESS
    };
    if let Some(w) = worker_task {
        let _ = w.await;
        let _ = std::fs::remove_file(&api_file);
    }
    let _ = saver.await;
    if let Err(e) = super::devdir::save_control_plane(&cp_file, &cp.saved()) {
        eprintln!(
            "berth dev: cannot save the control plane's state to {}: {e}",
            cp_file.display()
        );
    }
    cp.shutdown();
    Ok(code)
}

/// Prints each debug archive's answer once it arrives: where the object landed, or why
/// there is none.
async fn print_archives(cp: ControlPlane, stop: tokio_util::sync::CancellationToken) {
    let mut seen = std::collections::HashSet::new();
    let mut changes = cp.changes();
    loop {
        for r in cp.archives() {
            let Some(ack) = &r.ack else { continue };
            if !seen.insert(r.archive_id.clone()) {
                continue;
            }
            match (&r.path, ack.outcome.as_str()) {
                (Some(p), "uploaded") => out!(
                    "berth dev: debug archive {} of task {}: {} bytes at {}",
                    r.archive_id,
                    r.task_id,
                    ack.bytes.unwrap_or_default(),
                    p.display()
                ),
                _ => out!(
                    "berth dev: debug archive {} of task {}: {} ({})",
                    r.archive_id,
                    r.task_id,
                    ack.outcome,
                    ack.reason_code
                ),
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// Saves the control plane's state whenever it changed, until `stop`.
async fn save_periodically(
    cp: ControlPlane,
    path: PathBuf,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut saved_version = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let version = *cp.changes().borrow();
        if saved_version != Some(version) {
            match super::devdir::save_control_plane(&path, &cp.saved()) {
                Ok(()) => saved_version = Some(version),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save the dev control plane's state")
                }
            }
        }
    }
}

/// Builds the demo image from the static busybox; without one, says what to do instead.
async fn demo_image(a: &DevArgs) -> Result<String, String> {
    if !a.busybox.exists() {
        return Err(format!(
            "{} is missing (apt-get install busybox-static, then restart berth dev), or pass --busybox PATH with another static busybox",
            a.busybox.display()
        ));
    }
    let (name, tag) = a
        .demo_image
        .rsplit_once(':')
        .unwrap_or((&a.demo_image, "latest"));
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    berth::runtime::docker::rootfs::import_busybox_image(
        &docker,
        &a.busybox,
        name,
        tag,
        &[],
        &[("berth.demo", "true")],
    )
    .await
    .map_err(|e| format!("building the demo image {} failed: {e}", a.demo_image))?;
    Ok(format!("{name}:{tag}"))
}

pub(super) async fn demo(cp: &ControlPlane, image: &str) -> anyhow::Result<ExitCode> {
    let image = image.to_string();
    let rec = cp.submit(SubmitRequest {
        image: Some(image.clone()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"hello from task $TASK_ID\"; ls /workspace >/dev/null".into(),
        ],
        title: Some("berth demo".into()),
        ..SubmitRequest::default()
    });
    out!("demo: submitted {} ({image}: sh -c 'echo hello …')", rec.id);
    let done = loop {
        match cp.wait(&rec.id, Duration::from_secs(120)).await {
            Some(t) if t.state.is_terminal() => break t,
            Some(t) => out!("demo: still {:?} …", t.state),
            None => bail!("demo task vanished"),
        }
    };
    // The result follows the transcript on the wire; wait until all of it is stored.
    let mut changes = cp.changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cp.task(&rec.id).is_some_and(|t| t.complete()) {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    out!("demo: transcript as stored by the control plane:");
    for line in String::from_utf8_lossy(&cp.transcript(&rec.id).unwrap_or_default()).lines() {
        out!("  | {line}");
    }
    // With --task-logs the records were all received before the result (PROTOCOL §8.3).
    let logs = cp.task_logs(&rec.id);
    if !logs.is_empty() {
        out!("demo: {} task-log records received over OTLP:", logs.len());
        for r in &logs {
            let source = r
                .attributes
                .iter()
                .find(|(k, _)| k == "log.source" || k == "event.name")
                .map_or("", |(_, v)| v.as_str());
            out!("  | {source:<24} {}", r.body);
        }
    }
    out!("demo: {}", outcome_line(&done));
    Ok(exit_code_of(&done))
}
