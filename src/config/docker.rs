//! `backend.docker.*` with the `-v` and `-e` flags: the engine, images, binds, operator env.

use std::path::PathBuf;
use std::time::Duration;

use super::collector::Collector;
use super::overrides::Overrides;
use super::raw::{PullPolicy, RawDocker};

/// The Go worker's fallback image.
pub const DEFAULT_IMAGE: &str = "ubuntu:22.04";
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Docker backend settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerBackend {
    /// Engine address (`unix://…`, `tcp://…`); `None` = `DOCKER_HOST` or the default socket.
    pub host: Option<String>,
    /// Image when the assignment names none.
    pub default_image: String,
    pub pull_policy: PullPolicy,
    /// Operator binds (config entries, then `-v` flags).
    pub volumes: Vec<String>,
    /// Operator env (config entries, then `-e` flags), host values resolved.
    pub environment: Vec<(String, String)>,
    /// Time between SIGTERM and SIGKILL when stopping a task.
    pub stop_grace_period: Duration,
    /// Docker CLI config file with registry credentials (`auths`); `None` = the service
    /// user's `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub auth_config: Option<PathBuf>,
}

/// Validates a `HOST:CONTAINER[:MODE]` bind.
pub fn validate_volume(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, None),
        [h, c, m] => (*h, *c, Some(*m)),
        _ => {
            return Err(format!(
                "{v:?} is not HOST:CONTAINER[:MODE] (e.g. /srv/cache:/cache:ro)"
            ));
        }
    };
    if host.is_empty() {
        return Err(format!("{v:?} has an empty host path or volume name"));
    }
    if !host.starts_with('/')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "{v:?}: host side must be an absolute path or a volume name"
        ));
    }
    if !container.starts_with('/') {
        return Err(format!("{v:?}: container path must be absolute"));
    }
    if let Some(m) = mode {
        let ok = !m.is_empty()
            && m.split(',').all(|o| {
                matches!(
                    o,
                    "ro" | "rw"
                        | "z"
                        | "Z"
                        | "nocopy"
                        | "shared"
                        | "rshared"
                        | "slave"
                        | "rslave"
                        | "private"
                        | "rprivate"
                )
            });
        if !ok {
            return Err(format!(
                "{v:?}: mode {m:?} is not one of ro, rw, z, Z, nocopy or a propagation mode"
            ));
        }
    }
    Ok(())
}

/// Splits `-e KEY[=VALUE]`; a bare `KEY` copies the host's value (empty if unset).
pub fn parse_env_flag(
    flag: &str,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    let (k, v) = match flag.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (flag.to_string(), host(flag).unwrap_or_default()),
    };
    if k.is_empty() || k.contains('\0') {
        return Err(format!(
            "{flag:?} has no variable name (use KEY=VALUE or KEY)"
        ));
    }
    Ok((k, v))
}

/// The operator env of a backend section (`key`: its `environment` list), then the `-e`
/// flags, which win; an entry without `value` copies the host's.
pub(super) fn operator_env(
    key: &str,
    entries: Option<&[super::raw::RawEnvEntry]>,
    ov: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
    c: &mut Collector<'_>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in entries.into_iter().flatten() {
        let name = e.name.value.clone();
        if name.is_empty() || name.contains('=') {
            c.at(
                &format!("{key}.name"),
                Some(&e.name),
                format!("{name:?} is not a variable name"),
                "use a name without '='; put the value under `value:`",
            );
            continue;
        }
        let value = e
            .value
            .clone()
            .unwrap_or_else(|| host_env(&name).unwrap_or_default());
        out.push((name, value));
    }
    for flag in &ov.env {
        match parse_env_flag(flag, host_env) {
            Ok(kv) => out.push(kv),
            Err(p) => c.at::<String>("--env", None, p, "use -e KEY=VALUE or -e KEY"),
        }
    }
    out
}

/// `backend.docker.*` with `-v` and `-e`.
pub(super) fn docker_section(
    docker: RawDocker,
    ov: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
    c: &mut Collector<'_>,
) -> DockerBackend {
    let stop_grace_period = c.duration_min(
        "backend.docker.stop_grace_period",
        docker.stop_grace_period.as_ref(),
        DEFAULT_STOP_GRACE,
        Duration::ZERO,
        "use a duration such as 30s, 5m or 1h30m",
    );
    let default_image = docker
        .default_image
        .as_ref()
        .map(|s| s.value.clone())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    if let Err(e) = crate::spec::image::ImageRef::parse(&default_image) {
        c.at(
            "backend.docker.default_image",
            docker.default_image.as_ref(),
            e.to_string(),
            "use an image reference such as ubuntu:22.04",
        );
    }
    let host = docker.host.as_ref().map(|s| s.value.clone());
    if let Some(h) = &docker.host
        && !["unix://", "tcp://", "http://"]
            .iter()
            .any(|p| h.value.starts_with(p))
    {
        c.at(
            "backend.docker.host",
            Some(h),
            format!("{:?} is not a Docker host address", h.value),
            "use unix:///var/run/docker.sock or tcp://host:2375",
        );
    }

    let mut volumes = Vec::new();
    for v in docker.volumes.iter().flatten() {
        if let Err(p) = validate_volume(&v.value) {
            c.at(
                "backend.docker.volumes",
                Some(v),
                p,
                "write HOST:CONTAINER[:ro|rw]",
            );
        }
        volumes.push(v.value.clone());
    }
    for v in &ov.volumes {
        if let Err(p) = validate_volume(v) {
            c.at::<String>("--volume", None, p, "write HOST:CONTAINER[:ro|rw]");
        }
        volumes.push(v.clone());
    }

    let environment = operator_env(
        "backend.docker.environment",
        docker.environment.as_deref(),
        ov,
        host_env,
        c,
    );
    let auth_config = docker.auth_config.as_ref().map(|sp| {
        match std::fs::read_to_string(&sp.value) {
            Ok(text) if serde_json::from_str::<serde_json::Value>(&text).is_ok() => {}
            Ok(_) => c.at(
                "backend.docker.auth_config",
                Some(sp),
                format!("{} is not JSON", sp.value),
                "point it at a Docker CLI config.json (with an `auths` map)",
            ),
            Err(e) => c.at(
                "backend.docker.auth_config",
                Some(sp),
                format!("cannot read {}: {e}", sp.value),
                "check the path and that the berth user may read it",
            ),
        }
        PathBuf::from(&sp.value)
    });
    DockerBackend {
        host,
        default_image,
        pull_policy: docker.pull_policy.unwrap_or(PullPolicy::IfNotPresent),
        volumes,
        environment,
        stop_grace_period,
        auth_config,
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::load_str;
    use super::super::test_support::{errors, load_yaml, one_error, with_key};
    use super::*;

    #[test]
    fn auth_config_must_be_a_readable_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("config.json");
        std::fs::write(&good, r#"{"auths": {}}"#).unwrap();
        let y = format!(
            "worker_id: w\nbackend:\n  docker:\n    auth_config: {}\n",
            good.display()
        );
        let c = load_yaml(&y, &with_key()).unwrap();
        assert_eq!(c.docker.auth_config, Some(good));
        let e =
            one_error("worker_id: w\nbackend:\n  docker:\n    auth_config: /nonexistent.json\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("backend.docker.auth_config", Some(4))
        );
    }

    #[test]
    fn operator_env_config_then_flags_with_host_passthrough() {
        let host = |k: &str| (k == "HOME_TZ").then(|| "Europe/Paris".to_string());
        let yaml = "worker_id: w\nbackend:\n  docker:\n    environment:\n      - name: A\n        value: '1'\n      - name: HOME_TZ\n      - name: MISSING\n";
        let ov = Overrides {
            env: vec!["B=x=y".into(), "A=2".into(), "E=".into(), "HOME_TZ".into()],
            ..with_key()
        };
        let c = load_str(Some(yaml), None, &ov, &host).unwrap();
        let pairs: Vec<(&str, &str)> = c
            .docker
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("A", "1"),
                ("HOME_TZ", "Europe/Paris"),
                ("MISSING", ""),
                ("B", "x=y"),
                ("A", "2"),
                ("E", ""),
                ("HOME_TZ", "Europe/Paris"),
            ]
        );
    }

    #[test]
    fn volumes_config_then_flags() {
        let yaml = "worker_id: w\nbackend:\n  docker:\n    volumes: ['/srv/a:/a:ro', 'named:/b']\n";
        let ov = Overrides {
            volumes: vec!["/c:/c:rw".into()],
            ..with_key()
        };
        let c = load_yaml(yaml, &ov).unwrap();
        assert_eq!(c.docker.volumes, ["/srv/a:/a:ro", "named:/b", "/c:/c:rw"]);
        let bad = Overrides {
            volumes: vec!["/c".into()],
            ..with_key()
        };
        assert_eq!(errors("worker_id: w\n", &bad)[0].key, "--volume");
    }

    #[test]
    fn env_flag_parsing() {
        let host = |k: &str| (k == "H").then(|| "hv".to_string());
        assert_eq!(parse_env_flag("K=V", &host), Ok(("K".into(), "V".into())));
        assert_eq!(parse_env_flag("K=", &host), Ok(("K".into(), "".into())));
        assert_eq!(
            parse_env_flag("K=a=b", &host),
            Ok(("K".into(), "a=b".into()))
        );
        assert_eq!(parse_env_flag("H", &host), Ok(("H".into(), "hv".into())));
        assert_eq!(parse_env_flag("U", &host), Ok(("U".into(), "".into())));
        assert!(parse_env_flag("=V", &host).is_err());
    }
}
