//! Reload (SIGHUP): which keys a running worker can take, and applying them to task settings
//! and the supervisor.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::task_settings;
use crate::config::Config;
use crate::task::TaskEnv;

/// Keys a reload cannot change in a running worker (name, whether it differs).
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("worker_id", old.worker_id != new.worker_id);
    check("state_dir", old.state_dir != new.state_dir);
    check("shutdown_mode", old.shutdown_mode != new.shutdown_mode);
    check("shutdown_grace", old.shutdown_grace != new.shutdown_grace);
    check("control_plane", old.control_plane != new.control_plane);
    check("backend.docker.host", old.docker.host != new.docker.host);
    check("backend.kind", old.backend != new.backend);
    // The Kubernetes backend is built with its section (client, Job shape) at start-up.
    check("backend.kubernetes", old.kubernetes != new.kubernetes);
    check("api", old.api != new.api);
    // The archive service is built once, with its directory, bounds and slots.
    check(
        "debug_log_capture",
        old.debug_log_capture != new.debug_log_capture,
    );
    check(
        "transcript.max_bytes/tail_bytes",
        (old.transcript.max_bytes, old.transcript.tail_bytes)
            != (new.transcript.max_bytes, new.transcript.tail_bytes),
    );
    changed
}

/// Applies reloaded configurations: task settings (policy, resources, environments, images,
/// env, volumes, redaction) for tasks started from now on, and slots, labels and admission in
/// the supervisor. Keys that need a restart are reported and keep their running values.
pub(super) async fn apply_reloads(
    mut current: Config,
    mut rx: mpsc::Receiver<Config>,
    env: Arc<TaskEnv>,
    reloads: Arc<crate::admin::reloads::Reloads>,
    supervisor: mpsc::Sender<crate::supervisor::Command>,
    stop: CancellationToken,
) {
    loop {
        let new = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = stop.cancelled() => return,
        };
        let ignored = restart_only(&current, &new);
        if !ignored.is_empty() {
            warn!(keys = ?ignored, "reload: these settings only take effect after a restart; the running values are kept");
        }
        let mut new = new;
        // A runtime the engine does not have is refused here as at start-up: the running
        // policy stays, rather than tasks failing (or running elsewhere) later.
        let restart: Vec<String> = ignored.iter().map(|k| k.to_string()).collect();
        if let Err(e) = super::check_runtimes(env.backend.as_ref(), &new.policy).await {
            warn!(error = %e, "reload refused: the running policy is kept");
            reloads.record(false, format!("refused: {e}"), restart);
            continue;
        }
        new.worker_id = current.worker_id.clone();
        new.state_dir = current.state_dir.clone();
        new.shutdown_mode = current.shutdown_mode;
        new.shutdown_grace = current.shutdown_grace;
        new.control_plane = current.control_plane.clone();
        new.docker.host = current.docker.host.clone();
        new.backend = current.backend;
        new.kubernetes = current.kubernetes.clone();
        new.api = current.api.clone();
        new.debug_log_capture = current.debug_log_capture.clone();
        new.transcript.max_bytes = current.transcript.max_bytes;
        new.transcript.tail_bytes = current.transcript.tail_bytes;
        env.set_settings(task_settings(&new));
        let r = crate::supervisor::Reconfigure {
            max: new.max_concurrent_tasks,
            labels: new.labels.clone(),
            policy: new.policy.clone(),
            reserve: new.admission.reserve,
            min_free_disk: new.admission.min_free_disk,
        };
        let r = crate::supervisor::Command::Reconfigure(Box::new(r));
        if supervisor.send(r).await.is_err() {
            return;
        }
        reloads.record(
            true,
            format!(
                "applied ({} slots, log level {})",
                new.max_concurrent_tasks, new.log_level
            ),
            restart,
        );
        current = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Config {
        let ov = crate::config::Overrides {
            api_key: Some(crate::secret::Secret::new("k")),
            ..crate::config::Overrides::default()
        };
        crate::config::load_str(Some(yaml), None, &ov, &|_| None).unwrap()
    }

    #[test]
    fn a_reload_names_exactly_the_keys_that_need_a_restart() {
        let old = load("worker_id: w\nmax_concurrent_tasks: 2\n");
        let live = load(
            "worker_id: w\nmax_concurrent_tasks: 8\nlabels: {a: b}\nlog: {level: debug}\nbackend:\n  docker:\n    policy:\n      timeout: 1h\n",
        );
        assert!(restart_only(&old, &live).is_empty());
        let heavy = load(
            "worker_id: other\nstate_dir: /srv/berth\nshutdown_mode: cancel\nshutdown_grace: 30s\ncontrol_plane:\n  heartbeat_interval: 5s\nbackend:\n  docker:\n    host: unix:///run/d.sock\napi:\n  listen: off\ntranscript:\n  max_bytes: 1GiB\n",
        );
        assert_eq!(
            restart_only(&old, &heavy),
            [
                "worker_id",
                "state_dir",
                "shutdown_mode",
                "shutdown_grace",
                "control_plane",
                "backend.docker.host",
                "api",
                "transcript.max_bytes/tail_bytes"
            ]
        );
    }
}
