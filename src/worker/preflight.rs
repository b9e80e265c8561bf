//! `berth verify`: one check per thing a worker depends on — the API key, the control plane
//! (a real handshake), Docker, the state dir and the policy — each a line that says what was
//! found or what to fix.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::backend::Backend;
use crate::backend::docker::DockerBackend;
use crate::config::Config;
use crate::control::session::{SessionSettings, probe};
use crate::runtime::docker::Docker;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked (`config`, `api key`, `control plane`, `docker`, `state dir`, `policy`).
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or what is wrong and how to fix it.
    pub detail: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the local API says of a daemon already running with this config (it holds the
/// connection; a second one under the same worker id would disturb it).
#[derive(Debug, Clone)]
pub struct Running {
    pub worker_id: String,
    pub connected: bool,
    pub protocol: Option<String>,
}

/// Every check after the config loaded (`config` was loaded with the key optional, so a
/// missing key is reported here, among the rest).
pub async fn run(
    config: &Config,
    docker_host_env: Option<&str>,
    running: Option<Running>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let key = !config.control_plane.api_key_source.is_empty();
    checks.push(if key {
        Check::ok(
            "api key",
            format!("from {}", config.control_plane.api_key_source),
        )
    } else {
        Check::fail(
            "api key",
            "none configured: set control_plane.api_key_file, --api-key-file or BERTH_API_KEY (under systemd: the credential api-key)",
        )
    });
    checks.push(control_plane(config, key, running).await);
    let (engine, policy_check) = match config.backend {
        crate::config::BackendKind::Docker => docker(config, docker_host_env).await,
        crate::config::BackendKind::Kubernetes => kubernetes(config).await,
    };
    checks.extend(engine);
    checks.push(state_dir(&config.state_dir, config.admission.min_free_disk));
    checks.push(policy_check);
    checks
}

/// The Docker engine's checks (the engine, DNS mitigation, sealed networks) and the policy
/// against its runtimes.
async fn docker(config: &Config, docker_host_env: Option<&str>) -> (Vec<Check>, Check) {
    let docker = Docker::connect(config.docker.host.as_deref(), docker_host_env);
    // Checks that need the engine's answer, listed after it.
    let mut extra = Vec::new();
    let (docker_check, policy_check) = match docker {
        Err(e) => (
            Check::fail("docker", e.to_string()),
            policy(config, Err("Docker is unreachable".into())),
        ),
        Ok(d) => match d.check().await {
            Err(e) => (
                Check::fail("docker", e.to_string()),
                policy(config, Err("Docker is unreachable".into())),
            ),
            Ok(info) => {
                let backend = DockerBackend::new(std::sync::Arc::new(d));
                let runtimes = super::check_runtimes(&backend, &config.policy)
                    .await
                    .map_err(|e| e.to_string());
                extra.push(dns(&info.version));
                if let Some(sealing) = backend.sealing() {
                    extra.push(match sealing.networks(None).await {
                        Ok(nets) => networks(config, &nets),
                        Err(e) => Check::fail("networks", format!("cannot list them: {e}")),
                    });
                }
                (
                    Check::ok(
                        "docker",
                        format!(
                            "engine {} (API {}, {}) answers",
                            info.version, info.api_version, info.platform
                        ),
                    ),
                    policy(config, runtimes),
                )
            }
        },
    };
    let mut engine = vec![docker_check];
    engine.extend(extra);
    (engine, policy_check)
}

/// The cluster's checks: the API server, every permission berth uses (asked of the API server
/// itself), and the policy against the cluster's RuntimeClasses.
async fn kubernetes(config: &Config) -> (Vec<Check>, Check) {
    use crate::backend::kubernetes::{KubernetesBackend, access};
    let unreachable = |e: String| {
        (
            vec![Check::fail("kubernetes", e)],
            policy(
                config,
                Err("the Kubernetes API server is unreachable".into()),
            ),
        )
    };
    let backend = match KubernetesBackend::connect(config.kubernetes.clone()).await {
        Ok(b) => b,
        Err(e) => return unreachable(e.to_string()),
    };
    let version = match tokio::time::timeout(
        Duration::from_secs(10),
        backend.client().apiserver_version(),
    )
    .await
    {
        Ok(Ok(v)) => v.git_version,
        Ok(Err(e)) => return unreachable(format!("{} does not answer: {e}", backend.url())),
        Err(_) => return unreachable(format!("{} does not answer within 10 s", backend.url())),
    };
    let ns = backend.namespace().to_string();
    let mut checks = vec![Check::ok(
        "kubernetes",
        format!(
            "API server {version} at {} answers; Jobs run in namespace {ns}",
            backend.url()
        ),
    )];
    checks.push(match access::review(&backend.client(), &ns).await {
        Ok(answers) => {
            let denied: Vec<String> = answers.into_iter().filter(|a| !a.allowed).map(|a| a.what).collect();
            if denied.is_empty() {
                Check::ok("permissions", format!("every verb berth uses is allowed in {ns}"))
            } else {
                Check::fail(
                    "permissions",
                    format!(
                        "not allowed in {ns}: {}; apply packaging/kubernetes/role.yaml (its RoleBinding names berth's service account)",
                        denied.join(", ")
                    ),
                )
            }
        }
        Err(e) => Check::fail("permissions", format!("cannot ask the API server: {e}")),
    });
    let runtimes = super::check_runtimes(&backend, &config.policy)
        .await
        .map_err(|e| {
            format!("{e} (listing RuntimeClasses needs packaging/kubernetes/clusterrole.yaml)")
        });
    (checks, policy(config, runtimes))
}

async fn control_plane(config: &Config, key: bool, running: Option<Running>) -> Check {
    const NAME: &str = "control plane";
    let cp = &config.control_plane;
    let url = crate::transcript::redaction::display_url(cp.url.as_str());
    if let Some(r) = running.filter(|r| r.worker_id == config.worker_id) {
        return if r.connected {
            Check::ok(
                NAME,
                format!(
                    "{url}: the running daemon is connected ({}); not dialled a second time",
                    r.protocol.as_deref().unwrap_or("oz/1")
                ),
            )
        } else {
            Check::fail(
                NAME,
                format!(
                    "{url}: the running daemon is NOT connected (its log says why; berth status)"
                ),
            )
        };
    }
    if !key {
        return Check::fail(NAME, format!("{url}: not dialled without an API key"));
    }
    let tls = match crate::control::tls::client_config(
        cp.ca_file.as_deref(),
        cp.client_cert_file.as_deref(),
        cp.client_key_file.as_deref(),
    ) {
        Ok(t) => t,
        Err(e) => return Check::fail(NAME, format!("{url}: {e}")),
    };
    let settings = SessionSettings {
        url: cp.url.clone(),
        worker_id: config.worker_id.clone(),
        api_key: cp.api_key.clone(),
        tls,
        heartbeat_interval: cp.heartbeat_interval,
        max_message_size: usize::try_from(cp.max_message_size).unwrap_or(usize::MAX),
    };
    match tokio::time::timeout(Duration::from_secs(15), probe(&settings)).await {
        Ok(Ok(berth)) => Check::ok(
            NAME,
            format!(
                "{url}: handshake accepted the key ({})",
                if berth { "berth/1" } else { "oz/1" }
            ),
        ),
        Ok(Err(e)) => Check::fail(NAME, format!("{url}: {e}")),
        Err(_) => Check::fail(NAME, format!("{url}: no answer within 15s")),
    }
}

/// The state dir: there (or creatable), writable, private, with room.
fn state_dir(dir: &Path, min_free: u64) -> Check {
    const NAME: &str = "state dir";
    let shown = dir.display();
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".berth-verify-{}", std::process::id()));
    if let Err(e) = crate::private::write(&probe, b"") {
        return Check::fail(
            NAME,
            format!(
                "{shown}: {} is not writable by this user ({e}); berth's user must own state_dir",
                existing.display()
            ),
        );
    }
    let _ = std::fs::remove_file(&probe);
    let free = crate::supervisor::capacity::free_disk(existing).unwrap_or(0);
    if free < min_free {
        return Check::fail(
            NAME,
            format!(
                "{shown}: {} free, below min_free_disk {}: tasks would be rejected",
                crate::units::human_bytes(free),
                crate::units::human_bytes(min_free)
            ),
        );
    }
    let mode = if existing == dir {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o777) {
            Ok(m) if m & 0o077 != 0 => {
                return Check::fail(
                    NAME,
                    format!(
                        "{shown}: mode {m:04o} lets other users in; chmod 0700 (berth also tightens it at start)"
                    ),
                );
            }
            Ok(m) => format!("mode {m:04o}"),
            Err(e) => return Check::fail(NAME, format!("{shown}: {e}")),
        }
    } else {
        "does not exist yet; berth creates it (0700)".to_string()
    };
    Check::ok(
        NAME,
        format!(
            "{shown}: writable, {mode}, {} free",
            crate::units::human_bytes(free)
        ),
    )
}

/// Whether the engine lets a sealed task's DNS out (CVE-2024-29018), and what berth does.
fn dns(engine: &str) -> Check {
    use crate::spec::dns::Exposure;
    let engine_says = match crate::spec::dns::exposure(engine) {
        Exposure::Affected => format!(
            "engine {engine} forwards an internal network's unknown names to the host's resolvers, from the host when they are on loopback (CVE-2024-29018; fixed in 26.0.0, 25.0.4, 23.0.11)"
        ),
        Exposure::Fixed => format!("engine {engine} is not affected by CVE-2024-29018"),
        Exposure::Unknown => format!("engine version {engine:?} unknown"),
    };
    Check::ok(
        "dns",
        format!(
            "{engine_says}; allowlisted tasks resolve only through their sealed network's gateway, where nothing answers, and egress-none tasks have no resolver: mitigation in force"
        ),
    )
}

/// The sealed networks on the engine: this worker's (in use, or left to remove at the next
/// start), another instance's, and unused ones of other worker ids, which only an operator can
/// judge (each holds one of the engine's address pools).
fn networks(config: &Config, nets: &[crate::runtime::SealedNetwork]) -> Check {
    use crate::spec::owner::{Owner, Ownership};
    let instance = crate::journal::existing_instance(&config.state_dir)
        .ok()
        .flatten()
        .unwrap_or_default();
    let me = Owner::new(&config.worker_id, &instance);
    let mut lines = Vec::new();
    let mut strays = Vec::new();
    for n in nets {
        if n.worker_id != config.worker_id {
            if n.containers == 0 {
                strays.push(format!("{} (worker {})", n.name, n.worker_id));
            }
            continue;
        }
        lines.push(match (me.ownership(n.instance.as_deref()), n.containers) {
            (Ownership::Other(i), _) => format!("{} is another berth instance's ({i})", n.name),
            (_, 0) => format!("{} unused: removed at this worker's next start", n.name),
            (_, c) => format!("{} in use by {c} task container(s)", n.name),
        });
    }
    if !strays.is_empty() {
        lines.push(format!(
            "{} unused sealed network(s) of other worker ids, which no berth of this config removes: {}; if those berths are gone (a one-shot job killed with SIGKILL), remove them with docker network rm: each holds one of the engine's address pools",
            strays.len(),
            strays.join(", ")
        ));
    }
    if lines.is_empty() {
        return Check::ok("networks", "no sealed network left on the engine");
    }
    Check::ok("networks", lines.join("; "))
}

/// The policy's runtimes are registered; a summary of what tasks get.
fn policy(config: &Config, runtimes: Result<(), String>) -> Check {
    const NAME: &str = "policy";
    let p = &config.policy;
    let names: Vec<&str> = p
        .runtimes()
        .into_iter()
        .map(|r| r.unwrap_or("default"))
        .collect();
    if let Err(e) = runtimes {
        return Check::fail(NAME, format!("runtimes {}: {e}", names.join(", ")));
    }
    let egress = match p.egress.mode {
        crate::spec::egress::Mode::Open => "egress open".to_string(),
        crate::spec::egress::Mode::None => "egress none".to_string(),
        crate::spec::egress::Mode::Allowlist => {
            format!("egress allowlist ({} entries)", p.egress.allow.len())
        }
    };
    let profile = match p.profile {
        crate::spec::policy::Profile::Default => "default",
        crate::spec::policy::Profile::Strict => "strict",
    };
    Check::ok(
        NAME,
        format!(
            "runtimes {} registered; {egress}; profile {profile}",
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_says_whether_the_engine_leaks_dns_and_that_berth_closes_it() {
        let c = dns("20.10.24+dfsg1");
        assert!(c.ok, "{c:?}");
        assert!(
            c.detail.contains("CVE-2024-29018") && c.detail.contains("20.10.24+dfsg1"),
            "{c:?}"
        );
        assert!(c.detail.contains("mitigation in force"), "{c:?}");
        assert!(dns("27.1.0").detail.contains("not affected"));
    }

    #[test]
    fn verify_names_leftover_sealed_networks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::journal::INSTANCE_FILE), "me\n").unwrap();
        let yaml = format!("worker_id: w1\nstate_dir: {}\n", dir.path().display());
        let config = crate::config::load_str(
            Some(&yaml),
            None,
            &crate::config::Overrides {
                api_key: Some(crate::secret::Secret::new("k")),
                ..crate::config::Overrides::default()
            },
            &|_| None,
        )
        .unwrap();
        let net =
            |name: &str, worker: &str, instance: &str, containers| crate::runtime::SealedNetwork {
                name: name.into(),
                worker_id: worker.into(),
                bridge: None,
                instance: Some(instance.into()),
                containers,
            };
        let c = networks(
            &config,
            &[
                net("mine-busy", "w1", "me", 2),
                net("mine-idle", "w1", "me", 0),
                net("theirs", "w1", "other", 0),
                net("stray", "w9", "x", 0),
                net("live", "w8", "y", 1),
            ],
        );
        for want in [
            "mine-busy in use by 2",
            "mine-idle unused: removed at this worker's next start",
            "theirs is another berth instance's (other)",
            "1 unused sealed network(s) of other worker ids",
            "stray (worker w9)",
        ] {
            assert!(c.detail.contains(want), "{want:?} in {c:?}");
        }
        assert!(!c.detail.contains("live"), "{c:?}");
        assert_eq!(
            networks(&config, &[]).detail,
            "no sealed network left on the engine"
        );
    }

    #[test]
    fn a_writable_private_state_dir_passes_and_a_wide_one_fails() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let c = state_dir(&dir, 0);
        assert!(c.ok && c.detail.contains("does not exist yet"), "{c:?}");
        crate::private::create_dir(&dir).unwrap();
        let c = state_dir(&dir, 0);
        assert!(c.ok && c.detail.contains("mode 0700"), "{c:?}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = state_dir(&dir, 0);
        assert!(!c.ok && c.detail.contains("0755"), "{c:?}");
        let c = state_dir(d.path(), u64::MAX);
        assert!(!c.ok && c.detail.contains("min_free_disk"), "{c:?}");
        assert!(
            std::fs::read_dir(d.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".berth-verify")),
            "the probe file is removed"
        );
    }
}
