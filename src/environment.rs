//! Environment definitions: what a task's container is built from (image, env, working
//! directory), resolved from the assignment's inline definition (berth/1)
//! or the operator's named environments. Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::protocol::TaskAssignment;

/// One resolved environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    /// Where it came from (`inline`, or `config:NAME`), for transcript lines and errors.
    pub source: String,
    /// Image; `None` falls back to `docker_image`, then `default_image`.
    pub image: Option<String>,
    /// Variables (after the assignment's `env_vars` are applied on top).
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    pub workdir: Option<String>,
}

/// Why an environment cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvironmentError {
    /// The inline definition does not decode.
    #[error("the task's inline environment is invalid: {0}")]
    Invalid(String),
    /// It asks for provisioning this worker does not do yet.
    #[error(
        "environment {name} asks for {what}, which this worker version does not provision yet; remove it or run the task on a newer worker"
    )]
    Unsupported {
        /// Which environment.
        name: String,
        /// `repos` or `setup`.
        what: &'static str,
    },
}

/// The berth/1 inline `environment` object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inline {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    repos: Vec<serde_json::Value>,
    #[serde(default)]
    setup: Vec<String>,
}

/// Picks the environment of a task: the inline definition (berth/1 only) › the named
/// environment whose name equals `agent_config_snapshot.environment_id` › the operator's
/// `default_environment` › none.
pub fn resolve(
    a: &TaskAssignment,
    berth: bool,
    named: &BTreeMap<String, Environment>,
    default_environment: Option<&str>,
) -> Result<Option<Environment>, EnvironmentError> {
    if berth && let Some(v) = a.environment.as_ref().filter(|v| !v.is_null()) {
        let inline: Inline = serde_json::from_value(v.clone())
            .map_err(|e| EnvironmentError::Invalid(e.to_string()))?;
        let source = "inline".to_string();
        if !inline.repos.is_empty() {
            return Err(EnvironmentError::Unsupported {
                name: source,
                what: "repos",
            });
        }
        if !inline.setup.is_empty() {
            return Err(EnvironmentError::Unsupported {
                name: source,
                what: "setup",
            });
        }
        return Ok(Some(Environment {
            source,
            image: inline.image.filter(|i| !i.trim().is_empty()),
            env: inline.env,
            workdir: inline.workdir.filter(|w| !w.is_empty()),
        }));
    }
    let by_id = a
        .task
        .as_ref()
        .and_then(|t| t.agent_config_snapshot.as_ref())
        .and_then(|s| s.environment_id.as_deref())
        .map(str::trim)
        .and_then(|id| named.get(id));
    Ok(by_id
        .or_else(|| default_environment.and_then(|d| named.get(d)))
        .cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AgentConfigSnapshot, Task};

    fn named() -> BTreeMap<String, Environment> {
        let env = |name: &str, image: &str| Environment {
            source: format!("config:{name}"),
            image: Some(image.into()),
            ..Environment::default()
        };
        BTreeMap::from([
            ("py".to_string(), env("py", "python:3.12")),
            ("base".to_string(), env("base", "ubuntu:24.04")),
        ])
    }

    fn a(env_id: Option<&str>, inline: Option<serde_json::Value>) -> TaskAssignment {
        TaskAssignment {
            task_id: "t".into(),
            task: Some(Task {
                agent_config_snapshot: env_id.map(|e| AgentConfigSnapshot {
                    environment_id: Some(e.into()),
                    ..AgentConfigSnapshot::default()
                }),
                ..Task::default()
            }),
            environment: inline,
            ..TaskAssignment::default()
        }
    }

    fn source(r: Result<Option<Environment>, EnvironmentError>) -> Option<String> {
        r.ok().flatten().map(|e| e.source)
    }

    #[test]
    fn precedence_inline_then_named_then_default() {
        let n = named();
        let inline = serde_json::json!({"image": "busybox", "env": {"A": "1"}, "workdir": "/src"});
        // Inline wins on berth/1.
        assert_eq!(
            source(resolve(
                &a(Some("py"), Some(inline.clone())),
                true,
                &n,
                Some("base")
            ))
            .as_deref(),
            Some("inline")
        );
        // Inline is ignored on oz/1: the named one applies.
        assert_eq!(
            source(resolve(
                &a(Some("py"), Some(inline)),
                false,
                &n,
                Some("base")
            ))
            .as_deref(),
            Some("config:py")
        );
        // environment_id selects by name; unknown ids fall back to the default.
        assert_eq!(
            source(resolve(&a(Some(" py "), None), true, &n, Some("base"))).as_deref(),
            Some("config:py")
        );
        assert_eq!(
            source(resolve(&a(Some("nope"), None), true, &n, Some("base"))).as_deref(),
            Some("config:base")
        );
        assert_eq!(
            source(resolve(&a(None, None), true, &n, Some("base"))).as_deref(),
            Some("config:base")
        );
        assert_eq!(source(resolve(&a(None, None), true, &n, None)), None);
    }

    #[test]
    fn inline_fields_and_refusals() {
        let n = named();
        let e = resolve(
            &a(
                None,
                Some(serde_json::json!({"image": "busybox", "env": {"A": "1"}, "workdir": "/src"})),
            ),
            true,
            &n,
            None,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        assert_eq!(
            (
                e.image.as_deref(),
                e.env.get("A").map(String::as_str),
                e.workdir.as_deref()
            ),
            (Some("busybox"), Some("1"), Some("/src"))
        );
        let setup = resolve(
            &a(None, Some(serde_json::json!({"setup": ["make"]}))),
            true,
            &n,
            None,
        );
        assert!(matches!(
            setup,
            Err(EnvironmentError::Unsupported { what: "setup", .. })
        ));
        let repos = resolve(
            &a(None, Some(serde_json::json!({"repos": [{"url": "x"}]}))),
            true,
            &n,
            None,
        );
        assert!(matches!(
            repos,
            Err(EnvironmentError::Unsupported { what: "repos", .. })
        ));
        let bad = resolve(
            &a(None, Some(serde_json::json!({"imag": "typo"}))),
            true,
            &n,
            None,
        );
        assert!(matches!(bad, Err(EnvironmentError::Invalid(m)) if m.contains("imag")));
    }
}
