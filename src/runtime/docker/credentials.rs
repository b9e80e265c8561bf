//! Registry credentials from the Docker CLI config (`auths`, keyed by registry host).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

/// Docker Hub's key in the CLI config.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
struct CliConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The Docker CLI config path of this process' user: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn default_path(docker_config: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (docker_config, home) {
        (Some(d), _) if !d.is_empty() => Some(Path::new(d).join("config.json")),
        (_, Some(h)) if !h.is_empty() => Some(Path::new(h).join(".docker").join("config.json")),
        _ => None,
    }
}

fn strip_scheme(k: &str) -> &str {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    k.split('/').next().unwrap_or(k)
}

/// Credentials for `domain` (`docker.io` or a registry host) from the JSON text of a Docker
/// CLI config. `None` when the file names none or the entry cannot be decoded.
pub fn for_registry(config_json: &str, domain: &str) -> Option<DockerCredentials> {
    let cfg: CliConfig = serde_json::from_str(config_json).ok()?;
    let entry = if domain == "docker.io" {
        cfg.auths
            .get(DOCKER_HUB_KEY)
            .or_else(|| cfg.auths.get("docker.io"))
            .or_else(|| cfg.auths.get("index.docker.io"))
    } else {
        cfg.auths
            .iter()
            .find(|(k, _)| strip_scheme(k) == domain)
            .map(|(_, v)| v)
    }?;
    let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(a), _, _) if !a.is_empty() => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            (Some(u.to_string()), Some(p.to_string()))
        }
        (_, u, p) => (u.clone(), p.clone()),
    };
    Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(if domain == "docker.io" {
            DOCKER_HUB_KEY.to_string()
        } else {
            domain.to_string()
        }),
        ..DockerCredentials::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hub_and_private_registries() {
        let json = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndpdGg6Y29sb25z"},
            "registry.example.com:5000": {"username": "u2", "password": "p2"},
            "https://ghcr.io": {"auth": "Z2g6dG9r"}
        }}"#;
        let hub = for_registry(json, "docker.io").unwrap_or_default();
        assert_eq!(hub.username.as_deref(), Some("user"));
        assert_eq!(hub.password.as_deref(), Some("pass:with:colons"));
        assert_eq!(hub.serveraddress.as_deref(), Some(DOCKER_HUB_KEY));
        let private = for_registry(json, "registry.example.com:5000").unwrap_or_default();
        assert_eq!(private.username.as_deref(), Some("u2"));
        let gh = for_registry(json, "ghcr.io").unwrap_or_default();
        assert_eq!(gh.password.as_deref(), Some("tok"));
        assert!(for_registry(json, "quay.io").is_none());
        assert!(for_registry("not json", "docker.io").is_none());
    }

    #[test]
    fn config_path_prefers_docker_config() {
        assert_eq!(
            default_path(Some("/cfg"), Some("/home/u")),
            Some(PathBuf::from("/cfg/config.json"))
        );
        assert_eq!(
            default_path(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        assert_eq!(default_path(None, None), None);
    }
}
