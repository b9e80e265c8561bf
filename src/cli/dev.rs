//! `berth dev`: the embedded control plane with a local worker, and the end-to-end demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use berth::config::{self, Overrides};
use berth::devserver::state::SubmitRequest;
use berth::devserver::{ControlPlane, ServerOptions};
use berth::secret::Secret;
use berth::worker::Worker;
use clap::Args;

use super::host_env;
use super::run::shutdown_on_signals;
use super::submit::{exit_code_of, outcome_line};

/// Default listen address of `berth dev` (and server of `berth submit`).
const DEV_LISTEN: &str = "127.0.0.1:8780";
/// Image of the demo task when built from the host's static busybox.
const DEMO_IMAGE: (&str, &str) = ("berth-demo", "latest");

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
    /// Static busybox used to build the demo image locally (no registry needed).
    #[arg(long, default_value = berth::runtime::docker::rootfs::DEFAULT_BUSYBOX)]
    pub(super) busybox: PathBuf,
    /// Log level.
    #[arg(long, default_value = "info")]
    pub(super) log_level: String,
}

pub(super) async fn dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let api_key = a
        .api_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let cp = ControlPlane::start(
        a.listen,
        ServerOptions {
            api_key: api_key.clone(),
            accept_berth: !a.oz_only,
            ..ServerOptions::default()
        },
    )
    .await?;
    println!("berth dev: embedded control plane");
    println!("  worker endpoint  {}", cp.ws_url());
    println!("  HTTP API         {}/v1/tasks", cp.http_url());
    println!(
        "  submit a task    berth submit --server {} --image busybox -- echo hello",
        cp.http_url()
    );
    let shutdown = shutdown_on_signals();
    let worker_task = if a.no_worker {
        println!("  worker API key   {api_key}");
        println!(
            "  run a worker     BERTH_API_KEY={api_key} berth run --worker-id my-worker --control-plane-url {}",
            cp.ws_url()
        );
        None
    } else {
        let state_dir = std::env::temp_dir().join(format!("berth-dev-{}", std::process::id()));
        let ov = Overrides {
            worker_id: Some(a.worker_id.clone()),
            api_key: Some(Secret::new(api_key)),
            control_plane_url: Some(cp.ws_url()),
            // Agents and setup events talk to this server, not to app.warp.dev.
            server_root_url: Some(cp.http_url()),
            max_concurrent_tasks: Some(a.max_concurrent_tasks),
            state_dir: Some(state_dir),
            // Never collides with an installed berth service on the default port.
            api_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let cfg = config::load_str(None, None, &ov, &host_env)
            .map_err(|e| anyhow::anyhow!("invalid dev configuration:\n{e}"))?;
        let worker = Worker::prepare(cfg, host_env("DOCKER_HOST").as_deref()).await?;
        let token = shutdown.clone();
        println!(
            "  local worker     {} ({} slots)",
            a.worker_id, a.max_concurrent_tasks
        );
        Some(tokio::spawn(async move { worker.run(token, |_| {}).await }))
    };
    let code = if a.demo {
        let r = demo(&cp, &a).await;
        shutdown.cancel();
        r?
    } else {
        shutdown.cancelled().await;
        ExitCode::SUCCESS
    };
    if let Some(w) = worker_task {
        let _ = w.await;
    }
    cp.shutdown();
    Ok(code)
}

pub(super) async fn demo(cp: &ControlPlane, a: &DevArgs) -> anyhow::Result<ExitCode> {
    let image = if a.busybox.exists() {
        let docker = bollard::Docker::connect_with_local_defaults()?;
        berth::runtime::docker::rootfs::import_busybox_image(
            &docker,
            &a.busybox,
            DEMO_IMAGE.0,
            DEMO_IMAGE.1,
            &[],
            &[("berth.demo", "true")],
        )
        .await?;
        format!("{}:{}", DEMO_IMAGE.0, DEMO_IMAGE.1)
    } else {
        println!(
            "  ({} not found: the demo pulls busybox:1.36 instead)",
            a.busybox.display()
        );
        "busybox:1.36".to_string()
    };
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
    println!("demo: submitted {} ({image}: sh -c 'echo hello …')", rec.id);
    let done = loop {
        match cp.wait(&rec.id, Duration::from_secs(120)).await {
            Some(t) if t.state.is_terminal() => break t,
            Some(t) => println!("demo: still {:?} …", t.state),
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
    println!("demo: transcript as stored by the control plane:");
    for line in String::from_utf8_lossy(&cp.transcript(&rec.id).unwrap_or_default()).lines() {
        println!("  | {line}");
    }
    println!("demo: {}", outcome_line(&done));
    Ok(exit_code_of(&done))
}
