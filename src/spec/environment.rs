//! Environment definitions: what a task's container is built from (image, env, repositories,
//! setup commands, working directory, resources), resolved from the assignment's inline
//! definition (berth/1), the operator's named environments, or the control plane's API
//! (see [`crate::control::catalog`]). Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::protocol::TaskAssignment;
use crate::spec::policy::Resources;

/// Where repositories are cloned (`/workspace/<path or repo name>`).
pub const WORKSPACE: &str = "/workspace";

/// One repository to clone before the task runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    /// Anything `git clone` accepts.
    pub url: String,
    /// Branch, tag or commit to check out (default: the remote's HEAD).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Directory under `/workspace` (default: the repository's name).
    #[serde(default)]
    pub path: Option<String>,
}

/// One resolved environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    /// Where it came from (`inline`, `config:NAME`, `api:ID`), for transcript lines and errors.
    pub source: String,
    /// Image; `None` falls back to `docker_image`, then `default_image`.
    pub image: Option<String>,
    /// Variables (after the assignment's `env_vars` are applied on top).
    pub env: BTreeMap<String, String>,
    /// Repositories cloned before the task, in order.
    pub repos: Vec<Repo>,
    /// Shell commands run in order (`/bin/sh -c`, in the workdir) after the clones.
    pub setup: Vec<String>,
    /// Working directory (default `/workspace`).
    pub workdir: Option<String>,
    /// CPU/memory used when the assignment has no instance shape.
    pub resources: Resources,
    /// OCI runtime asked for (e.g. `runsc`); policy decides whether it may be used.
    pub runtime: Option<String>,
    /// Egress narrowing (stricter mode, a shorter list); never widens the policy.
    pub egress: Option<crate::spec::egress::Narrowing>,
}

impl Environment {
    /// It has phases that run inside the container before the task's command.
    pub fn provisions(&self) -> bool {
        !self.repos.is_empty() || !self.setup.is_empty()
    }
}

/// Why an environment cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvironmentError {
    /// The definition does not decode or a field is unusable.
    #[error("environment {name} is invalid: {problem}")]
    Invalid {
        /// Which environment (`inline`, `api:ID`, …).
        name: String,
        /// What is wrong, with the fix.
        problem: String,
    },
}

/// The wire/API form of an environment (berth/1 inline `environment`, and the body the
/// control plane's environments API returns).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    repos: Vec<Repo>,
    #[serde(default)]
    setup: Vec<String>,
    #[serde(default)]
    resources: Option<WireResources>,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    egress: Option<serde_json::Value>,
}

/// `resources` on the wire: memory as bytes or a size string (`8GiB`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResources {
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    memory: Option<serde_json::Value>,
}

/// The directory (under `/workspace`) a repository is cloned into, or why it cannot be.
pub fn repo_dir(r: &Repo) -> Result<String, String> {
    if r.url.trim().is_empty() {
        return Err("a repository has an empty url".into());
    }
    let name = match r.path.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => {
            let p = p.trim_end_matches('/');
            if p.starts_with('/') || p.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
                return Err(format!(
                    "repository path {p:?} must be a relative path below {WORKSPACE} without '.' or '..'"
                ));
            }
            p.to_string()
        }
        None => {
            let last = r
                .url
                .trim()
                .trim_end_matches('/')
                .rsplit(['/', ':'])
                .next()
                .unwrap_or_default();
            let last = last.strip_suffix(".git").unwrap_or(last);
            if last.is_empty() || last == "." || last == ".." {
                return Err(format!(
                    "cannot name a directory after repository url {:?}; give the repository a `path`",
                    r.url
                ));
            }
            last.to_string()
        }
    };
    Ok(format!("{WORKSPACE}/{name}"))
}

/// Checks the parts of an environment that are not checked by its source's decoder: repository
/// targets (distinct, inside `/workspace`), setup commands, workdir.
pub fn validate(e: &Environment) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for r in &e.repos {
        let dir = repo_dir(r)?;
        if !seen.insert(dir.clone()) {
            return Err(format!(
                "two repositories would be cloned into {dir}; give one of them a different `path`"
            ));
        }
    }
    if e.setup.iter().any(|c| c.trim().is_empty()) {
        return Err("a setup command is empty; remove it".into());
    }
    if let Some(w) = &e.workdir
        && !w.starts_with('/')
    {
        return Err(format!(
            "workdir {w:?} is not an absolute path; use e.g. /workspace/app"
        ));
    }
    Ok(())
}

impl Definition {
    /// Decodes and checks a JSON definition for environment `name`.
    pub fn parse(name: &str, v: &serde_json::Value) -> Result<Environment, EnvironmentError> {
        let invalid = |problem: String| EnvironmentError::Invalid {
            name: name.to_string(),
            problem,
        };
        let d: Definition =
            serde_json::from_value(v.clone()).map_err(|e| invalid(e.to_string()))?;
        let r = d.resources.unwrap_or_default();
        let memory = match r.memory {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(
                n.as_u64()
                    .ok_or_else(|| invalid(format!("resources.memory {n} is not a byte count")))?,
            ),
            Some(serde_json::Value::String(s)) => Some(
                crate::units::parse_size(&s)
                    .map_err(|p| invalid(format!("resources.memory: {p}")))?,
            ),
            Some(other) => {
                return Err(invalid(format!(
                    "resources.memory {other} is neither a byte count nor a size such as 8GiB"
                )));
            }
        };
        if let Some(c) = r.cpus
            && !(c > 0.0 && c.is_finite())
        {
            return Err(invalid(format!(
                "resources.cpus {c} is not a positive number"
            )));
        }
        let e = Environment {
            source: name.to_string(),
            image: d.image.filter(|i| !i.trim().is_empty()),
            env: d.env,
            repos: d.repos,
            setup: d.setup,
            workdir: d.workdir.filter(|w| !w.is_empty()),
            resources: Resources {
                cpus: r.cpus,
                memory,
            },
            runtime: d.runtime.filter(|r| !r.is_empty()),
            egress: d
                .egress
                .as_ref()
                .map(crate::spec::egress::Narrowing::parse)
                .transpose()
                .map_err(invalid)?,
        };
        validate(&e).map_err(invalid)?;
        Ok(e)
    }
}

/// Which environment a task asks for, before anything is fetched.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Resolved from the assignment or the operator's config.
    Ready(Box<Environment>),
    /// `agent_config_snapshot.environment_id` names no configured environment: ask the control
    /// plane's environments API (when configured) for this id.
    Fetch(String),
    /// No environment.
    None,
}

/// Picks the environment of a task: the inline definition (berth/1 only) › the named
/// environment whose name equals `agent_config_snapshot.environment_id` › that id fetched from
/// the control plane (when `fetch` is configured) › the operator's `default_environment` ›
/// none.
pub fn choose(
    a: &TaskAssignment,
    berth: bool,
    named: &BTreeMap<String, Environment>,
    default_environment: Option<&str>,
    fetch: bool,
) -> Result<Choice, EnvironmentError> {
    if berth && let Some(v) = a.environment.as_ref().filter(|v| !v.is_null()) {
        return Definition::parse("inline", v).map(|e| Choice::Ready(Box::new(e)));
    }
    let id = a
        .task
        .as_ref()
        .and_then(|t| t.agent_config_snapshot.as_ref())
        .and_then(|s| s.environment_id.as_deref())
        .map(str::trim)
        .filter(|id| !id.is_empty());
    if let Some(e) = id.and_then(|id| named.get(id)) {
        return Ok(Choice::Ready(Box::new(e.clone())));
    }
    if fetch && let Some(id) = id {
        return Ok(Choice::Fetch(id.to_string()));
    }
    Ok(default_environment
        .and_then(|d| named.get(d))
        .cloned()
        .map_or(Choice::None, |e| Choice::Ready(Box::new(e))))
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

    fn resolve(
        a: &TaskAssignment,
        berth: bool,
        named: &BTreeMap<String, Environment>,
        default_environment: Option<&str>,
    ) -> Result<Option<Environment>, EnvironmentError> {
        choose(a, berth, named, default_environment, false).map(|c| match c {
            Choice::Ready(e) => Some(*e),
            _ => None,
        })
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
        let bad = resolve(
            &a(None, Some(serde_json::json!({"imag": "typo"}))),
            true,
            &n,
            None,
        );
        assert!(
            matches!(bad, Err(EnvironmentError::Invalid { problem, .. }) if problem.contains("imag"))
        );
    }

    #[test]
    fn an_unknown_id_is_fetched_only_when_the_api_is_configured_and_names_win_over_it() {
        let n = named();
        assert_eq!(
            choose(&a(Some("remote"), None), true, &n, Some("base"), true),
            Ok(Choice::Fetch("remote".into()))
        );
        assert!(matches!(
            choose(&a(Some("py"), None), true, &n, Some("base"), true),
            Ok(Choice::Ready(e)) if e.source == "config:py"
        ));
        assert!(matches!(
            choose(&a(None, None), true, &n, Some("base"), true),
            Ok(Choice::Ready(e)) if e.source == "config:base"
        ));
        assert_eq!(
            choose(&a(Some("  "), None), true, &n, None, true),
            Ok(Choice::None)
        );
    }

    #[test]
    fn inline_repos_setup_and_resources_decode() {
        let v = serde_json::json!({
            "image": "busybox",
            "repos": [{"url": "https://example.com/org/app.git", "ref": "v1.2"},
                      {"url": "git@example.com:org/lib", "path": "deps/lib"}],
            "setup": ["make deps", "echo ok"],
            "resources": {"cpus": 1.5, "memory": "512MiB"}
        });
        let e = Definition::parse("inline", &v).unwrap();
        assert!(e.provisions());
        assert_eq!(e.repos[0].git_ref.as_deref(), Some("v1.2"));
        assert_eq!(e.setup, vec!["make deps", "echo ok"]);
        assert_eq!(e.resources.cpus, Some(1.5));
        assert_eq!(e.resources.memory, Some(512 << 20));
        let bytes = serde_json::json!({"resources": {"memory": 1073741824}});
        let e = Definition::parse("inline", &bytes).unwrap();
        assert_eq!(e.resources.memory, Some(1 << 30));
        for (bad, needle) in [
            (
                serde_json::json!({"resources": {"memory": "lots"}}),
                "resources.memory",
            ),
            (
                serde_json::json!({"resources": {"cpus": -1}}),
                "resources.cpus",
            ),
            (
                serde_json::json!({"resources": {"memory": true}}),
                "resources.memory",
            ),
            (
                serde_json::json!({"repos": [{"url": "x", "branch": "y"}]}),
                "branch",
            ),
            (serde_json::json!({"repos": [{"url": ""}]}), "empty url"),
            (
                serde_json::json!({"repos": [{"url": "a/x"}, {"url": "b/x.git"}]}),
                "two repositories",
            ),
            (
                serde_json::json!({"setup": [" "]}),
                "setup command is empty",
            ),
            (serde_json::json!({"workdir": "rel"}), "absolute"),
        ] {
            match Definition::parse("inline", &bad) {
                Err(EnvironmentError::Invalid { problem, name }) => {
                    assert!(problem.contains(needle), "{bad}: {problem}");
                    assert_eq!(name, "inline");
                }
                Ok(e) => panic!("{bad} accepted as {e:?}"),
            }
        }
    }

    #[test]
    fn repository_directories() {
        let r = |url: &str, path: Option<&str>| Repo {
            url: url.into(),
            git_ref: None,
            path: path.map(str::to_string),
        };
        let ok = [
            (r("https://h/org/app.git", None), "/workspace/app"),
            (r("https://h/org/app/", None), "/workspace/app"),
            (r("git@h:org/tool", None), "/workspace/tool"),
            (r("/srv/git/repo.git", None), "/workspace/repo"),
            (r("file:///srv/git/repo.git", None), "/workspace/repo"),
            (r("h:repo.git", None), "/workspace/repo"),
            (r("https://h/x.git", Some("deps/x/")), "/workspace/deps/x"),
        ];
        for (repo, dir) in ok {
            assert_eq!(repo_dir(&repo).as_deref(), Ok(dir), "{repo:?}");
        }
        for repo in [
            r("https://h/x", Some("/abs")),
            r("https://h/x", Some("../escape")),
            r("https://h/x", Some("a/../../b")),
            r("https://h/x", Some("a//b")),
            r("https://h/x", Some("./x")),
            r("https://h/.git", None),
            r("  ", None),
        ] {
            assert!(repo_dir(&repo).is_err(), "{repo:?} accepted");
        }
    }
}
