//! `environments` and `default_environment`: the named environments tasks choose from.

use std::collections::BTreeMap;

use super::collector::Collector;
use super::policy::resources_of;
use super::raw::RawConfig;

/// `environments` and `default_environment`.
pub(super) fn environments_section(
    raw: &mut RawConfig,
    c: &mut Collector<'_>,
) -> (
    BTreeMap<String, crate::spec::environment::Environment>,
    Option<String>,
) {
    let mut environments = BTreeMap::new();
    for (name, e) in raw.environments.take().unwrap_or_default() {
        let key = format!("environments.{name}");
        if let Some(img) = &e.image
            && let Err(err) = crate::spec::image::ImageRef::parse(&img.value)
        {
            c.at(
                &format!("{key}.image"),
                Some(img),
                err.to_string(),
                "use an image reference such as ubuntu:22.04",
            );
        }
        if let Some(w) = &e.workdir
            && !w.value.starts_with('/')
        {
            c.at(
                &format!("{key}.workdir"),
                Some(w),
                format!("{:?} is not an absolute path", w.value),
                "use an absolute path such as /workspace/app",
            );
        }
        for k in e.env.iter().flatten().map(|(k, _)| k) {
            if k.is_empty() || k.contains('=') {
                c.at::<String>(
                    &format!("{key}.env"),
                    None,
                    format!("{k:?} is not a variable name"),
                    "use names without '='",
                );
            }
        }
        let resources = resources_of(&format!("{key}.resources"), e.resources, c);
        let env = crate::spec::environment::Environment {
            source: format!("config:{name}"),
            image: e.image.map(|i| i.value),
            env: e.env.unwrap_or_default(),
            repos: e
                .repos
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            setup: e
                .setup
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            workdir: e.workdir.map(|w| w.value),
            resources,
            runtime: e.runtime.filter(|r| !r.is_empty()),
            egress: match &e.egress {
                None => None,
                Some(v) => match crate::spec::egress::Narrowing::parse(&v.value) {
                    Ok(n) => Some(n),
                    Err(problem) => {
                        c.at(&format!("{key}.egress"), Some(v), problem, "write egress: {mode: allowlist, allow: [pypi.org, \"*.github.com:443\"]}");
                        None
                    }
                },
            },
        };
        // Workdir is reported above with its own line; repos and setup here.
        let checked = crate::spec::environment::Environment {
            workdir: None,
            ..env.clone()
        };
        if let Err(problem) = crate::spec::environment::validate(&checked) {
            if problem.contains("setup command") {
                c.at(
                    &format!("{key}.setup"),
                    e.setup.as_ref(),
                    problem,
                    "remove the empty command",
                );
            } else {
                c.at(
                    &format!("{key}.repos"),
                    e.repos.as_ref(),
                    problem,
                    "fix the repository entry",
                );
            }
        }
        environments.insert(name.clone(), env);
    }
    let default_environment = raw.default_environment.take().map(|d| {
        if !environments.contains_key(&d.value) {
            c.at(
                "default_environment",
                Some(&d),
                format!("{:?} is not one of the environments defined here", d.value),
                "name an entry of `environments:`",
            );
        }
        d.value
    });
    (environments, default_environment)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{load_yaml, one_error, with_key};

    #[test]
    fn named_environments_are_validated() {
        let c = load_yaml("worker_id: w\nenvironments:\n  py:\n    image: python:3.12\n    env: {PIP_NO_CACHE_DIR: '1'}\n    workdir: /src\ndefault_environment: py\n", &with_key())
            .unwrap();
        let py = c.environments.get("py").cloned().unwrap_or_default();
        assert_eq!(
            (
                py.source.as_str(),
                py.image.as_deref(),
                py.workdir.as_deref()
            ),
            ("config:py", Some("python:3.12"), Some("/src"))
        );
        assert_eq!(c.default_environment.as_deref(), Some("py"));
        let e = one_error(
            "worker_id: w\nenvironments:\n  py:\n    image: python:3.12\ndefault_environment: ruby\n",
        );
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("default_environment", Some(5))
        );
        let e = one_error("worker_id: w\nenvironments:\n  py:\n    workdir: src\n");
        assert_eq!(e.key, "environments.py.workdir");
        let e =
            one_error("worker_id: w\nenvironments:\n  py:\n    setup: [make]\n    steps: [x]\n");
        assert!(e.problem.contains("unknown field `steps`"), "{}", e.problem);
        let e = one_error(
            "worker_id: w\nenvironments:\n  py:\n    repos:\n      - url: https://h/a.git\n      - url: https://h/b/a\n",
        );
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("environments.py.repos", Some(5))
        );
        assert!(e.problem.contains("/workspace/a"), "{}", e.problem);
        let e = one_error("worker_id: w\nenvironments:\n  py:\n    setup: ['make', '']\n");
        assert_eq!(e.key, "environments.py.setup");
        let e = one_error("worker_id: w\nenvironments:\n  py:\n    resources: {memory: 1MiB}\n");
        assert_eq!(e.key, "environments.py.resources.memory");
        let c = load_yaml(
            "worker_id: w\nenvironments:\n  app:\n    repos:\n      - {url: /srv/app.git, ref: main, path: src/app}\n    setup: [make deps]\n    resources: {cpus: 2, memory: 1GiB}\n",
            &with_key(),
        )
        .unwrap();
        let app = c.environments.get("app").cloned().unwrap_or_default();
        assert_eq!(app.repos[0].path.as_deref(), Some("src/app"));
        assert_eq!(app.repos[0].git_ref.as_deref(), Some("main"));
        assert_eq!(app.setup, vec!["make deps"]);
        assert_eq!(
            (app.resources.cpus, app.resources.memory),
            (Some(2.0), Some(1 << 30))
        );
    }
}
